"""Prompt rendering: the one function that turns a problem and a budget into the model's prompt.

Strings are faithful to the original (docs/spec.md §3); the ratio tip is generated from the
mode so that `8ratio` reproduces the original text exactly and other N follow the same pattern.
"""

from __future__ import annotations

import re

from budgetthinker.control_spec import Mode
from budgetthinker.errors import UserError

SYSTEM_LINE = "Return your final response within \\boxed{}. "

_PLAIN_TIPS = {
    "prompt_v1": (
        "\n(Complete thinking within {B} tokens or fewer, please output the remaining number of "
        "tokens every 200 tokens to facilitate control of the remaining length of the thinking "
        "process, here is a template: 'now remaining tokens: xxx', xxx is the real remaining "
        "number of tokens.)"
    ),
    "prompt_v2": "\n(Complete thinking within {B} tokens or fewer)",
    "withoutremaining": "\n(Complete thinking within {B} tokens or fewer.)",
    "default": "\n(Complete thinking within {B} tokens or fewer.)",
}
TIP_NAMES = ("control", *_PLAIN_TIPS, "none")
"""`control`: the tip that matches the model's control tokens (the `8ratio` tip for 8ratio);
`none`: no budget in the prompt at all."""

_BUDGET_RE = re.compile(r"Complete thinking within (\d+) tokens or fewer")


def ratio_tip(mode: Mode, budget: int) -> str:
    """The tip listing the control tokens from (N−1)/N down to 1/N (docs/spec.md §3 for N = 8)."""
    listed = " , ".join(mode.token_string(k) for k in range(mode.parts - 1, 0, -1))
    return (
        f"\n(Complete thinking within {budget} tokens or fewer, {mode.parts - 1} special tokens "
        f"( {listed} ) will split the thinking process into {mode.parts} parts.)"
    )


def tip_text(tip: str, budget: int, mode: Mode | None = None) -> str:
    """Text appended to the user turn for tip `tip` and budget `budget`.

    For `control` the model's mode decides: ratio modes get the ratio tip, countdown modes the
    plain `default` tip (the original had no dedicated countdown tip).
    """
    if tip == "none":
        return ""
    if tip == "control":
        if mode is None:
            raise UserError("tip 'control' needs a model with a control-token spec; prepare it")
        if mode.kind == "ratio":
            return ratio_tip(mode, budget)
        tip = "default"
    if tip not in _PLAIN_TIPS:
        raise UserError(f"unknown tip {tip!r}; choose one of {', '.join(TIP_NAMES)}")
    return _PLAIN_TIPS[tip].format(B=budget)


def user_content(
    problem: str,
    budget: int,
    tip: str = "control",
    mode: Mode | None = None,
    system_line: bool = True,
) -> str:
    """System line + problem + budget tip: the user turn of every method.

    `system_line=False` leaves out `Return your final response within \\boxed{}. `: the
    original's evaluation data has it for MATH-500 only (`data.boxed_prefix` per benchmark),
    while its SFT and RL data have it on every problem.
    """
    return (SYSTEM_LINE if system_line else "") + problem + tip_text(tip, budget, mode)


def render_prompt(
    tokenizer,
    problem: str,
    budget: int,
    tip: str = "control",
    mode: Mode | None = None,
    system_line: bool = True,
) -> str:
    """The full prompt text: the user turn inside the model's own chat template.

    A tokenizer without a chat template gets the bare user turn.
    """
    return chat_prompt(tokenizer, user_content(problem, budget, tip, mode, system_line))


def chat_prompt(tokenizer, content: str, *, system: str | None = None) -> str:
    """A finished user turn (e.g. an SFT row's instruction) inside the model's chat template,
    after an optional `system` turn, ready for the model's answer; the bare text for a
    tokenizer without a chat template. The one chat rendering of every stage."""
    if not getattr(tokenizer, "chat_template", None):
        return content
    messages = [{"role": "user", "content": content}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def budget_from_prompt(text: str) -> int | None:
    """The budget named by the last tip in `text`, or None.

    Fallback for prompts built by other tools (the original engine patch found the budget this
    way); prefer passing the budget explicitly.
    """
    matches = _BUDGET_RE.findall(text)
    return int(matches[-1]) if matches else None
