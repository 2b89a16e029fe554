"""Budget dialects of `budgetthinker serve` without a server (`serve_budgets.resolve` and
`account`); the served checks are in tests/patches/test_serve.py."""

from __future__ import annotations

import pytest

from budgetthinker.errors import UserError
from budgetthinker.forcing import Forcer, make_plan
from budgetthinker.patches.serve_budgets import (
    ServeBudgets,
    account,
    parse_effort_map,
    resolve,
    serve_budgets,
)

EFFORTS = {"low": 16, "medium": 24, "high": 40}
SERVER = ServeBudgets(default_budget=32, effort_budgets=EFFORTS)
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.mark.parametrize(
    ("payload", "budget", "source"),
    [
        ({"vllm_xargs": {"budget": 48}}, 48, "vllm_xargs.budget"),
        ({"thinking_token_budget": 56}, 56, "thinking_token_budget"),
        ({"reasoning_effort": "high"}, 40, "reasoning_effort 'high'"),
        ({}, 32, "default"),
        ({"thinking_token_budget": -1}, 32, "default"),  # vLLM's "unset"
        ({"vllm_xargs": {"budget": 40}, "reasoning_effort": "high"}, 40, "vllm_xargs.budget"),
        ({"vllm_xargs": {"budget": 16}, "thinking_token_budget": 16, "reasoning_effort": "low"},
         16, "vllm_xargs.budget"),
    ],
)  # fmt: skip
def test_each_dialect_resolves_in_order(spec, payload, budget, source):
    resolved = resolve({"model": "m", **payload}, CHAT, SERVER, spec)
    assert (resolved.budget, resolved.source) == (budget, source)
    assert resolved.body["vllm_xargs"]["budget"] == budget
    assert "thinking_token_budget" not in resolved.body  # vLLM's own cut never sees it
    assert resolved.body["return_token_ids"] is True and resolved.strip_token_ids


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"vllm_xargs": {"budget": 48}, "thinking_token_budget": 56},
         "vllm_xargs.budget = 48 and thinking_token_budget = 56 disagree"),
        ({"thinking_token_budget": 56, "reasoning_effort": "low"},
         "thinking_token_budget = 56 and reasoning_effort 'low' = 16 disagree"),
        ({"reasoning_effort": "xhigh"},
         "reasoning_effort 'xhigh' is not in this server's map; it knows low (16), medium (24)"),
        ({"thinking_token_budget": 5}, "thinking_token_budget: budget 5 is too small for mode"),
        ({"thinking_token_budget": 0}, "thinking_token_budget must be a positive integer"),
        ({"vllm_xargs": {"budget": 48, "grace": -1}}, "grace must be a whole number of tokens"),
        ({"vllm_xargs": {"grace": 2.5}}, "grace must be a whole number of tokens >= 0"),
    ],
)  # fmt: skip
def test_conflicts_and_bad_values_are_refused(spec, payload, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(payload, COMPLETIONS, SERVER, spec)


def test_no_budget_and_no_default_is_untouched(spec):
    payload = {"model": "m", "prompt": "x", "reasoning_effort": "high"}
    chat = resolve(payload, CHAT, ServeBudgets(), spec)  # no map: effort is the template's
    assert chat.budget is None and not chat.changed and chat.body == payload
    completion = resolve(payload, COMPLETIONS, ServeBudgets(), spec)
    assert completion.budget is None and "reasoning_effort" not in completion.body
    off = resolve({"vllm_xargs": {"force": 0}}, CHAT, SERVER, spec)  # forcing off beats default
    assert off.budget is None and not off.changed


def test_server_grace_applies_unless_the_request_decides(spec):
    budgets = ServeBudgets(default_budget=32, grace=8)
    assert resolve({}, CHAT, budgets, spec).body["vllm_xargs"] == {"budget": 32, "grace": 8}
    own = resolve({"vllm_xargs": {"grace": 2}}, CHAT, budgets, spec)
    assert own.body["vllm_xargs"]["grace"] == 2 and own.grace == 2
    hard = resolve({"vllm_xargs": {"two_stage": 0}}, CHAT, budgets, spec)
    assert "grace" not in hard.body["vllm_xargs"]
    streamed = resolve({"stream": True}, CHAT, budgets, spec)
    assert not streamed.account and "return_token_ids" not in streamed.body


def test_usage_counts_thinking_by_the_forcer(spec):
    resolved = resolve({"vllm_xargs": {"budget": 16}}, COMPLETIONS, SERVER, spec)
    think_end = spec.think_end_id
    outputs = [[5] * 10 + [think_end] + [6] * 4, [5] * 7]  # ended at 10; never ended
    response = {
        "choices": [{"token_ids": t, "prompt_token_ids": [1]} for t in outputs],
        "usage": {"prompt_tokens": 2, "completion_tokens": 22, "total_tokens": 24},
    }
    usage = account(response, resolved, spec)["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 17, "answer_tokens": 5}
    forcer = Forcer(make_plan(spec, 16))
    for token in outputs[0]:
        forcer.feed(token)
    assert forcer.thinking_tokens == 10
    assert usage["budgetthinker"] == {"budget": 16, "source": "vllm_xargs.budget", "grace": None}
    assert all("token_ids" not in c for c in response["choices"])  # the client did not ask


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"effort_map": "{low: 1}"}, "--reasoning-effort-budgets is not JSON"),
        ({"effort_map": "[1, 2]"}, "must map effort names to budgets"),
        ({"effort_map": '{"low": 0}'}, "--reasoning-effort-budgets 'low' must be a positive"),
        ({"grace": -1}, "grace must be a whole number of tokens >= 0"),
        ({"default_budget": 0}, "--default-budget must be a positive whole number"),
    ],
)
def test_bad_server_options_are_one_user_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        serve_budgets(**kwargs)


def test_budgets_file_and_options(tmp_path, spec):
    file = tmp_path / "budgets.yaml"
    file.write_text("default_budget: 64\nreasoning_effort_budgets: {low: 16}\ngrace: 4\n")
    assert serve_budgets(budgets_file=str(file)) == ServeBudgets(64, {"low": 16}, 4)
    assert serve_budgets(default_budget=24, budgets_file=str(file)).default_budget == 24
    file.write_text("default_budgets: 64\n")
    with pytest.raises(UserError, match="unknown key 'default_budgets'"):
        serve_budgets(budgets_file=str(file))
    with pytest.raises(UserError, match="--default-budget: budget 5 is too small"):
        ServeBudgets(default_budget=5).check(spec)
    assert parse_effort_map('{"low": 1024, "high": 16384}') == {"low": 1024, "high": 16384}
