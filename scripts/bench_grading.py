#!/usr/bin/env python
"""Check the grader on the six local benchmarks' gold answers, and time it.

For every row of each benchmark, `gold_answer` gives the gold answer g, and three gradings run
through `grade_many` (worker processes, the same path evaluation uses):

(a) self: response `\\boxed{g}` against g, as the evaluation grades it (the string fast path
    accepts these at once) → must all be correct; the wall time of MATH-500 is the headline
    (target <= 30 s on 2 cores);
(b) self, math-verify only (`fast_path=False`): the same pairs with the string match switched
    off, so every gold must parse and verify against itself → failures show answers math-verify
    cannot handle; and (in-process) how many golds it parses into an expression at all — the
    others fall back to a string comparison;
(c) perturbed: a wrong answer per row — a numeric gold plus 1, else the last digit of the
    expression changed, else another row's gold that differs as a string → agreement = share
    judged wrong (with the string fast path off, as any non-identical answer would be);
(d) unboxed: the response "... so the final answer is $g$." (no box, as small models answer)
    against g → how many the extraction chain finds and grades correct, and by which rule.

Progress bars go to stderr; stdout gets a table, the failures, and as its last line one JSON
object. Example:

    python scripts/bench_grading.py                          # all six, ~2 min on 2 cores
    python scripts/bench_grading.py --benchmarks math500 --workers 4
    python scripts/bench_grading.py --extraction qwen         # the original's last-boxed rule
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from decimal import Decimal, InvalidOperation
from pathlib import Path

from budgetthinker.evaluation.grading import BENCHMARKS, explain, gold_answer, grade_many

REPO = Path(__file__).resolve().parent.parent


def load_golds(data_dir: Path, name: str) -> list[str]:
    path = data_dir / name / "test.jsonl"
    with path.open(encoding="utf-8") as f:
        return [gold_answer(json.loads(line), name) for line in f if line.strip()]


def perturb(golds: list[str], i: int) -> tuple[str, str]:
    """A wrong answer for row i, and how it was made: 'plus1' (a number plus 1), 'digit' (the
    last digit of an expression changed, e.g. \\frac{3}{56} → \\frac{3}{57}) or 'swap'."""
    gold = golds[i].strip()
    try:
        number = Decimal(gold.replace(",", ""))
    except InvalidOperation:
        number = None
    if number is not None and number.is_finite():
        return str(number + 1), "plus1"
    digits = [k for k, c in enumerate(gold) if c.isdigit()]
    if digits:
        k = digits[-1]
        return gold[:k] + str((int(gold[k]) + 1) % 10) + gold[k + 1 :], "digit"
    for k in range(1, len(golds)):
        other = golds[(i + k) % len(golds)]
        if "".join(other.split()) != "".join(gold.split()):
            return other, "swap"
    return gold + "+1", "plus1"


def timed(items, **kwargs):
    start = time.perf_counter()
    results = grade_many(items, **kwargs)
    return results, time.perf_counter() - start


def bench(name: str, golds: list[str], args: argparse.Namespace) -> dict:
    opts = {
        "workers": args.workers,
        "timeout": args.timeout,
        "progress": not args.quiet,
        "extraction": args.extraction,
    }
    self_items = [("\\boxed{" + g + "}", g, name) for g in golds]
    self_res, self_s = timed(self_items, **opts)
    mv_res, mv_s = timed(self_items, fast_path=False, **opts)
    wrong = [perturb(golds, i) for i in range(len(golds))]
    bad_items = [("\\boxed{" + w + "}", g, name) for (w, _), g in zip(wrong, golds, strict=True)]
    bad_res, bad_s = timed(bad_items, fast_path=False, **opts)
    accepted = [i for i, r in enumerate(bad_res) if r.correct]
    unboxed_items = [(f"Let me see... so the final answer is ${g}$.", g, name) for g in golds]
    unboxed_res, unboxed_s = timed(unboxed_items, **opts)
    # In-process and serial: which golds math-verify turns into an expression at all (the rest
    # are compared as strings, so (b) passes them trivially).
    unparsed = [
        g
        for g in golds
        if not explain(g, g, args.timeout, fast_path=False).get("gold_is_math", True)
    ]
    return {
        "benchmark": name,
        "n": len(golds),
        "self_correct": sum(r.correct for r in self_res),
        "self_wall_s": round(self_s, 2),
        "self_failures": [golds[i] for i, r in enumerate(self_res) if not r.correct],
        "mv_self_correct": sum(r.correct for r in mv_res),
        "mv_self_wall_s": round(mv_s, 2),
        "mv_self_timeouts": sum(r.timed_out for r in mv_res),
        "mv_self_failures": [golds[i] for i, r in enumerate(mv_res) if not r.correct],
        "parsed_as_math": len(golds) - len(unparsed),
        "unparsed": unparsed,
        "perturbed_plus1": sum(how == "plus1" for _, how in wrong),
        "perturbed_digit": sum(how == "digit" for _, how in wrong),
        "perturbed_swap": sum(how == "swap" for _, how in wrong),
        "perturbed_judged_wrong": len(golds) - len(accepted),
        "perturbed_agreement": round((len(golds) - len(accepted)) / max(len(golds), 1), 4),
        "perturbed_wall_s": round(bad_s, 2),
        "perturbed_accepted": [(wrong[i][0], golds[i]) for i in accepted],
        "unboxed_correct": sum(r.correct for r in unboxed_res),
        "unboxed_wall_s": round(unboxed_s, 2),
        "unboxed_rules": dict(Counter(str(r.rule) for r in unboxed_res)),
        "unboxed_failures": [golds[i] for i, r in enumerate(unboxed_res) if not r.correct],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO.parent / "shared" / "data" / "benchmarks",
        help="folder with <benchmark>/test.jsonl (default: ../shared/data/benchmarks)",
    )
    parser.add_argument(
        "--benchmarks", nargs="+", default=list(BENCHMARKS), help="which benchmarks (default: all)"
    )
    parser.add_argument("--workers", type=int, default=2, help="grading processes (default 2)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per check (default 5)")
    parser.add_argument(
        "--extraction",
        default="default",
        choices=["default", "qwen", "seed"],
        help="answer extraction (default: boxed, then math-verify's; qwen/seed: the original's)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    rows = []
    for name in args.benchmarks:
        path = args.data_dir / name / "test.jsonl"
        if not path.is_file():
            print(f"bench_grading: no {path}; pass --data-dir", file=sys.stderr)
            return 2
        rows.append(bench(name, load_golds(args.data_dir, name), args))

    header = (
        f"{'benchmark':<14}{'n':>6}{'self ok':>9}{'self s':>8}{'mv-only ok':>12}{'mv s':>8}"
        f"{'timeouts':>10}{'as math':>9}{'wrong judged wrong':>20}{'agreement':>11}"
        f"{'unboxed ok':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['benchmark']:<14}{r['n']:>6}{r['self_correct']:>9}{r['self_wall_s']:>8.1f}"
            f"{r['mv_self_correct']:>12}{r['mv_self_wall_s']:>8.1f}{r['mv_self_timeouts']:>10}{r['parsed_as_math']:>9}"
            f"{r['perturbed_judged_wrong']:>20}{r['perturbed_agreement']:>11.2%}"
            f"{r['unboxed_correct']:>12}"
        )
    for r in rows:
        for key, label in (
            ("self_failures", "self-grading failures"),
            ("mv_self_failures", "math-verify-only self failures"),
            ("unparsed", "golds math-verify does not parse into an expression"),
            ("perturbed_accepted", "perturbed answers accepted (wrong, gold)"),
            ("unboxed_failures", "golds not found or not correct when stated unboxed"),
        ):
            if r[key]:
                print(f"\n{r['benchmark']}: {label} ({len(r[key])}):")
                for item in r[key][:15]:
                    print(f"  {item!r}")
                if len(r[key]) > 15:
                    print(f"  … {len(r[key]) - 15} more")
    summary = {
        "extraction": args.extraction,
        "workers": args.workers,
        "timeout_s": args.timeout,
        "benchmarks": {
            r["benchmark"]: {
                k: v for k, v in r.items() if k not in ("benchmark",) and not isinstance(v, list)
            }
            for r in rows
        },
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
