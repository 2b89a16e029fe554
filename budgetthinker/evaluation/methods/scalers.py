"""Scaling functions for s1 budget forcing (the budget-forcing fork with scaling functions,
reference A3; docs/spec.md §7).

After each thinking round that the model ended itself, s1 asks its scaler whether to go on:
`scaler(iteration=i, seq=token ids so far (prompt included), entropies=normalised per-token
entropies of the round just generated, scale_token=ids of the ignore string)` returns
`(continue_scaling, scale_token)`: whether to suppress the end of thinking, and the tokens to
append. `get_scale_func(name, scale_token, **params)` builds one from the registry; a custom
scaler registers with `@register_scaler("name")` or loads from a dotted path
(`package.module:factory`). Two decorators turn simpler functions into scalers:
`@should_continue_scaling` (a predicate; the token stays) and `@scale_token_only` (returns the
tokens; always continues).
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from budgetthinker.config import check_compat
from budgetthinker.errors import UserError

Scaler = Callable[..., tuple[bool, list[int]]]
SCALERS: dict[str, Callable[..., Any]] = {}
NEEDS_ENTROPIES: set[str] = set()


def register_scaler(name: str, *, needs_entropies: bool = False):
    """Register a scaler function (keyword arguments: iteration, seq, entropies, scale_token,
    then its own parameters) under `name`; `needs_entropies` makes s1 ask for them."""

    def wrap(func):
        SCALERS[name] = func
        if needs_entropies:
            NEEDS_ENTROPIES.add(name)
        func.needs_entropies = needs_entropies
        return func

    return wrap


def should_continue_scaling(func: Callable[..., bool]) -> Scaler:
    """Decorator: a predicate `(iteration, seq, entropies, **params) -> bool` becomes a scaler
    that keeps the ignore string (the fork's code calls it `should_scale_only`)."""

    @functools.wraps(func)
    def scaler(*args, scale_token: Sequence[int], **kwargs) -> tuple[bool, list[int]]:
        return bool(func(*args, **kwargs)), list(scale_token)

    return scaler


def scale_token_only(func: Callable[..., Sequence[int]]) -> Scaler:
    """Decorator: a function returning the tokens to append becomes a scaler that always
    continues (the HF fork's behaviour; its later version also stopped on an empty list)."""

    @functools.wraps(func)
    def scaler(*args, **kwargs) -> tuple[bool, list[int]]:
        return True, list(func(*args, **kwargs))

    return scaler


@register_scaler("default")
def default(*, iteration: int, seq, entropies, scale_token: Sequence[int]):
    """Always continue with the ignore string (plain s1)."""
    return True, list(scale_token)


FORK_RULES = {"hf_fork": "hf_fork", "vllm_fork": "vllm_fork", "s1": "hf_fork"}
"""`compat` of entropy_thresholding → the fork whose rule it reproduces. `s1` is the name the
s1-era docs gave the Hugging Face fork's rule (what `compat: [s1]` on s1 promised)."""


def fork_rule(compat: Sequence[str] | str | None) -> str | None:
    """The fork rule a `compat` list asks for (None: our documented rule); an unknown name is one
    line listing the valid ones."""
    names = check_compat(compat, tuple(FORK_RULES), "scale_func entropy_thresholding compat")
    rules = {FORK_RULES[n] for n in names}
    if len(rules) > 1:
        raise UserError(
            "scale_func entropy_thresholding compat: hf_fork and vllm_fork are two different "
            "rules; list one (s1 means hf_fork)"
        )
    return rules.pop() if rules else None


def _check_entropy_thresholding(*, last_k=-1, compat=(), **_):
    """Parameters the fork's code could not run with are refused when the recipe is read."""
    rule = fork_rule(compat)
    if isinstance(last_k, bool) or not isinstance(last_k, (int, float)):
        raise UserError(f"scale_func entropy_thresholding last_k must be a number, got {last_k!r}")
    if rule and not isinstance(last_k, int) and not 0 < last_k < 1:
        raise UserError(
            f"scale_func entropy_thresholding last_k {last_k!r} with compat {rule}: the fork "
            "slices with it and fails on a float; give an integer or a fraction in (0, 1)"
        )


@register_scaler("entropy_thresholding", needs_entropies=True)
@should_continue_scaling
def entropy_thresholding(
    *,
    iteration: int,
    seq: Sequence[int],
    entropies: Sequence[float] | None,
    threshold: float = 0.5,
    decay_factor: float = 1.0,
    last_k: float = -1,
    compat: Sequence[str] = (),
) -> bool:
    """Continue while the mean normalised entropy of the last round's tokens (its last `last_k`;
    0 < last_k < 1: that fraction of the round; −1 or 0: all) is above
    `threshold · decay_factor^iteration` (docs/spec.md §7: keep thinking while the model is
    uncertain).

    The forks continue while it is *below* a limit, and take a fractional last_k of the whole
    sequence (prompt included): `compat: [hf_fork]` (the Hugging Face version, up to ab01955)
    below `1 − threshold · decay_factor^iteration`, `compat: [vllm_fork]` (the later vLLM
    version, src/budget_forcing/) below `threshold · decay_factor^iteration`; `compat: [s1]` is
    `hf_fork`. Both slice `entropies[-last_k:]` whenever last_k > −1, so 0 keeps all."""
    rule = fork_rule(compat)
    ent = list(entropies or [])
    k = last_k
    decayed = threshold * decay_factor**iteration
    if rule is not None:
        if 1 > k > 0:
            k = math.ceil(k * len(seq))
        if k > -1:
            ent = ent[-k:]
        mean = sum(ent) / len(ent) if ent else 0.0
        return mean < (1 - decayed if rule == "hf_fork" else decayed)
    if 0 < k < 1:
        k = math.ceil(k * len(ent))
    if k > -1 and k != 0:
        ent = ent[-int(k) :]
    mean = sum(ent) / len(ent) if ent else 0.0
    return mean > decayed


entropy_thresholding.check_params = _check_entropy_thresholding


def get_scale_func(name: str, scale_token: Sequence[int], **params: Any) -> Scaler:
    """A scaler by registered name or dotted path, with its parameters bound."""
    func = SCALERS.get(name)
    if func is None and (":" in name or "." in name):
        module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
        try:
            func = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot load scaling function {name!r}: {e}") from None
    if func is None:
        raise UserError(
            f"unknown scaling function {name!r}; choose from {', '.join(SCALERS)} or give a "
            "dotted path (package.module:function)"
        )
    _check_params(name, func, params)
    check = getattr(func, "check_params", None)
    if check is not None:
        check(**params)
    token = list(scale_token)

    def scaler(*, iteration: int, seq, entropies) -> tuple[bool, list[int]]:
        go_on, tokens = func(
            iteration=iteration, seq=seq, entropies=entropies, scale_token=token, **params
        )
        return bool(go_on), list(tokens)

    scaler.needs_entropies = getattr(func, "needs_entropies", False) or name in NEEDS_ENTROPIES
    return scaler


def _check_params(name: str, func, params: dict) -> None:
    """Unknown scaler parameters fail when the recipe is read, listing the known ones."""
    import inspect

    target = inspect.unwrap(func)
    signature = inspect.signature(target)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    own = [p for p in signature.parameters if p not in ("iteration", "seq", "entropies",
                                                         "scale_token")]  # fmt: skip
    for key in params:
        if key not in own:
            raise UserError(
                f"scaling function {name!r} has no parameter {key!r}; its parameters: "
                f"{', '.join(own) or 'none'}"
            )
