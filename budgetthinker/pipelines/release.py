"""The release pipeline in one command: prepare → SFT data → SFT (2 + 4 epochs) → GRPO → eval.

    python -m budgetthinker.pipelines.release MODEL_DIR [--config configs/experiments/release.yaml]
        [--dry-run] [key=value …]                 # what scripts/release_pipeline.sh runs

Each stage is the same command a user would type for that stage alone (`budgetthinker prepare`,
`sft-data`, `sft` in `.venv-sft`, `bash rl/8ratio_v1.sh`, verl's model merger, `budgetthinker
eval`), chained by `budgetthinker.pipelines.stages`: the output of one is the input of the next, all
under `run_dir`, and a finished stage is skipped on a rerun. `--dry-run` prints every command and
checks every config without training: the SFT recipe (LLaMA-Factory keys and ours), the RL recipe
through verl's own schema and validation (`rl/8ratio_v1.sh --dry-run`, which needs `.venv-rl`),
the evaluation recipe and its benchmark files, and the input files.

`python -m budgetthinker.pipelines.release merge-rl CHECKPOINTS SPEC_DIR OUT` (run in `.venv-rl`
by the pipeline) turns verl's last FSDP checkpoint into a Hugging Face folder with the SFT
model's control-token spec, which `budgetthinker eval` takes directly.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from budgetthinker.config import load_config
from budgetthinker.errors import UserError, report_errors
from budgetthinker.outputs import publish_dir, staging_dir
from budgetthinker.pipelines.stages import Pipeline, Stage, add_pipeline_args, only_stages

DEFAULT_CONFIG = "configs/experiments/release.yaml"
CORE_BIN = ".venv/bin/budgetthinker"
SFT_BIN = ".venv-sft/bin/budgetthinker"
RL_PYTHON = ".venv-rl/bin/python"
RL_LAUNCHER = "rl/8ratio_v1.sh"
RL_EXPERIMENT = "grpo"


@dataclass
class SFTStage:
    recipe: str = "configs/sft/release.yaml"
    epochs: list[float] = field(default_factory=lambda: [2.0, 4.0])
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.epochs or any(e <= 0 for e in self.epochs):
            raise ValueError("sft.epochs must list positive epoch counts, e.g. [2.0, 4.0]")


@dataclass
class RLStage:
    recipe: str = "8ratio_v1"
    train_files: list[str] | None = None
    val_files: list[str] | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class EvalStage:
    recipe: str = "configs/eval/math500_release.yaml"
    data_dir: str = "data"
    overrides: list[str] = field(default_factory=list)


@dataclass
class ReleaseConfig:
    run_dir: str = "runs/release"
    mode: str = "8ratio"
    traces: str | None = None
    sft: SFTStage = field(default_factory=SFTStage)
    rl: RLStage = field(default_factory=RLStage)
    eval: EvalStage = field(default_factory=EvalStage)


def load(path: str, overrides: list[str]) -> ReleaseConfig:
    return load_config(ReleaseConfig, path, overrides)


def _yaml_list(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


class Release:
    """The stages of one release run; every path is relative to the repository root."""

    def __init__(self, model: str, cfg: ReleaseConfig) -> None:
        self.model, self.cfg = model, cfg
        run = Path(cfg.run_dir)
        self.prepared = run / "models" / "prepared"
        self.data_dir = run / "data" / "sft"
        self.sft_dirs = [
            run / "sft" / f"epochs_{start + 1:g}-{start + n:g}"
            for start, n in zip(_starts(cfg.sft.epochs), cfg.sft.epochs, strict=True)
        ]
        self.rl_root = run / "rl"
        self.checkpoints = self.rl_root / RL_EXPERIMENT / "checkpoints"
        self.rl_model = run / "models" / "rl"
        self.eval_dir = run / "eval"

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        stages = [
            Stage("prepare", self.prepared / "budgetthinker_spec.json",
                  [CORE_BIN, "prepare", "--base", self.model, "--mode", cfg.mode,
                   "--out", str(self.prepared)], check=self._check_model),
            Stage("sft_data", self.data_dir / f"{self._dataset()}.jsonl",
                  [CORE_BIN, "sft-data", "--model", str(self.prepared), "--traces",
                   str(cfg.traces), "--out", str(self.data_dir), "--name", self._dataset()],
                  check=self._check_traces),
        ]  # fmt: skip
        previous = self.prepared
        for i, (epochs, out) in enumerate(zip(cfg.sft.epochs, self.sft_dirs, strict=True)):
            stages.append(
                Stage(
                    f"sft_{out.name}",
                    out / "config.json",
                    [
                        SFT_BIN,
                        "sft",
                        "--config",
                        cfg.sft.recipe,
                        f"model_name_or_path={previous}",
                        f"dataset_dir={self.data_dir}",
                        f"output_dir={out}",
                        f"num_train_epochs={epochs}",
                        "budgetthinker.then=[]",
                        *cfg.sft.overrides,
                    ],
                    check=self._check_sft if i == 0 else None,
                )
            )
            previous = out
        stages += [
            Stage("grpo", self.checkpoints / "latest_checkpointed_iteration.txt",
                  ["bash", RL_LAUNCHER, *self._rl_overrides(previous)], check=self._check_rl),
            Stage("merge_rl", self.rl_model / "config.json",
                  [RL_PYTHON, "-m", "budgetthinker.pipelines.release", "merge-rl",
                   str(self.checkpoints), str(previous), str(self.rl_model)]),
            Stage("eval", self.eval_dir / "math500_release" / "summary.md",
                  [CORE_BIN, "eval", "--config", cfg.eval.recipe, f"model={self.rl_model}",
                   f"data.data_dir={cfg.eval.data_dir}", f"output_dir={self.eval_dir}",
                   "experiment=math500_release", *cfg.eval.overrides], check=self._check_eval),
        ]  # fmt: skip
        return stages

    def _dataset(self) -> str:
        from budgetthinker.sft.train import load_recipe

        lf, _ = load_recipe(self.cfg.sft.recipe, list(self.cfg.sft.overrides))
        return str(lf.get("dataset", "8ratio_SFT_below10000"))

    def _rl_overrides(self, model: Path | str) -> list[str]:
        rl = self.cfg.rl
        out = [f"actor_rollout_ref.model.path={model}", f"budgetthinker.output_dir={self.rl_root}",
               f"budgetthinker.experiment={RL_EXPERIMENT}"]  # fmt: skip
        if rl.train_files is not None:
            out.append(f"budgetthinker.data.train_files={_yaml_list(rl.train_files)}")
        if rl.val_files is not None:
            out.append(f"budgetthinker.data.val_files={_yaml_list(rl.val_files)}")
        return out + list(rl.overrides)

    # ── dry-run checks: each returns a note or raises UserError naming the fix ─────────────

    def _check_model(self) -> str:
        if self.model == "default":
            return "base: the embedded SmolLM2-135M (a CPU stand-in for the release model)"
        if not (Path(self.model).expanduser() / "config.json").is_file():
            raise UserError(f"MODEL_DIR {self.model} is not a model folder (no config.json); "
                            "pass the base model, e.g. DeepSeek-R1-Distill-Qwen-1.5B")  # fmt: skip
        return f"base model folder {self.model}"

    def _check_traces(self) -> str:
        traces = self.cfg.traces
        if not traces:
            raise UserError("no SFT traces: pass traces=PATH.jsonl (fields in docs/stages/sft.md)")
        if traces != "synthetic" and not Path(traces).is_file():
            raise UserError(f"traces file {traces} does not exist; pass traces=PATH.jsonl")
        return f"traces {traces}"

    def _check_sft(self) -> str:
        from budgetthinker.sft.train import load_recipe, runs

        lf, opts = load_recipe(self.cfg.sft.recipe,
                               [*self.cfg.sft.overrides, "budgetthinker.then=[]"])  # fmt: skip
        runs(lf, opts)
        deepspeed = lf.get("deepspeed")
        if deepspeed and not Path(deepspeed).is_file():
            raise UserError(f"the SFT recipe's deepspeed file {deepspeed} does not exist; fix "
                            f"`deepspeed:` in {self.cfg.sft.recipe}")  # fmt: skip
        epochs = " + ".join(f"{e:g}" for e in self.cfg.sft.epochs)
        return (f"{self.cfg.sft.recipe}: {lf.get('finetuning_type')} fine-tuning, {epochs} epochs, "
                f"{opts.nproc or 'all'} GPUs × batch {lf.get('per_device_train_batch_size')} × "
                f"accumulation {lf.get('gradient_accumulation_steps')}, lr "
                f"{lf.get('learning_rate')}, deepspeed {deepspeed}")  # fmt: skip

    def _check_rl(self) -> str:
        rl = self.cfg.rl
        if rl.train_files is None or rl.val_files is None:
            raise UserError(
                "no RL problems: pass rl.train_files=[…] rl.val_files=[…] (parquet "
                "or JSONL with problem/answer columns; [] = synthetic problems)"
            )
        if not Path(RL_PYTHON).is_file():
            raise UserError("the RL check needs the rl environment: bash scripts/setup_env.sh rl")
        # the SFT output does not exist yet in a dry run: check against the nearest model
        model = next((str(p) for p in [*reversed(self.sft_dirs), self.prepared]
                      if (p / "config.json").is_file()), self.model)  # fmt: skip
        cmd = [RL_PYTHON, "-m", "budgetthinker.cli", "rl", "--engine", "verl", "--config",
               rl.recipe, "--dry-run", *self._rl_overrides(model)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise UserError(f"the RL recipe fails verl's checks: {' | '.join(tail)}")
        steps = [line for line in done.stderr.splitlines() if "curriculum stream" in line]
        return f"verl accepts {rl.recipe} (schema + validate_config, model {model}); " + (
            steps[0].removeprefix("[rl] ") if steps else ""
        )

    def _check_eval(self) -> str:
        from budgetthinker.config import load_config
        from budgetthinker.evaluation.config import EvalConfig
        from budgetthinker.evaluation.datasets import load_problems

        e = self.cfg.eval
        cfg = load_config(EvalConfig, e.recipe, [f"data.data_dir={e.data_dir}", *e.overrides])
        problems = load_problems(cfg.data)
        return (
            f"{e.recipe}: {len(problems)} problems ({', '.join(cfg.data.benchmarks)}), "
            f"methods {cfg.methods}, budgets {cfg.budgets}, backend {cfg.backend}"
        )


def _starts(epochs: list[float]) -> list[float]:
    out, total = [], 0.0
    for e in epochs:
        out.append(total)
        total += e
    return out


def merge_rl(checkpoints: Path, spec_dir: Path, out: Path) -> None:
    """verl's last checkpoint (FSDP shards) → a Hugging Face folder with the control-token spec."""
    from budgetthinker.control_spec import SPEC_FILENAME

    latest = checkpoints / "latest_checkpointed_iteration.txt"
    if not latest.is_file():
        raise UserError(f"no verl checkpoint under {checkpoints}; run the grpo stage first")
    actor = checkpoints / f"global_step_{latest.read_text().strip()}" / "actor"
    with staging_dir(out.parent, out.name) as tmp:
        cmd = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
               "--local_dir", str(actor), "--target_dir", str(tmp)]  # fmt: skip
        print("[release] " + " ".join(cmd), file=sys.stderr, flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise UserError(f"verl's model merger failed on {actor}; see its log above")
        shutil.copy2(spec_dir / SPEC_FILENAME, tmp / SPEC_FILENAME)
        shutil.rmtree(out, ignore_errors=True)
        publish_dir(tmp, out)


# ── expected GPU hours for the 1.5B release (docs/stages/release.md) ───────────────────────


@dataclass(frozen=True)
class Assumptions:
    """What the GPU-hour estimate rests on; the defaults are stated in docs/stages/release.md."""

    params: float = 1.78e9  # DeepSeek-R1-Distill-Qwen-1.5B incl. untied embeddings
    sft_rows: int = 50_000  # unknown for the release data (reference note §4.3): an assumption
    sft_tokens_per_row: int = 3_000  # prompt + thinking (500–10000) + answer
    rl_problems: int = 14_470  # train_RL.parquet
    rl_epochs: int = 8
    rl_group: int = 5
    rl_mean_response: int = 3_600  # mean curriculum budget 3625, responses capped near it
    decode_tokens_per_gpu_s: float = 10_000.0  # vLLM, 1.5B, large batches, one H100
    train_flops_per_gpu_s: float = 3.0e14  # H100 bf16 at ~30 % MFU (989 TFLOP/s peak)
    eval_problems: int = 500
    eval_budgets: tuple[int, ...] = (100, 250, 500, 1000, 2000, 4000, 6000, 10000)


def gpu_hours(a: Assumptions = Assumptions()) -> list[tuple[str, float, str]]:
    """(stage, H100-hours, how) per stage: training = FLOPs / sustained FLOP/s, generation =
    tokens / decode throughput."""
    sft_tokens = a.sft_rows * a.sft_tokens_per_row
    rollouts = a.rl_problems * a.rl_epochs * a.rl_group
    rl_tokens = rollouts * a.rl_mean_response
    eval_tokens = a.eval_problems * sum(b + b // 50 for b in a.eval_budgets)
    sft = [(f"sft {e:g} epochs", 6 * a.params * sft_tokens * e / a.train_flops_per_gpu_s / 3600,
            f"6·N·tokens: {sft_tokens / 1e6:.0f}M tokens/epoch") for e in (2, 4)]  # fmt: skip
    return [
        ("prepare + sft-data", 0.0, "CPU minutes"),
        *sft,
        ("grpo rollouts", rl_tokens / a.decode_tokens_per_gpu_s / 3600,
         f"{rollouts:,} responses × {a.rl_mean_response} tokens at "
         f"{a.decode_tokens_per_gpu_s:,.0f} tok/s/GPU"),
        ("grpo training", 10 * a.params * rl_tokens / a.train_flops_per_gpu_s / 3600,
         "10·N·tokens (actor fwd+bwd 6N, old-policy and reference log-probs 2N each)"),
        ("eval math500_release", eval_tokens / a.decode_tokens_per_gpu_s / 3600,
         f"≤ {eval_tokens / 1e6:.1f}M tokens (500 × 8 budgets, to the cap)"),
    ]  # fmt: skip


def gpu_hours_table(a: Assumptions = Assumptions()) -> str:
    rows = gpu_hours(a)
    lines = ["| stage | H100-hours | how |", "|---|---|---|"]
    lines += [f"| {stage} | {hours:.1f} | {how} |" for stage, hours, how in rows]
    lines.append(f"| total | {sum(h for _, h, _ in rows):.0f} | |")
    return "\n".join(lines)


def _print_gpu_hours() -> None:
    print("\nExpected GPU hours for the 1.5B release (docs/stages/release.md):")
    print(gpu_hours_table())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge-rl"]:
        return report_errors("release_pipeline merge-rl", lambda: _merge_rl(argv[1:]))
    parser = argparse.ArgumentParser(
        prog="bash scripts/release_pipeline.sh", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "model",
        metavar="MODEL_DIR",
        help="base model folder (e.g. DeepSeek-R1-Distill-Qwen-1.5B); "
        "'default' = the embedded SmolLM2 (CPU checks)",
    )
    add_pipeline_args(parser, DEFAULT_CONFIG, "traces=T.jsonl rl.train_files=[…] eval.data_dir=D")
    args = parser.parse_intermixed_args(argv)
    return report_errors("release_pipeline", lambda: _run(args))


def _merge_rl(args: list[str]) -> int:
    if len(args) != 3:
        raise UserError(
            "usage: python -m budgetthinker.pipelines.release merge-rl CHECKPOINTS SPEC_DIR OUT"
        )
    merge_rl(Path(args[0]), Path(args[1]), Path(args[2]))
    return 0


def _run(args: argparse.Namespace) -> int:
    release = Release(args.model, load(args.config, args.overrides))
    pipeline = Pipeline(release.cfg.run_dir, release.stages())
    return pipeline.execute(args.dry_run, only_stages(args.only), after_dry_run=_print_gpu_hours)


if __name__ == "__main__":
    sys.exit(main())
