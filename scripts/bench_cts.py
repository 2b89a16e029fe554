"""Benchmark CTS scoring: thinking tokens/s and tokens kept per ratio on synthetic traces.

    python scripts/bench_cts.py [--ref-model DIR|default] [--traces 16] [--checks 4] \
        [--ratios 0.9,0.8,0.7,0.6,0.5] [--iterative-size 1800] [--device auto]

All ratios come from one run (window 0 is shared; see budgetthinker.sft.cts). On a GPU
node, pass a real reference model (e.g. a Qwen2.5-7B-Instruct folder) to measure the cost that
the estimate in docs/stages/cts.md stands in for.

    python scripts/bench_cts.py --window-reuse [--thinking 5000] [--ratios 0.6] [--reps 2]

times one trace of `--thinking` reference tokens compressed with windows continued from the
previous window's KV cache (the default) and with every window encoded from scratch, in
alternation, on the same scorer; it prints the medians, their ratio, each as a multiple of the
one-window cost (a trace of `--iterative-size` tokens), and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from budgetthinker.preparation.embedded_model import DEFAULT, default_base_dir
from budgetthinker.sft.cts import CTSOptions, compress_file
from budgetthinker.synthetic import make_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-model", default=DEFAULT, help="reference model folder or default")
    parser.add_argument("--traces", type=int, default=16, help="number of synthetic traces")
    parser.add_argument("--steps", type=int, default=3, help="operations per problem")
    parser.add_argument("--checks", type=int, default=4, help="re-check rounds (length dial)")
    parser.add_argument("--ratios", default="0.9,0.8,0.7,0.6,0.5")
    parser.add_argument("--scorer", default="conditional")
    parser.add_argument("--compat", default="none")
    parser.add_argument("--iterative-size", type=int, default=1800)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--window-reuse", action="store_true", help="reuse vs from scratch")
    parser.add_argument("--thinking", type=int, default=5000, help="--window-reuse: tokens")
    parser.add_argument("--reps", type=int, default=2, help="--window-reuse: timed pairs")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default); on a shared "
        "CPU one thread keeps spinning OpenMP threads out of the figures",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    ref = default_base_dir() if args.ref_model == DEFAULT else Path(args.ref_model)
    ratios = tuple(float(r) for r in args.ratios.split(","))
    if args.window_reuse:
        print(json.dumps(window_reuse(ref, ratios, args)))
        return
    opts = CTSOptions(
        ratios=ratios,
        scorer=args.scorer,
        compat=args.compat,
        iterative_size=args.iterative_size,
    )
    with tempfile.TemporaryDirectory() as tmp:
        traces = Path(tmp) / "traces.jsonl"
        rows = [make_trace(3, i, args.steps, args.checks) for i in range(args.traces)]
        traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
        start = time.perf_counter()
        report = compress_file(
            ref,
            traces,
            Path(tmp) / "cts.jsonl",
            opts,
            device=args.device,
            batch_tokens=args.batch_tokens,
            progress=False,
        )
        wall = time.perf_counter() - start
    run = report["this_run"]
    print(
        f"{run['traces_scored']} traces · {run['thinking_tokens_scored']} thinking tokens · "
        f"{len(ratios)} ratios · {run['forward_passes']} forward passes on {run['device']}"
    )
    print(
        f"scoring {run['thinking_tokens_per_second']} thinking tokens/s "
        f"({run['model_tokens_per_second']} tokens/s through the model) · "
        f"wall incl. model load {wall:.1f} s"
    )
    cpu = run["forward_cpu_seconds"]
    if run["device"] == "cpu" and cpu:
        print(
            f"forward passes: {run['forward_seconds']} s wall, {cpu} s CPU → "
            f"{run['thinking_tokens_scored'] / cpu:.1f} thinking tokens per CPU-second"
        )
    for ratio, s in report["ratios"].items():
        print(
            f"  ratio {ratio}: {s['thinking_tokens_scored']} → {s['thinking_tokens_after']} "
            f"tokens (effective {s['effective_ratio']}, mean keep fraction "
            f"{s['mean_keep_fraction']})"
        )


def long_trace(tokenizer, tokens: int) -> dict:
    """A synthetic trace whose thinking has at least `tokens` reference tokens (cut to it by
    `max_thinking`)."""
    checks = 1
    while True:
        trace = make_trace(3, 0, 6, checks)
        thinking = trace["response"].split("<think>\n")[1].split("\n</think>")[0]
        if len(tokenizer(thinking, add_special_tokens=False).input_ids) >= tokens:
            return trace
        checks *= 2


def window_reuse(ref: Path, ratios: tuple[float, ...], args) -> dict:
    """Seconds to compress one `--thinking`-token trace with and without window cache reuse."""
    from budgetthinker.sft.cts import Compressor, JobBuilder
    from budgetthinker.sft.cts_scoring import TokenScorer

    scorer = TokenScorer(ref, args.device, batch_tokens=args.batch_tokens)
    size = args.iterative_size
    trace = long_trace(scorer.tokenizer, args.thinking)
    arms = {"one_window": size, "reuse": args.thinking, "scratch": args.thinking}
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    tokens: dict[str, int] = {}
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}  # process CPU s in forward passes
    kept: dict[str, list] = {}
    for rep in range(args.reps + 1):  # round 0 warms up (one short trace), not counted
        order = list(arms.items()) if rep % 2 else list(reversed(arms.items()))
        for arm, length in order if rep else [("one_window", size)]:
            opts = CTSOptions(ratios=ratios, scorer=args.scorer, iterative_size=size,
                              max_thinking=length)  # fmt: skip
            job = JobBuilder(scorer.tokenizer, opts).build(trace, "t")
            compressor = Compressor(scorer, opts, reuse_cache=arm != "scratch")
            before, cpu_before = scorer.stats.tokens, scorer.stats.cpu_seconds
            start = time.perf_counter()
            compressor.compress([job])
            if rep:
                times[arm].append(time.perf_counter() - start)
                cpu[arm].append(scorer.stats.cpu_seconds - cpu_before)
            tokens[arm] = scorer.stats.tokens - before
            kept[arm] = [run.kept for run in job.runs]
    med = {arm: statistics.median(t) for arm, t in times.items()}
    result = {
        "device": str(scorer.device),
        "thinking_tokens": args.thinking,
        "iterative_size": size,
        "ratios": list(ratios),
        "reps": args.reps,
        "seconds": {arm: [round(t, 2) for t in ts] for arm, ts in times.items()},
        "forward_cpu_seconds": {arm: [round(t, 2) for t in ts] for arm, ts in cpu.items()},
        "cpu_reuse_over_scratch": round(
            statistics.median(cpu["reuse"]) / statistics.median(cpu["scratch"]), 3
        ),
        "model_tokens": tokens,
        "reuse_over_scratch": round(med["reuse"] / med["scratch"], 3),
        "scratch_over_one_window": round(med["scratch"] / med["one_window"], 3),
        "reuse_over_one_window": round(med["reuse"] / med["one_window"], 3),
        "same_kept_tokens": kept["reuse"] == kept["scratch"],
    }
    print(
        f"{args.thinking}-token thinking, windows of {size}, ratios {list(ratios)} on "
        f"{result['device']}: reuse {med['reuse']:.1f} s, scratch {med['scratch']:.1f} s → "
        f"{result['reuse_over_scratch']}× ({result['reuse_over_one_window']}× vs "
        f"{result['scratch_over_one_window']}× the one-window {med['one_window']:.1f} s)"
    )
    return result


if __name__ == "__main__":
    main()
