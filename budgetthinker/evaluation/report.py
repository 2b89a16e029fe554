"""Summary table (printed, Markdown, CSV) and plots of an evaluation's results.

One row per (model, backend, method, benchmark, budget) sweep point, and per run when the
records come from several runs (`budgetthinker report`: records carry a `run` label, so two runs
of the same model with other settings are never pooled into one row); one line per method (and
backend, when several were run) in each plot: accuracy vs budget, thinking tokens vs budget with
the y = x line, and adherence (share within budget) vs budget. Below the table, s1's Control,
Scaling and Performance per sweep.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from budgetthinker.evaluation.metrics import PointMetrics, point_metrics, sweep_metrics
from budgetthinker.outputs import atomic_text, atomic_write

POINT_FIELDS = ("model", "backend", "method", "two_stage", "benchmark", "budget")
TABLE_COLUMNS = (
    ("method", "method"),
    ("benchmark", "benchmark"),
    ("budget", "budget"),
    ("accuracy", "acc"),
    ("accuracy_all", "acc(all)"),
    ("mean_thinking", "think μ"),
    ("median_thinking", "think med"),
    ("mean_total", "total μ"),
    ("within_budget", "within B"),
    ("mean_rel_deviation", "∣t−B∣/B"),
    ("overshoot", "overshoot"),
    ("never_finished", "never ended"),
    ("accuracy_within_budget", "acc(t≤B)"),
    ("tokens_per_second", "tok/s"),
    ("wall_seconds", "wall s"),
)


def safe_name(name: str) -> str:
    """A benchmark or model name as a file name (a Hugging Face id `org/name` → `org_name`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "benchmark"


def point_fields(records: Sequence[dict]) -> tuple[str, ...]:
    """What keys a sweep point: `POINT_FIELDS`, led by `run` when the records carry one."""
    return ("run", *POINT_FIELDS) if any("run" in r for r in records) else POINT_FIELDS


def summarize(records: Sequence[dict]) -> list[tuple[dict, PointMetrics]]:
    fields = point_fields(records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[tuple(record.get(k) for k in fields)].append(record)
    return [
        (dict(zip(fields, key, strict=True)), point_metrics(groups[key]))
        for key in sorted(groups, key=lambda k: (*map(str, k[:-1]), k[-1]))
    ]


def method_label(point: dict, several_backends: bool, several_models: bool) -> str:
    label = point["method"] + (" +2stage" if point["two_stage"] else "")
    if several_backends:
        label += f" [{point['backend']}]"
    if point.get("run") is not None:
        label = f"{point['run']}: {label}"
    elif several_models:
        label = f"{Path(str(point['model'])).name}: {label}"
    return label


def plot_text(text: str) -> str:
    """A label as matplotlib prints it literally: `$` would start mathtext (and an unbalanced
    or invalid `$…$` in a method label is a parse error)."""
    return str(text).replace("$", r"\$")


def write_summary(out_dir: Path, records: Sequence[dict]) -> str:
    """Write summary.md, summary.csv and plots/*.png; return the Markdown table ('' when there
    are no records). `comparison.write_report` adds the comparison report and prints."""
    rows = summarize(records)
    if not rows:
        return ""
    several_backends = len({p["backend"] for p, _ in rows}) > 1
    several_models = len({p["model"] for p, _ in rows}) > 1
    header = [name for _, name in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point, m in rows:
        values = {
            **point,
            **asdict(m),
            "method": method_label(point, several_backends, several_models),
        }
        lines.append("| " + " | ".join(_fmt(values[k]) for k, _ in TABLE_COLUMNS) + " |")
    sweeps = _sweeps(rows)
    lines += ["", "| sweep | points | Control | Scaling (acc pts / 1k tokens) | Performance |",
              "|---|---|---|---|---|"]  # fmt: skip
    for label, s in sweeps:
        scaling = "—" if s.scaling is None else f"{s.scaling:.2f}"
        lines.append(
            f"| {label} | {s.points} | {s.control:.0%} | {scaling} | {s.performance:.1%} |"
        )
    table = "\n".join(lines) + "\n"
    atomic_text(out_dir / "summary.md", table)
    atomic_text(out_dir / "summary.csv", _csv(rows))
    _plots(out_dir / "plots", rows, several_backends, several_models)
    return table


def _sweeps(rows):
    fields = tuple(k for k in rows[0][0] if k != "budget") if rows else ()
    by_sweep: dict[tuple, list] = defaultdict(list)
    for point, m in rows:
        key = tuple(point[k] for k in fields)
        by_sweep[key].append((point["budget"], m))
    several_backends = len({p["backend"] for p, _ in rows}) > 1
    several_models = len({p["model"] for p, _ in rows}) > 1
    out = []
    for key, points in by_sweep.items():
        point = dict(zip(fields, key, strict=True))
        label = f"{method_label(point, several_backends, several_models)} · {point['benchmark']}"
        out.append((label, sweep_metrics(points)))
    return out


def _fmt(value) -> str:
    if value is None:
        return "—"  # unknown: the model has no thinking delimiters
    if isinstance(value, float):
        if value <= 1.0 and value >= 0.0 and not value.is_integer():
            return f"{value:.3f}"
        return f"{value:.1f}"
    return str(value)


def _csv(rows) -> str:
    buffer = io.StringIO()
    metric_names = list(asdict(rows[0][1]))
    writer = csv.writer(buffer)
    fields = list(rows[0][0])
    writer.writerow([*fields, *metric_names])
    for point, m in rows:
        writer.writerow([*(point[k] for k in fields), *asdict(m).values()])
    return buffer.getvalue()


def _plots(folder: Path, rows, several_backends: bool, several_models: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for benchmark in sorted({p["benchmark"] for p, _ in rows}):
        lines: dict[str, list[tuple[int, PointMetrics]]] = defaultdict(list)
        for point, m in rows:
            if point["benchmark"] == benchmark:
                lines[method_label(point, several_backends, several_models)].append(
                    (point["budget"], m)
                )
        panels = (
            ("accuracy", "accuracy (first sample)", "accuracy"),
            ("mean_thinking", "mean thinking tokens", "thinking_tokens"),
            ("within_budget", "share ending thinking within B", "adherence"),
        )
        for attr, ylabel, stem in panels:
            fig, ax = plt.subplots(figsize=(6, 4))
            budgets_all = sorted({b for pts in lines.values() for b, _ in pts})
            for label, pts in sorted(lines.items()):
                pts.sort(key=lambda x: x[0])
                values = [_nan(getattr(m, attr)) for _, m in pts]
                ax.plot([b for b, _ in pts], values, "o-", label=plot_text(label))
            if attr == "mean_thinking":
                ax.plot(budgets_all, budgets_all, "k--", lw=1, label="y = x (budget)")
            if len(budgets_all) > 1 and budgets_all[-1] / budgets_all[0] >= 8:
                ax.set_xscale("log")
            ax.set_xlabel("thinking budget B (tokens)")
            ax.set_ylabel(ylabel)
            ax.set_title(plot_text(f"{benchmark}: {ylabel} vs budget"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            name = f"{safe_name(benchmark)}_{stem}.png"
            with atomic_write(folder / name, "wb") as f:
                fig.savefig(f, format="png", dpi=110)
            plt.close(fig)


def _nan(value) -> float:
    return float("nan") if value is None else value

