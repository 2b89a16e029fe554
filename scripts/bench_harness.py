#!/usr/bin/env python
"""What the evaluation harness costs on top of the engine: `budgetthinker eval`'s path
(`run_eval` on the vLLM backend: prompts, method episodes, generation, grading, the results file,
the report) against the raw engine call (`LLM.generate`) on exactly the same token ids and
sampling parameters, on one engine in one run.

Each repetition runs a fresh experiment (the default config's synthetic problems, `--methods`,
one budget, `--n` problems) through `run_eval(cfg, backend=...)`, recording every request the
backend receives; then the same prompts and `SamplingParams` go to `LLM.generate` directly. The
outputs must be the same tokens (greedy). `harness_over_raw` = median harness wall ÷ median raw
wall; the harness time is split into generation (inside `backend.run`), the report written at
the end, and the rest (grading that generation did not hide, prompts, records, files).

The machine may be shared: the load average before and after is printed; figures measured under
load must be said to be so. Progress and engine logs go to stderr; stdout gets a summary line
and, last, one JSON object:

    python scripts/bench_harness.py [--n 16] [--budget 64] [--reps 2] [--chunk-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16, help="problems per method")
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--methods", default="withoutremaining,control", help="comma-separated")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=8, help="eval's chunk_size")
    p.add_argument("--workers", type=int, default=2, help="grading workers")
    p.add_argument("--max-num-seqs", type=int, default=16)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    from budgetthinker.config import load_config
    from budgetthinker.evaluation import comparison
    from budgetthinker.evaluation.config import EvalConfig
    from budgetthinker.evaluation.runner import run_eval
    from budgetthinker.patches.vllm_backend import VLLMBackend
    from budgetthinker.preparation.models import default_prepared_dir

    load_before = os.getloadavg()[0]
    backend = VLLMBackend(
        str(default_prepared_dir("8ratio")), max_model_len=2048, max_num_seqs=args.max_num_seqs
    )
    calls: list[tuple[list, dict, list]] = []  # (requests, sampling, results) per backend.run
    gen_seconds = [0.0]
    run = backend.run

    def recording_run(requests, **sampling):
        t0 = time.perf_counter()
        results = run(requests, **sampling)
        gen_seconds[0] += time.perf_counter() - t0
        calls.append((list(requests), sampling, results))
        return results

    backend.run = recording_run  # instance attribute: only this bench's backend records
    report_seconds = [0.0]
    write_report = comparison.write_report

    def timed_report(*a, **k):
        t0 = time.perf_counter()
        try:
            return write_report(*a, **k)
        finally:
            report_seconds[0] += time.perf_counter() - t0

    comparison.write_report = timed_report
    methods = "[" + ",".join(args.methods.split(",")) + "]"
    harness, raw, gen, report, same = [], [], [], [], True
    with tempfile.TemporaryDirectory() as out:
        for rep in range(args.reps + 1):  # rep 0 warms up (engine, grader imports) untimed
            cfg = load_config(
                EvalConfig,
                REPO / "configs/eval/default.yaml",
                [
                    "backend=vllm", f"methods={methods}", f"budgets=[{args.budget}]",
                    f"data.synthetic.n={args.n}", f"data.synthetic.seed={rep}",
                    f"output_dir={out}", f"experiment=rep{rep}", f"chunk_size={args.chunk_size}",
                    f"grading.workers={args.workers}",
                ],
            )  # fmt: skip
            calls.clear()
            gen_seconds[0] = report_seconds[0] = 0.0
            t0 = time.perf_counter()
            run_eval(cfg, backend=backend)
            t_harness = time.perf_counter() - t0
            inputs = [
                (backend.engine_inputs(reqs, **{k: v for k, v in s.items() if k != "batch_size"}),
                 results)
                for reqs, s, results in calls
            ]  # fmt: skip
            t0 = time.perf_counter()
            outputs = [backend.llm.generate(p, sp, use_tqdm=False) for (p, sp), _ in inputs]
            t_raw = time.perf_counter() - t0
            for ((_, _), results), outs in zip(inputs, outputs, strict=True):
                same &= [r.token_ids for r in results] == [
                    list(o.outputs[0].token_ids) for o in outs
                ]
            print(
                f"[bench_harness] rep {rep}: harness {t_harness:.2f} s (generation "
                f"{gen_seconds[0]:.2f}, report {report_seconds[0]:.2f}), raw {t_raw:.2f} s, "
                f"{len(calls)} engine calls",
                file=sys.stderr,
                flush=True,
            )
            if rep:
                harness.append(t_harness)
                raw.append(t_raw)
                gen.append(gen_seconds[0])
                report.append(report_seconds[0])
    backend.close()
    med = statistics.median
    result = {
        "harness_over_raw": round(med(harness) / med(raw), 4),
        "harness_s": [round(t, 2) for t in harness],
        "raw_s": [round(t, 2) for t in raw],
        "generation_in_harness_s": [round(t, 2) for t in gen],
        "report_s": [round(t, 2) for t in report],
        "harness_minus_report_over_raw": round(
            med([h - r for h, r in zip(harness, report, strict=True)]) / med(raw), 4
        ),
        "same_tokens": same,
        "requests": args.n * len(args.methods.split(",")),
        "budget": args.budget,
        "methods": args.methods.split(","),
        "chunk_size": args.chunk_size,
        "reps": args.reps,
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }
    print(
        f"harness {med(harness):.2f} s vs raw LLM.generate {med(raw):.2f} s → "
        f"{result['harness_over_raw']}× (load average {result['load_average_before_after']})"
    )
    print(json.dumps(result))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
