"""`bash scripts/release_pipeline.sh default --dry-run …`: every command printed, every config
checked — the RL recipe through verl's own schema and `validate_config` — and nothing trained.
Runs in the core suite when all three environments exist (`bash scripts/test.sh` sets them all
up first); skipped, naming the setup command, when one is missing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = {".venv": "core", ".venv-sft": "sft", ".venv-rl": "rl"}


@pytest.mark.slow
def test_release_dry_run_on_cpu(tmp_path):
    for env in (".venv", ".venv-sft", ".venv-rl"):
        if not (REPO / env / "bin" / "python").is_file():
            pytest.skip(f"needs {env}: bash scripts/setup_env.sh {STAGES[env]}")
    traces = tmp_path / "traces.jsonl"
    traces.write_text(json.dumps({"question": "1+1?", "response": "<think>\n2\n</think>\n"
                                  "**Final Answer**\\boxed{2}"}) + "\n")  # fmt: skip
    data = tmp_path / "data" / "math500"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    run = tmp_path / "run"
    cmd = ["bash", str(REPO / "scripts" / "release_pipeline.sh"), "default", "--dry-run",
           f"traces={traces}", f"run_dir={run}", f"eval.data_dir={tmp_path / 'data'}",
           # synthetic RL problems (rl.train_files=[]), enough for one 256-prompt batch
           "rl.train_files=[]", "rl.val_files=[]",
           "rl.overrides=[budgetthinker.data.synthetic.n=256]"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    out = done.stdout
    assert out.count("(would run)") == 7 and "FAILED" not in out
    assert out.count("check: ok:") == 5  # the second SFT run and the merge have nothing new
    assert "verl accepts 8ratio_v1" in out and "curriculum stream: 8 steps" in out
    assert "bash rl/8ratio_v1.sh actor_rollout_ref.model.path=" in out
    assert "| total |" in out  # the GPU-hour estimate
    assert not (run / "models").exists() and not (run / "sft").exists()
    assert not run.exists(), sorted(str(p) for p in run.rglob("*"))  # a dry run writes nothing
