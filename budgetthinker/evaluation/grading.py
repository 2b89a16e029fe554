"""The one math grader: answer extraction and equivalence, shared by evaluation and the RL reward.

* `extract` (module `extraction`) finds a response's final answer and the rule that found it:
  a method's own format (TALE `[[...]]`, s1 `Answer:`), the last `\\boxed{}` (with the group of
  boxes that may end a multi-part answer), then math-verify's own extraction ("final answer
  is", `$...$`, plain numbers). `grading.extraction: qwen` is the original's last-boxed rule.
* `is_equivalent` decides whether a predicted answer equals the gold one: a string-normalised
  exact match first (fast path), then math-verify (`parse` + `verify`), with both answers wrapped
  in `\\boxed{}` so LaTeX and plain numbers parse alike. It never raises; a check that runs past
  its time limit counts as wrong.
* `grade` = extract + equivalence, and is what the RL reward reuses; every `GradeResult` says
  which `rule` extracted the answer. `Grader` grades in worker processes with a hard per-item
  deadline, so an answer that hangs the grader (even inside C code, where signals cannot reach)
  only costs that item; `Grader.grade_one` is the same deadline for one answer, from any thread.

In front of math-verify, a few rules decide cases it gets wrong or that depend on the antlr4
runtime: numbers with base subscripts compare by value (`4210_{6}` ≠ `4210_{5}`; math-verify drops
the base); `N%` (also `N pct`, `N percent`) equals N and N/100 (math-verify's own rule, but with
antlr4 4.9.3 — verl's hydra pin — latex2sympy cannot parse `\\%` at all); a predicted decimal
comma equals a gold decimal point (`1000,99` = `1000.99`; a gold `1,3` stays a list); a mixed number
`7 3/4` is 31/4. math-verify parses in `first_match` mode (see `_parse`), so an answer it cannot
parse is compared as text instead of by some fragment of it.

Time limits: math-verify's own timeouts use `signal.alarm` with whole seconds, one per parse or
comparison. This module instead switches them off and puts one `SIGALRM` interval timer (float
seconds) around the whole check. Signals work only in the main thread: off the main thread the
check runs without a time limit; use a `Grader` (worker processes) there, as the RL reward does.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from budgetthinker.errors import UserError
from budgetthinker.evaluation.extraction import (
    ANSWER_FORMATS,
    EXTRACTIONS,
    Extraction,
    check_answer_format,
    check_extraction,
    extract,
    extract_boxed,
    strip_dollars,
)
from budgetthinker.evaluation.grader_pool import Pool, Worker

__all__ = [
    "ANSWER_FORMATS",
    "BENCHMARKS",
    "EXTRACTIONS",
    "GradeItem",
    "GradeResult",
    "Grader",
    "explain",
    "extract",
    "extract_answer",
    "extract_boxed",
    "gold_answer",
    "grade",
    "grade_many",
    "is_equivalent",
]

logger = logging.getLogger(__name__)

BENCHMARKS = ("math500", "aime24", "amc23", "gsm8k", "minerva_math", "olympiadbench")
"""Benchmarks whose raw rows `gold_answer` knows; any other name reads the `answer` field."""

_TEXT_WRAPPER = re.compile(r"\\(?:text|textrm|textbf|textit|mathrm|mbox)\s*\{([^{}]*)\}")
# `\text{5 cm}` → `5\text{ cm}`, so math-verify strips the unit as it does for `5\text{ cm}`.
_TEXT_NUMBER_UNIT = re.compile(
    r"^\s*\\(?:text|textrm|mbox|mathrm)\s*\{\s*([-+]?\d[\d,]*(?:\.\d+)?)\s*([A-Za-z][^{}]*)\}\s*$"
)
_NOISE = re.compile(r"\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\displaystyle|\\[!,;: ]|\$|\s+")
_PY_FRACTION = re.compile(r"(\d)\./")  # `-1./3` (Python float style) → `-1/3`
_MIXED_NUMBER = re.compile(r"^\s*(-?)(\d+)\s+(\d+)\s*/\s*(\d+)\s*$")  # 7 3/4
_NUMBER = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)"  # 1,000.5 but not 1,2
_PLAIN_NUMBER = re.compile(rf"^\s*({_NUMBER})\s*$")
_PERCENT = re.compile(
    rf"^\s*({_NUMBER})\s*(?:\\?%|\\text\{{\s*\\?%\s*\}}|(?i:\s*(?:percentage|percent|pct)))\s*$"
)
_DECIMAL_COMMA = re.compile(r"^\s*(-?\d+),(\d{1,2}|\d{4,})\s*$")  # 1000,99 (not 1,000)
_DECIMAL_POINT = re.compile(r"^\s*(-?\d+)\.(\d+)\s*$")
_BASE_NUMBER = re.compile(r"^(\d[0-9A-Z]*)_\{?(\d+)\}?$")  # 4210_{5}, 1A3_{12}
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_TOP_LEVEL_SEPARATOR = re.compile(r",|;|\\text\{\s*(?:and|or)\s*\}|\band\b")


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
        rule (`str` or `None`, *optional*): the extraction rule that found `predicted`
            (`"boxed"`, `"boxed group"`, `"math-verify final answer is (latex)"`, `"tale [[...]]"`,
            ...); `None` when nothing was found.
    """

    predicted: str | None
    correct: bool
    timed_out: bool = False
    rule: str | None = None


Grade = GradeResult
"""Short name of `GradeResult`."""


class GradeItem(NamedTuple):
    """One answer to grade: what `Grader.grade_many` takes (plain 3-tuples work too)."""

    response: str
    gold: str
    benchmark: str | None = None
    answer_format: str | None = None


# ---------------------------------------------------------------------------------------------
# Extraction (see `budgetthinker.evaluation.extraction`)


def extract_answer(
    text: str,
    benchmark: str | None = None,
    *,
    answer_format: str | None = None,
    extraction: str = "default",
) -> str | None:
    """The final answer in a model response (the text of `extract`), `None` when it has none.

    >>> extract_answer("so \\boxed{7}, and the answer is 7")
    '7'
    """
    return extract(text, benchmark, answer_format=answer_format, extraction=extraction).answer


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
        return ", ".join(strip_dollars(_number_text(v)) for v in value)
    return strip_dollars(_number_text(value))


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        return text.split(".")[0]
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
    answer_format: str | None = None,
    extraction: str = "default",
    fast_path: bool = True,
) -> GradeResult:
    """Extract the answer of a response and check it against `gold` (the RL reward's accuracy).

    `answer_format` names a method's own format (`ANSWER_FORMATS`: `"tale"`, `"s1"`), tried
    first; `extraction="qwen"` (or `"seed"`) uses the original's last-boxed rule instead of the
    chain. When several boxes end the response and the gold answer has several parts, the
    group is graded first (`rule="boxed group"`), then the last box alone; for a gold with one
    part only the last box counts, so hedging over boxes does not pay.

    >>> grade("... hence **Final Answer** \\\\boxed{2, 1}", "1, 2")
    GradeResult(predicted='2, 1', correct=True, timed_out=False, rule='boxed')
    """
    found = _extract_within(response_text, benchmark, answer_format, extraction, timeout)
    if found is None:  # the extraction itself ran out of time
        return _lost(GradeItem(response_text, gold), True)
    if not found.answer:
        return GradeResult(None, False)
    if found.group is not None and _has_parts(gold):
        correct, timed_out = _check(found.group, gold, timeout, fast_path)
        if correct or timed_out:
            return GradeResult(found.group, correct, timed_out, "boxed group")
    pred_parsed = [found.parsed, found.answer] if found.parsed is not None else None
    correct, timed_out = _check(found.answer, gold, timeout, fast_path, pred_parsed=pred_parsed)
    return GradeResult(found.answer, correct, timed_out, found.rule)


def _extract_within(
    text: str, benchmark: str | None, answer_format: str | None, extraction: str, timeout: float
) -> Extraction | None:
    """`extract` under the time limit (math-verify's extraction parses); None if it ran out.
    Name errors are checked first, outside the limit, so they surface as `UserError`."""
    check_answer_format(answer_format)
    check_extraction(extraction)
    try:
        with _time_limit(timeout):
            return extract(text, benchmark, answer_format=answer_format, extraction=extraction)
    except _CheckTimeout:
        return None


def _has_parts(gold: str) -> bool:
    """Whether a gold answer lists several parts (`1, -2`, `{1,2,3}`, `x=1 and y=2`): a
    separator outside every bracket once one outer pair of braces is removed."""
    if not isinstance(gold, str):
        return False
    text = gold.strip()
    for left, right in (("\\{", "\\}"), ("\\left\\{", "\\right\\}"), ("{", "}")):
        if text.startswith(left) and text.endswith(right):
            text = text[len(left) : -len(right)]
            break
    depth = 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and _TOP_LEVEL_SEPARATOR.match(text, i):
            return True
    return False


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
    text = _PY_FRACTION.sub(r"\1/", text.strip()).replace("\\mathrm{e}", "e")  # unit rule drops it
    match = _TEXT_NUMBER_UNIT.match(text)
    if match:
        return f"{match.group(1)}\\text{{ {match.group(2).strip()}}}"
    match = _PERCENT.match(text)
    if match:  # parses alike with every antlr4 runtime (4.9.3 fails on `\\%`)
        return f"\\frac{{{match.group(1).replace(',', '')}}}{{100}}"
    match = _MIXED_NUMBER.match(text)
    if match:  # math-verify reads `7 3/4` as a product
        sign, whole, num, den = match.groups()
        return f"{sign}\\frac{{{int(whole) * int(den) + int(num)}}}{{{den}}}"
    return text


def _check(
    pred: str,
    gold: str,
    timeout: float,
    fast_path: bool,
    trace: dict[str, Any] | None = None,
    pred_parsed: list[Any] | None = None,
) -> tuple[bool, bool]:
    """(correct, timed_out) for two answers; never raises an `Exception`.

    `pred_parsed` is math-verify's own parse of `pred` when its extraction found it in a
    response; it counts too, so the answer is equivalent when either parse agrees with gold."""
    if not isinstance(pred, str) or not isinstance(gold, str) or not pred.strip():
        return False, False
    try:
        with _time_limit(timeout):
            return _decide(pred, gold, fast_path, trace, pred_parsed), False
    except _CheckTimeout:
        return False, True
    except UserError:
        raise
    except BaseException as e:  # math-verify's own TimeoutException is a BaseException
        if isinstance(e, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        logger.debug("grading %r against %r failed", pred[:80], gold[:80], exc_info=True)
        return False, False


def _decide(
    pred: str,
    gold: str,
    fast_path: bool,
    trace: dict[str, Any] | None,
    extracted: list[Any] | None,
) -> bool:
    """The verdict: fast path, then the project's rules, then math-verify."""
    note = trace if trace is not None else {}
    pred_norm, gold_norm = _normalise(pred), _normalise(gold)
    note.update(pred_normalised=pred_norm, gold_normalised=gold_norm)
    if fast_path and pred_norm and pred_norm == gold_norm:
        note["decided_by"] = "fast path (equal normalised strings)"
        return True
    for rule, name in _RULES:
        verdict = rule(pred, gold)
        if verdict is not None:
            note["decided_by"] = name
            return verdict
    note["decided_by"] = "math-verify"
    mv = _math_verify()
    gold_parsed, pred_parsed = _parse(mv, gold), _parse(mv, pred)
    note.update(
        gold_parsed=[str(x) for x in gold_parsed],
        pred_parsed=[str(x) for x in pred_parsed],
        gold_is_math=any(not isinstance(x, str) for x in gold_parsed),
        pred_is_math=any(not isinstance(x, str) for x in pred_parsed),
    )
    if not gold_parsed:
        return False
    if pred_parsed and mv.verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return True
    if extracted is not None and mv.verify(gold_parsed, extracted, timeout_seconds=None):
        note["decided_by"] = "math-verify (its own parse of the response)"
        return True
    return False


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


def _compare_decimal_comma(pred: str, gold: str) -> bool | None:
    """A predicted `1000,99` against a gold `1000.99`: a decimal comma in the answer. Only that
    way round: a gold `1,3` is a list (OlympiadBench has many), never 1.3. None when this rule
    does not apply."""
    comma, point = _DECIMAL_COMMA.match(pred), _DECIMAL_POINT.match(gold)
    if not comma or not point:
        return None
    return _decimal(f"{comma[1]}.{comma[2]}") == _decimal(f"{point[1]}.{point[2]}")


_RULES = (
    (_compare_bases, "number-base rule (both answers have a base subscript)"),
    (_compare_percent, "percent rule (N% equals N and N/100)"),
    (_compare_decimal_comma, "decimal-comma rule (1000,99 equals 1000.99)"),
)

_MV: Any = None


def _grade_item(
    response: str, gold: str, benchmark: str | None, answer_format: str | None, **settings: Any
) -> GradeResult:
    """One pool item graded (module level, so a spawned worker can unpickle it)."""
    return grade(response, gold, benchmark, answer_format=answer_format, **settings)


def _warm_up() -> None:
    """A worker's start: parse once, so the LaTeX parser is loaded before the first deadline."""
    _math_verify().parse("\\boxed{1}")


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
    items: Sequence[tuple],
    workers: int = 2,
    timeout: float = 5.0,
    progress: bool = True,
    *,
    hard_timeout: float | None = None,
    fast_path: bool = True,
    extraction: str = "default",
) -> list[GradeResult]:
    """Grade `(response_text, gold, benchmark[, answer_format])` items (or `GradeItem`s);
    results come back in input order.

    Args:
        items (`Sequence[tuple]`): what to grade.
        workers (`int`, *optional*, defaults to `2`): worker processes (spawn); `<= 1` grades in
            this process, with the signal time limit only.
        timeout (`float`, *optional*, defaults to `5.0`): time limit of one check, in seconds.
        progress (`bool`, *optional*, defaults to `True`): a tqdm bar on stderr.
        hard_timeout (`float`, *optional*): watchdog deadline per item (default `2·timeout + 5`).
            A worker still busy after it — stuck where signals cannot interrupt it — is killed and
            replaced, and its item is marked `timed_out=True`, `correct=False`.
        fast_path (`bool`, *optional*, defaults to `True`): see `is_equivalent`.
        extraction (`str`, *optional*, defaults to `"default"`): see `grade`.
    """
    with Grader(
        workers, timeout, hard_timeout=hard_timeout, fast_path=fast_path, extraction=extraction
    ) as grader:
        return grader.grade_many(items, progress=progress)


class Grader:
    """Grading workers kept alive across calls: the evaluation runner grades chunk after chunk,
    and starting workers (spawn + importing sympy) costs seconds each time.

    Use as a context manager. `grade_many` takes the same items as the module-level function;
    `grade_one` grades one answer in a worker under the hard deadline, from any thread (the RL
    reward). Workers start on first use.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout: float = 5.0,
        *,
        hard_timeout: float | None = None,
        fast_path: bool = True,
        extraction: str = "default",
    ) -> None:
        check_extraction(extraction)
        self.workers = workers
        self.timeout = timeout
        self.deadline = hard_timeout if hard_timeout is not None else 2 * timeout + 5
        self.fast_path = fast_path
        self.extraction = extraction
        self._settings = {"timeout": timeout, "fast_path": fast_path, "extraction": extraction}
        self._pool: Pool | None = None
        self._idle: list[Worker] = []  # grade_one's workers, one per concurrent caller
        self._lock = threading.Lock()

    def grade_many(self, items: Sequence[tuple], progress: bool = False) -> list[GradeResult]:
        from tqdm import tqdm

        items = [_item(x) for x in items]
        bar = tqdm(
            total=len(items), desc="grading", unit="answer", file=sys.stderr, disable=not progress
        )
        with bar:
            if self.workers <= 1 or not items:
                results = []
                for response, gold, benchmark, answer_format in items:
                    results.append(
                        grade(
                            response, gold, benchmark, answer_format=answer_format, **self._settings
                        )
                    )
                    bar.update()
                return results
            self.start()
            return self._pool.run(items, self.deadline, bar, _lost)

    def start(self) -> None:
        """Start `grade_many`'s worker processes now instead of at its first call: each imports
        sympy and math-verify (seconds), and the evaluation runner has them do it while the first
        chunk generates. No-op with one worker or once started."""
        if self.workers > 1 and self._pool is None:
            _math_verify()  # fail here, with the install hint, rather than in every worker
            self._pool = Pool(self.workers, self._job(), _warm_up)

    def _job(self) -> Any:
        """What a worker process runs per item: `grade` with this grader's settings."""
        return functools.partial(_grade_item, **self._settings)

    def grade_one(
        self,
        response: str,
        gold: str,
        benchmark: str | None = None,
        answer_format: str | None = None,
    ) -> GradeResult:
        """`grade` in a worker process, killed at the hard deadline; safe from any thread."""
        item = _item((response, gold, benchmark, answer_format))
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            _math_verify()
            worker = Worker(self._job(), _warm_up)
        result = worker.ask(item, self.deadline)
        if result is None:
            logger.warning("grading worker stuck after %.1f s (or died); killed", self.deadline)
            worker.kill()
            return _lost(item, True)
        with self._lock:
            self._idle.append(worker)
        return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _item(item: tuple) -> GradeItem:
    """A `GradeItem` from a 2- to 4-tuple; an unknown answer format is a `UserError` here,
    before any worker sees it."""
    if not isinstance(item, tuple) or not 2 <= len(item) <= 4:
        raise UserError(
            f"a grading item is (response, gold[, benchmark[, answer_format]]), got {item!r:.80}"
        )
    item = GradeItem(*item)
    check_answer_format(item.answer_format)
    return item


def _lost(item: GradeItem, timed_out: bool) -> GradeResult:
    """Stands in for an item whose worker was killed or died: wrong, with the last box (a cheap,
    linear scan) as what was answered."""
    boxed = extract_boxed(item.response)
    return GradeResult(boxed, False, timed_out, "boxed" if boxed is not None else None)
