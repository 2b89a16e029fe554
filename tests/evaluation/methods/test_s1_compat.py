"""`compat: [s1]` against the s1 lm-evaluation-harness fork, re-implemented here from its
documented behaviour (issue 20, docs/faithful_switches.md, reference notes A2), both driven by
the same made-up model over random settings: the same inputs to every round, the same answer
input, the same returned (graded) text, quirks included — every round may use the full B and the
sum is cut to B; the newline before the end string is decided on the uncut text; none is added
when thinking_start begins with one; min_tokens is 1 whenever thinking_n_ignore is set; a sample
cut at B whose last round stopped gets the plain end string."""

from __future__ import annotations

import random

import pytest

from budgetthinker.errors import UserError
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.methods import get_method
from budgetthinker.evaluation.runner import check_setup, run_episodes
from tests.evaluation.ceiling import assert_within_budget
from tests.evaluation.methods.scripted import EOS, HashModel, ModelBackend, context

PROMPT = [1, 9690, 198, 22, 1232, 198, 2, 198, 1]
END = "</think>"
IGNORE = [None, "Wait", "Let me check", " Let me double check step by step."]


def fork(model: HashModel, tok, prompt, *, B, n_ignore, ignore, min_tokens, start, answer_cap):
    """The fork's `_model_generate` thinking branch as documented: returns the inputs of its
    thinking calls, the answer call's input and the text it returns (what it grades)."""

    def enc(s):
        return tok.encode(s, add_special_tokens=False)

    def text_of(ids, finish):  # vLLM's text: the stop token (or EOS) is not in it
        return tok.decode(ids[:-1] if finish == "stop" else ids, skip_special_tokens=False)

    until = [enc(END), [EOS]]  # until_thinking plus the task's stops (EOS)
    as_ids = n_ignore is not None or min_tokens is not None
    sampling = {"max_tokens": B}
    if as_ids:
        sampling["min_tokens"] = 1 if n_ignore is not None else min_tokens
        sampling["stop_token_ids"] = [u[0] for u in until]
    else:
        sampling["stop"] = [END]
    calls = []

    def generate(ids):
        calls.append((list(ids), sampling["max_tokens"], sampling.get("min_tokens", 0)))
        return model.generate(ids, sampling["max_tokens"], sampling.get("min_tokens", 0),
                              sampling.get("stop_token_ids", ()), sampling.get("stop", ()))

    def strip(ids):
        for u in until:
            if ids[-len(u):] == u:
                ids = ids[: -len(u)]
        return ids

    request = prompt + enc(start)
    if n_ignore is not None:
        ids, text, finish = [], "", None
        current = list(request)
        for i in range(n_ignore + 1):
            out = generate(current)
            cont, piece = list(out.token_ids), text_of(out.token_ids, out.finish_reason)
            if out.finish_reason == "length" or i == n_ignore:
                ids, text, finish = ids + cont, text + piece, out.finish_reason
                break
            cont = strip(cont)
            if ignore is not None:
                cont, piece = cont + enc(ignore), piece + ignore
            ids, text = ids + cont, text + piece
            current = current + cont
        if len(ids) > B:
            ids = ids[:B]
    else:
        out = generate(request)
        ids, text, finish = list(out.token_ids), text_of(out.token_ids, out.finish_reason), \
            out.finish_reason  # fmt: skip
    cont = strip(ids)
    if finish == "length":
        if text[-1:] == "\n" or start[:1] == "\n":
            request, returned = request + cont + enc(END + "\nFinal Answer:"), \
                start + text + END + "\nFinal Answer:"  # fmt: skip
        else:
            request = request + cont + enc("\n") + enc(END + "\nFinal Answer:")
            returned = start + text + "\n" + END + "\nFinal Answer:"
    else:
        request, returned = request + cont + enc(END), start + text + END
    answer = model.generate(request, answer_cap, thinking=False)
    newline = finish == "length" and not (text[-1:] == "\n" or start[:1] == "\n")
    # whether a rule reading the thinking after the cut would have added "\n" differently
    on_cut = finish == "length" and not tok.decode(cont).endswith("\n")
    quirk = newline != on_cut and start[:1] != "\n"
    return calls, request, returned + text_of(answer.token_ids, answer.finish_reason), quirk


def settings(rng: random.Random) -> dict:
    b = rng.randint(1, 40)
    return {
        "B": b,
        "n_ignore": rng.choice([None, 0, 1, 2, 3, 4]),
        "ignore": rng.choice(IGNORE),
        # vLLM refuses min_tokens > max_tokens, so the fork has no such case (ours clamps it)
        "min_tokens": rng.choice([None, None, *[m for m in (1, 3, 6) if m <= b]]),
        "start": rng.choice(["<think>", "<think>", "\n<think>"]),
        "answer_cap": 4,
    }


def ours(model, tokenizer, spec, case):
    params = {"thinking_start": case["start"], "max_gen_toks": case["answer_cap"]}
    for key, name in (("n_ignore", "thinking_n_ignore"), ("ignore", "thinking_n_ignore_str"),
                      ("min_tokens", "min_tokens_thinking")):  # fmt: skip
        if case[key] is not None:
            params[name] = case[key]
    method = get_method({"name": "s1", **params})
    backend = ModelBackend(model)
    ctx = context(tokenizer, spec, PROMPT, case["B"], ("s1",))
    [outcome] = run_episodes([method.episode(ctx)], backend)
    return outcome, backend.requests


def test_compat_s1_is_the_fork_on_random_model_outputs(tokenizer, spec):
    rng = random.Random(20)
    n, same = 400, 0
    hits = {"cut": 0, "newline_from_uncut_text": 0, "start_newline": 0, "min_tokens_dropped": 0,
            "cut_after_stop": 0, "graded_beyond_b": 0}  # fmt: skip
    for i in range(n):
        case = settings(rng)
        model = HashModel(seed=i)
        calls, answer_input, returned, quirk = fork(model, tokenizer, PROMPT, **case)
        outcome, requests = ours(model, tokenizer, spec, case)
        mine = [(r.input_ids, r.max_new_tokens, r.min_tokens) for r in requests[:-1]]
        identical = (mine == calls and requests[-1].input_ids == answer_input
                     and outcome.graded_text == returned)  # fmt: skip
        same += identical
        assert identical, (case, mine, calls, outcome.graded_text, returned)
        # What we record is true: thinking as fed (≤ B), cut or not, finished or not.
        assert_within_budget([outcome])
        cut = outcome.extra["thinking_cut"]
        text = tokenizer.decode(outcome.output_ids)
        hits["cut"] += cut > 0
        hits["cut_after_stop"] += cut > 0 and "Final Answer:" not in text
        if cut:
            assert outcome.finished_thinking is False
        hits["graded_beyond_b"] += cut > 0 and returned != text
        hits["newline_from_uncut_text"] += quirk
        hits["start_newline"] += "Final Answer:" in text and case["start"].startswith("\n")
        hits["min_tokens_dropped"] += (case["min_tokens"] or 1) > 1 and case["n_ignore"] is not None
    print(f"compat s1 vs the fork: {same}/{n} identical; quirks exercised: {hits}")
    assert same == n
    assert all(hits.values()), hits  # every quirk was exercised


def test_compat_s1_records_and_grades_the_forks_text(tmp_path, tokenizer, spec):
    """The runner grades the fork's returned text under compat and records it next to ours."""
    from budgetthinker.evaluation.runner import ChunkRun

    case = {"B": 6, "n_ignore": 1, "ignore": "Wait", "min_tokens": None, "start": "<think>",
            "answer_cap": 4}  # fmt: skip
    outcome = next(o for o in (ours(HashModel(seed=s), tokenizer, spec, case)[0]
                               for s in range(50)) if o.extra["thinking_cut"])  # fmt: skip
    assert outcome.graded_text != tokenizer.decode(outcome.output_ids)  # beyond B: not fed
    assert outcome.graded_text.startswith("<think>") and outcome.graded_as.startswith("s1 fork")

    class Grade:
        predicted, correct, timed_out, rule = "x", False, False, None

    class Grader:
        def __init__(self):
            self.seen = []

        def grade_many(self, items):
            self.seen += [i[0] for i in items]
            return [Grade() for _ in items]

    class Problem:
        benchmark, id, answer, question, verify = "synthetic", "p0", "5", "Q", None

    class Request:
        method = get_method({"name": "s1", "thinking_n_ignore": 1})
        problem, budget, sample = Problem(), 6, 0

    run = ChunkRun.__new__(ChunkRun)
    run.cfg, run.tokenizer, run.spec = EvalConfig(compat=["s1"]), tokenizer, spec
    run.delimiters = context(tokenizer, spec, PROMPT, 6).delimiters
    run.outcomes = lambda chunk: [outcome]
    grader = Grader()
    [record] = run.records([Request()], grader)
    assert grader.seen == [outcome.graded_text]
    assert record["graded_text"] == outcome.graded_text
    assert record["text"] == tokenizer.decode(outcome.output_ids)
    assert record["graded_as"] == outcome.graded_as and record["thinking_budget"] == 6
    assert_within_budget([record])


def test_compat_combined_with_what_the_fork_did_not_have(prepared_model):
    cfg = EvalConfig(model=str(prepared_model), compat=["s1"], budgets=[8],
                     methods=[{"name": "s1", "variant": "tutorial"}])  # fmt: skip
    with pytest.raises(UserError, match="variant: tutorial is the seed's loop, not the s1 fork"):
        check_setup(cfg, None, str(prepared_model))
    fractional = {"name": "s1", "thinking_n_ignore": 2,
                  "scale_func": {"name": "entropy_thresholding", "last_k": 2.0}}  # fmt: skip
    get_method(fractional)  # our rule takes any number
    cfg = EvalConfig(model=str(prepared_model), compat=["s1"], budgets=[8], methods=[fractional])
    with pytest.raises(UserError, match=r"last_k 2.0 with compat hf_fork: .* an integer or a "
                       r"fraction in \(0, 1\)"):  # fmt: skip
        check_setup(cfg, None, str(prepared_model))
