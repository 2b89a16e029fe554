"""`budgetthinker rl`: GRPO with the budget reward and curriculum (TRL engine on one machine)."""

from __future__ import annotations

import argparse
import json
import sys

from budgetthinker.errors import UserError


def add_rl_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="RL recipe: a YAML file or a recipe name in configs/rl/ (8ratio_v1, cpu_smoke); "
        "default: the recipe named by the environment variable `steady`",
    )
    parser.add_argument(
        "--engine", choices=("trl",), default=None, help="trl: single-machine GRPO on TRL"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override recipe keys, e.g. trainer.max_steps=2 rollout.n=4",
    )


def run_rl(args: argparse.Namespace) -> int:
    from budgetthinker.rl.config import load_rl_config

    overrides = list(args.overrides)
    if args.engine:
        overrides.append(f"engine={args.engine}")
    cfg = load_rl_config(args.config, overrides)
    if cfg.engine != "trl":
        raise UserError(f"engine {cfg.engine!r} is not available; use --engine trl")
    from budgetthinker.rl.trl_grpo import train

    summary = train(cfg)
    for step in summary["steps"]:
        print(
            f"step {step['step']}: budget {step.get('budget')} · reward {step['reward']:.4f} · "
            f"wall {step['wall_s']:.1f} s",
            file=sys.stderr,
        )
    print(json.dumps({"output_dir": summary["output_dir"], "steps": summary["steps"]}))
    return 0
