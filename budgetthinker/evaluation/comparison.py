"""The comparison report of one or several runs: methods side by side.

`report.md` (with PNG plots under `report_plots/`) and `report.html` (one self-contained file:
plots inlined as data URIs) hold, per benchmark: accuracy against mean thinking tokens, one
curve per method with the Pareto front marked (points no other point beats on both accuracy and
tokens); adherence per sweep point (share ending thinking within B, mean |t−B|/B, overshoot,
share that never ended thinking, accuracy counting only answers whose thinking fit in B);
s1's Control / Scaling / Performance per sweep; tokens/s. `budgetthinker eval` writes it for its
run; `budgetthinker report RUN_DIR… --out DIR` builds it from several finished runs (different
models, e.g. a base and a trained one).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from budgetthinker.errors import UserError
from budgetthinker.evaluation.report import (
    _sweeps,
    method_label,
    plot_text,
    safe_name,
    summarize,
    write_summary,
)
from budgetthinker.outputs import atomic_text, atomic_write, user_path

ADHERENCE = (
    ("within_budget", "within B", "{:.0%}"),
    ("mean_rel_deviation", "∣t−B∣/B", "{:.2f}"),
    ("overshoot", "overshoot", "{}"),
    ("never_finished", "never ended", "{:.0%}"),
    ("accuracy", "acc", "{:.1%}"),
    ("accuracy_within_budget", "acc (t ≤ B)", "{:.1%}"),
    ("mean_thinking", "think μ", "{:.1f}"),
    ("tokens_per_second", "tok/s", "{:.1f}"),
)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (tokens, accuracy) points that no other point beats: at most as many tokens
    and at least the accuracy, better in one."""
    front = []
    for i, (t, a) in enumerate(points):
        dominated = any(
            (t2 <= t and a2 >= a) and (t2 < t or a2 > a)
            for j, (t2, a2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _cell(value, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def write_report(out_dir: Path, records: Sequence[dict]) -> str:
    """Everything a sweep's folder gets: the summary (summary.md, summary.csv, plots/) and the
    comparison report (report.md, report.html); print and return the summary table."""
    table = write_summary(out_dir, records)
    if not table:
        return ""
    write_comparison(out_dir, records)
    print(table)
    differ = sum(bool(r["verifier_correct"]) != bool(r.get("correct"))
                 for r in records if "verifier_correct" in r)  # fmt: skip
    if differ:
        print(f"[eval] the benchmark's own verifier disagrees with our grader on {differ} "
              "samples: see report.md (Verifier agreement)")  # fmt: skip
    print(
        f"[eval] results in {out_dir}: samples.jsonl, summary.md, summary.csv, plots/, "
        "report.md, report.html"
    )
    return table


def write_comparison(
    out_dir: Path, records: Sequence[dict], preface: Sequence[str] = ()
) -> Path | None:
    """Write report.md, report_plots/*.png and report.html into `out_dir`; the Markdown path.
    `preface`: Markdown lines after the title (the runs compared, for `budgetthinker report`)."""
    rows = summarize(records)
    if not rows:
        return None
    several_backends = len({p["backend"] for p, _ in rows}) > 1
    several_models = len({p["model"] for p, _ in rows}) > 1

    def label(point):
        return method_label(point, several_backends, several_models)

    plots = out_dir / "report_plots"
    plots.mkdir(parents=True, exist_ok=True)
    md = ["# Budget-method comparison", "", *preface]
    no_delims = sorted({label(p) for p, m in rows if m.within_budget is None})
    if no_delims:
        md += [f"No thinking delimiters known for: {', '.join(no_delims)} (within B and never "
               "ended are unknown there; set `delimiters` in the recipe).", ""]  # fmt: skip
    images: list[Path] = []
    for benchmark in sorted({p["benchmark"] for p, _ in rows}):
        bench_rows = [(p, m) for p, m in rows if p["benchmark"] == benchmark]
        image = plots / f"{safe_name(benchmark)}_accuracy_vs_tokens.png"
        _pareto_plot(image, benchmark, bench_rows, label)
        images.append(image)
        md += [f"## {benchmark}", "", f"![accuracy vs thinking tokens]({plots.name}/{image.name})",
               "", "| method | budget | " + " | ".join(h for _, h, _ in ADHERENCE) + " |",
               "|---|---|" + "---|" * len(ADHERENCE)]  # fmt: skip
        for point, m in bench_rows:
            cells = [_cell(getattr(m, attr), fmt) for attr, _, fmt in ADHERENCE]
            md.append(f"| {label(point)} | {point['budget']} | " + " | ".join(cells) + " |")
        md.append("")
    md += _estimate_section(records)
    md += verifier_section(records)
    md += ["## s1 metrics per sweep", "",
           "| sweep | points | Control | Scaling (acc pts / 1k tokens) | Performance |",
           "|---|---|---|---|---|"]  # fmt: skip
    for name, s in _sweeps(rows):
        scaling = "—" if s.scaling is None else f"{s.scaling:.2f}"
        md.append(f"| {name} | {s.points} | {s.control:.0%} | {scaling} | {s.performance:.1%} |")
    text = "\n".join(md) + "\n"
    path = out_dir / "report.md"
    atomic_text(path, text)
    atomic_text(out_dir / "report.html", _html(text, images))
    return path


def verifier_section(records: Sequence[dict]) -> list[str]:
    """Benchmarks with their own verifier (reasoning-gym's `score_answer`): how often it agrees
    with our grader per sweep point, and every sample where they disagree (up to 20), so a
    grader or extraction problem shows instead of hiding in the accuracy."""
    checked = [r for r in records if "verifier_correct" in r]
    if not checked:
        return []
    def method(r: dict) -> str:  # runs compared by `budgetthinker report` are never pooled
        return f"{r['run']}: {r.get('method')}" if "run" in r else str(r.get("method"))

    groups: dict[tuple, list[dict]] = {}
    for r in checked:
        groups.setdefault((method(r), r.get("benchmark"), r.get("budget")), []).append(r)
    differ = [r for r in checked if bool(r["verifier_correct"]) != bool(r.get("correct"))]
    md = ["## Verifier agreement (reasoning-gym's score_answer vs our grader)", "",
          f"{len(differ)} of {len(checked)} samples disagree." if differ else
          f"All {len(checked)} samples agree.", "",
          "| method | benchmark | budget | n | acc (grader) | acc (verifier) | disagree |",
          "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (label, benchmark, budget), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ours = sum(bool(r.get("correct")) for r in rs) / len(rs)
        theirs = sum(bool(r["verifier_correct"]) for r in rs) / len(rs)
        n_differ = sum(bool(r["verifier_correct"]) != bool(r.get("correct")) for r in rs)
        md.append(f"| {label} | {benchmark} | {budget} | {len(rs)} | {ours:.1%} | "
                  f"{theirs:.1%} | {n_differ} |")  # fmt: skip
    if differ:
        md += ["", "| method | benchmark | budget | problem | gold | predicted | grader | "
               "verifier score |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in differ[:20]:
            md.append(f"| {method(r)} | {r.get('benchmark')} | {r.get('budget')} | "
                      f"{r.get('problem_id')} | {_md(r.get('gold'))} | {_md(r.get('predicted'))} "
                      f"| {'correct' if r.get('correct') else 'wrong'} | "
                      f"{r['verifier_score']:.2f} |")  # fmt: skip
        if len(differ) > 20:
            md.append(f"\n(and {len(differ) - 20} more in samples.jsonl)")
    return [*md, ""]


def _md(value) -> str:
    """A value as one Markdown table cell."""
    return "—" if value is None else str(value).replace("|", "\\|").replace("\n", " ")[:60]


def _estimate_section(records: Sequence[dict]) -> list[str]:
    """TALE-EP-style methods choose their own budget: how often the estimate could be used (the
    model wrote a parsable `[[N]]` in range) and what budget was actually used, per sweep point.
    Their accuracy-vs-tokens points above already sit at their own mean thinking tokens."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if "tale_estimate_status" in r:
            key = (r.get("method"), r.get("benchmark"), r.get("budget"))
            groups.setdefault(key, []).append(r)
    if not groups:
        return []
    md = ["## Budget estimates (TALE-EP)", "",
          "| method | benchmark | budget | n | estimate in range | mean budget used | "
          "mean thinking tokens |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (method, benchmark, budget), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        in_range = sum(bool(r.get("tale_estimate_in_range")) for r in rs) / len(rs)
        used = [r["tale_budget"] for r in rs if r.get("tale_budget") is not None]
        used_cell = f"{sum(used) / len(used):.0f}" if used else "—"
        think = sum(r.get("thinking_tokens", 0) for r in rs) / len(rs)
        md.append(f"| {method} | {benchmark} | {budget} | {len(rs)} | {in_range:.0%} | "
                  f"{used_cell} | {think:.1f} |")  # fmt: skip
    return [*md, ""]


def _pareto_plot(image: Path, benchmark: str, rows, label) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for point, m in rows:
        curves[label(point)].append((m.mean_thinking, m.accuracy))
    fig, ax = plt.subplots(figsize=(6, 4))
    everything = []
    for name, pts in sorted(curves.items()):
        pts.sort()
        ax.plot([t for t, _ in pts], [a for _, a in pts], "o-", label=plot_text(name))
        everything += pts
    front = sorted(everything[i] for i in pareto_front(everything))
    ax.plot([t for t, _ in front], [a for _, a in front], "k*--", ms=11, lw=1,
            label="Pareto front", zorder=5)  # fmt: skip
    ax.set_xlabel("mean thinking tokens")
    ax.set_ylabel("accuracy (first sample)")
    ax.set_title(plot_text(f"{benchmark}: accuracy vs thinking tokens"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(image, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _html(markdown: str, images: list[Path]) -> str:
    """The Markdown report as one HTML file: tables as tables, images inlined."""
    inline = {
        f"{p.parent.name}/{p.name}": base64.b64encode(p.read_bytes()).decode() for p in images
    }
    body: list[str] = []
    table: list[list[str]] = []

    def flush():
        if table:
            head, *rest = table
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                        + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>"
                                                             for c in r) + "</tr>" for r in rest)
                        + "</table>")  # fmt: skip
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-") for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            body.append(f'<img alt="plot" src="data:image/png;base64,{inline[src]}">')
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child{text-align:left}")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Budget-method comparison"
            f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def load_records(run_dir: Path) -> list[dict]:
    """The finished samples of one run folder (its `samples.jsonl`)."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished evaluation run (no samples.jsonl)")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill: not a finished sample
    return records


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=user_path, help="evaluation run folders")
    parser.add_argument(
        "--out", type=user_path, default=Path("runs/report"),
        help="folder for report.md, report.html and plots (default: runs/report)",
    )  # fmt: skip


def run_labels(runs: Sequence[Path]) -> list[str]:
    """One label per run folder: its name, or as many trailing path parts as it takes to tell
    runs of the same name apart (`a/default`, `b/default`). A folder given twice is refused."""
    resolved = [Path(os.path.abspath(r)) for r in runs]
    seen: dict[Path, Path] = {}
    for given, path in zip(runs, resolved, strict=True):
        if path in seen:
            raise UserError(f"run folder {given} is given twice (as {seen[path]}); give it once")
        seen[path] = given
    labels = []
    for path in resolved:
        depth = 1
        while depth < len(path.parts):
            label = "/".join(path.parts[-depth:])
            if sum("/".join(q.parts[-depth:]) == label for q in resolved) == 1:
                break
            depth += 1
        labels.append("/".join(path.parts[-depth:]))
    return labels


IGNORED_SETTINGS = ("experiment", "output_dir", "resolved_model_dir")


def differing_settings(runs: Sequence[Path]) -> dict[str, list]:
    """The recorded settings (each run's config.yaml, flattened to dotted keys) that are not the
    same in every run: key → one value per run (None where a run does not record it)."""
    import yaml

    flat: list[dict] = []
    for run in runs:
        try:
            data = yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        flat.append(_flatten(data if isinstance(data, dict) else {}))
    keys = sorted({k for f in flat for k in f} - set(IGNORED_SETTINGS))
    return {
        k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1
    }


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _runs_section(labels: list[str], runs: Sequence[Path], differ: dict[str, list]) -> list[str]:
    keys = list(differ)[:8]
    md = ["## Runs", "", "Rows are keyed by run: runs are never pooled into one row.", ""]
    md += ["| run | folder | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for i, (label, run) in enumerate(zip(labels, runs, strict=True)):
        cells = [json.dumps(differ[k][i], ensure_ascii=False) for k in keys]
        md.append(f"| {label} | {run} | " + " | ".join(cells) + " |")
    if len(differ) > len(keys):
        md.append(f"\n(and {len(differ) - len(keys)} more differing settings)")
    return [*md, ""]


def run_report(args: argparse.Namespace) -> int:
    labels = run_labels(args.runs)
    records = []
    for run, label in zip(args.runs, labels, strict=True):
        records += [{**r, "run": label} for r in load_records(run)]
    if not records:
        raise UserError("the runs given hold no finished samples")
    differ = differing_settings(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    path = write_comparison(args.out, records, _runs_section(labels, args.runs, differ))
    names = [str(r) for r in args.runs]
    if any(label != Path(str(name)).name for label, name in zip(labels, names, strict=True)):
        print(f"[report] runs of the same name, labelled by their paths: {', '.join(labels)}")
    if differ:
        print(f"[report] the runs differ in {', '.join(differ)}; one row per run and point")
    print(f"[report] {path} and {args.out / 'report.html'}")
    return 0
