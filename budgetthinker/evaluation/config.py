"""The evaluation recipe: typed config, its YAML recipes in `configs/eval/`, and env aliases."""

from __future__ import annotations

from dataclasses import dataclass, field

from budgetthinker.config import check_compat
from budgetthinker.evaluation.datasets import DataConfig
from budgetthinker.evaluation.engine_config import EngineConfig
from budgetthinker.evaluation.tracking import check_report_to
from budgetthinker.limits import check_sampling
from budgetthinker.outputs import plain_name
from budgetthinker.patches.backends import check_backend

RELEASE_BUDGETS = [100, 250, 500, 1000, 2000, 4000, 6000, 10000]


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # samples per problem
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_p, "sampling.", "_")
        if self.n < 1:
            raise ValueError("sampling.n must be at least 1")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(
                "sampling.n > 1 needs sampling.temperature > 0 (greedy repeats itself)"
            )


@dataclass
class GradingConfig:
    workers: int = 2  # parallel grader processes
    timeout: float = 5.0  # seconds per equivalence check
    # default: boxed, then math-verify's extraction; qwen (= seed): the original's last-boxed
    # rule of the Qwen2.5-Math parser, for reproducing published numbers
    extraction: str = "default"

    def __post_init__(self) -> None:
        from budgetthinker.evaluation.extraction import EXTRACTIONS

        if self.extraction not in EXTRACTIONS:
            raise ValueError(
                f"grading.extraction must be one of {', '.join(EXTRACTIONS)}, "
                f"got {self.extraction!r}"
            )
        if not self.timeout > 0:  # 0 or less would mark every answer wrong, silently
            raise ValueError(
                f"grading.timeout must be a positive number of seconds, got {self.timeout}"
            )
        if self.workers < 0:
            raise ValueError(
                f"grading.workers must be >= 0 (0 or 1: in-process), got {self.workers}"
            )


@dataclass
class EvalConfig:
    """One evaluation experiment; every key can be overridden as `key=value`."""

    experiment: str = "default"
    model: str = "default"  # prepared model folder, any model folder, or 'default' (embedded)
    backend: str = "hf"  # hf | vllm | openai (any OpenAI-compatible server, at `endpoint`)
    # a name, or {name: s1, <parameter>: …, label: …}; dotted paths load custom methods
    methods: list[str | dict] = field(default_factory=lambda: ["control"])
    two_stage: bool = False
    stop_at_think_end: bool = True  # no control tokens after `</think>` (false: the original)
    # the originals to reproduce (docs/faithful_switches.md): seed (BudgetThinker's original:
    # two-stage as a second request on every output, control tokens after `</think>`), s1 (the
    # s1 harness fork's budget rounds, end string and graded text, and the HF scaling fork's
    # entropy_thresholding rule); TALE's is a method parameter, the scaler forks' scale_func's
    compat: list[str] = field(default_factory=list)
    delimiters: dict | None = None  # {start: <text>, end: <text>}; default: detected
    budgets: list[int] = field(default_factory=lambda: list(RELEASE_BUDGETS))
    max_new_tokens: int | None = None  # default: B + B//50 (two-stage: room for the answer)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    grading: GradingConfig = field(default_factory=GradingConfig)
    batch_size: int = 16  # transformers batch; vLLM schedules a whole chunk itself
    chunk_size: int = 64  # requests generated, graded and saved together
    max_model_len: int | None = None  # vLLM context length (default: fits the largest request)
    output_dir: str = "runs"
    engine: EngineConfig = field(default_factory=EngineConfig)  # vLLM engine options
    endpoint: str | None = None  # backend=openai: http://HOST:PORT of the server
    api_key_env: str | None = None  # backend=openai: variable holding the API key, if any
    concurrency: int = 8  # backend=openai: requests in flight
    request_timeout: float = 600.0  # backend=openai: seconds one request may wait for the server
    retries: int = 6  # backend=openai: retries of a failed or faulty request before it is an error
    # none | tensorboard | wandb (comma-separated for both): log accuracy and adherence per sweep
    # point and the report's plots (<run>/tensorboard/, <run>/wandb/; WANDB_MODE=offline works)
    report_to: str | list[str] = "none"

    def __post_init__(self) -> None:
        check_backend(self.backend, self.endpoint)
        if self.engine.max_model_len is not None:
            self.max_model_len = self.engine.max_model_len
        if not self.budgets:
            raise ValueError("budgets must list at least one budget")
        if not self.methods:
            raise ValueError("methods must list at least one method")
        self.compat = check_compat(self.compat, ("seed", "s1"))
        if "seed" in self.compat:
            self.stop_at_think_end = False
            if self.grading.extraction == "default":  # the original's last-boxed rule
                self.grading.extraction = "qwen"
        plain_name(self.experiment, "experiment")  # it becomes <output_dir>/<experiment>/
        for key in ("chunk_size", "batch_size", "max_new_tokens", "max_model_len", "concurrency"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value}")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be a positive number of seconds, "
                             f"got {self.request_timeout}")  # fmt: skip
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, got {self.retries}")
        check_report_to(self.report_to)

