"""vLLM adapter for Model Runner V2 (the default runner of CUDA builds since vLLM 0.29; since
about 0.31 it refuses V1-interface processors instead of falling back): forces the control tokens
per request, with the same `extra_args` / `vllm_xargs` keys and validation as the V1 processor
(`budgetthinker.patches.vllm_params`).

    LLM(model=PREPARED_DIR, logits_processors=[BudgetForcingProcessorV2])
    vllm serve PREPARED_DIR --logits-processors \\
        budgetthinker.patches.vllm_v2_processor:BudgetForcingProcessorV2

`budgetthinker.patches.vllm_processor()` chooses between this class and the V1 one.

The per-slot state machine is `ForcingSlots` (torch only). This wrapper maps the V2 contract onto
it: `add_request` stages a full (re)initialisation of the slot (slots are recycled); requests
resumed after preemption arrive with `prefill_len > prompt_len` and their committed output is
replayed on the device in `apply_staged_writes`; `apply` reads the committed length
(`req_states.total_len`) and last committed token (`req_states.all_token_ids`) on the device, so
rows still in chunked prefill (whose sampled token is discarded) never advance the state, and no
value is read back to the host in the steady state.

A request without `budget` whose prompt carries a budget tip is forced with that budget, as with
the V1 processor. V2 hands `add_request` no prompt, so the tip is read from the device once, when
the request is admitted (one small device→host copy per such request; our own engines always send
`budget` or `force: 0` and never pay it).

Speculative decoding is refused when the engine starts: a request then owns several rows whose
draft tokens are not committed, which this processor does not model.
"""

from __future__ import annotations

import logging

import torch
from vllm.sampling_params import SamplingParams
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

from budgetthinker.control_spec import ControlSpec
from budgetthinker.patches.forcing_slots import ForcingSlots, step_and_force
from budgetthinker.patches.vllm_params import (
    FALLBACK_WINDOW,
    boundaries_for,
    decode_budget,
    load_checked_spec,
    plan_for,
    validate_extra,
    wants_prompt_fallback,
)

logger = logging.getLogger(__name__)

SPECULATIVE_REFUSED = (
    "budget forcing does not support speculative decoding; start vLLM without "
    "--speculative-config (or drop the budgetthinker logits processor)"
)


class BudgetForcingProcessorV2(LogitsProcessor):
    """Forces control tokens per request under Model Runner V2; see the module docstring."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate_extra(sampling_params.extra_args)

    def __init__(self, vllm_config, req_states: LogitsProcRequestState) -> None:
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError(SPECULATIVE_REFUSED)
        model_config = vllm_config.model_config
        self.model_dir = model_config.model
        self.tokenizer_name = model_config.tokenizer
        self.spec: ControlSpec | None = load_checked_spec(self.model_dir, self.tokenizer_name)
        if self.spec is None:
            logger.warning("%s has no control-token spec; budgets are ignored", self.model_dir)
        self.req_states = req_states
        self.boundaries = (
            boundaries_for(self.tokenizer_name or self.model_dir) if self.spec else frozenset()
        )
        self.slots = (
            ForcingSlots(self.spec, req_states.max_num_reqs, req_states.device, self.boundaries)
            if self.spec is not None
            else None
        )
        self._fallback: dict[int, SamplingParams] = {}  # slot → params, prompt not read yet

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        self._fallback.pop(req_idx, None)
        if self.slots is None:
            return False
        extra = sampling_params.extra_args
        if wants_prompt_fallback(extra):
            self.slots.admit(req_idx, None, 0)  # decided in apply_staged_writes
            self._fallback[req_idx] = sampling_params
            return True
        plan = plan_for(self.spec, extra, lambda: None, self.model_dir, self.boundaries)
        return self._admit(req_idx, plan)

    def _admit(self, req_idx: int, plan) -> bool:
        prompt_len = int(self.req_states.prompt_len.np[req_idx])
        done = int(self.req_states.prefill_len.np[req_idx]) - prompt_len
        return self.slots.admit(req_idx, plan, prompt_len, done)

    def apply_staged_writes(self) -> None:
        if self.slots is None:
            return
        all_token_ids = self.req_states.all_token_ids.gpu
        for req_idx, params in self._fallback.items():
            prompt_len = int(self.req_states.prompt_len.np[req_idx])
            start = max(0, prompt_len - FALLBACK_WINDOW)
            # once per request; none for the runner's warm-up requests (no prompt)
            prompt = all_token_ids[req_idx, start:prompt_len].tolist() if prompt_len else []
            plan = plan_for(
                self.spec,
                params.extra_args,
                lambda p=prompt: decode_budget(self.tokenizer_name, p),
                self.model_dir,
                self.boundaries,
            )
            self._admit(req_idx, plan)
        self._fallback.clear()
        self.slots.flush(all_token_ids)

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        slots = self.slots
        if slots is None or not slots.any_active(ctx.idx_mapping_np):
            return logits
        rs = self.req_states
        step_and_force(
            slots, logits, ctx.expanded_idx_mapping, rs.total_len.gpu, rs.all_token_ids.gpu
        )
        return logits
