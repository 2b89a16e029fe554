"""`budgetthinker lm-eval`: lm-eval's own CLI gets the arguments unchanged, and a mistake found
by our model is one error line through our error path (exit 2, no traceback)."""

from __future__ import annotations

import pytest

from tests.clirun import cli, lines

pytest.importorskip("lm_eval", reason="lm-eval is not installed (bash scripts/setup_env.sh)")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def test_the_arguments_are_lm_evals():
    proc = cli("lm-eval", "run", "--help", env=OFFLINE)  # -h/--help are lm-eval's, not ours
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: lm-eval run --model <model>" in proc.stdout
    assert "--gen_kwargs" in proc.stdout


def test_a_mistake_is_one_error_line(tmp_path):
    from budgetthinker.evaluation.lm_eval_metrics import task_yaml

    (tmp_path / "test.jsonl").write_text('{"question": "1 + 1?", "answer": "2"}\n')
    (tmp_path / "bt_one.yaml").write_text(task_yaml("bt_one", tmp_path / "test.jsonl"))
    proc = cli(
        "lm-eval", "--model", "budgetthinker", "--model_args", f"pretrained={tmp_path}/nosuch",
        "--tasks", "bt_one", "--include_path", tmp_path, env=OFFLINE,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = lines(proc.stderr)[-1]
    assert last.startswith("budgetthinker lm-eval: error: ") and "nosuch" in last, last
