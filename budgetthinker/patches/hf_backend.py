"""transformers backend: `model.generate` with the forcing processor, per-row stops, per-row
sampling seeds, `min_tokens` and per-token entropies — the `Backend` interface of
`budgetthinker.generation` on transformers.

`model.generate` has batch-wide stop strings, `min_new_tokens` and one random generator, so the
per-request parts run in two processors of our own: `RowControl` suppresses EOS and stop tokens
below a row's `min_tokens`, draws the next token of a sampled row from the row's own
`torch.Generator` (seeded per request, so a sample does not depend on its batch), and records
entropies and logprobs of the distribution actually sampled from (after forcing, temperature and
top-p); `RowStops` ends each row by the same rules as vLLM (`StopChecker`). Generation itself
runs greedy over these processed logits, which then hold one finite value per sampled row.

Continuations (`prefix_ids`) are re-prefilled: prompt + prefix go in as one input, so a later
round costs one forward pass over them before decoding starts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from budgetthinker.control_spec import has_spec, load_spec
from budgetthinker.delimiters import boundary_token_ids
from budgetthinker.generation import (
    Backend,
    GenRequest,
    GenResult,
    StopChecker,
    eos_token_ids,
    on_gpu,
    sample_seed,
    suppressed_ids,
)
from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor
from budgetthinker.preparation.loading import load_causal_lm, load_tokenizer


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row ÷ log(number of finite logits); 0 when at most one
    token is allowed (a forced token)."""
    finite = torch.isfinite(logits)
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    h = -(torch.where(finite, p * logp, torch.zeros_like(p))).sum(-1)
    n = finite.sum(-1).clamp(min=1).float()
    return torch.where(n > 1, h / torch.log(n.clamp(min=2)), torch.zeros_like(h))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p` (at least one)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


class RowControl(LogitsProcessor):
    """Per-row min_tokens, seeded sampling and entropy/logprob recording (runs after forcing)."""

    def __init__(
        self,
        requests: Sequence[GenRequest],
        eos_ids: set[int],
        prompt_len: int,
        temperature: float,
        top_p: float,
        seeds: Sequence[int],
    ) -> None:
        self.requests = list(requests)
        self.eos_ids = eos_ids
        self.prompt_len = prompt_len
        self.temperature = temperature
        self.top_p = top_p
        self.generators = None
        if temperature > 0:
            self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.entropies: list[list[float]] = [[] for _ in requests]
        self.logprobs: list[list[float]] = [[] for _ in requests]
        self._want = any(r.entropies or r.logprobs for r in requests)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_len
        scores = scores.float()
        for i, request in enumerate(self.requests):
            banned = suppressed_ids(request, self.eos_ids, generated)
            if banned:
                scores[i, banned] = float("-inf")
        if self.temperature > 0:
            scores = top_p_filter(scores / self.temperature, self.top_p)
        logp = torch.log_softmax(scores, dim=-1) if self._want or self.generators else None
        if self.generators is not None:
            probs = logp.exp().cpu()
            chosen = [
                int(torch.multinomial(probs[i], 1, generator=g))
                for i, g in enumerate(self.generators)
            ]
        else:
            chosen = scores.argmax(-1).tolist()
        if self._want:
            entropy = normalised_entropy(scores).tolist()
            for i, request in enumerate(self.requests):
                if request.entropies:
                    self.entropies[i].append(entropy[i])
                if request.logprobs:
                    self.logprobs[i].append(float(logp[i, chosen[i]]))
        if self.generators is None:
            return scores
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen)), torch.tensor(chosen)] = 0.0
        return out


class RowStops(StoppingCriteria):
    """Ends each row by its own `StopChecker` (EOS, stop ids/strings, min_tokens, length)."""

    def __init__(self, checkers: Sequence[StopChecker], prompt_len: int) -> None:
        self.checkers = list(checkers)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        done = [c.feed(t) for c, t in zip(self.checkers, last, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFBackend(Backend):
    """transformers `generate` with `BudgetForcingLogitsProcessor`; left-padded batches."""

    name = "hf"

    def __init__(self, model_dir: str, *, dtype: str | None = None, seed: int = 0) -> None:
        self.device = "cuda" if on_gpu() else "cpu"
        # float32 on CPU: without native bf16 (AVX2 machines) bf16 is 3-5x slower.
        torch_dtype = dtype or ("bfloat16" if self.device == "cuda" else "float32")
        self.tokenizer = load_tokenizer(model_dir)  # a spec that does not match it stops here
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(model_dir, dtype=torch_dtype)
        self.model.to(self.device).eval()
        self.spec = load_spec(model_dir) if has_spec(model_dir) else None
        self.seed = seed
        self.eos_ids = eos_token_ids(self.model.generation_config, self.tokenizer)
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else next(iter(self.eos_ids))
        )

    @functools.cached_property
    def boundaries(self) -> frozenset[int]:
        """The soft ending's boundary tokens (built on first use)."""
        return boundary_token_ids(self.tokenizer)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def run(
        self,
        requests: Sequence[GenRequest],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        progress=None,
    ) -> list[GenResult]:
        self.check_requests(requests)
        results: list[GenResult] = []
        for start in range(0, len(requests), batch_size):
            batch = list(requests[start : start + batch_size])
            seeds = [
                r.seed if r.seed is not None else sample_seed(self.seed, start + i)
                for i, r in enumerate(batch)
            ]
            results.extend(self._run_batch(batch, temperature, top_p, seeds))
            if progress is not None:
                progress.update(len(batch))
        return results

    def _run_batch(self, batch, temperature, top_p, seeds) -> list[GenResult]:
        inputs = [r.input_ids for r in batch]
        width = max(len(p) for p in inputs)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in inputs])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in inputs])
        forcing = BudgetForcingLogitsProcessor(
            [r.settings.plan(self.spec, self.boundaries) for r in batch], prompt_len=width
        )
        control = RowControl(batch, self.eos_ids, width, temperature, top_p, seeds)
        checkers = [StopChecker(r, self.eos_ids, self._decode) for r in batch]
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max(r.max_new_tokens for r in batch),
                logits_processor=LogitsProcessorList([forcing, control]),
                stopping_criteria=StoppingCriteriaList([RowStops(checkers, width)]),
                pad_token_id=self.pad_id,
                do_sample=False,
            )
        results = []
        for i, (request, checker) in enumerate(zip(batch, checkers, strict=True)):
            result = checker.result()
            n = len(result.token_ids)
            if request.entropies:
                result.entropies = control.entropies[i][:n]
            if request.logprobs:
                result.logprobs = control.logprobs[i][:n]
            results.append(result)
        return results

