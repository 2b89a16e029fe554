"""s1 budget forcing (`s1`), faithful to the s1 lm-evaluation-harness fork (reference A2), and
the vLLM tutorial loop of the seed document (`variant: tutorial`).

Thinking starts after `thinking_start` (appended to the prompt) and runs for up to B tokens,
stopping where the model starts `thinking_end` (`until_thinking`). Each time the model ends
thinking early, up to `thinking_n_ignore` times, the end is suppressed and
`thinking_n_ignore_str` appended (nothing when None); a scaling function (`scale_func`) may
decide instead. Then `thinking_end` is appended (`thinking_end + "\\nFinal Answer:"`, after a
"\\n" unless the text ends with one, when thinking hit the cap) and the answer generated.

Budget per round: by default each extra round gets what is left of B (the s1 README loop), and
what is appended inside thinking (the ignore string, a scaler's tokens) is cut to what is left:
thinking never exceeds B, in any mode (`Outcome.ceiling`). `compat: [s1]` reproduces the fork:
every round may use the full B and the sum is cut to B afterwards (a sample cut that way whose
last round stopped by itself gets no "Final Answer:", but is recorded as not finished); the
newline before the end string is decided on the uncut text (none when thinking_start begins
with one); min_tokens is 1 whenever thinking_n_ignore is set; and the fork's returned text —
its uncut thinking — is what is graded (`graded_text`), docs/methods/s1.md.

`thinking_start`/`thinking_end` default to the model's delimiters (`auto`: `<think>`/`</think>`
on a prepared or R1-style model, `<|im_start|>think`/`<|im_start|>answer` on s1 models, the
latter also when the model has none). B is the sweep's budget unless `max_tokens_thinking` fixes
it (an int, or `auto`: max_gen_toks − the benchmark's longest prompt − len(start) −
len(end + "\\nFinal Answer:") − 100).
"""

from __future__ import annotations

from typing import Any, ClassVar

from budgetthinker.control_spec import Mode
from budgetthinker.delimiters import S1_END, S1_START
from budgetthinker.errors import UserError
from budgetthinker.evaluation.methods import Episode, Method, Outcome, SampleContext, register
from budgetthinker.evaluation.methods.scalers import get_scale_func
from budgetthinker.generation import GenRequest, GenResult
from budgetthinker.prompts import render_prompt

FINAL_ANSWER = "\nFinal Answer:"
TUTORIAL_WAIT = "\nWait!\n"
TUTORIAL_END = "\n</think>\n"
GRADED_AS_FORK = "s1 fork: its returned text, thinking beyond B included (compat: [s1])"


@register
class S1(Method):
    """s1 budget forcing; see the module docstring."""

    name = "s1"
    description = "s1 budget forcing: cap thinking at B, suppress its end with 'Wait' n times"
    answer_format = "s1"
    enforces_budget = True
    defaults: ClassVar[dict[str, Any]] = {
        "variant": "lmeval",  # lmeval (the harness fork) | tutorial (the seed's vLLM loop)
        "max_tokens_thinking": None,  # None: the sweep's budget; int; "auto"
        "max_gen_toks": None,  # answer-phase cap (and `auto`'s total); None: run's cap or 1024
        "thinking_n_ignore": None,
        "thinking_n_ignore_str": None,
        "thinking_start": "auto",
        "thinking_end": "auto",
        "until_thinking": "auto",  # auto: the first token of thinking_end
        "until_thinking_2": None,
        "min_tokens_thinking": None,
        "rejection_sample": False,
        "scale_func": None,  # {name: default | entropy_thresholding | pkg.mod:func, …params}
        "tip": "none",  # prompt tip (s1 used none; `withoutremaining` puts B in the prompt)
    }

    def validate(self) -> None:
        p = self.params
        if p["variant"] not in ("lmeval", "tutorial"):
            raise UserError(f"s1 variant must be lmeval or tutorial, got {p['variant']!r}")
        n = p["thinking_n_ignore"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise UserError(f"s1 thinking_n_ignore must be an integer ≥ 0 (or null), got {n!r}")
        b = p["max_tokens_thinking"]
        if b is not None and b != "auto" and (isinstance(b, bool) or not isinstance(b, int)
                                              or b < 1):  # fmt: skip
            raise UserError(f"s1 max_tokens_thinking must be a positive integer or auto, got {b!r}")
        if b == "auto" and not p["max_gen_toks"]:
            raise UserError("s1 max_tokens_thinking: auto needs max_gen_toks (the total cap)")
        for key in ("max_gen_toks", "min_tokens_thinking"):
            v = p[key]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UserError(f"s1 {key} must be a positive integer, got {v!r}")
        if p["rejection_sample"]:
            raise UserError(
                "s1 rejection_sample is not implemented; leave it false (it resamples thinking "
                "at temperature > 0 until it fits the budget)"
            )
        sf = p["scale_func"]
        if sf is not None:
            if not isinstance(sf, dict) or not isinstance(sf.get("name"), str):
                raise UserError(f"s1 scale_func must be {{name: …, <parameter>: …}}, got {sf!r}")
            params = {k: v for k, v in sf.items() if k != "name"}
            get_scale_func(sf["name"], [], **params)  # unknown names fail here

    def check_compat(self, compat) -> None:
        """`compat: [s1]` is the lm-evaluation-harness fork: not the tutorial loop, and a scaling
        function's parameters must be ones the fork's code could run with."""
        if "s1" not in compat:
            return
        if self.params["variant"] == "tutorial":
            raise UserError(
                "s1 variant: tutorial is the seed's loop, not the s1 fork that compat: [s1] "
                "reproduces; drop one of them"
            )
        self.scaler([], True)

    def prompt(
        self, tokenizer, question: str, budget: int, mode: Mode | None, system_line: bool = True
    ) -> str:
        return render_prompt(tokenizer, question, budget, self.params["tip"], mode, system_line)

    def max_total_tokens(self, budget, max_new_tokens, spec, two_stage) -> int:
        fixed = self.params["max_tokens_thinking"]
        thinking = budget if fixed is None else (self.params["max_gen_toks"] if fixed == "auto"
                                                 else fixed)  # fmt: skip
        answer = self.answer_cap(max_new_tokens)
        return thinking + answer + 32  # + delimiters and "Final Answer:"

    # -- resolved settings -----------------------------------------------------------------

    def delimiters(self, ctx: SampleContext) -> tuple[str, str]:
        start, end = self.params["thinking_start"], self.params["thinking_end"]
        d = ctx.delimiters
        auto = (d.start, d.end) if d.known and d.source != "none" else (S1_START, S1_END)
        return (auto[0] or "" if start == "auto" else start or ""), (
            auto[1] if end == "auto" else end
        )

    def thinking_budget(self, ctx: SampleContext) -> int:
        fixed = self.params["max_tokens_thinking"]
        if fixed is None:
            return ctx.budget
        if fixed != "auto":
            return fixed
        start, end = self.delimiters(ctx)
        b = (self.params["max_gen_toks"] - ctx.longest_prompt - len(ctx.encode(start))
             - len(ctx.encode(end + FINAL_ANSWER)) - 100)  # fmt: skip
        if b <= 0:
            raise UserError(
                f"s1 max_tokens_thinking: auto gives {b} ≤ 0 for these prompts (longest "
                f"{ctx.longest_prompt} tokens); raise max_gen_toks or set max_tokens_thinking"
            )
        return b

    def scaler(self, ignore_ids: list[int], compat: bool):
        """The scaling function (`default`: always go on with the ignore string); under
        `compat: [s1]` entropy_thresholding uses the rule the s1-era docs promised, the Hugging
        Face fork's (`hf_fork`), unless the recipe's scale_func sets its own compat."""
        sf = dict(self.params["scale_func"] or {"name": "default"})
        name = sf.pop("name")
        if compat and name == "entropy_thresholding":
            sf.setdefault("compat", ["s1"])
        return get_scale_func(name, ignore_ids, **sf)

    def answer_cap(self, max_new_tokens: int | None) -> int:
        """Answer-phase cap: max_gen_toks, else the run's max_new_tokens, else 1024 (the
        tutorial: 4096, its fixed answer length)."""
        if self.params["variant"] == "tutorial":
            return self.params["max_gen_toks"] or 4096
        return self.params["max_gen_toks"] or max_new_tokens or 1024

    def episode(self, ctx: SampleContext) -> Episode:
        if self.params["variant"] == "tutorial":
            return (yield from self._tutorial(ctx))
        return (yield from self._lmeval(ctx))

    def _lmeval(self, ctx: SampleContext) -> Episode:
        p = self.params
        compat = "s1" in ctx.compat
        start, end = self.delimiters(ctx)
        fork_start = start  # the fork's thinking_start (its newline rule reads it)
        if start and ctx.decode(ctx.prompt_ids[-8:]).rstrip().endswith(start.strip()):
            start = ""  # the chat template already opened thinking (R1-style templates)
        start_ids = ctx.encode(start, "thinking_start")
        budget = self.thinking_budget(ctx)
        until = p["until_thinking"]
        if until == "auto":
            until = ctx.decode(ctx.encode(end, "thinking_end")[:1])
        untils = [u for u in (until, p["until_thinking_2"]) if u]
        n_ignore = p["thinking_n_ignore"]
        min_tokens = p["min_tokens_thinking"]
        as_ids = n_ignore is not None or min_tokens is not None
        stop_ids: tuple[int, ...] = ()
        stop: tuple[str, ...] = ()
        if as_ids:
            # vLLM's min_tokens suppresses stop token ids: every stop must be one token (A2).
            # The fork forces min_tokens to 1 whenever thinking_n_ignore is set.
            min_tokens = 1 if compat and n_ignore is not None else min_tokens or 1
            for u in untils:
                ids = ctx.encode(u, "until_thinking")
                if len(ids) != 1:
                    raise UserError(
                        f"s1 until_thinking {u!r} is {len(ids)} tokens; with thinking_n_ignore "
                        "or min_tokens_thinking every stop must be a single token"
                    )
                stop_ids += (ids[0],)
        else:
            stop = tuple(untils)
        ignore_ids = ctx.encode(p["thinking_n_ignore_str"] or "", "thinking_n_ignore_str")
        scaler = self.scaler(ignore_ids, compat)
        rounds = (n_ignore or 0) + 1
        thinking: list[int] = []
        text = ""  # the fork's thinking text: every round and appended string, never cut
        cut = 0  # tokens cut so that thinking ends at B
        last: GenResult | None = None
        done = 0
        for r in range(rounds):
            left = budget if compat else budget - len(thinking)
            if left <= 0:
                break
            last = yield GenRequest(
                ctx.prompt_ids,
                max_new_tokens=left,
                prefix_ids=start_ids + thinking,
                stop=stop,
                stop_token_ids=stop_ids,
                min_tokens=min(min_tokens or 0, left),
                seed=ctx.round_seed(r),
                entropies=scaler.needs_entropies,
            )
            done += 1
            kept = _strip_stop(last, stop_ids, ctx)
            thinking += kept
            text += ctx.decode(kept)
            if last.finish_reason == "length" or r == rounds - 1:
                break
            go_on, tokens = scaler(
                iteration=r, seq=[*ctx.prompt_ids, *start_ids, *thinking],
                entropies=last.entropies,
            )  # fmt: skip
            if not go_on:
                break
            if not compat and len(thinking) + len(tokens) > budget:
                # A budget is a ceiling: what does not fit in what is left of B is cut.
                cut += len(thinking) + len(tokens) - budget
                tokens = tokens[: budget - len(thinking)]
            thinking += tokens
            text += ctx.decode(tokens)
        if len(thinking) > budget:  # compat: the fork's cut of the sum (else never reached)
            cut += len(thinking) - budget
            thinking = thinking[:budget]
        capped = last is None or last.finish_reason == "length"
        if compat:
            # The fork decides the newline on its uncut text, and adds none when thinking_start
            # begins with one; a sample cut after its last round stopped gets the plain end.
            ends_line = text.endswith("\n") or fork_start.startswith("\n")
        else:
            capped = capped or len(thinking) >= budget
            ends_line = ctx.decode(thinking).endswith("\n")
        if capped:
            newline = "" if ends_line else "\n"
            tail = newline + end + FINAL_ANSWER
            end_ids = ctx.encode(newline) + ctx.encode(end + FINAL_ANSWER, "thinking_end")
        else:
            tail = end
            end_ids = ctx.encode(end, "thinking_end")
        prefix = start_ids + thinking + end_ids
        answer = yield GenRequest(
            ctx.prompt_ids, max_new_tokens=self.answer_cap(ctx.max_new_tokens), prefix_ids=prefix,
            seed=ctx.round_seed(rounds),
        )  # fmt: skip
        outcome = Outcome(
            prefix + answer.token_ids,
            rounds=done + 1,
            thinking_tokens=len(thinking),
            finished_thinking=not capped and not cut,
            ceiling=budget,
            extra={"thinking_rounds": done, "thinking_cut": cut},
        )
        if compat:  # what the fork returns and grades: its thinking text, beyond B included
            outcome.graded_text = start + text + tail + ctx.decode(_strip_stop(answer, (), ctx))
            outcome.graded_as = GRADED_AS_FORK
        return outcome

    def _tutorial(self, ctx: SampleContext) -> Episode:
        """The seed's loop: stop at `</think>`, append "\\nWait!\\n" while the thinking count
        is under B (max_tokens = B − count), then "\\n</think>\\n" and an answer of up to 4096
        tokens. The tutorial recounts thinking from the text; here it is the tokens generated
        plus those appended, which is what the model was fed."""
        budget = self.thinking_budget(ctx)
        end = self.delimiters(ctx)[1]
        wait_ids = ctx.encode(TUTORIAL_WAIT)
        thinking: list[int] = []
        r = 0
        while True:
            last = yield GenRequest(
                ctx.prompt_ids, max_new_tokens=budget - len(thinking), prefix_ids=thinking,
                stop=(end,), seed=ctx.round_seed(r),
            )  # fmt: skip
            r += 1
            thinking += _strip_stop(last, (), ctx)
            if last.finish_reason == "length" or len(thinking) + len(wait_ids) >= budget:
                break
            thinking += wait_ids
        cut = max(0, len(thinking) - budget)  # a stop string's re-encoding (else never reached)
        thinking = thinking[:budget]
        prefix = thinking + ctx.encode(TUTORIAL_END)
        answer = yield GenRequest(
            ctx.prompt_ids, max_new_tokens=self.answer_cap(None),
            prefix_ids=prefix, seed=ctx.round_seed(r),
        )  # fmt: skip
        return Outcome(
            prefix + answer.token_ids,
            rounds=r + 1,
            thinking_tokens=len(thinking),
            finished_thinking=last.finish_reason != "length" and not cut,
            ceiling=budget,
            extra={"thinking_rounds": r, "thinking_cut": cut},
        )


def _strip_stop(result: GenResult, stop_ids: tuple[int, ...], ctx: SampleContext) -> list[int]:
    """The round's tokens without what stopped it: a stop token, EOS, or the stop string (the
    text never contains it, A2)."""
    ids = list(result.token_ids)
    if result.finish_reason != "stop" or not ids:
        return ids
    if isinstance(result.stop_reason, str):
        text = ctx.decode(ids)
        cut = text.rfind(result.stop_reason)
        kept = ids[:-1]
        before = ctx.decode(kept)
        # The last token completed the stop string; keep any text of it before the string.
        return kept + (ctx.encode(text[len(before):cut]) if cut > len(before) else [])
    if ids[-1] in stop_ids or ids[-1] in ctx.eos_ids:
        return ids[:-1]
    return ids
