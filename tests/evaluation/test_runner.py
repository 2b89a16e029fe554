"""The evaluation runner end to end on the embedded model: outputs, resume, both backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from budgetthinker.config import load_config
from budgetthinker.errors import UserError
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.results import record_key
from budgetthinker.evaluation.runner import run_eval

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "configs" / "eval" / "default.yaml"

pytestmark = pytest.mark.slow


def tiny(tmp_path, *extra) -> EvalConfig:
    return load_config(
        EvalConfig,
        DEFAULT,
        [f"output_dir={tmp_path}", "budgets=[16,32]", "data.synthetic.n=3", *extra],
    )


def read(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, hf_backend):
    tmp = tmp_path_factory.mktemp("eval_hf")
    cfg = tiny(tmp)
    return cfg, run_eval(cfg, backend=hf_backend)


def test_default_recipe_outputs(hf_run, spec):
    _, out = hf_run
    records = read(out)
    assert len(records) == 3 * 2 * 2  # problems × methods × budgets
    assert len({record_key(r) for r in records}) == len(records)
    for r in records:
        assert r["thinking_tokens"] <= r["output_tokens"] <= r["budget"] + r["budget"] // 50
        assert isinstance(r["correct"], bool) and r["gold"].isdigit()
        if r["method"] == "withoutremaining":
            assert r["control_tokens"] == 0
    control = [r for r in records if r["method"] == "control"]
    assert any(r["control_tokens"] > 0 for r in control), "no control token was ever forced"
    summary = (out / "summary.md").read_text()
    assert summary.count("| control | synthetic |") == 2
    assert "| withoutremaining | synthetic | 32 |" in summary
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,backend,method,two_stage,benchmark,budget,problems")
    assert len(csv_lines) == 1 + 4
    for stem in ("accuracy", "thinking_tokens", "adherence"):
        png = out / "plots" / f"synthetic_{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "versions.json").read_text())["transformers"]
    assert "budgets:\n- 16\n- 32" in (out / "config.yaml").read_text()


def test_rerun_is_a_noop(hf_run, hf_backend):
    cfg, out = hf_run
    before = (out / "samples.jsonl").read_bytes()
    run_eval(cfg, backend=hf_backend)
    assert (out / "samples.jsonl").read_bytes() == before


def test_changed_settings_need_a_new_experiment(hf_run):
    cfg, _ = hf_run
    changed = tiny(Path(cfg.output_dir), "max_new_tokens=5")
    with pytest.raises(UserError, match="with different max_new_tokens; use a new experiment"):
        run_eval(changed)


@pytest.mark.vllm
def test_vllm_backend_gives_the_same_greedy_records(hf_run, vllm_backend, tmp_path):
    _, hf_out = hf_run
    cfg = tiny(tmp_path, "backend=vllm")
    out = run_eval(cfg, backend=vllm_backend)
    hf = {(r["method"], r["budget"], r["problem_id"]): r for r in read(hf_out)}
    vl = {(r["method"], r["budget"], r["problem_id"]): r for r in read(out)}
    assert hf.keys() == vl.keys()
    for key, r in vl.items():
        assert r["backend"] == "vllm"
        assert r["text"] == hf[key]["text"], key
        assert r["control_tokens"] == hf[key]["control_tokens"]


def test_control_method_needs_a_prepared_model(tmp_path):
    from budgetthinker.preparation.embedded_model import default_base_dir

    cfg = tiny(tmp_path, f"model={default_base_dir()}")
    with pytest.raises(UserError, match="needs a model with control tokens.*budgetthinker prepare"):
        run_eval(cfg)
    assert not (tmp_path / "default").exists()


def test_unknown_method_and_bad_budget(tmp_path, prepared_model):
    with pytest.raises(UserError, match="unknown method 's2'"):
        run_eval(tiny(tmp_path, "methods=[s2]"))
    with pytest.raises(UserError, match="at least 8"):
        run_eval(tiny(tmp_path, "budgets=[4]"))


def test_resume_after_kill(tmp_path, prepared_model):
    """SIGKILL the CLI after its first chunk is saved; the rerun neither loses nor repeats."""
    out = tmp_path / "default"
    args = [
        sys.executable, "-m", "budgetthinker.cli", "eval", "--config", str(DEFAULT),
        f"output_dir={tmp_path}", "budgets=[16,24,32]", "data.synthetic.n=2",
        "methods=[withoutremaining]", "chunk_size=2", "grading.workers=1",
    ]  # fmt: skip
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_text().count("\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = samples.read_text().splitlines(keepends=True)
    assert 2 <= len(saved) < 6
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = samples.read_text().splitlines(keepends=True)
    assert lines[: len(saved)] == saved  # finished samples kept as they were
    keys = [record_key(json.loads(line)) for line in lines]
    assert len(keys) == len(set(keys)) == 6  # nothing lost, nothing repeated


def test_sampling_several_samples(tmp_path, hf_backend):
    cfg = tiny(
        tmp_path,
        "budgets=[16]",
        "data.synthetic.n=2",
        "methods=[control]",
        "sampling.temperature=0.9",
        "sampling.n=3",
    )
    records = read(run_eval(cfg, backend=hf_backend))
    assert sorted((r["problem_id"], r["sample"]) for r in records) == [
        (f"synthetic-0-{i}", s) for i in range(2) for s in range(3)
    ]
    summary = (tmp_path / "default" / "summary.csv").read_text().splitlines()
    assert summary[1].split(",")[6:8] == ["2", "6"]  # problems, samples


def test_hub_dataset_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="could not load the Hugging Face dataset 'nobody/none'"):
        run_eval(tiny(tmp_path, "data.benchmarks=[nobody/none]"))


LAUNCHER = REPO / "evaluation" / "Eval.sh"
VENV_CLI = REPO / ".venv" / "bin" / "budgetthinker"


@pytest.mark.skipif(not VENV_CLI.exists(), reason="Eval.sh runs the repository's .venv")
def test_eval_sh_with_original_variables(tmp_path, prepared_model):
    env = {
        **os.environ,
        "remaining": "default",  # original variables: no forcing, prompt_v2 tip, one stage
        "tip": "prompt_v2",
        "stage": "1",
        "budget": "16",
    }
    proc = subprocess.run(
        ["bash", str(LAUNCHER), f"output_dir={tmp_path}", "data.synthetic.n=2", "experiment=sh"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read(tmp_path / "sh")
    assert {(r["method"], r["budget"], r["two_stage"]) for r in records} == {
        ("prompt_v2", 16, False)
    }
    assert "| prompt_v2 | synthetic | 16 |" in proc.stdout
