"""`cts --compat cts`: the token selection CTS's data script gets from LLMLingua, reproduced.

CTS (`CTS_data_get.py`, reference note tale_cts.md B.2) calls LLMLingua's
`PromptCompressor.compress_prompt(context=thinking, question=answer, instruction="",
concate_question=False, condition_compare=True, condition_in_question="after",
rank_method="longllmlingua", iterative_size=1800, use_context_level_filter=False)`; its ablation
`llmlingua_RM` the same without the answer (`condition_compare=False`, `rank_method="llmlingua"`).
What that computes, written here as a state machine (no LLMLingua code; docs/stages/cts.md
lists every behaviour and docs/faithful_switches.md the differences from the default):

* **One text.** The answer, `"\\n\\n"` and the thinking are tokenized together, without special
  tokens; the thinking starts at the first token after which the decoded prefix equals
  `answer + "\\n\\n"` (searched from 3 tokens before the prefix's own length). Where no such
  token exists, or the rest does not decode to the thinking's first 100 characters, LLMLingua
  raises (`TraceRefused`). The unconditional pass is the thinking tokens alone: nothing before
  them, so the first thinking token has no score. An answer too long for the model
  (`prefix + 2·iterative_size` over its positions) keeps its first 100 and last tokens.
* **Target.** `target = (L("") + L(answer) + L(thinking))·α − L("")` with lengths counted *with*
  the tokenizer's special tokens, `τ = clamp(target / (n + 3), 0, 1)` with `n` the thinking's
  own token count (special tokens excluded).
* **Windows** (`window_sizes`): a first window of `iterative_size − 1` tokens, then whole
  windows, and a last partial window, listed for `n + 2` tokens. A window is only compressed
  while its end lies inside the sequence, so the last partial window never is; a thinking
  shorter than one window gets one window whose bounds are computed as `end − iterative_size`
  with Python's negative-index slicing — usually nothing in it can be dropped.
* **Losses.** Pass 0 scores the whole sequence (the "first pass"); pass k ≥ 1 rescores the
  compressed sequence up to the window's end, overwriting the losses from the start of the
  previous window on; the rest of the loss vectors keep older values (compacted with the masks,
  so after a dropped token one stale value stays in place).
* **Decision.** Score = unconditional loss − conditional loss (conditional) or the loss itself
  (self-information). Threshold: the `max(0, min(m−1, int(m·τ) − 1))`-th largest of all `m`
  scores in the buffer (−inf when τ = 1; LLMLingua raises on an empty buffer). The keep mask
  is shifted by one against the scores: position p (token p) is kept when the score of token
  p + 1 is strictly above the threshold; prefix positions and the last position are kept when
  a loss (their own successor's; the sequence's second token's) is positive; positions outside
  the window are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used
    import torch

SEPARATOR = "\n\n"
PREFIX_KEEP = 100  # LLMLingua's prefix_bos_num: first answer tokens kept when it is cut
PREFIX_SEARCH_BACK = 3  # the prefix's end is searched from its own length minus this
PREFIX_CHECK_CHARS = 100  # the thinking's first characters must decode back exactly


class TraceRefused(Exception):
    """LLMLingua raises on this trace (CTS's script would stop); the trace is dropped."""


def clamp_fraction(tau: float) -> float:
    """τ clamped to [0, 1]; 1 stays the exact value 1 (it means "keep everything")."""
    return max(min(1, tau), 0)


def lingua_fraction(
    rate: float, empty_len: int, question_len: int, context_len: int, thinking_len: int
) -> float:
    """LLMLingua's per-window keep fraction for one context with `concate_question=False`.

    Lengths: `empty_len`, `question_len`, `context_len` are token counts *with* special tokens
    (of "", the answer, the thinking); `thinking_len` without.

    >>> lingua_fraction(0.5, 0, 200, 1000, 1000)   # 0.5 · 1200 / 1003
    0.5982053838484547
    >>> lingua_fraction(0.9, 0, 400, 100, 100)
    1
    """
    target = (empty_len + question_len + context_len) * rate - empty_len
    return clamp_fraction(target / (thinking_len + 3))


def window_sizes(thinking_len: int, size: int) -> list[int]:
    """The windows LLMLingua lists for one context of `thinking_len` tokens (counted as
    `thinking_len + 2`, after one token already "seen").

    >>> window_sizes(100, 1800)
    [102]
    >>> window_sizes(1797, 1800), window_sizes(3597, 1800), window_sizes(5000, 1800)
    ([1799], [1799, 1800], [1799, 1800, 1403])
    """
    seen, length = 1, thinking_len + 2
    if seen + length < size:
        return [length]
    rest = seen + length - size
    whole = rest // size if rest > size else 0
    rest -= whole * size
    return [size - seen] + [size] * whole + ([rest] if rest else [])


def slice_at(index: int, length: int) -> int:
    """Where `seq[index:]` starts (and `seq[:index]` ends) in a sequence of `length`:
    Python's rule, negative indices counted from the end."""
    if index < 0:
        return max(0, length + index)
    return min(index, length)


def prefix_length(tokenizer, prefix: str, text: str) -> int:
    """The number of tokens of `prefix` at the start of the joint tokenization of
    `prefix + text` (LLMLingua's `get_prefix_length`); TraceRefused where it raises."""
    own = len(tokenizer(prefix, add_special_tokens=False).input_ids)
    ids = tokenizer(prefix + text[:PREFIX_CHECK_CHARS], add_special_tokens=False).input_ids
    first = max(own - PREFIX_SEARCH_BACK, 1)
    if first >= len(ids):
        raise TraceRefused("the answer and the thinking leave no token to split at")
    found = len(ids) - 1  # where LLMLingua's search stops when nothing matches
    for i in range(first, len(ids)):
        if tokenizer.decode(ids[:i]) == prefix:
            found = i
            break
    if tokenizer.decode(ids[found:]) != text[:PREFIX_CHECK_CHARS]:
        raise TraceRefused("the answer + '\\n\\n' and the thinking share a token")
    return found


def fit_prefix(tokenizer, prefix: str, size: int, max_positions: int | None) -> str:
    """The answer as LLMLingua conditions on it: unchanged unless it and two windows exceed
    the model's positions; then its first 100 tokens and its last ones, decoded."""
    if max_positions is None:
        return prefix
    with_specials = len(tokenizer(prefix + SEPARATOR).input_ids)
    if with_specials + 2 * size <= max_positions:
        return prefix
    ids = tokenizer(prefix, add_special_tokens=False).input_ids
    tail_from = len(ids) - max_positions + 2 + PREFIX_KEEP + 2 * size
    return tokenizer.decode(ids[:PREFIX_KEEP] + ids[tail_from:])


def threshold(buffer: torch.Tensor, fraction: float) -> float:
    """The score a token must exceed: rank `int(m·τ) − 1` (clamped) of the buffer sorted
    descending, −inf for τ = 1; scores equal to 10000 are left out, as LLMLingua does."""
    if fraction == 1.0:
        return -math.inf
    values = buffer[buffer != 10000]
    if values.numel() == 0:
        raise TraceRefused("nothing to rank (a one-token thinking with τ < 1)")
    rank = max(0, min(values.numel() - 1, int(values.numel() * fraction) - 1))
    return float(values.sort(descending=True).values[rank])


@dataclass
class LinguaRun:
    """LLMLingua's windowed compression of one (trace, ratio).

    `ids` is the joint tokenization, `start` the thinking's first position in it (0 without an
    answer). `requests()` names the forward passes the next step needs as (context, targets)
    token lists; `advance()` takes their log-probabilities and applies the step's window.
    """

    ids: list[int]
    start: int
    windows: list[int]
    fraction: float
    size: int
    conditional: bool
    seq: list[int] = field(init=False)  # positions in `ids` still in the sequence
    plain: list[int] = field(init=False)  # positions in the unconditional sequence
    loss: torch.Tensor | None = None  # loss[p]: the loss stored for seq[p + 1]
    plain_loss: torch.Tensor | None = None
    end: int = field(init=False)
    ready: int = 0
    plain_ready: int = 0
    step: int = 0
    stopped: bool = False
    decided: dict[int, float] = field(default_factory=dict)  # thinking index → its score

    def __post_init__(self):
        self.seq = list(range(len(self.ids)))
        self.plain = list(range(self.start, len(self.ids)))
        self.end = min(self.size + self.start, len(self.ids))

    @property
    def done(self) -> bool:
        return self.stopped or self.end > len(self.seq)

    def kept(self) -> list[int]:
        """Kept thinking tokens, as indices into the thinking (joint positions − start)."""
        return [p - self.start for p in self.seq[self.start :]]

    def _pass(self, seq: list[int], ready: int, end: int | None) -> tuple[list[int], list[int]]:
        tokens = [self.ids[p] for p in seq]
        if end is None:  # pass 0: the whole sequence
            return tokens[:1], tokens[1:]
        return tokens[: ready + 1], tokens[ready + 1 : end]

    def requests(self) -> list[tuple[list[int], list[int]]]:
        first = self.step == 0
        asks = [self._pass(self.seq, self.ready, None if first else self.end)]
        if self.conditional:
            plain_end = None if first else self.end - self.start
            asks.append(self._pass(self.plain, self.plain_ready, plain_end))
        return asks

    @staticmethod
    def _store(old: torch.Tensor | None, new: torch.Tensor, at: int, upto: int) -> torch.Tensor:
        import torch

        if old is None:
            return new
        if upto > old.numel():
            old = torch.cat([old, torch.zeros(upto - old.numel(), dtype=old.dtype)])
        old[at:upto] = new
        return old

    def advance(self, logprobs: list[torch.Tensor]) -> None:
        loss = -logprobs[0].float()
        if loss.numel() == 0:
            self.stopped = True
            return
        self.loss = self._store(self.loss, loss, self.ready, self.end - 1)
        first_pass = self.step == 0
        if self.conditional:
            plain = -logprobs[1].float()
            self.plain_loss = self._store(
                self.plain_loss, plain, self.plain_ready, self.end - self.start - 1
            )
        # the start of this window: from here on the next pass rescores
        reset = self.start and first_pass
        self.ready = 0 if reset else self.end - self.size
        self.plain_ready = 0 if reset else self.end - self.start - self.size
        if self.step >= len(self.windows):
            raise TraceRefused("more passes than windows")
        self._window(self.windows[self.step])
        self.step += 1

    def _scores(self) -> torch.Tensor:
        if not self.conditional:
            return self.loss
        cond = self.loss[self.start :]
        if self.plain_loss.numel() < cond.numel():
            raise TraceRefused("the loss vectors lost their alignment")
        return self.plain_loss[: cond.numel()] - cond

    def _window(self, width: int) -> None:
        import torch

        n = len(self.seq)
        scores = self._scores()
        cut = threshold(scores, self.fraction)
        keep = torch.cat([self.loss[: self.start] > 0, scores > cut, self.loss[:1] > 0])
        if keep.numel() != n:
            raise TraceRefused("the keep mask does not match the sequence")
        hi = self.end - self.size + width
        lo, hi_at = slice_at(hi - width, n), slice_at(hi, n)
        keep[hi_at:] = True
        keep[:lo] = True
        for p in range(max(lo, self.start), min(hi_at, n - 1)):
            self.decided[self.seq[p] - self.start] = float(scores[p - self.start])
        flags = keep.tolist()
        self.loss = self.loss[keep[:-1]]
        if self.conditional:
            if len(flags) - 1 - self.start != self.plain_loss.numel():
                raise TraceRefused("the loss vectors lost their alignment")
            self.plain_loss = self.plain_loss[keep[self.start : -1]]
            self.plain = [p for p, k in zip(self.plain, flags[self.start :], strict=True) if k]
        self.seq = [p for p, k in zip(self.seq, flags, strict=True) if k]
        dropped_before = flags[:hi_at].count(False)
        self.end = hi - dropped_before + self.size
