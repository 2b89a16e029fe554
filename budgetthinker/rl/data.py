"""RL problems: parquet or JSONL files with a problem and an answer column, reasoning-gym tasks
(`rg:<task>` in the file lists, `data.rg.<task>` as in evaluation), or synthetic ones.

The release data (`train_RL.parquet`, `math500_RL.parquet`) has columns `problem` and `answer`, and
its problems already start with the system line; it is stripped here so that the one prompt
function (`budgetthinker.prompts.user_content`) adds it exactly once, with the budget tip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from budgetthinker.control_spec import Mode
from budgetthinker.errors import UserError
from budgetthinker.evaluation.gym_tasks import GymTaskConfig, check_tasks, gym_problems, is_gym
from budgetthinker.prompts import SYSTEM_LINE, user_content
from budgetthinker.synthetic import synthetic_problems


@dataclass
class SyntheticRLConfig:
    n: int = 16
    seed: int = 0
    steps: int = 2


@dataclass
class RLDataConfig:
    """Where the RL problems come from; empty `train_files` → synthetic problems.

    Args:
        train_files (`list[str]`, *optional*): parquet or JSONL files, or reasoning-gym tasks
            `rg:<task>`; `[]`: synthetic problems; `null` (the release recipes): must be set,
            the recipe names no data a user has.
        val_files (`list[str]`, *optional*): validation files or `rg:<task>` (empty: no
            validation; `null`: must be set); a task's validation problems use its seed + size
            (reasoning-gym draws problem i of seed s from s + i, so they follow the training
            problems without overlap).
        problem_key (`str`, *optional*, defaults to `"problem"`): column with the problem text.
        answer_key (`str`, *optional*, defaults to `"answer"`): column with the gold answer.
        limit (`int`, *optional*): use only the first `limit` rows of each split.
        rg (`dict`, *optional*): per reasoning-gym task: `size`, `seed`, `level`, `settings`
            (`budgetthinker.evaluation.gym_tasks.GymTaskConfig`, the keys of evaluation's
            `data.rg`).
    """

    train_files: list[str] | None = field(default_factory=list)
    val_files: list[str] | None = field(default_factory=list)
    problem_key: str = "problem"
    answer_key: str = "answer"
    limit: int | None = None
    synthetic: SyntheticRLConfig = field(default_factory=SyntheticRLConfig)
    rg: dict[str, GymTaskConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [str(f) for f in (self.train_files or []) + (self.val_files or [])]
        if self.rg or any(is_gym(n) for n in names):
            check_tasks(names, self.rg, "data.rg")


@dataclass(frozen=True)
class RLProblem:
    problem: str  # without the system line
    answer: str


def require_files(files: list[str] | None, key: str) -> list[str]:
    """`files`, or a `UserError` naming the key when a recipe left it unset (`null`)."""
    if files is None:
        raise UserError(
            f"this recipe needs its {'training' if 'train' in key else 'validation'} problems: "
            f"set {key}=[path/to/file.parquet] (parquet or JSONL with problem and answer "
            f"columns; the release used the original's train_RL.parquet / math500_RL.parquet), "
            f"or {key}=[] for synthetic problems"
        )
    return files


def load_split(cfg: RLDataConfig, split: str = "train", prefix: str = "data.") -> list[RLProblem]:
    """Problems of `split` ("train" or "val"); `prefix` is where the recipe keeps the data keys
    (for the error naming the key to set)."""
    key = f"{prefix}{'train_files' if split == 'train' else 'val_files'}"
    files = require_files(cfg.train_files if split == "train" else cfg.val_files, key)
    if not files:
        if split != "train":
            return []
        syn = cfg.synthetic
        rows = [
            RLProblem(p.question, p.answer)
            for p in synthetic_problems(syn.n, seed=syn.seed, num_steps=syn.steps)
        ]
    else:
        rows = [r for f in files for r in read_source(str(f), cfg, split, key)]
    return rows[: cfg.limit] if cfg.limit is not None else rows


def read_source(
    name: str, cfg: RLDataConfig, split: str = "train", key: str = ""
) -> list[RLProblem]:
    """The problems of one entry of a file list: a reasoning-gym task `rg:<task>` (validation:
    seed + size, the problems after the training ones) or a parquet / JSONL file."""
    if not is_gym(name):
        return read_file(name, cfg.problem_key, cfg.answer_key, key)
    task = cfg.rg.get(name[3:]) or GymTaskConfig()
    if split != "train":
        task = replace(task, seed=task.seed + task.size)
    return [RLProblem(p.question, p.answer) for p in gym_problems(name, task)]


def read_file(
    path: str, problem_key: str = "problem", answer_key: str = "answer", key: str = ""
) -> list[RLProblem]:
    """Rows of one parquet or JSONL file; a missing column or empty value is a `UserError`.
    `key` is the recipe key that named the file (verl's sit under `budgetthinker.data.`)."""
    p = Path(path)
    if not p.is_file():
        where = key or "data.train_files / data.val_files"
        raise UserError(f"RL data file {path} does not exist; fix {where} (see docs/data.md)")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        columns = table.column_names
        _check_columns(path, columns, problem_key, answer_key)
        rows = table.select([problem_key, answer_key]).to_pylist()
    elif p.suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(p.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(
                    f"{path}:{n} must be a JSON object with {problem_key!r} and {answer_key!r}"
                )
            _check_columns(f"{path}:{n}", list(row), problem_key, answer_key)
            rows.append(row)
    else:
        raise UserError(f"RL data file {path} must be .parquet or .jsonl")
    out = []
    for n, row in enumerate(rows, start=1):
        problem, answer = row[problem_key], row[answer_key]
        if problem is None or answer is None or str(problem).strip() == "":
            raise UserError(
                f"{path}: row {n} has an empty {problem_key!r} or {answer_key!r}; "
                "remove the row or fix the file"
            )
        out.append(RLProblem(strip_system_line(str(problem)), _answer_text(answer)))
    return out


def strip_system_line(problem: str) -> str:
    return problem[len(SYSTEM_LINE) :] if problem.startswith(SYSTEM_LINE) else problem


def rl_user_content(problem: str, budget: int, mode: Mode, tip: str = "control") -> str:
    """The user turn of an RL prompt: system line + problem + tip for the batch's budget."""
    return user_content(strip_system_line(problem), budget, tip, mode)


def _answer_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_columns(where: str, columns: list[str], problem_key: str, answer_key: str) -> None:
    missing = [k for k in (problem_key, answer_key) if k not in columns]
    if missing:
        raise UserError(
            f"{where} has no {' or '.join(repr(m) for m in missing)} column (it has: "
            f"{', '.join(columns) or 'none'}); rename the column or set data.problem_key / "
            "data.answer_key"
        )
