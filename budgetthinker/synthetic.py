"""Deterministic arithmetic word problems with exact answers (and step-by-step reasoning).

One generator family serves the evaluation's `synthetic` benchmark (the embedded default: no
files needed) and the synthetic SFT traces, so a model trained on the traces is evaluated on the
same kind of problem. Everything is a pure function of (seed, index): the same problem set on
every machine, in any order, without storing it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from budgetthinker.control_spec import ANSWER_TAIL

NAMES = (
    "Ava",
    "Ben",
    "Chloe",
    "Dan",
    "Emma",
    "Finn",
    "Grace",
    "Hugo",
    "Iris",
    "Jack",
    "Lena",
    "Omar",
)
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards")


@dataclass(frozen=True)
class SyntheticProblem:
    id: str
    question: str
    answer: str  # exact integer answer, as text
    steps: tuple[str, ...]  # one sentence of reasoning per operation


LEVELS = ("normal", "easy")
"""`easy`: single-digit start amounts and only small additions (1–3), so that even the embedded
135M model answers some correctly (TALE's budget search needs problems vanilla CoT gets right);
with `num_steps=0` the answer is the amount stated in the question."""


def make_problem(
    seed: int, index: int, num_steps: int = 3, level: str = "normal"
) -> SyntheticProblem:
    """Problem `index` of the set `seed`: a start amount and `num_steps` operations on it."""
    if level not in LEVELS:
        raise ValueError(f"synthetic level must be one of {', '.join(LEVELS)}, got {level!r}")
    easy = level == "easy"
    rng = random.Random(f"{seed}:{index}:{num_steps}" + (":easy" if easy else ""))
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(1, 9) if easy else rng.randint(2, 20)
    sentences = [f"{name} has {value} {item}."]
    steps = [f"{name} starts with {value} {item}."]
    for _ in range(num_steps):
        op = "gain" if easy else rng.choice(("gain", "lose", "times", "gain", "groups"))
        if op == "gain":
            k = rng.randint(1, 3) if easy else rng.randint(2, 30)
            sentences.append(f"Then {name} gets {k} more {item}.")
            steps.append(f"Getting {k} more gives {value} + {k} = {value + k} {item}.")
            value += k
        elif op == "lose" and value > 2:
            k = rng.randint(1, value - 1)
            sentences.append(f"Then {name} gives away {k} {item}.")
            steps.append(f"Giving away {k} leaves {value} - {k} = {value - k} {item}.")
            value -= k
        elif op == "times" and value <= 200:
            k = rng.randint(2, 4)
            sentences.append(f"Then the number of {item} {name} has becomes {k} times as large.")
            steps.append(f"{k} times as many is {value} × {k} = {value * k} {item}.")
            value *= k
        else:
            k = rng.randint(2, 5)
            sentences.append(f"Then {name} buys {k} bags with {k + 1} {item} in each bag.")
            steps.append(
                f"{k} bags of {k + 1} is {k} × {k + 1} = {k * (k + 1)}, so {value} + "
                f"{k * (k + 1)} = {value + k * (k + 1)} {item}."
            )
            value += k * (k + 1)
    sentences.append(f"How many {item} does {name} have now?")
    steps.append(f"So {name} has {value} {item} in the end.")
    return SyntheticProblem(
        id=f"synthetic-{'easy-' if easy else ''}{seed}-{index}",
        question=" ".join(sentences),
        answer=str(value),
        steps=tuple(steps),
    )


def synthetic_problems(
    n: int, seed: int = 0, num_steps: int = 3, level: str = "normal"
) -> list[SyntheticProblem]:
    """The first `n` problems of set `seed` (at `level`, see `LEVELS`)."""
    return [make_problem(seed, i, num_steps, level) for i in range(n)]


def make_trace(seed: int, index: int, num_steps: int = 3, checks: int = 0) -> dict[str, str]:
    """A reasoning trace for problem `index` of set `seed`, in the raw form the SFT data builder
    reads: `{"id", "question", "response"}` with the response
    `"<think>\\n{steps}\\n</think>\\n**Final Answer**\\boxed{answer}"`.

    The thinking is the problem's step-by-step solution followed by `checks` rounds of
    re-checking every step, so its length grows with both `num_steps` and `checks` (roughly
    15 tokens per step and round on a GPT-2-style tokenizer): `checks` dials the length without
    changing the problem or the answer.

    >>> t = make_trace(1, 0)
    >>> t["response"].startswith("<think>\\n") and t["response"].endswith("}")
    True
    """
    problem = make_problem(seed, index, num_steps)
    lines = ["Let me work through this step by step.", *problem.steps]
    for round_ in range(1, checks + 1):
        lines.append(f"Let me check the steps again (check {round_}).")
        lines.extend(f"Check: {step}" for step in problem.steps[1:-1])
        lines.append(f"The result is still {problem.answer}.")
    thinking = "\n".join(lines)
    return {
        "id": problem.id,
        "question": problem.question,
        "response": f"<think>\n{thinking}\n</think>\n{ANSWER_TAIL}{{{problem.answer}}}",
        "answer": problem.answer,
    }


def synthetic_traces(
    n: int, seed: int = 1, num_steps: int = 3, checks: int | tuple[int, int] = 0
) -> list[dict[str, str]]:
    """The first `n` traces of set `seed`; `checks` is a fixed number or an inclusive
    `(low, high)` range drawn per trace (deterministically), for a spread of lengths.

    Seed 1 by default, so the traces are not the evaluation's default problems (seed 0).
    """
    if isinstance(checks, tuple):
        low, high = checks
        rng = random.Random(f"checks:{seed}:{low}:{high}")
        counts = [rng.randint(low, high) for _ in range(n)]
    else:
        counts = [checks] * n
    return [make_trace(seed, i, num_steps, c) for i, c in enumerate(counts)]
