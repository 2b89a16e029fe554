"""Cost of the Model Runner V2 forcing step (`ForcingSlots.step` + `force_rows`, the body of
`BudgetForcingProcessorV2.apply`) per decode step, next to the V1 processor's and, on CUDA, next
to a decode step of a randomly initialised model of DeepSeek-R1-Distill-Qwen-1.5B's shape.

Runs on CPU or CUDA, with or without vLLM (the V1 numbers need vLLM; the V2 state machine needs
only torch), and from a source checkout that is not installed. Every step's forced tokens are
checked against `budgetthinker.forcing.Forcer` (`matches_forcer`); on CUDA the step is also run
under `torch.cuda.set_sync_debug_mode("error")`, which raises on any device→host sync
(`sync_free`), and the Triton masking kernel is compared with the torch path
(`kernel_matches_dense`). Prints one JSON line. Defaults are the figures the project reports
(batch 256, B = 6000, vocabulary 151936); small flags for a CPU smoke run:

    python scripts/bench_v2_processor.py
    python scripts/bench_v2_processor.py --batch 8 --vocab 2048 --steps 20 --model tiny
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from bench_forcing_gpu import QWEN2_1P5B, TINY_QWEN2, spec_for_1p5b  # noqa: E402


def importable_from_source() -> None:
    """Make `budgetthinker` importable from a checkout that is not installed: every module lives
    where its dotted name says, so the repository root on `sys.path` is enough."""
    try:
        import budgetthinker.patches.forcing_slots  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO))


class Clock:
    """Wall time per call; on CUDA, events around the call so queued work is included."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.samples: list[float] = []

    def time(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            self.samples.append(start.elapsed_time(end) * 1e3)
        else:
            t0 = time.perf_counter()
            out = fn()
            self.samples.append((time.perf_counter() - t0) * 1e6)
        return out

    def summary(self, skip: int = 3) -> dict:
        xs = self.samples[skip:] or self.samples
        return {"mean": round(statistics.fmean(xs), 1), "p50": round(statistics.median(xs), 1),
                "max": round(max(xs), 1)}  # fmt: skip


def spec_for_vocab(vocab: int):
    """The 1.5B model's 8ratio spec, moved below `vocab` when a smoke run uses a small one."""
    import dataclasses

    spec = spec_for_1p5b()
    if vocab > max(spec.token_ids) + 1:
        return spec
    ids = tuple(range(vocab - 10, vocab - 10 + len(spec.token_ids)))
    end = vocab - 2
    return dataclasses.replace(
        spec, token_ids=ids, think_start_id=vocab - 1, think_end_id=end,
        suffix_ids={"eval": (198, end, 271), "rl": (198, end, 198)},
    )  # fmt: skip


def workload(spec, args):
    """Per row: the output already generated (staggered through the schedule) and the proposals
    of the timed steps. Ordinary tokens only; the forced ones come from the machine."""
    rng = random.Random(0)
    ordinary = spec.token_ids[0] - 1000
    done = [rng.randrange(0, args.budget) for _ in range(args.batch)]
    history = [[rng.randrange(10, ordinary) for _ in range(n)] for n in done]
    steps = range(args.steps)
    proposals = [[rng.randrange(10, ordinary) for _ in range(args.batch)] for _ in steps]
    return history, proposals


def bench_v2(spec, plan, device, args, history, proposals) -> dict:
    """The V2 step on the workload; on CUDA both the fused Triton kernel and the torch ops, each
    with its own state, compared with each other and with `Forcer` at every step."""
    from budgetthinker.forcing import FREE, Forcer
    from budgetthinker.patches.forcing_slots import ForcingSlots, step_and_force

    batch, prompt_len = args.batch, 16
    width = prompt_len + max(len(h) for h in history) + args.steps + 1
    all_ids = torch.zeros(batch, width, dtype=torch.int32, device=device)
    total_len = torch.zeros(batch, dtype=torch.int32, device=device)
    for r, h in enumerate(history):
        all_ids[r, prompt_len : prompt_len + len(h)] = torch.tensor(h, dtype=torch.int32)
        total_len[r] = prompt_len + len(h)
    paths = {"v2": True, "v2_torch": False} if device.type == "cuda" else {"v2": False}
    machines, logits, clocks = {}, {}, {}
    for name in paths:
        machines[name] = ForcingSlots(spec, batch, device)
        for r, h in enumerate(history):
            machines[name].admit(r, plan, prompt_len, len(h))
        machines[name].flush(all_ids)  # replays the history on the device (resume path)
        logits[name] = torch.zeros(batch, args.vocab, device=device)
        clocks[name] = Clock(device)
    forcers = [Forcer(plan) for _ in range(batch)]
    for f, h in zip(forcers, history, strict=True):
        for t in h:
            f.feed(t)
    slots = torch.arange(batch, device=device, dtype=torch.int32)
    matches, agree, forced_total, sync_free = True, True, 0, {}
    for i in range(args.steps):
        if device.type == "cuda" and i == 5:
            sync_free = {
                name: no_sync(machines[name], logits[name], slots, total_len, all_ids, kernel,
                              (plan, prompt_len, int(total_len[0]) - prompt_len))
                for name, kernel in paths.items()
            }  # fmt: skip
        results = {}
        for name, kernel in paths.items():
            forced = clocks[name].time(
                lambda n=name, k=kernel: step_and_force(
                    machines[n], logits[n], slots, total_len, all_ids, use_kernel=k
                )
            )
            results[name] = forced.tolist()  # outside the timed region
        host = results["v2"]
        agree &= all(r == host for r in results.values())
        agree &= all(torch.equal(m.state, machines["v2"].state) for m in machines.values())
        matches &= host == [f.forced for f in forcers]
        forced_total += sum(t != FREE for t in host)
        tokens = [t if t != FREE else p for t, p in zip(host, proposals[i], strict=True)]
        for f, t in zip(forcers, tokens, strict=True):
            f.feed(t)
        t = torch.tensor(tokens, dtype=torch.int32, device=device)  # input_batch.post_update
        all_ids[slots.long(), total_len.long()] = t
        total_len.add_(1)
    out = {f"{name}_apply_us": clock.summary() for name, clock in clocks.items()}
    out.update(matches_forcer=matches, forced_per_step=round(forced_total / args.steps, 3))
    if device.type == "cuda":
        out.update(kernel_matches_torch=agree, sync_free=sync_free,
                   mask_kernel_matches_dense=mask_check(logits["v2"]))  # fmt: skip
    return out


def no_sync(machine, logits, slots, total_len, all_ids, kernel: bool, resume) -> bool | str:
    """Under `set_sync_debug_mode("error")` (raises on a device→host sync): one admission of a
    resumed request (staged write + replay of its output) and one step. The machine's state is
    restored afterwards."""
    from budgetthinker.patches.forcing_slots import step_and_force

    plan, prompt_len, done = resume
    state = machine.state.clone()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        machine.admit(0, plan, prompt_len, done)
        machine.flush(all_ids)
        step_and_force(machine, logits.clone(), slots, total_len, all_ids, use_kernel=kernel)
        return True
    except RuntimeError as e:
        return str(e).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        machine.state.copy_(state)


def mask_check(logits) -> bool:
    """The masking-only Triton kernel against the torch masked fill, on random logits."""
    from budgetthinker.patches.forcing_slots import force_rows, force_rows_dense

    forced = torch.full((logits.shape[0],), -1, device=logits.device, dtype=torch.int64)
    forced[:: max(1, logits.shape[0] // 5)] = 3
    a = torch.randn_like(logits)
    b = a.clone()
    force_rows(a, forced)
    force_rows_dense(b, forced)
    return bool(torch.equal(a, b))


def bench_v1(spec, plan, device, args, history, proposals) -> dict | None:
    """The V1 processor (`update_state` + `apply`) on the same workload, where vLLM imports."""
    try:
        from vllm import SamplingParams
        from vllm.v1.sample.logits_processor import BatchUpdate

        from budgetthinker.patches.vllm_logits_processor import BudgetForcingProcessor
    except Exception as e:  # not installed, or no usable build on this machine
        return {"v1_skipped": f"{type(e).__name__}: {str(e)[:120]}"}
    from budgetthinker.forcing import FREE

    with tempfile.TemporaryDirectory() as model_dir:
        spec.save(model_dir)
        config = SimpleNamespace(model_config=SimpleNamespace(model=model_dir, tokenizer=model_dir))
        proc = BudgetForcingProcessor(config, device, False)
    outputs = [list(h) for h in history]
    params = SamplingParams(max_tokens=1 << 20, extra_args={"budget": plan.budget})
    added = [(r, params, [1] * 16, outputs[r]) for r in range(args.batch)]
    proc.update_state(BatchUpdate(batch_size=args.batch, removed=[], added=added, moved=[]))
    logits = torch.zeros(args.batch, args.vocab, device=device)
    proc.apply(logits)  # catch-up over the history, not timed
    clock = Clock(device)

    def apply():
        proc.update_state(None)
        proc.apply(logits)

    for i in range(args.steps):
        for r in range(args.batch):
            f = proc.rows[r][0].forced
            outputs[r].append(f if f != FREE else proposals[i][r])
        clock.time(apply)
    return {"v1_apply_us": clock.summary()}


def bench_model(device, args) -> dict:
    """One decode step (batch `args.batch`, ~`args.kv` cached tokens) of a random-weight Qwen2."""
    from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

    shape = QWEN2_1P5B if args.model == "full" else TINY_QWEN2
    config = Qwen2Config(**shape)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    cache = DynamicCache()
    chunk = max(1, min(args.kv, 65536 // args.batch))
    with torch.inference_mode():
        for start in range(0, args.kv, chunk):
            ids = torch.randint(0, 150000, (args.batch, min(chunk, args.kv - start)), device=device)
            model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        clock = Clock(device)
        ids = torch.randint(0, 150000, (args.batch, 1), device=device)
        for _ in range(args.model_steps):
            clock.time(
                lambda: model(input_ids=ids, past_key_values=cache, use_cache=True,
                              logits_to_keep=1)
            )  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    kv_bytes = 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * (
        shape["hidden_size"] // shape["num_attention_heads"]) * 2 * args.batch * args.kv
    floor_ms = (params * 2 + kv_bytes) / 4.8e12 * 1e3  # H200 HBM3e bandwidth bound
    return {"decode_step_us": clock.summary(skip=2), "model_params": params,
            "decode_floor_us_h200": round(floor_ms * 1e3, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--budget", type=int, default=6000)
    parser.add_argument("--vocab", type=int, default=QWEN2_1P5B["vocab_size"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--kv", type=int, default=1024, help="cached tokens per sequence")
    parser.add_argument("--model-steps", type=int, default=12)
    parser.add_argument(
        "--model", choices=("auto", "full", "tiny", "off"), default="auto",
        help="auto: the 1.5B shape on CUDA, none on CPU",
    )  # fmt: skip
    parser.add_argument("--no-v1", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.model == "auto":
        args.model = "full" if device.type == "cuda" else "off"
    importable_from_source()
    from budgetthinker.forcing import make_plan

    spec = spec_for_vocab(args.vocab)
    plan = make_plan(spec, args.budget, two_stage=True)
    history, proposals = workload(spec, args)
    t0 = time.perf_counter()
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch": args.batch, "budget": args.budget,
              "vocab": args.vocab, "steps": args.steps}  # fmt: skip
    result.update(bench_v2(spec, plan, device, args, history, proposals))
    if not args.no_v1:
        result.update(bench_v1(spec, plan, device, args, history, proposals) or {})
    if args.model != "off":
        result.update(bench_model(device, args))
        step = result["decode_step_us"]["p50"]
        result["apply_over_decode_step"] = round(result["v2_apply_us"]["p50"] / step, 5)
        if "v2_torch_apply_us" in result:
            torch_ratio = result["v2_torch_apply_us"]["p50"] / step
            result["torch_ops_over_decode_step"] = round(torch_ratio, 5)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    ok = result["matches_forcer"] and result.get("kernel_matches_torch", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
