"""The budget curriculum (docs/spec.md §5) as data: which budget each training batch gets.

A recipe lists, per epoch (1-based), the candidate budgets; every batch draws one of them, and the
whole batch shares it. `8ratio_v1` (configs/rl/8ratio_v1.yaml):

    epoch 1: 6000 · 2: 4000 · 3: 3500 · 4: 3000 · 5: 2500 · 6: 2000 · 7–8: one of 2000/4000/6000

The draw is a pure function of (seed, epoch, batch index), so a resumed run gets the same budgets
as an uninterrupted one. Validation always uses one fixed budget (4000 in the release).

Per budget B the rollout uses `Bt = B + B // 50`: it generates at most
`min(Bt + Bt // 4, max_response_length − 200)` tokens and scores the response truncated to
`Bt − 50` tokens (the length reward uses the untruncated length).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from budgetthinker.errors import UserError
from budgetthinker.rl.reward import budget_with_tokens

BUDGET_MULTIPLE = 50
RESPONSE_RESERVE = 200  # generation cap keeps this many tokens of max_response_length free
SCORE_MARGIN = 50  # responses are scored truncated to Bt − 50 tokens


def check_budget(budget: object, where: str = "budget") -> int:
    """A positive multiple of 50, or a `UserError` naming the nearest valid budgets."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise UserError(f"{where} must be a positive whole number of tokens, got {budget!r}")
    if budget % BUDGET_MULTIPLE:
        low = budget // BUDGET_MULTIPLE * BUDGET_MULTIPLE
        hint = f"{low} or {low + BUDGET_MULTIPLE}" if low else str(BUDGET_MULTIPLE)
        raise UserError(
            f"{where} {budget} is not a multiple of {BUDGET_MULTIPLE} (RL budgets must be, as in "
            f"the original recipe); use {hint}"
        )
    return budget


def generation_cap(budget: int, max_response_length: int) -> int:
    """Most tokens a rollout may generate for budget B: `min(Bt + Bt//4, max_response − 200)`."""
    bt = budget_with_tokens(budget)
    cap = min(bt + bt // 4, max_response_length - RESPONSE_RESERVE)
    if cap <= 0:
        raise UserError(
            f"rollout.max_response_length {max_response_length} leaves no room to generate: the "
            f"cap is max_response_length − {RESPONSE_RESERVE}; raise it above {RESPONSE_RESERVE}"
        )
    return cap


def scored_length(budget: int) -> int:
    """Responses are truncated to `Bt − 50` tokens before scoring."""
    return budget_with_tokens(budget) - SCORE_MARGIN


def truncate_for_scoring(token_ids: Sequence[int], budget: int) -> list[int]:
    """The first `Bt − 50` tokens of a response (all of it if shorter)."""
    return list(token_ids[: scored_length(budget)])


@dataclass
class CurriculumConfig:
    """Budget schedule of an experiment.

    Args:
        budgets (`list[list[int]]`): entry k lists the candidate budgets of epoch k + 1; each batch
            draws one. Epochs past the end reuse the last entry.
        validation_budget (`int`, *optional*, defaults to `4000`): budget of every validation batch.
        seed (`int`, *optional*, defaults to `1`): seed of the per-batch draws.
    """

    budgets: list[list[int]] = field(default_factory=lambda: [[4000]])
    validation_budget: int = 4000
    seed: int = 1

    def __post_init__(self) -> None:
        if not self.budgets or any(not epoch for epoch in self.budgets):
            raise UserError(
                "curriculum.budgets must list at least one budget for every epoch, "
                "e.g. [[6000], [4000], [2000, 4000, 6000]]"
            )
        for k, epoch in enumerate(self.budgets, start=1):
            for b in epoch:
                check_budget(b, f"curriculum.budgets (epoch {k}): budget")
        check_budget(self.validation_budget, "curriculum.validation_budget")


class Curriculum:
    """One budget per batch, drawn from the epoch's candidates."""

    def __init__(self, config: CurriculumConfig) -> None:
        self.config = config

    def candidates(self, epoch: int) -> list[int]:
        """Candidate budgets of `epoch` (1-based)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"epochs are counted from 1, got {epoch!r}")
        budgets = self.config.budgets
        return list(budgets[min(epoch, len(budgets)) - 1])

    def budget(self, epoch: int, batch: int) -> int:
        """Budget of batch `batch` (0-based, counted over the whole run) in `epoch` (1-based)."""
        options = self.candidates(epoch)
        if len(options) == 1:
            return options[0]
        return random.Random(f"{self.config.seed}:{epoch}:{batch}").choice(options)

    @property
    def validation_budget(self) -> int:
        return self.config.validation_budget

    def schedule(self, epochs: int, batches_per_epoch: int) -> list[list[int]]:
        """All budgets of a run, epoch by epoch (for logs and tests)."""
        return [
            [self.budget(e, (e - 1) * batches_per_epoch + i) for i in range(batches_per_epoch)]
            for e in range(1, epochs + 1)
        ]
