#!/usr/bin/env bash
# Forcing on a real GPU with vLLM's Model Runner V2, in one command (≤ 8 minutes on one H100/H200).
#
#   bash scripts/gpu_check.sh [--batch 256] [--tokens 1024] [--keep DIR]
#
# Needs the core GPU environment only (scripts/setup_env.sh on a GPU node: vLLM 0.33.0, its torch);
# installs nothing and downloads nothing. It
#   1. writes a randomly initialised model of DeepSeek-R1-Distill-Qwen-1.5B's shape (Qwen2, bf16)
#      with the DeepSeek tokenizer from ../shared/tokenizers when present (else the embedded
#      SmolLM2 one), and prepares it for 8ratio with `budgetthinker prepare`;
#   2. starts vLLM (`LLM`, default runner: V2 on CUDA) with `budgetthinker.patches.vllm_processor()`
#      and checks that the V2 runner and the V2 processor were used;
#   3. mixed batch (budgets 100/300/600/1000, two-stage, unforced rows): every position where the
#      forcing state machine forces a token holds it (`positions_exact`), replayed with
#      `budgetthinker.forcing.simulate` on the engine's own outputs;
#   4. throughput: batch 256 × 1024 new tokens (greedy, ignore_eos), every request forced (B=1000,
#      7 control tokens each) vs the same requests with forcing off (`force: 0`), same engine,
#      interleaved, medians → `v2_overhead_ratio` (target ≤ 1.02).
# Last line of stdout: one JSON object.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[[ -x "$py" ]] || py="$(command -v python3)"
cd "$here"
exec "$py" - "$@" <<'PY'
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

parser = argparse.ArgumentParser(prog="gpu_check.sh")
parser.add_argument("--batch", type=int, default=256)
parser.add_argument("--tokens", type=int, default=1024)
parser.add_argument("--reps", type=int, default=2)
parser.add_argument("--keep", default=None, help="folder for the prepared model (reused)")
args = parser.parse_args()
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: no CUDA device; on CPU run the test suite instead")
t_start = time.perf_counter()
sys.path.insert(0, "scripts")
from bench_forcing_gpu import QWEN2_1P5B  # noqa: E402

root = Path(args.keep or tempfile.mkdtemp(prefix="bt_gpu_check_"))
base, prepared = root / "random-1.5b", root / "random-1.5b-8ratio"
if not (prepared / "budgetthinker_spec.json").is_file():
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    shared = Path("..") / "shared" / "tokenizers" / "deepseek-r1-distill-qwen"
    if shared.is_dir():
        tok_src = shared
    else:
        from budgetthinker.preparation.embedded_model import default_base_dir

        tok_src = default_base_dir()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_1P5B)).to(torch.bfloat16)
    model.save_pretrained(base)
    AutoTokenizer.from_pretrained(tok_src).save_pretrained(base)
    del model
    torch.cuda.empty_cache()
    from budgetthinker.preparation.prepare import prepare_model

    prepare_model(str(base), "8ratio", prepared, quiet=True)
t_prepared = time.perf_counter()

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402

from budgetthinker.control_spec import load_spec  # noqa: E402
from budgetthinker.forcing import make_plan, simulate  # noqa: E402
from budgetthinker.patches import vllm_processor  # noqa: E402
from budgetthinker.patches.vllm_v2_processor import BudgetForcingProcessorV2  # noqa: E402

spec = load_spec(prepared)
processor = vllm_processor()
llm = LLM(
    model=str(prepared), logits_processors=[processor], max_model_len=2048,
    max_num_seqs=args.batch, gpu_memory_utilization=0.85, seed=0,
)
runner_v2 = bool(llm.llm_engine.vllm_config.use_v2_model_runner)
t_engine = time.perf_counter()

gen = torch.Generator().manual_seed(0)
ordinary = min(spec.token_ids) - 1000


def prompts(n: int) -> list:
    ids = torch.randint(100, ordinary, (n, 128), generator=gen).tolist()
    return [TokensPrompt(prompt_token_ids=p) for p in ids]


def params(extra: dict, tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=tokens, temperature=0.0, ignore_eos=True, skip_special_tokens=False,
        extra_args=extra,
    )


# 3. positions, mixed batch
mixed = [({"budget": b}, make_plan(spec, b)) for b in (100, 300, 600, 1000)]
mixed += [({"budget": 300, "two_stage": 1}, make_plan(spec, 300, two_stage=True))]
mixed += [({"force": 0}, None)]
mixed = mixed * 4
outs = llm.generate(prompts(len(mixed)), [params(e, 1024) for e, _ in mixed], use_tqdm=False)
exact, forced_seen = True, 0
for (_, plan), out in zip(mixed, outs, strict=True):
    tokens = list(out.outputs[0].token_ids)
    if plan is not None:
        exact &= simulate(plan, tokens) == tokens  # every forced position holds its token
        forced_seen += sum(t in spec.level_of for t in tokens)
positions_exact = exact and forced_seen >= sum(plan is not None for _, plan in mixed)

# 4. overhead, batch × tokens, forcing on vs off on the same engine
batch = prompts(args.batch)
on = [params({"budget": 1000}, args.tokens)] * args.batch
off = [params({"force": 0}, args.tokens)] * args.batch


def timed(sampling) -> float:
    t0 = time.perf_counter()
    llm.generate(batch, sampling, use_tqdm=False)
    return time.perf_counter() - t0


timed(on), timed(off)  # warm-up (kernels, CUDA graphs, Triton forcing kernel)
times = {"on": [], "off": []}
for _ in range(args.reps):
    times["off"].append(timed(off))
    times["on"].append(timed(on))
on_s, off_s = statistics.median(times["on"]), statistics.median(times["off"])
print(json.dumps({
    "gpu": torch.cuda.get_device_name(0),
    "vllm": __import__("vllm").__version__,
    "torch": torch.__version__,
    "runner": "v2" if runner_v2 else "v1",
    "processor": processor.__name__,
    "v2_processor_used": runner_v2 and processor is BudgetForcingProcessorV2,
    "positions_exact": positions_exact,
    "forced_tokens_seen": forced_seen,
    "batch": args.batch,
    "new_tokens": args.tokens,
    "seconds_forcing": round(on_s, 3),
    "seconds_no_forcing": round(off_s, 3),
    "v2_overhead_ratio": round(on_s / off_s, 4),
    "tokens_per_s_forcing": round(args.batch * args.tokens / on_s),
    "prepare_seconds": round(t_prepared - t_start),
    "engine_start_seconds": round(t_engine - t_prepared),
    "total_seconds": round(time.perf_counter() - t_start),
}))
PY
