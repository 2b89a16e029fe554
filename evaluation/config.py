"""The evaluation recipe: typed config, its YAML recipes in `configs/eval/`, and env aliases."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from budgetthinker.evaluation.datasets import DataConfig

RELEASE_BUDGETS = [100, 250, 500, 1000, 2000, 4000, 6000, 10000]


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # samples per problem
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("sampling.n must be at least 1")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(
                "sampling.n > 1 needs sampling.temperature > 0 (greedy repeats itself)"
            )


@dataclass
class GradingConfig:
    workers: int = 2  # parallel grader processes
    timeout: float = 5.0  # seconds per equivalence check
    # default: boxed, then math-verify's extraction; qwen (= seed): the original's last-boxed
    # rule of the Qwen2.5-Math parser, for reproducing published numbers
    extraction: str = "default"

    def __post_init__(self) -> None:
        from budgetthinker.evaluation.extraction import EXTRACTIONS

        if self.extraction not in EXTRACTIONS:
            raise ValueError(
                f"grading.extraction must be one of {', '.join(EXTRACTIONS)}, "
                f"got {self.extraction!r}"
            )


@dataclass
class EvalConfig:
    """One evaluation experiment; every key can be overridden as `key=value`."""

    experiment: str = "default"
    model: str = "default"  # prepared model folder, any model folder, or 'default' (embedded)
    backend: str = "hf"  # hf | vllm
    methods: list[str] = field(default_factory=lambda: ["control"])
    two_stage: bool = False
    budgets: list[int] = field(default_factory=lambda: list(RELEASE_BUDGETS))
    max_new_tokens: int | None = None  # default: B + B//50 (two-stage: room for the answer)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    grading: GradingConfig = field(default_factory=GradingConfig)
    batch_size: int = 16  # transformers batch; vLLM schedules a whole chunk itself
    chunk_size: int = 64  # requests generated, graded and saved together
    max_model_len: int | None = None  # vLLM context length (default: fits the largest request)
    output_dir: str = "runs"

    def __post_init__(self) -> None:
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"backend must be 'hf' or 'vllm', got {self.backend!r}")
        if not self.budgets:
            raise ValueError("budgets must list at least one budget")
        if not self.methods:
            raise ValueError("methods must list at least one method")
        if not self.experiment or "/" in self.experiment:
            raise ValueError("experiment must be a plain name (it becomes runs/<experiment>/)")


def _methods_from_env(_: str) -> list[str]:
    """`remaining` (forcing on/off) and `tip` (prompt) of the original Eval.sh → methods."""
    # The original scripts used these lower-case names; they are aliases, kept as they were.
    remaining = os.environ.get("remaining", "")  # noqa: SIM112
    tip = os.environ.get("tip", "")  # noqa: SIM112
    if remaining.endswith("ratio") or remaining.startswith("remaining"):
        return ["control"]
    tips = {"8ratio": "control", "default": "withoutremaining"}
    return [tips.get(tip, tip) or "withoutremaining"]


def _two_stage(value: str) -> bool:
    if value == "2":
        return True
    if value in ("1", "0", "none"):
        return False
    raise ValueError("use stage=2 for two-stage inference or stage=1 for one stage")


ENV_ALIASES = {
    "MODEL_NAME_OR_PATH": ("model", str),
    "DATA_NAME": ("data.benchmarks", lambda v: [b.strip() for b in v.split(",") if b.strip()]),
    "remaining": ("methods", _methods_from_env),
    "tip": ("methods", _methods_from_env),
    "stage": ("two_stage", _two_stage),
    "budget": ("budgets", lambda v: [int(b) for b in v.replace(",", " ").split()]),
}
"""Environment variables of the original evaluation scripts, accepted as aliases."""
