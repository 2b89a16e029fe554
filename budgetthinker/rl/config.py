"""The RL recipe: typed config, its YAML recipes in `configs/rl/`, and the original env aliases.

`budgetthinker rl --config configs/rl/cpu_smoke.yaml` or `--config cpu_smoke` (a recipe name);
with no `--config`, the original variable `steady` names the recipe (`steady=8ratio_v1`).
Command-line `key=value` overrides win over the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from budgetthinker import aliases
from budgetthinker.config import check_compat, load_config, recipes_root, shipped_recipes
from budgetthinker.config import resolve_recipe as resolve_shipped
from budgetthinker.errors import UserError
from budgetthinker.evaluation.tracking import check_report_to
from budgetthinker.outputs import plain_name, user_path
from budgetthinker.rl.budget_rollout import check_two_stage_request
from budgetthinker.rl.curriculum import CurriculumConfig
from budgetthinker.rl.data import RLDataConfig

RECIPE_DIR = recipes_root() / "rl"
"""The shipped RL recipes (package data when installed; the checkout's configs/rl otherwise)."""
ENGINES = ("trl",)


TIPS = ("control", "default")
"""RL budget tips: `control` (the tip matching the control tokens) or `default` (budget only)."""


@dataclass
class BudgetRolloutConfig:
    """The budget-aware rollout, the same keys on TRL (`rollout.…`) and verl
    (`budgetthinker.rollout.…`; verl's own `actor_rollout_ref.rollout` holds its sampling).

    Args:
        tip (`str`, *optional*, defaults to `"control"`): the budget tip of the prompt
            (`control` or `default`).
        force (`bool`, *optional*, defaults to `True`): force control tokens in rollouts
            (`false`: the budget is in the prompt only, the original's `remaining=default`).
        mask_forced_tokens (`bool`, *optional*, defaults to `True`): leave forced control tokens
            out of the policy loss; `false` is the original behaviour (they are trained on).
        stop_at_think_end (`bool`, *optional*, defaults to `True`): no control tokens after
            `</think>` (`false`: the original).
        validation_two_stage (`bool`, *optional*, defaults to `True`): validation answers with
            two-stage (the release's `stage=2`).
        two_stage_answer_tokens (`int`, *optional*, defaults to `40`): answer after the suffix.
        two_stage_request (`str`, *optional*, defaults to `"same"`): `same` forces the suffix in
            the same request when thinking is still open; `second` is the original (truncate
            to Bt − 50, suffix, a second request).
    """

    tip: str = "control"
    force: bool = True
    mask_forced_tokens: bool = True
    stop_at_think_end: bool = True
    validation_two_stage: bool = True
    two_stage_answer_tokens: int = 40
    two_stage_request: str = "same"

    def __post_init__(self) -> None:
        check_two_stage_request(self.two_stage_request, "rollout.two_stage_request")
        if self.tip not in TIPS:
            raise ValueError(f"rollout.tip must be one of {', '.join(TIPS)}, got {self.tip!r}")
        if self.two_stage_answer_tokens < 1:
            raise ValueError("rollout.two_stage_answer_tokens must be positive")

    def apply_compat(self, compat: list[str]) -> None:
        """`compat: [seed]`: every rollout improvement back to the original."""
        if "seed" in compat:
            self.mask_forced_tokens = False
            self.stop_at_think_end = False
            self.two_stage_request = "second"


@dataclass
class RolloutConfig(BudgetRolloutConfig):
    """TRL's rollouts: the budget-aware keys plus the sampling (on verl, verl's own keys).

    Args:
        n (`int`, *optional*, defaults to `5`): responses per prompt (the GRPO group).
        temperature, top_p: sampling; the release used 1.0 and 0.9.
        max_prompt_length (`int`, *optional*, defaults to `1024`): longer prompts are an error.
        max_response_length (`int`, *optional*, defaults to `10000`): the generation cap is
            `min(Bt + Bt//4, max_response_length − 200)`.
    """

    n: int = 5
    temperature: float = 1.0
    top_p: float = 0.9
    max_prompt_length: int = 1024
    max_response_length: int = 10000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 2:
            raise ValueError("rollout.n must be at least 2 (GRPO compares responses in a group)")
        if self.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0 (GRPO needs sampled responses)")


@dataclass
class TrainerConfig:
    """Optimisation (release values: docs/spec.md §5).

    Args:
        epochs (`int`): passes over the training problems.
        rollout_batch_size (`int`): prompts per batch; the whole batch shares one budget.
        global_batch_size (`int`): prompts per optimiser step (divides `rollout_batch_size`).
        micro_batch_size (`int`, *optional*): sequences per forward/backward pass; the optimiser
            step accumulates `global_batch_size × rollout.n / micro_batch_size` of them. Unset:
            the whole global batch in one pass (no accumulation).
        max_steps (`int`, *optional*): stop after this many optimiser steps (smoke runs).
        report_to (`str`, *optional*, defaults to `"none"`): `none`, `tensorboard` or `wandb`
            (`tensorboard,wandb` for both), handed to TRL's `report_to`; logs under the run
            folder (`logs/`, `wandb/`; `WANDB_MODE=offline` logs without an account).
    """

    epochs: int = 8
    rollout_batch_size: int = 256
    global_batch_size: int = 128
    lr: float = 1e-6
    weight_decay: float = 1e-2
    kl_coef: float = 1e-2
    max_grad_norm: float = 1.0
    micro_batch_size: int | None = None
    max_steps: int | None = None
    save_every_epoch: bool = True
    seed: int = 1
    report_to: str | list[str] = "none"

    def __post_init__(self) -> None:
        check_report_to(self.report_to, "trainer.report_to")
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
    # [seed]: every rollout improvement back to the original (mask_forced_tokens,
    # stop_at_think_end, two_stage_request) and the original reward's answer rule
    compat: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.compat = check_compat(self.compat, ("seed",))
        self.rollout.apply_compat(self.compat)
        sequences = self.trainer.global_batch_size * self.rollout.n
        micro = self.trainer.micro_batch_size
        if micro is not None and (micro < 1 or sequences % micro):
            raise ValueError(
                f"trainer.micro_batch_size {micro} must divide trainer.global_batch_size × "
                f"rollout.n = {sequences} sequences"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        plain_name(self.experiment, "experiment")  # it becomes <output_dir>/<experiment>/

    @property
    def run_dir(self) -> Path:
        return user_path(self.output_dir) / self.experiment


def recipes() -> list[str]:
    return shipped_recipes("rl")


def resolve_recipe(config: str | None) -> Path:
    """A recipe path, or a shipped recipe's name; `None` → the `steady` variable."""
    if config is None:
        config = aliases.value("steady")  # the original's variable (budgetthinker.aliases)
        if config is None:
            raise UserError(
                "no RL recipe: pass --config configs/rl/<name>.yaml (or a recipe name: "
                f"{', '.join(recipes())})"
            )
    return resolve_shipped("rl", config, "RL experiment")


def load_rl_config(config: str | None, overrides: list[str] = ()) -> RLConfig:
    return load_config(RLConfig, resolve_recipe(config), overrides, aliases_of="trl")
