"""Benchmarks: local JSONL in the Qwen2.5-Math layout, Hugging Face datasets, `synthetic`, and
reasoning-gym tasks (`rg:<task>`, `budgetthinker.evaluation.gym_tasks`).

Local files live at `<data_dir>/<name>/<split>.jsonl`; the question and gold-answer fields differ
per benchmark (see `QUESTION_FIELDS` and `budgetthinker.evaluation.grading.gold_answer`). A name
containing "/" that is not a local folder is a Hugging Face dataset id (needs network and the
`datasets` package). `synthetic` is generated on the fly: the embedded default, no files needed.
`rg:<task>` is generated on the fly too, with `data.rg.<task>` (size, seed, level, settings), and
each of its problems carries reasoning-gym's verifier.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from budgetthinker.errors import UserError
from budgetthinker.evaluation.gym_tasks import GymTaskConfig, check_tasks, gym_problems, is_gym
from budgetthinker.prompts import SYSTEM_LINE
from budgetthinker.synthetic import synthetic_problems

QUESTION_FIELDS = {
    "math500": "problem",
    "aime24": "problem",
    "amc23": "question",
    "gsm8k": "question",
    "minerva_math": "problem",
    "olympiadbench": "question",
}
KNOWN_BENCHMARKS = ("synthetic", *QUESTION_FIELDS)
BOXED_PREFIX_DEFAULT = ("math500", "synthetic")
"""Benchmarks whose prompts start with the system line by default: the original's evaluation data
has it on MATH-500 only (AIME24, AMC23, GSM8K, Minerva and OlympiadBench go without); the
synthetic set is ours and keeps it."""


@dataclass(frozen=True)
class Problem:
    benchmark: str
    id: str
    question: str
    answer: str
    # the prompt starts with `Return your final response within \\boxed{}. ` (data.boxed_prefix)
    system_line: bool = True
    # the benchmark's own verifier (reasoning-gym's `score_answer`): extracted answer → score in
    # [0, 1], recorded beside our grader's verdict; None for benchmarks without one
    verify: Callable[[str | None], float] | None = field(default=None, compare=False, repr=False)


@dataclass
class SyntheticConfig:
    n: int = 8
    seed: int = 0
    steps: int = 3


@dataclass
class DataConfig:
    """Which problems to evaluate on."""

    benchmarks: list[str] = None  # type: ignore[assignment]  # default set in __post_init__
    data_dir: str | None = None  # folder holding <name>/<split>.jsonl
    split: str = "test"
    limit: int | None = None  # first `limit` problems of each benchmark (after `offset`)
    offset: int = 0
    question_field: str | None = None  # for Hugging Face / custom files with other field names
    answer_field: str | None = None
    synthetic: SyntheticConfig = None  # type: ignore[assignment]
    # benchmarks whose prompts start with the system line (`all`: every one); the default is the
    # original's data: MATH-500 only (plus our synthetic set)
    boxed_prefix: list[str] = field(default_factory=lambda: list(BOXED_PREFIX_DEFAULT))
    # reasoning-gym tasks named `rg:<task>` in `benchmarks`: size, seed, level, settings per task
    # (a task not listed here gets the defaults; see budgetthinker.evaluation.gym_tasks)
    rg: dict[str, GymTaskConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.benchmarks is None:
            self.benchmarks = ["synthetic"]
        if self.synthetic is None:
            self.synthetic = SyntheticConfig()
        if not self.benchmarks:
            raise ValueError("data.benchmarks must name at least one benchmark")
        if self.limit is not None and self.limit <= 0:
            raise ValueError("data.limit must be positive (or null for all problems)")
        if self.rg or any(is_gym(str(b)) for b in self.benchmarks):
            check_tasks([str(b) for b in self.benchmarks], self.rg, "data.rg")


def load_problems(cfg: DataConfig) -> list[Problem]:
    """All problems of all configured benchmarks, in a stable order."""
    problems: list[Problem] = []
    for name in cfg.benchmarks:
        rows = _with_system_line(name, _load_benchmark(name, cfg), cfg.boxed_prefix)
        chosen = rows[cfg.offset : cfg.offset + cfg.limit if cfg.limit else None]
        if not chosen:
            why = f"data.offset={cfg.offset} skips all {len(rows)}" if rows else "no data rows"
            raise UserError(
                f"benchmark {name}: no problems to run ({why}); check the data file, data.offset "
                "and data.limit"
            )
        problems.extend(chosen)
    return problems


def _with_system_line(name: str, rows: list[Problem], boxed: list[str]) -> list[Problem]:
    """Mark each problem with whether its prompt gets the system line (`data.boxed_prefix` names
    the benchmark as configured or as reported, or is `all`); a reasoning-gym task's own
    `system_line` setting decides for it."""
    if is_gym(name):
        return rows
    wanted = "all" in boxed or name in boxed or any(p.benchmark in boxed for p in rows[:1])
    return [replace(p, system_line=wanted) for p in rows]


def _load_benchmark(name: str, cfg: DataConfig) -> list[Problem]:
    if name == "synthetic":
        s = cfg.synthetic
        return [
            Problem("synthetic", p.id, p.question, p.answer)
            for p in synthetic_problems(cfg.offset + (cfg.limit or s.n), s.seed, s.steps)
        ]
    if is_gym(name):
        task = cfg.rg.get(name[3:]) or GymTaskConfig()
        return [
            Problem(name, p.id, p.question, p.answer, task.system_line, p.verify)
            for p in gym_problems(name, task)
        ]
    local = _local_file(name, cfg)
    if local is not None:
        return _from_rows(name, _read_jsonl(local), cfg, source=str(local))
    if _looks_local(name):
        tried = [str(p) for p in _candidates(name, cfg)]
        raise UserError(
            f"benchmark {name}: data file not found (looked for {', '.join(tried)}); check the "
            f"path, or point data.data_dir=… at the folder that holds {name}/{cfg.split}.jsonl"
        )
    if "/" in name:
        return _from_rows(name, _read_hub(name, cfg.split), cfg, source=f"hub:{name}")
    if name not in QUESTION_FIELDS:
        raise UserError(
            f"unknown benchmark {name!r}; use one of {', '.join(KNOWN_BENCHMARKS)}, a folder "
            "<data_dir>/<name>/ with a <split>.jsonl, a reasoning-gym task rg:<task>, or a "
            "Hugging Face dataset id (org/name)"
        )
    where = Path(cfg.data_dir or "<data.data_dir>") / name / f"{cfg.split}.jsonl"
    raise UserError(
        f"benchmark {name}: data file {where} not found; point data.data_dir=… at the folder "
        f"that holds {name}/{cfg.split}.jsonl (Qwen2.5-Math layout)"
    )


def _candidates(name: str, cfg: DataConfig) -> list[Path]:
    """`<data_dir>/<name>/<split>.jsonl`, then `name` itself as a folder or a .jsonl file."""
    candidates = []
    if cfg.data_dir:
        candidates.append(Path(cfg.data_dir).expanduser() / name / f"{cfg.split}.jsonl")
    path = Path(name).expanduser()
    candidates.append(path if path.suffix == ".jsonl" else path / f"{cfg.split}.jsonl")
    return candidates


def _local_file(name: str, cfg: DataConfig) -> Path | None:
    return next((c for c in _candidates(name, cfg) if c.is_file()), None)


def _looks_local(name: str) -> bool:
    """A path, not a Hugging Face id (`org/name`): a file suffix, a leading `/`, `.` or `~`,
    more than one `/`, or a first component that is a local folder."""
    path = Path(name)
    return (
        path.suffix in (".jsonl", ".json")
        or name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or ("/" in name and Path(name.split("/")[0]).expanduser().is_dir())
    )


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line.decode("utf-8")))
            except UnicodeDecodeError:
                raise UserError(f"{path}:{number} is not UTF-8 text; re-save it as UTF-8") from None
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number} is not valid JSON ({e.msg})") from None
    return rows


def _read_hub(name: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"loading the Hugging Face dataset {name!r} needs the `datasets` package: "
            "pip install datasets (it is part of bash scripts/setup_env.sh)"
        ) from None
    try:
        return list(datasets.load_dataset(name, split=split))
    except Exception as e:  # network, unknown id, unknown split: all end here
        raise UserError(
            f"could not load the Hugging Face dataset {name!r} (split {split}): {e}"
        ) from None


def _from_rows(name: str, rows: list[dict], cfg: DataConfig, source: str) -> list[Problem]:
    from budgetthinker.evaluation.grading import gold_answer

    bench = _benchmark_name(name)
    qfield = (
        cfg.question_field or QUESTION_FIELDS.get(bench) or _guess(rows, ("problem", "question"))
    )
    problems = []
    for number, row in enumerate(rows, start=1):
        question = row.get(qfield)
        if not isinstance(question, str) or not question.strip():
            raise UserError(
                f"{source}, row {number}: field {qfield!r} (the question) is missing or empty; "
                "set data.question_field=… if the file uses another name"
            )
        if cfg.answer_field:
            if row.get(cfg.answer_field) in (None, ""):
                raise UserError(f"{source}, row {number}: field {cfg.answer_field!r} is missing")
            answer = str(row[cfg.answer_field])
        else:
            try:
                answer = gold_answer(row, bench) if bench in QUESTION_FIELDS else _generic(row)
            except UserError as e:
                raise UserError(f"{source}, row {number}: {e}") from None
        # MATH-500's copy already starts with the system line; the prompt adds it again.
        question = question.removeprefix(SYSTEM_LINE)
        ident = str(row.get("id", row.get("idx", row.get("unique_id", number - 1))))
        problems.append(Problem(bench, ident, question, answer))
    return problems


def _benchmark_name(name: str) -> str:
    """`math500` → itself; a local folder or file → the folder's name; a hub id → itself."""
    if name in QUESTION_FIELDS:
        return name
    path = Path(name).expanduser()
    if path.exists():
        return path.parent.name if path.suffix == ".jsonl" else path.name
    return name


def _generic(row: dict) -> str:
    """Gold answer of a row in an unknown layout: `answer`, `final_answer`, or the last
    boxed answer of `solution`."""
    from budgetthinker.evaluation.grading import extract_boxed

    for key in ("answer", "final_answer"):
        if row.get(key) not in (None, ""):
            value = row[key]
            return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    boxed = extract_boxed(str(row.get("solution", "")))
    if boxed is None:
        raise UserError(
            "no gold answer: the row has no 'answer' or 'final_answer' field and no boxed answer "
            "in 'solution'; set data.answer_field=…"
        )
    return boxed


def _guess(rows: list[dict], names: tuple[str, ...]) -> str:
    first = rows[0] if rows else {}
    return next((n for n in names if n in first), names[0])
