"""Budget curriculum, generation cap and truncation, RL data loading and recipe errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from budgetthinker.config import build
from budgetthinker.control_spec import parse_mode
from budgetthinker.errors import UserError
from budgetthinker.prompts import SYSTEM_LINE, ratio_tip
from budgetthinker.rl.config import RECIPE_DIR, load_rl_config, recipes
from budgetthinker.rl.curriculum import (
    Curriculum,
    CurriculumConfig,
    check_budget,
    generation_cap,
    scored_length,
    truncate_for_scoring,
)
from budgetthinker.rl.data import RLDataConfig, load_split, read_file, rl_user_content

SHARED_RL = Path(__file__).resolve().parents[3] / "shared" / "data" / "rl"


def release_curriculum() -> Curriculum:
    """The curriculum of the release (verl) recipe's budgetthinker: block."""
    recipe = yaml.safe_load((RECIPE_DIR / "8ratio_v1.yaml").read_text())
    return Curriculum(build(CurriculumConfig, recipe["budgetthinker"]["curriculum"]))


def test_release_schedule():
    cur = release_curriculum()
    fixed = {1: 6000, 2: 4000, 3: 3500, 4: 3000, 5: 2500, 6: 2000}
    for epoch, budget in fixed.items():
        assert {cur.budget(epoch, b) for b in range(50)} == {budget}
    for epoch in (7, 8):
        drawn = [cur.budget(epoch, b) for b in range(300)]
        assert set(drawn) == {2000, 4000, 6000}
        assert all(drawn.count(x) > 60 for x in (2000, 4000, 6000))
    assert cur.validation_budget == 4000
    assert cur.candidates(9) == [2000, 4000, 6000]  # past the end: the last entry


def test_draws_are_seeded_and_order_independent():
    cur = release_curriculum()
    first = cur.schedule(epochs=8, batches_per_epoch=56)
    assert first == release_curriculum().schedule(epochs=8, batches_per_epoch=56)
    assert cur.budget(7, 350) == first[6][350 - 6 * 56]  # resumed mid-run: same budget
    other = Curriculum(CurriculumConfig(budgets=[[2000, 4000, 6000]], seed=2))
    assert [other.budget(1, b) for b in range(40)] != [cur.budget(7, b) for b in range(40)]
    with pytest.raises(ValueError, match="counted from 1"):
        cur.budget(0, 0)


def test_cap_and_truncation():
    # Bt = 2040: cap min(2040 + 510, 9800) = 2550; scored length 1990. Bt(6000) = 6120 → 7650.
    assert generation_cap(2000, 10000) == 2550
    assert generation_cap(6000, 10000) == 7650
    assert generation_cap(10000, 10000) == 9800
    assert generation_cap(100, 400) == 127
    assert scored_length(2000) == 1990 and scored_length(6000) == 6070
    ids = list(range(3000))
    assert truncate_for_scoring(ids, 2000) == ids[:1990]
    assert truncate_for_scoring(ids[:10], 2000) == ids[:10]
    with pytest.raises(UserError, match="max_response_length 150"):
        generation_cap(2000, 150)


@pytest.mark.parametrize("bad", [125, 1999, 4010])
def test_budget_not_multiple_of_50(bad):
    with pytest.raises(UserError, match="not a multiple of 50") as e:
        check_budget(bad)
    assert str(bad // 50 * 50) in str(e.value)
    with pytest.raises(UserError, match="epoch 2"):
        CurriculumConfig(budgets=[[6000], [4000, bad]])
    with pytest.raises(UserError, match="validation_budget"):
        CurriculumConfig(validation_budget=bad)


def test_budget_override_error_is_one_user_error():
    with pytest.raises(UserError, match="not a multiple of 50"):
        load_rl_config("cpu_smoke", ["curriculum.budgets=[[120]]"])
    with pytest.raises(UserError, match="must be a positive"):
        check_budget(0)


def test_prompt_carries_the_tip_for_the_budget():
    mode = parse_mode("8ratio")
    problem = SYSTEM_LINE + "What is 1+1?"
    text = rl_user_content(problem, 3500, mode)
    assert text == SYSTEM_LINE + "What is 1+1?" + ratio_tip(mode, 3500)
    assert text.count(SYSTEM_LINE) == 1 and "within 3500 tokens" in text


def test_unknown_experiment(monkeypatch):
    assert {"8ratio_v1", "cpu_smoke"} <= set(recipes())
    with pytest.raises(UserError, match="unknown RL experiment '9ratio_v9'.*8ratio_v1"):
        load_rl_config("9ratio_v9")
    monkeypatch.setenv("steady", "8ratio_v1_trl")
    assert load_rl_config(None).experiment == "8ratio_v1_trl"
    monkeypatch.setenv("steady", "nope")
    with pytest.raises(UserError, match="unknown RL experiment 'nope'"):
        load_rl_config(None)
    with pytest.raises(UserError, match="unknown config key 'rollout.nn'"):
        load_rl_config("cpu_smoke", ["rollout.nn=3"])


def test_jsonl_and_missing_answer_column(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": SYSTEM_LINE + "2+2?", "final": 4.0}) + "\n")
    rows = read_file(str(good), "question", "final")
    assert rows[0].problem == "2+2?" and rows[0].answer == "4"
    with pytest.raises(UserError, match="no 'problem' or 'answer' column.*question, final"):
        read_file(str(good))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem": ["1+1?"], "solution": ["2"]}), tmp_path / "x.parquet")
    with pytest.raises(UserError, match="no 'answer' column.*problem, solution"):
        load_split(RLDataConfig(train_files=[str(tmp_path / "x.parquet")]))
    with pytest.raises(UserError, match="does not exist"):
        read_file(str(tmp_path / "missing.parquet"))


def test_synthetic_default():
    rows = load_split(RLDataConfig())
    assert len(rows) == 16 and all(r.answer.isdigit() for r in rows)
    assert load_split(RLDataConfig(), "val") == []


@pytest.mark.skipif(not SHARED_RL.is_dir(), reason="shared RL data not present")
def test_release_parquet():
    rows = read_file(str(SHARED_RL / "math500_RL.parquet"))
    assert len(rows) == 500
    assert not rows[0].problem.startswith(SYSTEM_LINE)


def test_release_recipes_name_the_data_key_to_set(tmp_path, monkeypatch):
    """The release recipes ship no path a user lacks: loading their data fails with one line
    naming the key; `[]` is the synthetic set."""
    monkeypatch.chdir(tmp_path)
    cfg = load_rl_config("8ratio_v1_trl")
    with pytest.raises(UserError, match=r"set data\.train_files=\[path/to/file\.parquet\]"):
        load_split(cfg.data, "train")
    with pytest.raises(UserError, match=r"validation problems: set data\.val_files="):
        load_split(cfg.data, "val")
    cfg = load_rl_config("8ratio_v1_trl", ["data.train_files=[]", "data.val_files=[]"])
    assert len(load_split(cfg.data, "train")) == 16 and load_split(cfg.data, "val") == []
    verl = yaml.safe_load((RECIPE_DIR / "8ratio_v1.yaml").read_text())["budgetthinker"]
    assert verl["data"]["train_files"] is None and verl["data"]["val_files"] is None


def test_trl_release_recipe_matches_the_verl_recipe():
    """8ratio_v1_trl.yaml repeats the release recipe for TRL; it must not drift from verl's."""
    verl = yaml.safe_load((RECIPE_DIR / "8ratio_v1.yaml").read_text())
    trl = load_rl_config("8ratio_v1_trl")
    bt, rollout = verl["budgetthinker"], verl["actor_rollout_ref"]["rollout"]
    assert trl.curriculum.budgets == bt["curriculum"]["budgets"]
    assert trl.curriculum.validation_budget == bt["curriculum"]["validation_budget"]
    assert trl.curriculum.seed == bt["curriculum"]["seed"]
    assert trl.trainer.epochs == bt["epochs"]
    # one shape: the budget-aware rollout and the data have the same keys and values on both
    from dataclasses import asdict, fields

    from budgetthinker.rl.config import BudgetRolloutConfig

    shared = [f.name for f in fields(BudgetRolloutConfig)]
    assert sorted(bt["rollout"]) == sorted(shared)
    assert {k: asdict(trl.rollout)[k] for k in shared} == bt["rollout"]
    assert asdict(trl.data) == {**bt["data"], "synthetic": asdict(trl.data)["synthetic"]}
    assert trl.rollout.n == rollout["n"] and trl.rollout.top_p == rollout["top_p"]
    assert trl.rollout.max_prompt_length == verl["data"]["max_prompt_length"]
    assert trl.rollout.max_response_length == verl["data"]["max_response_length"]
    assert trl.trainer.rollout_batch_size == verl["data"]["train_batch_size"]
    actor = verl["actor_rollout_ref"]["actor"]
    assert trl.trainer.global_batch_size == actor["ppo_mini_batch_size"]
    assert trl.trainer.kl_coef == actor["kl_loss_coef"]
    # lr 1e-6, weight decay 1e-2 and temperature 1.0 are verl's defaults (checked against verl's
    # composed config in tests/rl/test_verl_launch.py).
    assert (trl.trainer.lr, trl.trainer.weight_decay, trl.rollout.temperature) == (1e-6, 1e-2, 1.0)
