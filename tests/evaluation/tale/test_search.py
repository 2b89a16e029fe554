"""TALE's optimal budget search: the loop against a scripted answerer (exact β sequences, stop and
skip rules, batching, resume), and once for real on the embedded model."""

from __future__ import annotations

import json
import re

import pytest

from budgetthinker.errors import UserError
from budgetthinker.evaluation.tale.prompts import cot_prompt
from budgetthinker.evaluation.tale.search import SearchProblem, read_rows, search

_BUDGET = re.compile(r"use less than (\d+) tokens")


class Scripted:
    """A deterministic answerer: `rule(problem_id, β or None) -> (answer, tokens)`; records the
    budgets each call asked for (one list per round = per call)."""

    def __init__(self, rule, crash_after: int | None = None):
        self.rule, self.crash_after, self.calls = rule, crash_after, []

    def __call__(self, prompts: list[str]) -> list[tuple[str, int]]:
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")
        asked, outputs = [], []
        for prompt in prompts:
            pid = re.search(r"Q: (\S+)", prompt).group(1)
            match = _BUDGET.search(prompt)
            budget = int(match.group(1)) if match else None
            answer, tokens = self.rule(pid, budget)
            asked.append((pid, budget))
            outputs.append((f"so the answer is [[{answer}]]", tokens))
        self.calls.append(asked)
        return outputs


def judge(pairs):
    return [
        (f"[[{gold}]]" in text, gold if f"[[{gold}]]" in text else None) for text, gold in pairs
    ]


def problems(*ids):
    return [SearchProblem(i, i, "7") for i in ids]


def halving(pid, budget):
    """Vanilla: 100 tokens; correct while β >= 10; tokens β + 5 (so always shorter)."""
    if budget is None:
        return 7, 100
    return (7 if budget >= 10 else 3), budget + 5


def test_exact_budget_sequence_and_row(tmp_path):
    out = tmp_path / "search.jsonl"
    answerer = Scripted(halving)
    stats = search(problems("p0"), answerer, judge, out, progress=False)
    assert answerer.calls == [[("p0", None)], [("p0", 50)], [("p0", 25)], [("p0", 12)], [("p0", 6)]]
    [row] = read_rows(out)
    assert row["status"] == "searched" and row["budget"] == 12
    assert row["budget_list"] == [100, 50, 25, 12]
    assert row["token_list"] == [55, 30, 17, 11]
    assert row["vanilla"] == {"text": "so the answer is [[7]]", "tokens": 100, "answer": "7"}
    assert row["budget_answer"]["tokens"] == 17
    assert row["prompt"] == cot_prompt("p0")
    assert row["budget_prompt"].endswith(
        "[[50]].Let's think step by step and use less than 12 tokens:\n"
    )
    assert (stats.searched, stats.skipped, stats.no_reduction) == (1, 0, 0)
    assert stats.median_budget == 12 and stats.token_reduction == pytest.approx(1 - 17 / 100)


def test_stops_when_the_output_no_longer_gets_shorter(tmp_path):
    # token elasticity: below β = 30 the answers get longer again (still correct)
    def elastic(pid, budget):
        return 7, 100 if budget is None else (budget + 5 if budget >= 30 else 40)

    answerer = Scripted(elastic)
    search(problems("p0"), answerer, judge, tmp_path / "s.jsonl", progress=False)
    [row] = read_rows(tmp_path / "s.jsonl")
    assert [b for [(_, b)] in answerer.calls] == [None, 50, 25, 12]
    assert row["budget"] == 25 and row["budget_list"] == [100, 50, 25]
    assert row["token_list"] == [55, 40, 40]


def test_skip_rule_and_no_reduction(tmp_path):
    def rule(pid, budget):
        if pid == "wrong":
            return 3, 80
        if pid == "stuck":  # correct with CoT, wrong under any budget
            return (7, 60) if budget is None else (3, 10)
        return halving(pid, budget)

    out = tmp_path / "s.jsonl"
    answerer = Scripted(rule)
    stats = search(problems("wrong", "stuck", "ok"), answerer, judge, out, progress=False)
    rows = {r["id"]: r for r in read_rows(out)}
    assert rows["wrong"]["status"] == "skipped" and rows["wrong"]["budget"] is None
    assert rows["stuck"]["status"] == "no_reduction"
    assert rows["stuck"]["budget"] == 60 and rows["stuck"]["budget_answer"] is None
    # each round is one batch over the problems still searching
    assert [len(c) for c in answerer.calls] == [3, 2, 1, 1, 1]
    assert (stats.searched, stats.no_reduction, stats.skipped) == (1, 1, 1)
    assert stats.overall_reduction == pytest.approx(1 - (17 + 60) / (100 + 60))


def test_halving_stops_before_budget_zero(tmp_path):
    def tiny(pid, budget):
        return 7, 3 if budget is None else budget  # always correct and shorter

    answerer = Scripted(tiny)
    search(problems("p"), answerer, judge, tmp_path / "s.jsonl", progress=False)
    [row] = read_rows(tmp_path / "s.jsonl")
    assert [b for [(_, b)] in answerer.calls] == [None, 1] and row["budget"] == 1


def test_paper_rule_compares_with_the_budgeted_prompt_at_the_upper_bound(tmp_path):
    def rule(pid, budget):
        # the budgeted prompt at β0 = T is already short (20 tokens), so β = 50 (55 tokens)
        # is not an improvement under the paper's rule, though it is under the code's
        if budget is None:
            return 7, 100
        return 7, 20 if budget == 100 else budget + 5

    answerer = Scripted(rule)
    search(problems("p"), answerer, judge, tmp_path / "s.jsonl", rule="paper", progress=False)
    [row] = read_rows(tmp_path / "s.jsonl")
    assert [b for [(_, b)] in answerer.calls] == [None, 100, 50]
    assert row["status"] == "no_reduction" and row["token_list"] == [20, 55]


def test_resume_after_a_crash_redoes_nothing(tmp_path):
    ids = ("a", "b", "c")
    whole = Scripted(halving)
    search(problems(*ids), whole, judge, tmp_path / "whole.jsonl", progress=False)

    out = tmp_path / "resumed.jsonl"
    first = Scripted(halving, crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        search(problems(*ids), first, judge, out, progress=False)
    # a crash in the middle of writing a line leaves half a line behind
    with out.with_name(out.name + ".attempts.jsonl").open("a") as f:
        f.write('{"id": "a", "kind": "halv')
    second = Scripted(halving)
    search(problems(*ids), second, judge, out, progress=False)
    assert first.calls + second.calls == whole.calls
    assert read_rows(out) == read_rows(tmp_path / "whole.jsonl")

    third = Scripted(halving)  # everything done: nothing is asked again
    search(problems(*ids), third, judge, out, progress=False)
    assert third.calls == [] and len(read_rows(out)) == 3


def test_other_settings_refuse_to_mix_with_an_existing_search(tmp_path):
    out = tmp_path / "s.jsonl"
    search(problems("p"), Scripted(halving), judge, out, settings={"model": "m1"}, progress=False)
    with pytest.raises(UserError, match=r"different settings \(model\)"):
        search(problems("p"), Scripted(halving), judge, out, settings={"model": "m2"})


def test_bad_input_is_one_clear_error(tmp_path):
    out = tmp_path / "s.jsonl"
    with pytest.raises(UserError, match="unknown TALE prompt family 'gsm9k'"):
        search(problems("p"), Scripted(halving), judge, out, family="gsm9k")
    with pytest.raises(UserError, match="unknown search rule"):
        search(problems("p"), Scripted(halving), judge, out, rule="binary")
    with pytest.raises(UserError, match="unique"):
        search(problems("p", "p"), Scripted(halving), judge, out)
    with pytest.raises(UserError, match="does not exist"):
        read_rows(tmp_path / "missing.jsonl")
    assert not out.exists()


def test_stats_file_rows_are_json(tmp_path):
    out = tmp_path / "s.jsonl"
    search(problems("p"), Scripted(halving), judge, out, progress=False)
    log = out.with_name(out.name + ".attempts.jsonl").read_text().splitlines()
    assert json.loads(log[0]) == {"settings": {"family": "gsm8k", "rule": "code"}}
    assert len(log) == 1 + 5


def test_cli_problems_easy_synthetic_level_and_bad_limit():
    import argparse

    from budgetthinker.evaluation.tale.search import add_args, load_search_problems

    parser = argparse.ArgumentParser()
    add_args(parser)
    args = parser.parse_args(["--data", "synthetic", "--out", "x", "--synthetic-n", "3"])
    problems = load_search_problems(args)
    assert [p.id for p in problems] == [f"synthetic-easy-0-{i}" for i in range(3)]
    for p in problems:  # one small addition: "N has a X. Then N gets b more X. …"
        a, b = (int(w) for w in re.findall(r"\d+", p.question))
        assert 1 <= a <= 9 and 1 <= b <= 3 and p.gold == str(a + b)
    args = parser.parse_args(["--data", "synthetic", "--out", "x", "--limit", "0"])
    with pytest.raises(UserError, match="--limit must be positive"):
        load_search_problems(args)


@pytest.mark.slow
def test_real_search_on_the_embedded_model(tmp_path, hf_backend, tokenizer):
    """Easy synthetic problems (the amount is stated in the question) on the embedded model:
    the search file gets a row per problem, and the stats add up."""
    from budgetthinker.evaluation.tale.search import BackendAnswerer, GraderJudge
    from budgetthinker.synthetic import synthetic_problems

    problems = [SearchProblem(p.id, p.question, p.answer)
                for p in synthetic_problems(4, 0, 0, "easy")]  # fmt: skip
    answerer = BackendAnswerer(hf_backend, tokenizer, max_new_tokens=48)
    judge = GraderJudge(workers=1)
    try:
        stats = search(problems, answerer, judge, tmp_path / "s.jsonl", progress=False)
    finally:
        judge.close()
    rows = read_rows(tmp_path / "s.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(p.id for p in problems)
    assert stats.searched + stats.no_reduction + stats.skipped == 4
    for row in rows:
        assert 0 < row["vanilla"]["tokens"] <= 48 and row["vanilla"]["text"]
        if row["status"] != "skipped":
            assert row["budget_list"][0] == row["vanilla"]["tokens"]
