"""The RL reward as docs/spec.md §5: a grid of (L, B, correct, format) incl. the piecewise edges."""

from __future__ import annotations

import math
import threading
import time

import pytest

from budgetthinker.rl import reward
from budgetthinker.rl.reward import (
    budget_with_tokens,
    compute_score,
    format_reward,
    length_reward,
    score,
)

GOOD = "Let me think.\n</think>\n**Final Answer**\\boxed{42}"  # correct, formatted
WRONG = "Let me think.\n</think>\n**Final Answer**\\boxed{41}"  # wrong, formatted
PLAIN = "so the answer is \\boxed{42}"  # correct, not formatted
NOTHING = "I ran out of tokens while thinking about"  # wrong, not formatted


def oracle(length: int, budget: int, accuracy: float, fmt: float) -> float:
    """docs/spec.md §5 written out once more, independently of the module."""
    bt = budget + budget // 50
    d = (length - bt) / bt
    if length >= bt:
        r = max(1 - 16 * d**2, 0)
    elif bt >= 1500:
        r = max(1 - d**2, 0)
    else:
        r = max(1 - 16 * d**2, 0)
    if accuracy == 1 and length <= bt:
        r = 1
    return 0.7 * accuracy + 0.15 * fmt + 0.15 * r


def test_bt():
    assert [budget_with_tokens(b) for b in (50, 1450, 1500, 2000, 6000)] == [
        51,
        1479,
        1530,
        2040,
        6120,
    ]


# Budgets around the Bt = 1500 boundary: B = 1450 → Bt 1479 (harsh), B = 1500 → Bt 1530 (mild);
# 1471 is the smallest B with Bt = 1500 exactly (1471 + 29 = 1500).
BUDGETS = (50, 1450, 1471, 1500, 2000, 6000)


def lengths_for(budget: int) -> list[int]:
    bt = budget_with_tokens(budget)
    return sorted(
        {
            0,
            1,
            bt // 2,
            bt - 50,
            bt - 1,
            bt,  # L = Bt: over-budget branch with d = 0 → 1
            bt + 1,
            bt + bt // 8,
            math.ceil(1.25 * bt) - 1,
            math.ceil(1.25 * bt),  # 1.25·Bt: length reward reaches 0
            2 * bt,  # far over
        }
    )


CASES = [
    (text, acc, fmt)
    for text, acc, fmt in ((GOOD, 1, 1), (WRONG, 0, 1), (PLAIN, 1, 0), (NOTHING, 0, 0))
]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize(("text", "acc", "fmt"), CASES)
def test_grid_matches_spec(budget, text, acc, fmt):
    for length in lengths_for(budget):
        got = score(text, "42", budget=budget, response_length=length)
        assert got["accuracy"] == acc and got["format"] == fmt
        assert got["score"] == pytest.approx(oracle(length, budget, acc, fmt), abs=1e-12), length


def test_edges_by_hand():
    # L = Bt: d = 0 → 1, whatever the accuracy.
    assert length_reward(2040, 2000, 0.0) == 1.0
    # Under budget, Bt ≥ 1500 (mild): half the budget → 1 − 0.25.
    assert length_reward(1020, 2000, 0.0) == pytest.approx(0.75)
    # Bt = 1500 exactly is mild; Bt = 1479 is harsh: 16·0.25 → 0.
    assert budget_with_tokens(1471) == 1500
    assert length_reward(750, 1471, 0.0) == pytest.approx(0.75)
    assert length_reward(1479 // 2, 1450, 0.0) == pytest.approx(max(1 - 16 * (740 / 1479) ** 2, 0))
    assert length_reward(1479 // 2, 1450, 0.0) == 0.0
    # Over budget: 1.25·Bt and beyond → 0; 1.125·Bt → 0.75.
    assert length_reward(2550, 2000, 1.0) == 0.0
    assert length_reward(4080, 2000, 1.0) == 0.0
    assert length_reward(2295, 2000, 1.0) == pytest.approx(1 - 16 * (255 / 2040) ** 2)
    # A correct answer within Bt always gets the full length reward, even a very short one.
    assert length_reward(1, 1450, 1.0) == 1.0
    assert length_reward(2041, 2000, 1.0) < 1.0


def test_overall_weights():
    assert score(GOOD, "42", budget=2000, response_length=1000)["score"] == pytest.approx(1.0)
    assert score(NOTHING, "42", budget=2000, response_length=4080)["score"] == 0.0
    assert score(WRONG, "42", budget=2000, response_length=2040)["score"] == pytest.approx(0.3)


def test_format_whitespace_around_brackets_and_slash():
    assert format_reward("< / think >\n** Final Answer **\\boxed{1}") == 0.0  # spaces inside **
    assert format_reward("</think>\n**Final Answer**\\boxed{1}") == 1.0
    assert format_reward("**Final Answer**\\boxed{ 1 / 2 }") == 1.0
    assert format_reward("**Final Answer** \\boxed{1}") == 0.0  # faithful: no space allowed there
    assert format_reward("**Final Answer**\\boxed{1") == 0.0
    assert format_reward("text\n**Final Answer**\\boxed{}\nmore") == 1.0


def test_accuracy_uses_the_shared_grader():
    assert (
        score("**Final Answer**\\boxed{\\frac{1}{2}}", "0.5", budget=100, response_length=10)[
            "accuracy"
        ]
        == 1.0
    )
    assert score("\\boxed{1} then \\boxed{2}", "1", budget=100, response_length=10)["accuracy"] == 0


def test_compute_score_verl_adapter():
    got = compute_score(
        "budget_math", GOOD, "42", extra_info={"budget": 2000, "response_length": 2295, "index": 3}
    )
    assert set(got) == {"score", "accuracy", "format", "length"}
    assert got["score"] == pytest.approx(oracle(2295, 2000, 1, 1))


def test_compute_score_needs_budget_and_length():
    with pytest.raises(ValueError, match="lacks budget, response_length"):
        compute_score("x", GOOD, "42", extra_info=None)
    with pytest.raises(ValueError, match="lacks response_length"):
        compute_score("x", GOOD, "42", extra_info={"budget": 100})
    with pytest.raises(ValueError, match="budget must be an integer"):
        score(GOOD, "42", budget=0, response_length=3)


def test_trl_adapter_and_pickling():
    logged = {}
    rewards = reward.trl_reward(
        prompts=["p", "p"],
        completions=[GOOD, [{"role": "assistant", "content": NOTHING}]],
        completion_ids=[[1], [2]],
        answer=["42", "42"],
        budget=[100, 100],
        response_length=[50, 200],
        log_metric=logged.__setitem__,
    )
    assert rewards == [pytest.approx(1.0), 0.0]
    assert logged == {"reward/accuracy": 0.5, "reward/format": 0.5, "reward/length": 0.5}


# The original reward's answer rule (compat: seed) against the default shared grader.
SEED_ONLY = [
    "**Final Answer**\\boxed 42",  # no braces: both rules read it
    "**Final Answer**\\boxed{42",  # unclosed, as after truncation to Bt - 50
    "so the answer is 42",
    "I computed 6 * 7 = 42",
    "**Final Answer**\\boxed \\sqrt{51}",
]


@pytest.mark.parametrize(
    ("text", "gold", "default", "seed"),
    [
        (SEED_ONLY[0], "42", 1.0, 1.0),
        (SEED_ONLY[1], "42", 0.0, 1.0),
        (SEED_ONLY[2], "42", 1.0, 1.0),
        (SEED_ONLY[3], "42", 1.0, 1.0),
        (SEED_ONLY[4], "\\sqrt{51}", 1.0, 1.0),  # not `\sqrt{51` (the whole braced token)
        ("**Final Answer**\\boxed{41", "41", 0.0, 1.0),
        # an empty cut box: the original reads the box (nothing); the default, the text
        ("it is 41 and then I wrote **Final Answer**\\boxed{", "41", 1.0, 0.0),
        ("so the answer is 5, not 42", "42", 0.0, 0.0),
        ("\\boxed{42} and later the answer is 41", "42", 1.0, 1.0),  # a box wins in both
    ],
)
def test_seed_extraction(text, gold, default, seed):
    assert reward.accuracy_reward(text, gold) == default
    assert reward.accuracy_reward(text, gold, extraction="seed") == seed
    got = compute_score("x", text, gold, {"budget": 100, "response_length": 10}, extraction="seed")
    assert got["accuracy"] == seed


def test_trl_reward_with_the_seed_rule():
    seed = reward.make_trl_reward("seed")
    assert seed.__name__ == "trl_reward"
    args = {"prompts": ["p"], "answer": ["42"], "budget": [100], "response_length": [10]}
    assert seed(completions=[SEED_ONLY[1]], **args) == [pytest.approx(0.7 + 0.15)]
    assert reward.make_trl_reward()(completions=[SEED_ONLY[1]], **args) == [0.0]


def test_unknown_extraction_is_an_error():
    with pytest.raises(Exception, match="grading.extraction must be one of"):
        reward.accuracy_reward("\\boxed{1}", "1", extraction="original")


def test_compute_score_keeps_its_time_limit_off_the_main_thread():
    """verl and TRL call rewards from worker threads, where no signal timer can be set: the
    check runs in a grading process under a deadline instead of hanging the trainer."""
    hang = "**Final Answer**\\boxed{9^{9^{9^{9}}}}"
    info = {"budget": 100, "response_length": 10}
    results = []

    def work():
        results.append(compute_score("x", hang, "1", info, timeout=1.0))
        results.append(compute_score("x", GOOD, "42", info, timeout=1.0))

    thread = threading.Thread(target=work)
    started = time.monotonic()
    thread.start()
    thread.join(180)
    assert not thread.is_alive(), "the reward hung off the main thread"
    assert [r["accuracy"] for r in results] == [0.0, 1.0]
    assert results[0]["format"] == 1.0
    assert time.monotonic() - started < 120
