"""Small hand-made control-token specs for the pure (model-free) tests."""

from __future__ import annotations

from budgetthinker.control_spec import ControlSpec, parse_mode

THINK_END_ID = 999
SUFFIX_EVAL = (900, THINK_END_ID, 901, 902)
SUFFIX_RL = (900, THINK_END_ID, 903)
FIRST_CONTROL_ID = 1000


def fake_spec(mode: str = "8ratio") -> ControlSpec:
    """A spec with control ids 1000, 1001, … (level 1 first), like a real prepared model's."""
    parsed = parse_mode(mode)
    strings = parsed.token_strings()
    return ControlSpec(
        mode=parsed.name,
        token_strings=tuple(strings),
        token_ids=tuple(range(FIRST_CONTROL_ID, FIRST_CONTROL_ID + len(strings))),
        think_start_id=998,
        think_end_id=THINK_END_ID,
        suffix_ids={"eval": SUFFIX_EVAL, "rl": SUFFIX_RL},
    )
