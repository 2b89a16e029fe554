"""Benchmark the SFT data builder: rows/s on ~2k-token synthetic traces (tokenize + insert).

python scripts/bench_sft_data.py [--model DIR] [--rows 2000] [--checks 36]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from budgetthinker.preparation.models import default_prepared_dir
from budgetthinker.sft.data import build_dataset
from budgetthinker.synthetic import make_trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="prepared model (default: embedded 8ratio)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--checks", type=int, default=36, help="re-check rounds (length dial)")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    model = args.model or default_prepared_dir()
    traces = [make_trace(7, i, 5, args.checks) for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        stats = build_dataset(model, traces, out, "bench", "v2", 10000, "alpaca", args.batch_size)
        wall = time.perf_counter() - start
    d = stats.to_json()
    print(
        f"{d['kept']} rows · mean thinking {d['mean_thinking_tokens']} tokens · "
        f"builder {d['rows_per_second']} rows/s "
        f"({d['rows_per_second'] * d['mean_thinking_tokens'] / 1e6:.2f} M tokens/s) · "
        f"wall incl. tokenizer load and writing {wall:.1f} s"
    )


if __name__ == "__main__":
    main()
