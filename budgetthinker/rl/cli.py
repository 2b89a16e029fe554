"""`budgetthinker rl`: GRPO with the budget reward and curriculum.

Two engines, chosen by the recipe: a verl recipe (Hydra, on verl's `ppo_trainer`: multi-GPU,
multi-node with Ray) or a TRL recipe (budgetthinker's own YAML: one machine, CPU included).
"""

from __future__ import annotations

import argparse
import json
import sys

from budgetthinker.errors import UserError


def add_rl_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="RL recipe: a YAML file or a recipe name in configs/rl/ (8ratio_v1: verl, "
        "cpu_smoke: TRL); default: the recipe named by the environment variable `steady`",
    )
    parser.add_argument(
        "--engine",
        choices=("trl", "verl"),
        default=None,
        help="verl: multi-GPU GRPO (verl recipes); trl: single-machine GRPO (TRL recipes); "
        "default: the recipe's engine",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe, model and data and print what would run; write nothing, "
        "train nothing (verl: also verl's own config checks and the verl command)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override recipe keys, e.g. trainer.max_steps=2 rollout.n=4 (TRL) or "
        "actor_rollout_ref.model.path=… trainer.n_gpus_per_node=8 (verl, Hydra syntax)",
    )


def run_rl(args: argparse.Namespace) -> int:
    from budgetthinker.rl.config import load_rl_config, resolve_recipe
    from budgetthinker.rl.verl_launch import is_verl_recipe

    recipe = resolve_recipe(args.config)
    if is_verl_recipe(recipe):
        if args.engine == "trl":
            raise UserError(
                f"{recipe} is a verl recipe; run it with bash rl/8ratio_v1.sh (or --engine verl), "
                "or pick a TRL recipe such as cpu_smoke"
            )
        from budgetthinker.rl.verl_launch import run

        return run(recipe, list(args.overrides), dry_run=args.dry_run)
    if args.engine == "verl":
        raise UserError(
            f"{recipe} is a TRL recipe; verl recipes compose on verl's ppo_trainer "
            "(e.g. configs/rl/8ratio_v1.yaml)"
        )
    overrides = list(args.overrides)
    if args.engine:
        overrides.append(f"engine={args.engine}")
    cfg = load_rl_config(str(recipe), overrides)
    if cfg.engine != "trl":
        raise UserError(f"engine {cfg.engine!r} is not available; use --engine trl")
    if args.dry_run:
        from budgetthinker.rl.trl_grpo import check

        model_dir, _spec, train_rows, val_rows = check(cfg)
        t = cfg.trainer
        print(
            f"dry run: would train {model_dir} with TRL GRPO for {t.max_steps} steps on "
            f"{len(train_rows)} training and {len(val_rows)} validation problems "
            f"(rollout.n {cfg.rollout.n}, budgets {cfg.curriculum.budgets}) → {cfg.run_dir}; "
            "nothing written"
        )
        return 0
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
