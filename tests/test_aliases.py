"""The original environment variables: one table, one meaning in every stage."""

from __future__ import annotations

import pytest

from budgetthinker import aliases
from budgetthinker.errors import UserError


@pytest.fixture(autouse=True)
def _fresh_hints(monkeypatch):
    monkeypatch.setattr(aliases, "_hinted", set())


def test_remaining_means_the_same_in_every_stage():
    for value, force in (("8ratio", True), ("4ratio", True), ("remaining250", True),
                         ("default", False)):  # fmt: skip
        env = {"remaining": value}
        assert aliases.read("eval", env) == {"methods": ["control" if force else
                                                         "withoutremaining"]}  # fmt: skip
        tip = "control" if force else "default"
        assert aliases.read("trl", env) == {"rollout.force": force, "rollout.tip": tip}
        assert aliases.read("verl", env) == {
            "budgetthinker.rollout.force": force, "budgetthinker.rollout.tip": tip,
        }  # fmt: skip
    for stage in ("eval", "trl", "verl"):
        with pytest.raises(UserError, match="remaining='250'.*remaining=8ratio"):
            aliases.read(stage, {"remaining": "250"})


def test_stage_means_the_same_in_every_stage():
    assert aliases.read("eval", {"stage": "2"}) == {"two_stage": True}
    assert aliases.read("trl", {"stage": "1"}) == {"rollout.validation_two_stage": False}
    verl = aliases.read("verl", {"stage": "2"})
    assert verl == {"budgetthinker.rollout.validation_two_stage": True}
    for stage in ("eval", "trl", "verl"):
        for bad in ("0", "none", "3"):
            with pytest.raises(UserError, match="stage=2 for two-stage"):
                aliases.read(stage, {"stage": bad})


def test_tip_without_forcing_picks_the_method():
    env = {"remaining": "default", "tip": "prompt_v1"}
    assert aliases.read("eval", env) == {"methods": ["prompt_v1"]}
    assert aliases.read("eval", {"tip": "8ratio"}) == {"methods": ["control"]}
    both = aliases.read("eval", {"tip": "8ratio", "remaining": "8ratio"})
    assert both == {"methods": ["control"]}


def test_each_stage_reads_only_its_variables():
    env = {"MODEL_NAME_OR_PATH": "/a", "MODEL_PATH": "/b", "budget": "100,200",
           "special_token_loss": "T10", "DATA_NAME": "math500, aime24",
           "tip": "prompt_v1"}  # fmt: skip
    assert aliases.read("eval", env) == {
        "model": "/a", "budgets": [100, 200], "data.benchmarks": ["math500", "aime24"],
        "methods": ["prompt_v1"],
    }  # fmt: skip
    assert aliases.read("trl", env) == {"model": "/b"}
    assert aliases.read("verl", env) == {"actor_rollout_ref.model.path": "/b"}
    assert aliases.read("sft", env) == {"special_token_loss": "T10"}
    assert aliases.read("eval", {"remaining": ""}) == {}  # empty = unset


def test_a_hint_names_the_key_once(capsys):
    aliases.read("eval", {"remaining": "8ratio"})
    aliases.read("eval", {"remaining": "8ratio"})
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "[budgetthinker] remaining=8ratio (an original environment variable) → "
        "methods=[control]; prefer that recipe key or key=value override"
    ]


def test_every_variable_is_in_the_manual():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = [a.var for a in aliases.ALIASES if f"`{a.var}`" not in page]
    assert not missing, missing
