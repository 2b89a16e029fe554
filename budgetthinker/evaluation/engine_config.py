"""`engine.*` settings of an evaluation: what `backend=vllm` passes to vLLM's engine.

Multi-GPU runs use vLLM's own parallelism rather than ours: `tensor_parallel_size` splits the
model over GPUs inside one engine. vLLM's offline `LLM` refuses `data_parallel_size > 1` (it needs
one process per replica), so data parallelism goes through vLLM's server, which load-balances its
replicas itself: `budgetthinker serve MODEL -- --data-parallel-size 8` and `backend=openai`
(docs/stages/evaluation.md, "Backends and multi-GPU evaluation"). Unknown keys are refused by
the config loader with the list of known ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetthinker.errors import UserError

DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")


@dataclass
class EngineConfig:
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # vLLM's default (0.9) when unset
    dtype: str = "auto"  # auto: the model's own (float32 on CPU, as our CPU defaults)
    enable_prefix_caching: bool = True  # continuation rounds reuse the prompt's KV blocks
    max_model_len: int | None = None  # default: fits the largest request of the run

    def __post_init__(self) -> None:
        for key in ("tensor_parallel_size", "data_parallel_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"engine.{key} must be a positive integer, got {value!r}")
        g = self.gpu_memory_utilization
        if g is not None and not 0 < g <= 1:
            raise ValueError(f"engine.gpu_memory_utilization must be in (0, 1], got {g}")
        if self.dtype not in DTYPES:
            raise ValueError(f"engine.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"engine.max_model_len must be positive, got {self.max_model_len}")

    def check_devices(self, visible: int | None = None) -> None:
        """Refuse settings this machine cannot run, before an engine starts."""
        if self.data_parallel_size > 1:
            raise UserError(
                f"engine.data_parallel_size={self.data_parallel_size} needs vLLM's server (its "
                "offline engine runs one replica): start `budgetthinker serve MODEL -- "
                f"--data-parallel-size {self.data_parallel_size}` and evaluate with "
                "backend=openai endpoint=http://HOST:PORT"
            )
        if self.tensor_parallel_size > 1:
            if visible is None:
                import torch

                visible = torch.cuda.device_count()
            if self.tensor_parallel_size > visible:
                raise UserError(
                    f"engine.tensor_parallel_size={self.tensor_parallel_size} needs that many "
                    f"GPUs but {visible} visible; lower it or set CUDA_VISIBLE_DEVICES (for "
                    "several nodes, see docs/stages/evaluation.md: Ray)"
                )

    def vllm_kwargs(self) -> dict:
        """Keyword arguments for `vllm.LLM` (only what differs from vLLM's defaults)."""
        kwargs: dict = {"enable_prefix_caching": self.enable_prefix_caching}
        if self.tensor_parallel_size > 1:
            kwargs["tensor_parallel_size"] = self.tensor_parallel_size
        if self.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.dtype != "auto":
            kwargs["dtype"] = self.dtype
        return kwargs
