"""Range checks shared by `generate` and `eval`: sampling values and the model's context length.

Values outside these ranges used to be accepted silently (a negative temperature sampled
greedily, `--max-new-tokens 0` meant "the default", a budget past the context length failed deep
inside the engine). Each check names the key as the user typed it and the valid range.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from budgetthinker.errors import UserError

# config.json keys that hold the context length, most common first.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def check_sampling(temperature: float, top_p: float, prefix: str = "--", sep: str = "-") -> None:
    """`temperature >= 0` (0 = greedy) and `0 < top_p <= 1`. `prefix`/`sep` spell the keys as
    the user wrote them: `--top-p` on the command line, `sampling.top_p` in a recipe."""
    if not temperature >= 0:
        raise UserError(
            f"{prefix}temperature must be >= 0 (0 = greedy), got {temperature}; e.g. "
            f"{prefix}temperature{'=' if sep == '_' else ' '}0.6"
        )
    if not 0 < top_p <= 1:
        raise UserError(
            f"{prefix}top{sep}p must be in (0, 1] (1 = no nucleus cut), got {top_p}; e.g. "
            f"{prefix}top{sep}p{'=' if sep == '_' else ' '}0.95"
        )


def check_positive(value: int | None, name: str) -> None:
    """`value` is None (the default applies) or a positive integer."""
    if value is not None and value < 1:
        raise UserError(
            f"{name} must be a positive integer, got {value}; leave it out for the default"
        )


def context_length(model_dir: str | os.PathLike) -> int | None:
    """The model's context length from its `config.json`, or None when it does not say."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for key in CONTEXT_KEYS:
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits(
    model_dir: str | os.PathLike, tokens: int, what: str, fix: str, prompt_tokens: int = 0
) -> None:
    """`prompt_tokens + tokens` must fit the model's context length (when it is known)."""
    limit = context_length(model_dir)
    total = prompt_tokens + tokens
    if limit is not None and total > limit:
        prompt = f"the prompt ({prompt_tokens} tokens) plus " if prompt_tokens else ""
        raise UserError(
            f"{prompt}{what} = {total} tokens exceed the model's context length {limit} "
            f"({model_dir}/config.json); {fix}"
        )
