"""Evaluation backend `openai` against a faulty OpenAI-compatible server written for the test
(`fake_openai.FakeServer` on 127.0.0.1): only `stop` and `length` are results; every other reply
is retried, then one line naming the endpoint, never a traceback and never a sample. Through the
real `budgetthinker eval` (exit status, the one error line, the output folder before and after)
and through the backend itself (fast)."""

from __future__ import annotations

import time

import pytest

from budgetthinker.errors import UserError
from budgetthinker.generation import BudgetSettings, GenRequest
from budgetthinker.patches.openai_backend import OpenAIBackend, normalised_endpoint, retry_after
from tests.clirun import cli, error_line, eval_args, snapshot
from tests.patches.fake_openai import FakeServer

FAULTS = {
    "abort": "finish_reason 'abort', not 'stop' or 'length'",
    "finish_null": "finish_reason None",
    "truncated_json": "a reply that is not JSON",
    "short_body": "a reply cut short after 20 bytes",
    "no_choices": "a reply without choices",
    "error_200": "an error object: engine overloaded",
    "html": "a reply that is not JSON (50 bytes: '<html>",
    "text_null": "no token_ids and text None",
    "ids_out_of_vocab": "token id 1000000000, outside the model's vocabulary of 49216",
    "too_many_tokens": "26 tokens for max_tokens=16",
    "slow": "no answer within request_timeout=1 s",
}
FAST = ("retries=1", "request_timeout=1")


def request(prompt_ids) -> GenRequest:
    return GenRequest(prompt_ids[0], BudgetSettings(budget=16), max_new_tokens=16)


@pytest.mark.parametrize("mode", sorted(FAULTS))
def test_a_fault_is_never_a_result(mode, prepared_model, prompt_ids):
    with FakeServer(mode, delay=2.5) as server:
        backend = OpenAIBackend(server.url, model_dir=str(prepared_model), retries=1, timeout=1)
        with pytest.raises(UserError) as error:
            backend.run([request(prompt_ids)])
        assert server.completions == 2  # retried once, then reported
    message = str(error.value)
    assert message.startswith(f"{server.url}/v1/completions gave no usable answer in 2 attempts")
    assert FAULTS[mode] in message and "\n" not in message


def test_good_answers_and_stop_or_length(prepared_model, prompt_ids):
    with FakeServer("good") as server:
        backend = OpenAIBackend(server.url, model_dir=str(prepared_model))
        [result] = backend.run([request(prompt_ids)])
    assert result.finish_reason == "length" and len(result.token_ids) == 16
    assert server.completions == 1


def test_retry_after_is_honoured(prepared_model, prompt_ids):
    """429 with `Retry-After: 1`: the next attempt comes after at least a second (the backoff
    alone would be 0.25–0.75 s), then the answer is a result."""
    with FakeServer("retry_after", busy=1) as server:
        backend = OpenAIBackend(server.url, model_dir=str(prepared_model), retries=2)
        [result] = backend.run([request(prompt_ids)])
    assert len(result.token_ids) == 16
    assert server.completions == 2 and server.times[1] - server.times[0] >= 1.0


def test_retries_run_out_in_one_line(prepared_model, prompt_ids):
    with FakeServer("retry_after", busy=10) as server:
        backend = OpenAIBackend(server.url, model_dir=str(prepared_model), retries=1)
        with pytest.raises(UserError, match=r"in 2 attempts \(last: HTTP 429: busy\); check"):
            backend.run([request(prompt_ids)])


def test_retry_after_forms_and_endpoints():
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None
    assert 0 <= retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())) <= 1
    assert normalised_endpoint("http://h:1/v1/") == normalised_endpoint("http://h:1") == "http://h:1"
    with pytest.raises(UserError, match="request_timeout must be a positive"):
        OpenAIBackend("http://127.0.0.1:9", timeout=0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(FAULTS))
def test_eval_reports_a_fault_in_one_line_and_saves_nothing(mode, tmp_path):
    """The real CLI: exit 2, one error line naming the endpoint and the fault, and the output
    folder as before the run (a first run that saved nothing leaves no experiment folder)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    before = snapshot(tmp_path)
    with FakeServer(mode, delay=2.5) as server:
        proc = cli(*eval_args(runs, "e", "backend=openai", f"endpoint={server.url}", *FAST))
    error_line(proc, f"{server.url}/v1/completions gave no usable answer", FAULTS[mode])
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_eval_after_a_fault_resumes_with_nothing_lost(tmp_path):
    """A good first run, then a resume with another budget against an aborting server: the
    finished samples stay byte for byte, none is added, the fault is one line."""
    runs = tmp_path / "runs"
    with FakeServer("good") as server:
        args = eval_args(runs, "e", "backend=openai", f"endpoint={server.url}", *FAST)
        assert cli(*args).returncode == 0
        samples = (runs / "e" / "samples.jsonl").read_bytes()
        server.mode = "abort"
        proc = cli(*args, "budgets=[16,24]")
    error_line(proc, "finish_reason 'abort'")
    assert (runs / "e" / "samples.jsonl").read_bytes() == samples
