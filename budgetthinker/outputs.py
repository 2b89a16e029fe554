"""Writing outputs so that a crash never loses finished work and nothing lands outside its folder.

One mechanism for every stage (evaluation, SFT data, preparation, traces):

- `atomic_write` / `atomic_text`: a file appears whole or not at all (temp file in the same
  folder, fsync, rename). A failed write removes its temp file; a killed one leaves a
  `.<name>.tmp-<pid>` that the next write to the same folder removes.
- `staging_dir` + `publish_dir`: a whole folder (a prepared model) is built under a hidden
  `.<prefix>-<pid>-…` sibling and renamed into place only when it is complete; stale staging
  folders of dead processes are removed by the next run.
- `plain_name` and `inside`: names that become folders are plain folder names, and every output
  path resolves inside its output folder (an experiment called `..` must not write next to it).
- `publish_together`: several files of one run (a dataset, its stats and its index entry) appear
  together or not at all: all are written and fsync'ed as temp files first, then renamed back to
  back; a failed rename puts back the files already replaced.
- `FolderLock`: one process at a time per experiment folder; a second run is told who holds it.
- `user_path`: every path a user names (`--out`, `output_dir=`, a recipe's files) has `~`
  expanded here, the same way for every command (never a folder literally named `~`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from budgetthinker.errors import UserError

_TMP_MARK = ".tmp-"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def user_path(value: str | os.PathLike) -> Path:
    """A path as the user wrote it, with `~` / `~user` expanded (the one place that does it:
    `--out ~/runs` means the home folder for every command)."""
    return Path(os.path.expanduser(os.fspath(value)))


def plain_name(value: str, what: str) -> str:
    """`value` if it is a plain folder name (not empty, not `.`/`..`, no separator, no control
    character, no leading `.` that would hide it); else a UserError naming `what`."""
    bad = (
        not value
        or value.strip() != value
        or value.startswith(".")
        or "/" in value
        or "\\" in value
        or _CONTROL.search(value)
    )
    if bad:
        raise UserError(
            f"{what} must be a plain folder name (letters, digits, '-', '_' …; no '/', no leading "
            f"'.', no '..'), got {value!r}; e.g. {what}=my_run"
        )
    return value


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path` made absolute; a UserError if it does not lie inside `root`. Checked on the
    normalised path (`..` removed), not through symlinks: a run folder the user linked to
    another disk on purpose stays usable."""
    root_a = Path(os.path.abspath(user_path(root)))
    path_a = Path(os.path.abspath(user_path(path)))
    if path_a != root_a and root_a not in path_a.parents:
        raise UserError(f"output {path} resolves to {path_a}, outside its output folder {root_a}")
    return path_a


def experiment_dir(output_dir: str | os.PathLike, name: str, what: str = "experiment") -> Path:
    """`output_dir/name`, created: `name` must be a plain folder name and the folder must lie
    inside `output_dir` (so `experiment=..` can never write next to the output folder)."""
    plain_name(name, what)
    root = user_path(output_dir)
    path = inside(root, root / name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_of(name: str, marker: str) -> int | None:
    """The pid embedded in a temp name (`…<marker><pid>…`), or None."""
    _, sep, rest = name.rpartition(marker)
    digits = re.match(r"\d+", rest) if sep else None
    return int(digits.group()) if digits else None


def remove_stale(folder: str | os.PathLike, prefix: str, marker: str) -> list[Path]:
    """Remove `folder/<prefix>*` temp files and folders whose owning process (the pid after
    `marker` in the name) is gone: what a killed run left behind. Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not entry.name.startswith(prefix) or marker not in entry.name:
            continue
        pid = _pid_of(entry.name, marker)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def check_writable(folder: str | os.PathLike) -> None:
    """Raise the OSError (PermissionError, read-only file system …) that writing into `folder`
    would raise, before a long job starts; nothing is left behind. Probes the nearest existing
    folder on the way, so a folder that is still to be created is checked too."""
    probe = user_path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return  # a file in the way: the write itself reports it
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=f".write-probe{_TMP_MARK}{os.getpid()}-")
    except OSError as e:  # name the folder, not the probe file
        raise OSError(e.errno, e.strerror, str(probe)) from None
    os.close(fd)
    os.unlink(name)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (the directory entry), where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stage(path: Path) -> tuple[int, Path]:
    """A temp file next to `path` (stale ones of killed runs removed first): its fd and path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}", _TMP_MARK)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}{_TMP_MARK}{os.getpid()}-"
    )
    return fd, Path(tmp_name)


def _commit(tmp: Path, path: Path) -> None:
    """Give the finished temp file the target's mode and rename it over `path`."""
    if path.exists():
        shutil.copymode(path, tmp)
    else:
        os.chmod(tmp, 0o666 & ~_umask())
    try:
        os.replace(tmp, path)
    except OSError as e:  # name the user's path, not the temp file
        raise OSError(e.errno, e.strerror, str(path)) from None


@contextlib.contextmanager
def _staged(path: Path, mode: str, encoding: str | None) -> Iterator[tuple[IO, Path]]:
    """A temp file for `path`, written and fsync'ed; removed again if the block fails."""
    fd, tmp = _stage(path)
    try:
        binary = "b" in mode
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temp file next to `path`; on a clean exit it is fsync'ed and renamed over `path`,
    on an exception it is removed and `path` is left exactly as it was."""
    path = Path(path)
    with _staged(path, mode, encoding) as (f, tmp):
        yield f
    try:
        _commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


class FileGroup:
    """The files of `publish_together`: each is staged whole before any is published."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []  # (temp file, target)

    @contextlib.contextmanager
    def open(self, path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
        path = Path(path)
        with _staged(path, mode, encoding) as (f, tmp):
            yield f
        self.staged.append((tmp, path))

    def text(self, path: str | os.PathLike, text: str) -> None:
        with self.open(path) as f:
            f.write(text)

    def json(self, path: str | os.PathLike, data: object) -> None:
        self.text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def discard(self) -> None:
        for tmp, _ in self.staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.staged.clear()

    def publish(self) -> None:
        """Rename every staged file into place; if one rename fails, the targets already
        replaced get their old contents back (kept as hard links until the end) and new ones
        are removed, so the folder is as it was."""
        done: list[tuple[Path, Path | None]] = []  # (target, backup of its old file)
        try:
            for tmp, path in self.staged:
                backup = None
                if path.is_file():
                    backup = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-old")
                    with contextlib.suppress(FileNotFoundError):
                        backup.unlink()
                    try:
                        os.link(path, backup)
                    except OSError:  # no hard links on this file system: no way back
                        backup = None
                _commit(tmp, path)
                done.append((path, backup))
        except BaseException:
            for path, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, path)
                    else:
                        path.unlink()
            self.discard()
            raise
        for _, backup in done:
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    backup.unlink()
        for folder in {path.parent for _, path in self.staged}:
            _fsync_dir(folder)
        self.staged.clear()


@contextlib.contextmanager
def publish_together() -> Iterator[FileGroup]:
    """Write several files that belong together (`group.open(path)`, `group.json(path, data)`):
    none is visible until the block ends without an error, then all appear back to back; a
    failed or killed run leaves every target as it was (a kill leaves only hidden temp files,
    removed by the next write to the folder)."""
    group = FileGroup()
    try:
        yield group
    except BaseException:
        group.discard()
        raise
    group.publish()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path) as f:
        f.write(text)


def atomic_json(path: str | os.PathLike, data: object) -> None:
    """Write `data` as indented JSON to `path` atomically."""
    atomic_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def removed_on_failure(folder: str | os.PathLike) -> Iterator[Path]:
    """A block that may create `folder` (and missing parents): if it fails, the folders it
    created are removed again when still empty, so a failed run leaves no empty output folder."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        yield folder
    except BaseException:
        for created in missing:  # deepest first
            try:
                created.rmdir()
            except OSError:
                break
        raise


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A hidden temp folder `parent/.<prefix>-<pid>-…` for building a whole output folder;
    removed on exit (publish its contents with `publish_dir` inside the block). Staging folders
    of processes that were killed are removed first."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    marker = f".{prefix}-"
    remove_stale(parent, marker, marker)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f"{marker}{os.getpid()}-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place atomically; if another process won the race, keep
    theirs. A crash mid-write therefore never leaves a half-written folder behind."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(target.parent)


class FolderLock:
    """An exclusive lock on a folder (`<folder>/.lock`, flock): one run per experiment.

    The kernel drops the lock when its process dies, so a killed run never leaves a stale lock.
    The file holds who took it (pid, host, start time, command) for the message a second run
    gets; it is removed on release.
    """

    NAME = ".lock"
    HINT = "wait for it to finish or use another experiment=<name>"

    def __init__(
        self, folder: str | os.PathLike, what: str, name: str = NAME, hint: str = HINT
    ) -> None:
        """`name`: the lock file (several locks in one folder, one per output file); `hint`:
        the fix the refusal names."""
        self.path = Path(folder) / name
        self.what = what
        self.hint = hint
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                message = f"{self.what} is already being run ({holder}); {self.hint}"
                raise UserError(message) from None
            # The holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a deleted file; try again on the current one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "held by another process"
    return (
        f"pid {info['pid']} on {info.get('host', '?')} since {info.get('started', '?')}: "
        f"{info.get('command', '?')}"
    )
