"""Answer extraction: which part of a model response is its final answer, and by which rule.

One chain serves evaluation and the RL reward, so the two never disagree on what was answered:

1. a method's own answer format, when the method has one (`ANSWER_FORMATS`: TALE's last
   `[[...]]`, s1's `Answer:`), chosen by name;
2. "The final answer is $X$. I hope it is correct." (Minerva's few-shot phrase) when it comes
   after the last box: such responses box intermediate values and state the answer last;
3. the last `\\boxed{}` / `\\fbox{}`; when several boxes end the response close together
   (`\\boxed{-2} and \\boxed{1}`), the whole group is kept too, for a gold with several answers;
4. otherwise math-verify's own extraction (`LatexExtractionConfig`, `ExprExtractionConfig`): the
   "final answer is" / "answer:" phrases, then `$...$` LaTeX, then plain numbers and expressions.
   Its parsed value travels with the text, so the check can use it as math-verify would.

`extraction="qwen"` (or `"seed"`) replaces the chain by the original BudgetThinker rule, that of
the Qwen2.5-Math parser: the text after the last "boxed" (braced, or up to `$`; an unclosed box
gives the rest of the response), else "the answer is" / "final answer is", else the last number.
It reproduces published numbers and the original RL reward; the default chain is stricter about
truncated boxes (`\\boxed{12` may be the start of `\\boxed{123}`) and no longer takes any last
number when a response has a box.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from budgetthinker.errors import UserError

EXTRACTIONS = ("default", "qwen", "seed")
"""`grading.extraction` values: the chain above, or the original's rule (`seed` is `qwen`)."""

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_GROUP_GAP = 60  # characters between two boxes of one multi-part answer
_GROUP_GAP_STOP = re.compile(r"\n\s*\n")  # ... and no paragraph break between them
_DELIMITERS = re.compile(r"\s|\$|\\[\[\]()]")
_CONNECTIVE = re.compile(r"\band\b|\bor\b|,|;|\\q?quad")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]+")
_GROUP_WORDS = 3
_MINERVA = re.compile(r"(?i)final answer is:?\s*(.+?)\s*\.?\s*I hope")
_TALE_BRACKETS = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
_TALE_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_S1_ANSWER = re.compile(r"(?i)answer\s*:")
_QWEN_NUMBER = re.compile(r"-?\d*\.?\d+")


@dataclass(frozen=True)
class Extraction:
    """The final answer found in a response.

    Args:
        answer (`str` or `None`): the answer text, `None` when the response has none.
        rule (`str` or `None`): the rule that found it (`"boxed"`, `"tale [[...]]"`, ...).
        group (`str` or `None`): several boxes closing the response, joined with `, `; graded
            instead of `answer` when the gold answer has several parts.
        parsed (`Any`): math-verify's parsed value, when its extraction found the answer.
    """

    answer: str | None
    rule: str | None = None
    group: str | None = None
    parsed: Any = None


NO_ANSWER = Extraction(None)


# ---------------------------------------------------------------------------------------------
# Boxes


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` in `text`, or `None` if there is none.

    Braces nest; `\\{` and `\\}` do not count. `\\boxed 5` / `\\boxed \\sqrt{51}` (no braces)
    give the token after the space, braced arguments included. An unclosed last box (a truncated
    answer) gives `None`. Linear time.

    >>> extract_boxed(r"so $x = \\boxed{\\frac{1}{2}}$ and \\boxed{\\{1, 2\\}}.")
    '\\\\{1, 2\\\\}'
    """
    boxes = _boxes(text, last_only=True)
    return boxes[-1][0] if boxes else None


def _boxes(text: str, last_only: bool = False) -> list[tuple[str | None, int, int]]:
    """(content or None if unclosed, start, end) of the boxes of `text`, left to right; with
    `last_only`, just the last one. Each command is searched again only when consumed, so the
    scan stays linear even with many look-alikes (`\\boxedfoo`)."""
    if not isinstance(text, str):
        return []
    found = {cmd: text.rfind(cmd) for cmd in _BOX_COMMANDS}
    boxes: list[tuple[str | None, int, int]] = []
    limit = len(text)
    while True:
        cmd = max(found, key=found.__getitem__)
        start = found[cmd]
        if start < 0:
            break
        found[cmd] = text.rfind(cmd, 0, start)
        i = start + len(cmd)
        if i < len(text) and text[i].isalpha():  # another command, e.g. \boxedtext
            continue
        content, end = _box_content(text, i)
        if end > limit:  # a box inside a box already taken: the outer one wins
            continue
        boxes.append((content, start, end))
        limit = start
        if last_only:
            break
    return boxes[::-1]


def _box_content(text: str, i: int) -> tuple[str | None, int]:
    """(content, end) of the box whose argument starts at `i`; content None when unclosed."""
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close = _matching_brace(text, i)
        if close < 0:
            return None, len(text)
        return text[i + 1 : close].strip(), close + 1
    j = i  # `\boxed 5`, `\boxed \sqrt{51}`: up to a space or `$`, braced arguments included
    while j < len(text) and not text[j].isspace() and text[j] not in "$}":
        if text[j] == "{":
            close = _matching_brace(text, j)
            if close < 0:
                break
            j = close
        j += 1
    return text[i:j].rstrip(".,;") or None, j


def _matching_brace(text: str, open_at: int, escapes: bool = True) -> int:
    """Index of the brace closing the one at `open_at`, or -1 if unclosed. With `escapes`,
    `\\{` `\\}` `\\\\` never open or close; without, every brace counts (as the original did)."""
    depth = 0
    i, n = open_at, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and escapes:
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _boxed(text: str) -> Extraction | None:
    """The last box, and the group of boxes closing the response with it."""
    boxes = _boxes(text)
    if not boxes or boxes[-1][0] is None:
        return None
    group = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if box[0] is None or not _joins(text[box[2] : group[0][1]]):
            break
        group.insert(0, box)
    joined = ", ".join(b[0] for b in group if b[0]) if len(group) > 1 else None
    return Extraction(boxes[-1][0], "boxed", group=joined)


def _joins(gap: str) -> bool:
    """Whether the text between two boxes joins them into one answer: short, no paragraph
    break, and nothing but math delimiters, or a connective (`and`, `or`, `,`, `\\quad`) with
    at most a few words (`papers and`, `for part (a) and`, `y_2 =`)."""
    if len(gap) > _GROUP_GAP or _GROUP_GAP_STOP.search(gap):
        return False
    if not _DELIMITERS.sub("", gap):
        return True
    words = _WORD.findall(_CONNECTIVE.sub(" ", _COMMAND.sub(" ", gap)))
    return bool(_CONNECTIVE.search(gap)) and len(words) <= _GROUP_WORDS


def _minerva(text: str) -> Extraction | None:
    """'The final answer is $X$. I hope it is correct.' after the last box (or with no box),
    read by math-verify's extraction (it joins `$12$ and $13$`), else as plain text."""
    matches = list(_MINERVA.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    boxes = _boxes(text, last_only=True)
    if boxes and boxes[-1][1] > last.start():
        return None
    found = _math_verify_answer(text[last.start() :].replace('\\"', "").replace('"', ""))
    if found is not None:
        return found
    answer = strip_dollars(last.group(1))
    return Extraction(answer, "final answer is … I hope") if answer else None


def strip_dollars(text: str) -> str:
    """`$x$` or `$$x$$` → `x` (stripped); anything else, e.g. `$1 and $2`, is kept as it is.
    The one rule for answers and gold answers alike."""
    text = text.strip()
    for fence in ("$$", "$"):
        n = len(fence)
        inner = text[n:-n]
        fenced = len(text) > 2 * n and text.startswith(fence) and text.endswith(fence)
        if fenced and "$" not in inner:
            return inner.strip()
    return text


# ---------------------------------------------------------------------------------------------
# Method formats


def tale_answer(text: str) -> Extraction | None:
    """TALE: the last `[[...]]`, else its number rule (the last run of digits, `$ . ,` of at
    least two characters, or the last integer; `,` `$` and a final `.` removed)."""
    brackets = _TALE_BRACKETS.findall(text)
    if brackets:
        return Extraction(brackets[-1].strip(), "tale [[...]]")
    numbers = _TALE_NUMBER.findall(text)
    if not numbers:
        return None
    number = "".join(numbers[-1])
    number = re.sub(r"(?s).*#### ", "", number.replace(",", "").replace("$", "")).rstrip(".")
    return Extraction(number, "tale number") if number else None


def s1_answer(text: str) -> Extraction | None:
    """s1: what follows the last `Answer:` (the box in it if there is one, else its first line,
    without `$...$` and a final `.`)."""
    matches = list(_S1_ANSWER.finditer(text))
    if not matches:
        return None
    tail = text[matches[-1].end() :]
    boxed = extract_boxed(tail)
    if boxed:
        return Extraction(boxed, "s1 Answer: (boxed)")
    line = next((ln for ln in tail.splitlines() if ln.strip()), "")
    answer = strip_dollars(line.strip().rstrip("."))
    return Extraction(answer, "s1 Answer:") if answer else None


ANSWER_FORMATS: dict[str, Callable[[str], Extraction | None]] = {
    "tale": tale_answer,
    "s1": s1_answer,
}
"""Method-specific answer formats, by name; each tried before the common chain."""


def check_answer_format(name: str | None) -> None:
    """Raise `UserError` for an unknown answer format (or extraction) name."""
    if name is not None and name not in ANSWER_FORMATS:
        raise UserError(
            f"unknown answer format {name!r}; use one of {', '.join(sorted(ANSWER_FORMATS))} "
            "or leave it unset for the common chain (boxed, then math-verify's extraction)"
        )


def check_extraction(name: str) -> None:
    if name not in EXTRACTIONS:
        raise UserError(
            f"grading.extraction must be one of {', '.join(EXTRACTIONS)}, got {name!r} "
            "(qwen/seed: the original's last-boxed rule, for published numbers)"
        )


# ---------------------------------------------------------------------------------------------
# math-verify's extraction


_ANCHORS = {0: "final answer is … I hope", 50: "final answer is", 100: "answer:", 200: "answer"}
_MV_TARGETS: Any = None


def _mv_targets() -> Any:
    """math-verify's extraction regexes for LaTeX then expressions, its boxes left out: boxes
    are the box rule's alone, so a cut last box (`\\boxed{1} … \\boxed{2`) is no answer rather
    than an earlier, intermediate box. (`math_verify.parser` internals, pinned at 0.9.0.)"""
    global _MV_TARGETS
    if _MV_TARGETS is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig
        from math_verify.parser import get_extraction_regexes

        _MV_TARGETS = get_extraction_regexes(
            [LatexExtractionConfig(boxed_match_priority=-1), ExprExtractionConfig()]
        )
    return _MV_TARGETS


def _math_verify_answer(text: str) -> Extraction | None:
    """math-verify's extraction (its `parse` in `any_match` mode), keeping which pattern won.

    Patterns go by priority; within one, the rightmost match first; the first match whose
    text parses is the answer."""
    from math_verify import LatexExtractionConfig
    from math_verify.parser import extract_match

    patterns = [
        (priority, pattern, target)
        for regexes, target in _mv_targets()
        for pattern, priority in regexes
    ]
    for priority in sorted({p for p, _, _ in patterns}):
        matches = sorted(
            (
                (m, target)
                for p, pattern, target in patterns
                if p == priority
                for m in pattern.finditer(text)
            ),
            key=lambda x: (x[0].end(), -x[0].start()),
            reverse=True,
        )
        for match, target in matches:
            try:
                parsed, answer = extract_match(match, target)
            except Exception:  # a normaliser that chokes on odd text: as if unparsed
                continue
            if parsed is None or not answer:
                continue
            kind = "latex" if isinstance(target, LatexExtractionConfig) else "expression"
            rule = f"math-verify {_ANCHORS.get(priority, 'plain')} ({kind})"
            return Extraction(answer, rule, parsed=parsed)
    return None


# ---------------------------------------------------------------------------------------------
# The chain, and the original's rule


def extract(
    text: str,
    benchmark: str | None = None,
    *,
    answer_format: str | None = None,
    extraction: str = "default",
) -> Extraction:
    """The final answer of `text` and the rule that found it (see the module docstring).

    Never raises for odd text; an unknown `answer_format` or `extraction` is a `UserError`.

    >>> extract(r"so \\boxed{-2} and \\boxed{1}.")
    Extraction(answer='1', rule='boxed', group='-2, 1', parsed=None)
    """
    check_answer_format(answer_format)
    check_extraction(extraction)
    if not isinstance(text, str):
        return NO_ANSWER
    if extraction != "default":
        answer = qwen_answer(text, benchmark if extraction == "qwen" else None)
        return (
            Extraction(answer, f"{extraction} (last boxed, answer is, last number)")
            if (answer)
            else NO_ANSWER
        )
    steps: list[Callable[[str], Extraction | None]] = []
    if answer_format is not None:
        steps.append(ANSWER_FORMATS[answer_format])
    steps += [_minerva, _boxed, _math_verify_answer]
    for step in steps:
        found = step(text)
        if found is not None and found.answer:
            return found
    return NO_ANSWER


def qwen_answer(text: str, benchmark: str | None = None) -> str | None:
    """The original evaluation's and RL reward's answer (the Qwen2.5-Math parser's rule).

    Minerva's "final answer is $X$. I hope" (minerva_math only); else the text after the last
    "boxed": its braced argument (an unclosed one runs to the end), or up to the next `$`;
    else what follows the last "he answer is" or "final answer is"; else the last number.
    Line breaks are removed, and a leading `:` and a final `.` or `/`. The original then
    normalised strings for its own comparer; the equivalence check here needs none of that.
    `None` when nothing is found.

    >>> qwen_answer(r"**Final Answer**\\boxed \\sqrt{51}"), qwen_answer(r"so \\boxed{12")
    ('\\\\sqrt{51}', '12')
    """
    text = text.replace("\u043a\u0438", "")
    minerva = "final answer is $"
    if benchmark == "minerva_math" and minerva in text and "$. I hope" in text:
        pred = text.split(minerva, 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        tail = text.rsplit("boxed", 1)[1]
        if tail.startswith("{"):
            close = _matching_brace(tail, 0, escapes=False)
            pred = tail[1:close] if close >= 0 else tail[1:]
        else:
            pred = tail.split("$", 1)[0].strip()
    elif "he answer is" in text:
        pred = text.rsplit("he answer is", 1)[1].strip()
    elif "final answer is" in text:
        pred = text.rsplit("final answer is", 1)[1].strip()
    elif "答案是" in text:
        pred = text.split("答案是")[1].strip().split("\n\n", 1)[0].strip()  # up to a second one
    else:
        numbers = _QWEN_NUMBER.findall(text.replace(",", ""))
        pred = numbers[-1] if numbers else ""
    pred = re.sub(r"\n\s*", "", pred)
    pred = pred[1:] if pred.startswith(":") else pred
    pred = pred[:-1] if pred.endswith(".") else pred
    pred = pred[:-1] if pred.endswith("/") else pred
    return pred.strip() or None
