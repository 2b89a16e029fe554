"""Metrics on hand-made sample records, against values computed by hand."""

from __future__ import annotations

import pytest

from budgetthinker.evaluation.metrics import point_metrics, sweep_metrics


def r(sample, correct, thinking, total, finished, ends=1, budget=100, secs=0.5):
    return {
        "sample": sample,
        "correct": correct,
        "thinking_tokens": thinking,
        "output_tokens": total,
        "finished_thinking": finished,
        "think_end_count": ends,
        "budget": budget,
        "gen_seconds": secs,
    }


def test_point_metrics_by_hand():
    records = [
        r(0, True, 80, 100, True),  # within budget
        r(1, False, 120, 130, True),  # finished but over budget
        r(0, False, 102, 110, False, ends=0),  # cut off (not self-terminated)
        r(0, True, 50, 200, True, ends=2),  # overshoot: two </think>
    ]
    m = point_metrics(records)
    assert m.problems == 3 and m.samples == 4
    assert m.accuracy == pytest.approx(2 / 3)  # first samples: True, False, True
    assert m.accuracy_all == pytest.approx(2 / 4)
    assert m.mean_thinking == pytest.approx((80 + 120 + 102 + 50) / 4)
    assert m.median_thinking == pytest.approx((80 + 102) / 2)
    assert m.mean_total == pytest.approx(135)
    assert m.within_budget == pytest.approx(2 / 4)
    assert m.mean_rel_deviation == pytest.approx((0.2 + 0.2 + 0.02 + 0.5) / 4)
    assert m.overshoot == 1
    assert m.wall_seconds == pytest.approx(2.0)
    assert m.tokens_per_second == pytest.approx(540 / 2.0)


def test_sweep_metrics_by_hand():
    def point(acc, think):
        return point_metrics(
            [r(0, True, think, think, True)] * int(acc * 10)
            + [r(0, False, think, think, True)] * (10 - int(acc * 10))
        )

    points = [(100, point(0.2, 90)), (200, point(0.4, 150)), (400, point(0.5, 450))]
    s = sweep_metrics(points)
    assert s.control == pytest.approx(2 / 3)  # 450 > 400
    slopes = [(40 - 20) / 60 * 1000, (50 - 20) / 360 * 1000, (50 - 40) / 300 * 1000]
    assert s.scaling == pytest.approx(sum(slopes) / 3)
    assert s.performance == pytest.approx(0.5)
    assert sweep_metrics(points[:1]).scaling is None


def test_adherence_by_hand_and_without_delimiters():
    records = [
        r(0, True, 80, 100, True),
        r(0, True, 150, 160, False, ends=0),  # correct, but its thinking did not fit in B
        r(0, False, 90, 95, True),
        r(0, True, 100, 120, False, ends=0),  # forced end exactly at B: fits
    ]
    m = point_metrics(records)
    assert m.never_finished == pytest.approx(2 / 4)
    assert m.accuracy_within_budget == pytest.approx(2 / 4)
    assert m.within_budget == pytest.approx(2 / 4)
    unknown = point_metrics([{**x, "finished_thinking": None} for x in records])
    assert unknown.within_budget is None and unknown.never_finished is None
    assert unknown.accuracy_within_budget == pytest.approx(2 / 4)
