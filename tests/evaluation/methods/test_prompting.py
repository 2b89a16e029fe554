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


def test_grace_is_the_soft_ending_in_the_same_request(tokenizer, spec):
    """`{name: control, grace: G}`: soft two-stage ending (docs/spec.md §2.7), next to `control`
    in one sweep; not with `compat: seed`, and never below 0."""
    import pytest

    from budgetthinker.delimiters import boundary_token_ids
    from budgetthinker.errors import UserError

    method = get_method({"name": "control", "grace": 16})
    assert method.display_name == "control[grace=16]"
    request = next(method.episode(ctx(tokenizer, spec)))
    assert request.settings.grace == 16 and request.settings.control
    bounds = boundary_token_ids(tokenizer)
    plan = request.settings.plan(spec, bounds)
    assert (plan.grace, plan.cap, plan.boundaries) == (16, 64 + 16, bounds)
    assert request.max_new_tokens == 2 * 80 + len(spec.suffix_ids["eval"])
    assert request.settings.vllm_extra_args()["grace"] == 16
    assert tokenizer.encode(".", add_special_tokens=False)[0] in bounds
    with pytest.raises(UserError, match="grace must be a whole number of tokens >= 0"):
        get_method({"name": "control", "grace": -1})
    with pytest.raises(UserError, match="compat: seed answers in a second request"):
        method.check_compat(["seed"])
