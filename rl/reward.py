"""The RL reward (SPEC §5, faithful): accuracy, format and length, combined 0.7 / 0.15 / 0.15.

Plain functions of plain values, so every engine shares them:

* `accuracy_reward` — the shared grader (`budgetthinker.evaluation.grading.grade`): the last
  `\\boxed{}` answer is equivalent to the ground truth. Evaluation and RL never disagree.
* `format_reward` — after removing whitespace around `<`, `>` and `/`, the response contains
  `**Final Answer**\\boxed{...}`.
* `length_reward` — piecewise in `d = (L − Bt) / Bt` with `Bt = B + B // 50` and `L` the
  *untruncated* response length in tokens; a correct answer within `Bt` gets the full 1.
* `score` — all of the above for one response; `compute_score` is the verl adapter
  (`reward.custom_reward_function.name=compute_score`), `trl_reward` the TRL one.

The response text is scored as the engines decode it: without special tokens, so the control
tokens are not part of it (they still count in `L`).

>>> score("so **Final Answer**\\\\boxed{4}", "4", budget=1000, response_length=600)["score"]
1.0
"""

from __future__ import annotations

import re
from typing import Any

from budgetthinker.evaluation.grading import grade

ACCURACY_WEIGHT = 0.7
FORMAT_WEIGHT = 0.15
LENGTH_WEIGHT = 0.15
MILD_FROM = 1500
"""Under budget, a `Bt` of at least this many tokens gets the mild `1 − d²` curve (faithful)."""

_SPACES_AROUND = re.compile(r"\s*(<|>|/)\s*")
_FORMAT = re.compile(r".*\*\*Final Answer\*\*\\boxed\{.*?\}.*", re.DOTALL)


def budget_with_tokens(budget: int) -> int:
    """`Bt = B + B // 50`: the budget plus the legacy allowance for control tokens (faithful)."""
    return budget + budget // 50


def normalise(text: str) -> str:
    """The response with whitespace around `<`, `>` and `/` removed, as the original scored it."""
    return _SPACES_AROUND.sub(r"\1", text)


def format_reward(text: str) -> float:
    """1.0 if the response contains `**Final Answer**\\boxed{...}`, else 0.0.

    >>> format_reward("thinking </think>\\n**Final Answer**\\\\boxed{12}")
    1.0
    """
    return 1.0 if _FORMAT.fullmatch(normalise(text)) else 0.0


def accuracy_reward(text: str, ground_truth: str, timeout: float = 5.0) -> float:
    """1.0 if the last `\\boxed{}` answer is equivalent to `ground_truth` (the shared grader).

    >>> accuracy_reward("**Final Answer**\\\\boxed{\\\\frac{1}{2}}", "0.5")
    1.0
    """
    return 1.0 if grade(normalise(text), str(ground_truth), timeout=timeout).correct else 0.0


def length_reward(length: int, budget: int, accuracy: float) -> float:
    """Length reward of a response of `length` tokens (untruncated) under budget `budget`.

    >>> length_reward(2040, 2000, 0.0), length_reward(1020, 2000, 0.0), length_reward(51, 50, 0.0)
    (1.0, 0.75, 1.0)
    """
    bt = budget_with_tokens(budget)
    if accuracy == 1 and length <= bt:
        return 1.0
    d = (length - bt) / bt
    if length >= bt or bt < MILD_FROM:
        return max(1.0 - 16.0 * d * d, 0.0)
    return max(1.0 - d * d, 0.0)


def overall_reward(accuracy: float, fmt: float, length: float) -> float:
    """`0.7·accuracy + 0.15·format + 0.15·length`."""
    return ACCURACY_WEIGHT * accuracy + FORMAT_WEIGHT * fmt + LENGTH_WEIGHT * length


def score(
    text: str, ground_truth: str, *, budget: int, response_length: int, timeout: float = 5.0
) -> dict[str, float]:
    """All reward parts of one response: `score` (overall), `accuracy`, `format`, `length`.

    `text` is the response as scored (already truncated to `Bt − 50` tokens by the rollout),
    `response_length` the untruncated number of generated tokens.
    """
    _check_int("budget", budget)
    _check_int("response_length", response_length, minimum=0)
    accuracy = accuracy_reward(text, ground_truth, timeout)
    fmt = format_reward(text)
    length = length_reward(response_length, budget, accuracy)
    return {
        "score": overall_reward(accuracy, fmt, length),
        "accuracy": accuracy,
        "format": fmt,
        "length": length,
    }


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl adapter (`reward.custom_reward_function.name=compute_score`).

    Reads the batch's budget B from `extra_info["budget"]` and the untruncated response length L
    from `extra_info["response_length"]`; `solution_str` is the truncated response decoded
    without special tokens (verl's default). `data_source` is not used: one reward for all rows.
    """
    info = extra_info or {}
    missing = [k for k in ("budget", "response_length") if info.get(k) is None]
    if missing:
        raise ValueError(
            f"budgetthinker reward: extra_info lacks {', '.join(missing)} (it has "
            f"{', '.join(sorted(info)) or 'nothing'}); the budget comes from the curriculum "
            "dataset and response_length from the budget rollout — use budgetthinker's rl "
            "recipe (configs/rl/*.yaml), not a plain verl dataset"
        )
    timeout = float(kwargs.get("timeout", 5.0))
    return score(
        solution_str,
        ground_truth,
        budget=int(info["budget"]),
        response_length=int(info["response_length"]),
        timeout=timeout,
    )


def trl_reward(
    prompts: list[Any],
    completions: list[Any],
    answer: list[str],
    budget: list[int],
    response_length: list[int],
    log_metric: Any = None,
    **kwargs: Any,
) -> list[float]:
    """TRL adapter: the overall reward per completion; the parts are logged as metrics.

    `answer` comes from the dataset, `budget` and `response_length` from the budget rollout
    (`budgetthinker.rl.trl_grpo`). Completions are TRL's decoded text (no special tokens).
    """
    results = [
        score(_text(c), a, budget=b, response_length=n)
        for c, a, b, n in zip(completions, answer, budget, response_length, strict=True)
    ]
    if log_metric is not None:
        for part in ("accuracy", "format", "length"):
            log_metric(f"reward/{part}", sum(r[part] for r in results) / max(len(results), 1))
    return [r["score"] for r in results]


def _text(completion: Any) -> str:
    """A TRL completion: plain text, or a conversational `[{"role": ..., "content": ...}]`."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion)
    return str(completion)


def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"budgetthinker reward: {name} must be an integer >= {minimum}, got {value!r}"
        )
