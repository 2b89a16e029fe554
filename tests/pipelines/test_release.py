"""The release pipeline: its stage chain, its recipe, its dry-run checks, the GPU-hour estimate.

The full dry run (verl's schema and validation on the RL recipe) is in
tests/pipelines/test_release_dry_run.py: it needs `.venv-rl` (the test command sets up every
environment before it runs the core suite).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from budgetthinker.errors import UserError
from budgetthinker.pipelines.release import (
    Assumptions,
    Release,
    gpu_hours,
    gpu_hours_table,
    load,
    main,
)

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "configs" / "experiments" / "release.yaml")


def _release(tmp_path, *overrides, model="models/base"):
    cfg = load(RECIPE, [f"run_dir={tmp_path}", "traces=t.jsonl", *overrides])
    return Release(model, cfg)


def test_each_stage_reads_the_previous_stage_output(tmp_path):
    release = _release(tmp_path)
    stages = {s.name: s for s in release.stages()}
    assert list(stages) == ["prepare", "sft_data", "sft_epochs_1-2", "sft_epochs_3-6", "grpo",
                            "merge_rl", "eval"]  # fmt: skip
    prepared = stages["prepare"].output.parent
    assert stages["prepare"].command[1:5] == ["prepare", "--base", "models/base", "--mode"]
    assert stages["sft_data"].command[stages["sft_data"].command.index("--model") + 1] == str(
        prepared
    )
    first, second = stages["sft_epochs_1-2"].command, stages["sft_epochs_3-6"].command
    assert f"model_name_or_path={prepared}" in first and "num_train_epochs=2.0" in first
    out1 = stages["sft_epochs_1-2"].output.parent
    assert f"model_name_or_path={out1}" in second and "num_train_epochs=4.0" in second
    assert "budgetthinker.then=[]" in first and "budgetthinker.then=[]" in second
    assert f"dataset_dir={stages['sft_data'].output.parent}" in second
    # the dataset name comes from the SFT recipe, so sft-data writes what SFT reads
    assert stages["sft_data"].output.name == "8ratio_SFT_below10000.jsonl"
    out2 = stages["sft_epochs_3-6"].output.parent
    assert stages["grpo"].command[:2] == ["bash", "rl/8ratio_v1.sh"]
    assert f"actor_rollout_ref.model.path={out2}" in stages["grpo"].command
    merge = stages["merge_rl"].command
    assert merge[3:] == ["merge-rl", str(stages["grpo"].output.parent), str(out2),
                         str(stages["merge_rl"].output.parent)]  # fmt: skip
    assert f"model={stages['merge_rl'].output.parent}" in stages["eval"].command


def test_overrides_and_epoch_lists(tmp_path):
    release = _release(tmp_path, "sft.epochs=[1.0,1.0,2.0]", "rl.train_files=[a.parquet]",
                       "rl.val_files=[b.parquet]", "rl.overrides=[trainer.nnodes=2]",
                       "eval.data_dir=D")  # fmt: skip
    names = [s.name for s in release.stages()]
    assert names[2:5] == ["sft_epochs_1-1", "sft_epochs_2-2", "sft_epochs_3-4"]
    grpo = next(s for s in release.stages() if s.name == "grpo").command
    assert grpo[-3:] == ["budgetthinker.data.train_files=[a.parquet]",
                         "budgetthinker.data.val_files=[b.parquet]",
                         "trainer.nnodes=2"]  # fmt: skip
    assert "data.data_dir=D" in release.stages()[-1].command
    with pytest.raises(UserError, match="sft.epochs"):
        _release(tmp_path, "sft.epochs=[]")
    with pytest.raises(UserError, match="unknown config key 'rl.train'"):
        _release(tmp_path, "rl.train=[x]")


def test_dry_run_names_every_missing_input(tmp_path, capsys):
    code = main(["no/such/model", "--dry-run", "--config", RECIPE, f"run_dir={tmp_path / 'r'}",
                 f"eval.data_dir={tmp_path}"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 2
    assert "FAILED: MODEL_DIR no/such/model is not a model folder" in out
    assert "FAILED: no SFT traces: pass traces=PATH.jsonl" in out
    assert "FAILED: no RL problems: pass rl.train_files" in out
    assert "FAILED: benchmark math500: data file" in out
    assert "check: ok: configs/sft/release.yaml: full fine-tuning, 2 + 4 epochs, 8 GPUs" in out
    assert not (tmp_path / "r").exists()


def test_merge_rl_needs_a_checkpoint(tmp_path):
    assert main(["merge-rl", str(tmp_path), str(tmp_path), str(tmp_path / "out")]) == 2
    assert main(["merge-rl", str(tmp_path)]) == 2


def test_gpu_hour_estimate_follows_its_assumptions():
    base = dict((stage, h) for stage, h, _ in gpu_hours())
    assert base["sft 4 epochs"] == pytest.approx(2 * base["sft 2 epochs"])
    faster = dict(
        (s, h) for s, h, _ in gpu_hours(replace(Assumptions(), decode_tokens_per_gpu_s=20_000.0))
    )
    assert faster["grpo rollouts"] == pytest.approx(base["grpo rollouts"] / 2)
    assert faster["grpo training"] == pytest.approx(base["grpo training"])
    # 14,470 problems × 8 epochs × 5 responses × 3,600 tokens ≈ 2.08e9 generated tokens
    assert base["grpo rollouts"] == pytest.approx(14_470 * 8 * 5 * 3_600 / 10_000 / 3600)
    table = gpu_hours_table()
    assert table.splitlines()[-1].startswith("| total | ")
    total = float(table.splitlines()[-1].split("|")[2])
    assert total == pytest.approx(sum(base.values()), abs=0.5)
