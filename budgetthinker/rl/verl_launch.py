"""`budgetthinker rl --engine verl` (`bash rl/8ratio_v1.sh`): GRPO on verl with the curriculum.

A verl recipe (`configs/rl/8ratio_v1.yaml`) is a Hydra config on top of verl's `ppo_trainer` that
lists only what differs from verl's defaults, plus a `budgetthinker:` block (curriculum, data,
forcing switches) that verl ignores. The launcher:

1. composes the recipe with verl's own config schema and the command-line overrides (Hydra
   syntax, forwarded unchanged), so a typo fails here, before any GPU is touched;
2. writes the curriculum stream and the validation rows as verl parquet files
   (`runs/<experiment>/data/`, `budgetthinker.rl.verl_data`) for the SFT model's control tokens,
   leaving out problems whose prompt (the policy's chat template, as verl renders it) is longer
   than `data.max_prompt_length`, before the stream is cut into one-budget batches;
3. points verl at them (in-order reading, one pass, verl's own overlong filter off so no row
   shifts a batch boundary), at budgetthinker's agent loop, and sets
   `trainer.save_freq` to one curriculum epoch unless given; checks the result with verl's own
   `validate_config`; writes the resolved config next to the data;
4. replaces itself with `python -m verl.trainer.main_ppo …` (Ray: one node or many, see
   docs/stages/rl.md), logging to `budgetthinker.report_to` (verl's `trainer.logger`): TensorBoard
   in `runs/<experiment>/tensorboard` unless `TENSORBOARD_DIR` is set, W&B under
   `runs/<experiment>/wandb` unless `WANDB_DIR` is set.

`--dry-run` runs steps 1–3 in a temporary folder and prints the verl command: everything but
training runs on CPU, and nothing is written to the run folder.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetthinker import aliases
from budgetthinker.config import build, check_compat
from budgetthinker.control_spec import load_spec
from budgetthinker.errors import UserError
from budgetthinker.evaluation.tracking import WANDB_PROJECT, check_report_to, verl_loggers
from budgetthinker.outputs import atomic_text, plain_name
from budgetthinker.preparation.models import DEFAULT, resolve_model
from budgetthinker.rl.config import BudgetRolloutConfig
from budgetthinker.rl.curriculum import Curriculum, CurriculumConfig
from budgetthinker.rl.data import RLDataConfig, SyntheticRLConfig, load_split
from budgetthinker.rl.verl_data import VerlData, chat_prompt_lengths, write_verl_data

AGENT_LOOPS_FILE = Path(__file__).resolve().parent / "verl_agent_loops.yaml"
SEED_ROLLOUT = {
    "mask_forced_tokens": "false",
    "stop_at_think_end": "false",
    "two_stage_request": "second",
}
"""What `budgetthinker.compat: seed` sets: the original's rollout and validation (and the
original reward's answer rule, `reward_kwargs.extraction: seed`)."""


@dataclass
class VerlRecipe:
    """The `budgetthinker:` block of a verl recipe: the same `data`, `curriculum` and `rollout`
    blocks, with the same keys, as the TRL recipe (`budgetthinker.rl.config.RLConfig`).

    Args:
        experiment (`str`): names `runs/<experiment>/` (data, config, checkpoints).
        output_dir (`str`): where run folders go.
        data: the problems (`train_files`, `val_files` with `problem_key`/`answer_key`, `limit`;
            no train files → `synthetic` problems, for trials).
        epochs (`int`): passes over the training problems (the curriculum's epochs; verl's
            `trainer.total_epochs` stays 1, as verl reads the curriculum stream once).
        curriculum: budgets per epoch, validation budget, seed.
        rollout: the budget-aware rollout (tip, force, mask_forced_tokens, stop_at_think_end,
            validation_two_stage, two_stage_answer_tokens, two_stage_request).
        compat (`list[str]`): `[seed]` switches every rollout improvement back to the original
            (and the reward to the original answer rule).
        report_to (`str`): `none`, `tensorboard` or `wandb` (`tensorboard,wandb` for both),
            handed to verl's `trainer.logger` (with `console`, always); logs go to
            `runs/<experiment>/tensorboard` and `runs/<experiment>/wandb` unless
            `TENSORBOARD_DIR` / `WANDB_DIR` say otherwise.
    """

    experiment: str = "8ratio_v1"
    output_dir: str = "runs"
    data: RLDataConfig = field(default_factory=RLDataConfig)
    epochs: int = 8
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    rollout: BudgetRolloutConfig = field(default_factory=BudgetRolloutConfig)
    compat: list[str] = field(default_factory=list)
    report_to: str | list[str] = "tensorboard"

    def __post_init__(self) -> None:
        check_report_to(self.report_to, "budgetthinker.report_to")
        self.compat = check_compat(self.compat, ("seed",), "budgetthinker.compat")
        self.rollout.apply_compat(self.compat)
        plain_name(self.experiment, "experiment")  # it becomes <output_dir>/<experiment>/


MOVED = {
    **{k: f"data.{k}" for k in ("train_files", "val_files", "problem_key", "answer_key", "limit",
                                "synthetic")},
    **{k: f"rollout.{k}" for k in ("tip", "force", "mask_forced_tokens", "validation_two_stage",
                                   "two_stage_answer_tokens", "two_stage_request",
                                   "stop_at_think_end")},
}  # fmt: skip
"""Keys of the earlier flat `budgetthinker:` block → where they are now (the TRL recipe's shape)."""


def check_moved_keys(overrides: list[str], block: dict | None = None) -> None:
    """One line naming the new key for a flat key of the earlier recipe shape."""
    used = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    used += [f"budgetthinker.{k}" for k in (block or {})]
    for key in used:
        parts = key.split(".")
        if len(parts) >= 2 and parts[0] == "budgetthinker" and parts[1] in MOVED:
            new = "budgetthinker." + MOVED[parts[1]] + "".join("." + p for p in parts[2:])
            raise UserError(
                f"{key} is now {new}: the budgetthinker block has the TRL recipe's shape "
                "(data, curriculum, rollout); see docs/stages/rl.md"
            )


def require_verl() -> None:
    try:
        import verl  # noqa: F401
    except ImportError:
        raise UserError(
            "the verl engine needs verl, which is not installed in this environment; create the "
            "rl environment with `bash scripts/setup_env.sh rl` and run `bash rl/8ratio_v1.sh` "
            "(or .venv-rl/bin/budgetthinker rl --engine verl …)"
        ) from None


def is_verl_recipe(path: Path) -> bool:
    """A verl recipe composes on verl's `ppo_trainer` (its Hydra defaults list names it)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return False
    defaults = data.get("defaults") if isinstance(data, dict) else None
    return isinstance(defaults, list) and "ppo_trainer" in defaults


def alias_overrides(environ: dict[str, str] | None = None) -> list[str]:
    """The original launch variables (`budgetthinker.aliases`, the table every stage reads) as
    Hydra overrides; command-line overrides come later and win."""
    return [f"{key}={_hydra_value(v)}" for key, v in aliases.read("verl", environ).items()]


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if text.isidentifier() else _quote(text)  # names bare, paths quoted


def compose(recipe: Path, overrides: list[str]) -> Any:
    """The recipe composed with verl's config schema (Hydra), as verl itself will see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(recipe.parent.resolve()), version_base=None):
            return hydra_compose(recipe.stem, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"the verl recipe {recipe} does not compose with these overrides: {first} "
            "(keys verl lacks need a leading '+'; see verl's config reference)"
        ) from None


@dataclass
class Prepared:
    """What the launcher decided: the verl command and the files it wrote."""

    command: list[str]
    overrides: list[str]
    data: VerlData
    run_dir: Path
    config: Any = None


def prepare(recipe: Path, user_overrides: list[str], scratch: Path | None = None) -> Prepared:
    """Steps 1–3 of the module docstring; nothing GPU-bound. With `scratch` (a dry run) the data
    and the resolved config are written there instead of the run folder, which stays untouched."""
    from omegaconf import OmegaConf

    check_moved_keys(list(user_overrides))
    if any(o.lstrip("+~").startswith("trainer.logger=") for o in user_overrides):
        raise UserError(
            "set the loggers with budgetthinker.report_to=none|tensorboard|wandb (it becomes "
            "verl's trainer.logger, with console), not trainer.logger"
        )
    overrides = alias_overrides() + list(user_overrides)
    cfg = compose(recipe, overrides)
    if "budgetthinker" not in cfg:
        raise UserError(
            f"{recipe} has no budgetthinker: block (curriculum and data); see 8ratio_v1.yaml"
        )
    block = OmegaConf.to_container(cfg.budgetthinker, resolve=True)
    check_moved_keys([], block)
    bt = build(VerlRecipe, block, "budgetthinker")
    if int(cfg.trainer.total_epochs) != 1:
        raise UserError(
            "trainer.total_epochs must stay 1 (verl reads the curriculum stream once); set the "
            f"number of epochs with budgetthinker.epochs={cfg.trainer.total_epochs}"
        )
    model = OmegaConf.select(cfg, "actor_rollout_ref.model.path", default=None)
    if not model:
        raise UserError(
            "no policy model: add actor_rollout_ref.model.path=/path/to/sft-checkpoint (a "
            "prepared model folder, e.g. the SFT output) or set MODEL_PATH"
        )
    if model == DEFAULT:
        model = str(resolve_model(model))
        overrides.append(f"actor_rollout_ref.model.path={_quote(model)}")
    spec = load_spec(model)
    train = load_split(bt.data, "train", "budgetthinker.data.")
    val = load_split(bt.data, "val", "budgetthinker.data.")
    if not val:
        if bt.data.train_files:
            raise UserError(
                "verl validates during training: set budgetthinker.data.val_files (e.g. "
                "math500_RL.parquet)"
            )
        syn = bt.data.synthetic
        val = load_split(
            RLDataConfig(synthetic=SyntheticRLConfig(n=syn.n, seed=syn.seed + 1, steps=syn.steps)),
            "train",
        )
    run_dir = Path(bt.output_dir) / bt.experiment
    written = scratch if scratch is not None else run_dir
    from verl.utils import hf_tokenizer

    tokenizer = hf_tokenizer(model, trust_remote_code=bool(cfg.data.get("trust_remote_code")))
    chat_kwargs = OmegaConf.select(cfg, "data.apply_chat_template_kwargs", default=None)
    chat_kwargs = OmegaConf.to_container(chat_kwargs) if chat_kwargs else {}
    data = write_verl_data(
        written / "data",
        train,
        val,
        Curriculum(bt.curriculum),
        mode=spec.parsed_mode,
        tip=bt.rollout.tip,
        epochs=bt.epochs,
        batch_size=int(cfg.data.train_batch_size),
        validation_two_stage=bt.rollout.validation_two_stage,
        prompt_lengths=chat_prompt_lengths(tokenizer, chat_kwargs),
        max_prompt_length=int(cfg.data.max_prompt_length),
    )
    launch = [
        f"data.train_files=[{_quote(str(data.train_file.resolve()))}]",
        f"data.val_files=[{_quote(str(data.val_file.resolve()))}]",
        "data.shuffle=false",
        # overlong prompts are already out of the stream; a row verl dropped would shift batches
        "data.filter_overlong_prompts=false",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={_quote(str(AGENT_LOOPS_FILE))}",
        f"trainer.logger=[{','.join(verl_loggers(bt.report_to, 'budgetthinker.report_to'))}]",
    ]
    if "seed" in bt.compat:  # every rollout switch back to the original, read by the agent loop
        launch += [f"budgetthinker.rollout.{key}={value}" for key, value in SEED_ROLLOUT.items()]
        extraction = "reward.custom_reward_function.reward_kwargs.extraction"
        if not any(extraction in o for o in overrides):  # the original reward's answer rule
            launch.append(f"+{extraction}=seed")
    if int(cfg.trainer.save_freq) == -1:
        launch.append(f"trainer.save_freq={data.steps_per_epoch}")
    final = overrides + launch
    resolved = compose(recipe, final)
    _validate(resolved)
    written.mkdir(parents=True, exist_ok=True)
    atomic_text(written / "verl_config.yaml", OmegaConf.to_yaml(resolved))
    command = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        f"--config-path={recipe.parent.resolve()}",
        f"--config-name={recipe.stem}",
        # Hydra's own run folder (resolved config, log) goes with the run, not into ./outputs/
        f"hydra.run.dir={_quote(str(run_dir.resolve() / 'hydra'))}",
        *final,
    ]
    return Prepared(command, final, data, run_dir, resolved)


def _validate(cfg: Any) -> None:
    """verl's own consistency checks (batch sizes against GPUs, …), which run on CPU."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        validate_config(
            config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg)
        )
    except (AssertionError, ValueError) as e:
        raise UserError(f"verl rejects this configuration: {e}") from None


def run(recipe: Path, user_overrides: list[str], dry_run: bool = False) -> int:
    """Prepare and start verl; a dry run checks everything in a temporary folder, prints the
    command (with the run folder's paths) and writes nothing."""
    require_verl()
    if not dry_run:
        return _launch(prepare(recipe, user_overrides))
    with tempfile.TemporaryDirectory(prefix="budgetthinker-dry-run-") as scratch:
        prepared = prepare(recipe, user_overrides, scratch=Path(scratch))
        _summarise(prepared, Path(scratch), "would write")
        real = str(prepared.run_dir.resolve())
        command = [part.replace(str(Path(scratch).resolve()), real) for part in prepared.command]
        tensorboard = os.environ.get("TENSORBOARD_DIR") or str(Path(real) / "tensorboard")
        wandb = os.environ.get("WANDB_DIR") or real
        env = [f"TENSORBOARD_DIR={tensorboard}", f"WANDB_DIR={wandb}"]
        print(shlex.join(["env", *env, *command]))
        print(f"[rl] dry run: nothing written to {prepared.run_dir}", file=sys.stderr)
    return 0


def _summarise(prepared: Prepared, written: Path, verb: str) -> None:
    """The curriculum and config lines, with the run folder's paths (also in a dry run)."""
    data = prepared.data
    train_file = prepared.run_dir / data.train_file.resolve().relative_to(written.resolve())
    print(
        f"[rl] curriculum stream: {data.total_steps} steps ({data.steps_per_epoch} per epoch) "
        f"→ {train_file}",
        file=sys.stderr,
    )
    for line in epoch_summary(data.budgets, data.steps_per_epoch):
        print(f"[rl]   {line}", file=sys.stderr)
    if any(data.dropped.values()):
        print(
            f"[rl] left out {data.dropped['train']} training and {data.dropped['val']} validation "
            "problems whose prompt is longer than data.max_prompt_length tokens",
            file=sys.stderr,
        )
    print(
        f"[rl] resolved verl config {verb} {prepared.run_dir / 'verl_config.yaml'}", file=sys.stderr
    )


def _launch(prepared: Prepared) -> int:
    """Replace this process with verl's trainer."""
    _summarise(prepared, prepared.run_dir, "→")
    # verl's TensorBoard logger writes here (its default is ./tensorboard_log/…); the original
    # launch script set TENSORBOARD_DIR per experiment too.
    tensorboard = os.environ.get("TENSORBOARD_DIR") or str(
        prepared.run_dir.resolve() / "tensorboard"
    )
    wandb = os.environ.get("WANDB_DIR") or str(prepared.run_dir.resolve())
    os.environ["TENSORBOARD_DIR"] = tensorboard
    os.environ["WANDB_DIR"] = wandb
    os.environ.setdefault("WANDB_PROJECT", WANDB_PROJECT)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(prepared.command[0], prepared.command)
    return 0  # not reached


def epoch_summary(budgets: list[int], steps_per_epoch: int) -> list[str]:
    """One line per epoch: its steps and how many of them drew each budget."""
    lines = []
    for start in range(0, len(budgets), steps_per_epoch):
        epoch = budgets[start : start + steps_per_epoch]
        counts = Counter(epoch)
        drawn = " ".join(f"{b}×{counts[b]}" for b in sorted(counts))
        lines.append(f"epoch {start // steps_per_epoch + 1}: {len(epoch)} steps · budgets {drawn}")
    return lines


def _quote(value: str) -> str:
    """A Hydra override value: double-quoted, so paths with `=`, `,` or spaces survive."""
    return json.dumps(value)

