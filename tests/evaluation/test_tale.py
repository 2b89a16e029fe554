"""TALE: prompt strings byte-exact against the original (reference notes A.2–A.3, A.8), budget
injection, estimate parsing, renderings, and the `[[answer]]` format in the grader."""

from __future__ import annotations

import pytest

from budgetthinker import tale
from budgetthinker.errors import UserError

Q = "Tom has 3 apples. How many?"


def test_gsm8k_prompts_are_the_originals_byte_for_byte():
    assert tale.cot_prompt(Q) == (
        "Q: Tom has 3 apples. How many?\nPlease Give the response by strictly following this "
        "format: [[answer]], for example: Answer: [[50]].Let's think step by step:\n"
    )
    assert tale.direct_prompt(Q) == (
        "Please answer the following question and give the answer directly without any "
        "reasoning process. Please Give the response by strictly following this format: "
        "[[answer]], for example: Answer: [[50]].\nQ: Tom has 3 apples. How many?"
    )
    # the budget sentence replaces the trigger in place: no space after "[[50]]." (as in the source)
    assert tale.budget_prompt(Q, 50).endswith(
        "[[answer]], for example: Answer: [[50]].Let's think step by step and use less than "
        "50 tokens:\n"
    )
    assert tale.budget_prompt(Q, 7) == tale.add_budget(tale.cot_prompt(Q), 7)


def test_other_families_and_chinese_trigger():
    assert tale.cot_prompt("X", "mathbench_choice") == (
        "X\nPlease Give the response by strictly following this format: [[choice]],for example: "
        "Choice: [[A]].\nLet's think step by step:\n"
    )
    assert tale.direct_prompt("X", "mathbench_choice").startswith(
        "Please answer the following question directly and give the answer directly without any "
        "reasoning process. Please strictLy follow the format:"
    )
    assert tale.budget_prompt("X", 26, "mathbench_choice_cn").endswith(
        "让我们一步一步思考并使用少于 26 tokens:\n"
    )
    assert tale.cot_prompt("X", "mathbench_cloze") == "Q: X\nLet's think step by step:\n"


def test_estimator_prompt_is_the_original():
    assert tale.estimator_prompt("P") == (
        "Task: Analyze the given question and estimate the minimum number of tokens required to "
        "generate a complete and accurate response. Please Give the response by strictly "
        "following this format: [[budget]],for example: Budget: [[12]].\n\nBelow is the "
        'question:\n\nQuestion: "P"\n'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Budget: [[120]]", 120),
        ("[[12]] then [[80]]", 12),  # re.search: the first one
        ("Budget: [[0]]", 0),
        ("Budget: 120 tokens", None),
        ("Budget: [[about 50]]", None),
        ("", None),
    ],
)
def test_parse_estimate(text, expected):
    assert tale.parse_estimate(text) == expected


def test_renderings(tokenizer):
    assert (
        tale.render(tokenizer, "P", "tale") == "You are a helpful assistant.\nUser: P\nAssistant:"
    )
    chat = tale.render(tokenizer, "P")
    assert chat == tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "P"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "You are a helpful assistant." in chat and chat != "P"


def test_bad_input_is_one_clear_error():
    with pytest.raises(UserError, match="unknown TALE prompt family 'gsm9k'; choose one of gsm8k"):
        tale.cot_prompt(Q, "gsm9k")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(UserError, match="positive integer"):
            tale.budget_prompt(Q, bad)
    with pytest.raises(UserError, match="no CoT trigger"):
        tale.add_budget("no trigger here", 10)
    with pytest.raises(UserError, match="no direct-answer prompt"):
        tale.direct_prompt(Q, "gpqa")
    with pytest.raises(UserError, match="unknown TALE compat"):
        tale.render(None, "P", "vllm")


def test_the_grader_reads_the_tale_answer_format():
    from budgetthinker.evaluation.grading import grade

    result = grade("2 + 3 = 5, so Answer: [[5]]. Check: [[5]]", "5", answer_format="tale")
    assert result.correct and result.predicted == "5"
    assert not grade("Answer: [[6]] (the 5 is wrong)", "5", answer_format="tale").correct
    assert grade("So he has $1,250.", "1250", answer_format="tale").correct
