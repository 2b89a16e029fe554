"""BudgetThinker's prompt methods: their forcing settings, `stop_at_think_end`, and the
two-stage form (same request, or a second request under `compat: seed`)."""

from __future__ import annotations

from budgetthinker.delimiters import detect
from budgetthinker.evaluation.methods import SampleContext, get_method
from budgetthinker.generation import GenResult


def ctx(tokenizer, spec, **kw) -> SampleContext:
    return SampleContext(prompt_ids=[1, 2, 3], budget=64, tokenizer=tokenizer, spec=spec,
                         delimiters=detect(tokenizer, spec), max_new_tokens=None,
                         eos_ids=frozenset({2}), **kw)  # fmt: skip


def test_control_forces_and_stop_at_think_end_reaches_the_engines(tokenizer, spec):
    episode = get_method("control").episode(ctx(tokenizer, spec, stop_at_think_end=False))
    request = next(episode)
    assert request.settings.control and not request.settings.two_stage
    assert request.max_new_tokens == 64 + 64 // 50
    assert request.settings.plan(spec).stop_at_think_end is False
    assert request.settings.vllm_extra_args()["stop_at_think_end"] is False
    default = next(get_method("control").episode(ctx(tokenizer, spec)))
    assert default.settings.plan(spec).stop_at_think_end is True


def test_two_stage_in_the_request_or_as_a_second_request(tokenizer, spec):
    same = get_method("withoutremaining").episode(ctx(tokenizer, spec, two_stage=True))
    request = next(same)
    assert request.settings.two_stage and not request.settings.control
    seed = get_method("withoutremaining").episode(
        ctx(tokenizer, spec, two_stage=True, compat=("seed",))
    )
    first = next(seed)
    assert not first.settings.two_stage
    second = seed.send(GenResult([5, 6, 2], "stop"))  # finished output: the suffix all the same
    # the original evaluation's suffix, pinned as a literal (docs/spec.md §2)
    suffix = tokenizer.encode("\n</think>\n\n**Final Answer**\\boxed", add_special_tokens=False)
    assert list(second.prefix_ids) == [5, 6, *suffix]  # end-of-sequence cut first
    assert second.max_new_tokens == 64 + 64 // 50 and second.settings.budget is None
    try:
        seed.send(GenResult([7, 8], "length"))
    except StopIteration as done:
        outcome = done.value
    assert outcome.output_ids == [5, 6, *suffix, 7, 8] and outcome.rounds == 2
