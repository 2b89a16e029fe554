"""Engine adapters: they translate the forcing state machine into each engine's hook."""

from budgetthinker.patches.vllm_select import (
    AUTO_FQCN,
    V1_FQCN,
    V2_FQCN,
    vllm_processor,
    vllm_processor_fqcn,
)

__all__ = ["AUTO_FQCN", "V1_FQCN", "V2_FQCN", "vllm_processor", "vllm_processor_fqcn"]
