"""The RL reward (docs/spec.md §5, faithful): accuracy, format and length, combined
0.7 / 0.15 / 0.15.

Plain functions of plain values, so every engine shares them:

* `accuracy_reward` — the shared grader (`budgetthinker.evaluation.grading.grade`): the
  response's final answer (its last `\\boxed{}`, else math-verify's extraction: "the final answer
  is", `$...$`, a plain number) is equivalent to the ground truth. Evaluation and RL never
  disagree. `extraction="seed"` (the recipe's `compat: seed`) is the original reward's rule
  instead: the text after the last "boxed" — `\\boxed X` without braces, an unclosed `\\boxed{X`
  (common after truncation to `Bt − 50`) — else all that follows "the answer is", else the last
  number. The default stays the shared grader, deliberately: the policy is rewarded for exactly
  what the evaluation counts, and an unclosed box may be a cut answer (`\\boxed{12` of
  `\\boxed{123}`). Both read a plain last number when nothing else is found.
  Off the main thread (verl and TRL call rewards from worker threads, where no signal time limit
  can be set) the check runs in a grading process killed at its deadline (`Grader.grade_one`).
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

import atexit
import functools
import re
import threading
from typing import Any

from budgetthinker.control_spec import ANSWER_TAIL
from budgetthinker.evaluation.extraction import check_extraction
from budgetthinker.evaluation.grading import Grader, GradeResult, grade

ACCURACY_WEIGHT = 0.7
FORMAT_WEIGHT = 0.15
LENGTH_WEIGHT = 0.15
MILD_FROM = 1500
"""Under budget, a `Bt` of at least this many tokens gets the mild `1 − d²` curve (faithful)."""

_SPACES_AROUND = re.compile(r"\s*(<|>|/)\s*")
_FORMAT = re.compile(rf".*{re.escape(ANSWER_TAIL)}\{{.*?\}}.*", re.DOTALL)


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


def accuracy_reward(
    text: str, ground_truth: str, timeout: float = 5.0, extraction: str = "default"
) -> float:
    """1.0 if the response's final answer is equivalent to `ground_truth` (the shared grader).

    >>> accuracy_reward("**Final Answer**\\\\boxed{\\\\frac{1}{2}}", "0.5")
    1.0
    """
    return 1.0 if grade_response(text, ground_truth, timeout, extraction).correct else 0.0


def grade_response(
    text: str, ground_truth: str, timeout: float = 5.0, extraction: str = "default"
) -> GradeResult:
    """`grade` of a normalised response; off the main thread in a grading process with a hard
    deadline (`2·timeout + 5` s), since the signal time limit only works on the main thread."""
    text, gold = normalise(text), str(ground_truth)
    if threading.current_thread() is threading.main_thread():
        return grade(text, gold, timeout=timeout, extraction=extraction)
    return _grader(timeout, extraction).grade_one(text, gold)


_GRADERS: dict[tuple[float, str], Grader] = {}
_GRADERS_LOCK = threading.Lock()


def _grader(timeout: float, extraction: str) -> Grader:
    """The grading processes of this reward process, one `Grader` per setting."""
    with _GRADERS_LOCK:
        key = (timeout, extraction)
        if key not in _GRADERS:
            if not _GRADERS:
                atexit.register(_close_graders)
            _GRADERS[key] = Grader(timeout=timeout, extraction=extraction)
        return _GRADERS[key]


def _close_graders() -> None:
    with _GRADERS_LOCK:
        graders = list(_GRADERS.values())
        _GRADERS.clear()
    for grader in graders:
        grader.close()


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
    text: str,
    ground_truth: str,
    *,
    budget: int,
    response_length: int,
    timeout: float = 5.0,
    extraction: str = "default",
) -> dict[str, float]:
    """All reward parts of one response: `score` (overall), `accuracy`, `format`, `length`.

    `text` is the response as scored (already truncated to `Bt − 50` tokens by the rollout),
    `response_length` the untruncated number of generated tokens, `extraction` `"default"` or
    `"seed"` (the original reward's answer rule; see the module docstring).
    """
    _check_int("budget", budget)
    _check_int("response_length", response_length, minimum=0)
    accuracy = accuracy_reward(text, ground_truth, timeout, extraction)
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
    `reward.custom_reward_function.reward_kwargs` may set `extraction` (`default` or `seed`, the
    original reward's answer rule) and `timeout` (seconds per check).
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
    return score(
        solution_str,
        ground_truth,
        budget=int(info["budget"]),
        response_length=int(info["response_length"]),
        timeout=float(kwargs.get("timeout", 5.0)),
        extraction=str(kwargs.get("extraction", "default")),
    )


def trl_reward(
    prompts: list[Any],
    completions: list[Any],
    answer: list[str],
    budget: list[int],
    response_length: list[int],
    log_metric: Any = None,
    extraction: str = "default",
    **kwargs: Any,
) -> list[float]:
    """TRL adapter: the overall reward per completion; the parts are logged as metrics.

    `answer` comes from the dataset, `budget` and `response_length` from the budget rollout
    (`budgetthinker.rl.trl_grpo`). Completions are TRL's decoded text (no special tokens).
    `extraction="seed"` (bound by `make_trl_reward`) is the original reward's answer rule.
    """
    results = [
        score(_text(c), a, budget=b, response_length=n, extraction=extraction)
        for c, a, b, n in zip(completions, answer, budget, response_length, strict=True)
    ]
    if log_metric is not None:
        for part in ("accuracy", "format", "length"):
            log_metric(f"reward/{part}", sum(r[part] for r in results) / max(len(results), 1))
    return [r["score"] for r in results]


def make_trl_reward(extraction: str = "default") -> Any:
    """`trl_reward` with the answer rule bound (`"seed"` under `compat: seed`), named as TRL
    logs reward functions."""
    check_extraction(extraction)
    bound = functools.partial(trl_reward, extraction=extraction)
    bound.__name__ = "trl_reward"  # type: ignore[attr-defined]
    return bound


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
