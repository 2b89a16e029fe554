"""Answer extraction: the chain (formats, Minerva phrase, boxes, math-verify) and the rule each
answer came from; the original's last-boxed rule (`qwen` / `seed`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("math_verify")

from budgetthinker.errors import UserError
from budgetthinker.evaluation.extraction import (
    ANSWER_FORMATS,
    Extraction,
    extract,
    qwen_answer,
)


@pytest.mark.parametrize(
    "text,answer,rule",
    [
        (r"so \boxed{42}.", "42", "boxed"),
        (r"\boxed{1} then \boxed{2}", "2", "boxed"),
        (r"**Final Answer**\boxed \sqrt{51}", r"\sqrt{51}", "boxed"),
        ("The answer is 7", "7", "math-verify answer (expression)"),
        ("Final answer: $\\frac{1}{2}$", "\\frac{1}{2}", "math-verify answer: (latex)"),
        ("so we get $x = 3$ in the end", "x = 3", "math-verify plain (latex)"),
        ("I think it is 0.5", "0.5", "math-verify plain (expression)"),
        # Minerva's phrase states the final answer after an intermediate box
        (
            r"so $\boxed{255}$ more. Final Answer: The final answer is $10,455$. I hope it is "
            "correct.",
            "10,455",
            "math-verify final answer is … I hope (latex)",
        ),
        ("I ran out of tokens while thinking about", None, None),
        ("", None, None),
    ],
)
def test_chain_and_rule(text, answer, rule):
    found = extract(text)
    assert (found.answer, found.rule) == (answer, rule)


def test_box_group_ends_the_response():
    assert extract(r"\boxed{1}, \boxed{2} and \boxed{3}").group == "1, 2, 3"
    assert extract(r"\boxed{9}.\n\nSo: \boxed{1} \quad \boxed{2}").group == "1, 2"
    assert extract(r"\boxed{1} is wrong, I mean it \boxed{2}.").group is None  # too much text
    assert extract(r"\boxed{2}").group is None


def test_a_cut_last_box_is_no_answer():
    """Not the earlier, intermediate box (math-verify's own box pattern would take it)."""
    assert extract(r"so \boxed{1}, then \boxed{2") == Extraction(None)
    assert extract(r"so \boxed{1}, then \boxed{2", extraction="seed").answer == "2"


def test_a_box_wins_over_math_verify_phrases():
    assert extract(r"The answer is 5. Check: \boxed{6}") == Extraction("6", "boxed")


@pytest.mark.parametrize(
    "fmt,text,answer,rule",
    [
        ("tale", "so [[12]] and later [[13]] ok", "13", "tale [[...]]"),
        ("tale", "it costs $1,250.", "1250", "tale number"),
        ("tale", "x is 7 and y is 9", "9", "tale number"),
        ("s1", "thinking 5\nAnswer: $\\frac{3}{4}$.\nmore", "\\frac{3}{4}", "s1 Answer:"),
        ("s1", "Final Answer: the value is \\boxed{8}", "8", "s1 Answer: (boxed)"),
        # no answer in the method's format: the common chain still reads the response
        ("tale", r"\boxed{\frac{1}{2}}", "2", "tale number"),
        ("s1", r"so \boxed{4}", "4", "boxed"),
    ],
)
def test_answer_formats(fmt, text, answer, rule):
    assert fmt in ANSWER_FORMATS
    found = extract(text, answer_format=fmt)
    assert (found.answer, found.rule) == (answer, rule)


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="s1, tale"):
        extract("1", answer_format="TALE")
    with pytest.raises(UserError, match="default, qwen, seed"):
        extract("1", extraction="original")


@pytest.mark.parametrize(
    "text,answer",
    [
        (r"**Final Answer**\boxed \sqrt{51}", r"\sqrt{51}"),  # brace-less, whole token
        (r"**Final Answer**\boxed 5 apples$ and more", "5 apples"),  # up to `$`
        (r"so \boxed{12", "12"),  # unclosed (cut at Bt − 50): the rest of the response
        (r"\boxed{1} then \boxed{\frac{2}{3}}.", r"\frac{2}{3}"),
        ("so the answer is 42.", "42"),
        ("The final answer is 3/4.\n", "3/4"),
        ("we have 3 apples and 1,250 pears", "1250"),  # the last number
        ("no digits at all", None),
        ("x:\n 4.", "4"),
        ("答案是 12 答案是 13", "12"),  # up to a second marker, as the original split it
    ],
)
def test_qwen_rule(text, answer):
    assert qwen_answer(text) == answer
    assert extract(text, extraction="seed").answer == answer


def test_qwen_rule_minerva_phrase_only_for_minerva():
    text = r"so \boxed{2}. Final Answer: The final answer is $3$. I hope it is correct."
    assert qwen_answer(text, "minerva_math") == "3"
    assert qwen_answer(text) == "2"
    assert extract(text, "minerva_math", extraction="qwen").answer == "3"
    assert extract(text, "minerva_math", extraction="seed").answer == "2"  # the RL reward's copy


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("0123456789 .,-+=/^_{}()[]$\\abxeFinalswr:\n")), max_size=60
    )
)
def test_never_raises_on_odd_text(text):
    for extraction in ("default", "seed"):
        found = extract(text, extraction=extraction)
        assert found.answer is None or found.answer.strip()
    for fmt in ANSWER_FORMATS:
        extract(text, answer_format=fmt)


def test_one_dollar_rule_for_answers_and_gold():
    from budgetthinker.evaluation.extraction import strip_dollars

    assert strip_dollars(" $5$ ") == "5"
    assert strip_dollars("$$\\frac12$$") == "\\frac12"
    assert strip_dollars("$ 7 $") == "7"
    for kept in ("$1 and $2", "$", "$$", "$5", "5$", "$5 + $3$"):
        assert strip_dollars(kept) == kept
