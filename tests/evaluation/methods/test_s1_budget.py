"""A budget is a ceiling: every budget-enforcing method's episode (s1 in both modes, with
scaling functions, and its tutorial variant), driven by scripted rounds of random lengths, stop
reasons and multi-token ignore strings, never thinks past B (docs/methods/s1.md)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetthinker.evaluation.methods import METHODS, _load_builtin, get_method
from budgetthinker.evaluation.runner import run_episodes
from tests.evaluation.ceiling import assert_within_budget
from tests.evaluation.methods.scripted import ScriptedBackend, context

PROMPT = [1, 9690, 198, 22, 1232, 198, 2]  # a short made-up prompt; the engine is scripted
IGNORE = [None, "Wait", "Let me check", " Let me double check step by step."]


def run(tokenizer, spec, params, budget, rounds, compat=(), seed=0):
    method = get_method({"name": "s1", **params})
    backend = ScriptedBackend(rounds, seed=seed)
    ctx = context(tokenizer, spec, PROMPT, budget, compat)
    [outcome] = run_episodes([method.episode(ctx)], backend)
    return outcome, backend


def test_a_multi_token_ignore_string_never_overruns_the_budget(tokenizer, spec):
    """The case of issue 20: "Let me check" is 3 tokens; B = 5; round 1 thinks 3 tokens and
    stops. It used to give 6 thinking tokens; now the string is cut so thinking ends at B."""
    assert len(tokenizer.encode("Let me check", add_special_tokens=False)) == 3
    params = {"thinking_n_ignore": 1, "thinking_n_ignore_str": "Let me check"}
    outcome, backend = run(tokenizer, spec, params, 5, [(3, "stop")])
    assert outcome.thinking_tokens == 5
    assert outcome.ceiling == 5
    assert outcome.finished_thinking is False  # thinking was cut at B: "Final Answer:" follows
    assert outcome.extra["thinking_cut"] == 1
    text = tokenizer.decode(outcome.output_ids)
    assert "Let me</think>" in text.replace("\n", "") and "Final Answer:" in text
    assert len(backend.requests) == 2  # no thinking round is left for the cut string
    assert_within_budget([outcome])


def enforcing_methods() -> list[str]:
    _load_builtin()
    return sorted(name for name, cls in METHODS.items() if cls.enforces_budget)


def test_every_budget_enforcing_method_is_driven_below():
    assert enforcing_methods() == sorted(PARAMS), "give the new method a strategy in PARAMS"


SCALERS = st.sampled_from([
    None,
    {"name": "default"},
    {"name": "entropy_thresholding", "threshold": 0.3},
    {"name": "entropy_thresholding", "threshold": 0.9, "compat": ["hf_fork"], "last_k": 0.5},
    {"name": "entropy_thresholding", "threshold": 0.9, "compat": ["vllm_fork"], "last_k": 3},
    {"name": "tests.evaluation.methods.scaler_plugin:long_tail"},
])  # fmt: skip


@st.composite
def s1_params(draw):
    variant = draw(st.sampled_from(["lmeval", "lmeval", "lmeval", "tutorial"]))
    if variant == "tutorial":
        return {"variant": "tutorial"}, ()
    params = {}
    n = draw(st.one_of(st.none(), st.integers(0, 4)))
    if n is not None:
        params["thinking_n_ignore"] = n
    ignore = draw(st.sampled_from(IGNORE))
    if ignore:
        params["thinking_n_ignore_str"] = ignore
    if draw(st.booleans()):
        params["min_tokens_thinking"] = draw(st.integers(1, 6))
    scaler = draw(SCALERS)
    if scaler:
        params["scale_func"] = scaler
    if draw(st.integers(0, 4)) == 0:
        params["max_tokens_thinking"] = draw(st.integers(1, 30))
    params["max_gen_toks"] = 4
    return params, draw(st.sampled_from([(), ("s1",)]))


PARAMS = {"s1": s1_params()}
ROUNDS = st.lists(
    st.tuples(st.integers(0, 45), st.sampled_from(["stop", "stop", "eos", "length"])),
    min_size=1, max_size=6,
)  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARAMS))
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), budget=st.integers(1, 40), rounds=ROUNDS, seed=st.integers(0, 5))
def test_thinking_never_exceeds_the_budget(tokenizer, spec, name, data, budget, rounds, seed):
    params, compat = data.draw(PARAMS[name])
    outcome, _ = run(tokenizer, spec, params, budget, rounds, compat, seed)
    b = params.get("max_tokens_thinking") or budget
    assert outcome.ceiling == b
    assert outcome.thinking_tokens <= b
    assert_within_budget([outcome])
    if outcome.extra["thinking_cut"]:
        assert outcome.finished_thinking is False  # cut at B: never finished by the model
    if outcome.thinking_tokens == b and params.get("variant") != "tutorial" and not compat:
        assert outcome.finished_thinking is False  # at B: forced out ("Final Answer:")
    # (compat: [s1] cuts only a sum over B: thinking that stops by itself exactly at B is
    # finished, as in the fork; test_compat_thinking_that_ends_by_itself_exactly_at_b…)



def test_compat_thinking_that_ends_by_itself_exactly_at_b_is_finished(tokenizer, spec):
    """Found by CI: under compat: [s1], rounds of 1 + 8 + 1 + 8 + 1 tokens (two 8-token ignore
    strings) reach B = 19 exactly, and the last round stopped by itself. The fork cuts only a
    sum *over* B, so nothing is cut: the model finished thinking, and gets the plain end string
    (no "Final Answer:"). Without compat, reaching B forces the answer."""
    params = {"thinking_n_ignore": 2, "thinking_n_ignore_str": " Let me double check step by step.",
              "max_gen_toks": 4}  # fmt: skip
    fork, _ = run(tokenizer, spec, params, 19, [(0, "stop")], ("s1",), 0)
    assert (fork.thinking_tokens, fork.extra["thinking_cut"]) == (19, 0)
    assert fork.finished_thinking is True
    assert "Final Answer:" not in fork.graded_text
    ours, _ = run(tokenizer, spec, params, 19, [(0, "stop")], (), 0)
    assert ours.thinking_tokens == 19
    assert ours.finished_thinking is False
    assert "Final Answer:" in tokenizer.decode(ours.output_ids)
