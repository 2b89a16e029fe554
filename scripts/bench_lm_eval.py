"""lm-eval with the `budgetthinker` model vs our own harness on the same problems: identical
samples (count) and the wall time of each command, start-up included (the plugin's overhead).

    python scripts/bench_lm_eval.py [--problems 8] [--method control] [--budget 64] [--backend hf]

Both run as a user runs them, one subprocess each: `budgetthinker eval` (recipe keys) and
`budgetthinker lm-eval --model budgetthinker` (a task YAML over the same problems as JSONL),
greedy, the same batch size. A sample is identical when lm-eval's response is our output as the
model returns it (the answer cut at the end-of-sequence text) and the output, thinking and
control-token counts and rounds agree. Prints the figures; asserts nothing (CPU timings vary
with load: say so when quoting them).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def command(*args: str) -> float:
    """Run `budgetthinker ARGS…`; its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **OFFLINE}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "budgetthinker.cli", *args], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"budgetthinker {args[0]} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def same(sample: dict, record: dict) -> bool:
    response = sample["resps"][0][0]
    return (
        record["text"].startswith(response)
        and sample["output_tokens"] == record["output_tokens"]
        and sample["thinking_tokens"] == record["thinking_tokens"]
        and len(sample["control_positions"]) == record["control_tokens"]
        and sample["thinking_rounds"] == record["rounds"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--method", default="control")
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from budgetthinker.evaluation.lm_eval_metrics import task_yaml
    from budgetthinker.preparation.models import default_prepared_dir
    from budgetthinker.synthetic import synthetic_problems

    model = str(default_prepared_dir("8ratio"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_lm_eval_"))
    (tmp / "bench").mkdir()
    rows = [{"question": p.question, "answer": p.answer}
            for p in synthetic_problems(args.problems, 0, 3)]  # fmt: skip
    (tmp / "bench" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "tasks").mkdir()
    (tmp / "tasks" / "bt_bench.yaml").write_text(task_yaml("bt_bench", tmp / "bench/test.jsonl"))

    ours = command(
        "eval", f"model={model}", f"backend={args.backend}", f"methods=[{args.method}]",
        f"budgets=[{args.budget}]", f"batch_size={args.batch_size}", f"output_dir={tmp}",
        "experiment=ours", "data.benchmarks=[bench]", f"data.data_dir={tmp}",
        "data.question_field=question", "data.answer_field=answer", "data.boxed_prefix=[]",
        "grading.workers=0",
    )  # fmt: skip
    theirs = command(
        "lm-eval", "--model", "budgetthinker",
        "--model_args", f"pretrained={model},backend={args.backend}",
        "--tasks", "bt_bench", "--include_path", str(tmp / "tasks"),
        "--gen_kwargs", f"method={args.method},budget={args.budget}",
        "--batch_size", str(args.batch_size), "--log_samples", "--output_path", str(tmp / "lm"),
    )  # fmt: skip
    saved = (tmp / "ours" / "samples.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in saved]
    records.sort(key=lambda r: int(r["problem_id"]))
    (samples,) = glob.glob(f"{tmp}/lm/*/samples_bt_bench_*.jsonl")
    lines = Path(samples).read_text().splitlines()
    logged = sorted((json.loads(line) for line in lines), key=lambda s: s["doc_id"])
    identical = sum(same(s, r) for s, r in zip(logged, records, strict=True))
    print(f"{args.problems} problems, {args.method} at B={args.budget}, {args.backend}, "
          f"batch {args.batch_size}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"identical samples: {identical}/{len(records)}")
    print(f"budgetthinker eval:    {ours:6.1f} s")
    print(f"budgetthinker lm-eval: {theirs:6.1f} s  ({theirs / ours:.2f}× eval's wall time)")


if __name__ == "__main__":
    main()
