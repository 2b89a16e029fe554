"""vLLM adapter: a V1 logits processor (`vllm.v1.sample.logits_processor`) that applies the
forcing state machine to every request that asks for it.

Load it into an engine with `LLM(model=PREPARED_DIR, logits_processors=[BudgetForcingProcessor])`
(or `--logits-processors budgetthinker.patches.vllm_logits_processor:BudgetForcingProcessor` for
`vllm serve`). The control-token spec is read from the model folder, so the engine must serve a
prepared model. Per-request settings go in `SamplingParams(extra_args={...})` (`vllm_xargs` over
HTTP):

    budget      int > 0    thinking budget B (turns forcing on)
    two_stage   bool/0/1   force the two-stage suffix after B + B//50 unfinished thinking tokens
    suffix      "eval"|"rl"  which two-stage suffix (default "eval")
    control     bool/0/1   0: no control tokens (two-stage suffix only), default 1
    force       bool/0/1   0 turns forcing off for this request (also the prompt fallback)
    stop_at_think_end  bool/0/1  1 (default): no control tokens after `</think>`

A request without `budget` whose prompt carries a budget tip ("Complete thinking within B tokens
or fewer") is forced with that B, as the original engine patch did; any other request is left
untouched.

Position is taken from the length of the engine's live output-token list, not from a counter of
calls: V1 also runs processors on rows still in chunked prefill and then discards their token,
so a hand-incremented counter would drift. Feeding only the tokens appended since the last call
keeps the work O(1) per request per step.
"""

from __future__ import annotations

import logging

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from budgetthinker.control_spec import ControlSpec, has_spec, load_spec
from budgetthinker.errors import UserError
from budgetthinker.forcing import FREE, Forcer, make_plan
from budgetthinker.patches.masking import force_tokens
from budgetthinker.prompts import budget_from_prompt

logger = logging.getLogger(__name__)

EXTRA_KEYS = ("budget", "two_stage", "suffix", "control", "force", "stop_at_think_end")
_FALLBACK_WINDOW = 512  # prompt tokens decoded when looking for a budget tip


def _flag(extra: dict, key: str, default: bool) -> bool:
    value = extra.get(key, default)
    if value in (True, False, 0, 1):
        return bool(value)
    raise ValueError(f"extra_args[{key!r}] must be true/false or 0/1, got {value!r}")


class BudgetForcingProcessor(LogitsProcessor):
    """Forces control tokens per request; see the module docstring for the settings."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        extra = sampling_params.extra_args or {}
        if "budget" in extra:
            b = extra["budget"]
            if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
                raise ValueError(f"extra_args['budget'] must be a positive integer, got {b!r}")
        for key in ("two_stage", "control", "force", "stop_at_think_end"):
            if key in extra:
                _flag(extra, key, False)
        if extra.get("suffix", "eval") not in ("eval", "rl"):
            raise ValueError(
                f"extra_args['suffix'] must be 'eval' or 'rl', got {extra['suffix']!r}"
            )

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        model_config = vllm_config.model_config
        self.model_dir = model_config.model
        self.tokenizer_name = model_config.tokenizer
        self.spec: ControlSpec | None = (
            load_spec(self.model_dir) if has_spec(self.model_dir) else None
        )
        self.device = device
        self.rows: dict[int, tuple[Forcer, list[int]]] = {}
        self._tokenizer = None
        self._warned = False

    def is_argmax_invariant(self) -> bool:
        return False  # forcing changes the argmax; greedy requests must still see it

    def _plan_for(self, params: SamplingParams, prompt_ids: list[int] | None):
        extra = params.extra_args or {}
        if not _flag(extra, "force", True):
            return None
        budget = extra.get("budget")
        if budget is None:
            budget = self._budget_from_prompt(prompt_ids)
            if budget is None:
                return None
        if self.spec is None:
            self._warn(f"{self.model_dir} has no control-token spec; budget ignored")
            return None
        try:
            return make_plan(
                self.spec,
                budget,
                control=_flag(extra, "control", True),
                two_stage=_flag(extra, "two_stage", False),
                suffix=extra.get("suffix", "eval"),
                stop_at_think_end=_flag(extra, "stop_at_think_end", True),
            )
        except UserError as e:
            self._warn(f"request left unforced: {e}")
            return None

    def _budget_from_prompt(self, prompt_ids: list[int] | None) -> int | None:
        if self.spec is None or not prompt_ids:
            return None
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
        text = self._tokenizer.decode(prompt_ids[-_FALLBACK_WINDOW:], skip_special_tokens=False)
        return budget_from_prompt(text)

    def _warn(self, message: str) -> None:
        logger.warning("BudgetForcingProcessor: %s", message)

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
