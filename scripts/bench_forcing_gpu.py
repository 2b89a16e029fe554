"""Forcing overhead on a GPU with the real 1.5B architecture (randomly initialised).

BudgetThinker's base model is DeepSeek-R1-Distill-Qwen-1.5B. Its weights are not needed to
measure what forcing costs: a Qwen2 model of the same shape with random weights does the same
work per step. This script measures, side by side in one run on CUDA (bf16), per batch size:

* transformers `generate` without forcing, with `BudgetForcingLogitsProcessor` on its
  device-side path (`ForcingSlots`, what the rule picks on CUDA) and on its Python path (same
  batch, same number of new tokens, interleaved repetitions, medians) → `device_side_ratio`
  (target ≤ 1.02) and `python_ratio`; both forced arms must produce the same tokens;
* the processor alone per decode step, at output length ~64 vs ~8192 (O(1) check).

The last line of stdout is one JSON object. Run from the repository root (the project as
source is enough: `PYTHONPATH=.`):

    python scripts/bench_forcing_gpu.py [--batch 16 256] [--tokens 512] [--reps 3]

`--device cpu --tiny` runs the same code on a two-layer model of that shape (a smoke test of the
script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

# DeepSeek-R1-Distill-Qwen-1.5B's configuration (public model card / config.json).
QWEN2_1P5B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=131072,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
TINY_QWEN2 = dict(
    QWEN2_1P5B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip
FIRST_CONTROL_ID = 151665  # where 8ratio's tokens land on that tokenizer (see the tests)
ARMS = ("off", "device", "python")


def spec_for_1p5b():
    from budgetthinker.control_spec import ControlSpec, parse_mode

    strings = parse_mode("8ratio").token_strings()
    return ControlSpec(
        mode="8ratio",
        token_strings=tuple(strings),
        token_ids=tuple(range(FIRST_CONTROL_ID, FIRST_CONTROL_ID + len(strings))),
        think_start_id=151648,
        think_end_id=151649,
        suffix_ids={"eval": (198, 151649, 271), "rl": (198, 151649, 198)},
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def random_model(shape: dict, device: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        return Qwen2ForCausalLM(Qwen2Config(**shape)).to(dtype).eval()


def measure(model, spec, device: torch.device, batch: int, tokens: int, prompt: int, reps: int):
    """Medians of `generate` per arm at one batch size; see the module docstring."""
    from transformers import LogitsProcessorList

    from budgetthinker.forcing import make_plan
    from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor

    budget = tokens  # 7 control tokens land inside the generated tokens
    ids = torch.randint(0, 150000, (batch, prompt), device=device)
    mask = torch.ones_like(ids)
    plans = [make_plan(spec, budget)] * batch

    def run(arm: str):
        processors = LogitsProcessorList()
        if arm != "off":
            side = arm == "device"
            processors.append(BudgetForcingLogitsProcessor(plans, prompt, device_side=side))
        with torch.inference_mode():
            return model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=tokens,
                min_new_tokens=tokens, do_sample=False, logits_processor=processors,
                pad_token_id=0, eos_token_id=None,
            )  # fmt: skip

    outs = {arm: run(arm)[:, prompt:] for arm in ARMS}  # warm-up, and the outputs compared
    forced = sum(int(t) in spec.level_of for t in outs["device"][0].tolist())
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for rep in range(reps):
        for arm in ARMS if rep % 2 == 0 else ARMS[::-1]:
            times[arm].append(timed(lambda a=arm: run(a), device))
    med = {arm: statistics.median(ts) for arm, ts in times.items()}
    n = batch * tokens
    return {
        "batch": batch,
        "tokens": tokens,
        "reps": reps,
        "tokens_per_s": {arm: round(n / med[arm]) for arm in ARMS},
        "device_side_ratio": round(med["device"] / med["off"], 4),
        "python_ratio": round(med["python"] / med["off"], 4),
        "same_tokens": bool(torch.equal(outs["device"], outs["python"])),
        "forced_per_row": forced,
    }


def step_cost(spec, device: torch.device, batch: int, length: int, vocab: int, steps=200):
    """Seconds per call of the processor (device-side path) at output length `length`."""
    from budgetthinker.forcing import make_plan
    from budgetthinker.patches.forcing_slots import N
    from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor

    plans = [make_plan(spec, 10**6)] * batch
    proc = BudgetForcingLogitsProcessor(plans, length, device_side=True)
    input_ids = torch.randint(0, 1000, (batch, length), device=device)
    scores = torch.zeros(batch, vocab, device=device, dtype=torch.float32)
    proc(input_ids, scores)
    grown = torch.cat([input_ids, input_ids[:, -1:]], dim=1)

    def loop():
        for _ in range(steps):
            proc._slots.state[:, N] = 0  # N back to 0, so that every call feeds one token
            proc(grown[:, : length + 1], scores)

    return timed(loop, device) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="two-layer model (smoke test)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "bench_forcing_gpu: no CUDA device; use scripts/bench_forcing.py on CPU "
            "(or --device cpu --tiny to smoke-test this script)",
            file=sys.stderr,
        )
        return 2
    shape = TINY_QWEN2 if args.tiny else QWEN2_1P5B
    model = random_model(shape, device)
    spec = spec_for_1p5b()
    results = [measure(model, spec, device, b, args.tokens, args.prompt, args.reps)
               for b in args.batch]  # fmt: skip
    vocab = shape["vocab_size"]
    short = step_cost(spec, device, args.batch[0], 64, vocab)
    long = step_cost(spec, device, args.batch[0], 8192 if not args.tiny else 512, vocab)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name} · torch {torch.__version__} · {'tiny' if args.tiny else '1.5B'} shape")
    print("| batch | no forcing tok/s | device-side tok/s (ratio) | Python tok/s (ratio) |")
    print("|---|---|---|---|")
    for r in results:
        t = r["tokens_per_s"]
        print(f"| {r['batch']} | {t['off']} | {t['device']} ({r['device_side_ratio']}) | "
              f"{t['python']} ({r['python_ratio']}) |")  # fmt: skip
    print(f"processor alone: {short * 1e6:.1f} µs/step at length 64, {long * 1e6:.1f} at long")
    summary = {
        "device": name,
        "shape": "tiny" if args.tiny else "1.5B",
        "by_batch": results,
        "step_us_short": round(short * 1e6, 1),
        "step_us_long": round(long * 1e6, 1),
        "step_cost_long_over_short": round(long / short, 3),
    }
    print(json.dumps(summary))
    return 0 if all(r["same_tokens"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
