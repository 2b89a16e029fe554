"""Evaluation backend `openai`: the `Backend` interface of `budgetthinker.generation` over any
OpenAI-compatible `/v1/completions` endpoint — `budgetthinker serve` (forcing through
`vllm_xargs`), a plain `vllm serve`, or a hosted model (prompt-only methods).

Requests carry the prompt as token ids (the runner renders prompts with the local tokenizer, so
every backend sees the same tokens) plus vLLM's extra fields (`min_tokens`, `stop_token_ids`,
`skip_special_tokens: false`, `return_token_ids: true`, `vllm_xargs`); other servers ignore what
they do not know.

Token counts: from the token ids the server returns (`return_token_ids`, vLLM ≥ 0.10), so
thinking tokens are counted exactly as with the hf and vllm backends. A server that returns only
text gets it re-tokenised with the local tokenizer (an approximation: the server's own count is
in its `usage.completion_tokens`, which is logged once next to ours).

Transport: the standard library (`urllib`) in a bounded thread pool (`concurrency` requests in
flight); 429 and 5xx answers and dropped connections are retried with exponential backoff and
jitter; any other 4xx (a bad `vllm_xargs`, a prompt too long) is a `UserError` with the
server's message. Resuming is the runner's: finished samples are saved chunk by chunk.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from budgetthinker.errors import UserError
from budgetthinker.generation import Backend, GenRequest, GenResult, sample_seed

logger = logging.getLogger(__name__)

RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend(Backend):
    """Completions over HTTP with bounded concurrency and retries; see the module docstring."""

    name = "openai"

    def __init__(
        self,
        endpoint: str,
        *,
        model_dir: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 8,
        seed: int = 0,
        timeout: float = 600.0,
        retries: int = 6,
        model_name: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise UserError(f"concurrency must be at least 1, got {concurrency}")
        self.base = endpoint.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[: -len("/v1")]
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise UserError(
                    f"api_key_env={api_key_env} names an environment variable that is not set; "
                    f"export {api_key_env}=<key>, or drop api_key_env for a server without keys"
                )
        self.concurrency = concurrency
        self.seed = seed
        self.timeout = timeout
        self.retries = retries
        self.model_dir = model_dir
        self._tokenizer = None
        self._warned_text = False
        self.spec = None
        if model_dir is not None:
            from budgetthinker.control_spec import has_spec, load_spec

            self.spec = load_spec(model_dir) if has_spec(model_dir) else None
        self.model = model_name or self._served_model()

    # ------------------------------------------------------------------------------ HTTP

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One HTTP call with retries on 429/5xx/dropped connections; JSON in and out."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                self.base + path, data=data, headers=self._headers(), method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                detail = _server_message(e)
                if e.code not in RETRY_STATUSES or attempt == self.retries:
                    raise UserError(
                        f"{self.base}{path} answered HTTP {e.code}: {detail}"
                        + ("; check api_key_env=" if e.code in (401, 403) else "")
                    ) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if attempt == self.retries:
                    reason = getattr(e, "reason", e)
                    raise UserError(
                        f"cannot reach the OpenAI-compatible server at {self.base} ({reason}); "
                        "start it with `budgetthinker serve MODEL` or fix endpoint="
                    ) from None
            time.sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _served_model(self) -> str:
        """The server's one model (`/v1/models`); checked once, with a quick failure when the
        server is down."""
        retries, self.retries = self.retries, 1
        try:
            models = [m["id"] for m in self._call("GET", "/v1/models").get("data", [])]
        finally:
            self.retries = retries
        if len(models) != 1:
            raise UserError(
                f"{self.base} serves {len(models)} models ({', '.join(models) or 'none'}); "
                "name one with model_name="
            )
        return models[0]

    # ------------------------------------------------------------------------------ Backend

    def run(
        self,
        requests: Sequence[GenRequest],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        progress=None,
    ) -> list[GenResult]:
        """One round for every request, `concurrency` at a time (`batch_size` is ignored)."""
        self.check_requests(requests)
        for r in requests:
            if r.entropies:
                raise UserError(
                    "this method needs per-token entropies (the whole distribution), which an "
                    "OpenAI-compatible server does not return; use backend=vllm or backend=hf"
                )
            r.settings.plan(self.spec)  # a budget unfit for the mode fails here, not silently
        bodies = [self._body(r, i, temperature, top_p) for i, r in enumerate(requests)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            answers = list(pool.map(lambda b: self._call("POST", "/v1/completions", b), bodies))
        return [self._result(r, a) for r, a in zip(requests, answers, strict=True)]

    def _body(self, r: GenRequest, index: int, temperature: float, top_p: float) -> dict:
        sampled = temperature > 0
        body = {
            "model": self.model,
            "prompt": list(r.input_ids),
            "max_tokens": r.max_new_tokens,
            "temperature": temperature,
            "top_p": top_p if sampled else 1.0,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
            "return_token_ids": True,
        }
        if sampled:
            body["seed"] = r.seed if r.seed is not None else sample_seed(self.seed, index)
        if r.stop:
            body["stop"] = list(r.stop)
        if r.stop_token_ids:
            body["stop_token_ids"] = list(r.stop_token_ids)
        if r.min_tokens:
            body["min_tokens"] = r.min_tokens
        if r.logprobs:
            body["logprobs"] = 0
        extra = r.settings.vllm_extra_args()  # {"force": 0} also turns the tip fallback off
        if extra:  # vllm_xargs values are str/int/float: flags as 0/1
            body["vllm_xargs"] = {k: int(v) if isinstance(v, bool) else v for k, v in extra.items()}
        return body

    def _result(self, request: GenRequest, answer: dict) -> GenResult:
        choice = answer["choices"][0]
        tokens = choice.get("token_ids")
        if tokens is None:
            tokens = self._retokenise(choice.get("text", ""), answer.get("usage", {}))
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        result = GenResult(list(tokens), finish, choice.get("stop_reason"))
        if request.logprobs:
            result.logprobs = list((choice.get("logprobs") or {}).get("token_logprobs") or [])
        return result

    def _retokenise(self, text: str, usage: dict) -> list[int]:
        if self.model_dir is None:
            raise UserError(
                f"{self.base} returns no token ids; give model= a local folder with the "
                "model's tokenizer so outputs can be counted"
            )
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        tokens = self._tokenizer.encode(text, add_special_tokens=False)
        if not self._warned_text:
            self._warned_text = True
            logger.warning(
                "%s returns text only: token counts re-tokenised locally (%d tokens; the server "
                "counted %s)", self.base, len(tokens), usage.get("completion_tokens"),
            )  # fmt: skip
        return tokens

    def close(self) -> None:
        """Nothing to release (no engine here); for symmetry with the other backends."""


def _server_message(error: urllib.error.HTTPError) -> str:
    """The `message` of an OpenAI-style error body, else the raw body (first line)."""
    try:
        raw = error.read().decode(errors="replace")
    except Exception:
        return error.reason or ""
    try:
        payload = json.loads(raw)
        inner = payload.get("error", payload)
        if isinstance(inner, dict):
            return str(inner.get("message", raw)).splitlines()[0]
        return str(inner).splitlines()[0]
    except (ValueError, AttributeError):
        return (raw.strip().splitlines() or [""])[0][:300]
