"""SFT data: reasoning traces → LLaMA-Factory rows with control tokens in the thinking
(docs/spec.md §4).

For each trace: the thinking is the text between `<think>` and the first `</think>` (stripped);
it is tokenized with the prepared model's tokenizer (no special tokens added) → length L; the
budget B follows the rule (`v1`: (L // 50 + 1)·50, `v2`: the smallest bin strictly above L); the
thinking tokens are split into chunks of `delta = B // N + 1` tokens (countdown modes: S tokens)
and the control tokens (N−1)/N … 1/N are inserted after chunks 0 … N−2 — all of them, trailing
chunks may be empty. The prompt is the user turn with the tip for B (`prompts.user_content`), the
answer `"<think>\\n" + thinking with tokens + "\\n</think>\\n**Final Answer**\\boxed{…}"`.

Positions are counted the way forcing counts them at generation time (`placement: generated`,
the default): over the tokens the model generates, so when the chat template leaves `<think>\n`
to the model (DeepSeek-R1-Distill ends the prompt at `<｜Assistant｜>`; SmolLM2's ChatML at
`assistant\n`) those tokens count too and every control token sits where forcing would put it.
The original counted from the first thinking token (`placement: thinking`, the compat switch),
which puts each control token two tokens later than forcing does on those templates.

The thinking is cut at the character offsets of token boundaries (the tokenizer's offset mapping),
never decoded back from ids, so the text between control tokens is exactly the original text.
Token strings and the mode come only from the model's control-token spec.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from budgetthinker.control_spec import THINK_END, THINK_START, ControlSpec, Mode
from budgetthinker.errors import UserError
from budgetthinker.forcing import schedule
from budgetthinker.outputs import (
    check_writable,
    plain_name,
    publish_together,
    removed_on_failure,
    user_path,
)
from budgetthinker.prompts import TIP_NAMES, chat_prompt, user_content

V2_BINS = (100, 250, 500, 750, 1000, 1250, 1500, *range(2000, 10001, 500))
BUDGET_RULES = ("v1", "v2")
FORMATS = ("alpaca", "sharegpt")
PLACEMENTS = ("generated", "thinking")
"""`generated`: control tokens counted over the tokens the model generates, as forcing does;
`thinking`: counted from the first thinking token (the original's placement)."""
CONTROLS = ("tokens", "none")
"""`tokens`: control tokens and the budget tip (our pipeline); `none`: plain
`<think>…</think>` + answer and no tip (the CTS training format, its reference note B.3)."""
ANSWER_PREFIX = f"{THINK_START}\n"
DEFAULT_NAME = "8ratio_SFT_below10000"

QUESTION_KEYS = ("question", "problem", "prompt", "instruction", "query")
RESPONSE_KEYS = ("response", "output", "completion", "generation")
THINKING_KEYS = ("thinking", "reasoning", "cot")
ANSWER_KEYS = ("answer", "final_answer", "solution")

# Reasons a trace is dropped (stats keys).
DROP_REASONS = {
    "bad_json": "line is not a JSON object",
    "bad_encoding": "line is not UTF-8 text",
    "no_question": f"no question field ({', '.join(QUESTION_KEYS)})",
    "no_response": f"no response ({', '.join(RESPONSE_KEYS)}) or thinking field",
    "no_think_end": f"response has no {THINK_END}",
    "empty_thinking": "thinking is empty",
    "no_answer": "no final answer (\\boxed{} after </think>, or an answer field)",
    "too_long": "thinking longer than --max-thinking tokens (raise --max-thinking to keep them)",
    "no_budget": "no budget for this length (v2 bins end at 10000; mode's budget range)",
}


def budget_for(length: int, rule: str) -> int | None:
    """Budget B for a thinking of `length` tokens; None if the rule has no budget for it.

    >>> budget_for(0, "v1"), budget_for(49, "v1"), budget_for(50, "v1")
    (50, 50, 100)
    >>> budget_for(99, "v2"), budget_for(100, "v2"), budget_for(2100, "v2"), budget_for(10000, "v2")
    (100, 250, 2500, None)
    """
    if rule == "v1":
        return (length // 50 + 1) * 50
    if rule == "v2":
        return next((b for b in V2_BINS if b > length), None)
    raise UserError(f"unknown budget rule {rule!r}; use v1 or v2")


def insertion_points(
    mode: Mode, budget: int, length: int, generated_before: int = 0
) -> list[tuple[int, int]]:
    """`[(token_index, level), …]`: the control token of `level` goes before thinking token
    `token_index` (== length: at the end). Ratio mode: levels N−1 … 1 after every `delta`
    tokens; countdown: B−S … S after every S tokens (B rounded down to a multiple of S).

    `generated_before` tokens the model generates ahead of the thinking (`<think>\\n`) count
    towards the first interval, as they do for forcing.

    >>> from budgetthinker.control_spec import parse_mode
    >>> insertion_points(parse_mode("8ratio"), 100, 30)
    [(13, 7), (26, 6), (30, 5), (30, 4), (30, 3), (30, 2), (30, 1)]
    >>> insertion_points(parse_mode("8ratio"), 100, 30, generated_before=2)[:3]
    [(11, 7), (24, 6), (30, 5)]
    """
    interval, first_level = schedule(mode, budget)
    return [
        (max(0, min(k * interval - generated_before, length)), first_level + 1 - k)
        for k in range(1, first_level + 1)
    ]


def generated_prefix(tokenizer) -> str:
    """The part of `<think>\\n` the model itself generates after the prompt: all of it unless
    the chat template's generation prompt already ends with (part of) it."""
    if not getattr(tokenizer, "chat_template", None):
        return ANSWER_PREFIX
    prompt = chat_prompt(tokenizer, "x")
    if prompt.endswith(ANSWER_PREFIX):
        return ""
    if prompt.endswith(THINK_START):
        return ANSWER_PREFIX[len(THINK_START) :]
    return ANSWER_PREFIX


def insert_tokens(text: str, ends: list[int], points: list[tuple[int, int]], mode: Mode) -> str:
    """Insert control-token strings into `text`; `ends[i]` is the end character offset of
    thinking token i. A token going before token index p is placed at `ends[p - 1]`."""
    pieces, last = [], 0
    for index, level in points:
        at = len(text) if index >= len(ends) else ends[index - 1] if index > 0 else 0
        pieces.append(text[last:at])
        pieces.append(mode.token_string(level))
        last = at
    pieces.append(text[last:])
    return "".join(pieces)


@dataclass
class Trace:
    """One input row, normalised: the question, the thinking (None: no `</think>`) and the
    final answer (content of the `\\boxed{}`)."""

    question: str
    thinking: str | None
    answer: str | None
    id: str = ""


def _first(row: dict, keys: Iterable[str]) -> str | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def parse_trace(row: object) -> Trace | str:
    """A JSON row → Trace, or the drop reason (a DROP_REASONS key)."""
    from budgetthinker.evaluation.grading import extract_boxed

    if row is BAD_ENCODING:
        return "bad_encoding"
    if not isinstance(row, dict):
        return "bad_json"
    question = _first(row, QUESTION_KEYS)
    if question is None:
        return "no_question"
    answer_field = _first(row, ANSWER_KEYS)
    thinking = _first(row, THINKING_KEYS)
    response = _first(row, RESPONSE_KEYS)
    if response is None and thinking is None and answer_field and THINK_END in answer_field:
        response, answer_field = answer_field, None  # {"question", "answer": "<think>…"} rows
    if thinking is not None:
        tail = response or ""
        thinking = (
            thinking.replace(THINK_START, "", 1)
            if thinking.lstrip().startswith(THINK_START)
            else thinking
        )
    elif response is not None:
        head, sep, tail = response.partition(THINK_END)
        if not sep:
            return "no_think_end"
        start = head.find(THINK_START)
        thinking = head[start + len(THINK_START) :] if start >= 0 else head
    else:
        return "no_response"
    thinking = thinking.strip()
    if not thinking:
        return "empty_thinking"
    answer = extract_boxed(tail) if tail else None
    if answer is None and answer_field is not None:
        answer = extract_boxed(answer_field) or answer_field.strip()
    if not answer:
        return "no_answer"
    return Trace(
        question=question.strip(), thinking=thinking, answer=answer, id=str(row.get("id", ""))
    )


@dataclass
class Stats:
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    budgets: Counter = field(default_factory=Counter)
    thinking_tokens: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "budget_histogram": {str(b): n for b, n in sorted(self.budgets.items())},
            "mean_thinking_tokens": round(self.thinking_tokens / self.kept, 1) if self.kept else 0,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.read / self.seconds, 1) if self.seconds else None,
        }

    def summary(self) -> str:
        d = self.to_json()
        lines = [
            f"rows read {d['read']} · kept {d['kept']} · dropped {d['dropped_total']} · "
            f"{d['rows_per_second']} rows/s · mean thinking {d['mean_thinking_tokens']} tokens"
        ]
        lines += [f"  dropped {n}: {k} ({DROP_REASONS[k]})" for k, n in d["dropped"].items()]
        lines.append(
            "  budget histogram: "
            + ", ".join(f"{b}: {n}" for b, n in d["budget_histogram"].items())
            if d["budget_histogram"]
            else "  budget histogram: (empty)"
        )
        return "\n".join(lines)


class TraceBuilder:
    """Turns traces into SFT rows for one prepared model (its tokenizer and spec)."""

    def __init__(
        self,
        tokenizer,
        spec: ControlSpec,
        budget_rule: str = "v2",
        max_thinking: int = 10000,
        fmt: str = "alpaca",
        placement: str = "generated",
        control: str = "tokens",
        tip: str | None = None,
    ):
        if control not in CONTROLS:
            raise UserError(f"unknown control {control!r}; use tokens or none (plain thinking)")
        if placement not in PLACEMENTS:
            raise UserError(
                f"unknown placement {placement!r}; use generated (as forcing counts) or "
                "thinking (the original's count)"
            )
        if budget_rule not in BUDGET_RULES:
            raise UserError(f"unknown budget rule {budget_rule!r}; use v1 or v2")
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r}; use alpaca or sharegpt")
        if max_thinking <= 0:
            raise UserError(f"--max-thinking must be positive, got {max_thinking}")
        if not getattr(tokenizer, "is_fast", False):
            raise UserError("the SFT data builder needs a fast tokenizer (offset mapping)")
        self.tokenizer, self.spec, self.control = tokenizer, spec, control
        self.mode = spec.parsed_mode if control == "tokens" else None
        # the prompt's budget tip: the control tip with tokens, none without, unless given
        self.tip = tip or ("control" if control == "tokens" else "none")
        if self.tip not in TIP_NAMES:
            raise UserError(f"unknown tip {self.tip!r}; choose one of {', '.join(TIP_NAMES)}")
        if self.tip == "control" and self.mode is None:
            raise UserError("--tip control lists the control tokens; with --control none use a "
                            "plain budget tip such as --tip withoutremaining")  # fmt: skip
        self.budget_rule, self.max_thinking, self.fmt = budget_rule, max_thinking, fmt
        self.placement = placement
        # Tokens the model generates before the thinking; forcing counts them, so we do too.
        self.generated_before = (
            len(tokenizer.encode(generated_prefix(tokenizer), add_special_tokens=False))
            if placement == "generated"
            else 0
        )
        self.stats = Stats()

    def build(self, traces: list[Trace]) -> list[dict]:
        """Rows for a batch of parsed traces (tokenized in one call); drops are counted."""
        if not traces:
            return []
        # The Rust tokenizer directly (batched, multi-threaded): transformers' wrapper would
        # convert every offset to Python once more.
        encodings = self.tokenizer.backend_tokenizer.encode_batch(
            [t.thinking for t in traces], add_special_tokens=False
        )
        rows = []
        for trace, encoding in zip(traces, encodings, strict=True):
            offsets = encoding.offsets
            length = len(offsets)
            if length > self.max_thinking:
                self.stats.dropped["too_long"] += 1
                continue
            if self.mode is None and self.tip == "none":  # plain thinking, no budget
                rows.append(self._row(trace, None, trace.thinking))
                self.stats.kept += 1
                self.stats.thinking_tokens += length
                continue
            budget = budget_for(length, self.budget_rule)
            if budget is None or not self._budget_ok(budget):
                self.stats.dropped["no_budget"] += 1
                continue
            if self.mode is None:  # --control none with a budget tip: the thinking unchanged
                rows.append(self._row(trace, budget, trace.thinking))
                self.stats.kept += 1
                self.stats.budgets[budget] += 1
                self.stats.thinking_tokens += length
                continue
            points = insertion_points(self.mode, budget, length, self.generated_before)
            thinking = insert_tokens(trace.thinking, [end for _, end in offsets], points, self.mode)
            rows.append(self._row(trace, budget, thinking))
            self.stats.kept += 1
            self.stats.budgets[budget] += 1
            self.stats.thinking_tokens += length
        return rows

    def _budget_ok(self, budget: int) -> bool:
        if self.mode is None:
            return True
        try:
            self.mode.check_budget(budget)
        except UserError:
            return False
        return True

    def _row(self, trace: Trace, budget: int | None, thinking: str) -> dict:
        if budget is None:
            prompt = user_content(trace.question, 0, "none")
        else:
            prompt = user_content(trace.question, budget, self.tip, self.mode)
        answer = (
            f"{ANSWER_PREFIX}{thinking}\n{THINK_END}\n**Final Answer**\\boxed{{{trace.answer}}}"
        )
        if self.fmt == "sharegpt":
            row = {
                "conversations": [
                    {"from": "human", "value": prompt},
                    {"from": "gpt", "value": answer},
                ]
            }
        else:
            row = {"instruction": prompt, "input": "", "output": answer}
        if budget is not None:
            row["budget"] = budget
        if trace.id:
            row["id"] = trace.id
        return row

    def run(self, rows: Iterable[object], batch_size: int = 512) -> Iterator[dict]:
        """Parse, tokenize in batches and yield output rows; `self.stats` is filled as it goes."""
        start = time.perf_counter()
        batch: list[Trace] = []
        for raw in rows:
            self.stats.read += 1
            trace = parse_trace(raw)
            if isinstance(trace, str):
                self.stats.dropped[trace] += 1
                continue
            batch.append(trace)
            if len(batch) >= batch_size:
                yield from self.build(batch)
                batch = []
        yield from self.build(batch)
        self.stats.seconds = time.perf_counter() - start


BAD_ENCODING = object()
"""What `read_jsonl` yields for a line that is not UTF-8 (dropped as bad_encoding)."""


def read_jsonl(path: str | os.PathLike) -> Iterator[object]:
    """Rows of a JSONL file (a `.json` file holding a list also works); a line that is not
    JSON yields None (dropped as bad_json) and one that is not UTF-8 yields `BAD_ENCODING`
    (dropped as bad_encoding): neither stops the run."""
    path = user_path(path)
    if not path.is_file():
        raise UserError(f"traces file {path} does not exist")
    with path.open("rb") as f:
        first = f.read(1)
        f.seek(0)
        if first == b"[":
            try:
                yield from json.loads(f.read().decode("utf-8"))
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                raise UserError(
                    f"traces file {path} starts with '[' but is not a UTF-8 JSON list ({e}); "
                    "write it as JSONL (one object per line) or as one valid JSON list"
                ) from None
            return
        for line in f:
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                yield BAD_ENCODING
                continue
            try:
                yield json.loads(text)
            except json.JSONDecodeError:
                yield None


def dataset_info_entry(file_name: str, fmt: str) -> dict:
    if fmt == "sharegpt":
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt",
            },
        }
    return {
        "file_name": file_name,
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }


def write_dataset(
    rows: Iterable[dict],
    out_dir: str | os.PathLike,
    name: str,
    fmt: str,
    finish: Callable[[int], dict[str, object]] | None = None,
) -> tuple[Path, int]:
    """Write `<name>.jsonl` and add/replace its entry in `dataset_info.json` (other entries of
    an existing file are kept, so several datasets can share a dataset_dir).

    Published all together or not at all (`outputs.publish_together`): rows go to a temp file;
    `finish(n_rows)` then returns the extra JSON files to write next to it (the stats) or raises
    (e.g. no row kept); the stats and the new `dataset_info.json` are staged too, and only when
    every file is written whole are they renamed into place. A failed run (a full disk, a
    file-size limit) or a killed one leaves the folder as it was."""
    plain_name(name, "--name")  # the file names below must stay inside out_dir
    out = user_path(out_dir)
    data_path = out / f"{name}.jsonl"
    info_path = out / "dataset_info.json"
    info = _read_info(info_path)  # a broken one stops the run before anything is written
    n = 0
    with removed_on_failure(out), publish_together() as group:
        with group.open(data_path) as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        extra = finish(n) if finish is not None else {}
        for file_name, content in extra.items():
            group.json(out / file_name, content)
        info[name] = dataset_info_entry(data_path.name, fmt)
        group.json(info_path, info)
    return data_path, n


def _read_info(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); repair or delete it") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} must hold a JSON object (dataset name → entry)")
    return info


def build_dataset(
    model_dir: str | os.PathLike,
    traces: Iterable[object],
    out_dir: str | os.PathLike,
    name: str = DEFAULT_NAME,
    budget_rule: str = "v2",
    max_thinking: int = 10000,
    fmt: str = "alpaca",
    batch_size: int = 512,
    placement: str = "generated",
    control: str = "tokens",
    tip: str | None = None,
) -> Stats:
    """The whole job: rows from `traces` → `out_dir/<name>.jsonl`, `dataset_info.json` and
    `<name>.stats.json`. Returns the stats."""
    from budgetthinker.control_spec import load_spec
    from budgetthinker.preparation.models import load_tokenizer

    # --control none needs only the tokenizer (lengths), so any model folder will do
    check_writable(out_dir)  # before the tokenizer loads, not after the rows are built
    spec = load_spec(model_dir) if control == "tokens" else None
    tokenizer = load_tokenizer(model_dir, check_spec=control == "tokens")
    builder = TraceBuilder(
        tokenizer, spec, budget_rule, max_thinking, fmt, placement, control, tip
    )
    stats = builder.stats

    def finish(n: int) -> dict[str, object]:
        if n == 0:  # nothing is published: no empty dataset, no dataset_info.json entry
            hint = " (raise --max-thinking to keep them)" if stats.dropped["too_long"] else ""
            raise UserError(
                f"no trace was kept ({stats.read} read; {dict(stats.dropped)}){hint}; see the "
                "accepted fields in docs/stages/sft.md; nothing was written"
            )
        report = {
            "name": name,
            "model": str(model_dir),
            "mode": spec.mode if spec is not None else None,
            "control": control,
            "tip": builder.tip,
            "budget_rule": budget_rule,
            "max_thinking": max_thinking,
            "format": fmt,
            "placement": placement,
            "generated_before": builder.generated_before,
            **stats.to_json(),
        }
        return {f"{name}.stats.json": report}

    write_dataset(builder.run(traces, batch_size), out_dir, name, fmt, finish)
    return stats
