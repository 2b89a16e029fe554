"""CI smoke of `bash scripts/experiment_cpu.sh`: the whole CPU evidence experiment for real —
traces, both datasets, two LLaMA-Factory steps per arm, three evaluations, the report — with tiny
sizes. Runs in the core suite when `.venv` and `.venv-sft` exist (`bash scripts/test.sh` sets
every environment up before it runs the tests); skipped, naming the setup command, otherwise."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from budgetthinker.pipelines.experiment_cpu import ARMS

REPO = Path(__file__).resolve().parents[2]
STAGES = {".venv": "core", ".venv-sft": "sft", ".venv-rl": "rl"}


@pytest.mark.slow
def test_two_step_smoke_of_the_script(tmp_path):
    for env in (".venv", ".venv-sft"):
        if not (REPO / env / "bin" / "budgetthinker").is_file():
            pytest.skip(f"needs {env}: bash scripts/setup_env.sh {STAGES[env]}")
    run = tmp_path / "run"
    cmd = ["bash", str(REPO / "scripts" / "experiment_cpu.sh"), f"run_dir={run}",
           "traces.n=4", "traces.checks=[0,1]", "sft.max_steps=2", "eval.problems=1",
           "eval.budgets=[64]"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (run / "report.md").read_text()
    for label in ("untrained", ARMS[0].label, ARMS[1].label):
        assert f"| 64 | {label} |" in report
    assert "| sft_control |" in report and "| eval_plain |" in report  # stage wall times
    # log p(</think>) where the training thinking ends, for all three models on both datasets
    close = report.split("## Does the model write `</think>`", 1)[1].split("##", 1)[0]
    for label in ("untrained", ARMS[0].label, ARMS[1].label):
        cells = next(x for x in close.splitlines() if x.startswith(f"| {label} |")).split("|")
        assert all(float(c) < 0 for c in cells[2:4]), close
    assert (run / "evidence.png").stat().st_size > 0
    assert (run / "comparison" / "report.md").is_file()
    for arm in ("control", "plain"):
        state = json.loads((run / "models" / arm / "trainer_state.json").read_text())
        assert state["global_step"] == 2
        assert (run / "models" / arm / "budgetthinker_spec.json").is_file()
    control = [json.loads(x) for x in (run / "data" / "control.jsonl").read_text().splitlines()]
    plain = [json.loads(x) for x in (run / "data" / "plain.jsonl").read_text().splitlines()]
    assert [r["budget"] for r in control] == [r["budget"] for r in plain]
    assert all(r["output"].count("<remaining>") == 7 for r in control)
    assert not any("<remaining>" in r["output"] + r["instruction"] for r in plain)
    assert all(r["instruction"].endswith(f"within {r['budget']} tokens or fewer.)") for r in plain)
    # a rerun finds every stage done and runs nothing
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("skipped") == 11, again.stderr[-2000:]
