"""Forced control tokens are out of verl's own GRPO losses (policy and KL), on CPU.

The budget agent loop marks forced tokens with `response_mask` 0; verl's advantage, policy loss
and KL loss (its `core_algos`, configured from our recipe) must then give them no gradient.
With `mask_forced_tokens: false` (the original behaviour) they are trained on like any token.
"""

from __future__ import annotations

import pytest

pytest.importorskip("verl")

import numpy as np
import torch

from budgetthinker.forcing import make_plan, simulate
from budgetthinker.rl.budget_rollout import shape_response
from budgetthinker.rl.config import RECIPE_DIR
from budgetthinker.rl.verl_launch import compose

BUDGET = 400
FREE_TOKEN = 42


def group(spec, mask_forced_tokens: bool):
    """Two responses to one prompt (a GRPO group), padded to one length as verl pads them."""
    plan = make_plan(spec, BUDGET)
    shaped = [
        shape_response(
            spec,
            BUDGET,
            simulate(plan, [FREE_TOKEN] * n),
            None,
            two_stage=False,
            force=True,
            mask_forced_tokens=mask_forced_tokens,
            response_length=10000,
        )
        for n in (300, 200)
    ]
    width = max(len(s["response_ids"]) for s in shaped)
    mask = torch.zeros(2, width)
    valid = torch.zeros(2, width)
    for row, s in enumerate(shaped):
        mask[row, : len(s["response_mask"])] = torch.tensor(s["response_mask"], dtype=torch.float)
        valid[row, : len(s["response_ids"])] = 1
    return shaped, mask, valid


def losses(spec, mask_forced_tokens: bool):
    from verl.trainer.ppo.core_algos import (
        agg_loss,
        compute_grpo_outcome_advantage,
        get_policy_loss_fn,
        kl_penalty,
    )
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose(RECIPE_DIR / "8ratio_v1.yaml", ["actor_rollout_ref.model.path=/models/sft"])
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    shaped, mask, valid = group(spec, mask_forced_tokens)
    rewards = torch.zeros_like(mask)
    for row, score in enumerate((1.0, 0.2)):
        rewards[row, int(valid[row].sum()) - 1] = score
    advantages, _ = compute_grpo_outcome_advantage(rewards, mask, np.array(["p", "p"]))
    torch.manual_seed(0)
    log_prob = (torch.randn_like(mask) * 0.1 - 1.0).requires_grad_()
    old = (log_prob.detach() + torch.randn_like(mask) * 0.05).clone()
    ref = (log_prob.detach() + torch.randn_like(mask) * 0.05).clone()
    policy = get_policy_loss_fn(actor.policy_loss.loss_mode)
    pg_loss, _ = policy(
        old_log_prob=old,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode=actor.loss_agg_mode,
        config=actor,
    )
    kl = agg_loss(kl_penalty(log_prob, ref, actor.kl_loss_type), mask, actor.loss_agg_mode)
    (pg_loss + actor.kl_loss_coef * kl).backward()
    forced = [[i for i, m in enumerate(s["response_mask"]) if m == 0] for s in shaped]
    return log_prob.grad, shaped, forced


def test_forced_tokens_get_no_gradient(spec):
    grad, shaped, forced = losses(spec, mask_forced_tokens=True)
    delta = BUDGET // 8 + 1
    length = len(shaped[0]["response_ids"])
    assert forced[0] == [p for k in range(1, 8) if (p := k * delta + k - 1) < length]
    for row, positions in enumerate(forced):
        length = len(shaped[row]["response_ids"])
        assert positions, "the group has forced tokens"
        assert all(grad[row, p] == 0 for p in positions)
        trained = [i for i in range(length) if i not in positions]
        assert all(grad[row, i] != 0 for i in trained)


def test_original_behaviour_trains_forced_tokens(spec):
    grad, shaped, forced = losses(spec, mask_forced_tokens=False)
    assert forced == [[], []]
    for row, s in enumerate(shaped):
        assert all(grad[row, i] != 0 for i in range(len(s["response_ids"])))
