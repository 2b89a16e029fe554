"""The comparison report from hand-built records: Pareto front, adherence, Hugging Face ids as
benchmark names, the self-contained HTML, and `budgetthinker report` over two runs."""

from __future__ import annotations

import json

import pytest

from budgetthinker.cli import main
from budgetthinker.evaluation.comparison import pareto_front, write_comparison, write_report


def record(method, budget, thinking, correct, model="base", benchmark="org/math", pid="p0",
           finished=True):  # fmt: skip
    return {
        "model": model, "backend": "hf", "method": method, "two_stage": False,
        "benchmark": benchmark, "budget": budget, "problem_id": pid, "sample": 0,
        "correct": correct, "thinking_tokens": thinking, "output_tokens": thinking + 5,
        "finished_thinking": finished, "think_end_count": 1, "gen_seconds": 0.5,
    }  # fmt: skip


RECORDS = [
    record("control", 32, 30, True), record("control", 64, 60, True),
    record("s1", 32, 32, False, finished=False), record("s1", 64, 50, True),
    record("none", 32, 80, True, finished=None), record("none", 64, 90, True, finished=None),
]  # fmt: skip


def test_pareto_front():
    points = [(30, 1.0), (60, 1.0), (32, 0.0), (50, 1.0), (10, 0.2)]
    assert sorted(pareto_front(points)) == [0, 4]


def test_report_with_a_hub_benchmark_name(tmp_path):
    write_report(tmp_path, RECORDS)  # the summary plots and the comparison, both sanitised
    assert (tmp_path / "plots" / "org_math_accuracy.png").is_file()
    assert (tmp_path / "report_plots" / "org_math_accuracy_vs_tokens.png").is_file()
    md = (tmp_path / "report.md").read_text()
    assert "## org/math" in md
    assert "| s1 | 32 | 0% | 0.00 | 0 | 100% | 0.0% | 0.0% | 32.0 |" in md
    assert "| none | 32 | — |" in md  # no delimiters: unknown, not "never finished"
    assert "No thinking delimiters known for: none" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "src=\"report_plots" not in page
    assert "<td>control</td>" in page


def test_report_command_over_two_runs(tmp_path, capsys):
    for model in ("base", "trained"):
        run = tmp_path / model
        run.mkdir()
        lines = [json.dumps(r | {"model": model}) for r in RECORDS[:4]]
        (run / "samples.jsonl").write_text("\n".join(lines) + "\n{cut by a ki")
    out = tmp_path / "cmp"
    runs = [str(tmp_path / "base"), str(tmp_path / "trained")]
    assert main(["report", *runs, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| base: control | 32 |" in md and "| trained: s1 | 64 |" in md
    assert main(["report", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "is not a finished evaluation run (no samples.jsonl)" in capsys.readouterr().err


def test_empty_records_write_nothing(tmp_path):
    assert write_comparison(tmp_path, []) is None
    with pytest.raises(FileNotFoundError):
        (tmp_path / "report.md").read_text()


def test_report_shows_tale_ep_estimates(tmp_path):
    """TALE-EP samples carry their estimate; the report gives the in-range rate and the budget
    actually used per sweep point (fallbacks count as out of range)."""
    extra = [
        {"tale_estimate": 40, "tale_estimate_status": "ok", "tale_estimate_in_range": True,
         "tale_budget": 40},
        {"tale_estimate": None, "tale_estimate_status": "unparsable",
         "tale_estimate_in_range": False, "tale_budget": 64},
    ]  # fmt: skip
    records = [
        {**record("tale_ep", 64, t, True, pid=f"p{i}"), **e}
        for i, (t, e) in enumerate(zip((30, 50), extra, strict=True))
    ]
    text = write_comparison(tmp_path, [*RECORDS, *records]).read_text()
    assert "## Budget estimates (TALE-EP)" in text
    assert "| tale_ep | org/math | 64 | 2 | 50% | 52 | 40.0 |" in text
    plain = write_comparison(tmp_path / "plain", RECORDS).read_text()
    assert "Budget estimates" not in plain
