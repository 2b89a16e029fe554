"""reasoning-gym tasks as benchmarks and RL problems: `data.benchmarks=[rg:basic_arithmetic, …]`.

reasoning-gym (Apache-2.0, `pip install reasoning-gym`) generates reasoning problems procedurally
from a task's config and a seed, and grades answers with the task's own `score_answer`: real tasks
with their authors' verifiers, no download. A benchmark `rg:<task>` is the first `size` problems
of `<task>` with seed `seed`; its difficulty comes from the task's curriculum `level` (every
attribute of the curriculum at that level) and/or the task's own config fields in `settings`
(which win). Each problem carries its verifier, so a sample records reasoning-gym's score beside
our grader's verdict (`verifier_score`, `verifier_correct`) and the report lists disagreements.

The same function gives the RL problems (`budgetthinker.rl.data`), so evaluation, TRL and verl
see the same tasks from the same recipe keys.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from budgetthinker.errors import UserError

PREFIX = "rg:"
"""A benchmark name `rg:<task>` is the reasoning-gym task `<task>`."""


@dataclass
class GymTaskConfig:
    """One reasoning-gym task (`data.rg.<task>`; the RL recipes' `data.rg.<task>` alike).

    Args:
        size (`int`, *optional*, defaults to `8`): problems generated (indices 0 … size − 1).
        seed (`int`, *optional*, defaults to `0`): the task's seed; the same (seed, index) is the
            same problem on every machine.
        level (`int`, *optional*): difficulty: every attribute of the task's reasoning-gym
            curriculum at this level (0 = easiest; above an attribute's top level, its top level).
            Unset: the task's own defaults.
        settings (`dict`, *optional*): the task's own config fields (e.g. basic_arithmetic's
            `max_terms`, `max_digits`); they override `level`. Unknown fields fail, listing the
            task's fields.
        system_line (`bool`, *optional*, defaults to `True`): the prompt starts with the system
            line (`Return your final response within \\boxed{}.`), so our grader finds the answer.
    """

    size: int = 8
    seed: int = 0
    level: int | None = None
    settings: dict = field(default_factory=dict)
    system_line: bool = True

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be a positive number of problems, got {self.size}")
        if self.level is not None and self.level < 0:
            raise ValueError(f"level must be 0 or more (0 = easiest), got {self.level}")


@dataclass(frozen=True)
class GymProblem:
    """One generated problem: its text, gold answer, and reasoning-gym's verifier for it."""

    task: str
    index: int
    id: str
    question: str
    answer: str
    verify: Callable[[str | None], float] = field(compare=False, repr=False)


def is_gym(name: str) -> bool:
    return name.startswith(PREFIX)


def task_name(name: str) -> str:
    """`rg:basic_arithmetic` → `basic_arithmetic`."""
    return name[len(PREFIX) :]


def require_gym():
    """The `reasoning_gym` module, or one line saying how to install it."""
    try:
        import reasoning_gym
    except ImportError:
        raise UserError(
            "rg:<task> benchmarks need reasoning-gym, which is not installed in this environment: "
            "pip install -e '.[gym]' (bash scripts/setup_env.sh installs it)"
        ) from None
    return reasoning_gym


def known_tasks() -> list[str]:
    require_gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def check_tasks(names: list[str], tasks: dict[str, GymTaskConfig], key: str) -> None:
    """Every `rg:` name is a reasoning-gym task and every `<key>.<task>` block belongs to one of
    them and builds (unknown task, setting or invalid value: one line naming the valid ones)."""
    wanted = [task_name(n) for n in names if is_gym(n)]
    for extra in sorted(set(tasks) - set(wanted)):
        raise UserError(
            f"{key}.{extra} is set but no benchmark is rg:{extra}; add rg:{extra} to the "
            f"benchmarks or remove {key}.{extra} (rg: benchmarks here: "
            f"{', '.join(wanted) or 'none'})"
        )
    for task in wanted:
        _dataset(task, _frozen(tasks.get(task) or GymTaskConfig()), key)


def gym_problems(name: str, cfg: GymTaskConfig | None, key: str = "data.rg") -> list[GymProblem]:
    """The problems of benchmark `rg:<task>` as configured (defaults when `cfg` is None)."""
    task = task_name(name)
    dataset = _dataset(task, _frozen(cfg or GymTaskConfig()), key)
    problems = []
    seed = (cfg or GymTaskConfig()).seed
    for index in range(len(dataset)):
        entry = dataset[index]
        problems.append(
            GymProblem(
                task=task,
                index=index,
                id=f"{task}-{seed}-{index}",
                question=entry["question"],
                answer=str(entry["answer"]),
                verify=_verifier(dataset, entry),
            )
        )
    return problems


def _verifier(dataset: Any, entry: dict) -> Callable[[str | None], float]:
    def verify(answer: str | None) -> float:
        """reasoning-gym's own score of `answer` for this problem (1.0: correct); a scorer that
        fails on a malformed answer scores 0."""
        try:
            return float(dataset.score_answer(answer, entry))
        except Exception:  # a task's scorer failing on odd input is a wrong answer, not a crash
            return 0.0

    return verify


def _frozen(cfg: GymTaskConfig) -> str:
    """A hashable key of a task's settings (for the cache of built datasets)."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)


@lru_cache(maxsize=64)
def _dataset(task: str, frozen: str, key: str):
    """The reasoning-gym dataset of `task` with the settings `frozen` (built once per process)."""
    require_gym()
    from reasoning_gym.factory import CURRICULA, DATASETS

    if task not in DATASETS:
        raise UserError(
            f"unknown reasoning-gym task rg:{task}; the tasks are: {', '.join(sorted(DATASETS))}"
        )
    cfg = GymTaskConfig(**json.loads(frozen))
    dataset_cls, config_cls = DATASETS[task]
    fields = {f.name for f in dataclasses.fields(config_cls)} - {"seed", "size"}
    unknown = sorted(set(cfg.settings) - fields)
    if unknown:
        raise UserError(
            f"{key}.{task}.settings: unknown setting{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; the settings of {task} are: {', '.join(sorted(fields))} "
            f"(size and seed are {key}.{task}.size / .seed)"
        )
    args: dict[str, Any] = {}
    if cfg.level is not None:
        if task not in CURRICULA:
            with_levels = ", ".join(sorted(CURRICULA))
            raise UserError(
                f"{key}.{task}.level: {task} has no reasoning-gym curriculum (no levels); set its "
                f"settings instead, or use a task with levels: {with_levels}"
            )
        curriculum = CURRICULA[task]()
        curriculum.set_global_level(cfg.level)
        generated = curriculum.generate_configuration()
        args = {f.name: getattr(generated, f.name) for f in dataclasses.fields(generated)}
    args.update(cfg.settings)
    args.update(size=cfg.size, seed=cfg.seed)
    try:
        config = config_cls(**args)
        if hasattr(config, "validate"):
            config.validate()
        return dataset_cls(config=config)
    except (AssertionError, ValueError, TypeError) as e:
        raise UserError(f"{key}.{task}: reasoning-gym rejects these settings: {e}") from None
