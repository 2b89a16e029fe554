"""`cts --compat cts` against LLMLingua's procedure as CTS calls it, re-implemented here.

The reference below is written from LLMLingua's documented behaviour (issue 20 item 4,
docs/stages/cts.md, the reference note tale_cts.md B.2), in plain lists and Python slices: no
code from LLMLingua and none from `budgetthinker.sft.cts_compat`. Both sides are driven by the
same deterministic "model" (a hash of the whole prefix and the token, so a wrong prefix changes
every score), so kept token indices must agree exactly — on traces shorter than one window,
between one and two windows and over several, at CTS's iterative_size 1800 and at small sizes
that walk every length around the window edges, with SmolLM2's tokenizer and DeepSeek's.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from budgetthinker.sft.cts import Compressor, CTSOptions, JobBuilder, final_part
from budgetthinker.sft.cts_compat import (
    LinguaRun,
    TraceRefused,
    fit_prefix,
    lingua_fraction,
    prefix_length,
    threshold,
    window_sizes,
)
from budgetthinker.synthetic import make_trace
from tests.conftest import SHARED_TOKENIZER

_MOD = 2**61 - 1


def _step(state: int, token: int) -> int:
    return (state * 1_000_003 + token + 1) % _MOD


def _hash_logprob(state: int, token: int) -> float:
    """≤ 0, exactly 0 about once in 997 (LLMLingua keeps a prefix token only if its loss > 0)."""
    return -(((state * 31 + token) * 2_654_435_761) % 997) / 97


class HashScorer:
    """The scorer interface `Compressor` uses, with `_hash_logprob` as the model."""

    def __init__(self, tokenizer, max_positions: int | None = None):
        self.tokenizer = tokenizer
        self.max_positions = max_positions
        self.special_prefix = list(tokenizer("", add_special_tokens=True).input_ids)

    def score(self, pairs):
        out = []
        for context, targets in pairs:
            state = 0
            for t in context:
                state = _step(state, t)
            lps = []
            for t in targets:
                lps.append(_hash_logprob(state, t))
                state = _step(state, t)
            out.append(torch.tensor(lps, dtype=torch.float32))
        return out


def hash_losses(tokens: list[int]) -> list[np.float32]:
    """Loss of tokens[k + 1] after tokens[: k + 1], for every k (one pass over the sequence)."""
    losses, state = [], 0
    for k in range(len(tokens) - 1):
        state = _step(state, tokens[k])
        losses.append(np.float32(-np.float32(_hash_logprob(state, tokens[k + 1]))))
    return losses


# ── the reference: LLMLingua's procedure as documented ───────────────────────────────────────


def reference_windows(own: int, size: int) -> list[int]:
    """The context counts own + 2 tokens after one already seen; the first window takes what
    is left of `size`, then whole windows while more than a window remains, then the rest."""
    length = own + 2
    if length < size - 1:
        return [length]
    widths, left = [size - 1], length - (size - 1)
    while left > size:
        widths.append(size)
        left -= size
    return widths + ([left] if left else [])


def reference_start(tok, prefix: str, text: str) -> int | None:
    """LLMLingua's prefix search: from 3 tokens before the prefix's own length, the first cut
    whose decode is the prefix; the rest must decode to the text's first 100 characters."""
    ids = tok(prefix + text[:100], add_special_tokens=False).input_ids
    lo = max(len(tok(prefix, add_special_tokens=False).input_ids) - 3, 1)
    cuts = [i for i in range(lo, len(ids)) if tok.decode(ids[:i]) == prefix]
    cut = cuts[0] if cuts else len(ids) - 1
    if lo >= len(ids) or tok.decode(ids[cut:]) != text[:100]:
        return None
    return cut


def reference_compress(ids, start, widths, tau, size, losses, conditional=True):
    """Kept thinking indices. `losses(tokens)` = loss of each token after the ones before it."""
    seq = list(range(len(ids)))  # the compressed sequence (positions in ids)
    own = seq[start:]  # the thinking alone, for the pass without the answer
    cond_loss, own_loss = [], []
    end, ready, own_ready, step = min(size + start, len(ids)), 0, 0, 0
    while end <= len(seq):
        fresh = losses([ids[p] for p in (seq if step == 0 else seq[:end])])
        if not fresh:
            break
        if step == 0:
            cond_loss = fresh
        else:  # everything from the previous window's start is rescored, the rest stays
            cond_loss[ready : end - 1] = fresh[ready : end - 1]
        if conditional:
            fresh = losses([ids[p] for p in (own if step == 0 else own[: end - start])])
            if step == 0:
                own_loss = fresh
            else:
                own_loss[own_ready : end - start - 1] = fresh[own_ready : end - start - 1]
        first_with_answer = start and step == 0
        ready = 0 if first_with_answer else end - size
        own_ready = 0 if first_with_answer else end - start - size
        width = widths[step]
        if conditional:
            scores = [np.float32(a - b) for a, b in zip(own_loss, cond_loss[start:], strict=True)]
        else:
            scores = list(cond_loss)
        if tau == 1:
            cut = -np.inf
        else:
            m = len(scores)
            cut = sorted(scores, reverse=True)[max(0, min(m - 1, int(m * tau) - 1))]
        # position p is decided by the score of token p + 1 (the shifted mask)
        keep = [x > 0 for x in cond_loss[:start]] + [s > cut for s in scores]
        keep.append(cond_loss[0] > 0)
        e = end - size + width
        keep[e:] = [True] * len(keep[e:])
        keep[: e - width] = [True] * len(keep[: e - width])
        cond_loss = [x for x, k in zip(cond_loss, keep[:-1], strict=True) if k]
        if conditional:
            own_loss = [x for x, k in zip(own_loss, keep[start:-1], strict=True) if k]
            own = [p for p, k in zip(own, keep[start:], strict=True) if k]
        seq = [p for p, k in zip(seq, keep, strict=True) if k]
        end = e - keep[:e].count(False) + size
        step += 1
    return [p - start for p in seq[start:]]


def reference_case(tok, raw: dict, rate: float, size: int, conditional=True, max_thinking=5000):
    """What CTS's script keeps for one trace (None where LLMLingua raises)."""
    from budgetthinker.sft.data import parse_trace

    trace = parse_trace(raw)
    thinking = tok.decode(tok(trace.thinking, add_special_tokens=False).input_ids[:max_thinking])
    answer = final_part(raw).strip()
    prefix = answer + "\n\n" if conditional else ""
    start = reference_start(tok, prefix, thinking) if conditional else 0
    if start is None:
        return None
    ids = tok(prefix + thinking, add_special_tokens=False).input_ids
    own = len(tok(thinking, add_special_tokens=False).input_ids)
    n_empty = len(tok("").input_ids)
    n_question = len(tok(answer).input_ids) if conditional else n_empty
    target = (n_empty + n_question + len(tok(thinking).input_ids)) * rate - n_empty
    tau = max(min(1, target / (own + 3)), 0)
    widths = reference_windows(own, size)
    try:
        return reference_compress(ids, start, widths, tau, size, hash_losses, conditional)
    except IndexError:  # ranking an empty buffer
        return None


def ours(tok, rows, ratios, size, scorer="conditional", max_positions=None):
    opts = CTSOptions(ratios=ratios, compat=["cts"], iterative_size=size, scorer=scorer)
    fake = HashScorer(tok, max_positions)
    builder = JobBuilder(tok, opts, max_positions)
    jobs = [builder.build(r, r["id"]) for r in rows]
    Compressor(fake, opts).compress([j for j in jobs if j is not None])
    return jobs, builder


# ── tokenizers ───────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module", params=["smollm2", "deepseek"])
def tok(request):
    from transformers import AutoTokenizer

    if request.param == "smollm2":
        from budgetthinker.preparation.embedded_model import default_base_dir

        return AutoTokenizer.from_pretrained(default_base_dir())
    if not (SHARED_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"no DeepSeek tokenizer at {SHARED_TOKENIZER}")
    return AutoTokenizer.from_pretrained(SHARED_TOKENIZER)


def _words(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    words = [rng.choice(["step", "so", "then", "check", "7", "+", "=", "again"]) for _ in range(n)]
    thinking = "Okay " + " ".join(words)
    return {
        "id": f"w{n}-{seed}",
        "question": "q?",
        "response": f"<think>\n{thinking}\n</think>\n**Final Answer**\\boxed{{{n % 10}}}",
    }


def _agree(tok, rows, ratios, size, scorer="conditional"):
    jobs, _ = ours(tok, rows, ratios, size, scorer)
    same = total = 0
    for raw, job in zip(rows, jobs, strict=True):
        for ratio in ratios:
            expected = reference_case(tok, raw, ratio, size, scorer == "conditional")
            run = None if job is None else next(r for r in job.runs if r.ratio == ratio)
            got = None if run is None or run.failed else run.kept
            total += 1
            same += got == expected
            assert got == expected, (raw["id"], ratio, size, len(job.ids) if job else None)
    return same, total


# ── agreement ────────────────────────────────────────────────────────────────────────────────


def test_cts_settings_short_between_and_several_windows(tok):
    """iterative_size 1800 on synthetic traces below one window, between one and two, and
    over several (cut at 5000 tokens)."""
    rows = [make_trace(1, 0, 3, 1), make_trace(1, 1, 4, 20), make_trace(1, 2, 4, 50)]
    jobs, _ = ours(tok, rows, (0.6, 0.8), 1800)
    lengths = [len(j.ids) for j in jobs]
    assert lengths[0] < 1800 < lengths[1] < 3600 < lengths[2], lengths
    assert _agree(tok, rows, (0.6, 0.8), 1800) == (6, 6)


@pytest.mark.parametrize("size", [6, 7, 9, 12])
def test_every_length_around_the_window_edges(tok, size):
    """Thinking of 1 … 4 windows + 3 tokens: the negative window arithmetic below one window,
    the first window's iterative_size − 1, the untouched last partial window."""
    rows = [_words(n, size) for n in range(1, 4 * size + 3)]
    ratios = (0.3, 0.6, 0.9, 1.0)
    same, total = _agree(tok, rows, ratios, size)
    assert same == total


@pytest.mark.parametrize("size", [7, 10])
def test_self_information_is_the_llmlingua_rm_ablation(tok, size):
    rows = [_words(n, 100 + size) for n in range(1, 3 * size + 3)]
    same, total = _agree(tok, rows, (0.5, 0.8), size, scorer="self_information")
    assert same == total


def test_random_traces_and_ratios(tok):
    rng = random.Random(7)
    for _ in range(6):
        size = rng.randint(5, 40)
        rows = [_words(rng.randint(1, 5 * size), rng.randint(0, 10**6)) for _ in range(4)]
        ratios = tuple(sorted({round(rng.uniform(0.05, 1.0), 3) for _ in range(3)}))
        same, total = _agree(tok, rows, ratios, size)
        assert same == total


# ── the pieces, against what the documentation says ─────────────────────────────────────────


def test_short_traces_come_out_of_cts_almost_whole(tok):
    """At iterative_size 1800 a thinking of a few hundred tokens keeps everything (the
    window's bounds computed from end − 1800 leave nothing droppable)."""
    rows = [make_trace(1, i, 3, i % 3) for i in range(6)]
    jobs, _ = ours(tok, rows, (0.5, 0.6, 0.8), 1800)
    for job in jobs:
        for run in job.runs:
            assert run.kept == list(range(len(job.ids)))
            assert run.text == tok.decode(job.ids)


def test_joint_tokenization_and_empty_unconditional_prefix(tok):
    raw = make_trace(1, 3, 3, 0)
    [job], _ = ours(tok, [raw], (0.5,), 1800)
    answer = final_part(raw).strip()
    joint = tok(answer + "\n\n" + job.thinking, add_special_tokens=False).input_ids
    assert job.joint == joint and job.ids == joint[job.start :]
    assert tok.decode(joint[: job.start]) == answer + "\n\n"
    assert job.condition == joint[: job.start]
    # the first pass: the whole joint text, and the thinking with nothing before it
    fresh = LinguaRun(job.joint, job.start, job.lingua_windows, 0.5, 1800, conditional=True)
    assert fresh.requests() == [(joint[:1], joint[1:]), (job.ids[:1], job.ids[1:])]


def test_target_counts_special_tokens_and_the_answer(tok):
    rate, thinking, answer = 0.5, "Okay so 3 + 4 = 7.", "**Final Answer**\\boxed{7}"
    n = len(tok(thinking, add_special_tokens=False).input_ids)
    specials = len(tok("").input_ids)
    got = lingua_fraction(
        rate, specials, len(tok(answer).input_ids), len(tok(thinking).input_ids), n
    )
    a = len(tok(answer, add_special_tokens=False).input_ids)
    expected = ((3 * specials + a + n) * rate - specials) / (n + 3)
    assert got == pytest.approx(min(1, expected))


def test_window_lists():
    for own in range(0, 200):
        for size in (3, 5, 8, 18, 50):
            assert window_sizes(own, size) == reference_windows(own, size), (own, size)
    assert window_sizes(100, 1800) == [102]
    assert window_sizes(5000, 1800) == [1799, 1800, 1403]


def test_threshold_rank_rule():
    buffer = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.0, -1.0, 6.0, 7.0, 8.0])
    assert threshold(buffer, 0.6) == 3.0  # int(10·0.6) − 1 = 5 → the 6th largest
    assert threshold(buffer, 1) == float("-inf")
    assert threshold(buffer, 0.05) == 8.0  # rank clamped to 0: nothing strictly above
    assert threshold(torch.tensor([10000.0, 1.0, 2.0]), 0.7) == 2.0  # 10000 is left out
    with pytest.raises(TraceRefused):
        threshold(torch.zeros(0), 0.5)


def test_prefix_search_refuses_where_llmlingua_raises(tok):
    assert prefix_length(tok, "x = 7\n\n", "Okay") == reference_start(tok, "x = 7\n\n", "Okay")
    text = "\nOkay so"  # a thinking starting with a newline merges into "\n\n" on Qwen
    expected = reference_start(tok, "x = 7\n\n", text)
    if expected is None:
        with pytest.raises(TraceRefused):
            prefix_length(tok, "x = 7\n\n", text)
    else:
        assert prefix_length(tok, "x = 7\n\n", text) == expected


def test_a_long_answer_is_cut_as_llmlingua_cuts_it(tok):
    answer = " ".join(f"w{i}" for i in range(400))
    ids = tok(answer, add_special_tokens=False).input_ids
    size, positions = 10, len(ids) + 5  # answer + "\n\n" + two windows do not fit
    expected = tok.decode(ids[:100] + ids[len(ids) - positions + 2 + 100 + 2 * size :])
    assert fit_prefix(tok, answer, size, positions) == expected
    assert fit_prefix(tok, answer, size, 10**6) == answer
    assert fit_prefix(tok, answer, size, None) == answer


def test_traces_llmlingua_cannot_take_are_dropped_and_named(tok):
    rows = [_words(40, 1)]
    _, builder = ours(tok, rows, (0.5,), 8, max_positions=20)
    assert builder.dropped == {"beyond_positions": 1}
    one = dict(_words(1, 2), response="<think>\nOkay\n</think>\n\\boxed{7}")
    jobs, builder = ours(tok, [one], (0.05, 1.0), 1800)
    [job] = jobs
    assert len(job.ids) == 1 and job.runs[0].fraction < 1 == job.runs[1].fraction
    # a one-token thinking at τ < 1: LLMLingua ranks an empty buffer and raises
    assert [r.failed for r in job.runs] == [True, False]


def test_compat_rows_record_what_cts_wrote(tok, tmp_path):
    from budgetthinker.sft.cts import output_row

    rows = [make_trace(1, 4, 2, 1)]
    jobs, _ = ours(tok, rows, (0.6,), 12)
    opts = CTSOptions(ratios=(0.6,), compat=["cts"], iterative_size=12, save_scores=True)
    [job] = jobs
    row = output_row(job, job.runs[0], opts, {"scorer": "conditional"})
    rec = row["cts"]
    assert rec["windows"] == len(job.lingua_windows) and rec["windows_compressed"] >= 1
    assert rec["settings"] == {"scorer": "conditional"}
    assert len(rec["scores"]) == len(job.ids) and None in rec["scores"]
    thinking = row["response"].split("<think>\n")[1].split("\n</think>")[0]
    assert thinking == tok.decode([job.ids[i] for i in rec["kept"]]).strip()
    json.dumps(row)


# ── the real reference model ─────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def smol():
    from budgetthinker.preparation.embedded_model import default_base_dir
    from budgetthinker.sft.cts_scoring import TokenScorer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TokenScorer(default_base_dir(), device="cpu", batch_tokens=4096)
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("size", [24, 1800])
def test_the_real_model_agrees_with_the_reference(smol, size):
    """SmolLM2 as reference model: our batched passes vs one plain forward per pass."""

    def model_losses(tokens: list[int]) -> list[np.float32]:
        with torch.no_grad():
            logits = smol.model(torch.tensor([tokens])).logits[0].float()
        lp = logits.log_softmax(-1)
        return [np.float32(-lp[k, tokens[k + 1]].item()) for k in range(len(tokens) - 1)]

    rows = [make_trace(2, i, 3, i % 2) for i in range(3)]
    opts = CTSOptions(ratios=(0.5, 0.8), compat=["cts"], iterative_size=size)
    builder = JobBuilder(smol.tokenizer, opts, smol.max_positions)
    jobs = [builder.build(r, r["id"]) for r in rows]
    Compressor(smol, opts).compress(jobs)
    tok = smol.tokenizer
    for job in jobs:
        widths = window_sizes(job.lengths[3], size)
        for run in job.runs:
            expected = reference_compress(
                job.joint, job.start, widths, run.fraction, size, model_losses
            )
            assert run.kept == expected, (job.key, run.ratio)
            assert run.text == tok.decode([job.ids[i] for i in expected])
            if size == 1800:
                assert expected == list(range(len(job.ids)))  # short traces: kept whole
            else:
                assert run.lingua.step >= 3 and len(expected) < len(job.ids)
