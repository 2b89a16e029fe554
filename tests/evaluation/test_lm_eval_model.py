"""The `budgetthinker` model in a real lm-evaluation-harness run: lm-eval's own CLI (through
`budgetthinker lm-eval`, in a subprocess) on a task YAML over a local JSONL, compared sample by
sample with our runner on the same problems and settings (the same backend, greedy)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from budgetthinker.config import build
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.runner import run_eval
from tests.clirun import cli

pytest.importorskip("lm_eval", reason="lm-eval is not installed (bash scripts/setup_env.sh)")
pytestmark = pytest.mark.slow

PROBLEMS = [
    ("What is 2 + 3?", "5"),
    ("Tom has 3 apples and buys 5 more bags with 4 apples each. How many apples does he have?",
     "23"),
    ("A train travels 60 km per hour for 3 hours. How far does it go?", "180"),
    ("What is 17 times 23? Explain step by step.", "391"),
]  # fmt: skip
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ADHERENCE = ("within_budget", "budget_deviation", "never_finished")
S1_FORK_KWARGS = (
    "max_tokens_thinking=24,thinking_n_ignore=1,thinking_n_ignore_str=Wait,max_gen_toks=16,"
    "scale_func_name=entropy_thresholding,threshold=0.5,decay_factor=0.9,last_k=-1"
)
S1_OURS = {
    "name": "s1", "max_tokens_thinking": 24, "thinking_n_ignore": 1,
    "thinking_n_ignore_str": "Wait", "max_gen_toks": 16,
    "scale_func": {"name": "entropy_thresholding", "threshold": 0.5, "decay_factor": 0.9,
                   "last_k": -1, "compat": ["hf_fork"]},
}  # fmt: skip
"""The same s1 setting in the recipe's words (the fork's names mean the fork's scaler rule)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """`<dir>/mini/test.jsonl` and a task YAML `bt_mini` over it, with the adherence metrics
    beside exact_match."""
    from budgetthinker.evaluation.lm_eval_metrics import task_yaml

    root = tmp_path_factory.mktemp("lm_eval_data")
    (root / "mini").mkdir()
    rows = [json.dumps({"question": q, "answer": a}) for q, a in PROBLEMS]
    (root / "mini" / "test.jsonl").write_text("\n".join(rows) + "\n")
    (root / "tasks").mkdir()
    (root / "tasks" / "bt_mini.yaml").write_text(task_yaml("bt_mini", root / "mini" / "test.jsonl"))
    return root


def lm_eval(data: Path, out: Path, model_args: str, gen_kwargs: str, *extra: str):
    """One `budgetthinker lm-eval` run; its results JSON and logged samples (by doc_id)."""
    proc = cli(
        "lm-eval", "--model", "budgetthinker", "--model_args", model_args,
        "--tasks", "bt_mini", "--include_path", data / "tasks", "--gen_kwargs", gen_kwargs,
        "--batch_size", "16", "--log_samples", "--output_path", out, *extra,
        env=OFFLINE,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (results,) = glob.glob(f"{out}/*/results_*.json")
    (samples,) = glob.glob(f"{out}/*/samples_bt_mini_*.jsonl")
    logged = [json.loads(line) for line in Path(samples).read_text().splitlines()]
    return json.loads(Path(results).read_text()), sorted(logged, key=lambda s: s["doc_id"])


def harness(data: Path, out: Path, model: Path, backend, method, budget: int) -> list[dict]:
    """Our runner on the same problems (no system line: the task's text is the whole turn)."""
    cfg = build(EvalConfig, {
        "model": str(model), "backend": backend.name, "methods": [method], "budgets": [budget],
        "batch_size": 16, "output_dir": str(out), "grading": {"workers": 0},
        "data": {"benchmarks": ["mini"], "data_dir": str(data), "question_field": "question",
                 "answer_field": "answer", "boxed_prefix": []},
    })  # fmt: skip
    lines = (run_eval(cfg, backend=backend) / "samples.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: int(r["problem_id"]))


def returned(text: str) -> str:
    """What the model returns for an output: the answer after `</think>` cut at `<|im_end|>`
    (the end-of-sequence text; the task's `until` is empty); thinking that never ended, whole."""
    head, end, answer = text.partition("</think>")
    return head + end + answer.split("<|im_end|>")[0] if end else text


def assert_same_samples(logged: list[dict], records: list[dict]) -> None:
    assert [s["doc_id"] for s in logged] == list(range(len(PROBLEMS)))
    for sample, record in zip(logged, records, strict=True):
        assert sample["resps"] == [[returned(record["text"])]]
        assert sample["output_tokens"] == record["output_tokens"]
        assert sample["thinking_tokens"] == record["thinking_tokens"]
        assert len(sample["control_positions"]) == record["control_tokens"]
        assert sample["thinking_rounds"] == record["rounds"]
        assert sample["never_finished"] == float(not record["finished_thinking"])
        budget = record.get("thinking_budget", record["budget"])
        assert sample["budget_deviation"] == pytest.approx(
            abs(record["thinking_tokens"] - budget) / budget
        )


def assert_adherence_reported(results: dict, logged: list[dict]) -> None:
    task = results["results"]["bt_mini"]
    assert "exact_match,none" in task
    for metric in ADHERENCE:
        mean = sum(s[metric] for s in logged) / len(logged)
        assert task[f"{metric},none"] == pytest.approx(mean), metric
    counts = [len(s["control_positions"]) for s in logged]
    assert task["control_positions,none"] == pytest.approx(sum(counts) / len(counts))
    assert results["higher_is_better"]["bt_mini"]["within_budget"] is True
    assert results["higher_is_better"]["bt_mini"]["budget_deviation"] is False


def test_control_tokens_through_lm_eval(data, tmp_path, prepared_model, hf_backend):
    results, logged = lm_eval(data, tmp_path / "lm", f"pretrained={prepared_model}",
                              "method=control,budget=32")  # fmt: skip
    records = harness(data, tmp_path / "ours", prepared_model, hf_backend, "control", 32)
    assert_same_samples(logged, records)
    assert_adherence_reported(results, logged)
    assert any(s["control_positions"] for s in logged), "no control token was forced"
    assert results["config"]["model"] == "budgetthinker"


def test_s1_in_the_forks_gen_kwargs(data, tmp_path, prepared_model, hf_backend):
    # as the forks' READMEs run it: --apply_chat_template (the method renders the same prompt)
    results, logged = lm_eval(data, tmp_path / "lm", f"pretrained={prepared_model}",
                              S1_FORK_KWARGS, "--apply_chat_template")  # fmt: skip
    records = harness(data, tmp_path / "ours", prepared_model, hf_backend, S1_OURS, 24)
    assert_same_samples(logged, records)
    assert_adherence_reported(results, logged)
    assert all(s["thinking_tokens"] <= 24 for s in logged)  # B is a ceiling
    assert all(s["thinking_rounds"] >= 2 for s in logged)  # thinking, then the answer


@pytest.mark.vllm
def test_control_tokens_through_lm_eval_on_vllm(data, tmp_path, prepared_model, vllm_backend):
    args = f"pretrained={prepared_model},backend=vllm,max_model_len=2048"
    results, logged = lm_eval(data, tmp_path / "lm", args, "method=control,budget=32")
    records = harness(data, tmp_path / "ours", prepared_model, vllm_backend, "control", 32)
    assert_same_samples(logged, records)
    assert_adherence_reported(results, logged)
