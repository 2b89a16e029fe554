"""Forcing overhead on a GPU with the real 1.5B architecture (randomly initialised).

BudgetThinker's base model is DeepSeek-R1-Distill-Qwen-1.5B. Its weights are not needed to
measure what forcing costs: a Qwen2 model of the same shape with random weights does the same
work per step. This script measures, side by side in one run on CUDA (bf16):

* transformers `generate` with vs without `BudgetForcingLogitsProcessor` (same batch, same number
  of new tokens, interleaved repetitions, medians);
* the processor alone per decode step, at output length ~64 vs ~8192 (O(1) check).

The last line of stdout is one JSON object with the ratios. Run from the repository root:

    python scripts/bench_forcing_gpu.py [--batch 16] [--tokens 512] [--reps 5]
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
FIRST_CONTROL_ID = 151665  # where 8ratio's tokens land on that tokenizer (see the tests)


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


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "bench_forcing_gpu: no CUDA device; use scripts/bench_forcing.py on CPU",
            file=sys.stderr,
        )
        return 2

    from transformers import LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

    from budgetthinker.forcing import make_plan
    from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor

    torch.manual_seed(0)
    config = Qwen2Config(**QWEN2_1P5B)
    model = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16).eval()
    spec = spec_for_1p5b()
    budget = args.tokens  # 7 control tokens land inside the generated tokens
    ids = torch.randint(0, 150000, (args.batch, args.prompt), device="cuda")
    mask = torch.ones_like(ids)

    def run(forcing: bool):
        processors = LogitsProcessorList()
        if forcing:
            processors.append(
                BudgetForcingLogitsProcessor([make_plan(spec, budget)] * args.batch, args.prompt)
            )
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=args.tokens,
                min_new_tokens=args.tokens, do_sample=False, logits_processor=processors,
                pad_token_id=0, eos_token_id=None,
            )  # fmt: skip
        return out

    out = run(True)  # warm-up, and a check that forcing happened
    forced = sum(int(t) in spec.level_of for t in out[0, args.prompt :].tolist())
    run(False)
    times = {False: [], True: []}
    for _ in range(args.reps):
        for forcing in (False, True):
            times[forcing].append(timed(lambda f=forcing: run(f)))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    tokens = args.batch * args.tokens

    def step_cost(length: int, steps: int = 400) -> float:
        vocab = config.vocab_size
        proc = BudgetForcingLogitsProcessor([make_plan(spec, 10**6)] * args.batch, length)
        input_ids = torch.randint(0, 1000, (args.batch, length), device="cuda")
        scores = torch.zeros(args.batch, vocab, device="cuda", dtype=torch.float32)
        proc(input_ids, scores)
        grown = torch.cat([input_ids, input_ids[:, -1:]], dim=1)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            proc._seen = length  # rewind, so that every call feeds one new token, as in generate
            proc(grown, scores)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    short, long = step_cost(64), step_cost(8192)
    print(f"device: {torch.cuda.get_device_name()} · torch {torch.__version__}")
    print(f"model: Qwen2 1.5B shape, random init, bf16 · batch {args.batch} · {args.tokens} tokens")
    print("| arm | median s | tokens/s | reps |\n|---|---|---|---|")
    print(f"| no forcing | {off:.3f} | {tokens / off:.0f} | {args.reps} |")
    arm = f"forcing (budget {budget}, {forced} control tokens/row)"
    print(f"| {arm} | {on:.3f} | {tokens / on:.0f} | {args.reps} |")
    print(
        f"processor alone: {short * 1e6:.1f} µs/step at length 64, {long * 1e6:.1f} µs/step at 8192"
    )
    print(json.dumps({
        "device": torch.cuda.get_device_name(),
        "hf_overhead_ratio": on / off,
        "step_cost_long_over_short": long / short,
        "step_us_short": short * 1e6,
        "step_us_long": long * 1e6,
        "tokens_per_s_off": tokens / off,
        "tokens_per_s_on": tokens / on,
        "forced_per_row": forced,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
