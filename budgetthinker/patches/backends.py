"""One way to build a generation backend from its name.

Every stage that generates (`budgetthinker generate`, the evaluation runner, TALE's budget
search) builds its engine here, so `hf`, `vllm` and `openai` take the same arguments and fail
with the same error everywhere. Each adapter is imported only when asked for: building an `hf`
backend never imports vLLM, and `openai` needs neither engine.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from budgetthinker.errors import UserError
from budgetthinker.generation import Backend

BACKENDS = ("hf", "vllm", "openai")
"""The backend names every command and recipe accepts."""


def check_backend(name: str, endpoint: str | None = None, *, cli: bool = False) -> None:
    """Fail with one line if `name` is not a backend, or `openai` comes without an endpoint;
    the line is worded as the user wrote it (`--backend …` on a command line, `backend=…` in a
    recipe or override)."""
    key, ep = ("--backend ", "--endpoint ") if cli else ("backend=", "endpoint=")
    if name not in BACKENDS:
        raise UserError(f"unknown {key}{name}; choose from {', '.join(BACKENDS)}")
    if name == "openai" and not endpoint:
        raise UserError(
            f"{key}openai needs {ep}http://HOST:PORT, an OpenAI-compatible server "
            "(e.g. of `budgetthinker serve`)"
        )


def make_backend(
    name: str,
    model_dir: str,
    *,
    seed: int = 0,
    max_model_len: int | None = None,
    endpoint: str | None = None,
    api_key_env: str | None = None,
    concurrency: int = 8,
    request_timeout: float | None = None,
    retries: int | None = None,
    vllm_kwargs: Mapping[str, Any] | None = None,
) -> Backend:
    """The backend `name` on the prepared model folder `model_dir`.

    `max_model_len` and `vllm_kwargs` configure the vLLM engine (ignored by the others);
    `endpoint`, `api_key_env`, `concurrency`, `request_timeout` and `retries` the OpenAI client
    (its tokenizer comes from `model_dir`, so prompts and forcing match the local engines token
    for token)."""
    check_backend(name, endpoint)
    if name == "hf":
        from budgetthinker.patches.hf_backend import HFBackend

        return HFBackend(model_dir, seed=seed)
    if name == "openai":
        from budgetthinker.patches.openai_backend import (
            DEFAULT_RETRIES,
            DEFAULT_TIMEOUT,
            OpenAIBackend,
        )

        return OpenAIBackend(
            endpoint, model_dir=model_dir, api_key_env=api_key_env, concurrency=concurrency,
            seed=seed, timeout=request_timeout or DEFAULT_TIMEOUT,
            retries=DEFAULT_RETRIES if retries is None else retries,
        )  # fmt: skip
    from budgetthinker.patches.vllm_backend import VLLMBackend

    print("Starting the vLLM engine (about 40 s on a small CPU machine)…", file=sys.stderr)
    return VLLMBackend(model_dir, seed=seed, max_model_len=max_model_len, **(vllm_kwargs or {}))
