"""The CPU evidence experiment: its recipe, its stages and its report.

The two-step smoke of `bash scripts/experiment_cpu.sh` lives in tests/sft/ (it needs the sft
environment, which CI sets up after the core tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from budgetthinker.errors import UserError
from budgetthinker.pipelines.experiment_cpu import ARMS, Experiment, load, main, read_samples, table

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "experiments" / "cpu_evidence.yaml"


def _stages(tmp_path, *overrides):
    cfg = load(str(RECIPE), [f"run_dir={tmp_path}", *overrides])
    return {s.name: s for s in Experiment(cfg).stages()}


def test_stage_chain_outputs_feed_the_next_inputs(tmp_path):
    stages = _stages(tmp_path)
    assert list(stages) == [
        "prepare", "traces", "data_control", "sft_control", "eval_control", "eval_untrained",
        "data_plain", "sft_plain", "eval_plain", "comparison", "report",
    ]  # fmt: skip
    # the recipe's embedding init gets its own prepared model, which all three start from
    prepare = stages["prepare"].command
    assert prepare[-2:] == ["--embedding-init", "text"]
    base = prepare[prepare.index("--out") + 1]
    assert stages["prepare"].output == Path(base) / "config.json"
    traces = str(stages["traces"].output)
    for arm in ("control", "plain"):
        data, sft, ev = stages[f"data_{arm}"], stages[f"sft_{arm}"], stages[f"eval_{arm}"]
        assert data.command[data.command.index("--traces") + 1] == traces
        assert data.command[data.command.index("--model") + 1] == base
        assert f"model_name_or_path={base}" in sft.command
        assert f"dataset={arm}" in sft.command
        assert f"dataset_dir={data.output.parent}" in sft.command
        assert f"model={sft.output.parent}" in ev.command
    assert stages["eval_untrained"].command.count(f"model={base}") == 1
    assert "methods=[control,withoutremaining]" in stages["eval_untrained"].command
    runs = [str(stages[f"eval_{n}"].output.parent) for n in ("untrained", "control", "plain")]
    assert stages["comparison"].command[2:5] == runs


def test_mean_init_starts_from_the_embedded_default(tmp_path):
    stages = _stages(tmp_path, "embedding_init=mean")
    assert "prepare" not in stages
    assert stages["data_control"].command[stages["data_control"].command.index("--model") + 1] == (
        "default"
    )
    assert "model_name_or_path=default" in stages["sft_plain"].command
    assert "model=default" in stages["eval_untrained"].command


def test_arms_differ_only_in_data_and_method(tmp_path):
    stages = _stages(tmp_path)
    control, plain = stages["sft_control"].command, stages["sft_plain"].command

    def same(cmd):  # everything but the arm's own dataset and output folder
        return [c for c in cmd if not c.startswith(("dataset=", "output_dir="))]

    assert same(control) == same(plain)
    assert "max_steps=24" in control and "seed=0" in control
    assert stages["data_control"].command[-2:] == ["--control", "tokens"]
    assert stages["data_plain"].command[-4:] == ["--control", "none", "--tip", "withoutremaining"]
    assert "methods=[control]" in stages["eval_control"].command
    assert "methods=[withoutremaining]" in stages["eval_plain"].command
    assert [a.method for a in ARMS] == ["control", "withoutremaining"]


def test_overrides_reach_the_commands(tmp_path):
    stages = _stages(tmp_path, "sft.max_steps=2", "eval.budgets=[64,128]", "eval.problems=3",
                     "traces.checks=[1,2]", "sft.overrides=[learning_rate=1e-5]")  # fmt: skip
    assert "max_steps=2" in stages["sft_plain"].command
    assert "learning_rate=1e-5" in stages["sft_control"].command
    assert "budgets=[64,128]" in stages["eval_plain"].command
    assert "data.synthetic.n=3" in stages["eval_untrained"].command
    assert stages["traces"].command[-2:] == ["--checks", "1:2"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sft.max_step=2", "unknown config key 'sft.max_step'"),
        ("sft.max_steps=0", "max_steps"),
        ("traces.checks=[3,1]", "traces.checks"),
        ("eval.budgets=[0]", "eval.budgets"),
        ("budget_rule=v3", "budget_rule"),
        ("embedding_init=zeros", "embedding_init must be mean or text"),
    ],
)
def test_bad_recipe_values_name_the_key(tmp_path, override, message):
    with pytest.raises(UserError, match=message.replace("[", "\\[")):
        load(str(RECIPE), [f"run_dir={tmp_path}", override])


def test_dry_run_checks_both_recipes_and_runs_nothing(tmp_path, capsys):
    assert main(["--config", str(RECIPE), "--dry-run", f"run_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert out.count("check: ok:") == 5  # two SFT stages, three evaluations
    assert "full fine-tuning, batch 4" in out and "backend hf" in out
    assert not (tmp_path / "run").exists()
    assert main(["--config", str(RECIPE), "sft.recipe=nope.yaml", "--dry-run"]) == 2


def test_report_table_from_samples(tmp_path):
    records = [
        {"method": "control", "budget": 100, "sample": 0, "correct": c, "thinking_tokens": t,
         "output_tokens": t + 9, "finished_thinking": f, "think_end_count": int(f),
         "gen_seconds": 1.0}
        for c, t, f in [(True, 90, True), (False, 120, True), (False, 101, False)]
    ]  # fmt: skip
    samples = tmp_path / "eval" / "control" / "samples.jsonl"
    samples.parent.mkdir(parents=True)
    samples.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"torn')
    assert len(read_samples(samples)) == 3
    exp = Experiment(load(str(RECIPE), [f"run_dir={tmp_path}"]))
    [row] = exp.rows()
    assert row["model"] == ARMS[0].label and row["budget"] == 100
    # within B: only the first ended thinking by itself within 100 tokens
    assert row["within_budget"] == pytest.approx(1 / 3)
    assert row["rel_deviation"] == pytest.approx((0.10 + 0.20 + 0.01) / 3)
    assert row["accuracy"] == pytest.approx(1 / 3) and row["finished"] == pytest.approx(2 / 3)
    assert "| 100 | (a) SFT with control tokens | control | 0.33 | 0.10 | 0.33 |" in table([row])


@pytest.mark.slow
def test_think_end_logprob_is_the_teacher_forced_value_and_text_init_raises_it(tmp_path):
    """The report's log p(`</think>`) on the real embedded model: equal to a direct forward pass
    over the row, and far higher with `--embedding-init text` than with `mean` — the finding of
    run 1 (docs/logs/experiment_cpu_2026-11-29.md) that made the recipe use `text`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from budgetthinker.pipelines.experiment_cpu import think_end_logprobs
    from budgetthinker.preparation.models import default_prepared_dir
    from budgetthinker.preparation.prepare import prepare_model
    from budgetthinker.synthetic import synthetic_traces

    rows = []
    for i, trace in enumerate(synthetic_traces(3, 5, 2, (0, 1))):
        response = trace["response"]  # thinking + `</think>` + the final answer
        assert "</think>" in response
        rows.append({"instruction": trace["question"] + f" (budget {100 * (i + 1)})",
                     "output": response if response.startswith("<think>")
                     else "<think>\n" + response})  # fmt: skip
    mean = think_end_logprobs("default", {"rows": rows})["rows"]

    path = default_prepared_dir()
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    end, direct = tok.convert_tokens_to_ids("</think>"), []
    for row in rows:
        text = tok.apply_chat_template([{"role": "user", "content": row["instruction"]}],
                                       tokenize=False, add_generation_prompt=True)  # fmt: skip
        ids = tok.encode(text + row["output"], add_special_tokens=False)
        cut = ids.index(end)
        with torch.no_grad():
            direct.append(lm(torch.tensor([ids[:cut]])).logits[0, -1].log_softmax(-1)[end].item())
    assert mean == pytest.approx(sum(direct) / len(direct), abs=1e-4)

    text_dir = tmp_path / "text"
    prepare_model("default", "8ratio", text_dir, quiet=True, embedding_init="text")
    text = think_end_logprobs(str(text_dir), {"rows": rows})["rows"]
    assert mean < -12 and text > mean + 4, (mean, text)
