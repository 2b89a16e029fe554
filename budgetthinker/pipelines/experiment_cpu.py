"""The CPU evidence experiment: does SFT with control tokens teach a model to keep its budget?

    python -m budgetthinker.pipelines.experiment_cpu           # what scripts/experiment_cpu.sh runs
        [--config configs/experiments/cpu_evidence.yaml] [--dry-run] [key=value …]

Stages (each a `budgetthinker` command in its environment, chained by
`budgetthinker.pipelines.stages`, so a rerun resumes at the first unfinished one):

0. `prepare` (only with `embedding_init` other than `mean`): the embedded base prepared for
   8ratio with that embedding init, the model every arm starts from (with `mean`, the embedded
   default itself);
1. `sft-traces`: synthetic traces whose thinking lengths vary several-fold (re-check rounds);
2. `sft-data` twice from those traces: arm (a) `control` (8ratio control tokens + the 8ratio tip)
   and arm (b) `plain` (the same traces and budgets, the plain budget tip, no control tokens);
3. `sft` of the embedded model for each arm with the same recipe, steps and seed;
4. `eval` of the untrained model (`control` and `withoutremaining`), arm (a) with `control` and
   arm (b) with `withoutremaining`, on held-out problems, budgets inside and outside the
   training range;
5. `report`: the evaluation's comparison report over the three runs (`comparison/`);
6. this experiment's report: per budget and model, the share that ends thinking by itself
   within B, mean |thinking − B| / B, accuracy and mean thinking; the training losses; the
   stage wall times.

Arm (a) runs first (traces, its data, its SFT, its evaluation) so that its result exists early.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from budgetthinker.config import load_config, to_dict
from budgetthinker.errors import UserError, report_errors
from budgetthinker.outputs import atomic_text, atomic_write
from budgetthinker.pipelines.stages import Pipeline, Stage, add_pipeline_args, only_stages

DEFAULT_CONFIG = "configs/experiments/cpu_evidence.yaml"
CORE_BIN = ".venv/bin/budgetthinker"
SFT_BIN = ".venv-sft/bin/budgetthinker"


@dataclass
class TracesOptions:
    n: int = 96
    seed: int = 1
    steps: int = 2
    checks: list[int] = field(default_factory=lambda: [0, 4])  # [low, high] re-check rounds

    def __post_init__(self) -> None:
        if self.n < 1 or self.steps < 1:
            raise ValueError("traces.n and traces.steps must be positive")
        if len(self.checks) != 2 or not 0 <= self.checks[0] <= self.checks[1]:
            raise ValueError(f"traces.checks must be [low, high] with 0 <= low <= high, got "
                             f"{self.checks}")  # fmt: skip


@dataclass
class SFTOptions:
    recipe: str = "configs/experiments/cpu_evidence_sft.yaml"
    max_steps: int = 24
    seed: int = 0
    overrides: list[str] = field(default_factory=list)  # more key=value for `budgetthinker sft`

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError("sft.max_steps must be at least 1")


@dataclass
class EvalOptions:
    recipe: str = "configs/experiments/cpu_evidence_eval.yaml"
    budgets: list[int] = field(default_factory=lambda: [50, 100, 200, 300, 600])
    problems: int = 10
    overrides: list[str] = field(default_factory=list)  # more key=value for `budgetthinker eval`

    def __post_init__(self) -> None:
        if self.problems < 1:
            raise ValueError("eval.problems must be at least 1")
        if not self.budgets or any(b <= 0 for b in self.budgets):
            raise ValueError("eval.budgets must list positive budgets")


@dataclass
class ExperimentConfig:
    run_dir: str = "runs/experiment_cpu"
    budget_rule: str = "v1"
    # how the new token rows of the model all three start from are initialised (`budgetthinker
    # prepare --embedding-init`): mean (the embedded default) or text
    embedding_init: str = "mean"
    traces: TracesOptions = field(default_factory=TracesOptions)
    sft: SFTOptions = field(default_factory=SFTOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)

    def __post_init__(self) -> None:
        if self.budget_rule not in ("v1", "v2"):
            raise ValueError(f"budget_rule must be v1 or v2, got {self.budget_rule!r}")
        if self.embedding_init not in ("mean", "text"):
            raise ValueError(f"embedding_init must be mean or text, got {self.embedding_init!r}")


@dataclass(frozen=True)
class Arm:
    """One trained model of the experiment: its dataset flags and the evaluation method."""

    name: str
    label: str
    data_flags: tuple[str, ...]
    method: str


ARMS = (
    Arm("control", "(a) SFT with control tokens", ("--control", "tokens"), "control"),
    Arm("plain", "(b) SFT, plain tip, no control tokens",
        ("--control", "none", "--tip", "withoutremaining"), "withoutremaining"),
)  # fmt: skip
UNTRAINED = "untrained"
UNTRAINED_METHODS = ("control", "withoutremaining")
CLOSE_ROWS = 16  # training rows per dataset for the `</think>` log-probability


def load(path: str, overrides: list[str]) -> ExperimentConfig:
    return load_config(ExperimentConfig, path, overrides)


class Experiment:
    """The stages of one configured experiment (paths relative to the repository root)."""

    def __init__(self, cfg: ExperimentConfig, core_bin: str = CORE_BIN, sft_bin: str = SFT_BIN):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.core_bin, self.sft_bin = core_bin, sft_bin
        self.traces = self.run_dir / "traces.jsonl"
        self.data_dir = self.run_dir / "data"
        # the model the untrained row evaluates and both arms start from
        self.base = "default" if cfg.embedding_init == "mean" else str(self.run_dir / "base")

    def model_dir(self, arm: Arm) -> Path:
        return self.run_dir / "models" / arm.name

    def eval_dir(self, name: str) -> Path:
        return self.run_dir / "eval" / name

    def stages(self) -> list[Stage]:
        cfg = self.cfg
        t = cfg.traces
        stages = [
            Stage(
                "traces",
                self.traces,
                [
                    self.core_bin,
                    "sft-traces",
                    "--out",
                    str(self.traces),
                    "--n",
                    str(t.n),
                    "--seed",
                    str(t.seed),
                    "--steps",
                    str(t.steps),
                    "--checks",
                    f"{t.checks[0]}:{t.checks[1]}",
                ],
            )
        ]
        if self.base != "default":
            stages.insert(0, Stage(
                "prepare",
                Path(self.base) / "config.json",
                [self.core_bin, "prepare", "--base", "default", "--mode", "8ratio", "--out",
                 self.base, "--embedding-init", cfg.embedding_init],
            ))  # fmt: skip
        control, plain = ARMS
        stages += self._arm_stages(control)
        stages.append(self._eval_stage(UNTRAINED, self.base, UNTRAINED_METHODS))
        stages += self._arm_stages(plain)
        evals = [str(self.eval_dir(n)) for n in (UNTRAINED, *(a.name for a in ARMS))]
        stages.append(
            Stage(
                "comparison",
                self.run_dir / "comparison" / "report.md",
                [self.core_bin, "report", *evals, "--out", str(self.run_dir / "comparison")],
            )
        )
        stages.append(
            Stage(
                "report",
                self.run_dir / "report.md",
                action=self.write_report,
                describe=f"(in process) write {self.run_dir}/report.md, report.csv, "
                "evidence.png from the three evaluations",
            )
        )
        return stages

    def _arm_stages(self, arm: Arm) -> list[Stage]:
        cfg = self.cfg
        data = Stage(
            f"data_{arm.name}",
            self.data_dir / f"{arm.name}.jsonl",
            [
                self.core_bin,
                "sft-data",
                "--model",
                self.base,
                "--traces",
                str(self.traces),
                "--out",
                str(self.data_dir),
                "--name",
                arm.name,
                "--budget-rule",
                cfg.budget_rule,
                *arm.data_flags,
            ],
        )
        sft = Stage(
            f"sft_{arm.name}",
            self.model_dir(arm) / "config.json",
            [self.sft_bin, "sft", "--config", cfg.sft.recipe, f"model_name_or_path={self.base}",
             f"dataset={arm.name}",
             f"dataset_dir={self.data_dir}", f"output_dir={self.model_dir(arm)}",
             f"max_steps={cfg.sft.max_steps}", f"seed={cfg.sft.seed}", *cfg.sft.overrides],
            check=lambda: self._check_sft_recipe(),
        )  # fmt: skip
        return [data, sft, self._eval_stage(arm.name, str(self.model_dir(arm)), (arm.method,))]

    def _eval_stage(self, name: str, model: str, methods: tuple[str, ...]) -> Stage:
        e = self.cfg.eval
        budgets = "[" + ",".join(str(b) for b in e.budgets) + "]"
        return Stage(
            f"eval_{name}",
            self.eval_dir(name) / "summary.md",
            [self.core_bin, "eval", "--config", e.recipe, f"model={model}",
             f"experiment={name}", f"output_dir={self.run_dir / 'eval'}",
             f"methods=[{','.join(methods)}]", f"budgets={budgets}",
             f"data.synthetic.n={e.problems}", *e.overrides],
            check=lambda: self._check_eval_recipe(),
        )  # fmt: skip

    def _check_sft_recipe(self) -> str:
        from budgetthinker.sft.train import load_recipe

        lf, opts = load_recipe(self.cfg.sft.recipe, list(self.cfg.sft.overrides))
        return (f"{self.cfg.sft.recipe}: {lf.get('finetuning_type')} fine-tuning, batch "
                f"{lf.get('per_device_train_batch_size')}, lr {lf.get('learning_rate')}, "
                f"special_token_loss={opts.special_token_loss}")  # fmt: skip

    def _check_eval_recipe(self) -> str:
        from budgetthinker.config import load_config
        from budgetthinker.evaluation.config import EvalConfig

        e = self.cfg.eval
        cfg = load_config(EvalConfig, e.recipe, [f"budgets=[{','.join(map(str, e.budgets))}]",
                                                 *e.overrides])  # fmt: skip
        return f"{e.recipe}: backend {cfg.backend}, benchmarks {cfg.data.benchmarks}"

    # ── report ──────────────────────────────────────────────────────────────────────────

    def rows(self) -> list[dict]:
        """One row per (model, budget): the experiment's table."""
        from budgetthinker.evaluation.metrics import point_metrics

        runs = [(UNTRAINED, "untrained", m) for m in UNTRAINED_METHODS]
        runs += [(arm.name, arm.label, arm.method) for arm in ARMS]
        out = []
        for name, label, method in runs:
            records = read_samples(self.eval_dir(name) / "samples.jsonl")
            by_budget = defaultdict(list)
            for r in records:
                if r["method"] == method:
                    by_budget[r["budget"]].append(r)
            for budget in sorted(by_budget):
                m = point_metrics(by_budget[budget])
                out.append({
                    "model": label, "method": method, "budget": budget, "problems": m.problems,
                    "within_budget": m.within_budget, "rel_deviation": m.mean_rel_deviation,
                    "accuracy": m.accuracy, "mean_thinking": m.mean_thinking,
                    "finished": sum(r["finished_thinking"] for r in by_budget[budget])
                    / len(by_budget[budget]),
                })  # fmt: skip
        return out

    def training_budgets(self) -> dict[str, int]:
        path = self.data_dir / "control.stats.json"
        if not path.is_file():
            return {}
        stats = json.loads(path.read_text())
        return {str(k): v for k, v in stats.get("budget_histogram", {}).items()}

    def losses(self, arm: Arm) -> list[float]:
        path = self.model_dir(arm) / "trainer_state.json"
        if not path.is_file():
            return []
        history = json.loads(path.read_text()).get("log_history", [])
        return [e["loss"] for e in history if "loss" in e]

    def close_logprobs(self, n: int = CLOSE_ROWS) -> dict[str, dict[str, float]]:
        """Per model and dataset: the mean log-probability the model gives `</think>` where the
        dataset's thinking ends (first `n` rows). Within-B needs the model to write `</think>`
        itself, so this says whether training reached that token at all, independently of
        generation (run 1 of 2026-11-29: −19 untrained, −8.8 after 24 steps, with mean init)."""
        data = {arm.name: self.data_dir / f"{arm.name}.jsonl" for arm in ARMS}
        if not all(path.is_file() for path in data.values()):
            return {}
        models = {UNTRAINED: self.base, **{arm.name: str(self.model_dir(arm)) for arm in ARMS}}
        rows = {name: read_samples(path)[:n] for name, path in data.items()}
        out = {}
        for name, model in models.items():
            if model != "default" and not (Path(model) / "config.json").is_file():
                continue
            out[name] = think_end_logprobs(model, rows)
        return out

    def write_report(self) -> None:
        rows = self.rows()
        if not rows:
            raise UserError(f"no evaluation results under {self.run_dir / 'eval'}; run the "
                            "evaluation stages first")  # fmt: skip
        text = render_report(self, rows)
        atomic_text(self.run_dir / "report.csv", rows_csv(rows))
        plot(rows, self.run_dir / "evidence.png", self.training_budgets())
        atomic_text(self.run_dir / "report.md", text)
        print(text)


def think_end_logprobs(model: str, datasets: dict[str, list[dict]]) -> dict[str, float]:
    """Mean log p(`</think>`) at the position where each row's thinking ends (teacher-forced on
    the row's own prompt, rendered by the chat template, and answer), per dataset."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from budgetthinker.control_spec import load_spec
    from budgetthinker.preparation.models import resolve_model
    from budgetthinker.prompts import chat_prompt

    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    end = load_spec(path).think_end_id
    result = {}
    for name, rows in datasets.items():
        values = []
        for row in rows:
            prompt = chat_prompt(tokenizer, row["instruction"])
            ids = tokenizer.encode(prompt + row["output"], add_special_tokens=False)
            if end not in ids:
                continue
            at = ids.index(end)
            with torch.no_grad():
                logits = lm(torch.tensor([ids[:at]])).logits[0, -1].float()
            values.append(logits.log_softmax(-1)[end].item())
        if values:
            result[name] = sum(values) / len(values)
    return result


def read_samples(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a torn last line of a killed run: the evaluation redoes it
    return records


def rows_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def table(rows: list[dict]) -> str:
    lines = ["| budget | model | method | within B | \\|t−B\\|/B | accuracy | think μ | "
             "finished | n |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["budget"], r["model"], r["method"])):
        lines.append(
            f"| {r['budget']} | {r['model']} | {r['method']} | {r['within_budget']:.2f} | "
            f"{r['rel_deviation']:.2f} | {r['accuracy']:.2f} | {r['mean_thinking']:.0f} | "
            f"{r['finished']:.2f} | {r['problems']} |"
        )
    return "\n".join(lines)


def render_report(exp: Experiment, rows: list[dict]) -> str:
    cfg = exp.cfg
    budgets = exp.training_budgets()
    timings = Pipeline(exp.run_dir, exp.stages()).timings()
    parts = [
        "# CPU evidence: control tokens and budget adherence (embedded SmolLM2-135M)",
        "",
        "Regenerate: `bash scripts/experiment_cpu.sh` (recipe `configs/experiments/"
        "cpu_evidence.yaml`).",
        "",
        "Settings: " + json.dumps(to_dict(cfg)),
        "",
        f"Training budgets (arm (a) rows per budget): {budgets or 'unknown'}",
        "",
        "within B: share of outputs whose thinking ended by itself (`</think>` written by the "
        "model) within B tokens; |t−B|/B: mean relative distance of the thinking length from B; "
        "finished: share that closed thinking at all. The evaluation's comparison report over the "
        "same runs: `comparison/report.md`.",
        "",
        table(rows),
        "",
        "## Training loss (first → last logged step)",
        "",
    ]
    for arm in ARMS:
        losses = exp.losses(arm)
        if losses:
            parts.append(f"- {arm.label}: {losses[0]:.3f} → {losses[-1]:.3f} "
                         f"({len(losses)} steps; last 5: "
                         f"{', '.join(f'{x:.3f}' for x in losses[-5:])})")  # fmt: skip
    close = exp.close_logprobs()
    if close:
        labels = {UNTRAINED: "untrained", **{arm.name: arm.label for arm in ARMS}}
        parts += ["", "## Does the model write `</think>` where training ends thinking?", "",
                  f"Mean log p(`</think>`) at the end of the thinking of the first {CLOSE_ROWS} "
                  "training rows of each dataset, teacher-forced (0 = certain; within B needs "
                  "the model to write it itself).", "",
                  "| model | on (a) control data | on (b) plain data |",
                  "|---|---|---|"]  # fmt: skip
        for name, values in close.items():
            cells = [f"{values[a.name]:.2f}" if a.name in values else "–" for a in ARMS]
            parts.append(f"| {labels[name]} | {' | '.join(cells)} |")
    parts += ["", "## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    parts += [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()]
    parts.append(f"| total | {sum(timings.values()):.0f} |")
    return "\n".join(parts) + "\n"


def plot(rows: list[dict], path: Path, training_budgets: dict[str, int]) -> None:
    """Within-B share, |t−B|/B, mean thinking (against the line thinking = B) and accuracy
    against the budget, one line per model; the budgets the SFT data covered are shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    series = defaultdict(list)
    for r in rows:
        series[(r["model"], r["method"])].append(r)
    budgets = sorted({r["budget"] for r in rows})
    panels = (("within_budget", "share ending thinking within B"),
              ("rel_deviation", "mean |thinking − B| / B"),
              ("mean_thinking", "mean thinking tokens (dashed: = B)"),
              ("accuracy", "accuracy"))  # fmt: skip
    axes[2].plot(budgets, budgets, ls="--", color="0.5", lw=1)
    for ax, (key, title) in zip(axes, panels, strict=True):
        if training_budgets:
            trained = [int(b) for b in training_budgets]
            ax.axvspan(min(trained), max(trained), color="0.9", label="SFT budgets")
        for (model, method), points in sorted(series.items()):
            points.sort(key=lambda r: r["budget"])
            ax.plot([p["budget"] for p in points], [p[key] for p in points], marker="o",
                    label=f"{model} · {method}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("budget B (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m budgetthinker.pipelines.experiment_cpu", description=__doc__.splitlines()[0]
    )
    add_pipeline_args(parser, DEFAULT_CONFIG, "sft.max_steps=2 eval.problems=2")
    args = parser.parse_intermixed_args(argv)
    return report_errors("experiment_cpu", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    exp = Experiment(load(args.config, args.overrides))
    return Pipeline(exp.run_dir, exp.stages()).execute(args.dry_run, only_stages(args.only))


if __name__ == "__main__":
    sys.exit(main())
