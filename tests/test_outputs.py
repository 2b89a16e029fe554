"""The shared output mechanism: atomic files and folders, plain names, containment, the lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from budgetthinker.errors import UserError
from budgetthinker.outputs import (
    FolderLock,
    atomic_text,
    atomic_write,
    experiment_dir,
    inside,
    plain_name,
    publish_dir,
    staging_dir,
)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "a\\b", ".hidden", "a\nb", " a"])
def test_plain_name_refuses(name):
    with pytest.raises(UserError, match="plain folder name"):
        plain_name(name, "experiment")


@pytest.mark.parametrize("name", ["default", "run-1", "math500_B1000", "été", "a.b"])
def test_plain_name_accepts(name):
    assert plain_name(name, "experiment") == name


def test_inside(tmp_path):
    assert inside(tmp_path, tmp_path / "a" / "b") == tmp_path / "a" / "b"
    with pytest.raises(UserError, match="outside its output folder"):
        inside(tmp_path / "runs", tmp_path / "runs" / ".." / "config.yaml")


def test_experiment_dir_refuses_dotdot_and_writes_nothing(tmp_path):
    with pytest.raises(UserError):
        experiment_dir(tmp_path / "runs", "..")
    assert list(tmp_path.iterdir()) == []
    assert experiment_dir(tmp_path / "runs", "ok") == tmp_path / "runs" / "ok"


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half of the new")
        raise RuntimeError("crash")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]
    atomic_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_stale_temp_files_and_staging_folders_are_removed(tmp_path):
    pid = dead_pid()
    stale_file = tmp_path / f".data.jsonl.tmp-{pid}-abc"
    stale_file.write_text("left by a killed run")
    stale_dir = tmp_path / f".prepare-{pid}-xyz"
    (stale_dir / "model").mkdir(parents=True)
    live = tmp_path / f".prepare-{os.getppid()}-live"  # a live process: left alone
    live.mkdir()
    atomic_text(tmp_path / "data.jsonl", "{}\n")
    assert not stale_file.exists()
    with staging_dir(tmp_path, "prepare") as tmp:
        (tmp / "model").mkdir()
        (tmp / "model" / "config.json").write_text("{}")
        publish_dir(tmp / "model", tmp_path / "m")
    assert not stale_dir.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "data.jsonl", "m"]


def test_lock_says_who_holds_it_and_is_released(tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from budgetthinker.outputs import FolderLock\n"
            f"lock = FolderLock({str(tmp_path)!r}, 'experiment x').acquire()\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as e:
            FolderLock(tmp_path, "experiment x").acquire()
        assert f"pid {child.pid}" in str(e.value) and "already being run" in str(e.value)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    # The holder exited without releasing: the kernel dropped its lock.
    with FolderLock(tmp_path, "experiment x"):
        assert (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()


def test_errors_name_the_users_path_not_a_temp_file(tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic_text(folder, "x")
    assert e.value.filename == str(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder"]


def test_every_stage_writes_through_outputs():
    """One atomic write: renames over a target live in `budgetthinker/outputs.py` only (a
    hand-rolled temp-file-and-rename has no fsync, a fixed `.tmp` name and no clean-up)."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "budgetthinker"
    rename = re.compile(r"\bos\.(replace|rename)\(|\.rename\(|\bshutil\.move\(|\btmp\w*\.replace\(")
    found = [
        f"{path.relative_to(package.parent)}:{n}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "outputs.py" or path.parent != package
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if rename.search(line)
    ]
    assert not found, "\n".join(found)


def test_publish_together_shows_all_files_or_none(tmp_path, monkeypatch):
    from budgetthinker.outputs import publish_together

    (tmp_path / "a.json").write_text("old a")
    with pytest.raises(RuntimeError), publish_together() as group:
        group.text(tmp_path / "a.json", "new a")
        group.text(tmp_path / "b.json", "new b")
        raise RuntimeError("the last file could not be written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old a"
    # a rename that fails half-way puts back what was already replaced
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError), publish_together() as group:
        group.text(tmp_path / "a.json", "new a")
        group.json(tmp_path / "b.json", {"b": 1})
    monkeypatch.setattr(os, "replace", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old a"
    with publish_together() as group:
        group.text(tmp_path / "a.json", "new a")
        group.json(tmp_path / "b.json", {"b": 1})
    assert (tmp_path / "a.json").read_text() == "new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_user_path_expands_the_home_folder(monkeypatch, tmp_path):
    from pathlib import Path

    from budgetthinker.outputs import user_path

    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_path("~/runs") == tmp_path / "runs"
    assert user_path("runs/~x") == Path("runs/~x")


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_for_sft_traces(tmp_path):
    """`ulimit -f` (EFBIG) was a traceback; now the write-error line, and no temp file left."""
    import resource

    from tests.clirun import cli, one_line, snapshot

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = cli("sft-traces", "--out", tmp_path / "t.jsonl", "--n", "200", preexec_fn=limit)
    one_line(proc, "cannot write", "File too large", "ulimit -f")
    assert snapshot(tmp_path) == {}
