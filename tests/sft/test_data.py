"""SFT data builder: exact control-token positions for many lengths and both budget rules,
drops reported (not crashed), output files LLaMA-Factory reads."""

from __future__ import annotations

import itertools
import json

import pytest

from budgetthinker.control_spec import parse_mode
from budgetthinker.errors import UserError
from budgetthinker.prompts import user_content
from budgetthinker.sft.data import (
    V2_BINS,
    TraceBuilder,
    budget_for,
    build_dataset,
    insertion_points,
    parse_trace,
    read_jsonl,
)
from budgetthinker.synthetic import make_trace, synthetic_traces
from tests.conftest import SHARED_TOKENIZER

pytest.importorskip("transformers")


def test_budget_rules():
    for length in range(0, 10500, 7):
        b1 = budget_for(length, "v1")
        assert b1 % 50 == 0 and length < b1 <= length + 50
        b2 = budget_for(length, "v2")
        if length >= 10000:
            assert b2 is None
        else:
            assert b2 > length and all(b <= length for b in V2_BINS if b < b2)
    assert V2_BINS[:9] == (100, 250, 500, 750, 1000, 1250, 1500, 2000, 2500)
    assert V2_BINS[-1] == 10000 and all(b - a == 500 for a, b in itertools.pairwise(V2_BINS[8:]))
    with pytest.raises(UserError):
        budget_for(10, "v3")


@pytest.mark.parametrize("mode_name", ["8ratio", "4ratio", "remaining250"])
def test_insertion_points_closed_form(mode_name):
    mode = parse_mode(mode_name)
    for budget in (500, 750, 1000, 2000, 2499):
        for length in (1, 7, 63, budget // 2, budget - 1):
            pts = insertion_points(mode, budget, length)
            if mode.kind == "ratio":
                delta = budget // mode.parts + 1
                assert [lv for _, lv in pts] == list(range(mode.parts - 1, 0, -1))
                assert [i for i, _ in pts] == [min(k * delta, length) for k in range(1, mode.parts)]
            else:
                top = budget // 250 - 1
                assert [lv for _, lv in pts] == list(range(top, 0, -1))
                assert [i for i, _ in pts] == [min(k * 250, length) for k in range(1, top + 1)]


def _positions(ids, control_ids):
    return [(i, t) for i, t in enumerate(ids) if t in control_ids]


@pytest.mark.parametrize("rule", ["v1", "v2"])
def test_token_positions_exact_original_placement(tokenizer, spec, rule):
    """`placement="thinking"` (the original): re-tokenizing the built answer puts the k-th control
    token at thinking index min(k·delta, L) + (k − 1); the text around the control tokens is the
    original thinking, unchanged."""
    mode = spec.parsed_mode
    level_of = spec.level_of
    builder = TraceBuilder(tokenizer, spec, rule, max_thinking=10000, placement="thinking")
    traces = [
        make_trace(3, i, steps, checks)
        for i, (steps, checks) in enumerate(
            [(s, c) for s in (1, 2, 3, 5) for c in (0, 1, 2, 3, 5, 8, 13, 21)]
        )
    ]
    rows = builder.build([parse_trace(t) for t in traces])
    assert len(rows) == len(traces) and builder.stats.kept == len(traces)
    lengths = set()
    for trace, row in zip(traces, rows, strict=True):
        original = parse_trace(trace).thinking
        length = len(tokenizer(original, add_special_tokens=False)["input_ids"])
        lengths.add(length)
        budget = budget_for(length, rule)
        assert row["budget"] == budget
        assert row["instruction"] == user_content(trace["question"], budget, "control", mode)
        out = row["output"]
        assert out.startswith("<think>\n") and out.endswith(
            f"\n</think>\n**Final Answer**\\boxed{{{trace['answer']}}}"
        )
        thinking = out[len("<think>\n") : out.index("\n</think>\n")]
        stripped = thinking
        for s in spec.token_strings:
            stripped = stripped.replace(s, "")
        assert stripped == original
        ids = tokenizer(thinking, add_special_tokens=False)["input_ids"]
        found = _positions(ids, set(spec.token_ids))
        delta = budget // mode.parts + 1
        expected = [(min(k * delta, length) + k - 1, mode.parts - k) for k in range(1, mode.parts)]
        assert [(i, level_of[t]) for i, t in found] == expected
        assert len(ids) == length + mode.parts - 1
    assert len(lengths) > 20


def test_drops_reported_not_crashed(tokenizer, spec):
    long = make_trace(1, 0, 3, 40)
    rows = [
        None,
        {"response": "<think>x</think>\\boxed{1}"},
        {"question": "q"},
        {"question": "q", "response": "<think>no end, \\boxed{3}"},
        {"question": "q", "response": "<think>  \n </think>\\boxed{3}"},
        {"question": "q", "response": "<think>thinking</think> no box"},
        long,
        make_trace(1, 1),
        {"question": "q", "thinking": "some thought", "answer": "42"},
        {
            "problem": "q",
            "answer": "<think>\nthought\n</think>\n**Final Answer**\\boxed{\\frac{1}{2}}",
        },
    ]
    builder = TraceBuilder(tokenizer, spec, "v2", max_thinking=200)
    out = list(builder.run(rows, batch_size=2))
    d = builder.stats.to_json()
    assert d["read"] == 10 and d["kept"] == 3 == len(out)
    assert d["dropped"] == {
        "bad_json": 1,
        "no_question": 1,
        "no_response": 1,
        "no_think_end": 1,
        "empty_thinking": 1,
        "no_answer": 1,
        "too_long": 1,
    }
    assert out[1]["output"].endswith("**Final Answer**\\boxed{42}")
    assert out[2]["output"].endswith("**Final Answer**\\boxed{\\frac{1}{2}}")
    assert sum(int(n) for n in d["budget_histogram"].values()) == 3


def test_v2_drops_beyond_last_bin(tokenizer, spec):
    trace = {"question": "q", "thinking": " word" * 10050, "answer": "1"}
    builder = TraceBuilder(tokenizer, spec, "v2", max_thinking=20000)
    assert builder.build([parse_trace(trace)]) == []
    assert builder.stats.dropped == {"no_budget": 1}


def test_build_dataset_files(tmp_path, prepared_model, spec):
    traces = tmp_path / "traces.jsonl"
    traces.write_text(
        "\n".join(json.dumps(t) for t in synthetic_traces(12, checks=(0, 3))) + "\nnot json\n"
    )
    for fmt in ("alpaca", "sharegpt"):
        stats = build_dataset(
            prepared_model, read_jsonl(traces), tmp_path / "data", f"ds_{fmt}", "v1", fmt=fmt
        )
        assert stats.kept == 12 and stats.dropped == {"bad_json": 1}
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    assert info["ds_alpaca"]["file_name"] == "ds_alpaca.jsonl"
    assert info["ds_alpaca"]["columns"]["response"] == "output"
    assert info["ds_sharegpt"]["formatting"] == "sharegpt"
    row = json.loads((tmp_path / "data" / "ds_sharegpt.jsonl").read_text().splitlines()[0])
    assert [m["from"] for m in row["conversations"]] == ["human", "gpt"]
    report = json.loads((tmp_path / "data" / "ds_alpaca.stats.json").read_text())
    assert report["kept"] == 12 and report["mode"] == spec.mode and report["rows_per_second"]
    with pytest.raises(UserError, match="no trace was kept"):
        build_dataset(prepared_model, [{"question": "q"}], tmp_path / "empty", "x")


def test_synthetic_traces_deterministic_and_dialled(tokenizer):
    a, b = synthetic_traces(5, checks=(0, 6)), synthetic_traces(5, checks=(0, 6))
    assert a == b
    short, longer = make_trace(1, 0, 3, 0), make_trace(1, 0, 3, 10)
    assert short["question"] == longer["question"] and short["answer"] == longer["answer"]
    n_short = len(tokenizer(short["response"])["input_ids"])
    n_long = len(tokenizer(longer["response"])["input_ids"])
    assert n_long > 4 * n_short
    assert parse_trace(longer).answer == longer["answer"]


def test_cli_sft_traces_and_data(tmp_path, prepared_model, capsys):
    from budgetthinker.cli import main

    traces = tmp_path / "t.jsonl"
    assert main(["sft-traces", "--out", str(traces), "--n", "8", "--checks", "1:3"]) == 0
    assert len(traces.read_text().splitlines()) == 8
    assert (
        main(
            [
                "sft-data",
                "--model",
                str(prepared_model),
                "--traces",
                str(traces),
                "--out",
                str(tmp_path / "d"),
                "--budget-rule",
                "v1",
                "--name",
                "x",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "kept 8" in out and "rows/s" in out and "budget histogram" in out
    assert (
        main(
            [
                "sft-data",
                "--model",
                str(prepared_model),
                "--traces",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 2
    )


# Thinking in the style of real R1 traces: long words, LaTeX and digits, so control tokens land
# inside words and formulas, not only at spaces.
PROSE = (
    "Okay, so I need to find the derivative of $f(x) = \\sqrt{x^2 + 1}\\cdot e^{3x}$. "
    "Hmm, differentiating a product: the product rule says $(uv)' = u'v + uv'$. "
    "Let me write $u = (x^2+1)^{1/2}$, so $u' = \\frac{x}{\\sqrt{x^2+1}}$, and $v = e^{3x}$, "
    "$v' = 3e^{3x}$. Wait, let me double-check the chain rule: incontrovertibly, "
    "$\\frac{d}{dx}(x^2+1)^{1/2} = \\tfrac12 (x^2+1)^{-1/2}\\cdot 2x$. Yes.\n\n"
)


def replay_forcing(tokenizer, spec, row: dict) -> tuple[int, int, list[int]]:
    """Replay the forcing machine over the tokens the model would generate for `row`'s answer.

    Returns (forced positions, forced positions holding another token, levels of the control
    tokens found where forcing would not have forced them).
    """
    from budgetthinker.forcing import FREE, Forcer, make_plan
    from budgetthinker.sft.data import ANSWER_PREFIX, generated_prefix

    answer = row["output"]
    generated = answer[len(ANSWER_PREFIX) - len(generated_prefix(tokenizer)) :]
    forcer = Forcer(make_plan(spec, row["budget"]))
    forced = misplaced = 0
    unforced = []
    for token in tokenizer.encode(generated, add_special_tokens=False):
        if forcer.forced != FREE:
            forced += 1
            misplaced += token != forcer.forced
        elif token in spec.level_of:
            unforced.append(spec.level_of[token])
        forcer.feed(token)
    return forced, misplaced, unforced


def alignment_traces() -> list[dict]:
    traces = synthetic_traces(48, 1, 3, (0, 8))
    traces += [
        {"question": f"Q{n}", "response": f"<think>{PROSE * n}</think>\\boxed{{{n}}}"}
        for n in range(1, 13)
    ]
    return traces


def check_alignment(tokenizer, spec, placement: str = "generated") -> tuple[int, int]:
    """Build rows for many lengths and replay forcing over each; returns (forced, misplaced)."""
    from budgetthinker.forcing import schedule
    from budgetthinker.sft.data import generated_prefix

    mode = spec.parsed_mode
    builder = TraceBuilder(tokenizer, spec, "v1", max_thinking=10000, placement=placement)
    traces = alignment_traces()
    rows = builder.build([parse_trace(t) for t in traces])
    assert len(rows) == len(traces)
    prefix = len(tokenizer.encode(generated_prefix(tokenizer), add_special_tokens=False))
    total = wrong = 0
    for trace, row in zip(traces, rows, strict=True):
        length = len(tokenizer.encode(parse_trace(trace).thinking, add_special_tokens=False))
        forced, misplaced, unforced = replay_forcing(tokenizer, spec, row)
        total, wrong = total + forced, wrong + misplaced
        if placement == "generated":
            interval, top = schedule(mode, row["budget"])
            # Control tokens forcing never reaches (their chunk is past the end of the thinking)
            # sit together at the end; every other one is exactly where forcing puts it.
            beyond = [top + 1 - k for k in range(1, top + 1) if k * interval - prefix > length]
            assert unforced == beyond, (row["budget"], length)
            assert forced == top - len(beyond)
    return total, wrong


def test_sft_rows_put_control_tokens_where_forcing_does(tokenizer, spec):
    """SmolLM2 (ChatML ends the prompt at `assistant\\n`; `<think>` is the model's): replaying
    the forcing machine over every built answer finds each control token where forcing puts it."""
    from budgetthinker.sft.data import generated_prefix

    assert generated_prefix(tokenizer) == "<think>\n"
    forced, misplaced = check_alignment(tokenizer, spec)
    assert forced > 200 and misplaced == 0
    # The original placement is two tokens late on this template: forcing finds the first
    # control token of every row displaced (the later ones keep their spacing).
    _, misplaced_orig = check_alignment(tokenizer, spec, placement="thinking")
    assert misplaced_orig == len(alignment_traces())


@pytest.mark.skipif(not SHARED_TOKENIZER.is_dir(), reason="shared/ tokenizer copy not present")
def test_sft_rows_align_with_forcing_on_deepseek_template():
    """The real DeepSeek-R1-Distill tokenizer and template: the prompt ends at `<｜Assistant｜>`,
    the model generates `<think>\\n` itself, and every control token of a built row sits where
    forcing would force it."""
    from transformers import AutoTokenizer

    from budgetthinker.preparation.prepare import add_control_tokens
    from budgetthinker.sft.data import generated_prefix

    tokenizer = AutoTokenizer.from_pretrained(SHARED_TOKENIZER)
    deepseek_spec = add_control_tokens(tokenizer, "8ratio")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<｜Assistant｜>")
    assert generated_prefix(tokenizer) == "<think>\n"
    forced, misplaced = check_alignment(tokenizer, deepseek_spec)
    assert forced > 200 and misplaced == 0
    _, misplaced_orig = check_alignment(tokenizer, deepseek_spec, placement="thinking")
    assert misplaced_orig == len(alignment_traces())


def test_generated_prefix_follows_the_template(tokenizer):
    """A template whose generation prompt already opens the thinking leaves nothing (or only the
    newline) to the model, so nothing (or one token) is counted before the thinking."""
    import copy

    from budgetthinker.sft.data import generated_prefix

    tok = copy.copy(tokenizer)
    tok.chat_template = "{{ messages[0]['content'] }}{{ '<think>\\n' }}"
    assert generated_prefix(tok) == ""
    tok.chat_template = "{{ messages[0]['content'] }}<think>"
    assert generated_prefix(tok) == "\n"
    tok.chat_template = None
    assert generated_prefix(tok) == "<think>\n"


def test_plain_tip_without_control_tokens_keeps_budgets_and_thinking(
    tmp_path, prepared_model, tokenizer
):
    """`--control none --tip withoutremaining` (arm (b) of the CPU evidence experiment): the same
    budgets as the control-token rows, the plain budget tip, the thinking untouched."""
    from budgetthinker.cli import main

    traces = tmp_path / "t.jsonl"
    assert main(["sft-traces", "--out", str(traces), "--n", "6", "--checks", "0:3"]) == 0
    base = ["sft-data", "--model", str(prepared_model), "--traces", str(traces),
            "--out", str(tmp_path / "d"), "--budget-rule", "v1"]  # fmt: skip
    assert main([*base, "--name", "a"]) == 0
    assert main([*base, "--name", "b", "--control", "none", "--tip", "withoutremaining"]) == 0
    a = [json.loads(x) for x in (tmp_path / "d" / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "d" / "b.jsonl").read_text().splitlines()]
    raw = [json.loads(x) for x in traces.read_text().splitlines()]
    assert [r["budget"] for r in a] == [r["budget"] for r in b] and len(b) == 6
    for row, trace in zip(b, raw, strict=True):
        assert row["instruction"] == user_content(trace["question"], row["budget"],
                                                  "withoutremaining")  # fmt: skip
        assert row["output"] == trace["response"]  # thinking and answer unchanged
    stats = json.loads((tmp_path / "d" / "b.stats.json").read_text())
    assert (stats["control"], stats["tip"]) == ("none", "withoutremaining")
    with pytest.raises(UserError, match="--tip withoutremaining"):
        TraceBuilder(tokenizer, None, control="none", tip="control")
    with pytest.raises(UserError, match="unknown tip 'short'"):
        TraceBuilder(tokenizer, None, control="none", tip="short")


# Issue #21: a full disk or a file-size limit publishes nothing -------------------------------


@pytest.fixture
def dataset_dir(tmp_path):
    """A dataset folder with an earlier dataset and a big dataset_info.json (other entries), so
    that the new data and stats fit under a small file-size limit but the index does not: the
    last of the run's files fails, after the others were written."""
    from tests.clirun import cli

    out = tmp_path / "ds"
    traces = tmp_path / "t.jsonl"
    assert cli("sft-traces", "--out", traces, "--n", "4").returncode == 0
    assert cli("sft-data", "--model", "default", "--traces", traces, "--out", out).returncode == 0
    info = json.loads((out / "dataset_info.json").read_text())
    info.update({f"other_{i}": {"file_name": f"other_{i}.jsonl", "note": "x" * 200}
                 for i in range(300)})  # fmt: skip
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return out, traces


@pytest.mark.slow
def test_a_file_size_limit_publishes_none_of_the_run(dataset_dir):
    import resource

    from tests.clirun import cli, one_line, snapshot

    out, traces = dataset_dir
    limit = (out / "dataset_info.json").stat().st_size - 1000
    assert (out / "8ratio_SFT_below10000.jsonl").stat().st_size < limit  # the data would fit

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    before = snapshot(out)
    proc = cli("sft-data", "--model", "default", "--traces", traces, "--out", out,
               "--name", "new", preexec_fn=small_files)  # fmt: skip
    one_line(proc, "cannot write", "File too large", "ulimit -f")
    assert snapshot(out) == before  # no new.jsonl, no new.stats.json, no temp file


@pytest.mark.slow
def test_a_full_disk_publishes_none_of_the_run(tmp_path):
    """A real full file system (a 64 kB tmpfs): ENOSPC is the one write-error line, and the
    folder keeps exactly what it had."""
    import subprocess

    from tests.clirun import cli, one_line, snapshot

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        (disk / "ds").mkdir()
        (disk / "ds" / "dataset_info.json").write_text('{"older": {"file_name": "older.jsonl"}}')
        before = snapshot(disk)
        proc = cli("sft-data", "--model", "default", "--traces", "synthetic", "--out",
                   disk / "ds")  # fmt: skip
        one_line(proc, "cannot write", "No space left on device")
        assert snapshot(disk) == before
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_tilde_in_paths_means_home_for_every_command(tmp_path):
    """`--out ~/…` is the home folder for sft-traces, sft-data (its --traces too) and report,
    as for eval: never a folder literally named `~` in the working folder."""
    from budgetthinker.paths import cache_dir
    from tests.clirun import cli

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {"HOME": str(home), "BUDGETTHINKER_CACHE": str(cache_dir())}  # the cached model
    assert cli("sft-traces", "--out", "~/t.jsonl", "--n", "4", env=env, cwd=work).returncode == 0
    proc = cli("sft-data", "--model", "default", "--traces", "~/t.jsonl", "--out", "~/ds",
               env=env, cwd=work)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (home / "t.jsonl").is_file() and (home / "ds" / "dataset_info.json").is_file()
    assert list(work.iterdir()) == []
