"""TALE's methods (reference notes A.2–A.8): `tale` (the sweep's budget β in the prompt),
`tale_ep` (the model estimates its own budget, then answers under it), and TALE's vanilla
baselines `cot` and `direct`.

Prompts come from `budgetthinker.evaluation.tale.prompts` (byte-exact with the original),
rendered with the model's chat template and TALE's system line, or with the original's plain
local-model string under the method parameter `compat: tale` (`{name: tale, compat: tale}`; the
original's sampling for local models — temperature 0.1, top-p 0.9 — is a recipe setting,
`sampling.temperature=0.1 sampling.top_p=0.9`; its repetition penalty 1.2 is not available in
our backends). The answer format is `[[answer]]` (grader format `tale`). Nothing is forced: the
budget is only asked for, and generation is capped at `max_new_tokens` (default 1024, TALE's
`max_tokens`) for every method, so the sweep's budget changes only `tale`'s prompt. `cot`,
`direct` and `tale_ep` ignore the budget: list them with one budget (or read them as points).

`tale_ep` runs two rounds: the estimator prompt (over the full CoT prompt, as the original),
then the budgeted CoT prompt with the parsed estimate β̂ (the first `[[digits]]`). The estimate
is saved per sample (`tale_estimate`, its parse status and the budget actually used). Fallback
(the original's `extract_number` gives −1 for no match, and its prompt then asks for "less than
-1 tokens"): an unparsable or zero estimate uses the sweep's budget; one above the answer cap is
clamped to the cap. `tale_estimate_in_range` is true when the estimate was used as given. Under
`compat: [tale]` the original's way: the estimator sees the prompt after its `extract_question`,
and the estimate is used as given (−1 when there is none, 0, or above the cap).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from budgetthinker.config import check_compat
from budgetthinker.control_spec import ControlSpec, Mode
from budgetthinker.errors import UserError
from budgetthinker.evaluation.methods import Episode, Method, Outcome, SampleContext, register
from budgetthinker.evaluation.tale.prompts import (
    COMPATS,
    add_budget,
    check_budget,
    cot_prompt,
    direct_prompt,
    estimator_prompt,
    family,
    parse_estimate,
    render,
)
from budgetthinker.generation import GenRequest

DEFAULT_CAP = 1024
"""TALE's `max_tokens` for every call."""


class TaleMethod(Method):
    """One TALE prompt, one round, no forcing; subclasses choose the prompt."""

    answer_format = "tale"
    defaults: ClassVar[dict[str, Any]] = {
        "family": "gsm8k",  # prompt family (budgetthinker.evaluation.tale.prompts.FAMILIES)
        "compat": [],  # [tale]: the original's plain string instead of the model's template
    }

    def validate(self) -> None:
        family(self.params["family"])
        self.params["compat"] = check_compat(
            self.params["compat"], COMPATS, f"method {self.name} compat"
        )

    def check_budget(self, budget: int, spec: ControlSpec | None) -> None:
        check_budget(budget)

    def max_total_tokens(self, budget, max_new_tokens, spec, two_stage) -> int:
        return max_new_tokens or DEFAULT_CAP

    @abstractmethod
    def text(self, question: str, budget: int) -> str:
        """The TALE prompt before rendering."""

    def prompt(
        self, tokenizer, question: str, budget: int, mode: Mode | None, system_line: bool = True
    ) -> str:
        # TALE has its own answer format: BudgetThinker's \boxed{} system line is not added.
        return render(tokenizer, self.text(question, budget), self.params["compat"])

    def episode(self, ctx: SampleContext) -> Episode:
        cap = ctx.max_new_tokens or DEFAULT_CAP
        result = yield GenRequest(ctx.prompt_ids, max_new_tokens=cap, seed=ctx.round_seed(0))
        return Outcome(list(result.token_ids))


@register
class Cot(TaleMethod):
    name = "cot"
    description = "TALE's vanilla CoT: [[answer]] format, 'Let's think step by step', no budget"

    def text(self, question: str, budget: int) -> str:
        return cot_prompt(question, self.params["family"])


@register
class Direct(TaleMethod):
    name = "direct"
    description = "TALE's directly answering: [[answer]] format, no reasoning asked for"

    def validate(self) -> None:
        super().validate()
        direct_prompt("", self.params["family"])  # families without one fail here

    def text(self, question: str, budget: int) -> str:
        return direct_prompt(question, self.params["family"])


@register
class Tale(TaleMethod):
    name = "tale"
    description = "TALE: 'use less than β tokens' in the CoT prompt (β = the sweep's budget)"

    def text(self, question: str, budget: int) -> str:
        return add_budget(cot_prompt(question, self.params["family"]), budget)


@register
class TaleEP(TaleMethod):
    name = "tale_ep"
    description = "TALE-EP: the model estimates its budget ([[N]]), then answers under it"
    defaults: ClassVar[dict[str, Any]] = {
        **TaleMethod.defaults,
        "estimator_max_tokens": None,  # cap of the estimation round; None: the answer cap
    }

    def validate(self) -> None:
        super().validate()
        cap = self.params["estimator_max_tokens"]
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise UserError(f"tale_ep estimator_max_tokens must be a positive integer, got {cap!r}")
        if cap is not None and self.original:
            raise UserError(
                "tale_ep estimator_max_tokens is ours: the original caps every call at "
                "max_tokens (1024); drop it or compat: [tale]"
            )

    @property
    def original(self) -> bool:
        return "tale" in self.params["compat"]

    def text(self, question: str, budget: int) -> str:
        """Round 1: the estimator prompt over the CoT prompt."""
        return estimator_prompt(cot_prompt(question, self.params["family"]), self.original)

    def episode(self, ctx: SampleContext) -> Episode:
        cap = ctx.max_new_tokens or DEFAULT_CAP
        estimator_cap = self.params["estimator_max_tokens"] or cap
        estimate = yield GenRequest(
            ctx.prompt_ids, max_new_tokens=estimator_cap, seed=ctx.round_seed(0)
        )
        estimate_text = ctx.tokenizer.decode(list(estimate.token_ids), skip_special_tokens=True)
        value = parse_estimate(estimate_text)
        budget, status = fallback_budget(value, ctx.budget, cap, self.original)
        cot = cot_prompt(ctx.question, self.params["family"])
        text = render(ctx.tokenizer, add_budget(cot, budget, original=self.original),
                      self.params["compat"])  # fmt: skip
        prompt_ids = ctx.tokenizer.encode(text, add_special_tokens=False)
        answer = yield GenRequest(prompt_ids, max_new_tokens=cap, seed=ctx.round_seed(1))
        return Outcome(
            list(answer.token_ids),
            rounds=2,
            extra={
                "tale_estimate": value,
                "tale_estimate_status": status,
                "tale_estimate_in_range": status == "ok",
                "tale_budget": budget,
                "tale_estimate_tokens": len(estimate.token_ids),
                "tale_estimate_text": estimate_text,
            },
        )


def fallback_budget(
    estimate: int | None, sweep_budget: int, cap: int, original: bool = False
) -> tuple[int, str]:
    """The budget TALE-EP answers under, and why: `ok` (the estimate), `unparsable` or `zero`
    (→ the sweep's budget), `clamped` (above the answer cap → the cap). `original` (`compat:
    [tale]`): the estimate as given, −1 when unparsable (`extract_number`), status `above_cap`
    for one above the cap.

    >>> fallback_budget(120, 500, 1024), fallback_budget(None, 500, 1024)
    ((120, 'ok'), (500, 'unparsable'))
    >>> fallback_budget(0, 500, 1024), fallback_budget(10**12, 500, 1024)
    ((500, 'zero'), (1024, 'clamped'))
    >>> fallback_budget(None, 500, 1024, original=True), fallback_budget(0, 500, 1024, True)
    ((-1, 'unparsable'), (0, 'zero'))
    """
    if original:
        status = ("unparsable" if estimate is None else "zero" if estimate <= 0
                  else "above_cap" if estimate > cap else "ok")  # fmt: skip
        return (-1 if estimate is None else estimate), status
    if estimate is None:
        return sweep_budget, "unparsable"
    if estimate <= 0:
        return sweep_budget, "zero"
    if estimate > cap:
        return cap, "clamped"
    return estimate, "ok"
