"""The forcing state machine against the original engine patch's rule, re-implemented here as
an independent O(L)-per-step oracle that scans the whole output at every step (docs/spec.md §2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetthinker.control_spec import parse_mode
from budgetthinker.errors import UserError
from budgetthinker.forcing import FREE, Forcer, make_plan, simulate, thinking_cap
from tests.spec_fixtures import SUFFIX_EVAL, SUFFIX_RL, THINK_END_ID, fake_spec

PLAIN = 7  # an ordinary token id


def oracle(mode_name: str, budget: int, proposals: list[int], spec) -> list[int]:
    """The original patch's rule: find the last control token in the output so far; if there is
    none, force the top token once the output is `interval` long; otherwise force the one below
    it once `interval` tokens follow it. Control forcing only, no think-end handling."""
    mode = parse_mode(mode_name)
    if mode.kind == "ratio":
        interval, top = budget // mode.parts + 1, mode.parts - 1
    else:
        interval, top = mode.step, budget // mode.step - 1
    level_of = {tid: k for k, tid in enumerate(spec.token_ids, start=1)}
    out: list[int] = []
    for proposal in proposals:
        last = max((i for i, t in enumerate(out) if t in level_of), default=-1)
        token = proposal
        if last < 0:
            if len(out) == interval and top >= 1:
                token = spec.token_ids[top - 1]
        else:
            level = level_of[out[last]]
            if level > 1 and len(out) - last - 1 == interval:
                token = spec.token_ids[level - 2]
        out.append(token)
    return out


def forced_indices(spec, out):
    return [i for i, t in enumerate(out) if t in spec.level_of]


@pytest.mark.parametrize("budget", [8, 9, 15, 16, 17, 63, 64, 100, 250, 999, 1000, 4000, 10000])
def test_ratio_positions_closed_form(budget):
    spec = fake_spec("8ratio")
    out = simulate(make_plan(spec, budget), [PLAIN] * (budget + 100))
    delta = budget // 8 + 1
    assert forced_indices(spec, out) == [k * delta + (k - 1) for k in range(1, 8)]
    # 7/8 first, then down to 1/8
    assert [out[k * delta + k - 1] for k in range(1, 8)] == list(reversed(spec.token_ids))
    # 1/8 lands near 7B/8 (docs/spec.md §2)
    assert abs(7 * delta + 6 - 7 * budget / 8) <= 14


@pytest.mark.parametrize("parts", [2, 3, 4, 5, 10])
@pytest.mark.parametrize("budget", [10, 11, 37, 500, 1234])
def test_nratio_positions(parts, budget):
    spec = fake_spec(f"{parts}ratio")
    out = simulate(make_plan(spec, budget), [PLAIN] * (2 * budget + 20))
    delta = budget // parts + 1
    assert forced_indices(spec, out) == [k * delta + k - 1 for k in range(1, parts)]
    assert out[delta] == spec.token_ids[parts - 2]


@pytest.mark.parametrize("mode", ["remaining250", "remaining50"])
@pytest.mark.parametrize("budget", [500, 501, 749, 750, 1000, 2600, 10000])
def test_countdown_positions(mode, budget):
    spec = fake_spec(mode)
    step = parse_mode(mode).step
    out = simulate(make_plan(spec, budget), [PLAIN] * (budget + budget // step + 50))
    rounded = budget // step * step
    values = list(range(rounded - step, 0, -step))  # B−S, B−2S, …, S
    idx = forced_indices(spec, out)
    assert idx == [k * step + k - 1 for k in range(1, len(values) + 1)]
    assert [spec.level_of[out[i]] * step for i in idx] == values


def test_short_output_gets_only_reached_tokens():
    spec = fake_spec()
    out = simulate(make_plan(spec, 800), [PLAIN] * 250)  # delta = 101
    assert forced_indices(spec, out) == [101, 203]


def test_model_sampled_control_token_restarts_count():
    spec = fake_spec()
    budget = 80  # delta = 11
    proposals = [PLAIN] * 200
    six_eighths = spec.token_ids[5]
    proposals[4] = six_eighths  # the model writes 6/8 itself at index 4
    out = simulate(make_plan(spec, budget), proposals)
    # next forced: 5/8 at 4 + 11 + 1 = 16, then 4/8 at 28, …, 1/8 at 64
    assert forced_indices(spec, out) == [4, 16, 28, 40, 52, 64]
    assert out[16] == spec.token_ids[4]
    assert out[64] == spec.token_ids[0]


def test_model_sampled_lowest_token_ends_forcing():
    spec = fake_spec()
    proposals = [PLAIN] * 300
    proposals[3] = spec.token_ids[0]  # 1/8 sampled early
    out = simulate(make_plan(spec, 100), proposals)
    assert forced_indices(spec, out) == [3]


control_streams = st.integers(min_value=8, max_value=600).flatmap(
    lambda b: st.tuples(
        st.just(b),
        st.lists(
            st.one_of(
                st.just(PLAIN), st.just(PLAIN), st.just(PLAIN), st.sampled_from(range(1000, 1007))
            ),
            min_size=0,
            max_size=b + 80,
        ),
    )
)


@settings(max_examples=300, deadline=None)
@given(control_streams)
def test_ratio_matches_original_rule(case):
    budget, proposals = case
    spec = fake_spec("8ratio")
    assert simulate(make_plan(spec, budget), proposals) == oracle("8ratio", budget, proposals, spec)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=2, max_value=16),
    st.integers(min_value=16, max_value=400),
    st.lists(st.integers(min_value=0, max_value=3), max_size=500),
)
def test_nratio_matches_original_rule(parts, budget, picks):
    spec = fake_spec(f"{parts}ratio")
    # mostly plain tokens, sometimes a random control token
    proposals = [
        PLAIN if p else spec.token_ids[(i * 7) % len(spec.token_ids)] for i, p in enumerate(picks)
    ]
    got = simulate(make_plan(spec, budget), proposals)
    assert got == oracle(f"{parts}ratio", budget, proposals, spec)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=100, max_value=1200), st.lists(st.integers(0, 9), max_size=1300))
def test_countdown_matches_original_rule(budget, picks):
    spec = fake_spec("remaining50")
    proposals = [PLAIN if p else spec.token_ids[(i * 13) % 24] for i, p in enumerate(picks)]
    got = simulate(make_plan(spec, budget), proposals)
    assert got == oracle("remaining50", budget, proposals, spec)


def test_no_control_after_think_end_by_default():
    spec = fake_spec()
    proposals = [PLAIN] * 200
    proposals[30] = THINK_END_ID
    out = simulate(make_plan(spec, 80), proposals)  # delta 11: 11, 23 forced, then thinking ends
    assert forced_indices(spec, out) == [11, 23]


def test_seed_compat_keeps_forcing_after_think_end():
    spec = fake_spec()
    proposals = [PLAIN] * 200
    proposals[30] = THINK_END_ID
    out = simulate(make_plan(spec, 80, stop_at_think_end=False), proposals)
    assert forced_indices(spec, out) == [11 * k + k - 1 for k in range(1, 8)]


@pytest.mark.parametrize("budget", [8, 49, 50, 64, 100, 333, 1000])
@pytest.mark.parametrize("suffix,ids", [("eval", SUFFIX_EVAL), ("rl", SUFFIX_RL)])
def test_two_stage_suffix_at_cap_when_thinking_unfinished(budget, suffix, ids):
    spec = fake_spec()
    cap = thinking_cap(budget)
    assert cap == budget + budget // 50
    out = simulate(make_plan(spec, budget, two_stage=True, suffix=suffix), [PLAIN] * (cap + 40))
    assert tuple(out[cap : cap + len(ids)]) == ids
    assert out[cap + len(ids) :] == [PLAIN] * (40 - len(ids))  # free again afterwards
    assert forced_indices(spec, out[:cap]) == forced_indices(spec, out)  # no control after


def test_two_stage_not_forced_when_thinking_finished():
    spec = fake_spec()
    proposals = [PLAIN] * 300
    proposals[50] = THINK_END_ID
    out = simulate(make_plan(spec, 100, two_stage=True), proposals)
    assert SUFFIX_EVAL[0] not in out
    assert out.count(THINK_END_ID) == 1


def test_two_stage_without_control_tokens():
    spec = fake_spec()
    out = simulate(make_plan(spec, 100, control=False, two_stage=True), [PLAIN] * 120)
    assert forced_indices(spec, out) == []
    assert tuple(out[102:106]) == SUFFIX_EVAL


def test_sampled_control_token_starts_no_chain_without_control():
    """A plan without control tokens (two-stage only) must never force one, even after the model
    samples a control token itself (this once forced 5/8 … 1/8 back to back)."""
    spec = fake_spec()
    proposals = [PLAIN] * 60
    proposals[5] = spec.token_ids[5]  # the model samples 6/8 on its own
    out = simulate(make_plan(spec, 100, control=False, two_stage=True), proposals)
    assert forced_indices(spec, out) == [5]
    assert out == proposals


def test_forcer_state_is_constant_size():
    """O(1) state: the forcer keeps a fixed set of integers, however long the output grows."""
    spec = fake_spec()
    forcer = Forcer(make_plan(spec, 10000))
    for _ in range(20000):
        forcer.feed(forcer.forced if forcer.forced != FREE else PLAIN)
    assert not hasattr(forcer, "__dict__")
    assert {type(getattr(forcer, s)) for s in ("n", "since", "level", "think_end_index")} == {int}
    assert forcer.n == 20000 and forcer.level == 0


@pytest.mark.parametrize(
    "mode,budget,message",
    [
        ("8ratio", 0, "positive"),
        ("8ratio", -3, "positive"),
        ("8ratio", 7, "at least 8"),
        ("8ratio", "100", "integer"),
        ("8ratio", 12.0, "integer"),
        ("8ratio", True, "integer"),
        ("remaining250", 499, "at least 500"),
        ("remaining250", 10500, "too large"),
    ],
)
def test_bad_budgets_are_user_errors(mode, budget, message):
    with pytest.raises(UserError, match=message):
        make_plan(fake_spec(mode), budget)


def test_countdown_largest_budget_starts_at_largest_token():
    spec = fake_spec("remaining250")
    out = simulate(make_plan(spec, 10499), [PLAIN] * 300)
    assert out[250] == spec.token_ids[-1]  # the 10000 token
