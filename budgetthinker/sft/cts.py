"""CTS (conditional token selection): compress the thinking of reasoning traces before SFT.

    budgetthinker cts --ref-model DIR --traces IN.jsonl --out OUT.jsonl --ratio 0.6 [--ratio 0.8 …]

Every thinking token `x_i` gets a score from a reference causal LM R (docs/spec.md §7.4,
reference note tale_cts.md B.2):

    conditional       s_i = log p_R(x_i | answer, "\\n\\n", x̃_<i) − log p_R(x_i | "\\n\\n", x̃_<i)
    self_information  s_i = − log p_R(x_i | "\\n\\n", x̃_<i)     (LLMLingua/TokenSkip ablation)

where `x̃_<i` is the *kept* thinking before `x_i`. The thinking is processed in windows of
`iterative_size` (1800) reference tokens, left to right: window w is scored in one forward pass
whose context is the answer (conditional pass only) and the tokens kept from windows < w, then its
tokens are selected. The thinking is cut at `max_thinking` (5000) reference tokens first, as CTS.

Selection, default (no `--compat`): the ratio α means kept thinking tokens ÷ thinking tokens.
Window w = [a, b) keeps its top `round(α·b) − round(α·a)` tokens by score (ties: the earlier
token), so the kept fraction is α within half a token overall and one token per window.

Selection, `--compat cts`: exactly what CTS's LLMLingua call keeps, artefacts included (the
answer and the thinking tokenized as one text, no context before the unconditional pass, the
answer's length in the target, the shifted keep mask, the window arithmetic that leaves the last
partial window and most of a thinking shorter than one window untouched): see
`budgetthinker.sft.cts_compat`, where it is written out, and docs/stages/cts.md.

Several ratios from one pass: window 0 is scored with no kept prefix, so its scores are the same
for every ratio and are computed once. Window w ≥ 1 is scored given the tokens kept so far, which
depend on the ratio, so each ratio needs its own passes from window 1 on (identical kept prefixes
are still scored once). A thinking that fits in one window — most traces under 1800 tokens —
therefore costs one pass for all ratios; a longer one costs 1 + (windows − 1)·ratios passes.

The output text is the original text: kept token i contributes `thinking[end_{i−1}:end_i]`
(character offsets from the reference tokenizer), never a decode of ids, so nothing drifts
through re-tokenisation and a character split over two byte tokens is never cut in half
(`--compat cts`: the decode of the kept ids, as CTS writes it).

Output: one JSONL per ratio (`OUT` for one ratio, `OUT_r60.jsonl`, `OUT_r80.jsonl`, … for
several), each row a trace `sft-data` reads as it is (`question`, `response` with the compressed
`<think>…</think>`, `answer`, `id`, and a `cts` record with the settings that made it). Rows are
appended when a trace is finished for every ratio, so a killed run resumes where it stopped (ids
already in a file are skipped; a half-written last line is cut off); a rerun whose settings
differ from those recorded in a file's rows is refused, and every file a run writes is locked
(`.<name>.lock`) so two runs cannot interleave rows. The stats file (`OUT.stats.json` without
the `.jsonl`) is rebuilt from the output files at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from budgetthinker.config import check_compat
from budgetthinker.control_spec import THINK_END
from budgetthinker.errors import UserError
from budgetthinker.outputs import FolderLock, atomic_json, removed_on_failure
from budgetthinker.sft.data import (
    ANSWER_KEYS,
    DROP_REASONS,
    RESPONSE_KEYS,
    THINKING_KEYS,
    Trace,
    parse_trace,
    read_jsonl,
)

if TYPE_CHECKING:  # torch is imported where it is used: `budgetthinker --help` stays fast
    import torch

    from budgetthinker.sft.cts_compat import LinguaRun

ITERATIVE_SIZE = 1800
MAX_THINKING = 5000
SEPARATOR = "\n\n"
SCORERS = ("conditional", "self_information")
COMPATS = ("cts",)
CONDITIONS = ("final", "answer")
LONG_POLICIES = ("cut", "drop")

CTS_DROP_REASONS = {
    **DROP_REASONS,
    "too_long": "thinking longer than --max-thinking reference tokens (with --long drop)",
    "unencodable": "the reference tokenizer cannot encode the text (unknown tokens)",
    "duplicate_id": "an earlier row has the same id (ids name rows in the resumable output)",
    "cts_refused": "--compat cts: LLMLingua raises on this trace, so CTS's script would stop "
    "(the answer + '\\n\\n' shares a token with the thinking, or a one-token thinking at τ < 1)",
    "beyond_positions": "--compat cts: answer and thinking exceed the reference model's positions "
    "(LLMLingua would compress its KV cache; not reproduced)",
}


@dataclass(frozen=True)
class CTSOptions:
    """Everything that decides what `cts` computes (the flags of the command)."""

    ratios: tuple[float, ...]
    scorer: str = "conditional"
    compat: tuple[str, ...] = ()
    condition: str = "final"
    iterative_size: int = ITERATIVE_SIZE
    max_thinking: int = MAX_THINKING
    long: str = "cut"
    save_scores: bool = False

    def __post_init__(self):
        if not self.ratios:
            raise UserError("give at least one --ratio, e.g. --ratio 0.6")
        for r in self.ratios:
            if not (isinstance(r, (int, float)) and 0 < r <= 1):
                raise UserError(
                    f"--ratio must be in (0, 1] (the fraction of thinking tokens kept), got {r}"
                )
        for name, value, allowed in (
            ("--scorer", self.scorer, SCORERS),
            ("--condition", self.condition, CONDITIONS),
            ("--long", self.long, LONG_POLICIES),
        ):
            if value not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        object.__setattr__(self, "compat", tuple(check_compat(self.compat, COMPATS, "--compat")))
        if "cts" in self.compat and self.long == "drop":
            raise UserError(
                "--long drop has no counterpart in CTS (its script cuts the thinking at "
                "--max-thinking tokens); leave out --long drop or --compat cts"
            )
        if self.iterative_size <= 0 or self.max_thinking <= 0:
            raise UserError("--iterative-size and --max-thinking must be positive")


# ── selection (pure functions of scores) ─────────────────────────────────────────────────────


def half_up(x: float) -> int:
    """Round half up (Python's round() goes to even, which would make quotas uneven)."""
    return math.floor(x + 0.5)


def window_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """`[(a, b), …]` windows of `size` tokens covering `range(n)` (one empty window for n = 0)."""
    return [(a, min(a + size, n)) for a in range(0, n, size)] or [(0, 0)]


def select_quota(scores: torch.Tensor, a: int, b: int, fraction: float) -> list[int]:
    """Default rule: window [a, b) keeps its top `round(f·b) − round(f·a)` tokens by score
    (ties: earlier token first); returns absolute indices, ascending."""
    quota = half_up(fraction * b) - half_up(fraction * a)
    if quota <= 0:
        return []
    order = sorted(range(b - a), key=lambda j: (-float(scores[j]), j))
    return sorted(a + j for j in order[:quota])


# ── traces → jobs ────────────────────────────────────────────────────────────────────────────


def final_part(row: dict) -> str:
    """The text after the thinking (what the answer condition and the output's tail use)."""
    if any(isinstance(row.get(k), str) and row.get(k) for k in THINKING_KEYS):
        response = next((row[k] for k in RESPONSE_KEYS if isinstance(row.get(k), str)), "")
        return response.partition(THINK_END)[2] if THINK_END in response else response
    for key in (*RESPONSE_KEYS, *ANSWER_KEYS):
        value = row.get(key)
        if isinstance(value, str) and THINK_END in value:
            return value.partition(THINK_END)[2]
    return ""


@dataclass
class Job:
    """One trace being compressed: its reference tokens, windows and per-ratio progress."""

    key: str
    trace: Trace
    thinking: str  # the (possibly cut) thinking text
    tail: str  # the final part written after </think>
    ids: list[int]
    ends: list[int]
    condition: list[int]
    original_tokens: int
    cut: bool
    windows: list[tuple[int, int]]
    runs: list[RatioRun] = field(default_factory=list)
    # --compat cts: the joint tokenization (answer + "\n\n" + thinking; `ids` = joint[start:]),
    # LLMLingua's windows, and the lengths its target uses (L(""), L(answer), L(thinking) with
    # special tokens, the thinking's own token count without)
    joint: list[int] = field(default_factory=list)
    start: int = 0
    lingua_windows: list[int] = field(default_factory=list)
    lengths: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class RatioRun:
    """Progress of one ratio on one job: kept indices and the score each token was decided on."""

    ratio: float
    fraction: float
    window: int = 0
    kept: list[int] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)
    text: str | None = None  # --compat cts: the decoded kept ids (what CTS writes)
    lingua: LinguaRun | None = None
    failed: bool = False  # --compat cts: LLMLingua raises here


def encodable(text: str, encoding, unk_id: int | None) -> bool:
    """False when the tokenizer lost something: an unknown-token id, or a visible character
    that no token's offsets cover (tokenizers that silently drop what they cannot encode)."""
    if unk_id is not None and unk_id in encoding.ids:
        return False
    covered = bytearray(len(text))
    for start, end in encoding.offsets:
        covered[start:end] = b"\x01" * (end - start)
    return all(covered[i] or text[i].isspace() for i in range(len(text)))


class JobBuilder:
    """Raw rows → Jobs for one reference tokenizer; drops are counted by reason."""

    def __init__(self, tokenizer, opts: CTSOptions, max_positions: int | None = None):
        self.tokenizer, self.opts = tokenizer, opts
        self.max_positions = max_positions  # the reference model's (--compat cts needs them)
        self.backend = tokenizer.backend_tokenizer
        self.unk_id = tokenizer.unk_token_id
        self.dropped: Counter = Counter()
        self.cut = 0

    def build(self, raw: object, key: str) -> Job | None:
        trace = parse_trace(raw)
        if isinstance(trace, str):
            self.dropped[trace] += 1
            return None
        tail = final_part(raw).strip()  # parse_trace accepted it, so raw is a dict
        condition_text = (
            tail if self.opts.condition == "final" and tail else f"\\boxed{{{trace.answer}}}"
        )
        if "cts" in self.opts.compat:
            return self._build_compat(key, trace, tail, condition_text)
        enc = self.backend.encode(trace.thinking, add_special_tokens=False)
        cond = self.backend.encode(condition_text, add_special_tokens=False)
        if not (
            encodable(trace.thinking, enc, self.unk_id)
            and encodable(condition_text, cond, self.unk_id)
        ):
            self.dropped["unencodable"] += 1
            return None
        ids, ends = list(enc.ids), [end for _, end in enc.offsets]
        original, cut, thinking = len(ids), False, trace.thinking
        if original > self.opts.max_thinking:
            if self.opts.long == "drop":
                self.dropped["too_long"] += 1
                return None
            ids, ends = ids[: self.opts.max_thinking], ends[: self.opts.max_thinking]
            thinking, cut = thinking[: ends[-1]], True
            self.cut += 1
        return Job(
            key=key,
            trace=trace,
            thinking=thinking,
            tail=tail or f"**Final Answer**\\boxed{{{trace.answer}}}",
            ids=ids,
            ends=ends,
            condition=list(cond.ids) if self.opts.scorer == "conditional" else [],
            original_tokens=original,
            cut=cut,
            windows=window_bounds(len(ids), self.opts.iterative_size),
        )

    def _build_compat(self, key: str, trace: Trace, tail: str, condition: str) -> Job | None:
        """The job as CTS's script hands it to LLMLingua (budgetthinker.sft.cts_compat)."""
        from budgetthinker.sft.cts_compat import (
            TraceRefused,
            fit_prefix,
            prefix_length,
            window_sizes,
        )

        tok, opts = self.tokenizer, self.opts
        own = tok(trace.thinking, add_special_tokens=False).input_ids
        original, cut = len(own), len(own) > opts.max_thinking  # (--long drop is refused)
        thinking = tok.decode(own[: opts.max_thinking])  # CTS: decode(encode(thinking)[:5000])
        conditional = opts.scorer == "conditional"
        prefix, start = "", 0
        try:
            if conditional:
                fitted = fit_prefix(tok, condition, opts.iterative_size, self.max_positions)
                prefix = fitted + SEPARATOR
                start = prefix_length(tok, prefix, thinking)
        except TraceRefused:
            self.dropped["cts_refused"] += 1
            return None
        text = prefix + thinking
        enc = self.backend.encode(text, add_special_tokens=False)
        if not encodable(text, enc, self.unk_id):
            self.dropped["unencodable"] += 1
            return None
        joint = list(enc.ids)
        if self.max_positions is not None and len(joint) > self.max_positions:
            self.dropped["beyond_positions"] += 1
            return None
        self.cut += cut
        own_len = len(tok(thinking, add_special_tokens=False).input_ids)
        empty = len(tok("").input_ids)  # lengths with special tokens, as LLMLingua counts them
        question = len(tok(condition).input_ids) if conditional else empty
        return Job(
            key=key,
            trace=trace,
            thinking=thinking,
            tail=tail or f"**Final Answer**\\boxed{{{trace.answer}}}",
            ids=joint[start:],
            ends=[max(0, end - len(prefix)) for _, end in enc.offsets[start:]],
            condition=joint[:start],
            original_tokens=original,
            cut=cut,
            windows=[],
            joint=joint,
            start=start,
            lingua_windows=window_sizes(own_len, opts.iterative_size),
            lengths=(empty, question, len(tok(thinking).input_ids), own_len),
        )


# ── the windowed compression ─────────────────────────────────────────────────────────────────


class Compressor:
    """Runs the windowed rule for a batch of jobs and all ratios, batching forward passes."""

    def __init__(self, scorer, opts: CTSOptions, reuse_cache: bool = True):
        self.scorer, self.opts = scorer, opts
        # window w continues from the KV cache of window w − 1 (where the model's cache allows)
        self.reuse_cache = reuse_cache and getattr(scorer, "can_continue", False)
        tokenizer = scorer.tokenizer
        self.prefix = scorer.special_prefix
        self.separator = list(tokenizer(SEPARATOR, add_special_tokens=False).input_ids)
        if not self.prefix + self.separator:  # the first token needs something to follow
            bos = tokenizer.bos_token_id
            start = bos if bos is not None else tokenizer.eos_token_id
            if start is None:
                raise UserError(
                    "the reference tokenizer encodes '\\n\\n' to nothing and has no BOS or EOS "
                    "token, so the first thinking token cannot be scored; use another model"
                )
            self.prefix = [start]

    def _contexts(self, job: Job) -> list[list[int]]:
        """What the scored tokens follow: the unconditional pass's context, then (conditional
        scorer) the conditional one's."""
        plain = self.prefix + self.separator
        if self.opts.scorer == "conditional":
            return [plain, self.prefix + job.condition + self.separator]
        return [plain]

    def _combine(self, lps: list[torch.Tensor]) -> torch.Tensor:
        """Scores from the passes' log-probabilities (in `_contexts` order)."""
        return lps[1] - lps[0] if self.opts.scorer == "conditional" else -lps[0]

    def _score(self, requests: list[tuple[Job, tuple[int, ...], int, int]]) -> list[torch.Tensor]:
        """Scores of (kept prefix + thinking[a:ext]) for each (job, prefix, a, ext)."""
        pairs, width = [], 0
        for job, prefix, a, ext in requests:
            targets = [job.ids[i] for i in prefix] + job.ids[a:ext]
            contexts = self._contexts(job)
            width = len(contexts)
            pairs.extend((context, targets) for context in contexts)
        lps = self.scorer.score(pairs)
        return [self._combine(lps[k : k + width]) for k in range(0, len(lps), width)]

    def _continue_windows(self, jobs: list[Job]) -> None:
        """Windows 1, 2, … of every (job, ratio), in order, each pass continuing from the KV
        cache of the same ratio's previous pass: the context and the tokens kept before window
        w − 1 are not encoded again, only those kept from window w − 1 and window w itself (and
        only window w's tokens go through the output layer). Equal kept prefixes are scored once
        per job. One sequence per forward pass, so at most two caches (conditional and
        unconditional) are alive at a time."""
        for job in jobs:
            if len(job.windows) < 2:
                continue
            contexts = self._contexts(job)
            seen: dict[tuple, torch.Tensor] = {}
            for run in job.runs:
                caches = [None] * len(contexts)
                while run.window < len(job.windows):
                    a, b = job.windows[run.window]
                    key = (tuple(run.kept), a)
                    if key not in seen:
                        body = [job.ids[i] for i in run.kept] + job.ids[a:b]
                        lps = []
                        for k, context in enumerate(contexts):
                            lp, caches[k] = self.scorer.score_continuing(
                                context + body, b - a, caches[k]
                            )
                            lps.append(lp)
                        seen[key] = self._combine(lps)
                    self._decide(job, run, seen[key])

    def _decide(self, job: Job, run: RatioRun, window) -> None:
        a, b = job.windows[run.window]
        run.kept.extend(select_quota(window, a, b, run.fraction))
        run.scores.update({a + j: float(window[j]) for j in range(b - a)})
        run.window += 1

    def compress(self, jobs: list[Job]) -> None:
        """Fill every job's runs (one per ratio) with the kept indices."""
        if "cts" in self.opts.compat:
            self._compress_compat(jobs)
            return
        for job in jobs:
            job.runs = [RatioRun(r, r) for r in self.opts.ratios]
        # window 0 has no kept prefix: its scores are shared by all ratios
        first = [(job, (), 0, job.windows[0][1]) for job in jobs]
        for job, scores in zip(jobs, self._score(first), strict=True):
            for run in job.runs:
                self._decide(job, run, scores)
        if self.reuse_cache:
            self._continue_windows(jobs)
            return
        # windows 1, 2, …: each (job, ratio) given its own kept prefix; equal prefixes once
        while True:
            todo = [(job, run) for job in jobs for run in job.runs if run.window < len(job.windows)]
            if not todo:
                return
            keys = {}
            for job, run in todo:
                a, b = job.windows[run.window]
                keys.setdefault((id(job), tuple(run.kept), a), (job, tuple(run.kept), a, b))
            scored = dict(zip(keys, self._score(list(keys.values())), strict=True))
            for job, run in todo:
                a, _ = job.windows[run.window]
                scores = scored[(id(job), tuple(run.kept), a)]
                self._decide(job, run, scores[len(run.kept) :])

    def _compress_compat(self, jobs: list[Job]) -> None:
        """--compat cts: LLMLingua's procedure per (job, ratio), every step's forward passes
        batched over all of them; equal passes (all of step 0, equal prefixes) are run once."""
        from budgetthinker.sft.cts_compat import LinguaRun, TraceRefused, lingua_fraction

        conditional = self.opts.scorer == "conditional"
        live = []
        for job in jobs:
            job.runs = []
            for ratio in self.opts.ratios:
                run = RatioRun(ratio, lingua_fraction(ratio, *job.lengths))
                run.lingua = LinguaRun(
                    job.joint,
                    job.start,
                    job.lingua_windows,
                    run.fraction,
                    self.opts.iterative_size,
                    conditional,
                )
                job.runs.append(run)
                live.append(run)
        while live:
            unique: dict[tuple, tuple[list[int], list[int]]] = {}
            asked = []
            for run in live:
                keys = []
                for context, targets in run.lingua.requests():
                    key = (tuple(context), tuple(targets))
                    unique.setdefault(key, (context, targets))
                    keys.append(key)
                asked.append(keys)
            scored = dict(zip(unique, self.scorer.score(list(unique.values())), strict=True))
            for run, keys in zip(live, asked, strict=True):
                try:
                    run.lingua.advance([scored[k] for k in keys])
                except TraceRefused:
                    run.failed = True
            live = [run for run in live if not (run.failed or run.lingua.done)]
        decode = self.scorer.tokenizer.decode
        for job in jobs:
            for run in job.runs:
                if run.failed:
                    continue
                run.kept = run.lingua.kept()
                run.scores = dict(run.lingua.decided)
                text = decode([job.ids[i] for i in run.kept])
                run.text = text.replace("<s> ", "").replace("<s>", "")


def compressed_text(job: Job, kept: list[int]) -> str:
    """Kept tokens' original character spans, concatenated (token i: [end_{i−1}, end_i))."""
    return "".join(job.thinking[job.ends[i - 1] if i else 0 : job.ends[i]] for i in kept)


def output_row(job: Job, run: RatioRun, opts: CTSOptions, settings: dict | None = None) -> dict:
    """The trace in `sft-data`'s input format, with its compressed thinking and a `cts` record
    (`settings`: what made it, checked when a later run appends to the same file)."""
    text = compressed_text(job, run.kept) if run.text is None else run.text
    text = text.strip()
    row = {
        "id": job.key,
        "question": job.trace.question,
        "response": f"<think>\n{text}\n{THINK_END}\n{job.tail}",
        "answer": job.trace.answer,
        "cts": {
            "ratio": run.ratio,
            "keep_fraction": round(run.fraction, 6),
            "scorer": opts.scorer,
            "compat": list(opts.compat),
            "thinking_tokens": job.original_tokens,
            "scored_tokens": len(job.ids),
            "kept_tokens": len(run.kept),
            "windows": len(job.windows),
            "cut": job.cut,
        },
    }
    if run.lingua is not None:  # --compat cts: the windows LLMLingua lists and those it compressed
        row["cts"]["windows"] = len(job.lingua_windows)
        row["cts"]["windows_compressed"] = run.lingua.step
    if settings is not None:
        row["cts"]["settings"] = settings
    if opts.save_scores:  # the score each token was decided on (None: kept without a decision)
        scores = [run.scores.get(i) for i in range(len(job.ids))]
        row["cts"]["scores"] = [None if x is None else round(x, 6) for x in scores]
        row["cts"]["kept"] = run.kept
    return row


# ── files: resumable outputs and stats ──────────────────────────────────────────────────────


def ratio_label(ratio: float) -> str:
    """0.6 → "60", 0.655 → "65.5": the suffix of the per-ratio output file."""
    return f"{ratio * 100:.6g}"


def output_paths(out: str | os.PathLike, ratios: Iterable[float]) -> dict[float, Path]:
    """One file per ratio: OUT itself for one ratio, else OUT_r<percent><suffix>."""
    out, ratios = Path(out), list(ratios)
    if len(ratios) == 1:
        return {ratios[0]: out}
    suffix = out.suffix or ".jsonl"
    return {r: out.with_name(f"{out.stem}_r{ratio_label(r)}{suffix}") for r in ratios}


def stats_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.stats.json")


def settings_change(old: object, new: dict) -> str | None:
    """What differs between the settings recorded in a row and this run's ("key old → new",
    …), or None when they are the same."""
    if not isinstance(old, dict):
        return "no settings recorded (written by an older budgetthinker or another program)"
    keys = sorted({*old, *new})
    changed = [f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(changed) or None


class AppendOnlyJsonl:
    """An output file that only grows by whole lines. Reading it collects the ids already
    written and, given this run's `settings` and `ratio`, refuses rows made with other ones
    (nothing is changed then); the first write cuts off a half-written last line (a killed run)
    and appends from there."""

    def __init__(self, path: Path, settings: dict | None = None, ratio: float | None = None):
        self.path = path
        self.done: set[str] = set()
        self.file = None
        if not path.is_file():
            return
        data = path.read_bytes()
        whole = data.rfind(b"\n") + 1
        expected = None if settings is None else {**settings, "ratio": ratio}
        for n, line in enumerate(data[:whole].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rid = str(row["id"])
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f"{path} line {n} is not a cts output row; use another --out, or delete "
                    f"{path} to redo it"
                ) from None
            if expected is not None:
                rec = row.get("cts") if isinstance(row.get("cts"), dict) else {}
                old = rec.get("settings")
                change = settings_change(
                    {**old, "ratio": rec.get("ratio")} if isinstance(old, dict) else old,
                    expected,
                )
                if change:
                    raise UserError(
                        f"{path} holds rows made with other settings ({change}); rerun with "
                        f"the same settings to resume, or use another --out (or delete {path})"
                    )
            self.done.add(rid)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            with self.path.open("r+b") as f:
                whole = f.read().rfind(b"\n") + 1
                if whole != f.tell():
                    f.truncate(whole)
        self.file = self.path.open("a", encoding="utf-8")

    def write(self, row: dict) -> None:
        if self.file is None:
            self._open()
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.done.add(row["id"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def ratio_stats(path: Path) -> dict:
    """Tokens before/after and the effective ratio, from the `cts` records of one output file."""
    traces = before = scored = kept = cut = 0
    fractions = 0.0
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)["cts"]
            traces += 1
            before += rec["thinking_tokens"]
            scored += rec["scored_tokens"]
            kept += rec["kept_tokens"]
            cut += bool(rec["cut"])
            fractions += rec["keep_fraction"]
    return {
        "file": path.name,
        "traces": traces,
        "thinking_tokens_before": before,
        "thinking_tokens_scored": scored,
        "thinking_tokens_after": kept,
        "effective_ratio": round(kept / scored, 4) if scored else None,
        "kept_of_original": round(kept / before, 4) if before else None,
        "mean_keep_fraction": round(fractions / traces, 4) if traces else None,
        "traces_cut": cut,
    }


def _keyed_rows(rows: Iterable[object]) -> Iterator[tuple[str, object]]:
    """(id, row): the row's own `id`, else its position (`row-<n>`), stable across runs."""
    for n, row in enumerate(rows):
        rid = row.get("id") if isinstance(row, dict) else None
        yield (str(rid) if rid not in (None, "") else f"row-{n}"), row


def run_settings(ref_model: str | os.PathLike, opts: CTSOptions, dtype: str) -> dict:
    """What decides a row's content besides its trace and ratio (recorded in every row)."""
    return {
        "ref_model": str(Path(ref_model).expanduser().resolve()),
        "scorer": opts.scorer,
        "compat": list(opts.compat),
        "condition": opts.condition,
        "iterative_size": opts.iterative_size,
        "max_thinking": opts.max_thinking,
        "long": opts.long,
        "dtype": dtype,
        "save_scores": opts.save_scores,
    }


def locked_outputs(paths: Iterable[Path]) -> contextlib.ExitStack:
    """One lock per file a run writes (`.<name>.lock` next to it): a second run that would
    write any of them is refused with one line naming the holder."""
    stack = contextlib.ExitStack()
    try:
        for path in sorted(set(paths)):
            lock = FolderLock(
                path.parent,
                f"cts output {path}",
                name=f".{path.name}.lock",
                hint="wait for it to finish, or use another --out",
            )
            stack.enter_context(lock)
    except BaseException:
        stack.close()
        raise
    return stack


def compress_file(
    ref_model: str | os.PathLike,
    traces: str | os.PathLike,
    out: str | os.PathLike,
    opts: CTSOptions,
    device: str = "auto",
    dtype: str = "auto",
    batch_tokens: int = 16384,
    chunk: int = 32,
    progress: bool = True,
) -> dict:
    """The whole job: score, select, append rows per ratio, write the stats; returns them.

    Checked before the model loads, so a refused run changes nothing: the inputs, the lock on
    every output file, and the settings recorded in rows already there."""
    from budgetthinker.sft.cts_scoring import check_model_dir, resolve_dtype

    if chunk <= 0:
        raise UserError(f"--chunk must be positive, got {chunk}")
    if not Path(traces).is_file():
        raise UserError(f"traces file {traces} does not exist")
    check_model_dir(ref_model)
    torch_dtype = resolve_dtype(device, dtype)
    settings = run_settings(ref_model, opts, str(torch_dtype).removeprefix("torch."))
    out = Path(out)
    paths = output_paths(out, opts.ratios)
    with removed_on_failure(out.parent), contextlib.ExitStack() as stack:
        out.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(locked_outputs([*paths.values(), stats_path(out)]))
        writers = {r: AppendOnlyJsonl(p, settings, r) for r, p in paths.items()}
        for w in writers.values():
            stack.callback(w.close)
        return _compress(
            ref_model, traces, out, opts, writers, settings, device, torch_dtype, batch_tokens,
            chunk, progress,
        )  # fmt: skip


def _compress(
    ref_model, traces, out, opts, writers, settings, device, torch_dtype, batch_tokens, chunk,
    progress,
) -> dict:  # fmt: skip
    from tqdm import tqdm

    from budgetthinker.sft.cts_scoring import TokenScorer

    rows = read_jsonl(traces)
    scorer = TokenScorer(ref_model, device, torch_dtype, batch_tokens)
    builder = JobBuilder(scorer.tokenizer, opts, scorer.max_positions)
    compressor = Compressor(scorer, opts)
    read = resumed = scored_traces = scored_tokens = 0
    start = time.perf_counter()
    bar = tqdm(unit="trace", desc="cts", disable=not progress)

    def flush(jobs: list[Job]) -> None:
        nonlocal scored_traces, scored_tokens
        if not jobs:
            return
        compressor.compress(jobs)
        for job in jobs:
            for run in job.runs:
                if not run.failed and job.key not in writers[run.ratio].done:
                    writers[run.ratio].write(output_row(job, run, opts, settings))
            if any(run.failed for run in job.runs):
                builder.dropped["cts_refused"] += 1
            else:
                scored_traces += 1
                scored_tokens += len(job.ids)
        bar.update(len(jobs))

    try:
        pending: list[Job] = []
        seen: set[str] = set()
        for key, raw in _keyed_rows(rows):
            read += 1
            if key in seen:
                builder.dropped["duplicate_id"] += 1
                bar.update(1)
                continue
            seen.add(key)
            if all(key in w.done for w in writers.values()):
                resumed += 1
                bar.update(1)
                continue
            job = builder.build(raw, key)
            if job is None:
                bar.update(1)
                continue
            pending.append(job)
            if len(pending) >= chunk:
                flush(pending)
                pending = []
        flush(pending)
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    seconds = time.perf_counter() - start
    model = scorer.stats
    report = {
        "ref_model": str(ref_model),
        "traces": str(traces),
        "options": settings,
        "read": read,
        "dropped": dict(sorted(builder.dropped.items())),
        "dropped_total": sum(builder.dropped.values()),
        "cut_this_run": builder.cut,
        "ratios": {str(r): ratio_stats(w.path) for r, w in writers.items()},
        "this_run": {
            "traces_scored": scored_traces,
            "traces_skipped_as_done": resumed,
            "seconds": round(seconds, 2),
            "thinking_tokens_scored": scored_tokens,
            "thinking_tokens_per_second": round(scored_tokens / seconds, 1) if seconds else None,
            "model_tokens_per_second": (
                round(model.tokens / model.seconds, 1) if model.seconds else None
            ),
            "forward_passes": model.forwards,
            "forward_seconds": round(model.seconds, 2),
            "forward_cpu_seconds": round(model.cpu_seconds, 2),
            "device": str(scorer.device),
        },
    }
    path = stats_path(out)
    atomic_json(path, report)
    if scored_traces + resumed == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in report["dropped"].items()) or "empty input"
        raise UserError(
            f"no trace was compressed ({read} read; dropped {reasons}); see the accepted fields "
            "in docs/stages/sft.md and docs/stages/cts.md"
        )
    return report


def summary(report: dict) -> str:
    """Human-readable lines for the CLI."""
    run = report["this_run"]
    lines = [
        f"read {report['read']} · scored {run['traces_scored']} · already done "
        f"{run['traces_skipped_as_done']} · dropped {report['dropped_total']} · "
        f"{run['thinking_tokens_per_second']} thinking tokens/s on {run['device']}"
    ]
    lines += [
        f"  dropped {n}: {k} ({CTS_DROP_REASONS.get(k, k)})" for k, n in report["dropped"].items()
    ]
    for ratio, s in report["ratios"].items():
        lines.append(
            f"  ratio {ratio}: {s['traces']} traces · thinking tokens {s['thinking_tokens_scored']}"
            f" → {s['thinking_tokens_after']} (effective {s['effective_ratio']}) → {s['file']}"
        )
    return "\n".join(lines)


# ── command line (registered as `cts` in budgetthinker.cli.COMMANDS) ────────────────────────


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--ratio must be a number in (0, 1], got {text!r}") from None


def add_cts_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ref-model",
        required=True,
        help="reference causal LM folder that scores the tokens, or 'default' (embedded SmolLM2)",
    )
    parser.add_argument("--traces", required=True, help="traces JSONL (the fields sft-data reads)")
    parser.add_argument(
        "--out", required=True, help="output JSONL (several ratios: OUT_r60.jsonl, …)"
    )
    parser.add_argument(
        "--ratio",
        action="append",
        required=True,
        help="kept fraction of thinking tokens, in (0, 1]; repeat for several (one pass shared)",
    )
    parser.add_argument("--scorer", choices=SCORERS, default="conditional")
    parser.add_argument(
        "--compat",
        choices=COMPATS,
        action="append",
        default=[],
        help="cts: the tokens CTS's LLMLingua call keeps, artefacts included (docs/stages/cts.md)",
    )
    parser.add_argument(
        "--condition",
        choices=CONDITIONS,
        default="final",
        help="final: the text after </think> is the answer conditioned on; answer: \\boxed{…}",
    )
    parser.add_argument("--iterative-size", type=int, default=ITERATIVE_SIZE)
    parser.add_argument(
        "--max-thinking", type=int, default=MAX_THINKING, help="reference tokens (CTS: 5000)"
    )
    parser.add_argument(
        "--long", choices=LONG_POLICIES, default="cut", help="longer thinking: cut (CTS) or drop"
    )
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument(
        "--batch-tokens", type=int, default=16384, help="padded tokens per forward pass"
    )
    parser.add_argument("--chunk", type=int, default=32, help="traces compressed together")
    parser.add_argument(
        "--save-scores", action="store_true", help="also write every token's score and kept ids"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cts(args: argparse.Namespace) -> int:
    from budgetthinker.preparation.embedded_model import DEFAULT, default_base_dir

    opts = CTSOptions(
        ratios=tuple(dict.fromkeys(_ratio(r) for r in args.ratio)),
        scorer=args.scorer,
        compat=args.compat,
        condition=args.condition,
        iterative_size=args.iterative_size,
        max_thinking=args.max_thinking,
        long=args.long,
        save_scores=args.save_scores,
    )
    ref = default_base_dir() if args.ref_model == DEFAULT else args.ref_model
    report = compress_file(
        ref,
        args.traces,
        args.out,
        opts,
        device=args.device,
        dtype=args.dtype,
        batch_tokens=args.batch_tokens,
        chunk=args.chunk,
        progress=not args.no_progress,
    )
    print(summary(report))
    print(f"stats: {stats_path(args.out)}")
    return 0
