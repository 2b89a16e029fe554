"""transformers adapter: a `LogitsProcessor` that applies the forcing state machine per row.

Each row of the batch has its own `ForcingPlan` (its own budget), or None to leave it untouched.
At every step the processor feeds each row the token appended last (one `tolist()` of the last
column: O(batch), independent of the output length) and, for rows with a forced token, masks
every other logit to -inf before any sampling, so greedy and sampled decoding force alike and
the sampled distribution is the forced one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from budgetthinker.forcing import FREE, Forcer, ForcingPlan
from budgetthinker.patches.masking import force_tokens


class BudgetForcingLogitsProcessor(LogitsProcessor):
    """Force control tokens (and the two-stage suffix) per row during `model.generate`.

    `prompt_len` is the (padded) prompt length of the batch; use left padding. With
    `num_return_sequences > 1`, pass one plan per returned sequence (rows are repeated in order).
    The `forcers` attribute exposes each row's final state after generation.
    """

    def __init__(self, plans: Sequence[ForcingPlan | None], prompt_len: int) -> None:
        self.plans = list(plans)
        self.prompt_len = prompt_len
        self.forcers: list[Forcer | None] = [Forcer(p) if p is not None else None for p in plans]
        self._active = [i for i, f in enumerate(self.forcers) if f is not None]
        self._seen = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.forcers):
            raise ValueError(
                f"BudgetForcingLogitsProcessor has {len(self.forcers)} plans but the batch has "
                f"{input_ids.shape[0]} rows; pass one plan per generated sequence"
            )
        if not self._active:
            return scores
        length = input_ids.shape[1]
        forcers = self.forcers
        if length > self._seen:
            # Exactly one new token per step in generate(); feed it to every active row.
            last = input_ids[:, -1].tolist()
            for i in self._active:
                forcers[i].feed(last[i])
            self._seen = length
        rows, tokens = [], []
        for i in self._active:
            t = forcers[i].forced
            if t != FREE:
                rows.append(i)
                tokens.append(t)
        return force_tokens(scores, rows, tokens)
