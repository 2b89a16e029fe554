"""The soft ending (docs/spec.md §2.7) of the forcing state machine against an independent
O(L)-per-step oracle of the rule as the spec states it: the suffix starts at the first output
length n with B ≤ n ≤ B + G at which thinking is unfinished and n = B + G or the last token is
a boundary."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgetthinker.errors import UserError
from budgetthinker.forcing import (
    FREE,
    Forcer,
    boundary_ids,
    is_boundary,
    make_plan,
    simulate,
    thinking_cap,
)
from tests.spec_fixtures import SUFFIX_EVAL, THINK_END_ID, fake_spec

PLAIN, DOT, NEWLINE = 7, 5, 6
BOUNDS = frozenset({DOT, NEWLINE})


def oracle(budget: int, grace: int, proposals: list[int], suffix=SUFFIX_EVAL) -> list[int]:
    """The rule read off the whole output at every step (two-stage only, no control tokens)."""
    out: list[int] = []
    start = None
    for proposal in proposals:
        n = len(out)
        window = start is None and THINK_END_ID not in out and budget <= n <= budget + grace
        if window and (n == budget + grace or (out and out[-1] in BOUNDS)):
            start = n
        token = proposal
        if start is not None and n - start < len(suffix):
            token = suffix[n - start]
        out.append(token)
    return out


streams = st.lists(
    st.sampled_from([PLAIN] * 8 + [DOT, NEWLINE, THINK_END_ID]), min_size=0, max_size=160
)


@given(budget=st.integers(8, 90), grace=st.integers(0, 40), proposals=streams)
def test_soft_ending_matches_the_rule(budget, grace, proposals):
    plan = make_plan(fake_spec(), budget, control=False, grace=grace, boundaries=BOUNDS)
    assert simulate(plan, proposals) == oracle(budget, grace, proposals)


@given(budget=st.integers(8, 90), grace=st.integers(0, 40), proposals=streams)
def test_with_control_tokens_only_the_ending_moves(budget, grace, proposals):
    """Control tokens are forced as without grace until the suffix starts, which is never
    later than B + grace; the count of thinking is the forcer's."""
    spec = fake_spec()
    soft = make_plan(spec, budget, grace=grace, boundaries=BOUNDS)
    plain = make_plan(spec, budget)
    out = simulate(soft, proposals)
    forcer = Forcer(soft)
    for token in out:
        forcer.feed(token)
    cut = len(out) if not forcer.suffix_forced else None
    if forcer.suffix_forced:
        cut = next(i for i in range(len(out)) if tuple(out[i : i + 1]) == SUFFIX_EVAL[:1]
                   and i >= budget)  # fmt: skip
        assert budget <= cut <= budget + grace
    assert out[:cut] == simulate(plain, proposals[:cut])
    ends = [i for i, t in enumerate(out) if t == THINK_END_ID]
    assert forcer.thinking_tokens == (ends[0] if ends else len(out))


def test_grace_zero_cuts_at_exactly_the_budget():
    out = simulate(make_plan(fake_spec(), 64, control=False, grace=0), [PLAIN] * 80)
    assert tuple(out[64:68]) == SUFFIX_EVAL


def test_first_boundary_inside_the_window_ends_thinking():
    proposals = [PLAIN] * 120
    proposals[50] = DOT  # before B: not a cue
    proposals[70] = NEWLINE  # index 70 ≥ B − 1 = 63: the suffix starts at n = 71
    proposals[75] = DOT
    plan = make_plan(fake_spec(), 64, control=False, grace=32, boundaries=BOUNDS)
    out = simulate(plan, proposals)
    assert out[70] == NEWLINE and tuple(out[71:75]) == SUFFIX_EVAL
    proposals[70] = PLAIN
    proposals[63] = DOT  # the token at index B − 1 ends a sentence: cut at exactly B
    assert tuple(simulate(plan, proposals)[64:68]) == SUFFIX_EVAL


def test_no_boundary_in_the_window_cuts_at_budget_plus_grace():
    plan = make_plan(fake_spec(), 64, control=False, grace=10, boundaries=BOUNDS)
    proposals = [PLAIN] * 100
    proposals[74] = DOT  # index 74 = B + G: too late
    assert tuple(simulate(plan, proposals)[74:78]) == SUFFIX_EVAL


def test_thinking_that_ended_itself_gets_no_suffix():
    proposals = [PLAIN] * 100
    proposals[66] = THINK_END_ID
    proposals[70] = DOT
    plan = make_plan(fake_spec(), 64, control=False, grace=20, boundaries=BOUNDS)
    assert simulate(plan, proposals) == proposals


def test_grace_implies_two_stage_and_sets_the_latest_cap():
    plan = make_plan(fake_spec(), 100, grace=7, boundaries=BOUNDS)
    assert plan.cap == 107 and plan.suffix == SUFFIX_EVAL and plan.grace == 7
    hard = make_plan(fake_spec(), 100, two_stage=True)
    assert hard.cap == thinking_cap(100) and hard.grace == -1 and not hard.boundaries


@pytest.mark.parametrize("grace", [-1, 1.5, "8", True])
def test_bad_grace_is_one_user_error(grace):
    with pytest.raises(UserError, match="grace must be a whole number of tokens >= 0"):
        make_plan(fake_spec(), 100, grace=grace)


@pytest.mark.parametrize(
    ("text", "boundary"),
    [(".", True), ("\n", True), (".\n\n", True), (" end. ", True), ("?", True), ("!", True),
     (":", True), ("…", True), ("the", False), (" 3", False), ("</think>", False), ("", False),
     (",", False)],
)  # fmt: skip
def test_boundary_tokens(text, boundary):
    assert is_boundary(text) is boundary
    assert boundary_ids(["a", text]) == ({1} if boundary else set())


def test_forced_is_free_after_the_suffix():
    plan = make_plan(fake_spec(), 8, control=False, grace=0)
    forcer = Forcer(plan)
    for _ in range(8 + len(SUFFIX_EVAL)):
        forcer.feed(forcer.forced if forcer.forced != FREE else PLAIN)
    assert forcer.forced == FREE and forcer.thinking_tokens == 9  # SUFFIX_EVAL[1] is </think>
