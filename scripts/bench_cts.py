"""Benchmark CTS scoring: thinking tokens/s and tokens kept per ratio on synthetic traces.

    python scripts/bench_cts.py [--ref-model DIR|default] [--traces 16] [--checks 4] \
        [--ratios 0.9,0.8,0.7,0.6,0.5] [--iterative-size 1800] [--device auto]

All ratios come from one run (window 0 is shared; see budgetthinker.sft.cts). On a GPU
node, pass a real reference model (e.g. a Qwen2.5-7B-Instruct folder) to measure the cost that
the estimate in docs/stages/cts.md stands in for.
"""

from __future__ import annotations

import argparse
import json
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
    args = parser.parse_args()
    ref = default_base_dir() if args.ref_model == DEFAULT else Path(args.ref_model)
    ratios = tuple(float(r) for r in args.ratios.split(","))
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


if __name__ == "__main__":
    main()
