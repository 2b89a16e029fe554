"""reasoning-gym tasks as benchmarks: a real sweep over two tasks on the embedded model, each
sample carrying reasoning-gym's own verdict; the report's agreement section; one-line errors."""

from __future__ import annotations

import json
import re

import pytest

from budgetthinker.config import build, load_config
from budgetthinker.errors import UserError
from budgetthinker.evaluation.comparison import verifier_section
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.datasets import DataConfig, load_problems
from budgetthinker.evaluation.runner import run_eval
from tests.clirun import RECIPE

reasoning_gym = pytest.importorskip("reasoning_gym")

TASKS = ["rg:basic_arithmetic", "rg:gsm_symbolic"]


def gym_data(**rg) -> DataConfig:
    return build(DataConfig, {"benchmarks": list(rg.pop("benchmarks", TASKS)), "rg": rg})


def test_problems_are_reasoning_gyms_own():
    cfg = gym_data(basic_arithmetic={"size": 3, "seed": 5, "level": 0}, gsm_symbolic={"size": 2})
    problems = load_problems(cfg)
    assert [p.benchmark for p in problems] == [TASKS[0]] * 3 + [TASKS[1]] * 2
    # the same problems reasoning-gym itself makes from those settings (level 0 of the
    # curriculum: 2 terms of 1 digit)
    theirs = reasoning_gym.create_dataset(
        "basic_arithmetic", size=3, seed=5, min_terms=2, max_terms=2, min_digits=1, max_digits=1
    )
    assert [(p.question, p.answer) for p in problems[:3]] == [
        (e["question"], e["answer"]) for e in theirs
    ]
    assert [p.id for p in problems[:3]] == [f"basic_arithmetic-5-{i}" for i in range(3)]
    for problem in problems:
        assert problem.system_line  # our grader reads \boxed{}
        assert problem.verify(problem.answer) == 1.0
        assert problem.verify("not a number") == 0.0
        assert problem.verify(None) == 0.0


def test_settings_override_the_level_and_the_limit_applies():
    settings = {"max_terms": 3, "operators": ["+"], "allow_negation": False,
                "allow_parentheses": False}  # fmt: skip
    cfg = gym_data(
        benchmarks=["rg:basic_arithmetic"],
        basic_arithmetic={"size": 6, "level": 0, "settings": settings},
    )
    cfg.limit = 4
    problems = load_problems(cfg)
    assert len(problems) == 4
    # level 0: one-digit numbers; the settings: 2 or 3 terms (level 0 alone has 2), only +
    for p in problems:
        assert re.fullmatch(r"Calculate \d( \+ \d){1,2}\.", p.question), p.question
        assert int(p.answer) == sum(map(int, re.findall(r"\d", p.question)))


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"benchmarks": ["rg:basic_arithmetics"]}, ["rg:basic_arithmetics", "basic_arithmetic",
                                                    "gsm_symbolic", "chain_sum"]),
        ({"benchmarks": ["rg:basic_arithmetic"], "rg": {"basic_arithmetic": {"settings": {
            "max_term": 3}}}}, ["max_term", "max_terms", "min_digits", "operators"]),
        ({"benchmarks": ["rg:basic_arithmetic"], "rg": {"basic_arithmetic": {"sise": 3}}},
         ["sise", "size", "seed", "level", "settings"]),
        ({"benchmarks": ["rg:basic_arithmetic"], "rg": {"basic_arithmetic": {"settings": {
            "min_terms": 4, "max_terms": 2}}}}, ["max_terms must be >= min_terms"]),
        ({"benchmarks": ["synthetic"], "rg": {"gsm_symbolic": {}}}, ["rg:gsm_symbolic"]),
        ({"benchmarks": ["rg:gsm_symbolic"], "rg": {"gsm_symbolic": {"level": 1}}},
         ["no reasoning-gym curriculum", "basic_arithmetic"]),
    ],
)
def test_bad_task_or_setting_is_one_line_naming_the_valid_ones(data, needles):
    with pytest.raises(UserError) as raised:
        build(DataConfig, data, "data")
    message = str(raised.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_the_cli_error_is_one_line(capsys):
    from budgetthinker.cli import main

    assert main(["eval", "--config", str(RECIPE), "data.benchmarks=[rg:nope]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown reasoning-gym task rg:nope" in err[0], err
    assert "basic_arithmetic" in err[0] and "zebra_puzzles" in err[0]


@pytest.mark.slow
def test_sweep_over_two_tasks_records_the_verifiers_verdict(tmp_path, hf_backend):
    cfg = load_config(EvalConfig, RECIPE, [
        f"output_dir={tmp_path}", "experiment=gym", "methods=[control]", "budgets=[16,32]",
        f"data.benchmarks=[{','.join(TASKS)}]", "data.rg.basic_arithmetic.size=3",
        "data.rg.basic_arithmetic.level=0", "data.rg.gsm_symbolic.size=3", "grading.workers=1",
    ])  # fmt: skip
    out = run_eval(cfg, backend=hf_backend)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 3 * 2
    assert {r["benchmark"] for r in records} == set(TASKS)
    # each verdict is reasoning-gym's score of the answer our extraction found, recomputed here
    # from reasoning-gym alone
    datasets = {
        "rg:basic_arithmetic": reasoning_gym.create_dataset(
            "basic_arithmetic", size=3, seed=0, min_terms=2, max_terms=2, min_digits=1,
            max_digits=1,
        ),
        "rg:gsm_symbolic": reasoning_gym.create_dataset("gsm_symbolic", size=3, seed=0),
    }  # fmt: skip
    for r in records:
        dataset = datasets[r["benchmark"]]
        entry = dataset[int(r["problem_id"].rsplit("-", 1)[1])]
        assert r["gold"] == entry["answer"]
        assert r["verifier"] == "reasoning_gym"
        assert r["verifier_score"] == dataset.score_answer(r["predicted"], entry)
        assert r["verifier_correct"] == (r["verifier_score"] == 1.0)
    report = (out / "report.md").read_text()
    assert "## Verifier agreement" in report
    differ = sum(r["verifier_correct"] != r["correct"] for r in records)
    assert (f"{differ} of 12 samples disagree." if differ else "All 12 samples agree.") in report


def test_the_report_lists_disagreements():
    base = {"method": "control", "benchmark": "rg:basic_arithmetic", "budget": 16, "gold": "3",
            "verifier": "reasoning_gym"}  # fmt: skip
    records = [
        {**base, "problem_id": "a", "predicted": "3", "correct": True, "verifier_score": 1.0,
         "verifier_correct": True},
        {**base, "problem_id": "b", "predicted": "(3) |x", "correct": True,
         "verifier_score": 0.25, "verifier_correct": False},
        {**base, "benchmark": "synthetic", "problem_id": "c", "predicted": "1", "correct": False},
    ]  # fmt: skip
    md = "\n".join(verifier_section(records))
    assert "1 of 2 samples disagree." in md  # the synthetic record has no verifier
    assert "| control | rg:basic_arithmetic | 16 | 2 | 100.0% | 50.0% | 1 |" in md
    assert "| b | 3 | (3) \\|x | correct | 0.25 |" in md
    assert verifier_section(records[2:]) == []
    # runs compared by `budgetthinker report` stay apart
    two = [{**r, "run": run} for run in ("base", "sft") for r in records]
    md = "\n".join(verifier_section(two))
    assert "2 of 4 samples disagree." in md
    assert "| base: control | rg:basic_arithmetic | 16 | 2 |" in md
    assert "| sft: control | rg:basic_arithmetic | 16 | 2 |" in md
