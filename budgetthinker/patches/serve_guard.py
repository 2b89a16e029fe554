"""Admission control for `budgetthinker serve`: an ASGI middleware (vLLM's `--middleware`) that
reads each completion request's `vllm_xargs` as the client sent them, before vLLM coerces them
(its schema turns JSON `true` into `1`), and refuses with HTTP 400 and the message `generate`
gives what the forcing processor cannot honour: an unknown key (`budgett`), a wrongly typed value
(`"budget": true`), a budget the served model's mode cannot take (`5` on 8ratio), a two-stage
suffix its spec lacks. The processor itself (`validate_params`) sees only the coerced values and
not the model, so without this a budget the mode cannot take would run unforced.

The served model folder comes from `BUDGETTHINKER_SERVE_MODEL` (set by `serve.Server` for its
child); its control-token spec is read once, when vLLM builds the app. Requests whose body is not
JSON, or whose `vllm_xargs` is not an object, go on to vLLM, which refuses them itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from budgetthinker.control_spec import ControlSpec, has_spec, load_spec
from budgetthinker.patches.vllm_params import check_admission

MODEL_ENV = "BUDGETTHINKER_SERVE_MODEL"
GUARDED_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")


def refusal(body: bytes, spec: ControlSpec | None) -> str | None:
    """Why a request body must be refused at admission, or None (vLLM takes it from here)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    extra = payload.get("vllm_xargs") if isinstance(payload, dict) else None
    if extra is None or not isinstance(extra, Mapping):
        return None
    try:
        check_admission(extra, spec)
    except ValueError as e:
        return str(e)
    return None


class XargsGuard:
    """The ASGI middleware: buffers the body of a guarded POST, answers 400 itself or replays
    the body to vLLM's app unchanged."""

    def __init__(self, app) -> None:
        self.app = app
        model = os.environ.get(MODEL_ENV)
        self.spec = load_spec(model) if model and has_spec(model) else None

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") not in GUARDED_PATHS
        ):
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
        problem = refusal(body, self.spec)
        if problem is not None:
            await _send_400(send, problem)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_400(send, message: str) -> None:
    """An OpenAI-style error, as vLLM answers its own validation errors."""
    error = {"message": message, "type": "BadRequestError", "param": "vllm_xargs", "code": 400}
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
