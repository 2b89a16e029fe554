"""Which budget a `budgetthinker serve` request gets, whatever dialect the client speaks, and the
usage that says what was applied (docs/serving.md#budgets-from-any-client).

A request's budget comes from, in this order (docs/spec.md §2.7 for `grace`):

1. `vllm_xargs.budget` (ours),
2. `thinking_token_budget` (vLLM's own field; -1 means unset, as in vLLM),
3. `reasoning_effort` (OpenAI's) through the server's map (`--reasoning-effort-budgets`),
4. the server's `--default-budget`.

Two sources with different values are HTTP 400 naming both; an effort name the map lacks is
HTTP 400 listing the map. Without a map, `reasoning_effort` is not a budget (vLLM hands it to
the chat template as before). `vllm_xargs.force: 0` leaves the request alone. The server's
`--grace` gives every budgeted request the soft ending unless it sends its own `grace` or
`two_stage: 0`. The budget chosen is written into `vllm_xargs` and `thinking_token_budget` is
taken out of the body, so only our processor acts on it: vLLM's own thinking-budget processor
never sees the request.

Usage: for a budgeted, non-streamed request `usage.completion_tokens_details` carries
`reasoning_tokens` (thinking) and `answer_tokens` (the rest), counted by a `Forcer` of the
request's plan fed the returned token ids (the same machine, and the same tokens, as the
engine's processor: no text is re-tokenized), and `usage.budgetthinker` the budget, its source
and the grace. Every guarded request also gets `x-budgetthinker-budget` (a number or `none`) and
`x-budgetthinker-budget-source` headers.

Engine-free (no vLLM, no torch): `serve_guard` is the ASGI side, `serve` the command line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from budgetthinker.control_spec import ControlSpec
from budgetthinker.errors import UserError
from budgetthinker.forcing import Forcer, check_grace, make_plan
from budgetthinker.patches.vllm_params import check_admission, flag, plan_settings

BUDGETS_ENV = "BUDGETTHINKER_SERVE_BUDGETS"
CONFIG_KEYS = ("default_budget", "reasoning_effort_budgets", "grace")
EXAMPLE_MAP = '{"low": 1024, "medium": 4096, "high": 16384}'


@dataclass(frozen=True)
class ServeBudgets:
    """The server's budget defaults (all optional)."""

    default_budget: int | None = None
    effort_budgets: Mapping[str, int] = field(default_factory=dict)
    grace: int | None = None

    def to_env(self) -> str:
        return json.dumps(
            {"default_budget": self.default_budget,
             "reasoning_effort_budgets": dict(self.effort_budgets), "grace": self.grace}
        )  # fmt: skip

    @classmethod
    def from_env(cls, text: str | None) -> ServeBudgets:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(data["default_budget"], data["reasoning_effort_budgets"], data["grace"])

    def check(self, spec: ControlSpec | None) -> None:
        """Every budget must suit the served model's mode: one `UserError` naming the setting."""
        budgets = [("--default-budget", self.default_budget)] if self.default_budget else []
        efforts = self.effort_budgets.items()
        budgets += [(f"--reasoning-effort-budgets {k!r}", v) for k, v in efforts]
        if budgets and spec is None:
            raise UserError(
                "the served model has no control-token spec, so no budget can be forced; "
                "serve a prepared model or drop --default-budget / --reasoning-effort-budgets"
            )
        for name, budget in budgets:
            try:
                make_plan(spec, budget)
            except UserError as e:
                raise UserError(f"{name}: {e}") from None


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{name} must be a positive whole number of tokens, got {value!r}")
    return value


def parse_effort_map(text: str, source: str = "--reasoning-effort-budgets") -> dict[str, int]:
    """`'{"low": 1024, …}'` → {effort: budget}; anything else is one `UserError`."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(
            f"{source} is not JSON ({e.msg} at character {e.pos}); give an object such as "
            f"'{EXAMPLE_MAP}'"
        ) from None
    return check_effort_map(data, source)


def check_effort_map(data: object, source: str) -> dict[str, int]:
    if not isinstance(data, dict) or not data:
        raise UserError(f"{source} must map effort names to budgets, such as '{EXAMPLE_MAP}'")
    return {str(k): _positive(f"{source} {k!r}", v) for k, v in data.items()}


def load_budgets_file(path: str | Path) -> dict:
    """A YAML (or JSON) file with any of `CONFIG_KEYS`; unknown keys fail."""
    import yaml

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except OSError as e:
        raise UserError(f"cannot read --budgets-file {file}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--budgets-file {file} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"--budgets-file {file} must hold a mapping of {', '.join(CONFIG_KEYS)}")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise UserError(
            f"--budgets-file {file}: unknown key {unknown[0]!r}; the keys are "
            f"{', '.join(CONFIG_KEYS)}"
        )
    return data


def serve_budgets(
    default_budget: int | None = None,
    effort_map: str | None = None,
    grace: int | None = None,
    budgets_file: str | None = None,
) -> ServeBudgets:
    """The server's defaults from its options (options win over `budgets_file`)."""
    data = load_budgets_file(budgets_file) if budgets_file else {}
    source = f"--budgets-file {budgets_file}"
    default = default_budget if default_budget is not None else data.get("default_budget")
    if default is not None:
        default = _positive("--default-budget", default)
    if effort_map is not None:
        efforts = parse_effort_map(effort_map)
    elif data.get("reasoning_effort_budgets") is not None:
        efforts = check_effort_map(data["reasoning_effort_budgets"], f"{source} effort map")
    else:
        efforts = {}
    grace = grace if grace is not None else data.get("grace")
    if grace is not None:
        grace = check_grace(grace)
    return ServeBudgets(default, efforts, grace)


@dataclass
class Resolved:
    """What the guard does with one request: the body to pass on (`changed`: not the client's
    bytes), the budget applied (None: untouched) and its source, and whether the response's
    usage is to be rewritten."""

    body: dict
    changed: bool = False
    budget: int | None = None
    source: str = "none"
    grace: int | None = None
    account: bool = False
    strip_token_ids: bool = False


def resolve(payload: dict, path: str, budgets: ServeBudgets, spec: ControlSpec | None) -> Resolved:
    """Resolve one request body (parsed JSON) to the `vllm_xargs` our processor reads; raises
    `ValueError` with the client's message (HTTP 400)."""
    xargs = payload.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, Mapping):
        return Resolved(payload)  # vLLM refuses it itself
    xargs = dict(xargs or {})
    check_admission(xargs, spec)  # unknown keys, types; the budget is checked again below
    if not flag(xargs, "force", True):
        return Resolved(payload, source="force: 0")
    candidates = []
    if "budget" in xargs:
        candidates.append(("vllm_xargs.budget", xargs["budget"]))
    native = payload.get("thinking_token_budget")
    if native is not None and native != -1:
        if isinstance(native, bool) or not isinstance(native, int) or native <= 0:
            raise ValueError(f"thinking_token_budget must be a positive integer, got {native!r}")
        candidates.append(("thinking_token_budget", native))
    effort = payload.get("reasoning_effort")
    if effort is not None and budgets.effort_budgets:
        if effort not in budgets.effort_budgets:
            known = ", ".join(f"{k} ({v})" for k, v in budgets.effort_budgets.items())
            raise ValueError(
                f"reasoning_effort {effort!r} is not in this server's map; it knows {known}"
            )
        candidates.append((f"reasoning_effort {effort!r}", budgets.effort_budgets[effort]))
    for name, value in candidates[1:]:
        if value != candidates[0][1]:
            raise ValueError(
                f"{candidates[0][0]} = {candidates[0][1]} and {name} = {value} disagree; "
                "send one budget (or the same value in both)"
            )
    if not candidates and budgets.default_budget is not None:
        candidates.append(("default", budgets.default_budget))
    body = dict(payload)
    if native is not None:
        del body["thinking_token_budget"]  # ours now (or unset): vLLM's own cut never acts
    if path == "/v1/completions":
        body.pop("reasoning_effort", None)  # no such field there; chat keeps it (templates)
    if not candidates:
        return Resolved(body, changed=len(body) != len(payload))
    source, budget = candidates[0]
    xargs["budget"] = budget
    if budgets.grace is not None and "grace" not in xargs and flag(xargs, "two_stage", True):
        xargs["grace"] = budgets.grace
    try:
        check_admission(xargs, spec)
    except ValueError as e:
        raise ValueError(f"{source}: {e}" if source != "vllm_xargs.budget" else str(e)) from None
    body["vllm_xargs"] = xargs
    account = not payload.get("stream")
    strip = account and not payload.get("return_token_ids")
    if account:
        body["return_token_ids"] = True
    return Resolved(body, True, budget, source, xargs.get("grace"), account, strip)


def headers(resolved: Resolved) -> list[tuple[bytes, bytes]]:
    budget = "none" if resolved.budget is None else str(resolved.budget)
    out = [(b"x-budgetthinker-budget", budget.encode()),
           (b"x-budgetthinker-budget-source", resolved.source.encode())]  # fmt: skip
    if resolved.grace is not None:
        out.append((b"x-budgetthinker-grace", str(resolved.grace).encode()))
    return out


def account(response: dict, resolved: Resolved, spec: ControlSpec) -> dict:
    """`response` (a completion or chat completion) with thinking and answer tokens in its
    usage, counted per choice by a `Forcer` of the request's plan fed the choice's token ids."""
    plan = make_plan(spec, resolved.budget, **plan_settings(resolved.body["vllm_xargs"]))
    thinking = answer = 0
    for choice in response.get("choices") or []:
        tokens = choice.get("token_ids") or []
        forcer = Forcer(plan)
        for token in tokens:
            forcer.feed(token)
        thinking += forcer.thinking_tokens
        answer += forcer.n - forcer.thinking_tokens
        if resolved.strip_token_ids:
            choice.pop("token_ids", None)
            choice.pop("prompt_token_ids", None)
    if resolved.strip_token_ids:
        response.pop("prompt_token_ids", None)
    usage = response.get("usage")
    if isinstance(usage, dict):
        details = dict(usage.get("completion_tokens_details") or {})
        details.update(reasoning_tokens=thinking, answer_tokens=answer)
        usage["completion_tokens_details"] = details
        usage["budgetthinker"] = {
            "budget": resolved.budget, "source": resolved.source, "grace": resolved.grace,
        }  # fmt: skip
    return response
