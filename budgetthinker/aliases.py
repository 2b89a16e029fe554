"""The original project's environment variables: one table, one meaning, every stage.

The original scripts were driven by `remaining`, `stage`, `steady`, `tip`, `budget`,
`special_token_loss`, `MODEL_NAME_OR_PATH`, `MODEL_PATH` and `DATA_NAME`. They are accepted
here as aliases of recipe keys, never required: each variable is parsed by one function, so
`remaining=remaining250` or `stage=0` means the same thing (or is the same one-line error) in
evaluation, SFT and RL, and each stage maps the value onto its own key (`ALIASES`). A variable
that is set and used prints one hint naming the recipe key it stands for. Precedence: recipe <
alias < command-line override.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from budgetthinker.control_spec import parse_mode
from budgetthinker.errors import UserError

STAGES = ("eval", "sft", "trl", "verl")
"""Where aliases are read: `budgetthinker eval`, `budgetthinker sft`, `budgetthinker rl` on TRL
(the recipe's keys) and on verl (Hydra overrides of the verl recipe)."""


def forcing(value: str) -> bool:
    """`remaining`: a control-token mode name (`8ratio`, `4ratio`, `remaining250`, …) forces
    control tokens (the mode itself comes from the prepared model's spec); `default` forces
    nothing (the budget is in the prompt only)."""
    if value == "default":
        return False
    try:
        parse_mode(value)
    except UserError:
        raise ValueError(
            "use remaining=8ratio (or another mode name, e.g. remaining250) to force control "
            "tokens, or remaining=default to force nothing"
        ) from None
    return True


def two_stage(value: str) -> bool:
    """`stage`: 2 = two-stage answering (the suffix is forced at the budget), 1 = one stage."""
    if value in ("1", "2"):
        return value == "2"
    raise ValueError("use stage=2 for two-stage answering or stage=1 for one stage")


def tip_method(value: str) -> str:
    """`tip` (the original evaluation's prompt template) → the evaluation method of that tip:
    `8ratio` → `control`, `default` → `withoutremaining`, any other tip (`prompt_v1`, …) by name."""
    return {"8ratio": "control", "default": "withoutremaining"}.get(value, value)


def budgets(value: str) -> list[int]:
    """`budget`: one or more budgets, separated by commas or spaces."""
    return [int(b) for b in value.replace(",", " ").split()]


def names(value: str) -> list[str]:
    """`DATA_NAME`: comma-separated benchmark names."""
    return [b.strip() for b in value.split(",") if b.strip()]


@dataclass(frozen=True)
class Alias:
    """One original variable: what it means, how it is parsed, and the key it sets per stage."""

    var: str
    meaning: str
    parse: Callable[[str], Any]
    keys: Mapping[str, str]  # stage → dotted recipe key (verl: Hydra key)


ALIASES: tuple[Alias, ...] = (
    Alias("MODEL_NAME_OR_PATH", "the model folder", str, {"eval": "model"}),
    Alias("MODEL_PATH", "the policy model folder", str,
          {"trl": "model", "verl": "actor_rollout_ref.model.path"}),
    Alias("DATA_NAME", "benchmarks", names, {"eval": "data.benchmarks"}),
    Alias("budget", "thinking budgets", budgets, {"eval": "budgets"}),
    Alias("stage", "two-stage answering", two_stage,
          {"eval": "two_stage", "trl": "rollout.validation_two_stage",
           "verl": "budgetthinker.rollout.validation_two_stage"}),
    Alias("remaining", "force control tokens", forcing,
          {"eval": "methods", "trl": "rollout.force", "verl": "budgetthinker.rollout.force"}),
    Alias("tip", "the prompt tip", tip_method, {"eval": "methods"}),
    Alias("special_token_loss", "the control tokens' loss weight", str,
          {"sft": "special_token_loss"}),
    Alias("steady", "the RL recipe name", str, {}),  # read by rl.config.resolve_recipe
)  # fmt: skip
"""The table (docs/configuration.md lists it)."""

_BY_VAR = {a.var: a for a in ALIASES}
_hinted: set[str] = set()  # variables already explained in this process


def read(stage: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The aliases set in the environment, as {dotted key of `stage`: value}; a value the
    variable cannot take is one UserError naming the variable and the fix."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    env = os.environ if environ is None else environ
    raw = {a.var: env.get(a.var, "") for a in ALIASES if stage in a.keys}
    raw = {var: value for var, value in raw.items() if value != ""}
    values: dict[str, Any] = {}
    for var, value in raw.items():
        alias = _BY_VAR[var]
        try:
            values[var] = alias.parse(value)
        except (TypeError, ValueError) as e:
            raise UserError(f"environment variable {var}={value!r}: {e}") from None
    out: dict[str, Any] = {}
    effects: dict[str, dict[str, Any]] = {}
    for var, parsed in values.items():
        if var not in ("remaining", "tip"):
            key = _BY_VAR[var].keys[stage]
            out[key] = parsed
            effects[var] = {key: parsed}
    if "remaining" in values or "tip" in values:
        combined = _tip_and_forcing(stage, values)
        out.update(combined)
        effects.update({var: combined for var in ("remaining", "tip") if var in values})
    for var, effect in effects.items():
        _hint(var, raw[var], effect)
    return out


def value(var: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The raw value of an alias that is read as it is (`steady`), with its hint."""
    env = os.environ if environ is None else environ
    found = env.get(var) or None
    if found is not None and var not in _hinted:
        _hinted.add(var)
        print(f"[budgetthinker] {var}={found} (an original environment variable): "
              f"{_BY_VAR[var].meaning}", file=sys.stderr)  # fmt: skip
    return found


def _tip_and_forcing(stage: str, values: dict[str, Any]) -> dict[str, Any]:
    """`remaining` and `tip` together: evaluation picks one method (forcing → `control`, else
    the tip's method, else `withoutremaining`); RL sets forcing and the matching tip."""
    force = values.get("remaining")
    if stage == "eval":
        if force:
            return {"methods": ["control"]}
        return {"methods": [values.get("tip") or "withoutremaining"]}
    if force is None:
        return {}
    prefix = "budgetthinker." if stage == "verl" else ""
    tip = "control" if force else "default"
    return {f"{prefix}rollout.force": force, f"{prefix}rollout.tip": tip}


def _hint(var: str, raw: str, effect: Mapping[str, Any]) -> None:
    """One line per variable and process: what it was taken for, and the key to use instead."""
    if var in _hinted or not effect:
        return
    _hinted.add(var)
    shown = ", ".join(f"{k}={_show(v)}" for k, v in effect.items())
    print(f"[budgetthinker] {var}={raw} (an original environment variable) → {shown}; prefer "
          "that recipe key or key=value override", file=sys.stderr)  # fmt: skip


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} → {"a": {"b": 1}} (to merge into a recipe)."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    return out
