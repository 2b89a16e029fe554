"""The control-token spec: which tokens a prepared model has and what each one means.

Preparation writes it as `budgetthinker_spec.json` inside the model folder; every later stage
(forcing, SFT data, RL, evaluation) reads it from there, so token strings and ids are decided in
exactly one place and never hard-coded or passed through environment variables.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from budgetthinker.errors import UserError
from budgetthinker.outputs import atomic_json

SPEC_FILENAME = "budgetthinker_spec.json"
SPEC_FORMAT_VERSION = 1

THINK_START = "<think>"
THINK_END = "</think>"

ANSWER_TAIL = "**Final Answer**\\boxed"
"""What opens the answer: the two-stage suffixes end with it, the RL format reward looks for
`ANSWER_TAIL{…}`, and synthetic traces answer with it."""

# Two-stage suffixes (docs/spec.md §2): evaluation has a blank line after </think>, the RL
# rollout none.
TWO_STAGE_SUFFIXES = {
    "eval": f"\n{THINK_END}\n\n{ANSWER_TAIL}",
    "rl": f"\n{THINK_END}\n{ANSWER_TAIL}",
}

# Largest countdown value per step size. remaining250 → 40 tokens (docs/spec.md §1);
# remaining50 is the legacy 400-token scheme of the original development code.
COUNTDOWN_MAX = {250: 10000, 50: 20000}
DEFAULT_COUNTDOWN_MAX = 10000

_RATIO_RE = re.compile(r"^(\d+)ratio$")
_COUNTDOWN_RE = re.compile(r"^remaining(\d+)$")


@dataclass(frozen=True)
class Mode:
    """A parsed mode name: `8ratio` / `<N>ratio` (kind "ratio") or `remaining<S>` ("countdown")."""

    name: str
    kind: str  # "ratio" | "countdown"
    parts: int = 0  # N, ratio mode only
    step: int = 0  # S, countdown mode only
    max_value: int = 0  # M, countdown mode only

    @property
    def num_tokens(self) -> int:
        return self.parts - 1 if self.kind == "ratio" else self.max_value // self.step

    def token_string(self, level: int) -> str:
        """Control-token string for `level` (1-based): k/N in ratio mode, S·k in countdown."""
        if self.kind == "ratio":
            return f"\n<remaining>{level}/{self.parts}</remaining>\n"
        return f"\n<remaining>{self.step * level}</remaining>\n"

    def token_strings(self) -> list[str]:
        """All control-token strings in tokenizer order (level 1 first)."""
        return [self.token_string(k) for k in range(1, self.num_tokens + 1)]

    def check_budget(self, budget: object) -> int:
        """Validate a thinking budget for this mode; return it as an int or raise UserError."""
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise UserError(
                f"budget must be a positive integer number of tokens, got {budget!r}; "
                "pass e.g. --budget 1000"
            )
        if budget <= 0:
            raise UserError(f"budget must be a positive number of tokens, got {budget}")
        if self.kind == "ratio" and budget < self.parts:
            raise UserError(
                f"budget {budget} is too small for mode {self.name}: it splits thinking into "
                f"{self.parts} parts, so the budget must be at least {self.parts} tokens"
            )
        if self.kind == "countdown":
            low, high = 2 * self.step, self.max_value + 2 * self.step - 1
            if budget < low:
                raise UserError(
                    f"budget {budget} is too small for mode {self.name}: no control token would "
                    f"ever be inserted; use a budget of at least {low}"
                )
            if budget > high:
                raise UserError(
                    f"budget {budget} is too large for mode {self.name}: its largest token is "
                    f"{self.max_value}, so budgets up to {high} are supported; "
                    "use a ratio mode (e.g. 8ratio) for larger budgets"
                )
        return budget


def parse_mode(name: str) -> Mode:
    """Parse a mode name; an unknown name is a UserError listing the accepted forms."""
    name = str(name).strip()
    if m := _RATIO_RE.match(name):
        parts = int(m.group(1))
        if parts < 2:
            raise UserError(f"mode {name!r}: a ratio mode needs at least 2 parts (e.g. 8ratio)")
        return Mode(name=name, kind="ratio", parts=parts)
    if m := _COUNTDOWN_RE.match(name):
        step = int(m.group(1))
        if step < 1:
            raise UserError(
                f"mode {name!r}: the countdown step must be positive (e.g. remaining250)"
            )
        max_value = COUNTDOWN_MAX.get(step, DEFAULT_COUNTDOWN_MAX)
        if max_value < step:
            raise UserError(f"mode {name!r}: the step is larger than the largest value {max_value}")
        return Mode(name=name, kind="countdown", step=step, max_value=max_value // step * step)
    raise UserError(
        f"unknown mode {name!r}; use 8ratio (default), <N>ratio such as 4ratio, "
        "remaining250 or remaining50"
    )


@dataclass(frozen=True)
class ControlSpec:
    """Everything an engine needs to force control tokens for one prepared model.

    `token_ids[k-1]` is the id of the level-k token (k/N in ratio mode, S·k in countdown mode).
    """

    mode: str
    token_strings: tuple[str, ...]
    token_ids: tuple[int, ...]
    think_start: str = THINK_START
    think_start_id: int = -1
    think_end: str = THINK_END
    think_end_id: int = -1
    suffix_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    base_model: str = ""

    @property
    def parsed_mode(self) -> Mode:
        return parse_mode(self.mode)

    @cached_property
    def level_of(self) -> dict[int, int]:
        """Map token id → level, for O(1) recognition of control tokens in the output.

        Cached on the (frozen) instance: built once per model, shared by every request.
        """
        return {tid: k for k, tid in enumerate(self.token_ids, start=1)}

    def to_json(self) -> dict:
        return {
            "format_version": SPEC_FORMAT_VERSION,
            "mode": self.mode,
            "token_strings": list(self.token_strings),
            "token_ids": list(self.token_ids),
            "think_start": self.think_start,
            "think_start_id": self.think_start_id,
            "think_end": self.think_end,
            "think_end_id": self.think_end_id,
            "suffixes": {
                name: {"text": TWO_STAGE_SUFFIXES[name], "ids": list(ids)}
                for name, ids in self.suffix_ids.items()
            },
            "base_model": self.base_model,
        }

    @classmethod
    def from_json(cls, d: dict) -> ControlSpec:
        if d.get("format_version") != SPEC_FORMAT_VERSION:
            raise UserError(
                f"control-token spec has format_version {d.get('format_version')!r}, this "
                f"budgetthinker reads {SPEC_FORMAT_VERSION}; prepare the model again"
            )
        parse_mode(d["mode"])
        return cls(
            mode=d["mode"],
            token_strings=tuple(d["token_strings"]),
            token_ids=tuple(int(i) for i in d["token_ids"]),
            think_start=d["think_start"],
            think_start_id=int(d["think_start_id"]),
            think_end=d["think_end"],
            think_end_id=int(d["think_end_id"]),
            suffix_ids={k: tuple(v["ids"]) for k, v in d.get("suffixes", {}).items()},
            base_model=d.get("base_model", ""),
        )

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write the spec atomically (temp file + rename), so a crash never leaves half a file."""
        path = Path(model_dir) / SPEC_FILENAME
        atomic_json(path, self.to_json())
        return path


def spec_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / SPEC_FILENAME


def has_spec(model_dir: str | os.PathLike) -> bool:
    return spec_path(model_dir).is_file()


def load_spec(model_dir: str | os.PathLike) -> ControlSpec:
    """Read the spec of a prepared model; a folder without one is a UserError naming the fix."""
    path = spec_path(model_dir)
    if not Path(model_dir).is_dir():
        raise UserError(f"model folder {model_dir} does not exist")
    if not path.is_file():
        raise UserError(
            f"{model_dir} has no control-token spec ({SPEC_FILENAME}); prepare it first: "
            f"budgetthinker prepare --base {model_dir} --mode 8ratio --out <new folder>"
        )
    try:
        return ControlSpec.from_json(json.loads(path.read_text()))
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(
            f"{path} is not a valid control-token spec ({e}); prepare the model again"
        ) from None


def check_tokenizer(spec: ControlSpec, tokenizer, model_dir: str | os.PathLike) -> None:
    """The spec must describe this tokenizer: its strings are the mode's levels in order, and
    every id decodes to its string (control tokens, `<think>`, `</think>`; the two-stage suffixes
    encode to their ids). Otherwise forcing would insert other tokens under the right names: one
    UserError naming `prepare`. Called wherever a model's tokenizer is loaded
    (`preparation.models.load_tokenizer`)."""
    expected = parse_mode(spec.mode).token_strings()
    fix = (
        f"the control-token spec {spec_path(model_dir)} does not match the model's tokenizer "
        "({}); prepare the model again from its base: budgetthinker prepare --base "
        f"{spec.base_model or '<base model>'} --mode {spec.mode} --out <new folder>"
    )
    if list(spec.token_strings) != expected:
        raise UserError(fix.format(f"its token strings are not the {spec.mode} levels in order"))
    if len(spec.token_ids) != len(expected):
        raise UserError(fix.format(f"{len(spec.token_ids)} ids for {len(expected)} tokens"))
    size = len(tokenizer)
    pairs = [*zip(spec.token_ids, expected, strict=True), (spec.think_start_id, spec.think_start),
             (spec.think_end_id, spec.think_end)]  # fmt: skip
    for tid, text in pairs:
        if not 0 <= tid < size:
            raise UserError(fix.format(f"id {tid} of {text!r} is outside its {size} tokens"))
        decoded = tokenizer.decode([tid], skip_special_tokens=False)
        if decoded != text:
            raise UserError(fix.format(f"id {tid} decodes to {decoded!r}, not {text!r}"))
    for name, ids in spec.suffix_ids.items():
        text = TWO_STAGE_SUFFIXES.get(name)
        if text is not None and tuple(tokenizer.encode(text, add_special_tokens=False)) != ids:
            raise UserError(fix.format(f"the two-stage suffix {name!r} encodes to other ids"))
