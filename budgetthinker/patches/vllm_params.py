"""Per-request forcing settings as vLLM receives them (`SamplingParams.extra_args`, `vllm_xargs`
over HTTP), shared by the V1 and V2 processors so both accept and refuse exactly the same input.

Imports neither vLLM nor torch: vLLM validates parameters in its front-end process.

    budget      int > 0    thinking budget B (turns forcing on)
    two_stage   bool/0/1   force the two-stage suffix after B + B//50 unfinished thinking tokens
    suffix      "eval"|"rl"  which two-stage suffix (default "eval")
    control     bool/0/1   0: no control tokens (two-stage suffix only), default 1
    force       bool/0/1   0 turns forcing off for this request (also the prompt fallback)
    stop_at_think_end  bool/0/1  1 (default): no control tokens after `</think>`
    grace       int >= 0   soft ending (implies two_stage): the suffix may start after B at the
                           first boundary token, at the latest after B + grace (docs/spec.md §2.7)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import lru_cache

from budgetthinker.control_spec import ControlSpec, check_tokenizer, has_spec, load_spec
from budgetthinker.errors import UserError
from budgetthinker.forcing import ForcingPlan, check_grace, make_plan

logger = logging.getLogger(__name__)

EXTRA_KEYS = ("budget", "two_stage", "suffix", "control", "force", "stop_at_think_end", "grace")
FALLBACK_WINDOW = 512  # prompt tokens decoded when looking for a budget tip


def flag(extra: Mapping, key: str, default: bool) -> bool:
    value = extra.get(key, default)
    if value in (True, False, 0, 1):
        return bool(value)
    raise ValueError(f"extra_args[{key!r}] must be true/false or 0/1, got {value!r}")


def validate_extra(extra: Mapping | None) -> None:
    """Raise `ValueError` (vLLM turns it into HTTP 400) for settings no request may carry."""
    extra = extra or {}
    if "budget" in extra:
        b = extra["budget"]
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ValueError(f"extra_args['budget'] must be a positive integer, got {b!r}")
    for key in ("two_stage", "control", "force", "stop_at_think_end"):
        if key in extra:
            flag(extra, key, False)
    if extra.get("suffix", "eval") not in ("eval", "rl"):
        raise ValueError(f"extra_args['suffix'] must be 'eval' or 'rl', got {extra['suffix']!r}")
    if extra.get("grace") is not None:
        try:
            check_grace(extra["grace"])
        except UserError as e:
            raise ValueError(f"extra_args['grace']: {e}") from None
        if not flag(extra, "two_stage", True):
            raise ValueError(
                "extra_args['grace'] is the soft two-stage ending; it cannot go with two_stage: 0"
            )


def plan_settings(extra: Mapping) -> dict:
    """`make_plan`'s keyword arguments for validated `extra` (budget and boundaries aside)."""
    return {
        "control": flag(extra, "control", True),
        "two_stage": flag(extra, "two_stage", False),
        "suffix": extra.get("suffix", "eval"),
        "stop_at_think_end": flag(extra, "stop_at_think_end", True),
        "grace": extra.get("grace"),
    }


def check_admission(extra: Mapping, spec: ControlSpec | None) -> None:
    """The `vllm_xargs` of one HTTP request as the client sent them (`serve_guard`): every key
    known, every value of its type (a JSON `true` is not a budget), and a budget the model's mode
    can honour, with the message `generate` gives; `ValueError` (HTTP 400) otherwise."""
    unknown = sorted(str(k) for k in extra if k not in EXTRA_KEYS)
    if unknown:
        raise ValueError(
            f"unknown vllm_xargs key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; the keys are {', '.join(EXTRA_KEYS)}"
        )
    validate_extra(extra)
    if "budget" not in extra or not flag(extra, "force", True):
        return
    if spec is None:
        raise ValueError("the served model has no control-token spec, so no budget can be forced")
    try:
        make_plan(spec, extra["budget"], **plan_settings(extra))
    except UserError as e:
        raise ValueError(str(e)) from None


def load_checked_spec(model_dir: str, tokenizer_name: str) -> ControlSpec | None:
    """The engine's spec (None without one), checked against the engine's tokenizer
    (`control_spec.check_tokenizer`): a spec that does not match stops the engine at start,
    instead of forcing other tokens under the control tokens' names."""
    if not has_spec(model_dir):
        return None
    spec = load_spec(model_dir)
    try:
        check_tokenizer(spec, _tokenizer(tokenizer_name or model_dir), model_dir)
    except UserError as e:
        raise ValueError(str(e)) from None
    return spec


def wants_prompt_fallback(extra: Mapping | None) -> bool:
    """True when the budget must come from a tip in the prompt (no budget, forcing not off)."""
    extra = extra or {}
    return "budget" not in extra and flag(extra, "force", True)


def plan_for(
    spec: ControlSpec | None,
    extra: Mapping | None,
    prompt_budget: Callable[[], int | None],
    model_dir: str,
    boundaries: frozenset[int] = frozenset(),
) -> ForcingPlan | None:
    """The plan a request asks for, or None (left untouched). `prompt_budget` is called only for
    the fallback. Settings that do not suit the model are logged and the request runs unforced:
    at this point vLLM can no longer fail the request cleanly."""
    extra = extra or {}
    if not flag(extra, "force", True):
        return None
    budget = extra.get("budget")
    if budget is None:
        budget = prompt_budget() if spec is not None else None
        if budget is None:
            return None
    if spec is None:
        logger.warning("%s has no control-token spec; budget ignored", model_dir)
        return None
    try:
        return make_plan(spec, budget, boundaries=boundaries, **plan_settings(extra))
    except UserError as e:
        logger.warning("request left unforced: %s", e)
        return None


@lru_cache(maxsize=4)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


@lru_cache(maxsize=4)
def boundaries_for(tokenizer_name: str) -> frozenset[int]:
    """The soft ending's boundary token ids of the engine's tokenizer, built once per process
    (one object, so `ForcingSlots` recognises its own plans by identity)."""
    from budgetthinker.delimiters import boundary_token_ids

    return boundary_token_ids(_tokenizer(tokenizer_name))


def decode_budget(tokenizer_name: str, prompt_ids: list[int]) -> int | None:
    """Budget named by a tip in the last `FALLBACK_WINDOW` prompt tokens (tokenizer loaded once
    per process, on the first request that needs it)."""
    from budgetthinker.prompts import budget_from_prompt

    if not prompt_ids:
        return None
    text = _tokenizer(tokenizer_name).decode(
        prompt_ids[-FALLBACK_WINDOW:], skip_special_tokens=False
    )
    return budget_from_prompt(text)
