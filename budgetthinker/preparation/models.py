"""One way to turn a model name from a command line or recipe into a folder.

`default` is the embedded SmolLM2 prepared for a mode (converted and prepared in the cache on
first use); anything else must be a transformers model folder, and a stage that forces control
tokens also needs its `budgetthinker_spec.json`. Every stage resolves its model here, so the
name means the same thing everywhere and every mistake gets the same one-line error.

Models and tokenizers load through `budgetthinker.preparation.loading` (re-exported here).

`python -m budgetthinker.preparation.models` converts and prepares the embedded model into the
cache (the test command does it once so the SFT and RL environments reuse the folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from budgetthinker.control_spec import SPEC_FILENAME, has_spec
from budgetthinker.errors import UserError
from budgetthinker.paths import cache_dir
from budgetthinker.preparation.embedded_model import BASE_NAME, DEFAULT, check_model_dir
from budgetthinker.preparation.loading import load_causal_lm, load_tokenizer
from budgetthinker.preparation.prepare import prepare_model

__all__ = ["DEFAULT", "default_prepared_dir", "load_causal_lm", "load_tokenizer", "resolve_model"]


def default_prepared_dir(mode: str = "8ratio") -> Path:
    """The embedded model prepared for `mode`, in the cache (prepared on first use)."""
    target = cache_dir() / "models" / f"{BASE_NAME}-{mode}"
    prepare_model(DEFAULT, mode, target, quiet=True)
    return target


def resolve_model(
    model: str | os.PathLike,
    *,
    mode: str = "8ratio",
    prepared: bool = False,
    what: str = "model",
) -> Path:
    """`default` → the embedded model prepared for `mode`; anything else → the folder, checked
    (a `config.json` that parses; with `prepared`, also the control-token spec)."""
    if str(model) == DEFAULT:
        return default_prepared_dir(mode)
    path = check_model_dir(model, what)
    if prepared and not has_spec(path):
        raise UserError(
            f"{what} {str(model)!r} has no control-token spec ({SPEC_FILENAME}), so budgets "
            f"cannot be forced; prepare "
            f"it first: budgetthinker prepare --base {model} --mode {mode} --out <folder>"
        )
    return path


if __name__ == "__main__":
    print(default_prepared_dir())
