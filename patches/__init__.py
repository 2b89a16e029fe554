"""Engine adapters: they translate the forcing state machine into each engine's hook."""

from budgetthinker.patches.vllm_select import V1_FQCN, V2_FQCN, vllm_processor, vllm_processor_fqcn

__all__ = ["V1_FQCN", "V2_FQCN", "vllm_processor", "vllm_processor_fqcn"]
