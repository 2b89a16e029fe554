"""The RL recipe: typed config, its YAML recipes in `configs/rl/`, and the original env aliases.

`budgetthinker rl --config configs/rl/cpu_smoke.yaml` or `--config cpu_smoke` (a recipe name);
with no `--config`, the original variable `steady` names the recipe (`steady=8ratio_v1`).
Command-line `key=value` overrides win over the recipe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from budgetthinker.config import load_config, recipes_root, shipped_recipes
from budgetthinker.config import resolve_recipe as resolve_shipped
from budgetthinker.errors import UserError
from budgetthinker.outputs import plain_name
from budgetthinker.rl.curriculum import CurriculumConfig
from budgetthinker.rl.data import RLDataConfig

RECIPE_DIR = recipes_root() / "rl"
"""The shipped RL recipes (package data when installed; the checkout's configs/rl otherwise)."""
ENGINES = ("trl",)


@dataclass
class RolloutConfig:
    """Sampling of the rollouts.

    Args:
        n (`int`, *optional*, defaults to `5`): responses per prompt (the GRPO group).
        temperature, top_p: sampling; the release used 1.0 and 0.9.
        max_prompt_length (`int`, *optional*, defaults to `1024`): longer prompts are an error.
        max_response_length (`int`, *optional*, defaults to `10000`): the generation cap is
            `min(Bt + Bt//4, max_response_length − 200)`.
        mask_forced_tokens (`bool`, *optional*, defaults to `True`): leave forced control tokens
            out of the policy loss; `false` is the original behaviour (they are trained on).
        tip (`str`, *optional*, defaults to `"control"`): the budget tip of the prompt.
    """

    n: int = 5
    temperature: float = 1.0
    top_p: float = 0.9
    max_prompt_length: int = 1024
    max_response_length: int = 10000
    mask_forced_tokens: bool = True
    tip: str = "control"

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError("rollout.n must be at least 2 (GRPO compares responses in a group)")
        if self.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 (GRPO needs sampled responses)")


@dataclass
class TrainerConfig:
    """Optimisation (release values: SPEC §5).

    Args:
        epochs (`int`): passes over the training problems.
        rollout_batch_size (`int`): prompts per batch; the whole batch shares one budget.
        global_batch_size (`int`): prompts per optimiser step (divides `rollout_batch_size`).
        max_steps (`int`, *optional*): stop after this many optimiser steps (smoke runs).
    """

    epochs: int = 8
    rollout_batch_size: int = 256
    global_batch_size: int = 128
    lr: float = 1e-6
    weight_decay: float = 1e-2
    kl_coef: float = 1e-2
    max_grad_norm: float = 1.0
    max_steps: int | None = None
    save_every_epoch: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        if self.rollout_batch_size % self.global_batch_size:
            raise ValueError(
                f"trainer.global_batch_size {self.global_batch_size} must divide "
                f"trainer.rollout_batch_size {self.rollout_batch_size}"
            )


@dataclass
class RLConfig:
    """One RL experiment; every key can be overridden as `key=value`."""

    experiment: str = "8ratio_v1"
    model: str = "default"  # prepared model folder, or 'default' (embedded model, 8ratio)
    engine: str = "trl"
    data: RLDataConfig = field(default_factory=RLDataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output_dir: str = "runs"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        plain_name(self.experiment, "experiment")  # it becomes <output_dir>/<experiment>/

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment


def recipes() -> list[str]:
    return shipped_recipes("rl")


def resolve_recipe(config: str | None) -> Path:
    """A recipe path, or a shipped recipe's name; `None` → the `steady` variable."""
    if config is None:
        config = os.environ.get("steady") or None  # noqa: SIM112  (the original's name)
        if config is None:
            raise UserError(
                "no RL recipe: pass --config configs/rl/<name>.yaml (or a recipe name: "
                f"{', '.join(recipes())})"
            )
    return resolve_shipped("rl", config, "RL experiment")


def load_rl_config(config: str | None, overrides: list[str] = ()) -> RLConfig:
    return load_config(RLConfig, resolve_recipe(config), overrides)
