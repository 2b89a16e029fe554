"""Mode parsing, token strings and the spec file round trip."""

from __future__ import annotations

import json

import pytest

from budgetthinker.control_spec import (
    SPEC_FILENAME,
    has_spec,
    load_spec,
    parse_mode,
)
from budgetthinker.errors import UserError
from tests.spec_fixtures import fake_spec


def test_8ratio_strings_in_tokenizer_order():
    assert parse_mode("8ratio").token_strings() == [
        f"\n<remaining>{k}/8</remaining>\n" for k in range(1, 8)
    ]


def test_countdown_modes():
    m = parse_mode("remaining250")
    assert (m.kind, m.step, m.max_value, m.num_tokens) == ("countdown", 250, 10000, 40)
    assert m.token_strings()[0] == "\n<remaining>250</remaining>\n"
    assert m.token_strings()[-1] == "\n<remaining>10000</remaining>\n"
    assert parse_mode("remaining50").num_tokens == 400  # the legacy 50-token scheme


@pytest.mark.parametrize("name", ["ratio", "1ratio", "8-ratio", "remaining", "remaining0", "x"])
def test_unknown_modes(name):
    with pytest.raises(UserError):
        parse_mode(name)


def test_spec_round_trip(tmp_path):
    spec = fake_spec("8ratio")
    spec.save(tmp_path)
    assert has_spec(tmp_path)
    loaded = load_spec(tmp_path)
    assert loaded == spec
    assert loaded.level_of == {1000 + k: k + 1 for k in range(7)}
    data = json.loads((tmp_path / SPEC_FILENAME).read_text())
    assert data["suffixes"]["eval"]["text"] == "\n</think>\n\n**Final Answer**\\boxed"
    assert data["suffixes"]["rl"]["text"] == "\n</think>\n**Final Answer**\\boxed"
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_spec_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="budgetthinker prepare"):
        load_spec(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "nope")


def test_corrupt_spec_is_user_error(tmp_path):
    (tmp_path / SPEC_FILENAME).write_text('{"format_version": 1, "mode": "8ratio"}')
    with pytest.raises(UserError, match="not a valid control-token spec"):
        load_spec(tmp_path)
    (tmp_path / SPEC_FILENAME).write_text('{"format_version": 99}')
    with pytest.raises(UserError, match="format_version"):
        load_spec(tmp_path)


def _damaged_copy(src, dst, change):
    """The prepared model with its files linked (not copied) and a changed spec."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != SPEC_FILENAME:
            (dst / f.name).symlink_to(f)
    data = json.loads((src / SPEC_FILENAME).read_text())
    change(data)
    (dst / SPEC_FILENAME).write_text(json.dumps(data))
    return dst


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda d: d["token_ids"].reverse(), "decodes to '\\n<remaining>7/8</remaining>\\n', not"),
        (lambda d: d.update(token_ids=list(range(100, 107))), "id 100 decodes to 't', not"),
        (lambda d: d.update(think_end_id=5), "id 5 decodes to"),
        (lambda d: d["token_strings"].reverse(), "not the 8ratio levels in order"),
        (lambda d: d.update(token_ids=[10**6] * 7), "id 1000000 of '\\n<remaining>1/8"),
    ],
    ids=["reversed", "ordinary tokens", "think end", "levels out of order", "out of vocab"],
)
def test_a_spec_that_does_not_match_the_tokenizer_stops_generate(
    prepared_model, tmp_path, change, detail
):
    """Issue #21: such a spec let `generate` force other tokens and report them as
    `<remaining>7/8</remaining>`. Now the model refuses to load, in one line naming prepare."""
    from tests.clirun import cli, one_line

    model = _damaged_copy(prepared_model, tmp_path / "m", change)
    proc = cli("generate", "--model", model, "--prompt", "2+2?", "--budget", "64")
    one_line(proc, "does not match the model's tokenizer", detail, "budgetthinker prepare")


@pytest.mark.slow
def test_a_spec_that_does_not_match_stops_eval_before_anything_is_written(prepared_model, tmp_path):
    from tests.clirun import cli, eval_args, one_line, snapshot

    model = _damaged_copy(prepared_model, tmp_path / "m", lambda d: d["token_ids"].reverse())
    runs = tmp_path / "runs"
    before = snapshot(runs)
    one_line(cli(*eval_args(runs, "e", f"model={model}")), "budgetthinker prepare --base")
    assert snapshot(runs) == before == {}


def test_the_real_spec_matches(prepared_model, spec, tokenizer):
    from budgetthinker.control_spec import check_tokenizer

    check_tokenizer(spec, tokenizer, prepared_model)  # nothing raised
