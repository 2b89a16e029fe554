"""Budget-control methods: how a method turns (problem, budget) into a prompt and forcing settings.

The runner only talks to `Method`; new methods (s1 budget forcing, TALE, …) register here with
`register` and need no change to the runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetthinker.control_spec import Mode
from budgetthinker.errors import UserError
from budgetthinker.generation import BudgetSettings
from budgetthinker.prompts import render_prompt


@dataclass(frozen=True)
class Method:
    """A prompt tip plus whether control tokens are forced.

    `needs_control_tokens`: the model must be prepared (have a control-token spec).
    """

    name: str
    tip: str
    force_control: bool
    description: str

    @property
    def needs_control_tokens(self) -> bool:
        return self.force_control or self.tip == "control"

    def prompt(
        self, tokenizer, question: str, budget: int, mode: Mode | None, system_line: bool = True
    ) -> str:
        return render_prompt(tokenizer, question, budget, self.tip, mode, system_line)

    def settings(self, budget: int, two_stage: bool) -> BudgetSettings:
        return BudgetSettings(budget=budget, two_stage=two_stage, control=self.force_control)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


register(Method("control", "control", True, "BudgetThinker: budget tip + forced control tokens"))
register(Method("prompt_v1", "prompt_v1", False, "budget tip asking to report remaining tokens"))
register(Method("prompt_v2", "prompt_v2", False, "short budget tip"))
register(Method("withoutremaining", "withoutremaining", False, "budget tip, no control tokens"))
register(Method("none", "none", False, "no budget in the prompt; generation capped at B + B//50"))


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None
