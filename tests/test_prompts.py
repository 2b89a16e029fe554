"""Prompt strings are faithful to the original (docs/spec.md §3), character for character."""

from __future__ import annotations

import pytest

from budgetthinker.control_spec import parse_mode
from budgetthinker.errors import UserError
from budgetthinker.prompts import (
    SYSTEM_LINE,
    budget_from_prompt,
    render_prompt,
    tip_text,
    user_content,
)

SPEC_8RATIO_TIP = (
    "\n(Complete thinking within {B} tokens or fewer, 7 special tokens ( "
    "\n<remaining>7/8</remaining>\n , \n<remaining>6/8</remaining>\n , "
    "\n<remaining>5/8</remaining>\n , \n<remaining>4/8</remaining>\n , "
    "\n<remaining>3/8</remaining>\n , \n<remaining>2/8</remaining>\n , "
    "\n<remaining>1/8</remaining>\n ) will split the thinking process into 8 parts.)"
)


def test_8ratio_tip_is_the_original_string():
    assert tip_text("control", 4000, parse_mode("8ratio")) == SPEC_8RATIO_TIP.format(B=4000)


def test_plain_tips():
    assert tip_text("prompt_v2", 250) == "\n(Complete thinking within 250 tokens or fewer)"
    assert tip_text("withoutremaining", 250) == "\n(Complete thinking within 250 tokens or fewer.)"
    assert tip_text("default", 7) == "\n(Complete thinking within 7 tokens or fewer.)"
    assert tip_text("prompt_v1", 100).startswith(
        "\n(Complete thinking within 100 tokens or fewer, please output the remaining number of "
        "tokens every 200 tokens"
    )
    assert tip_text("prompt_v1", 100).endswith("xxx is the real remaining number of tokens.)")
    assert tip_text("none", 100) == ""


def test_countdown_model_gets_plain_tip():
    assert tip_text("control", 1000, parse_mode("remaining250")) == tip_text("default", 1000)


def test_4ratio_tip_follows_the_pattern():
    text = tip_text("control", 100, parse_mode("4ratio"))
    assert "3 special tokens ( \n<remaining>3/4</remaining>\n , " in text
    assert text.endswith(
        "\n<remaining>1/4</remaining>\n ) will split the thinking process into 4 parts.)"
    )


def test_user_content_order():
    content = user_content("What is 2+2?", 500, "prompt_v2")
    assert (
        content == SYSTEM_LINE + "What is 2+2?" + "\n(Complete thinking within 500 tokens or fewer)"
    )
    assert SYSTEM_LINE == "Return your final response within \\boxed{}. "


def test_unknown_tip_is_user_error():
    with pytest.raises(UserError, match="unknown tip"):
        tip_text("promptv3", 100)
    with pytest.raises(UserError, match="control-token spec"):
        tip_text("control", 100, None)


@pytest.mark.parametrize("budget", [1, 64, 4000, 123456])
def test_budget_read_back_from_every_tip(budget):
    mode = parse_mode("8ratio")
    for tip in ("control", "prompt_v1", "prompt_v2", "withoutremaining"):
        assert budget_from_prompt("<|user|>" + user_content("Q", budget, tip, mode)) == budget
    assert budget_from_prompt(user_content("Q", budget, "none", mode)) is None


def test_budget_fallback_takes_the_last_tip():
    text = user_content("Earlier: (Complete thinking within 10 tokens or fewer)", 300, "prompt_v2")
    assert budget_from_prompt(text) == 300


class _NoTemplate:
    chat_template = None


def test_render_without_chat_template_is_the_user_turn():
    assert render_prompt(_NoTemplate(), "Q", 50, "prompt_v2") == user_content("Q", 50, "prompt_v2")


def test_system_line_can_be_left_out():
    """Benchmarks whose original data lacks the system line get the problem and the tip only."""
    mode = parse_mode("8ratio")
    with_line = user_content("What is 2+2?", 100, "control", mode)
    without = user_content("What is 2+2?", 100, "control", mode, system_line=False)
    assert with_line == SYSTEM_LINE + without
    assert without == "What is 2+2?" + SPEC_8RATIO_TIP.format(B=100)
