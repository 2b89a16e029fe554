"""`budgetthinker.pipelines.stages`: real subprocess stages, resume, records, locks, dry run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from budgetthinker.errors import UserError
from budgetthinker.pipelines.stages import Pipeline, Stage


def _writer(path: Path, text: str) -> list[str]:
    """A real command that writes `text` to `path` and appends to a run counter beside it."""
    code = (
        "import sys, pathlib; p = pathlib.Path(sys.argv[1]); p.write_text(sys.argv[2]); "
        "c = p.with_suffix('.count'); c.write_text(c.read_text() + 'x' if c.exists() else 'x')"
    )
    return [sys.executable, "-c", code, str(path), text]


def _count(path: Path) -> int:
    counter = path.with_suffix(".count")
    return len(counter.read_text()) if counter.exists() else 0


def test_runs_in_order_then_skips_finished_stages(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    stages = [Stage("a", a, _writer(a, "1")), Stage("b", b, _writer(b, "2"))]
    records = Pipeline(tmp_path / "run", stages, log=lambda _: None).run()
    assert [(r.name, r.status) for r in records] == [("a", "ran"), ("b", "ran")]
    assert a.read_text() == "1" and b.read_text() == "2"
    record = json.loads((tmp_path / "run" / "stages" / "a.json").read_text())
    assert record["stage"] == "a" and record["seconds"] >= 0 and str(a) in record["command"]

    again = Pipeline(tmp_path / "run", stages, log=lambda _: None).run()
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert (_count(a), _count(b)) == (1, 1)
    assert set(Pipeline(tmp_path / "run", stages).timings()) == {"a", "b"}


def test_output_without_record_is_redone_and_deleted_output_too(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("left by a crash")  # output exists, but no record: not finished
    stages = [Stage("a", a, _writer(a, "done"))]
    Pipeline(tmp_path / "run", stages, log=lambda _: None).run()
    assert a.read_text() == "done" and _count(a) == 1
    a.unlink()  # record exists, output gone: redo
    Pipeline(tmp_path / "run", stages, log=lambda _: None).run()
    assert a.read_text() == "done" and _count(a) == 2


def test_failure_stops_the_chain_with_the_stage_name(tmp_path):
    b = tmp_path / "b.txt"
    stages = [
        Stage("broken", tmp_path / "a.txt", [sys.executable, "-c", "raise SystemExit(3)"]),
        Stage("b", b, _writer(b, "never")),
    ]
    with pytest.raises(UserError, match="stage broken failed \\(exit status 3\\)"):
        Pipeline(tmp_path / "run", stages, log=lambda _: None).run()
    assert not b.exists()
    assert not (tmp_path / "run" / "stages" / "broken.json").exists()
    assert not (tmp_path / "run" / "stages" / "broken.lock").exists()


def test_a_stage_that_writes_nothing_is_an_error(tmp_path):
    stages = [Stage("silent", tmp_path / "never.txt", [sys.executable, "-c", "pass"])]
    with pytest.raises(UserError, match="wrote no"):
        Pipeline(tmp_path / "run", stages, log=lambda _: None).run()


def test_only_runs_the_named_stages(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    stages = [Stage("a", a, _writer(a, "1")), Stage("b", b, _writer(b, "2"))]
    Pipeline(tmp_path / "run", stages, log=lambda _: None).run(only=["b"])
    assert not a.exists() and b.read_text() == "2"
    with pytest.raises(UserError, match="unknown stage c"):
        Pipeline(tmp_path / "run", stages).run(only=["c"])


def test_waits_for_a_stage_another_live_process_runs(tmp_path):
    a = tmp_path / "a.txt"
    stages = [Stage("a", a, _writer(a, "mine"))]
    pipeline = Pipeline(tmp_path / "run", stages, log=lambda _: None)
    lock = pipeline.record_path(stages[0]).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    # another process "runs" the stage: it finishes the output and the record, then exits
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time, sys, pathlib, json; time.sleep(2); pathlib.Path(sys.argv[1]).write_text("
            "'theirs'); pathlib.Path(sys.argv[2]).write_text(json.dumps({'seconds': 2.0})); "
            "pathlib.Path(sys.argv[3]).unlink()",
            str(a),
            str(pipeline.record_path(stages[0])),
            str(lock),
        ]
    )
    lock.write_text(str(other.pid))
    records = pipeline.run()
    other.wait()
    assert records[0].status == "skipped" and a.read_text() == "theirs" and _count(a) == 0


def test_a_stale_lock_does_not_block(tmp_path):
    a = tmp_path / "a.txt"
    stages = [Stage("a", a, _writer(a, "1"))]
    pipeline = Pipeline(tmp_path / "run", stages, log=lambda _: None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    lock = pipeline.record_path(stages[0]).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text(dead)
    assert pipeline.run()[0].status == "ran" and a.read_text() == "1"


def test_dry_run_prints_every_command_runs_every_check_and_runs_nothing(tmp_path, capsys):
    a = tmp_path / "a.txt"

    def bad() -> str:
        raise UserError("set x=1")

    stages = [
        Stage("a", a, _writer(a, "1"), check=lambda: "fine"),
        Stage("b", tmp_path / "b.txt", check=bad, describe="(in process) b"),
        Stage("c", tmp_path / "c.txt", _writer(tmp_path / "c.txt", "3"), check=lambda: "ok too"),
    ]
    with pytest.raises(UserError, match="checks of b failed"):
        Pipeline(tmp_path / "run", stages).dry_run()
    out = capsys.readouterr().out
    assert "check: ok: fine" in out and "check: FAILED: set x=1" in out
    assert "check: ok: ok too" in out  # checks after a failure still run
    assert "(in process) b" in out and str(tmp_path / "c.txt") in out
    assert not a.exists() and not (tmp_path / "run").exists()


def test_stage_names_must_be_unique(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        Pipeline(tmp_path, [Stage("a", tmp_path / "x"), Stage("a", tmp_path / "y")])
