"""Experiment tracking: `report_to: none|tensorboard|wandb`, one meaning in every recipe.

Evaluation logs itself (`log_eval`): per sweep point its accuracy and adherence, with the budget
as the step, and the comparison report's plots as images, into `<run>/tensorboard/` or an W&B run
under `<run>/wandb/` (W&B honours `WANDB_MODE=offline`: no account, no network). Training stages
hand the same value to their host's own option: LLaMA-Factory's and TRL's `report_to`
(`hf_report_to`), verl's `trainer.logger` (`verl_loggers`); `log_dirs` puts their logs in the run
folder unless the user's environment says where.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from budgetthinker.errors import UserError

TRACKERS = ("tensorboard", "wandb")
REPORT_TO = ("none", *TRACKERS)
WANDB_PROJECT = "budgetthinker"
LOGGED_METRICS = (
    "accuracy",
    "within_budget",
    "mean_rel_deviation",
    "never_finished",
    "mean_thinking",
    "accuracy_within_budget",
)
"""What evaluation logs per sweep point: accuracy and the adherence metrics (within B,
|t−B|/B, the share that never ended thinking), thinking tokens, accuracy within B."""


def check_report_to(value: str | Sequence[str] | None, key: str = "report_to") -> list[str]:
    """The trackers `value` names (`none` → []; several comma-separated); anything else is one
    line naming the valid values."""
    if value is None:
        return []
    names = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names = [n.strip() for n in names if n.strip()]
    for name in names:
        if name not in REPORT_TO:
            raise UserError(
                f"{key}: unknown value {name!r}; {key} is one of {', '.join(REPORT_TO)} "
                "(tensorboard,wandb for both)"
            )
    if "none" in names and len(names) > 1:
        raise UserError(f"{key}: 'none' cannot be combined with {', '.join(set(names) - {'none'})}")
    return [n for n in names if n != "none"]


def hf_report_to(value: str | Sequence[str] | None, key: str = "report_to") -> list[str] | str:
    """The value for transformers' `report_to` (TRL, LLaMA-Factory): `none`, the one tracker's
    name, or the list of them (transformers reads a string as one name, never a comma list)."""
    names = check_report_to(value, key)
    return "none" if not names else names[0] if len(names) == 1 else names


def verl_loggers(value: str | Sequence[str] | None, key: str = "report_to") -> list[str]:
    """verl's `trainer.logger`: the console always, plus the trackers."""
    return ["console", *check_report_to(value, key)]


_USER_SET = {k for k in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR") if os.environ.get(k)}
"""Log folders the user chose before budgetthinker started: they win over the run folder."""


def log_dirs(run_dir: str | os.PathLike) -> None:
    """Point transformers' TensorBoard callback (`<run>/logs`) and W&B (`<run>/wandb`) at this
    run's folder, unless the environment named other folders; W&B's project is budgetthinker
    unless `WANDB_PROJECT` is set."""
    run = Path(run_dir)
    if "TENSORBOARD_LOGGING_DIR" not in _USER_SET:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run / "logs")
    if "WANDB_DIR" not in _USER_SET:
        run.mkdir(parents=True, exist_ok=True)
        os.environ["WANDB_DIR"] = str(run)
    os.environ.setdefault("WANDB_PROJECT", WANDB_PROJECT)


def finish_runs() -> None:
    """Close a W&B run a training host left open (transformers' callback does not finish it), so
    that its files are complete when the stage returns and a later stage starts its own run."""
    import sys

    wandb = sys.modules.get("wandb")  # never imported: nothing was logged to W&B
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
        wandb.teardown()  # W&B caches its settings (WANDB_DIR) per process: the next run re-reads


def log_eval(
    report_to: str | Sequence[str] | None,
    out_dir: Path,
    records: Sequence[dict],
    name: str,
    config: dict[str, Any] | None = None,
) -> list[str]:
    """Log a finished sweep to the trackers named by `report_to`; returns what was written
    (folders), for the run's last message."""
    trackers = check_report_to(report_to)
    if not trackers or not records:
        return []
    points = _points(records)
    images = sorted((out_dir / "report_plots").glob("*.png"))
    written = []
    if "tensorboard" in trackers:
        written.append(str(_tensorboard(out_dir / "tensorboard", points, images)))
    if "wandb" in trackers:
        written.append(str(_wandb(out_dir, points, images, name, config)))
    return written


def _points(records: Sequence[dict]) -> dict[int, dict[str, float]]:
    """budget → {`<benchmark>/<method>/<metric>`: value} over every sweep point."""
    from budgetthinker.evaluation.report import method_label, summarize

    rows = summarize(records)
    several_backends = len({p["backend"] for p, _ in rows}) > 1
    several_models = len({p["model"] for p, _ in rows}) > 1
    by_budget: dict[int, dict[str, float]] = {}
    for point, metrics in rows:
        label = method_label(point, several_backends, several_models)
        for metric in LOGGED_METRICS:
            value = getattr(metrics, metric)
            if value is not None:  # unknown without thinking delimiters
                tag = f"{point['benchmark']}/{label}/{metric}"
                by_budget.setdefault(int(point["budget"]), {})[tag] = float(value)
    return dict(sorted(by_budget.items()))


def _tensorboard(folder: Path, points: dict[int, dict[str, float]], images: list[Path]) -> Path:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "report_to=tensorboard needs the tensorboard package: pip install -e '.[tracking]' "
            "(bash scripts/setup_env.sh installs it)"
        ) from None
    import matplotlib.image

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for budget, values in points.items():
            for tag, value in values.items():
                writer.add_scalar(tag, value, global_step=budget)
        for image in images:
            pixels = matplotlib.image.imread(image)[..., :3]  # RGBA floats → RGB
            writer.add_image(f"report/{image.stem}", pixels, dataformats="HWC")
    finally:
        writer.close()
    return folder


def _wandb(out_dir: Path, points, images: list[Path], name: str, config) -> Path:
    try:
        import wandb
    except ImportError:
        raise UserError(
            "report_to=wandb needs the wandb package: pip install -e '.[tracking]' (bash "
            "scripts/setup_env.sh installs it); set WANDB_MODE=offline to log without an account"
        ) from None
    # the run's folder, unless the user chose one (a training stage earlier in this process
    # may have pointed WANDB_DIR at its own folder)
    folder = Path(os.environ["WANDB_DIR"]) if "WANDB_DIR" in _USER_SET else out_dir
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT),
        name=name,
        dir=str(folder),
        config=config or {},
        job_type="eval",
        settings=wandb.Settings(silent=True),  # stdout keeps the summary table only
    )
    try:
        run.define_metric("budget")
        run.define_metric("*", step_metric="budget")
        for budget, values in points.items():
            run.log({"budget": budget, **values})
        if images:
            run.log({f"report/{image.stem}": wandb.Image(str(image)) for image in images})
    finally:
        run.finish()
        wandb.teardown()  # W&B caches its settings (WANDB_DIR) per process: the next run re-reads
    return folder / "wandb"
