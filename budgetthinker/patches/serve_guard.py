"""Admission control for `budgetthinker serve`: an ASGI middleware (vLLM's `--middleware`) that
reads each completion request's body as the client sent it, before vLLM coerces anything (its
schema turns JSON `true` into `1`), resolves the request's budget from whichever dialect it uses
(`serve_budgets.resolve`: `vllm_xargs`, `thinking_token_budget`, `reasoning_effort`, the server
default), and refuses with HTTP 400 and the message `generate` gives what the forcing processor
cannot honour: an unknown key (`budgett`), a wrongly typed value (`"budget": true`), a budget
the served model's mode cannot take (`5` on 8ratio), a two-stage suffix its spec lacks, two
budgets that disagree, an effort the map lacks, a `grace` below 0. The processor itself
(`validate_params`) sees only the coerced values and not the model, so without this a budget the
mode cannot take would run unforced.

What passes goes on with the resolved budget in `vllm_xargs`; the response gets the budget in
headers and, for non-streamed budgeted requests, thinking and answer tokens in `usage`
(`serve_budgets.account`).

The served model folder comes from `BUDGETTHINKER_SERVE_MODEL`, the server's defaults from
`BUDGETTHINKER_SERVE_BUDGETS` (both set by `serve.Server` for its child); the spec is read once,
when vLLM builds the app. Requests whose body is not JSON, or whose `vllm_xargs` is not an
object, go on to vLLM, which refuses them itself.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping

from budgetthinker.control_spec import ControlSpec, has_spec, load_spec
from budgetthinker.patches.serve_budgets import (
    BUDGETS_ENV,
    Resolved,
    ServeBudgets,
    account,
    headers,
    resolve,
)
from budgetthinker.patches.vllm_params import check_admission

MODEL_ENV = "BUDGETTHINKER_SERVE_MODEL"
GUARDED_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")


def admit(
    body: bytes, path: str, spec: ControlSpec | None, budgets: ServeBudgets | None = None
) -> Resolved | str:
    """The request as it goes on to vLLM, or why it is refused (HTTP 400)."""
    budgets = budgets or ServeBudgets()
    try:
        payload = json.loads(body)
    except ValueError:
        return Resolved({}, source="not JSON")
    if not isinstance(payload, dict):
        return Resolved({}, source="not JSON")
    try:
        if path == "/v1/responses":  # the dialects are the two completion APIs': checks only
            xargs = payload.get("vllm_xargs")
            if isinstance(xargs, Mapping):
                check_admission(xargs, spec)
            return Resolved(payload)
        return resolve(payload, path, budgets, spec)
    except ValueError as e:
        return str(e)


def refusal(body: bytes, spec: ControlSpec | None) -> str | None:
    """Why a request body must be refused at admission, or None (vLLM takes it from here)."""
    result = admit(body, "/v1/completions", spec)
    return result if isinstance(result, str) else None


class XargsGuard:
    """The ASGI middleware: buffers the body of a guarded POST, answers 400 itself or passes the
    resolved body to vLLM's app, and adds the applied budget to the response."""

    def __init__(self, app) -> None:
        self.app = app
        model = os.environ.get(MODEL_ENV)
        self.spec = load_spec(model) if model and has_spec(model) else None
        self.budgets = ServeBudgets.from_env(os.environ.get(BUDGETS_ENV))

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to admit
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        resolved = admit(body, path, self.spec, self.budgets)
        if isinstance(resolved, str):
            await _send_400(send, resolved)
            return
        if resolved.changed:
            body = json.dumps(resolved.body).encode()
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, self._sender(send, resolved))

    def _sender(self, send, resolved: Resolved):
        """`send` with our headers on the response, and the usage rewritten when asked."""
        extra = headers(resolved)
        if not resolved.account or self.spec is None:

            async def tagged(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            return tagged
        start: dict | None = None
        chunks: list[bytes] = []

        async def accounted(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            if start.get("status") == 200:
                with contextlib.suppress(ValueError):  # not JSON after all: pass it on unchanged
                    body = json.dumps(account(json.loads(body), resolved, self.spec)).encode()
            kept = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            length = (b"content-length", b"%d" % len(body))
            await send({**start, "headers": [*kept, length, *extra]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return accounted


async def _send_400(send, message: str) -> None:
    """An OpenAI-style error, as vLLM answers its own validation errors."""
    error = {"message": message, "type": "BadRequestError", "param": "vllm_xargs", "code": 400}
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
