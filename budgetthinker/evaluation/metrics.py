"""Metrics over graded samples: per sweep point and, over a sweep, s1's Control/Scaling/Performance.

A sample record (one line of `samples.jsonl`) carries at least: `correct`, `sample`,
`thinking_tokens`, `output_tokens`, `finished_thinking`, `think_end_count`, `budget`,
`gen_seconds`. `finished_thinking` is None for a model without known thinking delimiters: the
adherence figures that need it are then None ("no delimiters"), never a silent 0.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations


@dataclass
class PointMetrics:
    """Metrics of one (model, backend, method, benchmark, budget) sweep point."""

    problems: int
    samples: int
    accuracy: float  # first sample of each problem
    accuracy_all: float  # over all samples
    mean_thinking: float
    median_thinking: float
    mean_total: float
    median_total: float
    within_budget: float | None  # share whose thinking ended by itself within B
    mean_rel_deviation: float  # mean |thinking − B| / B
    overshoot: int  # outputs with more than one </think>
    never_finished: float | None  # share whose thinking never ended by itself
    accuracy_within_budget: float  # first samples correct with thinking that fit in B
    wall_seconds: float
    tokens_per_second: float


def point_metrics(records: Sequence[dict]) -> PointMetrics:
    if not records:
        raise ValueError("no records")
    budget = records[0]["budget"]
    first = [r for r in records if r["sample"] == 0]
    thinking = [r["thinking_tokens"] for r in records]
    total = [r["output_tokens"] for r in records]
    seconds = sum(r.get("gen_seconds", 0.0) for r in records)
    known = all(r["finished_thinking"] is not None for r in records)
    return PointMetrics(
        problems=len(first),
        samples=len(records),
        accuracy=_mean(r["correct"] for r in first),
        accuracy_all=_mean(r["correct"] for r in records),
        mean_thinking=statistics.fmean(thinking),
        median_thinking=float(statistics.median(thinking)),
        mean_total=statistics.fmean(total),
        median_total=float(statistics.median(total)),
        within_budget=_mean(
            r["finished_thinking"] and r["thinking_tokens"] <= budget for r in records
        ) if known else None,
        mean_rel_deviation=statistics.fmean(abs(t - budget) / budget for t in thinking),
        overshoot=sum(r["think_end_count"] > 1 for r in records),
        never_finished=_mean(not r["finished_thinking"] for r in records) if known else None,
        accuracy_within_budget=_mean(
            r["correct"] and r["thinking_tokens"] <= budget for r in first
        ),
        wall_seconds=seconds,
        tokens_per_second=sum(total) / seconds if seconds > 0 else 0.0,
    )


@dataclass
class SweepMetrics:
    """s1's metrics over the budget points of one (model, backend, method, benchmark).

    control: share of points whose mean thinking length stays within the budget;
    scaling: mean pairwise slope of accuracy (percentage points) per 1000 thinking tokens,
    over points ordered by thinking length; performance: best accuracy.
    """

    points: int
    control: float
    scaling: float | None
    performance: float


def sweep_metrics(points: Sequence[tuple[int, PointMetrics]]) -> SweepMetrics:
    """`points`: (budget, metrics) pairs of one sweep."""
    control = _mean(m.mean_thinking <= b for b, m in points)
    ordered = sorted((m.mean_thinking, 100.0 * m.accuracy) for _, m in points)
    slopes = [
        (fb - fa) / (b - a) * 1000.0 for (a, fa), (b, fb) in combinations(ordered, 2) if b > a
    ]
    return SweepMetrics(
        points=len(points),
        control=control,
        scaling=statistics.fmean(slopes) if slopes else None,
        performance=max(m.accuracy for _, m in points),
    )


def _mean(values: Iterable[bool | float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0
