"""The one math grader: answer extraction and equivalence, shared by evaluation and the RL reward.

* `extract_answer` takes the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) of a response;
  for GSM8K a final `#### N` line is accepted too. It is a single linear scan, safe on huge or
  malformed text.
* `is_equivalent` decides whether a predicted answer equals the gold one: a string-normalised
  exact match first (fast path), then math-verify (`parse` + `verify`), with both answers wrapped
  in `\\boxed{}` so LaTeX and plain numbers parse alike. It never raises; a check that runs past
  its time limit counts as wrong.
* `grade` = extract + equivalence, and is what the RL reward reuses; `grade_many` grades a list in
  worker processes with a hard per-item deadline, so an answer that hangs the grader (even inside
  C code, where signals cannot reach) only costs that item.

In front of math-verify, two rules decide cases it gets wrong or that depend on the antlr4
runtime: numbers with base subscripts compare by value (`4210_{6}` ≠ `4210_{5}`; math-verify drops
the base), and `N%` equals N and N/100 (math-verify's own rule, but with antlr4 4.9.3 — verl's
hydra pin — latex2sympy cannot parse `\\%` at all). math-verify parses in `first_match` mode (see
`_parse`), so an answer it cannot parse is compared as text instead of by some fragment of it.

Time limits: math-verify's own timeouts use `signal.alarm` with whole seconds, one per parse or
comparison. This module instead switches them off and puts one `SIGALRM` interval timer (float
seconds) around the whole check. Signals work only in the main thread: off the main thread the
check runs without a time limit; use `grade_many` (worker processes) there.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from multiprocessing.connection import wait
from typing import Any

from budgetthinker.errors import UserError

logger = logging.getLogger(__name__)

BENCHMARKS = ("math500", "aime24", "amc23", "gsm8k", "minerva_math", "olympiadbench")
"""Benchmarks whose raw rows `gold_answer` knows; any other name reads the `answer` field."""

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textrm|textbf|textit|mathrm|mbox)\s*\{([^{}]*)\}")
# `\text{5 cm}` → `5\text{ cm}`, so math-verify strips the unit as it does for `5\text{ cm}`.
_TEXT_NUMBER_UNIT = re.compile(
    r"^\s*\\(?:text|textrm|mbox|mathrm)\s*\{\s*([-+]?\d[\d,]*(?:\.\d+)?)\s*([A-Za-z][^{}]*)\}\s*$"
)
_NOISE = re.compile(r"\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\displaystyle|\\[!,;: ]|\$|\s+")
_PY_FRACTION = re.compile(r"(\d)\./")  # `-1./3` (Python float style) → `-1/3`
_NUMBER = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)"  # 1,000.5 but not 1,2
_PLAIN_NUMBER = re.compile(rf"^\s*({_NUMBER})\s*$")
_PERCENT = re.compile(rf"^\s*({_NUMBER})\s*(?:\\?%|\\text\{{\s*\\?%\s*\}}|percent)\s*$")
_BASE_NUMBER = re.compile(r"^(\d[0-9A-Z]*)_\{?(\d+)\}?$")  # 4210_{5}, 1A3_{12}
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


class _CheckTimeout(BaseException):
    """Raised by the interval timer; a BaseException so that library `except Exception` blocks
    (math-verify, sympy) cannot swallow it."""


@dataclass
class GradeResult:
    """Outcome of grading one response.

    Args:
        predicted (`str` or `None`): the extracted answer, `None` when the response has none.
        correct (`bool`): whether it is equivalent to the gold answer.
        timed_out (`bool`, *optional*, defaults to `False`): the check ran past its time limit
            (or its worker had to be killed) and was counted as wrong.
    """

    predicted: str | None
    correct: bool
    timed_out: bool = False


# ---------------------------------------------------------------------------------------------
# Extraction


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` in `text`, or `None` if there is none.

    Braces nest; `\\{` and `\\}` do not count. `\\boxed 5` (no braces) gives the token after the
    space. An unclosed last box (a truncated answer) gives `None`. Linear time.

    >>> extract_boxed(r"so $x = \\boxed{\\frac{1}{2}}$ and \\boxed{\\{1, 2\\}}.")
    '\\\\{1, 2\\\\}'
    """
    if not isinstance(text, str):
        return None
    # Last occurrence of each command before the current cut; each one is searched again only
    # when it is consumed, so the scan stays linear even with many look-alikes (\boxedfoo).
    found = {cmd: text.rfind(cmd) for cmd in _BOX_COMMANDS}
    while True:
        cmd = max(found, key=found.__getitem__)
        start = found[cmd]
        if start < 0:
            return None
        i = start + len(cmd)
        if i < len(text) and text[i].isalpha():  # another command, e.g. \boxedtext
            found[cmd] = text.rfind(cmd, 0, start)
            continue
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            return _braced(text, i)
        j = i  # `\boxed 5`: the token that follows, up to a space, `$` or `}`
        while j < len(text) and not text[j].isspace() and text[j] not in "$}":
            j += 1
        return text[i:j].rstrip(".,;") or None


def _braced(text: str, open_at: int) -> str | None:
    """Text between the brace at `open_at` and its matching close, or None if unclosed."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # an escaped character (\{, \}, \\) never opens or closes
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i].strip()
        i += 1
    return None


def extract_answer(text: str, benchmark: str | None = None) -> str | None:
    """The final answer in a model response: the last boxed content; for GSM8K, a final
    `#### N` line when nothing is boxed. `None` when there is no answer.

    >>> extract_answer("... so she earns $18.\\n#### 18", "gsm8k")
    '18'
    """
    boxed = extract_boxed(text)
    if boxed is not None or not isinstance(text, str):
        return boxed
    if benchmark is not None and benchmark.lower() == "gsm8k":
        return _hash_answer(text)
    return None


def _hash_answer(text: str) -> str | None:
    """The text after the last `####` up to the end of its line, cleaned (GSM8K style)."""
    at = text.rfind("####")
    if at < 0:
        return None
    line_end = text.find("\n", at)
    answer = text[at + 4 : line_end if line_end >= 0 else len(text)].strip()
    answer = answer.lstrip("$").rstrip(".").strip()
    if _THOUSANDS.match(answer):
        answer = answer.replace(",", "")
    return answer or None


def gold_answer(row: dict[str, Any], benchmark: str) -> str:
    """Ground-truth answer of one raw benchmark row (Qwen2.5-Math layout).

    math500, aime24: `answer`; amc23: `answer` (a float, 27.0 → '27'); gsm8k: the `#### N` line of
    `answer`; minerva_math: the last `\\boxed{}` of `solution`; olympiadbench: `final_answer`, a
    list joined with ', '. Any other benchmark name reads `answer`. Raises `UserError` naming the
    benchmark and the field when the row lacks it.

    >>> gold_answer({"final_answer": ["$69$", "$84$"]}, "olympiadbench")
    '69, 84'
    """
    name = benchmark.lower()
    field = {"gsm8k": "answer", "minerva_math": "solution", "olympiadbench": "final_answer"}.get(
        name, "answer"
    )
    if not isinstance(row, dict):
        raise UserError(f"a {benchmark} row must be a JSON object, got {row!r:.80}")
    value = row.get(field)
    if value is None or (isinstance(value, str | list) and not value):
        raise UserError(
            f"{benchmark} row has no {field!r} field, or it is empty (the row has: "
            f"{', '.join(sorted(row)) or 'no fields'}); the gold answer of {benchmark} is read "
            f"from {field!r}"
        )
    if name == "gsm8k":
        answer = _hash_answer(str(value))
        if answer is None:
            raise UserError(f"gsm8k row's 'answer' has no '#### N' line: {str(value)[-80:]!r}")
        return answer
    if name == "minerva_math":
        answer = extract_boxed(str(value))
        if answer is None:
            raise UserError(
                f"minerva_math row's 'solution' has no \\boxed{{}} answer: {value!r:.80}"
            )
        return answer
    if isinstance(value, list):
        return ", ".join(_strip_dollars(_number_text(v)) for v in value)
    return _strip_dollars(_number_text(value))


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        return text.split(".")[0]
    return text


def _strip_dollars(text: str) -> str:
    if len(text) >= 2 and text.startswith("$") and text.endswith("$") and "$" not in text[1:-1]:
        return text[1:-1].strip()
    return text


# ---------------------------------------------------------------------------------------------
# Equivalence


def is_equivalent(pred: str, gold: str, timeout: float = 5.0, *, fast_path: bool = True) -> bool:
    """Whether the answer `pred` equals `gold` (math-verify, with an exact-match fast path).

    Never raises for any input; a check longer than `timeout` seconds counts as not equivalent.
    `fast_path=False` skips the string match (to test that math-verify itself agrees).

    >>> is_equivalent("0.5", "\\\\frac12")
    True
    """
    return _check(pred, gold, timeout, fast_path)[0]


def grade(
    response_text: str,
    gold: str,
    benchmark: str | None = None,
    timeout: float = 5.0,
    *,
    fast_path: bool = True,
) -> GradeResult:
    """Extract the answer of a response and check it against `gold` (the RL reward's accuracy).

    >>> grade("... hence **Final Answer** \\\\boxed{2, 1}", "1, 2")
    GradeResult(predicted='2, 1', correct=True, timed_out=False)
    """
    predicted = extract_answer(response_text, benchmark)
    if predicted is None:
        return GradeResult(predicted=None, correct=False)
    correct, timed_out = _check(predicted, gold, timeout, fast_path)
    return GradeResult(predicted=predicted, correct=correct, timed_out=timed_out)


def explain(
    pred: str, gold: str, timeout: float = 5.0, *, fast_path: bool = True
) -> dict[str, Any]:
    """What the grader sees, for debugging a verdict (`budgetthinker grade --verbose`).

    Keys: `pred_normalised`/`gold_normalised` (the fast-path strings), `decided_by`; when that is
    math-verify, `pred_parsed`/`gold_parsed` (its parsed forms, as strings) and
    `pred_is_math`/`gold_is_math` (False: it found no expression and compares the text); then
    `correct` and `timed_out`. Keys of steps not reached (time limit) are absent.
    """
    trace: dict[str, Any] = {}
    correct, timed_out = _check(pred, gold, timeout, fast_path, trace=trace)
    return {**trace, "correct": correct, "timed_out": timed_out}


def _normalise(text: str) -> str:
    """String form for the exact-match fast path (equal forms are always equivalent)."""
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _TEXT_WRAPPER.sub(r"\1", text)
    return _NOISE.sub("", text).rstrip(".")


def _prepare(text: str) -> str:
    """Rewrites math-verify gets wrong, applied to both answers before parsing."""
    text = _PY_FRACTION.sub(r"\1/", text.strip())
    match = _TEXT_NUMBER_UNIT.match(text)
    if match:
        return f"{match.group(1)}\\text{{ {match.group(2).strip()}}}"
    match = _PERCENT.match(text)
    if match:  # parses alike with every antlr4 runtime (4.9.3 fails on `\\%`)
        return f"\\frac{{{match.group(1).replace(',', '')}}}{{100}}"
    return text


def _check(
    pred: str,
    gold: str,
    timeout: float,
    fast_path: bool,
    trace: dict[str, Any] | None = None,
) -> tuple[bool, bool]:
    """(correct, timed_out) for two answers; never raises an `Exception`."""
    if not isinstance(pred, str) or not isinstance(gold, str) or not pred.strip():
        return False, False
    try:
        with _time_limit(timeout):
            pred_norm, gold_norm = _normalise(pred), _normalise(gold)
            if trace is not None:
                trace.update(pred_normalised=pred_norm, gold_normalised=gold_norm)
            if fast_path and pred_norm and pred_norm == gold_norm:
                if trace is not None:
                    trace["decided_by"] = "fast path (equal normalised strings)"
                return True, False
            for rule, name in _RULES:
                verdict = rule(pred, gold)
                if verdict is not None:
                    if trace is not None:
                        trace["decided_by"] = name
                    return verdict, False
            if trace is not None:
                trace["decided_by"] = "math-verify"
            mv = _math_verify()
            gold_parsed, pred_parsed = _parse(mv, gold), _parse(mv, pred)
            if trace is not None:
                trace.update(
                    gold_parsed=[str(x) for x in gold_parsed],
                    pred_parsed=[str(x) for x in pred_parsed],
                    gold_is_math=any(not isinstance(x, str) for x in gold_parsed),
                    pred_is_math=any(not isinstance(x, str) for x in pred_parsed),
                )
            if not gold_parsed or not pred_parsed:
                return False, False
            return bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=None)), False
    except _CheckTimeout:
        return False, True
    except UserError:
        raise
    except BaseException as e:  # math-verify's own TimeoutException is a BaseException
        if isinstance(e, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        logger.debug("grading %r against %r failed", pred[:80], gold[:80], exc_info=True)
        return False, False


def _parse(mv: Any, answer: str) -> list[Any]:
    """math-verify's parse of one answer: [expression, matched text], or [text] if it found none.

    The answer is boxed and parsed in `first_match` mode, so math-verify parses exactly that one
    match; with its default `any_match` it falls back to pieces of an answer it cannot parse
    (`\\frac13 E_{1}+\\frac23 E_{3}` and `... E_{2}` would both be 2/3). Its own signal
    timeouts are off: `_time_limit` bounds the whole check instead.
    """
    return mv.parse(
        f"\\boxed{{{_prepare(answer)}}}", extraction_mode="first_match", parsing_timeout=None
    )


def _compare_bases(pred: str, gold: str) -> bool | None:
    """Numbers with a base subscript on both sides (`4210_{5}`) compare by value; math-verify
    drops the subscript, so `4210_{6}` would pass. None when this rule does not apply."""
    p, g = _BASE_NUMBER.match(pred.strip()), _BASE_NUMBER.match(gold.strip())
    if not p or not g:
        return None
    try:
        return int(p[1], int(p[2])) == int(g[1], int(g[2]))
    except ValueError:  # digits not valid in that base, or a base outside 2..36
        return p[1].lower() == g[1].lower() and int(p[2]) == int(g[2])


def _compare_percent(pred: str, gold: str) -> bool | None:
    """A percentage against a number: `N%` equals N and N/100 (math-verify's own rule, applied
    here because its antlr4 4.9.3 parser — verl's pin — cannot parse `N\\%` at all). None when
    this rule does not apply."""
    pred_pct, gold_pct = _PERCENT.match(pred), _PERCENT.match(gold)
    if not pred_pct and not gold_pct:
        return None
    p, g = pred_pct or _PLAIN_NUMBER.match(pred), gold_pct or _PLAIN_NUMBER.match(gold)
    if not p or not g:
        return None
    x, y = _decimal(p[1]), _decimal(g[1])
    if x is None or y is None:
        return None
    if pred_pct and gold_pct:
        return x == y
    percent, other = (x, y) if pred_pct else (y, x)
    return other in (percent, percent / 100)


def _decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


_RULES = (
    (_compare_bases, "number-base rule (both answers have a base subscript)"),
    (_compare_percent, "percent rule (N% equals N and N/100)"),
)

_MV: Any = None


def _math_verify() -> Any:
    """The math_verify module, imported on first use with its 'timeout disabled' warning muted
    (this module enforces the time limit itself)."""
    global _MV
    if _MV is None:
        try:
            import math_verify
        except ImportError as e:
            raise UserError(
                "grading needs math-verify: pip install -e '.[eval]' "
                f"(math-verify==0.9.0 with antlr4-python3-runtime==4.9.3); import failed with: {e}"
            ) from None
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_mute_timeout_disabled)
        _MV = math_verify
    return _MV


def _mute_timeout_disabled(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Timeout is disabled")


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise `_CheckTimeout` in the block after `seconds` (main thread only; elsewhere a no-op).

    A timer the caller had armed is re-armed afterwards with its remaining time.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise _CheckTimeout

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _raise)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)
            if outer_delay > 0:
                left = max(outer_delay - (time.monotonic() - started), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


# ---------------------------------------------------------------------------------------------
# Many answers, in worker processes


def grade_many(
    items: Sequence[tuple[str, str, str | None]],
    workers: int = 2,
    timeout: float = 5.0,
    progress: bool = True,
    *,
    hard_timeout: float | None = None,
    fast_path: bool = True,
) -> list[GradeResult]:
    """Grade `(response_text, gold, benchmark)` triples; results come back in input order.

    Args:
        items (`Sequence[tuple[str, str, str | None]]`): what to grade.
        workers (`int`, *optional*, defaults to `2`): worker processes (spawn); `<= 1` grades in
            this process, with the signal time limit only.
        timeout (`float`, *optional*, defaults to `5.0`): time limit of one check, in seconds.
        progress (`bool`, *optional*, defaults to `True`): a tqdm bar on stderr.
        hard_timeout (`float`, *optional*): watchdog deadline per item (default `2·timeout + 5`).
            A worker still busy after it — stuck where signals cannot interrupt it — is killed and
            replaced, and its item is marked `timed_out=True`, `correct=False`.
        fast_path (`bool`, *optional*, defaults to `True`): see `is_equivalent`.
    """
    with Grader(workers, timeout, hard_timeout=hard_timeout, fast_path=fast_path) as grader:
        return grader.grade_many(items, progress=progress)


class Grader:
    """Grading workers kept alive across calls: the evaluation runner grades chunk after chunk,
    and starting workers (spawn + importing sympy) costs seconds each time.

    Use as a context manager; `grade_many` takes the same items as the module-level function.
    Workers start on first use.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout: float = 5.0,
        *,
        hard_timeout: float | None = None,
        fast_path: bool = True,
    ) -> None:
        self.workers = workers
        self.timeout = timeout
        self.deadline = hard_timeout if hard_timeout is not None else 2 * timeout + 5
        self.fast_path = fast_path
        self._pool: _Pool | None = None

    def grade_many(
        self, items: Sequence[tuple[str, str, str | None]], progress: bool = False
    ) -> list[GradeResult]:
        from tqdm import tqdm

        items = list(items)
        bar = tqdm(
            total=len(items), desc="grading", unit="answer", file=sys.stderr, disable=not progress
        )
        with bar:
            if self.workers <= 1 or not items:
                results = []
                for response, gold, benchmark in items:
                    results.append(
                        grade(response, gold, benchmark, self.timeout, fast_path=self.fast_path)
                    )
                    bar.update()
                return results
            if self._pool is None:
                _math_verify()  # fail here, with the install hint, rather than in every worker
                self._pool = _Pool(self.workers, self.timeout, self.fast_path)
            return self._pool.run(items, self.deadline, bar)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_READY = "ready"
_STARTUP_LIMIT_S = 300.0  # spawning and importing sympy/math-verify; slow disks take a while


def _worker_main(conn: Any, timeout: float, fast_path: bool) -> None:
    """Worker process: receive `(index, response, gold, benchmark)`, send `(index, GradeResult)`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _math_verify().parse("\\boxed{1}")  # warm up the LaTeX parser before the first deadline
    conn.send(_READY)
    while True:
        task = conn.recv()
        if task is None:
            return
        index, response, gold, benchmark = task
        conn.send((index, grade(response, gold, benchmark, timeout, fast_path=fast_path)))


class _Worker:
    def __init__(self, ctx: Any, timeout: float, fast_path: bool) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, timeout, fast_path), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.index: int | None = None
        self.deadline = time.monotonic() + _STARTUP_LIMIT_S

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class _Pool:
    """Worker processes fed one item at a time, each under a wall-clock deadline."""

    def __init__(self, size: int, timeout: float, fast_path: bool) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.args = (timeout, fast_path)
        self.workers = [_Worker(self.ctx, *self.args) for _ in range(size)]

    def run(self, items: list[tuple[str, str, str | None]], deadline: float, bar: Any):
        results: list[GradeResult | None] = [None] * len(items)
        todo = deque(range(len(items)))
        left = len(items)

        def give_work(w: _Worker) -> None:
            if todo:
                w.index = todo.popleft()
                w.deadline = time.monotonic() + deadline
                w.conn.send((w.index, *items[w.index]))
            else:
                w.index = None

        def finish(index: int, result: GradeResult) -> None:
            nonlocal left
            results[index] = result
            left -= 1
            bar.update()

        def replace(w: _Worker, timed_out: bool) -> None:
            response, _, benchmark = items[w.index]
            finish(w.index, GradeResult(extract_answer(response, benchmark), False, timed_out))
            w.kill()
            self.workers[self.workers.index(w)] = _Worker(self.ctx, *self.args)

        for w in self.workers:  # workers left idle by an earlier call
            if w.ready and w.index is None and todo:
                give_work(w)
        while left:
            now = time.monotonic()
            for w in list(self.workers):
                if now < w.deadline:
                    continue
                if not w.ready:
                    raise RuntimeError(
                        f"a grading worker did not start within {_STARTUP_LIMIT_S:.0f} s"
                    )
                if w.index is not None:
                    logger.warning(
                        "item %d: grading worker still busy after %.1f s; killed and replaced",
                        w.index,
                        deadline,
                    )
                    replace(w, timed_out=True)
            busy = [w for w in self.workers if not w.ready or w.index is not None]
            nearest = min(w.deadline for w in busy)
            for conn in wait([w.conn for w in busy], timeout=max(nearest - now, 0.01)):
                w = next(w for w in self.workers if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    if not w.ready:
                        raise RuntimeError(
                            f"a grading worker exited while starting (exit code "
                            f"{w.proc.exitcode}); run one `grade` in-process to see the error"
                        ) from None
                    logger.warning("item %d: grading worker died; counted as wrong", w.index)
                    replace(w, timed_out=False)
                    continue
                if message == _READY:
                    w.ready = True
                else:
                    index, result = message
                    finish(index, result)
                give_work(w)
            for w in self.workers:  # fresh replacements wait for work once ready
                if w.ready and w.index is None and todo:
                    give_work(w)
        return results

    def close(self) -> None:
        for w in self.workers:
            with suppress(OSError, ValueError):
                w.conn.send(None)
        for w in self.workers:
            w.proc.join(2)
            w.kill()
