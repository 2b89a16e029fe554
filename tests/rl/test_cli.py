"""`budgetthinker rl`: which engine a recipe runs on, the original variables, clear errors."""

from __future__ import annotations

import importlib.util

import pytest

from budgetthinker.cli import main
from budgetthinker.errors import UserError
from budgetthinker.rl.config import RECIPE_DIR
from budgetthinker.rl.verl_launch import alias_overrides, is_verl_recipe


def test_recipes_know_their_engine():
    assert is_verl_recipe(RECIPE_DIR / "8ratio_v1.yaml")
    assert not is_verl_recipe(RECIPE_DIR / "8ratio_v1_trl.yaml")
    assert not is_verl_recipe(RECIPE_DIR / "cpu_smoke.yaml")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--engine", "trl", "--config", "8ratio_v1"], "is a verl recipe; run it with bash rl/"),
        (["--engine", "verl", "--config", "cpu_smoke"], "is a TRL recipe"),
        (["--config", "9ratio_v9"], "unknown RL experiment '9ratio_v9'"),
    ],
)
def test_engine_and_recipe_errors(capsys, argv, message):
    assert main(["rl", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("verl") is not None, reason="verl is installed")
def test_verl_recipe_without_verl_names_the_environment(capsys):
    assert main(["rl", "--config", "8ratio_v1", "--dry-run"]) == 2
    assert "bash scripts/setup_env.sh rl" in capsys.readouterr().err


def test_original_variables_become_overrides():
    env = {"MODEL_PATH": "/m/sft", "stage": "2", "remaining": "8ratio"}
    assert alias_overrides(env) == [
        'actor_rollout_ref.model.path="/m/sft"',
        "budgetthinker.rollout.validation_two_stage=true",
        "budgetthinker.rollout.force=true",
        "budgetthinker.rollout.tip=control",
    ]
    assert alias_overrides({"remaining": "default", "stage": "1"}) == [
        "budgetthinker.rollout.validation_two_stage=false",
        "budgetthinker.rollout.force=false",
        "budgetthinker.rollout.tip=default",
    ]
    assert alias_overrides({}) == []
    # one meaning in every stage (budgetthinker.aliases): any mode name forces control tokens
    assert alias_overrides({"remaining": "remaining250"})[0] == "budgetthinker.rollout.force=true"
    # variables another stage reads are not RL's business
    assert alias_overrides({"tip": "prompt_v1", "MODEL_NAME_OR_PATH": "/m", "budget": "5"}) == []
    with pytest.raises(UserError, match="stage=2 .* or stage=1"):
        alias_overrides({"stage": "3"})
    with pytest.raises(UserError, match="remaining=8ratio .* or remaining=default"):
        alias_overrides({"remaining": "250"})


def test_trl_dry_run_checks_and_writes_nothing(tmp_path, capsys, prepared_model):
    """`budgetthinker rl --config cpu_smoke --dry-run` trains nothing and writes nothing (it
    once trained and overwrote runs/cpu_smoke/final)."""
    code = main(["rl", "--config", "cpu_smoke", "--dry-run", f"output_dir={tmp_path / 'runs'}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "dry run: would train" in out and "for 2 steps on 8 training" in out
    assert "nothing written" in out and not (tmp_path / "runs").exists()
    # its checks are the training run's: too few problems is the same one line
    code = main(["rl", "--config", "cpu_smoke", "--dry-run", f"output_dir={tmp_path / 'runs'}",
                 "data.synthetic.n=1"])  # fmt: skip
    assert code == 2 and "fewer than trainer.rollout_batch_size" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
