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
        assert 0.0 <= step["reward"] <= 1.0
        assert step["forced_tokens"] > 0  # control tokens were forced into the rollouts
    final = tmp_path / "cpu_smoke" / "final"
    assert (final / "model.safetensors").is_file()
    assert load_spec(final).mode == "8ratio"
    assert (final / SPEC_FILENAME).is_file()


def test_engine_and_budget_errors():
    from budgetthinker.cli import main

    assert main(["rl", "--config", "cpu_smoke", "curriculum.budgets=[[75]]"]) == 2
    with pytest.raises(UserError, match="unknown RL experiment"):
        load_rl_config("nope")
