"""The `budgetthinker` model of lm-evaluation-harness: every method of our harness behind
lm-eval's `generate_until`, on our backends.

`lm_eval --model budgetthinker --model_args pretrained=DIR,backend=vllm --tasks … --gen_kwargs
"method=control,budget=2000"` (through `budgetthinker lm-eval …`, which registers the model:
lm-eval 0.4.13 reads no entry points). Each group of requests with the same `gen_kwargs` is one
`budgetthinker eval` sweep point: `lm_eval_kwargs.parse_gen_kwargs` turns the gen_kwargs into an
`EvalConfig` with one method and one budget, `runner.check_setup` checks it as `eval` does, the
method renders each prompt from lm-eval's context (the context is the problem text: the model's
chat template, the method's budget tip and, with `system_line=true`, our system line are added
here, as in `eval`), and `runner.ChunkRun` drives the episodes round by round in chunks of
`chunk_size`, each round one batched `backend.run`. Same problems, settings and batch size → the
same token ids as `budgetthinker eval` (tested).

What is returned is the decoded output (or, under `compat: [s1]`, the fork's returned text);
lm-eval's `until` strings and the end-of-sequence text cut the *answer* — the text after the end
of thinking — never the thinking (lm-eval's own models stop generation at them, which would end a
reasoning model's thinking at its first blank line). `strip_thinking=true` (model_args) returns
the answer alone, as lm-eval's `think_end_token` does. The text carries its thinking record for
the adherence metrics (`lm_eval_metrics`).

model_args: `pretrained` (a model folder, or `default`: the embedded prepared model) and any key
of the evaluation recipe that is not a sweep setting — `backend`, `endpoint`, `batch_size`,
`chunk_size`, `max_model_len`, `engine.<key>`, `seed` (= `sampling.seed`), … — plus
`max_gen_toks` (the default when gen_kwargs have none) and `strip_thinking`. lm-eval's `device`
and `max_batch_size` are ignored (the backend places the model itself); `--batch_size N` is the
transformers batch (`auto`: the recipe's 16).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's registry loads its own models only while empty)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from budgetthinker.config import build, merge
from budgetthinker.control_spec import has_spec, load_spec
from budgetthinker.delimiters import detect
from budgetthinker.errors import UserError
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.datasets import Problem
from budgetthinker.evaluation.lm_eval_kwargs import DEFAULT_MAX_GEN_TOKS, parse_gen_kwargs
from budgetthinker.evaluation.lm_eval_metrics import ThinkingResponse
from budgetthinker.evaluation.methods.s1 import S1
from budgetthinker.evaluation.runner import (
    ChunkRun,
    Request,
    check_setup,
    sample_requests,
    start_backend,
)
from budgetthinker.generation import require_vllm
from budgetthinker.preparation.models import load_tokenizer, resolve_model

MODEL_NAME = "budgetthinker"
IGNORED_ARGS = ("device", "max_batch_size", "trust_remote_code")
"""lm-eval passes these to every model; our backends place and batch the model themselves."""
SWEEP_KEYS = ("methods", "budgets", "max_new_tokens", "sampling", "compat", "two_stage",
              "stop_at_think_end", "data", "experiment", "output_dir")  # fmt: skip
"""Recipe keys that gen_kwargs set per request (or that lm-eval owns), not model_args."""


@register_model(MODEL_NAME)
class BudgetThinkerLM(LM):
    """lm-eval's `LM` over one of our backends; see the module docstring."""

    def __init__(
        self,
        pretrained: str = "default",
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        strip_thinking: bool = False,
        batch_size: int | str | None = None,
        **model_args: Any,
    ) -> None:
        super().__init__()
        for key in IGNORED_ARGS:
            model_args.pop(key, None)
        self.base = _recipe(pretrained, batch_size, model_args)
        cfg = build(EvalConfig, self.base)
        self.max_gen_toks = int(max_gen_toks)
        self.strip_thinking = bool(strip_thinking)
        self.model_dir = str(resolve_model(cfg.model))
        self.spec = load_spec(self.model_dir) if has_spec(self.model_dir) else None
        self.tokenizer = load_tokenizer(self.model_dir)
        self.delimiters = detect(self.tokenizer, self.spec, cfg.delimiters)
        if cfg.backend == "vllm":
            require_vllm()
            cfg.engine.check_devices()
        self.backend = start_backend(cfg, self.model_dir, cfg.max_model_len)

    # -- lm-eval's interface -------------------------------------------------------------------

    def loglikelihood(self, requests):
        raise UserError(
            "the budgetthinker model only generates: run generate_until tasks (loglikelihood "
            "tasks need lm-eval's own hf or vllm model)"
        )

    loglikelihood_rolling = loglikelihood

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """One response per request, in order; requests with the same gen_kwargs run together,
        as one sweep point of `budgetthinker eval`."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        responses: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="budgetthinker") as bar:
            for indices in groups.values():
                batch = [requests[i] for i in indices]
                for i, response in zip(indices, self._generate(batch, bar), strict=True):
                    responses[i] = response
                    context, gen_kwargs = requests[i].args
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), response)
        return responses  # type: ignore[return-value]

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt=True) -> str:
        """The user turn's text: the method renders the chat template itself (with its budget
        tip inside the user turn), so `--apply_chat_template` gives the same prompt as without
        it. Histories the methods cannot render (system turns, multi-turn few-shot) are refused."""
        if len(chat_history) != 1 or chat_history[0].get("role") != "user":
            roles = ", ".join(str(m.get("role")) for m in chat_history)
            raise UserError(
                f"the budgetthinker model renders one user turn (the method's prompt), got a chat "
                f"of {roles}; drop --system_instruction and --fewshot_as_multiturn"
            )
        return chat_history[0]["content"]

    @property
    def tokenizer_name(self) -> str:
        return self.model_dir.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    # -- one group: one sweep point ----------------------------------------------------------

    def _generate(self, batch, bar) -> list[ThinkingResponse]:
        setting = parse_gen_kwargs(batch[0].args[1], self.max_gen_toks)
        cfg = build(EvalConfig, merge(self.base, setting.config))
        (method,) = check_setup(cfg, self.spec, self.model_dir)
        budget = cfg.budgets[0]
        problems: dict[tuple, Problem] = {}
        wanted = []
        seen: Counter = Counter()
        for request in batch:
            key = (request.task_name, request.doc_id, request.args[0])
            if key not in problems:
                ident = len(problems) if request.doc_id is None else request.doc_id
                problems[key] = Problem(
                    benchmark=str(request.task_name or "lm_eval"),
                    id=f"{ident}" if not request.idx else f"{ident}.{request.idx}",
                    question=request.args[0],
                    answer="",
                    system_line=setting.system_line,
                )
            wanted.append((problems[key], seen[key]))
            seen[key] += 1  # lm-eval repeats a request `repeats` times: samples 0, 1, …
        pending = sample_requests(method, budget, list(problems.values()), wanted,
                                  self.tokenizer, self.spec)  # fmt: skip
        run = ChunkRun(cfg, self.backend, self.tokenizer, self.spec, self.delimiters, None)
        responses = []
        for start in range(0, len(pending), cfg.chunk_size):
            chunk = pending[start : start + cfg.chunk_size]
            for request, outcome in zip(chunk, run.outcomes(chunk), strict=True):
                responses.append(self._response(run, request, outcome, setting.until))
            bar.update(len(chunk))
        return responses

    def _response(self, run: ChunkRun, request: Request, outcome, until) -> ThinkingResponse:
        info, thinking, finished = run.analysis(outcome)
        text = self.tokenizer.decode(outcome.output_ids, skip_special_tokens=False)
        if outcome.graded_text is not None:
            text = outcome.graded_text
        end = self.delimiters.end
        if isinstance(request.method, S1):
            end = request.method.delimiters(run.context(request))[1]
        record = {
            "method": request.method.display_name,
            "budget": outcome.ceiling if outcome.ceiling is not None else request.budget,
            "thinking_tokens": thinking,
            "finished_thinking": finished,
            "control_positions": [position for position, _ in info.control_positions],
            "rounds": outcome.rounds,
            "output_tokens": len(outcome.output_ids),
        }
        return ThinkingResponse(self._cut(text, end, until), record)

    def _cut(self, text: str, end: str | None, until) -> str:
        """Cut the answer (after the first `end`) at the first `until` string or the
        end-of-sequence text; a response whose thinking never ended is returned whole."""
        start = 0
        if end:
            found = text.find(end)
            if found < 0:
                return "" if self.strip_thinking else text
            start = found + len(end)
        answer = text[start:]
        for stop in (*until, self.tokenizer.eos_token):
            if stop:
                answer = answer.split(stop)[0]
        return answer.lstrip() if self.strip_thinking else text[:start] + answer


def _recipe(pretrained: str, batch_size, model_args: Mapping[str, Any]) -> dict:
    """model_args → the evaluation recipe's keys (`engine.dtype=…` nests, `seed` is
    `sampling.seed`); sweep settings belong in gen_kwargs."""
    recipe: dict = {"model": str(pretrained)}
    if batch_size is not None and not str(batch_size).startswith("auto"):
        recipe["batch_size"] = int(batch_size)
    for key, value in model_args.items():
        if key in SWEEP_KEYS:
            raise UserError(
                f"model_args {key} is a per-request setting: pass it in --gen_kwargs "
                "(e.g. method=control,budget=2000)"
            )
        path = ["sampling", "seed"] if key == "seed" else key.split(".")
        node = recipe
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return recipe
