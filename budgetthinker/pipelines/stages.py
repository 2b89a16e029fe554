"""Chains of stages, each a command whose output the next stage reads, resumable and timed.

The CPU evidence experiment (`scripts/experiment_cpu.sh`) and the release pipeline
(`scripts/release_pipeline.sh`) are both such chains of `budgetthinker` commands, each run in its
stage's environment (`.venv`, `.venv-sft`, `.venv-rl`). This module runs them the same way:

- a stage is **done** when its output exists *and* its record `<run_dir>/stages/<name>.json` does
  (written only after the command exited 0); a done stage is skipped, so a rerun after a crash or
  Ctrl-C resumes at the first unfinished stage. An output without a record (a crash mid-stage)
  is redone — every command here overwrites or resumes its own output;
- each record holds the command and its wall time, so the timings of a run can be reported;
- a running stage holds `<run_dir>/stages/<name>.lock` (its process id): a second invocation
  (e.g. `--only` on another stage list, to run independent stages side by side) waits for a
  stage another live process is running instead of running it twice;
- `dry_run` prints every command and runs every stage's `check` (config parsing, input files)
  without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from budgetthinker.errors import UserError
from budgetthinker.outputs import atomic_json


@dataclass
class Stage:
    """One step of a pipeline.

    `command`: argv of a subprocess, or empty when `action` does the work in this process (the
    report, which only reads files). `check`: what `--dry-run` verifies before anything runs;
    returns a short note for the dry-run listing, raises `UserError` naming the fix.
    """

    name: str
    output: Path
    command: list[str] = field(default_factory=list)
    action: Callable[[], None] | None = None
    check: Callable[[], str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    describe: str = ""

    def display(self) -> str:
        if self.command:
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
            return (env + " " if env else "") + shlex.join(self.command)
        return self.describe or f"(in process) {self.name}"


def add_pipeline_args(parser: argparse.ArgumentParser, config: str, example: str) -> None:
    """The options every pipeline script shares: recipe, dry run, stage subset, overrides."""
    parser.add_argument(
        "--config", default=config, help=f"pipeline recipe (YAML; default {config})"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print every stage's command and check every config; run nothing",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated stages to run (the others are left alone), e.g. in a second "
        "process beside the main run",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help=f"override recipe keys, e.g. {example}"
    )


def only_stages(value: str) -> list[str]:
    return [s for s in value.split(",") if s]


@dataclass
class StageRecord:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    output: str


class Pipeline:
    """Runs `stages` in order under `run_dir`; see the module docstring."""

    def __init__(self, run_dir: str | os.PathLike, stages: Sequence[Stage], log=None) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        self.run_dir = Path(run_dir)
        self.stages = list(stages)
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))

    def record_path(self, stage: Stage) -> Path:
        return self.run_dir / "stages" / f"{stage.name}.json"

    def is_done(self, stage: Stage) -> bool:
        return stage.output.exists() and self.record_path(stage).is_file()

    def dry_run(self) -> list[str]:
        """Print every stage's command and run every check; return the printed lines.

        Every check runs even when an earlier one failed, so one dry run lists every problem;
        then a `UserError` says how many failed."""
        lines, failed = [], []
        for i, stage in enumerate(self.stages, 1):
            state = "done, would skip" if self.is_done(stage) else "would run"
            head = [f"[{i}/{len(self.stages)}] {stage.name} ({state}) → {stage.output}",
                    f"    {stage.display()}"]  # fmt: skip
            try:
                note = stage.check() if stage.check else ""
                head += [f"    check: ok: {note}"] if note else []
            except UserError as e:
                failed.append(stage.name)
                head.append(f"    check: FAILED: {e}")
            for line in head:
                print(line, flush=True)
            lines += head
        if failed:
            raise UserError(f"dry run: the checks of {', '.join(failed)} failed (see above)")
        return lines

    def run(self, only: Sequence[str] = ()) -> list[StageRecord]:
        """Run the unfinished stages in order (only those named in `only`, if given); a failing
        command stops the chain."""
        unknown = sorted(set(only) - {s.name for s in self.stages})
        if unknown:
            raise UserError(f"unknown stage {', '.join(unknown)}; stages: "
                            f"{', '.join(s.name for s in self.stages)}")  # fmt: skip
        records = []
        for i, stage in enumerate(self.stages, 1):
            head = f"[pipeline {i}/{len(self.stages)}] {stage.name}"
            if only and stage.name not in only:
                continue
            self._wait_for_other(stage, head)
            if self.is_done(stage):
                previous = json.loads(self.record_path(stage).read_text())
                self.log(f"{head}: done before ({previous['seconds']:.0f} s), skipped")
                records.append(StageRecord(stage.name, "skipped", previous["seconds"],
                                           str(stage.output)))  # fmt: skip
                continue
            self.log(f"{head}: {stage.display()}")
            start = time.perf_counter()
            lock = self._lock(stage)
            try:
                if stage.command:
                    env = {**os.environ, **stage.env}
                    code = subprocess.run(stage.command, env=env).returncode
                    if code != 0:
                        raise UserError(
                            f"stage {stage.name} failed (exit status {code}); fix the error "
                            "above and run the same command again: finished stages are skipped"
                        )
                elif stage.action is not None:
                    stage.action()
            finally:
                lock.unlink(missing_ok=True)
            seconds = time.perf_counter() - start
            if not stage.output.exists():
                raise UserError(
                    f"stage {stage.name} finished but wrote no {stage.output}; see its log above"
                )
            self._write_record(stage, seconds)
            self.log(f"{head}: finished in {seconds:.0f} s")
            records.append(StageRecord(stage.name, "ran", seconds, str(stage.output)))
        return records

    def _lock(self, stage: Stage) -> Path:
        path = self.record_path(stage).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(os.getpid()))
        return path

    def _wait_for_other(self, stage: Stage, head: str) -> None:
        """Block while another live process runs `stage` (its lock names a running pid)."""
        path = self.record_path(stage).with_suffix(".lock")
        announced = False
        while path.is_file():
            try:
                pid = int(path.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, PermissionError, FileNotFoundError):
                return  # stale: its process is gone
            if pid == os.getpid():
                return
            if not announced:
                self.log(f"{head}: running in process {pid}; waiting for it")
                announced = True
            time.sleep(5)

    def _write_record(self, stage: Stage, seconds: float) -> None:
        path = self.record_path(stage)
        atomic_json(
            path,
            {
                "stage": stage.name,
                "command": stage.display(),
                "output": str(stage.output),
                "seconds": round(seconds, 1),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )

    def execute(
        self,
        dry_run: bool = False,
        only: Sequence[str] = (),
        after_dry_run: Callable[[], None] | None = None,
    ) -> int:
        """What a pipeline script does: run (or dry-run) the pipeline; exit status 0. Mistakes
        raise `UserError`; the script's `main` reports them (`errors.report_errors`)."""
        if dry_run:
            self.dry_run()
            if after_dry_run is not None:
                after_dry_run()
        else:
            self.run(only)
        return 0

    def timings(self) -> dict[str, float]:
        """Wall seconds of every recorded stage (the run that did the work, not a skip)."""
        result = {}
        for stage in self.stages:
            path = self.record_path(stage)
            if path.is_file():
                result[stage.name] = json.loads(path.read_text())["seconds"]
        return result
