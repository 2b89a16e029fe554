"""CTS into SFT: compressed traces → `sft-data` with and without control tokens → LLaMA-Factory.

The end-to-end test needs the sft environment (LLaMA-Factory; bash scripts/setup_env.sh sft) and
is skipped without it; the dataset checks run in either environment.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from budgetthinker.sft.data import build_dataset
from budgetthinker.sft.train import load_recipe
from budgetthinker.synthetic import make_trace

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sft"


def test_cts_recipes_parse():
    lf, opts = load_recipe(REPO_CONFIGS / "cts_release.yaml")
    # B.3: full SFT, ZeRO-3 offload, lr 1e-5 cosine, warm-up 5 %, 3 epochs, cutoff 4096
    assert (lf["finetuning_type"], lf["deepspeed"]) == (
        "full",
        "configs/deepspeed/ds_z3_offload_config.json",
    )
    assert (REPO_CONFIGS.parents[1] / lf["deepspeed"]).is_file()
    assert (lf["learning_rate"], lf["num_train_epochs"], lf["cutoff_len"]) == (1e-5, 3.0, 4096)
    assert (lf["lr_scheduler_type"], lf["warmup_ratio"], lf["adam_beta2"]) == ("cosine", 0.05, 0.95)
    assert (lf["per_device_train_batch_size"], opts.nproc) == (2, 8)
    smoke, opts = load_recipe(REPO_CONFIGS / "cts_cpu_smoke.yaml", ["max_steps=1"])
    assert smoke["model_name_or_path"] == "default" and smoke["use_cpu"] and opts.data is None
    assert smoke["max_steps"] == 1


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_control_none_is_plain_thinking_and_answer(tmp_path, prepared_model, spec):
    thinking = "Three × four is twelve.\nSo 12."
    trace = {"id": "t", "question": "What is 3 × 4?", "thinking": thinking, "answer": "12"}
    build_dataset(prepared_model, [trace], tmp_path, "plain", control="none")
    [row] = _rows(tmp_path / "plain.jsonl")
    assert row["instruction"] == "Return your final response within \\boxed{}. What is 3 × 4?"
    assert row["output"] == f"<think>\n{thinking}\n</think>\n**Final Answer**\\boxed{{12}}"
    assert "budget" not in row and not any(s in row["output"] for s in spec.token_strings)
    stats = json.loads((tmp_path / "plain.stats.json").read_text())
    assert (stats["control"], stats["kept"]) == ("none", 1)
    build_dataset(prepared_model, [trace], tmp_path, "tokens")
    [row] = _rows(tmp_path / "tokens.jsonl")
    assert row["budget"] == 100 and spec.token_strings[-1] in row["output"]


@pytest.mark.slow
def test_cts_to_sft_with_and_without_control_tokens(tmp_path, prepared_model, spec):
    pytest.importorskip("llamafactory")
    from budgetthinker.preparation.embedded_model import default_base_dir
    from budgetthinker.sft.cts import CTSOptions, compress_file
    from budgetthinker.sft.train import run_sft

    traces = tmp_path / "traces.jsonl"
    rows = [make_trace(1, i, 2) for i in range(4)]
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cts.jsonl"
    report = compress_file(
        default_base_dir(), traces, out, CTSOptions(ratios=(0.5, 0.8)), device="cpu"
    )
    for ratio in ("0.5", "0.8"):
        s = report["ratios"][ratio]
        assert s["traces"] == 4
        assert s["thinking_tokens_after"] == pytest.approx(
            float(ratio) * s["thinking_tokens_before"], abs=0.5 * 4
        )
    variants = {"tokens": tmp_path / "cts_r50.jsonl", "none": tmp_path / "cts_r80.jsonl"}
    for control, path in variants.items():
        name = f"cts_{control}"
        build_dataset(prepared_model, _rows(path), tmp_path / "data", name, control=control)
        data = _rows(tmp_path / "data" / f"{name}.jsonl")
        assert len(data) == 4
        with_tokens = [any(s in r["output"] for s in spec.token_strings) for r in data]
        assert all(with_tokens) if control == "tokens" else not any(with_tokens)
        start = time.perf_counter()
        [model] = run_sft(
            REPO_CONFIGS / "cts_cpu_smoke.yaml",
            [
                f"dataset={name}",
                f"dataset_dir={tmp_path / 'data'}",
                f"output_dir={tmp_path / name}",
                "max_steps=1",
            ],
        )
        print(f"CTS SFT smoke ({control}): {time.perf_counter() - start:.1f} s")
        state = json.loads((model / "trainer_state.json").read_text())
        losses = [e["loss"] for e in state["log_history"] if "loss" in e]
        assert len(losses) == 1 and math.isfinite(losses[0]) and losses[0] > 0
