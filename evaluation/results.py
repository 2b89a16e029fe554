"""The per-sample results file: append-only JSONL that survives crashes and resumes cleanly.

Each finished sample is one line, written and fsync'ed in chunks. On start the file is read
back; a torn last line (a crash mid-write) is cut off, so a rerun neither loses finished samples
nor repeats them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

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


class ResultsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict] = []
        self.done: set[tuple] = set()
        if path.exists():
            self._load()

    def _load(self) -> None:
        good_bytes = 0
        with self.path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn last line: drop it
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError:
                    break
                good_bytes += len(raw)
                key = record_key(record)
                if key not in self.done:
                    self.done.add(key)
                    self.records.append(record)
        if good_bytes != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_bytes)

    def append(self, records: Iterable[dict]) -> None:
        lines = []
        for record in records:
            key = record_key(record)
            if key in self.done:
                continue
            self.done.add(key)
            self.records.append(record)
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
