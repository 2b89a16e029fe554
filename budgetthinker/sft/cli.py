"""Command-line parts of the SFT stage: `sft-traces`, `sft-data` and `sft` (registered in
`budgetthinker.cli.COMMANDS`)."""

from __future__ import annotations

import argparse
import json

from budgetthinker.errors import UserError
from budgetthinker.outputs import atomic_write, user_path


def add_traces_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, type=user_path, help="JSONL file to write the traces to"
    )
    parser.add_argument("--n", type=int, default=256, help="number of traces (default 256)")
    parser.add_argument(
        "--seed", type=int, default=1, help="problem set (default 1; evaluation uses 0)"
    )
    parser.add_argument("--steps", type=int, default=3, help="operations per problem")
    parser.add_argument(
        "--checks",
        default="0:4",
        help="re-check rounds appended to the thinking, N or LOW:HIGH drawn per trace "
        "(the length dial: ~15 tokens per step and round); default 0:4",
    )


def run_traces(args: argparse.Namespace) -> int:
    from budgetthinker.synthetic import synthetic_traces

    try:
        low, _, high = args.checks.partition(":")
        checks = (int(low), int(high or low))
    except ValueError:
        raise UserError(f"--checks must be N or LOW:HIGH, got {args.checks!r}") from None
    if args.n <= 0 or checks[0] < 0 or checks[1] < checks[0] or args.steps < 1:
        raise UserError("--n and --steps must be positive and --checks a range LOW <= HIGH")
    out = user_path(args.out)
    with atomic_write(out) as f:  # whole or not at all; a killed run's temp file is cleaned up
        for trace in synthetic_traces(args.n, args.seed, args.steps, checks):
            f.write(json.dumps(trace, ensure_ascii=False) + "\n")
    print(f"wrote {args.n} synthetic traces to {out}")
    return 0


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="prepared model folder (its tokenizer and control-token spec), or 'default'",
    )
    parser.add_argument(
        "--traces",
        required=True,
        help="reasoning traces (JSONL; fields in docs/stages/sft.md), or 'synthetic' for 256 "
        "synthetic traces",
    )
    parser.add_argument("--out", required=True, type=user_path, help="dataset_dir to write to")
    parser.add_argument("--budget-rule", choices=("v1", "v2"), default="v2")
    parser.add_argument(
        "--max-thinking", type=int, default=10000, help="drop longer thinking (tokens)"
    )
    parser.add_argument("--format", choices=("alpaca", "sharegpt"), default="alpaca")
    parser.add_argument(
        "--name", default="8ratio_SFT_below10000", help="dataset name in dataset_info.json"
    )
    parser.add_argument("--batch-size", type=int, default=512, help="rows per tokenizer call")
    parser.add_argument(
        "--placement",
        choices=("generated", "thinking"),
        default="generated",
        help="count control-token positions over the tokens the model generates, <think>\\n "
        "included when the chat template leaves it to the model, as forcing does (default); "
        "'thinking' counts from the first thinking token, as the original did",
    )
    parser.add_argument(
        "--control",
        choices=("tokens", "none"),
        default="tokens",
        help="tokens: control tokens and budget tip (default); none: plain <think>…</think> "
        "+ answer, no tip (the CTS format; the model needs no control-token spec)",
    )
    parser.add_argument(
        "--tip",
        default=None,
        help="budget tip in the prompt: control (default with tokens), none (default with "
        "--control none), or a plain tip such as withoutremaining (budget by --budget-rule, "
        "no control tokens: the ablation of the CPU evidence experiment)",
    )


def run_data(args: argparse.Namespace) -> int:
    from budgetthinker.preparation.models import resolve_model
    from budgetthinker.sft.data import build_dataset, read_jsonl
    from budgetthinker.synthetic import synthetic_traces

    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    model = resolve_model(args.model, prepared=True)
    traces = (
        synthetic_traces(256, 1, 3, (0, 4))
        if args.traces == "synthetic"
        else read_jsonl(args.traces)
    )
    stats = build_dataset(
        model,
        traces,
        args.out,
        args.name,
        args.budget_rule,
        args.max_thinking,
        args.format,
        args.batch_size,
        args.placement,
        args.control,
        args.tip,
    )
    print(stats.summary())
    out = user_path(args.out) / args.name
    print(f"wrote {out}.jsonl (+ dataset_info.json, {args.name}.stats.json)")
    return 0


def add_sft_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default="configs/sft/cpu_smoke.yaml",
        help="SFT recipe: a LLaMA-Factory YAML with a budgetthinker: section "
        "(default: configs/sft/cpu_smoke.yaml)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override LLaMA-Factory keys (learning_rate=1e-5) or ours "
        "(budgetthinker.special_token_loss=T10)",
    )


def run_sft(args: argparse.Namespace) -> int:
    from budgetthinker.sft.train import run_sft as run

    outputs = run(args.config, args.overrides)
    print("SFT done: " + ", ".join(str(p) for p in outputs))
    return 0
