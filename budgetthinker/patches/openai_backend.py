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
flight), each request waiting at most `timeout` seconds (`request_timeout=`, default 600) for
the server. 408/409/429 and 5xx answers, dropped connections, timeouts and replies that are not
a result are retried (`retries`, default 6) with exponential backoff and jitter, or after the
server's `Retry-After`; when the retries run out it is one `UserError` naming the endpoint and
the last fault. Any other 4xx (a bad `vllm_xargs`, a prompt too long) is a `UserError` with the
server's message at once. Resuming is the runner's: finished samples are saved chunk by chunk.

Only a choice that finished with `finish_reason` `stop` or `length` is a result, and only when it
is whole: a list of token ids inside the model's vocabulary and at most `max_tokens` long (or,
from a server without ids, a text). Anything else (an `abort`, truncated or non-JSON bodies, no
`choices`, an error object sent with status 200, `text: null`) is a fault, never a sample.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from budgetthinker.errors import UserError
from budgetthinker.generation import Backend, GenRequest, GenResult, sample_seed

logger = logging.getLogger(__name__)

RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
RESULT_FINISHES = ("stop", "length")
"""The finish reasons that make a choice a result; anything else (`abort`, null, …) is a fault."""
DEFAULT_TIMEOUT = 600.0  # seconds one request may wait for the server (`request_timeout=`)
DEFAULT_RETRIES = 6
MAX_RETRY_AFTER = 300.0  # seconds: a longer `Retry-After` is waited this long, then retried


def normalised_endpoint(endpoint: str) -> str:
    """`http://host:port` of an endpoint given with or without a trailing `/` or `/v1`."""
    base = endpoint.strip().rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


class _Fault(Exception):
    """A reply that is not a result (retried; reported once the retries run out)."""


def retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


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
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        model_name: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise UserError(f"concurrency must be at least 1, got {concurrency}")
        if not timeout > 0:
            raise UserError(f"request_timeout must be a positive number of seconds, got {timeout}")
        if retries < 0:
            raise UserError(f"retries must be 0 or more, got {retries}")
        self.base = normalised_endpoint(endpoint)
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
        self._vocab: int | None = None
        self._lock = threading.Lock()  # the tokenizer loads once, whichever thread asks
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

    def _call(self, method: str, path: str, body: dict | None = None, check=None):
        """One HTTP call, JSON in and out, with retries on 408/409/429/5xx, dropped connections,
        timeouts and replies that are not JSON or that `check` refuses (it raises `_Fault`);
        returns what `check` returns (default: the parsed reply)."""
        data = json.dumps(body).encode() if body is not None else None
        url = self.base + path
        fault = ""
        for attempt in range(self.retries + 1):
            wait = None
            request = urllib.request.Request(url, data=data, headers=self._headers(), method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                try:
                    answer = json.loads(raw)
                except ValueError:
                    head = raw[:60].decode("utf-8", "replace").strip().replace("\n", " ")
                    raise _Fault(f"a reply that is not JSON ({len(raw)} bytes: {head!r})") from None
                return check(answer) if check is not None else answer
            except urllib.error.HTTPError as e:
                detail = _server_message(e)
                if e.code not in RETRY_STATUSES:
                    raise UserError(
                        f"{url} answered HTTP {e.code}: {detail}"
                        + ("; check api_key_env=" if e.code in (401, 403) else "")
                    ) from None
                fault = f"HTTP {e.code}: {detail}"
                wait = retry_after(e.headers.get("Retry-After") if e.headers else None)
            except _Fault as e:
                fault = str(e)
            except (TimeoutError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
                    fault = f"no answer within request_timeout={self.timeout:g} s"
                elif isinstance(e, http.client.IncompleteRead):
                    fault = f"a reply cut short after {len(e.partial)} bytes"
                elif isinstance(e, urllib.error.URLError) and attempt == self.retries:
                    raise UserError(
                        f"cannot reach the OpenAI-compatible server at {self.base} ({reason}); "
                        "start it with `budgetthinker serve MODEL` or fix endpoint="
                    ) from None
                else:
                    fault = f"{type(e).__name__}: {reason}"
            if attempt == self.retries:
                break
            if wait is None:
                wait = min(30.0, 0.5 * 2**attempt) * (0.5 + random.random())
            time.sleep(min(wait, MAX_RETRY_AFTER))
        raise UserError(
            f"{url} gave no usable answer in {self.retries + 1} attempt"
            f"{'s' if self.retries else ''} (last: {fault}); check the server and its log, or "
            "raise retries= / request_timeout="
        )

    def _served_model(self) -> str:
        """The server's one model (`/v1/models`); checked once, with a quick failure when the
        server is down."""
        retries, self.retries = self.retries, min(self.retries, 1)
        try:
            models = self._call("GET", "/v1/models", check=_model_ids)
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

        def complete(pair) -> GenResult:
            request, body = pair
            return self._call("POST", "/v1/completions", body, lambda a: self._result(request, a))

        pool = ThreadPoolExecutor(self.concurrency)
        try:
            return list(pool.map(complete, zip(requests, bodies, strict=True)))
        finally:  # a fault stops the round: requests not yet sent are not sent
            pool.shutdown(wait=True, cancel_futures=True)

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

    def _result(self, request: GenRequest, answer) -> GenResult:
        """The round's result from a reply, or `_Fault` for anything that is not a whole
        result (see the module docstring)."""
        if not isinstance(answer, dict):
            raise _Fault(f"a JSON {type(answer).__name__}, not an object")
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            error = answer.get("error")
            if error is not None:
                message = error.get("message", error) if isinstance(error, dict) else error
                raise _Fault(f"an error object: {str(message).splitlines()[0][:200]}")
            raise _Fault("a reply without choices")
        choice = choices[0]
        finish = choice.get("finish_reason")
        if finish not in RESULT_FINISHES:
            raise _Fault(f"finish_reason {finish!r}, not 'stop' or 'length'")
        tokens = choice.get("token_ids")
        if tokens is None:
            text = choice.get("text")
            if not isinstance(text, str):
                raise _Fault(f"no token_ids and text {text!r}")
            tokens = self._retokenise(text, answer.get("usage") or {})
        else:
            self._check_ids(tokens, request.max_new_tokens)
        result = GenResult(list(tokens), finish, choice.get("stop_reason"))
        if request.logprobs:
            values = (choice.get("logprobs") or {}).get("token_logprobs")
            if not isinstance(values, list) or len(values) != len(tokens):
                raise _Fault(f"{0 if not isinstance(values, list) else len(values)} logprobs for "
                             f"{len(tokens)} tokens")  # fmt: skip
            result.logprobs = list(values)
        return result

    def _check_ids(self, tokens, max_tokens: int) -> None:
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise _Fault("token_ids that are not a list of integers")
        if len(tokens) > max_tokens:
            raise _Fault(f"{len(tokens)} tokens for max_tokens={max_tokens}")
        vocab = self._vocab_size()
        bad = next((t for t in tokens if t < 0 or (vocab is not None and t >= vocab)), None)
        if bad is not None:
            raise _Fault(f"token id {bad}, outside the model's vocabulary of {vocab}")

    def _vocab_size(self) -> int | None:
        """Ids the model can produce: its config's `vocab_size` (the logits, padding rows
        included), at least the tokenizer's length; None without a local model folder."""
        if self._vocab is None and self.model_dir is not None:  # set once; a race is harmless
            try:
                config = json.loads((Path(self.model_dir) / "config.json").read_text())
            except (OSError, ValueError):
                config = {}
            config = config if isinstance(config, dict) else {}
            size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
            self._vocab = max(int(size or 0), len(self.tokenizer()))
        return self._vocab

    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                from budgetthinker.preparation.loading import load_tokenizer

                self._tokenizer = load_tokenizer(self.model_dir, check_spec=False)
        return self._tokenizer

    def _retokenise(self, text: str, usage: dict) -> list[int]:
        if self.model_dir is None:
            raise UserError(
                f"{self.base} returns no token ids; give model= a local folder with the "
                "model's tokenizer so outputs can be counted"
            )
        tokens = self.tokenizer().encode(text, add_special_tokens=False)
        if not self._warned_text:
            self._warned_text = True
            logger.warning(
                "%s returns text only: token counts re-tokenised locally (%d tokens; the server "
                "counted %s)", self.base, len(tokens), usage.get("completion_tokens"),
            )  # fmt: skip
        return tokens

    def close(self) -> None:
        """Nothing to release (no engine here); for symmetry with the other backends."""


def _model_ids(answer) -> list[str]:
    """The model names of a `/v1/models` reply, or `_Fault`."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
        raise _Fault("a /v1/models reply without a data list of models")
    return [str(m["id"]) for m in data]


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
