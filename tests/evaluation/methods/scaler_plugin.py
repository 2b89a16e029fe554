"""A custom scaler loaded by dotted path in the tests (stops after the second round)."""

from budgetthinker.evaluation.methods.scalers import should_continue_scaling


@should_continue_scaling
def two_rounds(*, iteration, seq, entropies, **_):
    return iteration < 1
