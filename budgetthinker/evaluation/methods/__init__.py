"""Budget-control methods: how a method turns (problem, budget) into finished samples.

A method is a `Method` subclass, one family per file (`prompting.py`: BudgetThinker's control
tokens and the prompt tips; `s1.py`: s1 budget forcing; `scalers.py`: scaling functions; TALE's
methods live with the rest of TALE in `budgetthinker.evaluation.tale.method`). It renders the
prompt and then runs one *episode* per sample: a generator that yields a `GenRequest` per
generation round, receives the round's `GenResult`, and returns an `Outcome` (the output token
ids after the prompt, and what the method knows about its thinking). The runner drives every
pending episode of a chunk in lockstep, so each round is one batched `backend.run` call whatever
the engine, and it journals each round so a killed run resumes without generating a finished
round again.

Methods are named in the recipe with their parameters:

    methods: [control, {name: s1, thinking_n_ignore: 2, thinking_n_ignore_str: Wait}]

Each parameterised method gets a stable display name (`s1[thinking_n_ignore=2,…]`, or the
`label` key), used in results and reports. A custom method loads from a dotted path
(`{name: mypackage.methods:MyMethod, …}`); `register` adds one under a short name.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from budgetthinker.control_spec import ControlSpec, Mode
from budgetthinker.delimiters import Delimiters, encode_exactly
from budgetthinker.errors import UserError
from budgetthinker.generation import (
    BudgetSettings,
    GenRequest,
    GenResult,
    default_max_new_tokens,
    sample_seed,
)


@dataclass
class SampleContext:
    """Everything an episode may use for one sample."""

    prompt_ids: list[int]
    budget: int
    tokenizer: Any
    spec: ControlSpec | None
    delimiters: Delimiters
    max_new_tokens: int | None  # the recipe's cap, None = the method's default
    two_stage: bool = False
    seed: int = 0  # this sample's seed (see `generation.sample_seed`)
    longest_prompt: int = 0  # longest prompt of this benchmark for this method (s1's `auto`)
    compat: tuple[str, ...] = ()  # the recipe's originals to reproduce (`seed`, `s1`)
    stop_at_think_end: bool = True
    eos_ids: frozenset[int] = frozenset()
    question: str = ""  # the problem's text (TALE-EP builds its second prompt from it)

    @property
    def compat_seed(self) -> bool:
        return "seed" in self.compat

    def encode(self, text: str, what: str = "string") -> list[int]:
        return encode_exactly(self.tokenizer, text, what) if text else []

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def round_seed(self, round_index: int) -> int:
        return sample_seed(self.seed, "round", round_index)


@dataclass
class Outcome:
    """A finished sample: the output after the prompt (generated and appended tokens) and what
    the method knows about its thinking (None: derive it from the delimiters).

    `ceiling`: the thinking budget the method promises never to exceed (recorded as
    `thinking_budget`; None: no promise). `graded_text`: the text to grade when the original
    grades something other than the decoded output (s1 under `compat: [s1]`: the fork's returned
    text), with `graded_as` saying what it is; both are recorded next to `text`."""

    output_ids: list[int]
    rounds: int = 1
    settings: BudgetSettings | None = None  # forcing of round 1 (for the analysis)
    thinking_tokens: int | None = None
    finished_thinking: bool | None = None
    extra: dict = field(default_factory=dict)
    ceiling: int | None = None
    graded_text: str | None = None
    graded_as: str | None = None


Episode = Generator[GenRequest, GenResult, Outcome]


def _shown(value: Any) -> str:
    """A parameter value in a method's display name (a list such as `compat: [tale]` → `tale`)."""
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return str(value)


class Method(ABC):
    """Base of every method; subclasses set `name`, `description`, `defaults` and `episode`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    answer_format: ClassVar[str | None] = None  # the grader's method-specific format, if any
    needs_control_tokens: ClassVar[bool] = False  # the model must be prepared
    forces_control: ClassVar[bool] = False  # budgets must fit the control-token mode
    enforces_budget: ClassVar[bool] = False  # thinking never exceeds B (`Outcome.ceiling`)

    def __init__(self, label: str | None = None, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise UserError(
                f"method {self.name!r} has no parameter {unknown[0]!r}; its parameters: {known}"
            )
        self.params = {**self.defaults, **params}
        self.label = label
        self.validate()

    def validate(self) -> None:
        """Check the parameters; raise `UserError` naming the fix."""
        return  # optional hook

    @property
    def display_name(self) -> str:
        """Stable name in results: the label, or the name plus every non-default parameter."""
        if self.label:
            return self.label
        changed = [f"{k}={_shown(self.params[k])}" for k in sorted(self.params)
                   if self.params[k] != self.defaults[k]]  # fmt: skip
        return f"{self.name}[{','.join(changed)}]" if changed else self.name

    def check_compat(self, compat: Sequence[str]) -> None:
        """The recipe's `compat` list combined with this method's parameters: a combination the
        original did not have is a `UserError` naming the fix."""
        return  # optional hook

    def check_budget(self, budget: int, spec: ControlSpec | None) -> None:
        """A budget this method cannot run with, found before the model loads."""
        if self.forces_control and spec is not None:
            spec.parsed_mode.check_budget(budget)

    def max_total_tokens(
        self, budget: int, max_new_tokens: int | None, spec: ControlSpec | None, two_stage: bool
    ) -> int:
        """Most tokens one sample may add after its prompt, over all rounds (sizes the engine's
        context before it starts)."""
        settings = BudgetSettings(budget=budget, two_stage=two_stage)
        return max_new_tokens or default_max_new_tokens(settings, spec)

    @abstractmethod
    def prompt(
        self, tokenizer, question: str, budget: int, mode: Mode | None, system_line: bool = True
    ) -> str:
        """The rendered first-round prompt text (the runner encodes it once per sample)."""

    @abstractmethod
    def episode(self, ctx: SampleContext) -> Episode:
        """A generator yielding one `GenRequest` per round and returning the `Outcome`."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is already registered")
    METHODS[cls.name] = cls
    return cls


def get_method(entry: str | Mapping[str, Any]) -> Method:
    """A method from a recipe entry: a name, or a mapping with `name` and its parameters."""
    _load_builtin()
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        params = dict(entry)
        name = params.pop("name")
    else:
        raise UserError(f"a method is a name or {{name: …, <parameter>: …}}, got {entry!r}")
    if name in METHODS:
        return METHODS[name](**params)
    if ":" in name or "." in name:
        return _load_dotted(name)(**params)
    raise UserError(
        f"unknown method {name!r}; choose from {', '.join(METHODS)} or give a dotted path "
        "(package.module:Class)"
    )


def _load_dotted(path: str) -> type[Method]:
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr or module.startswith(".") or module.endswith("."):
        raise UserError(
            f"cannot load method {path!r}: a custom method is package.module:Class (or "
            "package.module.Class); a built-in one is one of " + ", ".join(METHODS)
        )
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"cannot load method {path!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"{path!r} is not a Method subclass")
    return cls


BUILTIN_FAMILIES = (
    f"{__name__}.prompting",
    f"{__name__}.s1",
    "budgetthinker.evaluation.tale.method",
)
"""The modules of the built-in method families; each registers its methods when imported."""


def _load_builtin() -> None:
    """Import the method families (each registers its methods)."""
    for module in BUILTIN_FAMILIES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def get_methods(entries) -> list[Method]:
    """Every method of a recipe, with distinct display names."""
    methods = [get_method(e) for e in entries]
    names = [m.display_name for m in methods]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UserError(f"method {duplicate!r} is listed twice; give one of them a label: …")
    return methods
