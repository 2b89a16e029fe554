"""TALE's optimal budget search (`budgetthinker tale-search`): per problem, the smallest budget in
the prompt that still gives a correct and shorter answer — the training targets of TALE-PT.

Rule `code` (default, what the original `search_budget.py` runs; reference notes A.6): vanilla
CoT first, and problems it answers wrongly are skipped. With T its output length, β starts at T;
each round asks again with β // 2 in the prompt and accepts it when the answer is correct and
shorter than the last accepted one (the vanilla answer at first); the first refusal stops the
search, which also stops when β // 2 would be 0. β* is the last accepted budget; a problem whose
first halving already fails keeps β* = T and no budgeted answer (status `no_reduction`).

Rule `paper` (Algorithms 1–2): the reference cost is that of the budgeted prompt at β0 = T (one
extra call), not of the vanilla prompt; otherwise the same halving. As printed, Algorithm 1
evaluates the same β twice after a success and returns the β of the check that failed (the first
rejected budget); we read it as intended: successive halving, returning the last feasible β.

The loop is pure logic over two functions — an answerer (prompts → texts and token counts) and a
judge (texts and golds → correct?) — so it is tested with a scripted fake and runs on any
backend. Each round is one batch over all problems still searching. Every attempt is appended to
`<out>.attempts.jsonl` as soon as its round is judged, and every finished problem to `<out>`: a
rerun replays the attempts and continues where the last run stopped, redoing nothing.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from budgetthinker.errors import UserError
from budgetthinker.evaluation.tale.prompts import add_budget, cot_prompt
from budgetthinker.outputs import atomic_json, user_path

RULES = ("code", "paper")

Answerer = Callable[[list[str]], list[tuple[str, int]]]
"""TALE prompts (before any chat rendering) → `(text, output tokens)` per prompt, in order."""
Judge = Callable[[list[tuple[str, str]]], list[tuple[bool, str | None]]]
"""`(response text, gold)` pairs → `(correct, extracted answer)` per pair, in order."""


@dataclass(frozen=True)
class SearchProblem:
    id: str
    question: str
    gold: str


@dataclass
class Attempt:
    """One answer of one problem: `kind` is `vanilla`, `reference` (paper rule, β0 = T) or
    `halving`; `budget` is None for vanilla CoT."""

    kind: str
    budget: int | None
    text: str
    tokens: int
    correct: bool
    answer: str | None = None


@dataclass
class SearchState:
    """Where the search of one problem stands; changed only by `apply`, so replaying a list of
    attempts rebuilds it exactly (resume)."""

    problem: SearchProblem
    rule: str = "code"
    status: str = "pending"  # pending → searching → searched | no_reduction | skipped
    vanilla: Attempt | None = None
    best: Attempt | None = None
    budget: int | None = None  # last accepted budget (T before any halving)
    pre_cost: int | None = None  # tokens of the last accepted answer (the reference)
    budget_list: list[int] = field(default_factory=list)
    token_list: list[int] = field(default_factory=list)
    attempts: int = 0

    @property
    def finished(self) -> bool:
        return self.status in ("searched", "no_reduction", "skipped")

    def next_query(self) -> tuple[str, int | None] | None:
        """`(kind, budget)` of the next attempt, or None when the search is over."""
        if self.finished:
            return None
        if self.vanilla is None:
            return ("vanilla", None)
        if self.rule == "paper" and self.pre_cost is None:
            return ("reference", self.budget)
        return ("halving", self.budget // 2)

    def apply(self, attempt: Attempt) -> None:
        """Take one attempt's outcome (the attempt must be what `next_query` asked for)."""
        expected = self.next_query()
        if expected != (attempt.kind, attempt.budget):
            raise ValueError(
                f"problem {self.problem.id}: attempt {(attempt.kind, attempt.budget)} does not "
                f"follow the search (expected {expected})"
            )
        self.attempts += 1
        if attempt.kind == "vanilla":
            self.vanilla = attempt
            if not attempt.correct:
                self.status = "skipped"
                return
            self.status = "searching"
            self.budget = attempt.tokens
            self.budget_list = [attempt.tokens]
            if self.rule == "code":
                self.pre_cost = attempt.tokens
            self._stop_if_exhausted()
            return
        self.token_list.append(attempt.tokens)
        if attempt.kind == "reference":
            self.pre_cost = attempt.tokens
            self._stop_if_exhausted()
            return
        if attempt.correct and attempt.tokens < self.pre_cost:
            self.best, self.budget, self.pre_cost = attempt, attempt.budget, attempt.tokens
            self.budget_list.append(attempt.budget)
            self._stop_if_exhausted()
        else:
            self._finish()

    def _stop_if_exhausted(self) -> None:
        if self.budget // 2 < 1:
            self._finish()

    def _finish(self) -> None:
        self.status = "searched" if self.best is not None else "no_reduction"

    def prompt(self, family: str) -> str:
        """The TALE prompt of the next attempt."""
        kind, budget = self.next_query()
        base = cot_prompt(self.problem.question, family)
        return base if kind == "vanilla" else add_budget(base, budget)

    def row(self, family: str) -> dict:
        """The output row of a finished problem."""
        base = cot_prompt(self.problem.question, family)
        best = self.best
        return {
            "id": self.problem.id,
            "question": self.problem.question,
            "gold": self.problem.gold,
            "status": self.status,
            "rule": self.rule,
            "prompt": base,
            "vanilla": _answer(self.vanilla),
            "budget": self.budget if self.status != "skipped" else None,
            "budget_prompt": add_budget(base, best.budget) if best is not None else None,
            "budget_answer": _answer(best),
            "budget_list": self.budget_list,
            "token_list": self.token_list,
        }


def _answer(attempt: Attempt | None) -> dict | None:
    if attempt is None:
        return None
    return {"text": attempt.text, "tokens": attempt.tokens, "answer": attempt.answer}


@dataclass
class SearchStats:
    problems: int = 0
    searched: int = 0
    no_reduction: int = 0
    skipped: int = 0
    median_budget: float | None = None  # median β* over searched problems
    vanilla_tokens: float | None = None  # mean, over searched problems
    budget_tokens: float | None = None  # mean tokens of the β* answers
    token_reduction: float | None = None  # 1 − budget_tokens / vanilla_tokens
    overall_reduction: float | None = None  # same over every problem vanilla CoT got right

    @classmethod
    def from_rows(cls, rows: Sequence[dict]) -> SearchStats:
        stats = cls(problems=len(rows))
        kept = [r for r in rows if r["status"] != "skipped"]
        searched = [r for r in kept if r["status"] == "searched"]
        stats.searched, stats.no_reduction = len(searched), len(kept) - len(searched)
        stats.skipped = len(rows) - len(kept)
        if searched:
            vanilla = [r["vanilla"]["tokens"] for r in searched]
            budgeted = [r["budget_answer"]["tokens"] for r in searched]
            stats.median_budget = statistics.median(r["budget"] for r in searched)
            stats.vanilla_tokens = statistics.mean(vanilla)
            stats.budget_tokens = statistics.mean(budgeted)
            stats.token_reduction = 1 - sum(budgeted) / sum(vanilla)
        if kept:
            best = [(r["budget_answer"] or r["vanilla"])["tokens"] for r in kept]
            stats.overall_reduction = 1 - sum(best) / sum(r["vanilla"]["tokens"] for r in kept)
        return stats

    def line(self) -> str:
        text = (
            f"searched {self.searched} · no reduction {self.no_reduction} · skipped (vanilla "
            f"CoT wrong) {self.skipped} · of {self.problems} problems"
        )
        if self.searched:
            text += (
                f" · median β* {self.median_budget:g} · tokens {self.vanilla_tokens:.1f} → "
                f"{self.budget_tokens:.1f} ({self.token_reduction:.1%} fewer on searched "
                f"problems, {self.overall_reduction:.1%} over all vanilla-correct ones)"
            )
        return text


def search(
    problems: Sequence[SearchProblem],
    answer: Answerer,
    judge: Judge,
    out: str | os.PathLike,
    *,
    family: str = "gsm8k",
    rule: str = "code",
    settings: dict | None = None,
    progress: bool = True,
) -> SearchStats:
    """Search every problem (resuming `out` if it exists); returns the stats of the whole file.

    `settings`: what produced the answers (model, backend, sampling, …), stored in the attempts
    log; a rerun with different settings is refused rather than mixing two searches.
    """
    if rule not in RULES:
        raise UserError(f"unknown search rule {rule!r}; choose one of {', '.join(RULES)}")
    cot_prompt("", family)  # the family name is checked before any work
    if len({p.id for p in problems}) != len(problems):
        raise UserError("problem ids must be unique (the search file is keyed by them)")
    out = Path(out)
    log = SearchLog(out, {"family": family, "rule": rule, **(settings or {})})
    if out.is_file():
        trim_partial_line(out)
    done_ids = {row["id"] for row in read_rows(out)} if out.is_file() else set()
    replay = log.replay()
    states = []
    for problem in problems:
        if problem.id in done_ids:
            continue
        state = SearchState(problem, rule)
        for attempt in replay.get(problem.id, []):
            state.apply(attempt)
        states.append(state)
    from tqdm import tqdm

    bar = tqdm(
        total=len(problems),
        initial=len(problems) - len(states),
        desc="tale-search",
        unit="problem",
        disable=not progress,
    )
    with bar, out.open("a", encoding="utf-8") as results:
        rounds = 0
        while True:
            _write_finished(states, results, family, bar)
            states = [s for s in states if not s.finished]
            if not states:
                break
            rounds += 1
            bar.set_postfix(round=rounds, searching=len(states))
            queries = [s.next_query() for s in states]
            outputs = answer([s.prompt(family) for s in states])
            pairs = [(text, s.problem.gold) for s, (text, _) in zip(states, outputs, strict=True)]
            grades = judge(pairs)
            attempts = [
                Attempt(kind, budget, text, tokens, correct, predicted)
                for (kind, budget), (text, tokens), (correct, predicted) in zip(
                    queries, outputs, grades, strict=True
                )
            ]
            log.append([(s.problem.id, a) for s, a in zip(states, attempts, strict=True)])
            for state, attempt in zip(states, attempts, strict=True):
                state.apply(attempt)
    return SearchStats.from_rows(read_rows(out))


def _write_finished(states: list[SearchState], results, family: str, bar) -> None:
    finished = [s for s in states if s.finished]
    for state in finished:
        results.write(json.dumps(state.row(family), ensure_ascii=False) + "\n")
    results.flush()
    os.fsync(results.fileno())
    bar.update(len(finished))


class SearchLog:
    """`<out>.attempts.jsonl`: a settings line, then one line per attempt (appended per round)."""

    def __init__(self, out: Path, settings: dict) -> None:
        self.path = out.with_name(out.name + ".attempts.jsonl")
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open(encoding="utf-8") as f:
                first = json.loads(f.readline())
            if first.get("settings") != self.settings:
                old = first.get("settings") or {}
                keys = {*old, *self.settings}
                changed = sorted(k for k in keys if old.get(k) != self.settings.get(k))
                raise UserError(
                    f"{out} was searched with different settings ({', '.join(changed)}); "
                    f"use another --out (or delete {out} and {self.path})"
                )
            trim_partial_line(self.path)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"settings": self.settings}) + "\n", encoding="utf-8")

    def append(self, attempts: list[tuple[str, Attempt]]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for problem_id, attempt in attempts:
                row = {"id": problem_id, **asdict(attempt)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def replay(self) -> dict[str, list[Attempt]]:
        """Attempts per problem id, in the order they were made (a last line cut short by a
        crash was trimmed when the log was opened: its round is simply asked again)."""
        by_id: dict[str, list[Attempt]] = {}
        with self.path.open(encoding="utf-8") as f:
            next(f)
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                by_id.setdefault(row.pop("id"), []).append(Attempt(**row))
        return by_id


def trim_partial_line(path: Path) -> None:
    """Cut a last line that a crash left unfinished (no newline), so appending starts clean."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a search file (a line cut short by a crash is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search file {path} does not exist; run budgetthinker tale-search first")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


# ---------------------------------------------------------------------------------------------
# Over a real backend, and the command line


class BackendAnswerer:
    """An `Answerer` over any backend of `budgetthinker.generation` (`backend.run` only): renders
    each TALE prompt (chat template or `compat: tale`), generates one round, and counts output
    tokens with the model's tokenizer (on `backend=openai`, the token ids the server returns).
    Each call is one batched `run`; a per-prompt sampling seed keeps sampled answers
    independent of the batch."""

    def __init__(
        self,
        backend,
        tokenizer,
        *,
        compat: Sequence[str] = (),
        max_new_tokens: int = 1024,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        self.backend, self.tokenizer, self.compat = backend, tokenizer, compat
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.seed, self.batch_size = seed, batch_size
        self.eos_ids: set[int] = set()
        for eos in (tokenizer.eos_token_id, getattr(backend, "eos_ids", None)):
            if isinstance(eos, int):
                self.eos_ids.add(eos)
            elif eos:
                self.eos_ids |= set(eos)

    def __call__(self, prompts: list[str]) -> list[tuple[str, int]]:
        from budgetthinker.evaluation.tale.prompts import render
        from budgetthinker.generation import GenRequest, sample_seed

        requests = [
            GenRequest(
                self.tokenizer.encode(
                    render(self.tokenizer, p, self.compat), add_special_tokens=False
                ),
                max_new_tokens=self.max_new_tokens,
                seed=sample_seed(self.seed, "tale-search", p),
            )
            for p in prompts
        ]
        results = self.backend.run(
            requests, temperature=self.temperature, top_p=self.top_p, batch_size=self.batch_size
        )
        outputs = []
        for result in results:
            ids = list(result.token_ids)
            if ids and ids[-1] in self.eos_ids:
                ids = ids[:-1]  # the end-of-sequence token is not part of the answer
            outputs.append((self.tokenizer.decode(ids, skip_special_tokens=True), len(ids)))
        return outputs


class GraderJudge:
    """A `Judge` with the evaluation's grader and TALE's answer format (`[[answer]]`, else its
    number rule), in worker processes with a hard deadline."""

    def __init__(self, workers: int = 2, timeout: float = 5.0) -> None:
        from budgetthinker.evaluation.grading import Grader

        self.grader = Grader(workers, timeout)

    def __call__(self, pairs: list[tuple[str, str]]) -> list[tuple[bool, str | None]]:
        grades = self.grader.grade_many([(text, gold, None, "tale") for text, gold in pairs])
        return [(g.correct, g.predicted) for g in grades]

    def close(self) -> None:
        self.grader.close()


DATA_ALIASES = {"gsm8k_zero": "dcml0714/GSM8K-Zero", "gsm8k-zero": "dcml0714/GSM8K-Zero"}
"""Short names of Hugging Face datasets TALE used (network needed)."""


def add_args(parser) -> None:
    parser.add_argument("--model", default="default", help="model folder, or 'default' (embedded)")
    parser.add_argument(
        "--data",
        required=True,
        help="benchmark: synthetic, gsm8k (with --data-dir, Qwen2.5-Math layout), gsm8k_zero "
        "(Hugging Face dcml0714/GSM8K-Zero), a JSONL file, or a Hugging Face dataset id",
    )
    parser.add_argument("--data-dir", default=None, help="folder holding <name>/<split>.jsonl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N problems")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--synthetic-n", type=int, default=16, help="synthetic problems")
    parser.add_argument("--synthetic-steps", type=int, default=1, help="synthetic operations")
    parser.add_argument(
        "--synthetic-level", choices=("normal", "easy"), default="easy",
        help="easy (default): small additions the embedded model can answer",
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True, type=user_path, help="search output (JSONL; resumed if present)"
    )
    parser.add_argument("--family", default="gsm8k", help="TALE prompt family (default gsm8k)")
    parser.add_argument("--compat", choices=("tale",), action="append", default=[],
                        help="tale: the original's plain prompt string and sampling (temperature "
                        "0.1, top-p 0.9) instead of the model's chat template")  # fmt: skip
    parser.add_argument(
        "--rule", choices=RULES, default="code",
        help="code: the original script (default); paper: Algorithms 1-2",
    )  # fmt: skip
    parser.add_argument("--backend", choices=("hf", "vllm", "openai"), default="hf")
    parser.add_argument("--endpoint", default=None, help="backend openai: http://HOST:PORT")
    parser.add_argument("--api-key-env", default=None, help="backend openai: key variable")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="cap per answer")
    parser.add_argument("--temperature", type=float, default=None, help="default 0 (greedy)")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="transformers batch")
    parser.add_argument("--grading-workers", type=int, default=2)


def load_search_problems(args) -> list[SearchProblem]:
    from budgetthinker.evaluation.datasets import DataConfig, SyntheticConfig, load_problems

    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit must be positive, got {args.limit}")
    if args.data == "synthetic":
        from budgetthinker.synthetic import synthetic_problems

        if args.synthetic_n < 1 or args.synthetic_steps < 0:
            raise UserError("--synthetic-n must be positive and --synthetic-steps at least 0")
        made = synthetic_problems(
            args.offset + (args.limit or args.synthetic_n), 0, args.synthetic_steps,
            args.synthetic_level,
        )[args.offset :]  # fmt: skip
        return [SearchProblem(p.id, p.question, p.answer) for p in made]
    name = DATA_ALIASES.get(args.data, args.data)
    try:
        cfg = DataConfig(
            benchmarks=[name], data_dir=args.data_dir, split=args.split, limit=args.limit,
            offset=args.offset,
            synthetic=SyntheticConfig(n=args.synthetic_n, steps=args.synthetic_steps),
        )  # fmt: skip
    except ValueError as e:
        raise UserError(str(e)) from None
    return [SearchProblem(p.id, p.question, p.answer) for p in load_problems(cfg)]


def run_cli(args) -> int:
    from budgetthinker.evaluation.tale.prompts import TALE_SAMPLING, family
    from budgetthinker.preparation.models import load_tokenizer, resolve_model

    family(args.family)  # before any model loads
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    tale = "tale" in args.compat
    temperature = args.temperature if args.temperature is not None else (
        TALE_SAMPLING["temperature"] if tale else 0.0)  # fmt: skip
    top_p = args.top_p if args.top_p is not None else (TALE_SAMPLING["top_p"] if tale else 1.0)
    problems = load_search_problems(args)
    model_dir = str(resolve_model(args.model))
    settings = {
        "model": args.model, "backend": args.backend, "data": args.data, "compat": args.compat,
        "max_new_tokens": args.max_new_tokens, "temperature": temperature, "top_p": top_p,
        "seed": args.seed, "synthetic": [args.synthetic_steps, args.synthetic_level],
    }  # fmt: skip
    tokenizer = load_tokenizer(model_dir)
    backend = search_backend(args, model_dir, tokenizer, problems)
    judge = GraderJudge(args.grading_workers)
    answerer = BackendAnswerer(
        backend, tokenizer, compat=args.compat, max_new_tokens=args.max_new_tokens,
        temperature=temperature, top_p=top_p, seed=args.seed, batch_size=args.batch_size,
    )  # fmt: skip
    try:
        stats = search(
            problems, answerer, judge, args.out, family=args.family, rule=args.rule,
            settings=settings,
        )  # fmt: skip
    finally:
        judge.close()
        backend.close()
    stats_path = Path(args.out).with_suffix(".stats.json")
    atomic_json(stats_path, asdict(stats))
    print(stats.line())
    print(f"wrote {args.out} (+ {stats_path.name})")
    return 0


def search_backend(args, model_dir: str, tokenizer, problems: list[SearchProblem]):
    """The backend the search generates with (the evaluation's adapters)."""
    from budgetthinker.patches.backends import check_backend, make_backend

    check_backend(args.backend, args.endpoint, cli=True)
    longest = None
    if args.backend == "vllm":
        from budgetthinker.evaluation.tale.prompts import add_budget, render

        longest = max(
            len(tokenizer.encode(render(tokenizer, add_budget(cot_prompt(p.question, args.family),
                                                              10**9), args.compat)))
            for p in problems
        ) + args.max_new_tokens  # fmt: skip
    return make_backend(
        args.backend, model_dir, seed=args.seed, max_model_len=longest, endpoint=args.endpoint,
        api_key_env=args.api_key_env,
    )

