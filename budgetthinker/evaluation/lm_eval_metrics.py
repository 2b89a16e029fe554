"""Budget adherence as lm-evaluation-harness metrics, and the response that carries it.

The `budgetthinker` model returns each generation as a `ThinkingResponse`: the text lm-eval
scores, plus what our harness knows about its thinking (`.thinking`: thinking tokens, the
thinking budget B, control-token positions, rounds, whether thinking ended by itself). A task
asks for the metrics below in its `metric_list`, beside its accuracy metric; lm-eval computes
them per sample — so they appear in every logged sample (`--log_samples`) — and aggregates them
in the results JSON:

| metric | per sample | aggregated |
|---|---|---|
| `within_budget` | 1 if thinking ended by itself within B | mean ↑ (harness: `within_budget`) |
| `budget_deviation` | abs(t − B) / B | mean ↓ (harness: `mean_rel_deviation`) |
| `never_finished` | 1 if thinking never ended by itself | mean ↓ (harness: `never_finished`) |
| `thinking_tokens` | t | mean |
| `thinking_rounds` | generation rounds | mean |
| `output_tokens` | tokens generated and appended after the prompt | mean |
| `control_positions` | the list of control-token positions | mean count |

Why a task-level metric: it is lm-eval's public extension point for per-sample values (the only
path by which a value reaches both the logged samples and the results), registered with
`register_metric` like lm-eval's own. Metrics receive only the (filtered) response, so the record
rides on the response string: a filter that passes the model's response through (lm-eval's
default `take_first`) keeps it, one that builds new strings (regex extraction) does not — there
the values are NaN, with one warning. B is the method's thinking budget where it promises one
(s1: `max_tokens_thinking`), else the `budget` of the gen_kwargs, as in the harness's summary.
A model without known thinking delimiters gives NaN for the two metrics that need them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lm_eval.api.metrics  # noqa: F401  (registers lm-eval's `mean` before ours name it)
from lm_eval.api.registry import register_aggregation, register_metric

log = logging.getLogger(__name__)
NAN = float("nan")
METRICS = ("within_budget", "budget_deviation", "never_finished", "thinking_tokens",
           "thinking_rounds", "output_tokens", "control_positions")  # fmt: skip
"""Every metric this module registers, in the order of a task's `metric_list`."""


class ThinkingResponse(str):
    """A generated text with its thinking record (`None` for texts lm-eval builds from it, e.g.
    the gold answer cast to the response's type)."""

    thinking: dict | None

    def __new__(cls, text: str, thinking: dict | None = None) -> ThinkingResponse:
        response = super().__new__(cls, text)
        response.thinking = thinking
        return response


_warned = False


def _record(predictions) -> dict | None:
    global _warned
    record = getattr(predictions[0], "thinking", None) if predictions else None
    if record is None and not _warned:
        _warned = True
        log.warning(
            "budgetthinker metrics: a response without its thinking record (a filter built a "
            "new string, or the model is not budgetthinker): its adherence values are NaN; put "
            "the metrics on a filter that passes the response through (take_first)"
        )
    return record


def _known(record: dict) -> bool:
    return record["finished_thinking"] is not None


@register_aggregation("mean_count")
def mean_count(items) -> float:
    """Mean length of per-sample lists (control tokens per sample); NaN entries are skipped."""
    counts = [len(x) for x in items if isinstance(x, list)]
    return sum(counts) / len(counts) if counts else NAN


@register_metric(metric="within_budget", higher_is_better=True, aggregation="mean")
def within_budget(references, predictions, **kwargs) -> float:
    r = _record(predictions)
    if r is None or not _known(r):
        return NAN
    return float(bool(r["finished_thinking"]) and r["thinking_tokens"] <= r["budget"])


@register_metric(metric="budget_deviation", higher_is_better=False, aggregation="mean")
def budget_deviation(references, predictions, **kwargs) -> float:
    r = _record(predictions)
    return NAN if r is None else abs(r["thinking_tokens"] - r["budget"]) / r["budget"]


@register_metric(metric="never_finished", higher_is_better=False, aggregation="mean")
def never_finished(references, predictions, **kwargs) -> float:
    r = _record(predictions)
    return NAN if r is None or not _known(r) else float(not r["finished_thinking"])


@register_metric(metric="thinking_tokens", higher_is_better=False, aggregation="mean")
def thinking_tokens(references, predictions, **kwargs) -> float:
    r = _record(predictions)
    return NAN if r is None else r["thinking_tokens"]


@register_metric(metric="thinking_rounds", higher_is_better=False, aggregation="mean")
def thinking_rounds(references, predictions, **kwargs) -> float:
    r = _record(predictions)
    return NAN if r is None else r["rounds"]


@register_metric(metric="output_tokens", higher_is_better=False, aggregation="mean")
def output_tokens(references, predictions, **kwargs) -> float:
    r = _record(predictions)
    return NAN if r is None else r["output_tokens"]


@register_metric(metric="control_positions", higher_is_better=False, aggregation="mean_count")
def control_positions(references, predictions, **kwargs) -> list[int] | float:
    r = _record(predictions)
    return NAN if r is None else list(r["control_positions"])


def task_yaml(name: str, data_file: str | Path, question: str = "question",
              answer: str = "answer", until: tuple[str, ...] = ()) -> str:  # fmt: skip
    """An lm-eval task over a local JSONL (lm-eval's `json` builder: nothing downloaded), scored
    by exact match with every metric of this module beside it: the test's and the benchmark's
    task, and a start for one's own (`--include_path` the folder holding it)."""
    metrics = "".join(f"  - metric: {m}\n" for m in ("exact_match", *METRICS))
    return (
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        f'doc_to_text: "{{{{{question}}}}}"\n'
        f'doc_to_target: "{{{{{answer}}}}}"\n'
        f"generation_kwargs:\n  until: {json.dumps(list(until))}\n"
        f"metric_list:\n{metrics}"
    )
