"""Loading a model folder's tokenizer and weights, the one way every stage does it.

A folder whose tokenizer or weights cannot be read is one line naming the fix (transformers'
own errors are tracebacks), and a prepared folder's control-token spec is checked against its
tokenizer the moment the tokenizer loads (`control_spec.check_tokenizer`: a spec with ordinary or
reordered ids would otherwise force other tokens under the control tokens' names).
"""

from __future__ import annotations

import os
import sys

from budgetthinker.control_spec import check_tokenizer, has_spec, load_spec
from budgetthinker.errors import UserError


def quiet_loading() -> None:
    """transformers' progress bars (loading, writing shards) only on a terminal: in a pipe or a
    log they are noise around the one line a failure prints."""
    if not sys.stderr.isatty():
        from transformers.utils import logging

        logging.disable_progress_bar()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def load_tokenizer(model_dir: str | os.PathLike, *, check_spec: bool = True):
    """The folder's tokenizer (`AutoTokenizer`); a missing or broken one is one UserError. With
    a control-token spec in the folder (and `check_spec`), the spec must match the tokenizer."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # user data: OSError, ValueError, the tokenizers library's errors
        raise UserError(
            f"cannot load the tokenizer of {model_dir} ({_first_line(e)}); the folder needs the "
            "tokenizer files of its base model (tokenizer.json, tokenizer_config.json): copy "
            "them from the base model, or prepare it again with budgetthinker prepare"
        ) from None
    if check_spec and has_spec(model_dir):
        check_tokenizer(load_spec(model_dir), tokenizer, model_dir)
    return tokenizer


def load_causal_lm(model_dir: str | os.PathLike, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` on a checked folder; weights that cannot be read
    are one UserError (the headers were checked by `check_model_dir` already)."""
    from transformers import AutoModelForCausalLM

    quiet_loading()
    try:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except Exception as e:
        if not isinstance(e, (OSError, ValueError)) and not type(e).__module__.startswith(
            "safetensors"
        ):
            raise
        raise UserError(
            f"cannot load the weights of {model_dir} ({_first_line(e)}); copy the model folder "
            "again from the original"
        ) from None
