"""Thinking delimiters of any model, prepared or not: where thinking starts and ends.

Metrics need them for every model, not only for prepared ones: on DeepSeek-R1-Distill, s1.1 or
any baseline, thinking is what comes before the end delimiter, and "finished thinking" means the
model wrote it. Sources, in order: the recipe (`delimiters: {start, end}`), the control-token spec
of a prepared model, the tokenizer (`<think>`/`</think>` in its vocabulary), the chat template
(`<|im_start|>think` / `<|im_start|>answer` of the s1 models). A model with none of these has no
delimiters: its thinking length is the whole output and "finished thinking" is unknown, which the
report says instead of counting every output as unfinished.

Delimiters are text; they may span several tokens (`<|im_start|>answer` is two). `find_end`
locates them in an output's token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from budgetthinker.control_spec import ControlSpec
from budgetthinker.errors import UserError
from budgetthinker.forcing import boundary_ids

S1_START, S1_END = "<|im_start|>think", "<|im_start|>answer"


@dataclass(frozen=True)
class Delimiters:
    """Thinking start/end text (None: unknown), where they came from, and their token ids."""

    start: str | None
    end: str | None
    source: str  # recipe | spec | tokenizer | template | none
    end_ids: tuple[int, ...] = ()

    @property
    def known(self) -> bool:
        return bool(self.end_ids)


def detect(
    tokenizer, spec: ControlSpec | None = None, override: dict | None = None
) -> Delimiters:
    """The model's thinking delimiters (see the module docstring for the order of sources)."""
    if override:
        unknown = set(override) - {"start", "end"}
        if unknown or not override.get("end"):
            raise UserError(
                "delimiters must be {start: <text>, end: <text>} with a non-empty end, got "
                f"{override!r}"
            )
        return _make(tokenizer, override.get("start"), override["end"], "recipe")
    if spec is not None:
        return Delimiters(spec.think_start, spec.think_end, "spec", (spec.think_end_id,))
    vocab = tokenizer.get_vocab()
    if "<think>" in vocab and "</think>" in vocab:
        return _make(tokenizer, "<think>", "</think>", "tokenizer")
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, str) and S1_START in template and S1_END in template:
        return _make(tokenizer, S1_START, S1_END, "template")
    return Delimiters(None, None, "none")


def _make(tokenizer, start: str | None, end: str, source: str) -> Delimiters:
    return Delimiters(start, end, source, tuple(encode_exactly(tokenizer, end, "delimiter")))


def encode_exactly(tokenizer, text: str, what: str) -> list[int]:
    """Token ids of `text` that decode back to it; a `UserError` naming the fix otherwise."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
        back = tokenizer.decode(ids, skip_special_tokens=False)
    except (TypeError, ValueError) as e:  # e.g. lone surrogates
        ids, back = [], f"<error: {e}>"
    if not ids or back != text:
        raise UserError(
            f"the {what} {text!r} cannot be encoded by this model's tokenizer (it decodes back "
            f"as {back!r}); set text that the tokenizer can represent"
        )
    return ids


def find_all(tokens: Sequence[int], pattern: Sequence[int]) -> list[int]:
    """Start positions of every occurrence of `pattern` in `tokens`."""
    n = len(pattern)
    if not n:
        return []
    first = pattern[0]
    return [
        i
        for i, t in enumerate(tokens)
        if t == first and list(tokens[i : i + n]) == list(pattern)
    ]


def boundary_token_ids(tokenizer) -> frozenset[int]:
    """The soft ending's boundary tokens of `tokenizer` (`forcing.is_boundary` on each id's
    decoded text; special tokens never count). One batch decode of the vocabulary, about 0.1 s
    for 50k ids: callers build it once per tokenizer."""
    size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=True)
    return boundary_ids(texts)
