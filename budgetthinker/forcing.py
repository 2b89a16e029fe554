"""The forcing state machine: which token (if any) must come next in one request's output.

This is the single place that decides "what is forced when" (docs/spec.md §2). It is pure Python and
engine-agnostic: the transformers and vLLM adapters in `budgetthinker.patches` only translate
`Forcer.forced` into a logits mask and feed every appended token back with `Forcer.feed`.

Work per step is O(1): a counter since the last control token, the level of the next control
token, the number of tokens seen, and a cursor into the two-stage suffix. The output is never
scanned.

Rules (positions count generated tokens from 0):

* Ratio mode, N parts: `interval = B // N + 1`; after `interval` tokens the (N−1)/N token is
  forced, then the next-lower one whenever `interval` tokens followed the last control token,
  down to 1/N. The k-th forced token therefore sits at index k·interval + (k−1).
* Countdown mode, step S: B is rounded down to a multiple of S, the token for B−S is forced after
  S tokens, then B−2S, … down to S; the same restart rule gives positions k·S + (k−1).
* A control token the model samples itself restarts the count; the next forced token is the one
  below it.
* Improved over the original: once the model closes thinking (`</think>`), no more control tokens
  are forced (`stop_at_think_end=False` restores the original behaviour).
* Two-stage: if thinking has not ended after `B + B // 50` generated tokens, the suffix
  (e.g. "\\n</think>\\n\\n**Final Answer**\\\\boxed") is forced token by token, then decoding is
  free again — in the same request, and only when thinking was unfinished.
* Soft ending (two-stage with a grace window G ≥ 0, docs/spec.md §2.7): the suffix starts at the
  first output length n with B ≤ n ≤ B + G at which thinking is unfinished and either n = B + G
  or the token just fed (index n − 1) is a boundary token (`is_boundary`: its text holds a
  newline or ends with `.`, `!`, `?`, `…` or `:` before optional spaces). So thinking that
  reaches B mid-sentence may finish its sentence, up to G more tokens; G = 0 cuts at exactly B.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from budgetthinker.control_spec import ControlSpec, Mode
from budgetthinker.errors import UserError

FREE = -1
"""Value of `Forcer.forced` when the next token is not forced."""


def thinking_cap(budget: int) -> int:
    """Phase-1 token cap of two-stage inference, `B + B // 50` (faithful)."""
    return budget + budget // 50


SENTENCE_ENDS = (".", "!", "?", "…", ":", "。", "！", "？")


def is_boundary(text: str) -> bool:
    """Whether a token whose text is `text` ends a line or a sentence (the soft ending's cue):
    it holds a newline, or ends with one of `SENTENCE_ENDS` before optional spaces. A decimal
    point counts too: the rule is on tokens, not on parsed sentences."""
    return "\n" in text or text.rstrip(" \t").endswith(SENTENCE_ENDS)


def boundary_ids(texts: Iterable[str]) -> frozenset[int]:
    """Ids of the boundary tokens of a vocabulary given as each id's decoded text, in id order
    (`budgetthinker.delimiters.boundary_token_ids` decodes a tokenizer's)."""
    return frozenset(i for i, text in enumerate(texts) if is_boundary(text))


def check_grace(grace: object) -> int:
    """A grace window must be an int ≥ 0 (tokens of thinking allowed after B)."""
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        raise UserError(
            f"grace must be a whole number of tokens >= 0 (0 ends thinking at exactly the "
            f"budget), got {grace!r}"
        )
    return grace


@dataclass(frozen=True)
class ForcingPlan:
    """Immutable per-request settings; one plan can drive any number of `Forcer`s.

    `interval == 0` or `first_level == 0` means no control tokens; `cap < 0` means no two-stage.
    `grace >= 0` is the soft ending: the suffix may start from `budget` on, after a token of
    `boundaries`, and starts at the latest at `cap = budget + grace`; `grace < 0`: hard, at `cap`.
    """

    budget: int
    interval: int
    first_level: int
    token_ids: tuple[int, ...]  # token_ids[k-1] is the level-k control token
    level_of: Mapping[int, int]  # control token id → level
    think_end_id: int = -1
    cap: int = -1
    suffix: tuple[int, ...] = ()
    stop_at_think_end: bool = True
    grace: int = -1
    boundaries: frozenset[int] = frozenset()


def make_plan(
    spec: ControlSpec,
    budget: int,
    *,
    control: bool = True,
    two_stage: bool = False,
    suffix: str = "eval",
    stop_at_think_end: bool = True,
    grace: int | None = None,
    boundaries: frozenset[int] = frozenset(),
) -> ForcingPlan:
    """Build the plan for one request from the model's control-token spec and a budget.

    `grace` (tokens, ≥ 0) asks for the soft ending and implies two-stage; `boundaries` are the
    boundary token ids of the model's vocabulary (`boundary_ids`), needed only with `grace`.
    Raises `UserError` for a budget that is not a positive int or does not suit the mode, or a
    grace that is not an int ≥ 0.
    """
    mode = spec.parsed_mode
    budget = mode.check_budget(budget)
    if grace is not None:
        grace = check_grace(grace)
        two_stage = True
    interval, first_level = schedule(mode, budget) if control else (0, 0)
    if two_stage and suffix not in spec.suffix_ids:
        raise UserError(
            f"the model's control-token spec has no two-stage suffix {suffix!r} "
            f"(it has {sorted(spec.suffix_ids)}); prepare the model again"
        )
    return ForcingPlan(
        budget=budget,
        interval=interval,
        first_level=first_level,
        token_ids=spec.token_ids,
        level_of=spec.level_of,
        think_end_id=spec.think_end_id,
        cap=(budget + grace if grace is not None else thinking_cap(budget)) if two_stage else -1,
        suffix=spec.suffix_ids[suffix] if two_stage else (),
        stop_at_think_end=stop_at_think_end,
        grace=-1 if grace is None else grace,
        boundaries=(
            boundaries if isinstance(boundaries, frozenset) else frozenset(boundaries)
        ) if grace is not None else frozenset(),
    )


def schedule(mode: Mode, budget: int) -> tuple[int, int]:
    """`(interval, first_level)` of the control-token schedule for a (validated) budget."""
    if mode.kind == "ratio":
        return budget // mode.parts + 1, mode.parts - 1
    rounded = budget // mode.step * mode.step
    return mode.step, rounded // mode.step - 1


class Forcer:
    """State of one request. Call `feed(token)` for every token appended to the output, in order;
    read `forced` before sampling the next position (`FREE` when the model may choose)."""

    __slots__ = (
        "_boundary", "_suffix_pos", "forced", "level", "n", "plan", "since", "think_end_index"
    )

    def __init__(self, plan: ForcingPlan) -> None:
        self.plan = plan
        self.n = 0  # tokens fed so far (= output length)
        self.since = 0  # tokens since the last control token (or the start)
        self.level = plan.first_level if plan.interval > 0 else 0  # next control level; 0 = done
        self.think_end_index = -1  # output index of the first </think>, -1 while thinking
        self._suffix_pos = -1  # -1: suffix not started; len(suffix): suffix done
        self._boundary = False  # the token fed last is a boundary (soft ending only)
        self.forced = FREE
        self._update()

    def feed(self, token: int) -> None:
        plan = self.plan
        if 0 <= self._suffix_pos < len(plan.suffix):
            self._suffix_pos += 1
        level = plan.level_of.get(token)
        if level is not None:
            self.level = level - 1
            self.since = 0
        else:
            self.since += 1
        if token == plan.think_end_id and self.think_end_index < 0:
            self.think_end_index = self.n
        if plan.grace >= 0:
            self._boundary = token in plan.boundaries
        self.n += 1
        self._update()

    def _update(self) -> None:
        plan = self.plan
        pos = self._suffix_pos
        if pos >= 0:
            self.forced = plan.suffix[pos] if pos < len(plan.suffix) else FREE
            return
        thinking = self.think_end_index < 0
        soft = plan.grace >= 0 and self._boundary and self.n >= plan.budget
        if thinking and plan.cap >= 0 and (self.n >= plan.cap or soft) and plan.suffix:
            self._suffix_pos = 0
            self.forced = plan.suffix[0]
            return
        if (
            self.level > 0
            and plan.interval > 0  # no control tokens planned: a sampled one starts no chain
            and self.since == plan.interval
            and (thinking or not plan.stop_at_think_end)
        ):
            self.forced = plan.token_ids[self.level - 1]
        else:
            self.forced = FREE

    @property
    def finished_thinking(self) -> bool:
        return self.think_end_index >= 0

    @property
    def suffix_forced(self) -> bool:
        """True once the two-stage suffix has started (thinking was cut at the cap)."""
        return self._suffix_pos >= 0

    @property
    def thinking_tokens(self) -> int:
        """Output tokens before the first `</think>` (all of them while thinking): the usage
        count of thinking (`reasoning_tokens`); the rest of the output is the answer."""
        return self.think_end_index if self.think_end_index >= 0 else self.n


def simulate(plan: ForcingPlan, proposals: Iterable[int]) -> list[int]:
    """Run the machine against a stream of model proposals: the output takes the forced token
    where there is one and the proposal otherwise. Used by tests and by offline re-checks."""
    forcer = Forcer(plan)
    out = []
    for proposal in proposals:
        token = forcer.forced if forcer.forced != FREE else proposal
        out.append(token)
        forcer.feed(token)
    return out
