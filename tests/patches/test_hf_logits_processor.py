"""The transformers adapter's two paths (device-side `ForcingSlots`, Python `Forcer` per row)
force the same tokens: in real generation with the embedded model, and step by step against
`budgetthinker.forcing.simulate` on random streams. On CUDA the device-side path is also checked
to never synchronise with the host in the steady state."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LogitsProcessorList

from budgetthinker.forcing import FREE, make_plan, simulate
from budgetthinker.patches.hf_logits_processor import (
    CPU_DEVICE_SIDE_MIN_BATCH,
    BudgetForcingLogitsProcessor,
    device_side_default,
)


def _plans(spec):
    return [
        make_plan(spec, 40),
        make_plan(spec, 24, two_stage=True),
        None,
        make_plan(spec, 64, two_stage=True, suffix="rl"),
    ]


def _generate(hf_backend, prompt_ids, plans, device_side: bool, tokens: int) -> list[list[int]]:
    width = max(len(p) for p in prompt_ids)
    pad = hf_backend.pad_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    processor = BudgetForcingLogitsProcessor(plans, prompt_len=width, device_side=device_side)
    with torch.inference_mode():
        out = hf_backend.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([processor]),
        )
    assert (processor.forcers is None) == device_side
    return out[:, width:].tolist()


@pytest.mark.slow
def test_device_side_path_generates_what_the_python_path_does(hf_backend, spec, prompt_ids):
    plans = _plans(spec)
    python = _generate(hf_backend, prompt_ids, plans, False, 72)
    device = _generate(hf_backend, prompt_ids, plans, True, 72)
    assert device == python
    for plan, out in zip(plans, python, strict=True):
        if plan is not None:
            assert simulate(plan, out) == out  # every forced position holds its token
    controls = [sum(t in spec.level_of for t in row) for row in python]
    assert all(n > 0 for n, p in zip(controls, plans, strict=True) if p is not None)
    assert sum(controls) >= 12  # enough forcing that a wrong step would show


def _drive(plans, spec, device_side: bool, proposals, device="cpu", prompt_len=5):
    """Run the processor as `generate` does (one new column per call) on random proposals;
    returns the output rows."""
    batch = len(plans)
    processor = BudgetForcingLogitsProcessor(plans, prompt_len, device_side=device_side)
    ids = torch.zeros(batch, prompt_len, dtype=torch.int64, device=device)
    vocab = max(spec.token_ids) + 8
    for step in proposals:
        scores = torch.zeros(batch, vocab, device=device)
        scores[torch.arange(batch), torch.tensor(step, device=device)] = 1.0
        scores = processor(ids, scores)
        ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt_len:].tolist(), processor


def _random_proposals(spec, batch: int, steps: int, seed: int) -> list[list[int]]:
    """Mostly ordinary tokens, sometimes a control token or </think> the model 'samples'."""
    rng = random.Random(seed)
    special = [*spec.token_ids, spec.think_end_id]
    return [
        [
            rng.choice(special) if rng.random() < 0.04 else rng.randrange(3, 200)
            for _ in range(batch)
        ]
        for _ in range(steps)
    ]


@pytest.mark.parametrize("seed", range(3))
def test_device_side_path_matches_forcer_on_random_streams(spec, seed):
    rng = random.Random(seed)
    plans = [
        rng.choice([None, make_plan(spec, rng.randrange(8, 120), two_stage=rng.random() < 0.5)])
        for _ in range(12)
    ]
    plans[0] = make_plan(spec, 16, two_stage=True, stop_at_think_end=False)
    proposals = _random_proposals(spec, len(plans), 160, seed)
    device, _ = _drive(plans, spec, True, proposals)
    python, _ = _drive(plans, spec, False, proposals)
    assert device == python
    for r, plan in enumerate(plans):
        stream = [step[r] for step in proposals]
        expected = stream if plan is None else simulate(plan, stream)
        assert device[r] == expected


def test_rule_picks_python_on_cpu_and_device_side_on_cuda(spec):
    assert not device_side_default(torch.device("cpu"), 256)
    assert device_side_default(torch.device("cpu"), CPU_DEVICE_SIDE_MIN_BATCH)
    assert device_side_default(torch.device("cuda"), 1)
    _, processor = _drive([make_plan(spec, 16)], spec, None, [[5]] * 4)
    assert processor.device_side is False and processor.forcers[0].n == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_side_path_never_syncs_in_the_steady_state(spec):
    plans = [make_plan(spec, 24, two_stage=True)] * 64
    processor = BudgetForcingLogitsProcessor(plans, 5, device_side=True)
    ids = torch.zeros(64, 5, dtype=torch.int64, device="cuda")
    vocab = max(spec.token_ids) + 8
    processor(ids, torch.zeros(64, vocab, device="cuda"))  # first call: tables go to the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(40):
            scores = torch.randn(64, vocab, device="cuda")
            scores = processor(ids, scores)
            ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out = ids[:, 5:].tolist()
    assert all(simulate(plans[0], row) == row for row in out)
    assert any(t != FREE and t in spec.level_of for t in out[0])
