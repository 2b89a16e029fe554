"""BudgetThinker's own methods: a budget tip in the prompt, with or without forced control
tokens (`control`, `prompt_v1`, `prompt_v2`, `withoutremaining`, `none`).

One generation round; with two-stage inference the suffix is forced in the same request
(improved) or, under `compat: seed`, appended to every output and generated in a second request
(the original's behaviour: its cap is again B + B//50, and finished outputs get a second answer).

Parameter `grace` (tokens ≥ 0, default none = the hard ending): the soft ending of
docs/spec.md §2.7 — thinking that reaches B unfinished may run to the first line or sentence end,
at most `grace` tokens more, then the two-stage suffix is forced in the same request (so it
implies two-stage). `{name: control, grace: 64}` next to `control` with `two_stage: true`
measures soft against hard ending in one sweep.
"""

from __future__ import annotations

from typing import ClassVar

from budgetthinker.control_spec import TWO_STAGE_SUFFIXES, Mode
from budgetthinker.errors import UserError
from budgetthinker.evaluation.methods import Episode, Method, Outcome, SampleContext, register
from budgetthinker.forcing import check_grace, thinking_cap
from budgetthinker.generation import BudgetSettings, GenRequest, default_max_new_tokens
from budgetthinker.prompts import render_prompt

EVAL_SUFFIX = TWO_STAGE_SUFFIXES["eval"]
"""The original evaluation's two-stage suffix (docs/spec.md §2)."""


class PromptMethod(Method):
    """A prompt tip plus whether control tokens are forced."""

    tip: ClassVar[str] = "none"
    defaults: ClassVar[dict] = {"grace": None}

    def validate(self) -> None:
        if self.params["grace"] is not None:
            check_grace(self.params["grace"])

    def check_compat(self, compat) -> None:
        if self.params["grace"] is not None and "seed" in compat:
            raise UserError(
                f"method {self.name!r}: grace (the soft ending) forces the suffix in the same "
                "request; compat: seed answers in a second request; drop one of them"
            )

    def prompt(
        self, tokenizer, question: str, budget: int, mode: Mode | None, system_line: bool = True
    ) -> str:
        return render_prompt(tokenizer, question, budget, self.tip, mode, system_line)

    def max_total_tokens(self, budget, max_new_tokens, spec, two_stage) -> int:
        if self.params["grace"] is not None:
            settings = BudgetSettings(budget=budget, grace=self.params["grace"])
            return max_new_tokens or default_max_new_tokens(settings, spec)
        first = super().max_total_tokens(budget, max_new_tokens, spec, two_stage)
        return first + 16 + thinking_cap(budget) if two_stage and spec is None else first

    def settings(self, ctx: SampleContext, in_request: bool) -> BudgetSettings:
        return BudgetSettings(
            budget=ctx.budget,
            two_stage=ctx.two_stage and in_request,
            control=self.forces_control,
            stop_at_think_end=ctx.stop_at_think_end,
            grace=self.params["grace"],
        )

    def episode(self, ctx: SampleContext) -> Episode:
        second_request = ctx.two_stage and ctx.compat_seed
        settings = self.settings(ctx, in_request=not second_request)
        limit = ctx.max_new_tokens or default_max_new_tokens(settings, ctx.spec)
        first = yield GenRequest(ctx.prompt_ids, settings, limit, seed=ctx.round_seed(0))
        output = list(first.token_ids)
        if not second_request:
            return Outcome(output, settings=settings)
        # The original: cut at end-of-sequence, append the suffix text, generate once more.
        if output and output[-1] in ctx.eos_ids:
            output = output[:-1]
        output += ctx.encode(EVAL_SUFFIX, "two-stage suffix")
        second = yield GenRequest(
            ctx.prompt_ids,
            BudgetSettings(),
            thinking_cap(ctx.budget),
            prefix_ids=output,
            seed=ctx.round_seed(1),
        )
        return Outcome(output + second.token_ids, rounds=2, settings=settings,
                       extra={"second_request": True})  # fmt: skip


def _prompt_method(name: str, tip: str, force: bool, description: str) -> type[PromptMethod]:
    cls = type(
        f"PromptMethod_{name}",
        (PromptMethod,),
        {
            "name": name,
            "tip": tip,
            "forces_control": force,
            "needs_control_tokens": force or tip == "control",
            "description": description,
        },
    )
    return register(cls)


_prompt_method("control", "control", True, "BudgetThinker: budget tip + forced control tokens")
_prompt_method("prompt_v1", "prompt_v1", False, "budget tip asking to report remaining tokens")
_prompt_method("prompt_v2", "prompt_v2", False, "short budget tip")
_prompt_method("withoutremaining", "withoutremaining", False, "budget tip, no control tokens")
_prompt_method("none", "none", False, "no budget in the prompt; generation capped at B + B//50")


def check_two_stage(ctx_spec, compat_seed: bool) -> None:
    """In-request two-stage needs the spec's suffix ids; the second-request form needs none."""
    if ctx_spec is None and not compat_seed:
        raise UserError(
            "two_stage needs a prepared model (its spec holds the suffix token ids); prepare the "
            "model first, set two_stage=false, or use compat=seed (suffix as a second request)"
        )
