"""One budget rollout request, engine-free: what to ask the engine, and how to shape its answer.

Used by the verl agent loop (`budgetthinker.rl.verl_agent_loop`) and tested on CPU against the real
vLLM logits processor. docs/spec.md §5: for budget B and `Bt = B + B//50`, generate at most
`min(Bt + Bt//4, max_response_length − 200)` tokens, train on and score the first `Bt − 50`, and
report the untruncated length L to the reward. Forced control tokens are found by replaying the
forcing state machine (`budgetthinker.generation.analyse`) over the response, so no
engine-specific signal is needed; their loss mask is 0 unless `mask_forced_tokens` is off.

Two-stage (validation, `stage=2`): the processor forces the RL suffix in the same request when
thinking is still open at `Bt` tokens (docs/spec.md §2, improved); the answer gets `answer_tokens`
more tokens, and such responses are scored whole. `two_stage_request="second"` is the original
(compat): every response, finished or not, is generated as in training, truncated to `Bt − 50`
tokens, given the suffix and continued by a second request (`answer_request`) of `answer_tokens`
tokens without forcing.

`stop_at_think_end=False` is the original forcing: control tokens are forced after `</think>` too.
"""

from __future__ import annotations

from typing import Any

from budgetthinker.control_spec import ControlSpec
from budgetthinker.forcing import FREE, Forcer, ForcingPlan, make_plan, thinking_cap
from budgetthinker.generation import BudgetSettings, analyse
from budgetthinker.rl.curriculum import generation_cap, truncate_for_scoring

RL_SUFFIX = "rl"
"""The two-stage suffix of RL (`"\\n</think>\\n**Final Answer**\\boxed"`), from the spec."""
TWO_STAGE_REQUESTS = ("same", "second")
"""`same`: the suffix is forced in the same request, only when thinking is still open (improved);
`second`: the original's second request after truncating every response to `Bt − 50`."""


def check_two_stage_request(value: str, key: str = "two_stage_request") -> str:
    if value not in TWO_STAGE_REQUESTS:
        raise ValueError(
            f"{key} must be same (suffix forced in the same request, improved) or second (the "
            f"original's second request), got {value!r}"
        )
    return value


def budget_request(
    spec: ControlSpec,
    budget: int,
    *,
    two_stage: bool,
    force: bool,
    response_length: int,
    answer_tokens: int,
    stop_at_think_end: bool = True,
    two_stage_request: str = "same",
) -> dict[str, Any]:
    """`max_tokens` and the processor's `extra_args` of one rollout request (with
    `two_stage_request="second"`: of its first request, generated as in training)."""
    settings = rollout_settings(budget, two_stage, force, stop_at_think_end, two_stage_request)
    settings.plan(spec)  # validates the budget and the suffix
    if settings.two_stage:
        suffix = len(spec.suffix_ids.get(RL_SUFFIX, ()))
        cap = min(thinking_cap(budget) + suffix + answer_tokens, response_length)
    else:
        cap = generation_cap(budget, response_length)
    return {"max_tokens": cap, "extra_args": settings.vllm_extra_args()}


def rollout_settings(
    budget: int, two_stage: bool, force: bool, stop_at_think_end: bool, two_stage_request: str
) -> BudgetSettings:
    """What the forcing machine does in a rollout's (first) request: the two-stage suffix only
    when it is forced in the same request (`two_stage_request="same"`)."""
    same = two_stage and check_two_stage_request(two_stage_request) == "same"
    return BudgetSettings(
        budget=budget,
        two_stage=same,
        suffix=RL_SUFFIX,
        control=force,
        stop_at_think_end=stop_at_think_end,
    )


def answer_request(
    spec: ControlSpec, budget: int, first_ids: list[int], answer_tokens: int
) -> tuple[list[int], dict[str, Any]]:
    """The original two-stage's second request: the first response truncated to `Bt − 50`
    tokens plus the RL suffix (to append to the prompt), continued for `answer_tokens` tokens
    with nothing forced. Returns (those response tokens, the request's settings)."""
    head = truncate_for_scoring(first_ids, budget) + list(spec.suffix_ids[RL_SUFFIX])
    return head, {"max_tokens": answer_tokens, "extra_args": {"force": 0}}


def shape_response(
    spec: ControlSpec,
    budget: int,
    token_ids: list[int],
    log_probs: list[float] | None,
    *,
    two_stage: bool,
    force: bool,
    mask_forced_tokens: bool,
    response_length: int,
    stop_at_think_end: bool = True,
    forced_part: int | None = None,
) -> dict[str, Any]:
    """Truncate, mask forced tokens and describe one generated response (pure; tested on CPU).

    `forced_part`: only the first tokens came from the forced request (the original two-stage:
    the rest is the suffix and the second request's answer); two-stage responses are kept whole.
    """
    kept = list(token_ids) if two_stage else truncate_for_scoring(token_ids, budget)
    kept = kept[:response_length]
    second = forced_part is not None
    plan = make_plan(
        spec,
        budget,
        control=force,
        two_stage=two_stage and not second,
        suffix=RL_SUFFIX,
        stop_at_think_end=stop_at_think_end,
    )
    forced_tokens = kept[:forced_part] if second else kept
    check_forced(forced_tokens, plan)
    analysis = analyse(forced_tokens, spec, plan)
    if second:
        analysis.suffix_forced = True
    forced = set(analysis.forced_positions)
    mask = [0 if mask_forced_tokens and i in forced else 1 for i in range(len(kept))]
    return {
        "response_ids": kept,
        "response_mask": mask,
        "response_logprobs": list(log_probs[: len(kept)]) if log_probs else None,
        "extra_fields": {
            "budget": budget,
            "response_length": len(token_ids),
            "forced_tokens": len(forced),
            "truncated": len(kept) < len(token_ids),
            "finished_thinking": analysis.finished_thinking,
            "suffix_forced": analysis.suffix_forced,
        },
    }


class ForcingMissing(RuntimeError):
    """A response lacks a token the forcing machine must have forced: forcing is not active."""


def check_forced(token_ids: list[int], plan: ForcingPlan) -> None:
    """Fail loudly when the engine did not force what the plan says it must have.

    An engine started without budgetthinker's logits processor (say, `engine_kwargs` overridden),
    or one that cannot find the model's control-token spec, would otherwise train silently on
    unforced rollouts.
    """
    forcer = Forcer(plan)
    for i, token in enumerate(token_ids):
        want = forcer.forced
        if want != FREE and token != want:
            raise ForcingMissing(
                f"output position {i} should hold the forced token {want} but has {token}: the "
                "rollout engine is not forcing control tokens; keep actor_rollout_ref.rollout."
                "engine_kwargs.vllm.logits_processors=['budgetthinker.patches."
                "vllm_logits_processor:BudgetForcingProcessor'] and budgetthinker_spec.json in "
                "the model folder"
            )
        forcer.feed(token)
