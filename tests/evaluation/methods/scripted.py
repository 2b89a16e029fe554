"""A scripted engine for method episodes: no model, each round's tokens and stop reason come
from a script, produced the way an engine would (min_tokens, stop tokens, stop strings, EOS and
max_new_tokens respected). Shared by the s1 budget and compat tests."""

from __future__ import annotations

from collections.abc import Callable

from budgetthinker.delimiters import detect
from budgetthinker.evaluation.methods import SampleContext
from budgetthinker.generation import GenRequest, GenResult

EOS = 2  # SmolLM2's <|im_end|>
THINK_END = 49160  # "</think>" on the prepared SmolLM2
NEWLINE = 198
POOL = (260, 30, NEWLINE, 216, 34, 1116)  # " the", ".", "\n", " ", "2", "\n\n"

Round = tuple[int, str]
"""A scripted round: (tokens the model wants to think before it ends, how it ends: `stop` by the
stop token or stop string, `eos`, or `length` = it would go on past any cap)."""


def context(tokenizer, spec, prompt_ids, budget, compat=()) -> SampleContext:
    return SampleContext(
        prompt_ids=list(prompt_ids), budget=budget, tokenizer=tokenizer, spec=spec,
        delimiters=detect(tokenizer, spec), max_new_tokens=None, compat=tuple(compat),
        eos_ids=frozenset({EOS}),
    )  # fmt: skip


def produce(request: GenRequest, want: int, how: str, body: Callable[[int], int]) -> GenResult:
    """The round an engine returns for `request` when the model wants `want` tokens and then
    ends `how`; body(i) is the i-th token."""
    ids = [body(i) for i in range(request.max_new_tokens)]
    ends = how != "length" and (request.stop_token_ids or request.stop or how == "eos")
    k = max(want, request.min_tokens) + 1  # the ending token comes after `want` tokens
    if not ends or k > request.max_new_tokens:
        return GenResult(ids[: request.max_new_tokens], "length")
    if how == "eos" or not (request.stop_token_ids or request.stop):
        return GenResult([*ids[: k - 1], EOS], "stop", None)
    if request.stop_token_ids:
        return GenResult([*ids[: k - 1], request.stop_token_ids[0]], "stop",
                         request.stop_token_ids[0])  # fmt: skip
    return GenResult([*ids[: k - 1], THINK_END], "stop", "</think>")


class ScriptedBackend:
    """Plays `rounds` in order, one per thinking request; answer requests (no stop) get
    `answer_len` tokens and EOS. Records every request it saw."""

    name = "hf"

    def __init__(self, rounds: list[Round], answer_len: int = 3, seed: int = 0) -> None:
        self.rounds = list(rounds)
        self.answer_len = answer_len
        self.seed = seed
        self.requests: list[GenRequest] = []

    def body(self, request: GenRequest) -> Callable[[int], int]:
        offset = len(request.prefix_ids) + self.seed
        return lambda i: POOL[(offset + 7 * i + i * i) % len(POOL)]

    def run(self, requests, **_sampling) -> list[GenResult]:
        out = []
        for request in requests:
            self.requests.append(request)
            thinking = bool(request.stop or request.stop_token_ids)
            if thinking and self.rounds:
                want, how = self.rounds.pop(0)
            elif thinking:
                want, how = 0, "stop"
            else:
                want, how = self.answer_len, "eos"
            out.append(produce(request, want, how, self.body(request)))
        return out


class HashModel:
    """A made-up deterministic model: what it generates depends only on its input ids (and the
    seed), so two drivers that feed it the same inputs get the same outputs — ours through
    `ModelBackend`, a test-side re-implementation of an original through `generate`."""

    def __init__(self, seed: int = 0, newline_rate: int = 5) -> None:
        self.seed = seed
        self.newline_rate = newline_rate

    def _rng(self, input_ids):
        import random

        return random.Random(hash((self.seed, tuple(input_ids))))

    def generate(self, input_ids, max_tokens: int, min_tokens: int = 0,
                 stop_token_ids=(), stop=(), thinking: bool = True) -> GenResult:  # fmt: skip
        """One engine call: `thinking` rounds end with the first stop token (or the stop string's
        token) or EOS, answers with EOS; min_tokens and max_tokens as vLLM applies them."""
        rng = self._rng(input_ids)
        want = rng.choice([rng.randint(0, 6), rng.randint(0, 30), rng.randint(20, 90)])
        how = rng.choice(["stop", "stop", "eos"]) if thinking else "eos"
        body = [NEWLINE if rng.randrange(self.newline_rate) == 0 else rng.choice(POOL)
                for _ in range(max_tokens)]  # fmt: skip
        request = GenRequest(list(input_ids), max_new_tokens=max_tokens, min_tokens=min_tokens,
                             stop_token_ids=tuple(stop_token_ids), stop=tuple(stop))  # fmt: skip
        return produce(request, want, how, body.__getitem__)


class ModelBackend:
    """Our backend protocol over a `HashModel`."""

    name = "hf"

    def __init__(self, model: HashModel) -> None:
        self.model = model
        self.requests: list[GenRequest] = []

    def run(self, requests, **_sampling) -> list[GenResult]:
        self.requests += requests
        return [
            self.model.generate(r.input_ids, r.max_new_tokens, r.min_tokens, r.stop_token_ids,
                                r.stop, thinking=bool(r.stop or r.stop_token_ids))
            for r in requests
        ]  # fmt: skip
