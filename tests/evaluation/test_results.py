"""The results file: append, resume after a torn write, no duplicates."""

from __future__ import annotations

import json

from budgetthinker.evaluation.results import KEY_FIELDS, ResultsFile


def rec(i: int, **extra) -> dict:
    base = dict.fromkeys(KEY_FIELDS, "x")
    base.update(problem_id=str(i), sample=0, budget=64, **extra)
    return base


def test_append_and_reload(tmp_path):
    path = tmp_path / "samples.jsonl"
    f = ResultsFile(path)
    f.append([rec(0), rec(1)])
    f.append([rec(1), rec(2)])  # rec(1) is already there
    again = ResultsFile(path)
    assert [r["problem_id"] for r in again.records] == ["0", "1", "2"]
    assert len(path.read_text().splitlines()) == 3


def test_torn_last_line_is_cut(tmp_path):
    path = tmp_path / "samples.jsonl"
    ResultsFile(path).append([rec(0), rec(1)])
    with path.open("a") as f:
        f.write(json.dumps(rec(2))[:25])  # a crash in the middle of a write
    resumed = ResultsFile(path)
    assert [r["problem_id"] for r in resumed.records] == ["0", "1"]
    resumed.append([rec(2)])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["problem_id"] for line in lines] == ["0", "1", "2"]
