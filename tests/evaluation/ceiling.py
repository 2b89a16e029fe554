"""The budget ceiling, checked on every finished sample: a method that promises a thinking
budget (an `Outcome.ceiling`, recorded as `thinking_budget`) never thinks past it."""

from __future__ import annotations

from collections.abc import Iterable


def assert_within_budget(samples: Iterable) -> list:
    """Every sample (a result record or an `Outcome`) whose method promises a thinking budget
    has `thinking_tokens ≤` that budget. Returns the samples, so it wraps a read."""
    samples = list(samples)
    for s in samples:
        if isinstance(s, dict):
            ceiling, used, who = s.get("thinking_budget"), s["thinking_tokens"], s["method"]
        else:
            ceiling, used, who = s.ceiling, s.thinking_tokens, s.extra
        if ceiling is not None:
            assert used is not None and used <= ceiling, (
                f"{who}: {used} thinking tokens over the budget {ceiling}"
            )
    return samples
