"""The evaluation runner end to end on the embedded model: outputs, resume, both backends."""

from __future__ import annotations

import json
import os
import shutil
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
from tests.evaluation.ceiling import assert_within_budget

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "configs" / "eval" / "default.yaml"

pytestmark = pytest.mark.slow


def tiny(tmp_path, *extra) -> EvalConfig:
    """The default recipe, smaller: two single-round methods (s1 has its own tests below)."""
    return load_config(
        EvalConfig,
        DEFAULT,
        [f"output_dir={tmp_path}", "budgets=[16,32]", "data.synthetic.n=3",
         "methods=[control,withoutremaining]", *extra],
    )  # fmt: skip


def read(out_dir: Path) -> list[dict]:
    """The saved samples, each checked against its method's thinking budget."""
    lines = (out_dir / "samples.jsonl").read_text().splitlines()
    return assert_within_budget(json.loads(line) for line in lines)


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
    with pytest.raises(UserError, match="unknown method 's2'; choose from control, .*s1"):
        run_eval(tiny(tmp_path, "methods=[s2]"))
    with pytest.raises(UserError, match="method 's1' has no parameter 'wait'; its parameters"):
        run_eval(tiny(tmp_path, "methods=[{name: s1, wait: 2}]"))
    with pytest.raises(UserError, match="at least 8"):
        run_eval(tiny(tmp_path, "budgets=[4]"))


def kill_after_two_samples(args: list[str], env: dict, samples) -> list[str]:
    """Start the eval CLI `args`, SIGKILL it once `samples` holds two records, and return the
    saved lines (what a resume must neither lose nor repeat)."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_text().count("\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return samples.read_text().splitlines(keepends=True)


def test_resume_after_kill(tmp_path, prepared_model):
    """SIGKILL the CLI after its first chunk is saved; the rerun neither loses nor repeats."""
    out = tmp_path / "default"
    args = [
        sys.executable, "-m", "budgetthinker.cli", "eval", "--config", str(DEFAULT),
        f"output_dir={tmp_path}", "budgets=[16,24,32]", "data.synthetic.n=2",
        "methods=[withoutremaining]", "chunk_size=2", "grading.workers=1",
    ]  # fmt: skip
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    samples = out / "samples.jsonl"
    saved = kill_after_two_samples(args, env, samples)
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


def test_prompt_only_methods_take_any_budget(tmp_path, prepared_model):
    """Budgets are checked per method before the model loads: 4 is below 8ratio's minimum for
    `control`, but a prompt-only method runs with it."""
    with pytest.raises(UserError, match="at least 8"):
        run_eval(tiny(tmp_path, "budgets=[4]", "methods=[withoutremaining,control]"))
    assert not (tmp_path / "default" / "samples.jsonl").exists()
    cfg = tiny(tmp_path, "budgets=[4]", "methods=[withoutremaining]", "data.synthetic.n=1")
    assert len(read(run_eval(cfg))) == 1


def test_unprepared_model_two_stage_as_a_second_request(tmp_path):
    """`compat: seed` on a model without a spec: the suffix is appended to every output and a
    second request answers; thinking is counted up to the recipe's `</think>`."""
    from transformers import AutoTokenizer

    from budgetthinker.delimiters import find_all
    from budgetthinker.preparation.embedded_model import default_base_dir

    base = default_base_dir()
    cfg = tiny(tmp_path, f"model={base}", "methods=[withoutremaining]", "budgets=[12]",
               "data.synthetic.n=2", "two_stage=true", "compat=[seed]",
               "delimiters={start: <think>, end: </think>}")  # fmt: skip
    records = read(run_eval(cfg))
    tok = AutoTokenizer.from_pretrained(base)
    end = tok.encode("</think>", add_special_tokens=False)
    assert len(end) > 1  # plain text for this model: several tokens
    for r in records:
        ids = tok.encode(r["text"], add_special_tokens=False)
        assert r["rounds"] == 2 and r["delimiters"] == "recipe"
        assert "</think>\n\n**Final Answer**\\boxed" in r["text"]
        assert r["thinking_tokens"] == find_all(ids, end)[0]
        assert r["think_end_count"] == len(find_all(ids, end)) >= 1
        assert r["finished_thinking"] is True
    plain = tiny(tmp_path, f"model={base}", "methods=[withoutremaining]", "budgets=[12]",
                 "data.synthetic.n=1", "experiment=nodelims")  # fmt: skip
    [r] = read(run_eval(plain))
    assert r["finished_thinking"] is None and r["delimiters"] == "none"
    summary = (tmp_path / "nodelims" / "summary.md").read_text()
    assert "| withoutremaining | synthetic | 12 |" in summary
    report = (tmp_path / "nodelims" / "report.md").read_text()
    assert "No thinking delimiters known" in report


S1 = "{name: s1, thinking_n_ignore: 2, thinking_n_ignore_str: Wait, max_gen_toks: 4}"
S1_ARGS = [f"methods=[{S1}]", "budgets=[24]", "data.synthetic.n=4", "chunk_size=2",
           "grading.workers=1"]  # fmt: skip


def test_resume_in_the_middle_of_a_multi_round_method(tmp_path, prepared_model):
    """SIGKILL while s1 samples are between rounds: the rerun replays the journalled rounds, so
    no round is generated twice and no sample is lost or repeated."""
    out = tmp_path / "default"
    args = [sys.executable, "-m", "budgetthinker.cli", "eval", "--config", str(DEFAULT),
            f"output_dir={tmp_path}", *S1_ARGS]  # fmt: skip
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "rounds.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    samples = out / "samples.jsonl"
    saved = samples.read_text().splitlines() if samples.exists() else []
    assert len(saved) < 4
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    records = read(out)
    assert len({record_key(r) for r in records}) == len(records) == 4
    rounds: dict[str, int] = {}
    for line in journal.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # torn by the kill
        rounds[entry["key"]] = rounds.get(entry["key"], 0) + 1
    assert sorted(rounds.values()) == sorted(r["rounds"] for r in records)  # none twice
    assert any(r["rounds"] > 2 for r in records)  # "Wait" rounds happened


def test_samples_do_not_depend_on_batching_or_resume(tmp_path, hf_backend):
    sampled = ["methods=[withoutremaining]", "budgets=[16]", "data.synthetic.n=3",
               "sampling.temperature=1.0", "sampling.n=2"]  # fmt: skip
    whole = read(run_eval(tiny(tmp_path, *sampled, "experiment=a"), backend=hf_backend))
    small = read(run_eval(tiny(tmp_path, *sampled, "experiment=b", "batch_size=1",
                               "chunk_size=1"), backend=hf_backend))  # fmt: skip
    # A run killed after its first samples were saved: resume it (rounds.jsonl left out too).
    shutil.copytree(tmp_path / "a", tmp_path / "c", ignore=shutil.ignore_patterns(".lock*"))
    lines = (tmp_path / "c" / "samples.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "c" / "samples.jsonl").write_text("".join(lines[:2]))
    resumed = read(run_eval(tiny(tmp_path, *sampled, "experiment=c"), backend=hf_backend))
    text = {record_key(r)[4:]: r["text"] for r in whole}
    assert {record_key(r)[4:]: r["text"] for r in small} == text
    assert {record_key(r)[4:]: r["text"] for r in resumed} == text
    assert len(set(text.values())) > 1


@pytest.mark.vllm
def test_vllm_samples_do_not_depend_on_chunking(tmp_path, vllm_backend):
    sampled = ["backend=vllm", "methods=[withoutremaining]", "budgets=[16]", "data.synthetic.n=3",
               "sampling.temperature=1.0", "sampling.n=2"]  # fmt: skip
    whole = read(run_eval(tiny(tmp_path, *sampled, "experiment=a"), backend=vllm_backend))
    small = read(run_eval(tiny(tmp_path, *sampled, "experiment=b", "chunk_size=1"),
                          backend=vllm_backend))  # fmt: skip
    text = {record_key(r)[4:]: r["text"] for r in whole}
    assert {record_key(r)[4:]: r["text"] for r in small} == text
    assert len(set(text.values())) > 1


CHECK = "{name: s1, thinking_n_ignore: 2, thinking_n_ignore_str: Let me check, max_gen_toks: 4}"


def test_s1_with_a_long_ignore_string_in_both_modes(tmp_path, hf_backend):
    """Every saved s1 sample keeps within B (read checks it); under compat: [s1] the record
    also holds the fork's returned text, which is what was graded."""
    args = [f"methods=[{CHECK}]", "budgets=[6,12]", "data.synthetic.n=3"]
    plain = read(run_eval(tiny(tmp_path, *args, "experiment=plain"), backend=hf_backend))
    fork = read(run_eval(tiny(tmp_path, *args, "experiment=fork", "compat=[s1]"),
                         backend=hf_backend))  # fmt: skip
    assert len(plain) == len(fork) == 6
    assert all("graded_text" not in r and r["thinking_budget"] == r["budget"] for r in plain)
    for r in fork:
        assert r["graded_as"].startswith("s1 fork") and "</think>" in r["graded_text"]
        forced = "Final Answer:" in r["text"]
        assert r["finished_thinking"] is (r["thinking_cut"] == 0 and not forced)
    assert any(r["thinking_cut"] for r in fork)  # the fork's rounds went past B


def test_grading_overlaps_the_next_chunks_generation(tmp_path, hf_backend, monkeypatch):
    """Chunk k's grading waits until chunk k + 1 has started generating: with grading run after
    each chunk (no overlap) the wait would time out and the run would fail."""
    import threading

    from budgetthinker.evaluation.grading import Grader

    calls, started = [], {}
    run = hf_backend.run

    def spy_run(requests, **sampling):
        started.setdefault(len(calls), threading.Event()).set()
        calls.append(len(requests))
        return run(requests, **sampling)

    grade_many = Grader.grade_many
    graded = []

    def waiting_grade_many(self, items, progress=False):
        k = len(graded)
        if k + 1 < 3:  # three chunks: the last one has nothing to overlap with
            assert started.setdefault(k + 1, threading.Event()).wait(120), k
        assert threading.current_thread() is not threading.main_thread()
        graded.append(len(items))
        return grade_many(self, items, progress)

    monkeypatch.setattr(hf_backend, "run", spy_run)
    monkeypatch.setattr(Grader, "grade_many", waiting_grade_many)
    cfg = tiny(tmp_path, "methods=[withoutremaining]", "budgets=[16]", "chunk_size=1",
               "grading.workers=1")  # fmt: skip
    records = read(run_eval(cfg, backend=hf_backend))
    assert calls == graded == [1, 1, 1]
    assert [r["problem_id"] for r in records] == sorted(r["problem_id"] for r in records)
