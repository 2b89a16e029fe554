"""A real GRPO run on CPU with TRL: the embedded model, synthetic problems, two steps."""

from __future__ import annotations

import json

import pytest

from budgetthinker.control_spec import SPEC_FILENAME, load_spec
from budgetthinker.errors import UserError
from budgetthinker.rl.config import load_rl_config

pytest.importorskip("trl")


@pytest.mark.slow
def test_cpu_smoke_run(tmp_path, capsys):
    from budgetthinker.cli import main

    assert main(["rl", "--engine", "trl", "--config", "cpu_smoke", f"output_dir={tmp_path}"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    steps = out["steps"]
    assert len(steps) == 2
    for step in steps:
        assert step["budget"] == 100  # epoch 1 of the smoke curriculum
        # the logged reward is the release formula over the logged parts
        parts = 0.7 * step["accuracy"] + 0.15 * step["format"] + 0.15 * step["length"]
        assert step["reward"] == pytest.approx(parts, abs=1e-6)
        assert step["forced_tokens"] > 0  # control tokens were forced into the rollouts
    final = tmp_path / "cpu_smoke" / "final"
    import torch

    args = torch.load(final / "training_args.bin", weights_only=False)
    # micro_batch_size 2: the 2 prompts × 2 responses of a step accumulate over 2 passes
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 2)
    assert args.report_to == []
    assert (final / "model.safetensors").is_file()
    assert load_spec(final).mode == "8ratio"
    assert (final / SPEC_FILENAME).is_file()


@pytest.fixture(scope="module")
def policy(prepared_model):
    from transformers import AutoModelForCausalLM

    from budgetthinker.generation import eos_token_ids

    model = AutoModelForCausalLM.from_pretrained(prepared_model)
    # never stops by itself, so the caps decide (the outputs do not hang on when it would stop)
    model.generation_config.suppress_tokens = sorted(eos_token_ids(model.generation_config, None))
    return model


def rollout_batch(policy, spec, tokenizer, training: bool, *overrides: str):
    """One call of the TRL rollout function, as GRPOTrainer makes it, on the embedded model."""
    from types import SimpleNamespace

    from budgetthinker.rl.trl_grpo import BudgetRollout

    cfg = load_rl_config("cpu_smoke", list(overrides))
    rollout = BudgetRollout(spec, tokenizer, cfg)
    policy.train(training)
    trainer = SimpleNamespace(
        model=policy,
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
        state=SimpleNamespace(epoch=0, global_step=0),
    )
    import torch

    torch.manual_seed(0)
    return rollout(["What is 2 + 3?", "What is 7 - 4?"], trainer), rollout.history[-1]


@pytest.mark.slow
def test_validation_answers_two_stage_like_verl(policy, spec, tokenizer):
    """Validation batches use the validation budget with two-stage answering (verl's stage=2):
    the RL suffix is forced at Bt when thinking is still open; `two_stage_request: second` is the
    original (cut to Bt − 50, suffix, a second request); training batches have neither."""
    from budgetthinker.forcing import thinking_cap
    from budgetthinker.rl.curriculum import generation_cap, scored_length

    suffix = list(spec.suffix_ids["rl"])
    out, info = rollout_batch(policy, spec, tokenizer, False)
    assert info["budget"] == 100 and info["two_stage"] is True
    bt = thinking_cap(100)
    for ids in out["completion_ids"]:  # the 135M model does not close its thinking by itself
        assert ids[bt : bt + len(suffix)] == suffix
        assert len(ids) == bt + len(suffix) + 40
    out, info = rollout_batch(policy, spec, tokenizer, False, "rollout.two_stage_request=second")
    for ids in out["completion_ids"]:
        assert ids[scored_length(100) : scored_length(100) + len(suffix)] == suffix
        assert len(ids) == scored_length(100) + len(suffix) + 40
    out, info = rollout_batch(policy, spec, tokenizer, True)
    assert info["two_stage"] is False and info["forced_tokens"] > 0
    assert all(len(ids) <= scored_length(100) for ids in out["completion_ids"])
    assert set(out["response_length"]) == {generation_cap(100, 260)}
    out, info = rollout_batch(policy, spec, tokenizer, True, "rollout.force=false")
    assert info["forced_tokens"] == 0
    assert not any(t in spec.level_of for ids in out["completion_ids"] for t in ids[:60])


def test_compat_seed_and_batch_checks():
    cfg = load_rl_config("cpu_smoke", ["compat=seed"])
    ro = cfg.rollout
    assert (ro.mask_forced_tokens, ro.stop_at_think_end, ro.two_stage_request) == (
        False,
        False,
        "second",
    )
    with pytest.raises(UserError, match="micro_batch_size 3 must divide"):
        load_rl_config("cpu_smoke", ["trainer.micro_batch_size=3"])
    with pytest.raises(UserError, match="two_stage_request must be same .* or second"):
        load_rl_config("cpu_smoke", ["rollout.two_stage_request=twice"])


def test_engine_and_budget_errors():
    from budgetthinker.cli import main

    assert main(["rl", "--config", "cpu_smoke", "curriculum.budgets=[[75]]"]) == 2
    with pytest.raises(UserError, match="unknown RL experiment"):
        load_rl_config("nope")


GYM = ["data.train_files=[rg:basic_arithmetic]", "data.rg.basic_arithmetic.size=2",
       "data.rg.basic_arithmetic.level=0"]  # fmt: skip


def test_reasoning_gym_problems_as_rl_data():
    reasoning_gym = pytest.importorskip("reasoning_gym")
    from budgetthinker.rl.data import load_split

    cfg = load_rl_config("cpu_smoke", [*GYM, "data.val_files=[rg:basic_arithmetic]"])
    level0 = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    for split, seed in (("train", 0), ("val", 2)):  # validation: the problems after training's
        theirs = reasoning_gym.create_dataset("basic_arithmetic", size=2, seed=seed, **level0)
        rows = load_split(cfg.data, split)
        expected = [(e["question"], e["answer"]) for e in theirs]
        assert [(r.problem, r.answer) for r in rows] == expected
    with pytest.raises(UserError, match="unknown reasoning-gym task rg:basic_arithmatic; the"):
        load_rl_config("cpu_smoke", ["data.train_files=[rg:basic_arithmatic]"])


@pytest.mark.slow
def test_cpu_smoke_step_on_reasoning_gym_logs_to_tensorboard_and_wandb(
    tmp_path, capsys, monkeypatch
):
    pytest.importorskip("reasoning_gym")
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from budgetthinker.cli import main
    from tests.evaluation.tracked import tensorboard_tags, wandb_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    # one step, no validation: the smallest run that trains on the tasks and logs
    argv = ["rl", "--engine", "trl", "--config", "cpu_smoke", f"output_dir={tmp_path}", *GYM,
            "trainer.max_steps=1", "trainer.report_to=tensorboard,wandb"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["steps"]) == 1 and out["steps"][0]["budget"] == 100
    run_dir = tmp_path / "cpu_smoke"
    scalars, _ = tensorboard_tags(run_dir / "logs")
    assert {"train/reward", "train/reward/accuracy", "train/loss"} <= set(scalars), sorted(scalars)
    run, keys = wandb_run(run_dir)
    assert run["project"] == "budgetthinker"
    assert {"train/reward", "train/reward/accuracy", "train/loss"} <= keys, sorted(keys)
