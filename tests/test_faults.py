"""Faults a careless user hits, on the real command line (a subprocess per run): the exit status,
the single stderr line, and the exact state of the output folder before and after.

Issue #15: nothing lost, nothing written outside its folder, one line per mistake. Evaluations
use the transformers backend, one budget and a few synthetic problems to stay fast.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "configs" / "eval" / "default.yaml"
TINY = ["methods=[control]", "budgets=[16]", "data.synthetic.n=3", "grading.workers=1"]

pytestmark = pytest.mark.slow


def cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "budgetthinker.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def start(*args: str) -> subprocess.Popen:
    """A CLI run in its own process group (Ctrl-C reaches the whole group, as in a terminal),
    with SIGINT at its default as a terminal gives it: a test run started as a background job
    (`pytest … &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt."""
    return subprocess.Popen(
        [sys.executable, "-m", "budgetthinker.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def eval_args(output_dir: Path, experiment: str, *extra: str) -> list[str]:
    return [
        "eval",
        "--config",
        str(RECIPE),
        f"output_dir={output_dir}",
        f"experiment={experiment}",
        *TINY,
        *extra,
    ]


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The run failed with exit 2 and exactly one stderr line (no traceback) naming `needles`."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith(f"budgetthinker {proc.args[3]}: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (hidden ones too) and folder under `folder`, with its bytes."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def samples(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]


def keys(records: list[dict]) -> list[tuple]:
    from budgetthinker.evaluation.results import record_key

    return [record_key(r) for r in records]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished tiny evaluation (3 samples), copied by the tests that damage it."""
    runs = tmp_path_factory.mktemp("finished") / "runs"
    proc = cli(*eval_args(runs, "done"))
    assert proc.returncode == 0, proc.stderr
    assert len(samples(runs / "done")) == 3
    return runs


# 1. Writes outside the output folder -------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "a/../..", ".hidden"])
def test_experiment_must_be_a_plain_folder_name(tmp_path, name):
    (tmp_path / "config.yaml").write_text("mine: keep\n")  # a user's file next to runs/
    before = snapshot(tmp_path)
    proc = cli(*eval_args(tmp_path / "runs", name))
    one_line(proc, "experiment must be a plain folder name")
    assert snapshot(tmp_path) == before


# 2. A corrupt line in the middle of the results file ---------------------------------------


def test_corrupt_results_line_stops_the_run_and_keeps_the_file(finished_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs)
    path = runs / "done" / "samples.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"model": "default", "bac\n' + b"".join(lines[1:]))
    before = snapshot(runs)
    proc = cli(*eval_args(runs, "done"))
    one_line(proc, f"{path}:2 ", "unchanged")
    assert snapshot(runs) == before


def test_damaged_fingerprint_stops_the_run(finished_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs)
    (runs / "done" / "fingerprint.json").write_text("{")
    before = snapshot(runs)
    one_line(cli(*eval_args(runs, "done")), "fingerprint.json is damaged", "experiment=<name>")
    assert snapshot(runs) == before


def test_rerun_after_a_torn_last_line_completes_it(finished_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs)
    path = runs / "done" / "samples.jsonl"
    whole = samples(runs / "done")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # a crash in the middle of writing the last line
    proc = cli(*eval_args(runs, "done"))
    assert proc.returncode == 0, proc.stderr
    assert "torn last line" in proc.stderr and "1 to run" in proc.stderr
    again = samples(runs / "done")
    assert keys(again) == keys(whole)


# 3. sft-data: published only on success ----------------------------------------------------


@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "data"
    proc = cli("sft-data", "--model", "default", "--traces", "synthetic", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def write_traces(path: Path, n: int = 4, extra: bytes = b"") -> Path:
    proc = cli("sft-traces", "--out", str(path), "--n", str(n))
    assert proc.returncode == 0, proc.stderr
    if extra:
        path.write_bytes(path.read_bytes() + extra)
    return path


def test_failed_sft_data_keeps_the_good_dataset(good_dataset, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(good_dataset, out)
    before = snapshot(out)
    traces = write_traces(tmp_path / "traces.jsonl")
    proc = cli(
        "sft-data", "--model", "default", "--traces", str(traces), "--out", str(out),
        "--max-thinking", "3",
    )  # fmt: skip
    one_line(proc, "no trace was kept", "too_long", "--max-thinking", "nothing was written")
    assert snapshot(out) == before


def test_sft_data_name_must_be_a_plain_file_name(tmp_path):
    (tmp_path / "x.jsonl").write_text("mine\n")  # what `--name ../x` would overwrite
    before = snapshot(tmp_path)
    proc = cli("sft-data", "--model", "default", "--traces", "synthetic", "--out",
               str(tmp_path / "d"), "--name", "../x")  # fmt: skip
    one_line(proc, "--name must be a plain folder name")
    assert snapshot(tmp_path) == before


def test_sft_data_keeping_no_row_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no answer here"}\nnot json\n')
    before = snapshot(tmp_path)
    proc = cli("sft-data", "--model", "default", "--traces", str(bad), "--out", str(tmp_path / "d"))
    one_line(proc, "no trace was kept", "no_response", "bad_json")
    assert snapshot(tmp_path) == before  # no empty dataset, no dataset_info.json, no folder


def test_non_utf8_trace_rows_are_dropped_and_counted(tmp_path):
    traces = write_traces(tmp_path / "traces.jsonl", 4, b'{"question": "caf\xe9"}\n')
    out = tmp_path / "d"
    proc = cli("sft-data", "--model", "default", "--traces", str(traces), "--out", str(out),
               "--name", "ds")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "bad_encoding" in proc.stdout
    stats = json.loads((out / "ds.stats.json").read_text())
    assert stats["read"] == 5 and stats["kept"] == 4 and stats["dropped"] == {"bad_encoding": 1}
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dataset_info.json", "ds.jsonl", "ds.stats.json"]


# 4. Two evaluations of one experiment at once ----------------------------------------------


def wait_for(predicate, proc: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_second_eval_refused_then_ctrl_c_then_resume(tmp_path):
    """Two evaluations of one experiment: the second is refused and names the first; then the
    first is stopped with Ctrl-C (one line, exit 130, nothing half-written, no lock left) and a
    rerun resumes it: every sample once."""
    runs = tmp_path / "runs"
    args = eval_args(runs, "same", "chunk_size=1", "data.synthetic.n=4")
    first = start(*args)
    out = runs / "same"
    lock, results = out / ".lock", out / "samples.jsonl"
    try:
        wait_for(lambda: lock.is_file() and str(first.pid) in lock.read_text(), first)
        first.send_signal(signal.SIGSTOP)  # hold it inside its run, lock taken
        try:
            second = cli(*args)
        finally:
            first.send_signal(signal.SIGCONT)
        one_line(second, "already being run", f"pid {first.pid}", "experiment=<name>")
        wait_for(lambda: results.is_file() and results.read_bytes().count(b"\n") >= 1, first)
        os.killpg(first.pid, signal.SIGSTOP)  # mid-run for sure: some samples done, not all
        assert results.read_bytes().count(b"\n") < 4, "the run finished before Ctrl-C"
        os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        os.killpg(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last == "budgetthinker eval: interrupted; rerun the same command to resume"
    kept = samples(out)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no lock, no temp
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert f"{len(kept)} already done" in again.stderr
    final = samples(out)
    assert final[: len(kept)] == kept and len(set(keys(final))) == 4 == len(final)


# One line, exit 2 ---------------------------------------------------------------------------


def unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permissions: use sysfs)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder / "out"
    sysfs = Path("/sys/fs")
    try:
        (sysfs / "budgetthinker-probe").mkdir()
    except OSError:
        return sysfs / "budgetthinker-test" / "out"
    pytest.skip("no unwritable folder available on this machine")


@pytest.mark.parametrize("command", ["prepare", "sft-traces", "sft-data", "eval"])
def test_unwritable_output_folder(tmp_path, command):
    target = unwritable(tmp_path)
    args = {
        "prepare": ["prepare", "--base", "default", "--out", str(target)],
        "sft-traces": ["sft-traces", "--out", str(target / "traces.jsonl")],
        "sft-data": ["sft-data", "--model", "default", "--traces", "synthetic", "--out",
                     str(target)],
        "eval": eval_args(target, "x"),
    }[command]  # fmt: skip
    one_line(cli(*args), "cannot write", "choose an output folder you can write to")
    assert not target.exists()


def test_killed_prepare_leaves_nothing_after_the_next_run(tmp_path):
    """SIGKILL while the model is being staged: the hidden staging folder it leaves is removed
    by the next run, which publishes the model."""
    out = tmp_path / "m"
    proc = start("prepare", "--base", "default", "--out", str(out))
    try:
        wait_for(lambda: any(p.name.startswith(".prepare-") for p in tmp_path.iterdir()), proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not out.exists()  # nothing half-written was published
    proc = cli("prepare", "--base", "default", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert (out / "budgetthinker_spec.json").is_file()


def test_base_config_not_json(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama",')
    proc = cli("prepare", "--base", str(base), "--out", str(tmp_path / "m"))
    one_line(proc, "config.json is not valid JSON")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_vllm_present_but_broken(tmp_path):
    fake = tmp_path / "site" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ImportError('libcudart.so.12: cannot open shared object file')\n"
    )
    proc = cli("generate", "--prompt", "x", "--budget", "64", "--backend", "vllm",
               env={"PYTHONPATH": str(tmp_path / "site")})  # fmt: skip
    one_line(proc, "vLLM is installed but fails to import", "libcudart", "--backend hf")


def test_missing_local_data_file(tmp_path):
    missing = tmp_path / "mydata" / "test.jsonl"
    proc = cli(*eval_args(tmp_path / "runs", "x", f"data.benchmarks=[{missing}]"))
    one_line(proc, "data file not found", str(missing))
    assert not (tmp_path / "runs").exists()


def test_empty_data_file(tmp_path):
    data = tmp_path / "mine" / "test.jsonl"
    data.parent.mkdir()
    data.write_text("\n")
    proc = cli(*eval_args(tmp_path / "runs", "x", f"data.benchmarks=[{data}]"))
    one_line(proc, "no problems to run", "no data rows")
    assert not (tmp_path / "runs").exists()
