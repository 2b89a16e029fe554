"""The per-sample results file: append-only JSONL that survives crashes and resumes cleanly.

Each finished sample is one line, written and fsync'ed in chunks. On start the file is read
back. A crash can only tear the *last* line (appends are sequential), so an unterminated last
line is the one thing ever cut off: a rerun neither loses finished samples nor repeats them. A
corrupt line anywhere else is not a crash but damage: the run stops with the file and line, and
the file is left exactly as it is (never silently cut).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from budgetthinker.errors import UserError

KEY_FIELDS = (
    "model",
    "backend",
    "method",
    "two_stage",
    "benchmark",
    "budget",
    "problem_id",
    "sample",
)


def record_key(record: dict) -> tuple:
    return tuple(record[k] for k in KEY_FIELDS)


def _parse(raw: bytes) -> dict | str:
    """A result line → its record, or why it is not one."""
    try:
        record = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        return f"not JSON ({e.__class__.__name__}: {e})"
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in KEY_FIELDS if k not in record]
    if missing:
        return f"missing the key field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    try:
        hash(record_key(record))
    except TypeError:
        return "a key field holds a list or an object"
    return record


class ResultsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict] = []
        self.done: set[tuple] = set()
        if path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            record = _parse(raw)
            if isinstance(record, str):
                raise UserError(
                    f"{self.path}:{number} is not a result line ({record}); the file was left "
                    "unchanged: delete or repair that line (its sample is run again), or use a "
                    "new experiment=<name>"
                )
            self._add(record)
        if not tail:
            return
        # An unterminated last line is a write torn by a crash: complete it if the record
        # made it whole, otherwise cut it off (its sample is run again).
        record = _parse(tail)
        with self.path.open("r+b") as f:
            if isinstance(record, dict):
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
                self._add(record)
            else:
                f.truncate(len(data) - len(tail))
                print(
                    f"[results] {self.path}: cut a torn last line ({len(tail)} bytes, from a "
                    "crash mid-write); its sample will be run again",
                    file=sys.stderr,
                )
            f.flush()
            os.fsync(f.fileno())

    def _add(self, record: dict) -> bool:
        key = record_key(record)
        if key in self.done:
            return False
        self.done.add(key)
        self.records.append(record)
        return True

    def append(self, records: Iterable[dict]) -> None:
        lines = [
            json.dumps(record, ensure_ascii=False) + "\n" for record in records if self._add(record)
        ]
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
