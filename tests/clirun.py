"""Running the real command line in tests: a subprocess per run, its exit status, its one error
line, and snapshots of folders before and after (issue #21's hostile-input tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "configs" / "eval" / "default.yaml"
TINY = ["methods=[control]", "budgets=[16]", "data.synthetic.n=2", "grading.workers=1"]


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 900,
        preexec_fn=None) -> subprocess.CompletedProcess:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "budgetthinker.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=cwd or REPO,
        preexec_fn=preexec_fn,
    )


def lines(text: str) -> list[str]:
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()]


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 and exactly one stderr line, the error, naming every needle (no traceback)."""
    err = lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(err) == 1, proc.stderr[-3000:]
    return _names(proc, err[0], needles)


def error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 and one error line, the last one, naming every needle; the other stderr lines are
    only `eval`'s progress (its `[eval] …` count and the progress bar), never a traceback."""
    err = lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in err if ": error: " in line]
    assert len(errors) == 1 and err[-1] == errors[0], proc.stderr[-3000:]
    assert all(
        line.startswith("[eval] ") or "generate+grade" in line for line in err[:-1]
    ), proc.stderr[-3000:]
    return _names(proc, errors[0], needles)


def _names(proc, line: str, needles) -> str:
    command = proc.args[3]
    assert line.startswith(f"budgetthinker {command}: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (hidden ones too) and folder under `folder`, with its bytes."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def eval_args(output_dir: Path, experiment: str, *extra: str) -> list[str]:
    return ["eval", "--config", str(RECIPE), f"output_dir={output_dir}",
            f"experiment={experiment}", *TINY, *extra]  # fmt: skip
