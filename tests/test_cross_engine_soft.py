"""The soft ending (docs/spec.md §2.7) on both engines' forcing adapters, token for token
against `Forcer` (`simulate`), over scripted streams of model proposals: the transformers
`BudgetForcingLogitsProcessor` and the vLLM V1 `BudgetForcingProcessor` (the V2 slots:
tests/patches/test_vllm_v2_processor.py). The "model" is a logits row whose argmax is the
scripted proposal; the adapters see the real prepared model's spec and boundary tokens."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetthinker.forcing import make_plan, simulate
from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor
from budgetthinker.patches.vllm_params import boundaries_for

VOCAB_PAD = 8
SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

plans = st.lists(
    st.tuples(st.integers(8, 60), st.one_of(st.none(), st.integers(0, 24)), st.booleans(),
              st.integers(1, 110), st.integers(0, 2**16)),
    min_size=1, max_size=5,
)  # fmt: skip


def streams(spec, bounds, drawn):
    """Per row: (plan or None, proposals): ordinary tokens, boundary tokens, control tokens and
    `</think>` now and then."""
    pool = [40, 41, 42, *sorted(bounds)[:3], *spec.token_ids, spec.think_end_id]
    weights = [30, 30, 30, 8, 8, 8] + [1] * (len(pool) - 6)
    rows = []
    for budget, grace, control, length, seed in drawn:
        rng = random.Random(seed)
        plan = make_plan(spec, budget, control=control, grace=grace, boundaries=bounds,
                         two_stage=grace is None and not control)  # fmt: skip
        rows.append((plan if budget != 8 or grace is not None else None,
                     rng.choices(pool, weights, k=length)))  # fmt: skip
    return rows


def vocab_size(spec) -> int:
    return max(*spec.token_ids, *(t for s in spec.suffix_ids.values() for t in s)) + VOCAB_PAD


def expected(plan, proposals):
    return simulate(plan, proposals) if plan is not None else proposals


@SETTINGS
@given(drawn=plans)
def test_transformers_processor_follows_forcer(spec, prepared_model, drawn):
    bounds = boundaries_for(str(prepared_model))
    rows = streams(spec, bounds, drawn)
    width = max(len(p) for _, p in rows)
    vocab, prompt_len = vocab_size(spec), 3
    processor = BudgetForcingLogitsProcessor([plan for plan, _ in rows], prompt_len)
    ids = torch.ones(len(rows), prompt_len, dtype=torch.long)
    for step in range(width):
        scores = torch.zeros(len(rows), vocab)
        for r, (_, proposals) in enumerate(rows):
            scores[r, proposals[min(step, len(proposals) - 1)]] = 1.0
        chosen = processor(ids, scores).argmax(dim=1, keepdim=True)
        ids = torch.cat([ids, chosen], dim=1)
    for r, (plan, proposals) in enumerate(rows):
        got = ids[r, prompt_len : prompt_len + len(proposals)].tolist()
        assert got == expected(plan, proposals)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
@SETTINGS
@given(drawn=plans)
def test_vllm_v1_processor_follows_forcer(spec, prepared_model, drawn):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    bounds = boundaries_for(str(prepared_model))
    rows = streams(spec, bounds, drawn)
    processor = _v1_processor(str(prepared_model))
    outputs: list[list[int]] = [[] for _ in rows]
    added = []
    for r, (plan, _) in enumerate(rows):
        extra = {"force": 0} if plan is None else {
            "budget": plan.budget, "control": plan.interval > 0, "two_stage": plan.cap >= 0,
            **({"grace": plan.grace} if plan.grace >= 0 else {}),
        }  # fmt: skip
        added.append((r, SamplingParams(extra_args=extra), [1, 2, 3], outputs[r]))
    processor.update_state(BatchUpdate(len(rows), [], added, []))
    vocab = vocab_size(spec)
    for step in range(max(len(p) for _, p in rows)):
        logits = torch.zeros(len(rows), vocab)
        for r, (_, proposals) in enumerate(rows):
            logits[r, proposals[min(step, len(proposals) - 1)]] = 1.0
        chosen = processor.apply(logits).argmax(dim=1).tolist()
        for r in range(len(rows)):
            outputs[r].append(chosen[r])  # the engine appends to the live output list
        processor.update_state(None)
    for (plan, proposals), out in zip(rows, outputs, strict=True):
        assert out[: len(proposals)] == expected(plan, proposals)


_processors: dict = {}


def _v1_processor(model: str):
    """A fresh V1 processor on the real model's config (the config is built once)."""
    from vllm.config import ModelConfig, VllmConfig

    from budgetthinker.patches.vllm_logits_processor import BudgetForcingProcessor

    if model not in _processors:
        _processors[model] = VllmConfig(model_config=ModelConfig(model=model, dtype="float32"))
    return BudgetForcingProcessor(_processors[model], torch.device("cpu"), False)
