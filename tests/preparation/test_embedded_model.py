"""Model folders checked before anything loads (`check_model_dir` / `check_weights`): a truncated
or damaged safetensors file, or a shard its index names but the folder lacks, is one line naming
the file (issue #21: a traceback from the loader before)."""

from __future__ import annotations

import json
import os

import pytest

from budgetthinker.errors import UserError
from budgetthinker.preparation.embedded_model import check_model_dir
from tests.clirun import cli, one_line


def _folder(tmp_path, prepared_model, weights: bytes | None = None):
    model = tmp_path / "m"
    model.mkdir()
    for f in prepared_model.iterdir():
        if f.suffix != ".safetensors":
            (model / f.name).symlink_to(f)
    if weights is not None:
        (model / "model.safetensors").write_bytes(weights)
    return model


def _header(tensors: dict, extra: int = 0) -> bytes:
    header = json.dumps(tensors).encode()
    end = max((v.get("data_offsets", [0, 0])[1] for v in tensors.values()), default=0)
    return len(header).to_bytes(8, "little") + header + b"\0" * (end + extra)


T = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        (b"", "0 bytes, too short for a header"),
        ((10**6).to_bytes(8, "little") + b"{}", "its header needs 1000008 bytes"),
        (b"\x02\0\0\0\0\0\0\0{x", "its header is not JSON"),
        (_header(T)[:-4], "the tensors need"),
        (_header(T, extra=3), "the tensors need"),
        (_header({"w": {"dtype": "F32"}}), "no valid data offsets"),
    ],
    ids=["empty", "header too long", "header not JSON", "cut", "trailing bytes", "no offsets"],
)
def test_damaged_safetensors_are_refused(tmp_path, prepared_model, weights, problem):
    model = _folder(tmp_path, prepared_model, weights)
    with pytest.raises(UserError, match="model.safetensors is damaged") as e:
        check_model_dir(model)
    assert problem in str(e.value)


def test_whole_weights_and_a_missing_shard(tmp_path, prepared_model):
    check_model_dir(prepared_model)  # the real file passes
    model = _folder(tmp_path, prepared_model, _header(T))
    check_model_dir(model)
    index = {"weight_map": {"w": "model.safetensors", "v": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="lacks the weight file model-00002-of-00002.safetensors"):
        check_model_dir(model)


@pytest.mark.slow
def test_a_truncated_weights_file_is_one_line_on_the_cli(tmp_path, prepared_model):
    model = _folder(tmp_path, prepared_model)
    src = prepared_model / "model.safetensors"
    with src.open("rb") as f, (model / "model.safetensors").open("wb") as out:
        out.write(f.read(os.path.getsize(src) // 50))  # an interrupted copy
    proc = cli("generate", "--model", model, "--prompt", "2+2?", "--budget", "64")
    one_line(proc, "model.safetensors is damaged (the tensors need", "copy it again")
    proc = cli("prepare", "--base", model, "--mode", "4ratio", "--out", tmp_path / "o")
    one_line(proc, "model.safetensors is damaged")
    assert not (tmp_path / "o").exists()
