"""Where BudgetThinker keeps things it builds once and reuses (the converted default model)."""

from __future__ import annotations

import os
from pathlib import Path

from budgetthinker.outputs import user_path

CACHE_ENV = "BUDGETTHINKER_CACHE"


def cache_dir() -> Path:
    """`$BUDGETTHINKER_CACHE`, else `~/.cache/budgetthinker`."""
    env = os.environ.get(CACHE_ENV)
    return user_path(env) if env else Path.home() / ".cache" / "budgetthinker"
