"""lm-evaluation-harness `gen_kwargs` → one setting of our harness (method, budget, sampling).

The `budgetthinker` model for lm-eval (`lm_eval_model.py`) receives each request's generation
arguments as lm-eval merged them (the task YAML's `generation_kwargs`, then `--gen_kwargs`). This
module turns them into the keys of an `EvalConfig` with one method and one budget, so that the
run behind `generate_until` is exactly a `budgetthinker eval` sweep point. Three vocabularies are
accepted (docs/stages/lm_eval.md has the table):

- lm-eval's own: `until` (cuts the answer, never the thinking), `max_gen_toks`, `do_sample`,
  `temperature`, `top_p`;
- ours: `method` (any method of the harness, or a dotted path), `budget`, `two_stage`,
  `stop_at_think_end`, `compat` (`s1`, `seed`, or both as `s1+seed`), `system_line`, and the
  chosen method's own parameters (e.g. `tip` of `s1`, `compat` of `tale`);
- the s1 forks': `max_tokens_thinking`, `thinking_n_ignore`, `thinking_n_ignore_str`,
  `thinking_start`, `thinking_end`, `until_thinking`, `until_thinking_2`, `min_tokens_thinking`,
  `rejection_sample` (the parameters of our `s1`, same names and meaning) and the
  scaling-function fork's `scale_func_name`, `threshold`, `decay_factor`, `last_k` (→ `s1`'s
  `scale_func`, with that fork's rule, `compat: [hf_fork]`, unless `scale_func_compat` says
  `vllm_fork` or `none`). Any of them without `method` selects `s1`, as their presence switched
  the forks to budget forcing; an s1 user changes `--model` and nothing else.

Anything else is refused with the list of accepted keys: a key silently ignored would be a run
that is not the one asked for. Engine-free and lm-eval-free (the unit tests run it alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from budgetthinker.errors import UserError
from budgetthinker.evaluation.methods import get_method

LM_EVAL_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p")
OUR_KEYS = ("method", "budget", "two_stage", "stop_at_think_end", "compat", "system_line")
FORK_S1_KEYS = (
    "max_tokens_thinking",
    "thinking_n_ignore",
    "thinking_n_ignore_str",
    "thinking_start",
    "thinking_end",
    "until_thinking",
    "until_thinking_2",
    "min_tokens_thinking",
    "rejection_sample",
)
FORK_SCALER_KEYS = ("scale_func_name", "threshold", "decay_factor", "last_k")
SCALER_COMPAT = ("hf_fork", "vllm_fork", "none")
INT_KEYS = ("budget", "max_gen_toks", "max_tokens_thinking", "thinking_n_ignore",
            "min_tokens_thinking", "last_k")  # fmt: skip
"""lm-eval's parser reads `-1` as the float -1.0 (only digit strings become ints): integral
floats of these keys are taken as the integers they were written as."""

DEFAULT_MAX_GEN_TOKS = 256
"""lm-eval's default `max_gen_toks` for its own models (HFLM, VLLM), used the same way here."""


@dataclass(frozen=True)
class Setting:
    """One evaluation setting: the `EvalConfig` keys it sets and how the answer is cut."""

    config: dict  # EvalConfig keys: methods, budgets, max_new_tokens, sampling, compat, …
    until: tuple[str, ...]
    system_line: bool


def parse_gen_kwargs(
    kwargs: Mapping[str, Any], default_max_gen_toks: int = DEFAULT_MAX_GEN_TOKS
) -> Setting:
    """The setting one request's `gen_kwargs` ask for (see the module docstring)."""
    given = {k: _int_like(k, v) for k, v in dict(kwargs).items()}
    # the s1 fork switched to budget forcing on any key containing "thinking"
    fork = [k for k in given if k in (*FORK_S1_KEYS, *FORK_SCALER_KEYS) or "thinking" in k]
    name = given.pop("method", None) or ("s1" if fork else "none")
    if not isinstance(name, str):
        raise UserError(f"gen_kwargs method must be a method name, got {name!r}")
    method_params = _method_defaults(name)
    if fork and name != "s1":
        raise UserError(
            f"gen_kwargs {fork[0]} is a parameter of s1 budget forcing (the s1 forks' name), "
            f"not of method={name}; use method=s1 or drop it"
        )
    known = {*LM_EVAL_KEYS, *OUR_KEYS, *method_params}
    if name == "s1":
        known |= {*FORK_SCALER_KEYS, "scale_func_compat"}
    unknown = sorted(set(given) - known)
    phase = [k for k in unknown if k.endswith("_thinking") and k not in FORK_S1_KEYS]
    if name == "s1" and phase:
        raise UserError(
            f"gen_kwargs {phase[0]}: the s1 fork's per-phase overrides (<param>_thinking) are not "
            f"supported; s1's parameters: {', '.join(sorted(method_params))}"
        )
    if unknown:
        raise UserError(
            f"gen_kwargs {unknown[0]!r} is not a setting of the budgetthinker model (method "
            f"{name}); accepted: {', '.join(sorted(known))}"
        )
    until = _until(given.pop("until", None))
    max_gen_toks = given.pop("max_gen_toks", None)
    if max_gen_toks is not None and (not isinstance(max_gen_toks, int) or max_gen_toks < 1):
        raise UserError(f"gen_kwargs max_gen_toks must be a positive integer, got {max_gen_toks!r}")
    sampling = _sampling(given.pop("do_sample", None), given.pop("temperature", None),
                         given.pop("top_p", None))  # fmt: skip
    config: dict = {"sampling": sampling}
    for key in ("two_stage", "stop_at_think_end"):
        if key in given:
            config[key] = given.pop(key)
    if "compat" in given and "compat" not in method_params:
        config["compat"] = _names(given.pop("compat"), "compat")
    system_line = given.pop("system_line", False)
    if not isinstance(system_line, bool):
        raise UserError(f"gen_kwargs system_line must be true or false, got {system_line!r}")
    budget = given.pop("budget", None)
    entry: dict = {"name": name}
    if name == "s1":
        entry.update(_s1_params(given, max_gen_toks or default_max_gen_toks))
        if budget is None:  # the forks: B is max_tokens_thinking, else max_gen_toks
            fixed = entry.get("max_tokens_thinking")
            budget = fixed if isinstance(fixed, int) else entry["max_gen_toks"]
    else:
        if name == "none" and budget is None:  # plain generation, as lm-eval's own models
            budget = max_gen_toks or default_max_gen_toks
            max_gen_toks = budget
        config["max_new_tokens"] = max_gen_toks
    entry.update(given)  # the method's own parameters (checked by the method itself)
    if budget is None:
        raise UserError(
            f"method={name} needs a thinking budget: add budget=B to --gen_kwargs "
            "(e.g. --gen_kwargs method=control,budget=2000)"
        )
    config["methods"] = [entry]
    config["budgets"] = [budget]
    return Setting(config=config, until=until, system_line=system_line)


def _int_like(key: str, value: Any) -> Any:
    if key in INT_KEYS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _method_defaults(name: str) -> dict:
    """The parameters of method `name` (an unknown name is one line listing the known ones)."""
    return dict(type(get_method(name)).defaults)


def _until(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UserError(f"gen_kwargs until must be a string or a list of strings, got {value!r}")


def _sampling(do_sample: Any, temperature: Any, top_p: Any) -> dict:
    """lm-eval's meaning: `do_sample=false` is greedy whatever the temperature; `do_sample=true`
    without a temperature samples at 1.0 (transformers' default)."""
    if do_sample is not None and not isinstance(do_sample, bool):
        raise UserError(f"gen_kwargs do_sample must be true or false, got {do_sample!r}")
    if temperature is None:
        temperature = 1.0 if do_sample else 0.0
    if do_sample is False:
        temperature = 0.0
    sampling: dict = {"temperature": temperature}
    if top_p is not None:
        sampling["top_p"] = top_p
    return sampling


def _names(value: Any, key: str) -> list[str]:
    """A list in gen_kwargs: a list, or names joined by `+` (lm-eval splits values on commas)."""
    if isinstance(value, str):
        return [v for v in value.split("+") if v]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UserError(f"gen_kwargs {key} must be a name or names joined by '+', got {value!r}")


def _s1_params(given: dict, max_gen_toks: int) -> dict:
    """The forks' keys → `s1`'s parameters; `max_gen_toks` is s1's own (the answer's cap and
    `auto`'s total, as in the fork)."""
    params = {k: given.pop(k) for k in FORK_S1_KEYS if k in given}
    params["max_gen_toks"] = max_gen_toks
    scaler = {k: given.pop(k) for k in FORK_SCALER_KEYS if k in given}
    rule = given.pop("scale_func_compat", None)
    if rule is not None and rule not in SCALER_COMPAT:
        raise UserError(
            f"gen_kwargs scale_func_compat must be one of {', '.join(SCALER_COMPAT)}, got {rule!r}"
        )
    if scaler or rule is not None:
        name = scaler.pop("scale_func_name", None)
        if name is None:
            raise UserError(
                f"gen_kwargs {next(iter(scaler), 'scale_func_compat')} needs scale_func_name "
                "(e.g. scale_func_name=entropy_thresholding)"
            )
        func = {"name": name, **scaler}
        if name == "entropy_thresholding":  # the fork's rule, as its gen_kwargs meant it
            chosen = rule or "hf_fork"
            if chosen != "none":
                func["compat"] = [chosen]
        params["scale_func"] = func
    return params
