"""GPU checks for a machine with torch, Triton and transformers but no vLLM (the machine this
project is lent by chance: torch 2.11, Triton 3.6, transformers 5.17), with the project carried
as source. Installs nothing, downloads nothing (random weights from a config), ≤ 5 minutes on one
H100/H200. Run through `scripts/gpu_check_lent.sh` (which sets `PYTHONPATH` to the checkout).

1. `kernel`: the V2 forcing step at batch 256 (B = 6000, two-stage, staggered through the
   schedule, vocabulary 151936): the fused Triton kernel and the torch ops, each on its own
   state, against `budgetthinker.forcing.Forcer` at every step (`matches_forcer`,
   `kernel_matches_torch`), and one admission + step of each under
   `torch.cuda.set_sync_debug_mode("error")` (`sync_free`); `scripts/bench_v2_processor.py`.
2. `hf_adapter`: transformers `generate` on a random 1.5B-shape Qwen2 (bf16) at batch 16 and
   256: no forcing vs the adapter's device-side path vs its Python path
   (`device_side_ratio`, target ≤ 1.02; `same_tokens`); `scripts/bench_forcing_gpu.py`. And
   `hf_sync_free`: the device-side adapter stepped under the sync debug mode at batch 256.
3. `v2_apply_over_decode_step`: the V2 processor's `apply()` body (step + mask) next to one decode
   step of that model at batch 256 with 1024 cached tokens.

Last line of stdout: one JSON object (`ok` sums up the identity and sync checks). Without CUDA it
exits 2 with one line; `--device cpu` runs the same code at small sizes (a tiny model), which
is what the test suite does, so the script is known to work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

GPU_SIZES = dict(batch=256, budget=6000, vocab=151936, steps=200, tokens=256, reps=3, kv=1024,
                 hf_batches=(16, 256), model_steps=12, model="full")  # fmt: skip
CPU_SIZES = dict(batch=16, budget=600, vocab=2048, steps=30, tokens=12, reps=1, kv=16,
                 hf_batches=(4,), model_steps=3, model="tiny")  # fmt: skip


def versions() -> dict:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version,
            "transformers": transformers.__version__}  # fmt: skip


def check_kernel(device: torch.device, sizes: dict) -> dict:
    from bench_v2_processor import bench_v2, spec_for_vocab, workload

    from budgetthinker.forcing import make_plan

    args = SimpleNamespace(**sizes)
    spec = spec_for_vocab(args.vocab)
    plan = make_plan(spec, args.budget, two_stage=True)
    history, proposals = workload(spec, args)
    return bench_v2(spec, plan, device, args, history, proposals)


def hf_sync_free(device: torch.device, batch: int) -> bool | str:
    """The device-side adapter for 32 steps under the sync debug mode ("error" raises)."""
    from bench_forcing_gpu import spec_for_1p5b

    from budgetthinker.forcing import make_plan, simulate
    from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor

    spec = spec_for_1p5b()
    plans = [make_plan(spec, 24, two_stage=True)] * batch
    processor = BudgetForcingLogitsProcessor(plans, 4, device_side=True)
    ids = torch.zeros(batch, 4, dtype=torch.int64, device=device)
    vocab = max(spec.token_ids) + 8
    processor(ids, torch.zeros(batch, vocab, device=device))  # tables go to the device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(32):
            scores = processor(ids, torch.randn(batch, vocab, device=device))
            ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
    except RuntimeError as e:
        return str(e).splitlines()[0]
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    return all(simulate(plans[0], row) == row for row in ids[:, 4:].tolist())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--deadline", type=float, default=270.0, help="seconds; later parts skip")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check_lent: no CUDA device here; `--device cpu` smoke-tests this script")
        return 2
    from bench_forcing_gpu import QWEN2_1P5B, TINY_QWEN2, measure, random_model, spec_for_1p5b
    from bench_v2_processor import bench_model

    start = time.perf_counter()
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result: dict = {"device": name, **versions(), "mode": "gpu" if device.type == "cuda" else
                    "cpu smoke test (small sizes, not a measurement)"}  # fmt: skip
    skipped = []

    def part(label: str, fn):
        if time.perf_counter() - start > args.deadline:
            skipped.append(label)
            return None
        t0 = time.perf_counter()
        out = fn()
        result[f"{label}_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_check_lent] {label} done in {result[f'{label}_seconds']} s", file=sys.stderr)
        return out

    result["kernel"] = part("kernel", lambda: check_kernel(device, sizes))
    result["hf_sync_free"] = part("hf_sync_free", lambda: hf_sync_free(device, sizes["batch"]))
    shape = QWEN2_1P5B if sizes["model"] == "full" else TINY_QWEN2

    def adapter():
        model = random_model(shape, device)
        spec = spec_for_1p5b()
        out = [measure(model, spec, device, b, sizes["tokens"], 32, sizes["reps"])
               for b in sizes["hf_batches"]]  # fmt: skip
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return out

    result["hf_adapter"] = part("hf_adapter", adapter)
    model_args = SimpleNamespace(model=sizes["model"], batch=sizes["batch"], kv=sizes["kv"],
                                 model_steps=sizes["model_steps"])  # fmt: skip
    decode = part("decode_step", lambda: bench_model(device, model_args))
    kernel = result["kernel"]
    if decode is not None and kernel is not None:
        result.update(decode)
        step = decode["decode_step_us"]["p50"]
        result["v2_apply_over_decode_step"] = round(kernel["v2_apply_us"]["p50"] / step, 5)
    checks = [
        kernel is not None and kernel["matches_forcer"],
        kernel is not None and kernel.get("kernel_matches_torch", True),
        kernel is not None and all(v is True for v in kernel.get("sync_free", {}).values()),
        result["hf_sync_free"] is True,
        result["hf_adapter"] is not None and all(r["same_tokens"] for r in result["hf_adapter"]),
    ]
    result["ok"] = all(checks) and not skipped
    result["skipped_past_deadline"] = skipped
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
