"""transformers adapter: a `LogitsProcessor` that applies the forcing state machine per row.

Each row of the batch has its own `ForcingPlan` (its own budget), or None to leave it untouched.
For rows with a forced token, every other logit becomes -inf before any sampling, so greedy and
sampled decoding force alike and the sampled distribution is the forced one.

Two interchangeable paths run the same machine (`budgetthinker.forcing`):

* **device-side** (`ForcingSlots`, the V2 vLLM processor's per-slot state in one device tensor;
  on CUDA one fused Triton kernel per step): the last token is read from `input_ids` on the
  device and nothing comes back to the host, so a GPU's step is never stalled by the adapter.
  `tests/patches/test_hf_logits_processor.py` checks it token for token against the Python path
  in real generation.
* **Python** (`Forcer` per row): one `tolist()` of the last column per step and an O(active rows)
  loop. On a CPU there is no device to stall, and the loop (~0.25 µs a row) is cheaper than the
  fixed ~150 µs of the device-side step's tensor ops up to about a thousand rows (measured on the
  project's 2-core CPU box: 7.8 vs 150 µs/step at batch 16, 66 vs 170 at 256, 237 vs 234 at 1024,
  970 vs 550 at 4096; figures in docs/stages/generation.md).

`DEVICE_SIDE_RULE`: device-side when the scores live on a CUDA device or the batch has at least
`CPU_DEVICE_SIDE_MIN_BATCH` rows, Python otherwise; `device_side=True/False` overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from budgetthinker.forcing import FREE, Forcer, ForcingPlan
from budgetthinker.patches.masking import force_tokens

CPU_DEVICE_SIDE_MIN_BATCH = 1024
DEVICE_SIDE_RULE = (
    f"device-side forcing on a CUDA device or from {CPU_DEVICE_SIDE_MIN_BATCH} rows, "
    "Python otherwise"
)


def device_side_default(device: torch.device, batch: int) -> bool:
    """The rule (`DEVICE_SIDE_RULE`): on CUDA the Python path's per-step readback stalls the
    host (8.3 % at batch 256 on an H200); on a CPU the Python loop is the cheaper one below
    about a thousand rows (see the module docstring)."""
    return device.type == "cuda" or batch >= CPU_DEVICE_SIDE_MIN_BATCH


@dataclass(frozen=True)
class _PlansSpec:
    """What `ForcingSlots` reads from a control spec, taken from the plans of one model."""

    token_ids: tuple[int, ...]
    level_of: Mapping[int, int]
    think_end_id: int
    suffix_ids: dict[int, tuple[int, ...]]


def _plans_spec(plans: Sequence[ForcingPlan]) -> _PlansSpec | None:
    """The shared spec of `plans`, or None where they come from different specs."""
    first = plans[0]
    if any((p.token_ids, p.think_end_id) != (first.token_ids, first.think_end_id) for p in plans):
        return None
    suffixes = sorted({p.suffix for p in plans if p.suffix})
    return _PlansSpec(
        first.token_ids, first.level_of, first.think_end_id, dict(enumerate(suffixes))
    )


class BudgetForcingLogitsProcessor(LogitsProcessor):
    """Force control tokens (and the two-stage suffix) per row during `model.generate`.

    `prompt_len` is the (padded) prompt length of the batch; use left padding. With
    `num_return_sequences > 1`, pass one plan per returned sequence (rows are repeated in order).
    `device_side`: None picks the path by `DEVICE_SIDE_RULE` at the first call. On the Python
    path the `forcers` attribute exposes each row's final state after generation (None on the
    device-side path, whose state stays on the device).
    """

    def __init__(
        self,
        plans: Sequence[ForcingPlan | None],
        prompt_len: int,
        *,
        device_side: bool | None = None,
    ) -> None:
        self.plans = list(plans)
        self.prompt_len = prompt_len
        self.device_side = device_side
        self._forcers: list[Forcer | None] | None = None
        self._active = [i for i, p in enumerate(self.plans) if p is not None]
        self._seen = prompt_len
        self._slots = None  # ForcingSlots, built at the first call on the device-side path
        self._rows: torch.Tensor | None = None

    @property
    def forcers(self) -> list[Forcer | None] | None:
        if self.device_side:
            return None
        if self._forcers is None:
            self._forcers = [Forcer(p) if p is not None else None for p in self.plans]
        return self._forcers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.plans):
            raise ValueError(
                f"BudgetForcingLogitsProcessor has {len(self.plans)} plans but the batch has "
                f"{input_ids.shape[0]} rows; pass one plan per generated sequence"
            )
        if not self._active:
            return scores
        if self.device_side is None:
            spec = _plans_spec([self.plans[i] for i in self._active])
            self.device_side = spec is not None and device_side_default(
                scores.device, len(self._active)
            )
        if self.device_side:
            return self._device_step(input_ids, scores)
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

    def _device_step(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """`ForcingSlots` with one slot per row: the committed tokens are `input_ids` itself and
        every row's committed length is its width, so a call that sees no new token (the first)
        advances nothing. Host→device work only; no readback."""
        from budgetthinker.patches.forcing_slots import ForcingSlots, step_and_force

        batch, device = input_ids.shape[0], scores.device
        if self._slots is None:
            spec = _plans_spec([self.plans[i] for i in self._active])
            if spec is None:
                raise ValueError("device-side forcing needs plans of one control spec")
            self._slots = ForcingSlots(spec, batch, device)
            for i in self._active:
                self._slots.admit(i, self.plans[i], self.prompt_len)
            self._slots.flush()
            self._rows = torch.arange(batch, device=device)
        total_len = torch.full((batch,), input_ids.shape[1], dtype=torch.int64, device=device)
        step_and_force(self._slots, scores, self._rows, total_len, input_ids)
        return scores
