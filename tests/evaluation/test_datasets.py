"""Benchmark loading: synthetic, local Qwen2.5-Math-style JSONL, and clear errors."""

from __future__ import annotations

import json

import pytest

from budgetthinker.errors import UserError
from budgetthinker.evaluation.datasets import DataConfig, SyntheticConfig, load_problems
from budgetthinker.synthetic import make_problem, synthetic_problems


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_synthetic_is_deterministic_and_exact():
    a = synthetic_problems(20, seed=3)
    assert a == synthetic_problems(20, seed=3)
    assert a != synthetic_problems(20, seed=4)
    for p in a:
        # the last reasoning step states the answer the question asks for
        assert p.steps[-1].split(" has ")[1].split()[0] == p.answer
        assert int(p.answer) >= 0
    assert make_problem(3, 7) == a[7]  # any problem alone, without generating the others


def test_synthetic_benchmark_with_limit_and_offset():
    cfg = DataConfig(benchmarks=["synthetic"], synthetic=SyntheticConfig(n=10, seed=1))
    assert len(load_problems(cfg)) == 10
    cfg = DataConfig(
        benchmarks=["synthetic"], limit=3, offset=2, synthetic=SyntheticConfig(n=10, seed=1)
    )
    problems = load_problems(cfg)
    assert [p.id for p in problems] == ["synthetic-1-2", "synthetic-1-3", "synthetic-1-4"]


def test_local_layouts(tmp_path):
    write_jsonl(
        tmp_path / "math500" / "test.jsonl",
        [
            {
                "problem": "Return your final response within \\boxed{}. What is 1+1?",
                "answer": "2",
                "unique_id": "a",
            }
        ],
    )
    write_jsonl(
        tmp_path / "gsm8k" / "test.jsonl",
        [{"question": "Q?", "answer": "steps\n#### 1,234", "idx": 0}],
    )
    write_jsonl(tmp_path / "amc23" / "test.jsonl", [{"id": 0, "question": "Q?", "answer": 27.0}])
    write_jsonl(
        tmp_path / "minerva_math" / "test.jsonl", [{"problem": "Q?", "solution": "so \\boxed{4.5}"}]
    )
    write_jsonl(
        tmp_path / "olympiadbench" / "test.jsonl",
        [{"id": 1, "question": "Q?", "final_answer": ["1", "2"], "is_multiple_answer": True}],
    )
    cfg = DataConfig(
        benchmarks=["math500", "gsm8k", "amc23", "minerva_math", "olympiadbench"],
        data_dir=str(tmp_path),
    )
    problems = {p.benchmark: p for p in load_problems(cfg)}
    assert problems["math500"].question == "What is 1+1?"  # system line not doubled
    assert problems["math500"].answer == "2"
    assert problems["gsm8k"].answer.replace(",", "") == "1234"
    assert problems["amc23"].answer == "27"
    assert problems["minerva_math"].answer == "4.5"
    assert problems["olympiadbench"].answer == "1, 2"


def test_custom_file_with_field_names(tmp_path):
    write_jsonl(tmp_path / "mine.jsonl", [{"q": "What?", "a": "42"}])
    cfg = DataConfig(
        benchmarks=[str(tmp_path / "mine.jsonl")], question_field="q", answer_field="a"
    )
    [p] = load_problems(cfg)
    assert (p.question, p.answer) == ("What?", "42")


def test_errors(tmp_path):
    with pytest.raises(
        UserError, match="data file .*math500/test.jsonl not found; point data.data_dir"
    ):
        load_problems(DataConfig(benchmarks=["math500"], data_dir=str(tmp_path)))
    with pytest.raises(UserError, match="unknown benchmark 'mathh500'"):
        load_problems(DataConfig(benchmarks=["mathh500"]))
    write_jsonl(
        tmp_path / "aime24" / "test.jsonl", [{"problem": "Q", "answer": "1"}, {"problem": "Q2"}]
    )
    with pytest.raises(UserError, match="row 2"):
        load_problems(DataConfig(benchmarks=["aime24"], data_dir=str(tmp_path)))
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"problem": "wrong field", "answer": "#### 1"}])
    with pytest.raises(UserError, match="row 1: field 'question'"):
        load_problems(DataConfig(benchmarks=["gsm8k"], data_dir=str(tmp_path)))
    (tmp_path / "amc23").mkdir()
    (tmp_path / "amc23" / "test.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="amc23/test.jsonl:1 is not valid JSON"):
        load_problems(DataConfig(benchmarks=["amc23"], data_dir=str(tmp_path)))


def test_boxed_prefix_per_benchmark_matches_the_original(tmp_path):
    """The original's evaluation data starts MATH-500 problems with the system line and no other
    benchmark: so do the default prompts; `data.boxed_prefix` changes it per benchmark."""
    from budgetthinker.evaluation.methods import get_method
    from budgetthinker.prompts import SYSTEM_LINE

    write_jsonl(
        tmp_path / "math500" / "test.jsonl",
        [{"problem": SYSTEM_LINE + "What is 1+1?", "answer": "2"}],
    )
    write_jsonl(tmp_path / "aime24" / "test.jsonl", [{"problem": "What is 2+2?", "answer": "4"}])
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "3+3?", "answer": "#### 6"}])
    benchmarks = ["math500", "aime24", "gsm8k", "synthetic"]

    def prompts(**kw):
        cfg = DataConfig(benchmarks=benchmarks, data_dir=str(tmp_path), limit=1, **kw)
        method = get_method("prompt_v2")
        return {
            p.benchmark: method.prompt(None, p.question, 100, None, p.system_line)
            for p in load_problems(cfg)
        }

    default = prompts()
    assert default["math500"] == SYSTEM_LINE + "What is 1+1?" + tip_v2(100)
    assert default["aime24"] == "What is 2+2?" + tip_v2(100)
    assert default["gsm8k"] == "3+3?" + tip_v2(100)
    assert default["synthetic"].startswith(SYSTEM_LINE)
    every = prompts(boxed_prefix=["all"])
    assert all(text.startswith(SYSTEM_LINE) for text in every.values())
    assert every["aime24"].count(SYSTEM_LINE) == 1
    only_gsm8k = prompts(boxed_prefix=["gsm8k"])
    assert [b for b, t in only_gsm8k.items() if t.startswith(SYSTEM_LINE)] == ["gsm8k"]


def tip_v2(budget: int) -> str:
    return f"\n(Complete thinking within {budget} tokens or fewer)"
