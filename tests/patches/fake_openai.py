"""A faulty OpenAI-compatible server for tests and the careless-user sweep: `/v1/models` answers
properly, `/v1/completions` answers according to `mode` (a good answer, or one of the faults a
real server, proxy or network produces). Runs on 127.0.0.1 and a free port in a daemon thread.

    with FakeServer("abort") as server:
        ... endpoint=server.url ...
        server.completions  # how many completion requests it was sent
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = (
    "good", "abort", "finish_null", "truncated_json", "short_body", "no_choices", "error_200",
    "html", "text_null", "ids_out_of_vocab", "too_many_tokens", "retry_after", "slow",
)  # fmt: skip
"""`good`: every request answered with the prompt's first ids (in the vocabulary), finished by
length; `retry_after`: the first `busy` requests get 429 with `Retry-After: 1`, then `good`;
`slow`: answers after `delay` seconds; the others: the fault their name says."""


class FakeServer:
    def __init__(self, mode: str = "good", *, name: str = "fake", busy: int = 1, delay=3.0):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        self.mode, self.name, self.busy, self.delay = mode, name, busy, delay
        self.completions = 0
        self.times: list[float] = []  # when each completion request arrived (monotonic)
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def send(self, status: int, body: bytes, kind="application/json", length=None, **h):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for key, value in h.items():
                    self.send_header(key.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self.send(200, json.dumps({"data": [{"id": server.name}]}).encode())
                else:
                    self.send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.completions += 1
                    server.times.append(time.monotonic())
                    n = server.completions
                # the client may have given up (its request_timeout): nothing to answer then
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    server.answer(self, body, n)

        return Handler

    def answer(self, handler, body: dict, n: int) -> None:
        mode = self.mode
        prompt = list(body.get("prompt") or [0])
        limit = int(body.get("max_tokens") or 16)
        ids = (prompt * (limit // len(prompt) + 1))[:limit]
        choice = {"text": "", "token_ids": ids, "finish_reason": "length", "stop_reason": None}
        good = {"choices": [choice], "usage": {"completion_tokens": len(ids)}}
        if mode == "retry_after" and n <= self.busy:
            handler.send(429, b'{"error": {"message": "busy"}}', Retry_After="1")
            return
        if mode == "slow":
            time.sleep(self.delay)
        if mode == "abort":
            choice.update(token_ids=[], finish_reason="abort")
        elif mode == "finish_null":
            choice.update(finish_reason=None)
        elif mode == "text_null":
            del choice["token_ids"]
            choice.update(text=None, finish_reason="stop")
        elif mode == "ids_out_of_vocab":
            choice.update(token_ids=[10**9], finish_reason="stop")
        elif mode == "too_many_tokens":
            choice.update(token_ids=ids + ids[:5] + [0] * 5)
        elif mode == "no_choices":
            good = {"id": "cmpl-1", "object": "text_completion", "usage": {}}
        elif mode == "error_200":
            good = {"error": {"message": "engine overloaded, try later", "code": 500}}
        raw = json.dumps(good).encode()
        if mode == "truncated_json":
            handler.send(200, raw[: len(raw) // 2])
        elif mode == "short_body":
            handler.send(200, raw[:20], length=len(raw))
            handler.close_connection = True
        elif mode == "html":
            handler.send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        else:
            handler.send(200, raw)
