"""Custom scalers loaded by dotted path in the tests: `two_rounds` stops after the second
round, `long_tail` appends the ignore string three times (longer than what is left of B)."""

from budgetthinker.evaluation.methods.scalers import scale_token_only, should_continue_scaling


@should_continue_scaling
def two_rounds(*, iteration, seq, entropies, **_):
    return iteration < 1


@scale_token_only
def long_tail(*, iteration, seq, entropies, scale_token, **_):
    return [*scale_token, *scale_token, *scale_token]
