"""Loading a model folder's tokenizer: a missing or broken one is one line naming the fix, on the
real CLI (issue #21: tracebacks before), and nothing is written."""

from __future__ import annotations

import pytest

from tests.clirun import cli, eval_args, one_line, snapshot


def _linked(src, dst, drop=(), write=None):
    """The prepared model with its files linked, some left out, some written."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in drop and f.name not in (write or {}):
            (dst / f.name).symlink_to(f)
    for name, data in (write or {}).items():
        (dst / name).write_bytes(data)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize(
    ("drop", "write"),
    [(("tokenizer.json", "tokenizer_config.json"), None),
     (("tokenizer.json",), None),
     ((), {"tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE", "vo'})],
    ids=["no tokenizer", "no tokenizer.json", "truncated tokenizer.json"],
)  # fmt: skip
def test_a_missing_or_broken_tokenizer_is_one_line(prepared_model, tmp_path, drop, write):
    model = _linked(prepared_model, tmp_path / "m", drop, write)
    proc = cli("generate", "--model", model, "--prompt", "2+2?", "--budget", "64")
    one_line(proc, f"cannot load the tokenizer of {model}", "tokenizer.json")
    runs = tmp_path / "runs"
    proc = cli(*eval_args(runs, "e", f"model={model}"))
    one_line(proc, "cannot load the tokenizer")
    assert snapshot(runs) == {}
