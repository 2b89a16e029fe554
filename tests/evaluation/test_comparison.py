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


# Issue #21: runs are never pooled into one row ----------------------------------------------


def _two_runs(tmp_path):
    """Two real runs of model=default with different settings (max_new_tokens), answered by a
    fake OpenAI-compatible server so they take seconds."""
    from tests.clirun import cli, eval_args
    from tests.patches.fake_openai import FakeServer

    with FakeServer("good") as server:
        for name, extra in (("rA", "max_new_tokens=16"), ("rB", "max_new_tokens=12")):
            args = eval_args(tmp_path / "runs", name, "backend=openai", f"endpoint={server.url}",
                             extra)  # fmt: skip
            proc = cli(*args)
            assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp_path / "runs" / "rA", tmp_path / "runs" / "rB"


@pytest.mark.slow
def test_report_keys_rows_by_run_and_names_what_differs(tmp_path):
    from tests.clirun import cli

    ra, rb = _two_runs(tmp_path)
    proc = cli("report", ra, rb, "--out", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    assert "[report] the runs differ in max_new_tokens; one row per run and point" in proc.stdout
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| rA: control | 16 |" in md and "| rB: control | 16 |" in md  # two rows, not one
    assert "| rA | " in md and "| 16 |" in md and "| 12 |" in md  # the runs table
    # the same folder twice is refused; runs of the same name are labelled by their paths
    twice = cli("report", ra, f"{ra}/", "--out", tmp_path / "cmp2")
    assert twice.returncode == 2 and "is given twice" in twice.stderr
    other = tmp_path / "elsewhere" / "rA"
    other.parent.mkdir()
    other.symlink_to(rb, target_is_directory=True)
    proc = cli("report", ra, other, "--out", "~/cmp3", env={"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "labelled by their paths: runs/rA, elsewhere/rA" in proc.stdout
    md = (tmp_path / "cmp3" / "report.md").read_text()  # `~` is the home folder
    assert "| runs/rA: control | 16 |" in md and "| elsewhere/rA: control | 16 |" in md


def test_summary_rows_are_per_run(tmp_path):
    from budgetthinker.evaluation.report import summarize

    records = [r | {"run": run} for run in ("a", "b") for r in RECORDS[:2]]
    rows = summarize(records)
    assert [(p["run"], p["method"], p["budget"]) for p, _ in rows] == [
        ("a", "control", 32), ("a", "control", 64), ("b", "control", 32), ("b", "control", 64)
    ]  # fmt: skip


def test_a_dollar_in_a_method_label_is_printed_literally(tmp_path):
    """An unbalanced `$…$` label was a mathtext traceback when the plots were drawn."""
    records = [r | {"method": "$\\frac{a$"} for r in RECORDS[:2]]
    write_report(tmp_path, records)
    assert (tmp_path / "report_plots" / "org_math_accuracy_vs_tokens.png").is_file()
    assert "| $\\frac{a$ | 32 |" in (tmp_path / "report.md").read_text()
