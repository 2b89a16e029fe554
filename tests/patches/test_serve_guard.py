"""Admission control of `budgetthinker serve` (`serve_guard.XargsGuard`) without a server: the raw
`vllm_xargs` a client sends, before vLLM coerces them, refused with `generate`'s message; every
other request reaches the app with its body unchanged (the real server:
tests/patches/test_serve.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from budgetthinker.patches.serve_guard import MODEL_ENV, XargsGuard, refusal


def body(xargs) -> bytes:
    return json.dumps({"model": "m", "prompt": "hi", "vllm_xargs": xargs}).encode()


@pytest.mark.parametrize(
    ("xargs", "message"),
    [
        ({"budget": 5}, "budget 5 is too small for mode 8ratio"),
        ({"budget": True}, "must be a positive integer, got True"),
        ({"budget": "100"}, "must be a positive integer, got '100'"),
        ({"budgett": 100}, "unknown vllm_xargs key 'budgett'"),
        ({"budget": 100, "two_stage": "yes"}, "must be true/false or 0/1"),
        ({"budget": 100, "suffix": "other"}, "'eval' or 'rl'"),
    ],
)
def test_what_cannot_be_honoured_is_refused(spec, xargs, message):
    assert message in refusal(body(xargs), spec)


@pytest.mark.parametrize(
    "xargs",
    [{"budget": 16}, {"budget": 16, "two_stage": True, "suffix": "rl"}, {"force": 0},
     {"budget": 5, "force": 0}, {}, None, "not an object"],
)  # fmt: skip
def test_what_can_be_honoured_goes_on(spec, xargs):
    assert refusal(body(xargs), spec) is None
    assert refusal(b"{not json", spec) is None  # vLLM refuses it itself


def test_a_budget_without_a_spec_is_refused():
    assert "no control-token spec" in refusal(body({"budget": 100}), None)


def _call(guard, path: str, payload: bytes, chunks: int = 2, reply: bytes = b"{}"):
    """Run one request through the middleware (the inner app answers `reply`); what the inner
    app received and what was sent."""
    received, sent = [], []
    parts = _split(payload, chunks)
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
                for i, p in enumerate(parts)]  # fmt: skip

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        message = await receive()
        received.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": reply, "more_body": False})

    guard.app = app
    scope = {"type": "http", "method": "POST", "path": path}
    asyncio.run(guard(scope, receive, send))
    return received, sent


def _split(payload: bytes, n: int) -> list[bytes]:
    size = max(1, len(payload) // n)
    return [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]


def test_the_middleware_answers_400_or_replays_the_body(monkeypatch, prepared_model):
    monkeypatch.setenv(MODEL_ENV, str(prepared_model))
    guard = XargsGuard(app=None)
    received, sent = _call(guard, "/v1/completions", body({"budget": 5}))
    assert received == [] and sent[0]["status"] == 400
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == 400 and "budget 5 is too small" in error["message"]
    good = body({"budget": 16, "two_stage": 1})
    received, sent = _call(guard, "/v1/chat/completions", good, chunks=3)
    assert json.loads(received[0]) == {**json.loads(good), "return_token_ids": True}
    assert sent[0]["status"] == 200
    assert (b"x-budgetthinker-budget", b"16") in sent[0]["headers"]
    plain = json.dumps({"model": "m", "messages": []}).encode()
    received, sent = _call(guard, "/v1/chat/completions", plain)
    assert received == [plain]  # nothing to resolve: the client's bytes
    assert (b"x-budgetthinker-budget", b"none") in sent[0]["headers"]
    received, _ = _call(guard, "/v1/models", body({"budget": 5}))  # not a guarded path
    assert received  # passed through untouched
