"""Evaluation backend `openai` against `budgetthinker serve` (the session's `vllm_server`):
the same greedy samples as `backend=vllm` offline, resuming after a kill, and the bad inputs a
user can give, each one line naming the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from budgetthinker.config import load_config
from budgetthinker.errors import UserError
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.engine_config import EngineConfig
from budgetthinker.evaluation.results import record_key
from budgetthinker.evaluation.runner import run_eval
from budgetthinker.patches.openai_backend import OpenAIBackend
from budgetthinker.patches.serve import free_port
from tests.evaluation.test_runner import DEFAULT, kill_after_two_samples, read, tiny

SAME = ("text", "output_tokens", "thinking_tokens", "control_tokens", "predicted", "correct",
        "finished_thinking", "suffix_forced")  # fmt: skip


def sample_key(record: dict) -> tuple:
    return record["method"], record["budget"], record["problem_id"], record["sample"]


@pytest.mark.slow
@pytest.mark.vllm
def test_same_samples_as_offline_vllm(vllm_server, vllm_backend, tmp_path):
    """Same sweep (control and no-tip methods, two budgets, two-stage) on both backends."""
    sweep = ("methods=[control,withoutremaining]", "two_stage=true")
    served = run_eval(tiny(tmp_path / "o", "backend=openai", f"endpoint={vllm_server}", *sweep))
    offline = run_eval(tiny(tmp_path / "v", "backend=vllm", *sweep), backend=vllm_backend)
    a = {sample_key(r): r for r in read(served)}
    b = {sample_key(r): r for r in read(offline)}
    assert a.keys() == b.keys() and len(a) == 12
    assert sum(r["control_tokens"] for r in a.values()) > 0  # forcing went through vllm_xargs
    for key, r in a.items():
        assert r["backend"] == "openai"
        assert {k: r[k] for k in SAME} == {k: b[key][k] for k in SAME}, key


@pytest.mark.slow
@pytest.mark.vllm
def test_killed_run_resumes(vllm_server, tmp_path):
    """SIGKILL the eval CLI after its first chunk is saved; the rerun neither loses nor repeats
    a sample."""
    samples = tmp_path / "default" / "samples.jsonl"
    args = [
        sys.executable, "-m", "budgetthinker.cli", "eval", "--config", str(DEFAULT),
        f"output_dir={tmp_path}", "budgets=[16,24,32]", "data.synthetic.n=2",
        "methods=[control]", "chunk_size=2", "grading.workers=1", "backend=openai",
        f"endpoint={vllm_server}", "concurrency=2",
    ]  # fmt: skip
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    saved = kill_after_two_samples(args, env, samples)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = samples.read_text().splitlines(keepends=True)
    assert lines[: len(saved)] == saved
    keys = [record_key(json.loads(line)) for line in lines]
    assert len(keys) == len(set(keys)) == 6


def test_unknown_engine_key_names_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'engine.tp'.*tensor_parallel_size"):
        load_config(EvalConfig, DEFAULT, [f"output_dir={tmp_path}", "engine.tp=2"])


def test_engine_options_reach_vllm(tmp_path):
    cfg = load_config(
        EvalConfig, DEFAULT,
        [f"output_dir={tmp_path}", "engine.gpu_memory_utilization=0.8", "engine.dtype=bfloat16",
         "engine.enable_prefix_caching=false", "engine.max_model_len=4096"],
    )  # fmt: skip
    assert cfg.engine.vllm_kwargs() == {
        "enable_prefix_caching": False, "gpu_memory_utilization": 0.8, "dtype": "bfloat16",
    }  # fmt: skip
    assert cfg.max_model_len == 4096


def test_more_tensor_parallel_gpus_than_visible():
    with pytest.raises(UserError, match=r"tensor_parallel_size=4 needs that many GPUs but 1"):
        EngineConfig(tensor_parallel_size=4).check_devices(visible=1)
    EngineConfig(tensor_parallel_size=2).check_devices(visible=2)


def test_data_parallel_points_to_the_server():
    with pytest.raises(UserError, match="budgetthinker serve MODEL -- --data-parallel-size 2"):
        EngineConfig(data_parallel_size=2).check_devices(visible=2)


def test_unreachable_endpoint():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(UserError, match=f"cannot reach .* at {url}.*budgetthinker serve"):
        OpenAIBackend(url)


def test_missing_api_key_variable(monkeypatch):
    monkeypatch.delenv("BT_TEST_KEY", raising=False)
    with pytest.raises(UserError, match="api_key_env=BT_TEST_KEY .* not set; export BT_TEST_KEY"):
        OpenAIBackend("http://127.0.0.1:9", api_key_env="BT_TEST_KEY")


def test_openai_backend_needs_an_endpoint(tmp_path):
    with pytest.raises(UserError, match="backend=openai needs endpoint="):
        load_config(EvalConfig, DEFAULT, [f"output_dir={tmp_path}", "backend=openai"])


@pytest.mark.slow
@pytest.mark.parametrize("change", ["endpoint", "grading.extraction=qwen"])
def test_resume_with_another_endpoint_or_extraction_is_refused(tmp_path, change):
    """Issue #21: such a resume ran and mixed samples of two servers (or two graders) in one
    file. Now it is refused in one line and the run folder stays byte for byte."""
    from tests.clirun import cli, eval_args, one_line, snapshot
    from tests.patches.fake_openai import FakeServer

    runs = tmp_path / "runs"
    with FakeServer("good") as first, FakeServer("good") as second:
        base = ("backend=openai", "retries=0")
        done = cli(*eval_args(runs, "e", *base, f"endpoint={first.url}"))
        assert done.returncode == 0, done.stderr[-2000:]
        before = snapshot(runs)
        extra = [f"endpoint={second.url}"] if change == "endpoint" else [
            f"endpoint={first.url}/v1/", change]  # the same server, spelt another way
        proc = cli(*eval_args(runs, "e", *base, *extra, "budgets=[16,24]"))
        key = change.split("=")[0]
        one_line(proc, f"already has results made with different {key}", "experiment=<name>")
        assert snapshot(runs) == before
        assert second.completions == 0


@pytest.mark.slow
def test_resume_at_the_same_endpoint_spelt_otherwise_runs(tmp_path):
    from tests.clirun import cli, eval_args
    from tests.patches.fake_openai import FakeServer

    runs = tmp_path / "runs"
    with FakeServer("good") as server:
        for endpoint, budgets in ((server.url, "[16]"), (server.url + "/v1/", "[16,24]")):
            proc = cli(*eval_args(runs, "e", "backend=openai", f"endpoint={endpoint}",
                                  f"budgets={budgets}"))  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-2000:]
    fingerprint = json.loads((runs / "e" / "fingerprint.json").read_text())
    assert fingerprint["endpoint"] == server.url
    assert len((runs / "e" / "samples.jsonl").read_text().splitlines()) == 4


def test_a_fingerprint_from_before_the_endpoint_key_is_completed(tmp_path):
    """Runs made before `endpoint` and `grading.extraction` were fingerprinted still resume:
    the values come from their config.yaml; a different one is refused."""
    import yaml

    from budgetthinker.evaluation.runner import _check_fingerprint, _fingerprint

    cfg = load_config(EvalConfig, DEFAULT, [f"output_dir={tmp_path}", "backend=openai",
                                            "endpoint=http://h:1"])  # fmt: skip
    old = {k: v for k, v in _fingerprint(cfg).items() if k != "endpoint"}
    (tmp_path / "fingerprint.json").write_text(json.dumps(old))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"backend": "openai",
                                                          "endpoint": "http://h:1/v1"}))
    _check_fingerprint(tmp_path, cfg)
    assert json.loads((tmp_path / "fingerprint.json").read_text())["endpoint"] == "http://h:1"
    (tmp_path / "fingerprint.json").write_text(json.dumps(old))
    other = load_config(EvalConfig, DEFAULT, [f"output_dir={tmp_path}", "backend=openai",
                                              "endpoint=http://h:2"])  # fmt: skip
    with pytest.raises(UserError, match="different endpoint"):
        _check_fingerprint(tmp_path, other)
