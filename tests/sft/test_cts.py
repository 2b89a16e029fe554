"""CTS on the real embedded model (SmolLM2-135M as the reference model).

The scores are checked against plain forward passes written here; the windowed rule against a
slow re-implementation that scores every window on its own (no batching, padding, dedup or
chunked output projection); resume against a real SIGKILL.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from budgetthinker.cli import main
from budgetthinker.errors import UserError
from budgetthinker.sft.cts import (
    AppendOnlyJsonl,
    Compressor,
    CTSOptions,
    JobBuilder,
    final_part,
    output_paths,
    output_row,
    select_quota,
    window_bounds,
)
from budgetthinker.synthetic import make_trace

REPO = Path(__file__).resolve().parents[2]

# ── selection rules, no model ────────────────────────────────────────────────────────────────


def test_quota_keeps_the_ratio_within_one_token_per_window():
    gen = torch.Generator().manual_seed(0)
    for n, size in ((1, 5), (7, 3), (100, 18), (101, 1800)):
        scores = torch.randn(n, generator=gen)
        for ratio in (0.05, 0.33, 0.5, 0.6, 0.9, 1.0):
            kept = []
            for a, b in window_bounds(n, size):
                win = select_quota(scores[a:b], a, b, ratio)
                assert abs(len(win) - ratio * (b - a)) <= 1
                kept += win
            assert kept == sorted(set(kept))
            assert abs(len(kept) - ratio * n) <= 0.5, (n, size, ratio)


def test_quota_keeps_the_top_scores_ties_to_the_earlier_token():
    scores = torch.tensor([0.5, 2.0, 0.5, 3.0, 0.5])
    # window [10, 15) at 0.6: round(9) − round(6) = 3 tokens: 13 (3.0), 11 (2.0), 10 (first 0.5)
    assert select_quota(scores, 10, 15, 0.6) == [10, 11, 13]
    assert select_quota(torch.tensor([1.0, 1.0, 1.0]), 0, 3, 0.34) == [0]


def test_an_unknown_compat_name_or_a_setting_cts_lacks_is_one_line():
    with pytest.raises(UserError, match="--compat: no switch for 'none' here; .* cts \\(CTS"):
        CTSOptions(ratios=(0.5,), compat="none")
    with pytest.raises(UserError, match="--long drop has no counterpart in CTS"):
        CTSOptions(ratios=(0.5,), compat="cts", long="drop")


def test_output_paths_and_final_part(tmp_path):
    assert output_paths(tmp_path / "c.jsonl", [0.6]) == {0.6: tmp_path / "c.jsonl"}
    assert output_paths(tmp_path / "c.jsonl", [0.6, 0.655]) == {
        0.6: tmp_path / "c_r60.jsonl",
        0.655: tmp_path / "c_r65.5.jsonl",
    }
    assert final_part({"response": "<think>a</think>\nB"}) == "\nB"
    assert final_part({"thinking": "a", "response": "final"}) == "final"
    assert final_part({"question": "q", "answer": "x</think>y"}) == "y"


def test_append_only_file_cuts_a_half_written_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "resp')
    writer = AppendOnlyJsonl(path)
    assert writer.done == {"a", "b"}
    assert path.read_text().endswith('"resp')  # reading changes nothing
    writer.write({"id": "c"})
    writer.close()
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "ratio, ref, traces, message",
    [
        ("0", "default", "t.jsonl", "--ratio must be in (0, 1]"),
        ("1.5", "default", "t.jsonl", "--ratio must be in (0, 1]"),
        ("abc", "default", "t.jsonl", "--ratio must be a number"),
        ("0.6", "missing", "t.jsonl", "reference model"),
        ("0.6", "default", "none.jsonl", "does not exist"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, ratio, ref, traces, message):
    (tmp_path / "t.jsonl").write_text(json.dumps(make_trace(1, 0)) + "\n")
    ref = ref if ref == "default" else str(tmp_path / ref)
    argv = ["cts", "--ref-model", ref, "--traces", str(tmp_path / traces), "--ratio", ratio]
    assert main([*argv, "--out", str(tmp_path / "c.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "c.jsonl").exists()


# ── the real reference model ─────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def scorer():
    """The embedded SmolLM2 as reference model, on one CPU thread while this module runs:
    forwards of ~100 tokens gain nothing from two, and on a shared CPU two threads spin."""
    from budgetthinker.preparation.embedded_model import default_base_dir
    from budgetthinker.sft.cts_scoring import TokenScorer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TokenScorer(default_base_dir(), device="cpu", batch_tokens=4096)
    torch.set_num_threads(threads)


def direct_logprobs(model, context: list[int], targets: list[int]) -> torch.Tensor:
    """log p(targets[j] | context, targets[:j]) from one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([context + targets])).logits[0].float()
    lp = logits.log_softmax(-1)
    return torch.stack([lp[len(context) - 1 + j, t] for j, t in enumerate(targets)])


def contexts(scorer, cond_text: str) -> tuple[list[int], list[int]]:
    tok = scorer.tokenizer
    sep = tok("\n\n", add_special_tokens=False).input_ids
    start = tok("", add_special_tokens=True).input_ids
    return start + tok(cond_text, add_special_tokens=False).input_ids + sep, start + sep


def direct_scores(scorer, ids, cond_ctx, plain_ctx, scorer_name) -> torch.Tensor:
    plain = direct_logprobs(scorer.model, plain_ctx, ids)
    if scorer_name == "self_information":
        return -plain
    return direct_logprobs(scorer.model, cond_ctx, ids) - plain


def compress(ref, rows, **opts):
    options = CTSOptions(**opts)
    builder = JobBuilder(ref.tokenizer, options)
    jobs = [builder.build(r, r["id"]) for r in rows]
    Compressor(ref, options).compress(jobs)
    return jobs, options


TRACES = [make_trace(1, i, 2) for i in range(2)]
TRACES.append(
    {
        "id": "unicode",
        "question": "What is 3 × 4?",
        "response": "<think>\nThree × four 😀 is twelve, so 3 × 4 = 12 — done.\n</think>\n"
        "**Final Answer**\\boxed{12}",
    }
)


@pytest.mark.slow
@pytest.mark.parametrize("scorer_name", ["conditional", "self_information"])
def test_scores_equal_two_plain_forward_passes(scorer, scorer_name):
    jobs, opts = compress(
        scorer, TRACES, ratios=(0.5, 0.8, 1.0), scorer=scorer_name, save_scores=True
    )
    for job in jobs:
        assert len(job.windows) == 1
        cond_ctx, plain_ctx = contexts(scorer, job.tail)
        expected = direct_scores(scorer, job.ids, cond_ctx, plain_ctx, scorer_name)
        for run in job.runs:
            row = output_row(job, run, opts)
            got = torch.tensor(row["cts"]["scores"])
            assert torch.allclose(got, expected, atol=2e-3), (got - expected).abs().max()
            n = len(job.ids)
            assert len(run.kept) == math.floor(run.ratio * n + 0.5)  # the ratio, exactly
            # every kept token scores at least as high as every dropped one
            dropped = sorted(set(range(n)) - set(run.kept))
            if run.kept and dropped:
                assert min(expected[run.kept]) >= max(expected[dropped]) - 2e-3


@pytest.mark.slow
def test_output_is_the_original_text_at_token_boundaries(scorer):
    jobs, opts = compress(scorer, TRACES, ratios=(0.4, 1.0), save_scores=True)
    for job, raw in zip(jobs, TRACES, strict=True):
        original = raw["response"].split("<think>")[1].split("</think>")[0].strip()
        enc = scorer.tokenizer(original, add_special_tokens=False, return_offsets_mapping=True)
        ends = [e for _, e in enc["offset_mapping"]]
        for run in job.runs:
            row = output_row(job, run, opts)
            thinking = row["response"].split("<think>\n")[1].split("\n</think>")[0]
            spans = [original[ends[i - 1] if i else 0 : ends[i]] for i in row["cts"]["kept"]]
            assert thinking == "".join(spans).strip()
            assert "\ufffd" not in thinking  # no character cut in half (😀 is two byte tokens)
            if run.ratio == 1.0:
                assert thinking == original
            assert row["response"].endswith("\n</think>\n" + raw["response"].split("</think>\n")[1])


def slow_windowed(scorer, job, ratio: float, size: int) -> list[int]:
    """The windowed rule written out: each window scored on its own with two plain passes."""
    cond_ctx, plain_ctx = contexts(scorer, job.tail)
    ids, n = job.ids, len(job.ids)
    kept: list[int] = []
    for a in range(0, n, size):
        b = min(a + size, n)
        targets = [ids[i] for i in kept] + ids[a:b]
        scores = direct_scores(scorer, targets, cond_ctx, plain_ctx, "conditional").tolist()
        window = scores[len(kept) :]
        quota = math.floor(ratio * b + 0.5) - math.floor(ratio * a + 0.5)
        best = sorted(range(b - a), key=lambda j: (-window[j], j))[:quota]
        kept += sorted(a + j for j in best)
    return kept


@pytest.mark.slow
def test_several_windows_agree_with_a_slow_reimplementation(scorer):
    trace = make_trace(1, 5, 2)  # 81 thinking tokens: 4 windows of 24
    size = 24
    jobs, _ = compress(scorer, [trace], ratios=(0.5, 0.7), iterative_size=size)
    [job] = jobs
    assert len(job.windows) >= 4
    for run in job.runs:
        assert run.kept == slow_windowed(scorer, job, run.ratio, size), run.ratio
        assert abs(len(run.kept) - run.ratio * len(job.ids)) <= 0.5


@pytest.mark.slow
@pytest.mark.parametrize("scorer_name", ["conditional", "self_information"])
def test_window_cache_reuse_scores_what_scoring_from_scratch_does(scorer, scorer_name):
    """Windows continued from the previous window's KV cache against every window encoded from
    scratch: same kept tokens, same scores to float32 rounding (attention over a cached prefix
    sums in another order, so bit-identity is not promised; the observed gap is ~1e-6)."""
    trace = make_trace(1, 5, 2)  # 81 thinking tokens: 5 windows of 18
    options = CTSOptions(ratios=(0.4, 0.7, 1.0), scorer=scorer_name, iterative_size=18)
    builder = JobBuilder(scorer.tokenizer, options)
    runs = {}
    for reuse in (True, False):
        job = builder.build(trace, "t")
        before = scorer.stats.tokens
        compressor = Compressor(scorer, options, reuse_cache=reuse)
        assert compressor.reuse_cache == reuse
        compressor.compress([job])
        runs[reuse] = (job.runs, scorer.stats.tokens - before)
    assert len(job.windows) == 5
    (cached, cached_tokens), (scratch, scratch_tokens) = runs[True], runs[False]
    for a, b in zip(cached, scratch, strict=True):
        assert a.kept == b.kept, a.ratio
        assert a.scores.keys() == b.scores.keys() == set(range(len(job.ids)))
        gap = max(abs(a.scores[i] - b.scores[i]) for i in a.scores)
        assert gap < 1e-4, (a.ratio, gap)
    assert cached_tokens < scratch_tokens  # the kept prefixes were not encoded again


def test_score_continuing_takes_the_shared_prefix_from_the_cache(scorer):
    ids = scorer.tokenizer("Two plus two is four, and four plus four is eight.").input_ids
    first, cache = scorer.score_continuing(ids[:8], 5, None)
    before = scorer.stats.tokens
    again, _ = scorer.score_continuing(ids, len(ids) - 6, cache)
    # the cache holds ids[:8]; ids[5] precedes the first target, so it is fed again
    assert scorer.stats.tokens - before == len(ids) - 5
    plain = scorer.score([(ids[:6], ids[6:])])[0]
    assert torch.allclose(again, plain, atol=1e-4)
    assert torch.allclose(first, scorer.score([(ids[:3], ids[3:8])])[0], atol=1e-4)


def _tiny_wordlevel_model(folder: Path, text: str) -> None:
    """A reference model whose tokenizer knows only the words of `text` (others → [UNK])."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for w, _ in Whitespace().pre_tokenize_str(text)})
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[BOS]", *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]"
    )
    tok.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


@pytest.mark.slow
def test_unencodable_and_unfinished_traces_are_dropped_and_counted(tmp_path, capsys):
    good = make_trace(1, 0, 1)
    _tiny_wordlevel_model(tmp_path / "ref", good["question"] + good["response"])
    bad = dict(make_trace(1, 1, 1), response="<think>\nZyzzyva quux.\n</think>\\boxed{1}")
    unfinished = dict(make_trace(1, 2, 1), response="<think>\nno end tag")
    traces = tmp_path / "t.jsonl"
    rows = (good, bad, unfinished, good)  # the second `good` repeats an id
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c.jsonl"
    argv = ["cts", "--ref-model", str(tmp_path / "ref"), "--traces", str(traces)]
    assert main([*argv, "--out", str(out), "--ratio", "0.5", "--no-progress"]) == 0
    stats = json.loads((tmp_path / "c.stats.json").read_text())
    assert stats["dropped"] == {"duplicate_id": 1, "no_think_end": 1, "unencodable": 1}
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [good["id"]]
    # nothing encodable at all: one line naming the reasons
    traces.write_text(json.dumps(bad) + "\n")
    assert main([*argv, "--out", str(tmp_path / "d.jsonl"), "--ratio", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no trace was compressed" in err and "unencodable: 1" in err


def _ids(path: Path) -> list[str]:
    return [json.loads(x)["id"] for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_resume_after_sigkill_loses_nothing_and_scores_nothing_twice(tmp_path):
    rows = [make_trace(2, i, 1) for i in range(4)]
    traces = tmp_path / "t.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "budgetthinker.cli",
        "cts",
        "--ref-model",
        "default",
        "--traces",
        str(traces),
        "--out",
        str(out),
        "--ratio",
        "0.5",
        "--ratio",
        "0.8",
        "--chunk",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    files = list(output_paths(out, [0.5, 0.8]).values())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if files[0].is_file() and files[0].read_text().count("\n") >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    if proc.returncode == 0:  # finished before the kill: keep one row, as a kill would
        for f in files:
            f.write_text(f.read_text().splitlines(keepends=True)[0])
    else:
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    with files[1].open("a") as f:
        f.write('{"id": "half-written')  # a row cut by the kill
    done_before = set(_ids(files[0])) & {
        json.loads(x)["id"] for x in files[1].read_text().splitlines()[:-1]
    }
    assert 1 <= len(done_before) < len(rows)
    assert subprocess.run(cmd, cwd=REPO, env=env, capture_output=True).returncode == 0
    for f in files:
        ids = _ids(f)
        assert sorted(ids) == sorted(r["id"] for r in rows)  # each exactly once
    stats = json.loads((tmp_path / "c.stats.json").read_text())
    run = stats["this_run"]
    assert run["traces_skipped_as_done"] == len(done_before)
    assert run["traces_scored"] == len(rows) - len(done_before)
    assert stats["ratios"]["0.5"]["traces"] == len(rows)


# ── resume safety: settings recorded in every row, one run per output file ──────────────────


def _cts_argv(tmp_path, *extra: str) -> list[str]:
    traces = tmp_path / "t.jsonl"
    if not traces.exists():
        traces.write_text("".join(json.dumps(make_trace(3, i, 1)) + "\n" for i in range(2)))
    return [
        "cts", "--ref-model", "default", "--traces", str(traces), "--device", "cpu",
        "--no-progress", *extra,
    ]  # fmt: skip


def _prior_row(tmp_path, **changes) -> dict:
    from budgetthinker.preparation.embedded_model import default_base_dir
    from budgetthinker.sft.cts import run_settings

    settings = run_settings(default_base_dir(), CTSOptions(ratios=(0.6,)), "float32")
    return {"id": "x", "question": "q", "response": "r", "cts": {"ratio": 0.6, "settings": {
        **settings, **changes}}}  # fmt: skip


@pytest.mark.parametrize(
    "changes, extra, named",
    [
        ({"scorer": "self_information"}, [], "scorer 'self_information' → 'conditional'"),
        ({}, ["--compat", "cts"], "compat [] → ['cts']"),
        ({}, ["--iterative-size", "900"], "iterative_size 1800 → 900"),
        ({"ref_model": "/elsewhere"}, [], "ref_model '/elsewhere' →"),
        (None, [], "no settings recorded"),
    ],
)
def test_a_resume_with_other_settings_is_refused_and_changes_nothing(
    tmp_path, capsys, changes, extra, named
):
    out = tmp_path / "c.jsonl"
    row = _prior_row(tmp_path, **(changes or {}))
    if changes is None:
        del row["cts"]["settings"]
    before = json.dumps(row) + "\n" + '{"id": "y", "half'
    out.write_text(before)
    assert main([*_cts_argv(tmp_path, "--ratio", "0.6", *extra), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and named in err and "use another --out" in err, err
    assert out.read_text() == before  # not even the half-written line was cut
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "t.jsonl"]


def test_a_resume_with_another_ratio_for_the_same_file_is_refused(tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    out.write_text(json.dumps(_prior_row(tmp_path)) + "\n")
    assert main([*_cts_argv(tmp_path, "--ratio", "0.8"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "ratio 0.6 → 0.8" in err and "\n" not in err


def test_an_output_file_in_use_is_refused(tmp_path, capsys):
    from budgetthinker.outputs import FolderLock

    # another run writes c_r60.jsonl (its --out c.jsonl with two ratios)
    with FolderLock(tmp_path, "other", name=".c_r60.jsonl.lock"):
        argv = _cts_argv(tmp_path, "--ratio", "0.6")
        assert main([*argv, "--out", str(tmp_path / "c_r60.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "c_r60.jsonl is already being run (pid" in err and "use another --out" in err
    assert "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


@pytest.mark.slow
def test_real_runs_record_settings_refuse_changes_and_resume(tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    argv = [*_cts_argv(tmp_path, "--ratio", "0.6", "--ratio", "0.8"), "--out", str(out)]
    assert main(argv) == 0
    files = list(output_paths(out, [0.6, 0.8]).values())
    rows = [json.loads(x) for x in files[0].read_text().splitlines()]
    assert {r["cts"]["settings"]["scorer"] for r in rows} == {"conditional"}
    before = [f.read_bytes() for f in files]
    capsys.readouterr()  # the first run's progress output
    assert main([*argv, "--scorer", "self_information"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scorer 'conditional' → 'self_information'" in err[0]
    assert [f.read_bytes() for f in files] == before
    assert main(argv) == 0  # the same settings: everything is already done
    stats = json.loads((tmp_path / "c.stats.json").read_text())
    assert stats["this_run"]["traces_skipped_as_done"] == 2
    assert stats["options"]["scorer"] == "conditional"
    assert [f.read_bytes() for f in files] == before
    assert not list(tmp_path.glob(".*.lock"))


@pytest.mark.slow
def test_two_concurrent_runs_on_one_out_cannot_interleave(tmp_path):
    out = tmp_path / "c.jsonl"
    argv = [*_cts_argv(tmp_path, "--ratio", "0.5"), "--out", str(out), "--chunk", "1"]
    cmd = [sys.executable, "-m", "budgetthinker.cli", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock = tmp_path / ".c.jsonl.lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert lock.exists(), "the first run never took its lock"
    # the first run holds the lock from before its model loads until its stats are written
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(err) == 1, second.stderr
    assert "c.jsonl is already being run (pid" in err[0] and str(first.pid) in err[0]
    ids = _ids(out)
    assert sorted(ids) == sorted({*ids}) and len(ids) == 2  # every trace once
    assert not lock.exists()
