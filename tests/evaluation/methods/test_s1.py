"""s1 budget forcing against an independent re-implementation of the reference algorithm
(docs/spec.md §7, reference A2; the seed tutorial's loop), greedy on the embedded model, plus
the `auto` budget formula and s1's input errors."""

from __future__ import annotations

import pytest

from budgetthinker.delimiters import detect
from budgetthinker.errors import UserError
from budgetthinker.evaluation.methods import SampleContext, get_method
from budgetthinker.evaluation.runner import run_episodes
from budgetthinker.generation import GenRequest

QUESTIONS = ["What is 2 + 3?", "Name a colour."]


def chat(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer.encode(text, add_special_tokens=False)


def context(tokenizer, spec, prompt_ids, budget, compat=()) -> SampleContext:
    return SampleContext(
        prompt_ids=prompt_ids, budget=budget, tokenizer=tokenizer, spec=spec,
        delimiters=detect(tokenizer, spec), max_new_tokens=None, compat=compat,
        eos_ids=frozenset({tokenizer.eos_token_id}),
    )  # fmt: skip


def enc(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def reference_lmeval(backend, tok, cases, eos):
    """A2 written out: thinking rounds, the ignore string, the cap, the end string, the answer
    (this loop's ignore strings fit: one-token "Wait"; tests/…/test_s1_budget.py has the rest).
    `cases`: dicts with prompt, B, n_ignore, ignore, compat, answer. Runs all cases in lockstep
    (one backend call per round) and returns each case's full output after the prompt."""
    start, end = "<think>", "</think>"  # the prepared model's delimiters (from its spec)
    until = enc(tok, end)[0]
    state = [{"thinking": [], "text": "", "last": None, "active": True} for _ in cases]
    max_rounds = max((c["n_ignore"] or 0) + 1 for c in cases)
    for r in range(max_rounds):
        batch = []
        for c, s in zip(cases, state, strict=True):
            rounds = (c["n_ignore"] or 0) + 1
            left = c["B"] if c["compat"] else c["B"] - len(s["thinking"])
            if not s["active"] or r >= rounds or left <= 0:
                s["active"] = False
                continue
            ids_mode = c["n_ignore"] is not None
            batch.append((c, s, GenRequest(
                c["prompt"], max_new_tokens=left, prefix_ids=enc(tok, start) + s["thinking"],
                stop=() if ids_mode else ("</think>",),
                stop_token_ids=(until,) if ids_mode else (), min_tokens=1 if ids_mode else 0,
            )))  # fmt: skip
        if not batch:
            break
        results = backend.run([b[2] for b in batch], batch_size=len(batch))
        for (c, s, _), res in zip(batch, results, strict=True):
            ids = list(res.token_ids)
            if res.finish_reason == "stop" and ids and (ids[-1] == until or ids[-1] in eos):
                ids = ids[:-1]
            s["thinking"] += ids
            s["text"] += tok.decode(ids, skip_special_tokens=False)
            s["last"] = res
            rounds = (c["n_ignore"] or 0) + 1
            if res.finish_reason == "length" or r == rounds - 1:
                s["active"] = False
            else:
                s["thinking"] += enc(tok, c["ignore"])
                s["text"] += c["ignore"] or ""
    answers = []
    for c, s in zip(cases, state, strict=True):
        thinking = s["thinking"]
        capped = s["last"].finish_reason == "length"
        if c["compat"]:
            thinking = thinking[: c["B"]]
        elif len(thinking) >= c["B"]:
            capped = True
        if capped:  # the fork decides the newline on its uncut text
            text = s["text"] if c["compat"] else tok.decode(thinking, skip_special_tokens=False)
            newline = [] if text.endswith("\n") else enc(tok, "\n")
            tail = newline + enc(tok, end + "\nFinal Answer:")
        else:
            tail = enc(tok, end)
        prefix = enc(tok, start) + thinking + tail
        answers.append((c["prompt"], prefix))
    results = backend.run(
        [GenRequest(p, max_new_tokens=c["answer"], prefix_ids=x)
         for (p, x), c in zip(answers, cases, strict=True)], batch_size=len(cases),
    )  # fmt: skip
    return [x + r.token_ids for (_, x), r in zip(answers, results, strict=True)]


def reference_tutorial(backend, tok, cases):
    """The seed document's loop: stop at </think>, "\\nWait!\\n" while under budget (max_tokens =
    budget − count), then "\\n</think>\\n" and the answer."""
    outs = []
    for c in cases:
        thinking: list[int] = []
        while True:
            [res] = backend.run([GenRequest(c["prompt"], max_new_tokens=c["B"] - len(thinking),
                                            prefix_ids=thinking, stop=("</think>",))])
            ids = list(res.token_ids)
            if res.finish_reason == "stop":  # neither the stop string nor EOS is in vLLM's text
                ids = ids[:-1]
            thinking += ids
            wait = enc(tok, "\nWait!\n")
            if res.finish_reason == "length" or len(thinking) + len(wait) >= c["B"]:
                break
            thinking += wait
        prefix = thinking + enc(tok, "\n</think>\n")
        final = GenRequest(c["prompt"], max_new_tokens=c["answer"], prefix_ids=prefix)
        [ans] = backend.run([final])
        outs.append(prefix + ans.token_ids)
    return outs


@pytest.mark.slow
def test_s1_matches_the_reference_loop(hf_backend, tokenizer, spec):
    eos = hf_backend.eos_ids
    prompts = [chat(tokenizer, q) for q in QUESTIONS]
    cases = []
    for n_ignore in (None, 0, 1, 2):
        for ignore in ([None, "Wait"] if n_ignore else [None]):
            for budget in (6, 40):  # capped / the model ends its thinking (EOS) itself
                cases.append({"n_ignore": n_ignore, "ignore": ignore, "B": budget,
                              "compat": False, "answer": 6})  # fmt: skip
    cases.append({"n_ignore": 2, "ignore": "Wait", "B": 40, "compat": True, "answer": 6})
    cases = [{**c, "prompt": p} for c in cases for p in prompts[:1]] + [
        {**cases[5], "prompt": prompts[1]}
    ]
    methods, contexts = [], []
    for c in cases:
        params = {"max_gen_toks": c["answer"]}
        if c["n_ignore"] is not None:
            params["thinking_n_ignore"] = c["n_ignore"]
        if c["ignore"]:
            params["thinking_n_ignore_str"] = c["ignore"]
        methods.append(get_method({"name": "s1", **params}))
        contexts.append(context(tokenizer, spec, c["prompt"], c["B"],
                                ("s1",) if c["compat"] else ()))  # fmt: skip
    episodes = [m.episode(x) for m, x in zip(methods, contexts, strict=True)]
    outcomes = run_episodes(episodes, hf_backend, batch_size=len(cases))
    expected = reference_lmeval(hf_backend, tokenizer, cases, eos)
    for c, o, e in zip(cases, outcomes, expected, strict=True):
        assert o.output_ids == e, c
    # Not vacuous: some thinking hit the cap, some rounds were ended by the model and ignored.
    assert any(not o.finished_thinking for o in outcomes)
    assert any(o.finished_thinking for o in outcomes)
    assert any(o.extra["thinking_rounds"] > 1 for o in outcomes)
    wait = enc(tokenizer, "Wait")
    assert any(tokenizer.decode(o.output_ids).count("Wait") >= 2 for o in outcomes), wait


@pytest.mark.slow
def test_s1_tutorial_variant_matches_the_seed_loop(hf_backend, tokenizer, spec):
    prompts = [chat(tokenizer, q) for q in QUESTIONS]
    tutorial = [{"prompt": p, "B": b, "answer": 6} for p in prompts[:1] for b in (8, 30)]
    method = get_method({"name": "s1", "variant": "tutorial", "max_gen_toks": 6})
    outs = run_episodes(
        [method.episode(context(tokenizer, spec, c["prompt"], c["B"])) for c in tutorial],
        hf_backend,
    )
    assert [o.output_ids for o in outs] == reference_tutorial(hf_backend, tokenizer, tutorial)


def test_auto_budget_formula(tokenizer, spec):
    prompts = [chat(tokenizer, q) for q in QUESTIONS]
    longest = max(len(p) for p in prompts)
    method = get_method({"name": "s1", "max_tokens_thinking": "auto", "max_gen_toks": 500})
    ctx = context(tokenizer, spec, prompts[0], 64)
    ctx.longest_prompt = longest
    expected = (500 - longest - len(enc(tokenizer, "<think>"))
                - len(enc(tokenizer, "</think>\nFinal Answer:")) - 100)  # fmt: skip
    assert method.thinking_budget(ctx) == expected
    tight = get_method({"name": "s1", "max_tokens_thinking": "auto", "max_gen_toks": 120})
    with pytest.raises(UserError, match=r"auto gives -?\d+ ≤ 0 for these prompts"):
        tight.thinking_budget(ctx)


def test_bad_s1_parameters():
    with pytest.raises(UserError, match="thinking_n_ignore must be an integer ≥ 0"):
        get_method({"name": "s1", "thinking_n_ignore": -1})
    with pytest.raises(UserError, match="has no parameter 'n_ignore'; its parameters: .*"
                       "thinking_n_ignore"):  # fmt: skip
        get_method({"name": "s1", "n_ignore": 2})
    with pytest.raises(UserError, match="unknown scaling function 'nope'; choose from default"):
        get_method({"name": "s1", "scale_func": {"name": "nope"}})
    with pytest.raises(UserError, match="unknown method 's2'; choose from control"):
        get_method("s2")


def test_display_names_are_stable():
    a = get_method({"name": "s1", "thinking_n_ignore_str": "Wait", "thinking_n_ignore": 2})
    b = get_method({"name": "s1", "thinking_n_ignore": 2, "thinking_n_ignore_str": "Wait"})
    assert a.display_name == b.display_name == "s1[thinking_n_ignore=2,thinking_n_ignore_str=Wait]"
    assert get_method("s1").display_name == "s1"
    assert get_method({"name": "s1", "label": "s1-wait2"}).display_name == "s1-wait2"


def test_delimiters_the_tokenizer_cannot_encode(tokenizer, spec):
    method = get_method({"name": "s1", "thinking_end": "\udcff"})
    ctx = context(tokenizer, spec, chat(tokenizer, QUESTIONS[0]), 16)
    with pytest.raises(UserError, match="cannot be encoded by this model's tokenizer"):
        run_episodes([method.episode(ctx)], backend=None)
