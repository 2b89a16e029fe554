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
