"""The forcing state machine of `budgetthinker.forcing.Forcer`, held per engine slot in one device
tensor and advanced for a whole batch with tensor ops.

vLLM's Model Runner V2 keeps the committed tokens of every request on the device and runs the
sampler asynchronously ahead of the host; reading tokens back to Python each step (as the V1
processor does) would stall that pipeline. So this class keeps `Forcer`'s counters (`n`,
`since`, `level`, "thinking ended", suffix cursor; the soft ending's "last token was a boundary"
is read from the token just committed) plus the request's `ForcingPlan` in a
`[max_slots, COLUMNS]` int64 tensor and advances them with a fixed number of gather / where /
scatter ops per step, whatever the batch: O(1) per request, and no device→host copy in the steady
state. The rules are not written a second time in a new shape without proof: `tests/patches/
test_vllm_v2_processor.py` checks token-identity with `Forcer` over random streams, and the
resume path (`catch_up`) is the closed form of the same machine (see `_closed_form`).

It imports only torch (and Triton where it is installed with a GPU backend), so it can be
benchmarked on machines without vLLM; `budgetthinker.patches.vllm_v2_processor` is the thin vLLM
wrapper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from budgetthinker.control_spec import ControlSpec
from budgetthinker.forcing import FREE, ForcingPlan

logger = logging.getLogger(__name__)

# Columns of the per-slot state tensor. Plan (constant while the request lives) …
ACTIVE, INTERVAL, CAP, SUFFIX_ROW, SUFFIX_LEN, STOP_AT_END, PROMPT_LEN = range(7)
# … and `Forcer`'s counters …
N, SINCE, LEVEL, ENDED, SUFFIX_POS = range(7, 12)
# … and, appended so the columns above keep their numbers, the soft ending's window start
# (`plan.budget` when `plan.grace >= 0`, else −1; `CAP` is then `budget + grace`).
SOFT_FROM = 12
COLUMNS = 13


@dataclass(frozen=True)
class _Admission:
    """One staged (re)initialisation of a slot; `done` output tokens are already committed."""

    slot: int
    row: tuple[int, ...]
    done: int


class ForcingSlots:
    """Per-slot forcing state for up to `max_slots` requests of one model (one control spec).

    Calling contract (mirrors the V2 runner's): `admit()` on the host when a request takes a slot
    (any previous occupant is overwritten), `flush()` once before the step that first reads the
    slot, then `step()` once per step with the batch's slots and committed lengths. `step()`
    returns the forced token of each row (`FREE` = −1 where the model may choose).
    """

    def __init__(
        self,
        spec: ControlSpec,
        max_slots: int,
        device: torch.device | str,
        boundaries: frozenset[int] = frozenset(),
    ) -> None:
        self.device = torch.device(device)
        self.max_slots = max_slots
        self.state = torch.zeros(max_slots, COLUMNS, dtype=torch.int64, device=self.device)
        self.active_host = np.zeros(max_slots, dtype=bool)  # host mirror of ACTIVE
        levels = spec.level_of
        size = max(levels, default=0) + 2  # last entry: "not a control token"
        table = torch.zeros(size, dtype=torch.int64)
        for token, level in levels.items():
            table[token] = level
        self.level_table = table.to(self.device)
        # boundary_table[token] = 1 for the soft ending's boundary tokens; last entry: "not one"
        self.boundaries = boundaries
        bounds = torch.zeros(max(boundaries, default=0) + 2, dtype=torch.int64)
        if boundaries:
            bounds[torch.tensor(sorted(boundaries), dtype=torch.int64)] = 1
        self.boundary_table = bounds.to(self.device)
        self.control_ids = torch.tensor((0, *spec.token_ids), dtype=torch.int64).to(self.device)
        self.think_end_id = spec.think_end_id
        self.suffix_rows: dict[tuple[int, ...], int] = {}
        suffixes = sorted(set(spec.suffix_ids.values())) or [()]
        width = max(1, *(len(s) for s in suffixes))
        suffix_table = torch.full((len(suffixes), width), FREE, dtype=torch.int64)
        for i, suffix in enumerate(suffixes):
            self.suffix_rows[suffix] = i
            suffix_table[i, : len(suffix)] = torch.tensor(suffix, dtype=torch.int64)
        self.suffix_table = suffix_table.to(self.device)
        self._staged: list[_Admission] = []

    # ---------------------------------------------------------------- admission (host side)

    def admit(self, slot: int, plan: ForcingPlan | None, prompt_len: int, done: int = 0) -> bool:
        """Stage the (re)initialisation of `slot`; `plan=None` frees it. `done` is the number of
        output tokens already committed (resumption after preemption): `flush()` replays them.
        Returns whether the slot is forced."""
        if plan is None:
            row = (0,) * COLUMNS
        else:
            if plan.suffix and plan.suffix not in self.suffix_rows:
                raise ValueError(f"two-stage suffix {plan.suffix} is not in the control spec")
            foreign = plan.boundaries is not self.boundaries  # identity first: O(1)
            if plan.grace >= 0 and foreign and plan.boundaries != self.boundaries:
                raise ValueError("the plan's boundary tokens are not this engine's")
            level = plan.first_level if plan.interval > 0 else 0
            row = [0] * COLUMNS
            row[ACTIVE] = 1
            row[INTERVAL] = plan.interval
            row[CAP] = plan.cap
            row[SUFFIX_ROW] = self.suffix_rows.get(plan.suffix, 0)
            row[SUFFIX_LEN] = len(plan.suffix)
            row[STOP_AT_END] = int(plan.stop_at_think_end)
            row[PROMPT_LEN] = prompt_len
            row[LEVEL] = level
            row[SUFFIX_POS] = -1
            row[SOFT_FROM] = plan.budget if plan.grace >= 0 else -1
            row = tuple(row)
        self._staged = [a for a in self._staged if a.slot != slot]
        self._staged.append(_Admission(slot, row, done if plan is not None else 0))
        self.active_host[slot] = plan is not None
        return plan is not None

    def flush(self, all_token_ids: torch.Tensor | None = None) -> None:
        """Write staged admissions to the device (one host→device copy, no readback) and replay
        the committed output of resumed requests from `all_token_ids` ([slots, max_len])."""
        if not self._staged:
            return
        staged, self._staged = self._staged, []
        pinned = self.device.type == "cuda"  # pinned + non_blocking: a copy that never waits
        slots = torch.tensor([a.slot for a in staged], dtype=torch.int64, pin_memory=pinned)
        rows = torch.tensor([a.row for a in staged], dtype=torch.int64, pin_memory=pinned)
        self.state.index_copy_(
            0, slots.to(self.device, non_blocking=True), rows.to(self.device, non_blocking=True)
        )
        for a in staged:
            if a.done > 0:
                if all_token_ids is None:
                    raise ValueError("resumed requests need all_token_ids to catch up")
                start = a.row[PROMPT_LEN]
                self.catch_up(a.slot, all_token_ids[a.slot, start : start + a.done])

    def catch_up(self, slot: int, output: torch.Tensor) -> None:
        """Set `slot`'s counters to those of a `Forcer` fed `output` (already on the device);
        the slot must hold an active plan. Device ops only, no readback."""
        row = self.state[slot]
        self.state[slot] = _closed_form(
            row, output.to(torch.int64), self.level_table, self.think_end_id, self.boundary_table
        )

    # ---------------------------------------------------------------- per step (device side)

    def any_active(self, slots: np.ndarray) -> bool:
        """Host-side check (no device access) whether any of `slots` is forced."""
        return bool(self.active_host[slots].any())

    def step(
        self, slots: torch.Tensor, total_len: torch.Tensor, all_token_ids: torch.Tensor
    ) -> torch.Tensor:
        """Advance every row by the token committed since its last step and return the forced
        token per row (`FREE` where none).

        `slots`: [R] slot of each row (distinct); `total_len`: [R] prompt + committed output
        length of each row's request; `all_token_ids`: [max_slots, max_len] committed tokens.
        A row whose request committed no token since the last call (a chunked-prefill row, or
        the first step) is not advanced, so the call count never matters.
        """
        s = self.state.index_select(0, slots)
        active = s[:, ACTIVE] > 0
        committed = total_len.to(torch.int64) - s[:, PROMPT_LEN]
        fed = active & (committed == s[:, N] + 1)
        last = (total_len.to(torch.int64) - 1).clamp(min=0)
        token = all_token_ids[slots, last].to(torch.int64)
        level_table = self.level_table
        lvl = level_table[token.clamp(max=level_table.numel() - 1)]
        is_control = lvl > 0

        pos = s[:, SUFFIX_POS]
        slen = s[:, SUFFIX_LEN]
        pos = torch.where(fed & (pos >= 0) & (pos < slen), pos + 1, pos)
        level = torch.where(fed & is_control, lvl - 1, s[:, LEVEL])
        since = torch.where(fed, torch.where(is_control, 0, s[:, SINCE] + 1), s[:, SINCE])
        ended = s[:, ENDED] | (fed & (token == self.think_end_id)).to(torch.int64)
        n = s[:, N] + fed.to(torch.int64)
        bounds = self.boundary_table
        boundary = bounds[token.clamp(max=bounds.numel() - 1)] > 0
        soft = s[:, SOFT_FROM]
        soft_start = fed & boundary & (soft >= 0) & (n >= soft)  # the token just fed ends one

        thinking = ended == 0
        cap = s[:, CAP]
        due = (n >= cap) | soft_start
        start_suffix = (pos < 0) & thinking & (cap >= 0) & due & (slen > 0) & active
        pos = torch.where(start_suffix, 0, pos)
        width = self.suffix_table.shape[1]
        suffix_token = self.suffix_table[s[:, SUFFIX_ROW], pos.clamp(0, width - 1)]
        suffix_token = torch.where(pos < slen, suffix_token, FREE)
        control = (
            (level > 0)
            & (s[:, INTERVAL] > 0)
            & (since == s[:, INTERVAL])
            & (thinking | (s[:, STOP_AT_END] == 0))
        )
        control_token = torch.where(control, self.control_ids[level.clamp(min=0)], FREE)
        forced = torch.where(pos >= 0, suffix_token, control_token)
        forced = torch.where(active, forced, FREE)

        s = torch.stack(
            [
                s[:, ACTIVE], s[:, INTERVAL], cap, s[:, SUFFIX_ROW], slen, s[:, STOP_AT_END],
                s[:, PROMPT_LEN], n, since, level, ended, pos, soft,
            ],
            dim=1,
        )  # fmt: skip
        self.state.index_copy_(0, slots, s)
        return forced


def step_and_force(
    slots_state: ForcingSlots,
    logits: torch.Tensor,
    slots: torch.Tensor,
    total_len: torch.Tensor,
    all_token_ids: torch.Tensor,
    *,
    use_kernel: bool = True,
) -> torch.Tensor:
    """`ForcingSlots.step` then `force_rows`, as one Triton kernel on CUDA (one program per row:
    a few scalar loads and stores, then the mask only on forced rows) and as torch ops elsewhere.
    `total_len` here is indexed by slot ([max_slots]), as the runner keeps it. Returns the forced
    token per row."""
    kernel = (
        _load_kernels().get("step") if use_kernel and logits.device.type == "cuda" else None
    )
    if kernel is not None and logits.dtype == torch.float32 and logits.stride(1) == 1:
        s = slots_state
        forced = torch.empty(slots.shape[0], dtype=torch.int64, device=logits.device)
        try:
            kernel[(slots.shape[0],)](
                s.state, slots, total_len, all_token_ids, all_token_ids.stride(0),
                s.level_table, s.level_table.numel(), s.control_ids, s.suffix_table,
                s.suffix_table.shape[1], s.think_end_id, s.boundary_table,
                s.boundary_table.numel(), forced, logits, logits.stride(0),
                logits.shape[1], NCOL=COLUMNS, BLOCK=4096,
            )  # fmt: skip
            return forced
        except Exception as e:
            _kernel_failed(e)
    rows = slots.to(torch.int64)
    forced = slots_state.step(rows, total_len[rows], all_token_ids)
    force_rows(logits, forced, use_kernel=use_kernel)
    return forced


def _closed_form(
    row: torch.Tensor,
    output: torch.Tensor,
    level_table: torch.Tensor,
    think_end_id: int,
    boundary_table: torch.Tensor,
) -> torch.Tensor:
    """`row` with the counters a fresh `Forcer` of the same plan has after `feed`ing `output`.

    `Forcer.feed` depends only on the tokens, never on what was forced, so the state after a
    stream is: the level and distance of the last control token, the first `</think>`, and a
    suffix cursor that starts at `start` with thinking unfinished and then advances once per
    token. `start` is the cap, or under the soft ending the first length n ≥ `SOFT_FROM` whose
    last token (index n − 1) is a boundary, if that comes before the cap. O(len(output)) tensor
    work, no readback; used once per resumption.
    """
    row = row.clone()
    length = output.numel()
    if length == 0:
        return row
    idx = torch.arange(length, device=output.device)
    lvl = level_table[output.clamp(max=level_table.numel() - 1)]
    last_control = torch.where(lvl > 0, idx, -1).max()
    # gather, not lvl[tensor]: indexing with a 0-d tensor would read it back to the host
    last_level = lvl.gather(0, last_control.clamp(min=0).view(1))[0]
    has_control = last_control >= 0
    row[LEVEL] = torch.where(has_control, last_level - 1, row[LEVEL])
    row[SINCE] = torch.where(has_control, length - 1 - last_control, length)
    first_end = torch.where(output == think_end_id, idx, length).min()
    row[ENDED] = (first_end < length).to(torch.int64)
    row[N] = length
    cap, slen, soft = row[CAP], row[SUFFIX_LEN], row[SOFT_FROM]
    boundary = boundary_table[output.clamp(max=boundary_table.numel() - 1)] > 0
    cue = boundary & (soft >= 0) & (idx >= soft - 1) & (idx < cap)
    start = torch.minimum(torch.where(cue, idx + 1, length + 1).min(), cap)
    started = (cap >= 0) & (slen > 0) & (length >= start) & (first_end >= start)
    row[SUFFIX_POS] = torch.where(started, torch.minimum(length - start, slen), -1)
    return row


# ------------------------------------------------------------------------ imposing the tokens

try:  # Triton ships with CUDA builds of torch; the kernels compile on first use
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs without Triton
    triton = None

if triton is not None:

    @triton.jit
    def _mask_rows(logits_ptr, stride, forced, row, vocab, BLOCK: tl.constexpr):
        if forced >= 0:
            base = logits_ptr + row.to(tl.int64) * stride
            for start in range(0, vocab, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                values = tl.where(offs == forced, 0.0, float("-inf"))
                tl.store(base + offs, values, mask=offs < vocab)

    @triton.jit
    def _force_rows_kernel(logits_ptr, stride, forced_ptr, vocab, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        _mask_rows(logits_ptr, stride, tl.load(forced_ptr + row), row, vocab, BLOCK)

    @triton.jit
    def _step_kernel(
        state_ptr, slots_ptr, total_len_ptr, ids_ptr, ids_stride, level_ptr, level_size,
        control_ptr, suffix_ptr, suffix_width, think_end_id, boundary_ptr, boundary_size,
        forced_ptr, logits_ptr, logits_stride, vocab, NCOL: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        slot = tl.load(slots_ptr + row).to(tl.int64)
        base = state_ptr + slot * NCOL
        active = tl.load(base + 0) > 0
        interval = tl.load(base + 1)
        cap = tl.load(base + 2)
        suffix_row = tl.load(base + 3)
        slen = tl.load(base + 4)
        stop = tl.load(base + 5)
        prompt_len = tl.load(base + 6)
        n = tl.load(base + 7)
        since = tl.load(base + 8)
        level = tl.load(base + 9)
        ended = tl.load(base + 10)
        pos = tl.load(base + 11)
        soft = tl.load(base + 12)
        total = tl.load(total_len_ptr + slot).to(tl.int64)
        fed = active & ((total - prompt_len) == n + 1)
        last = tl.maximum(total - 1, 0)
        token = tl.load(ids_ptr + slot * ids_stride + last).to(tl.int64)
        lvl = tl.load(level_ptr + tl.minimum(token, level_size - 1))
        is_control = lvl > 0
        pos = tl.where(fed & (pos >= 0) & (pos < slen), pos + 1, pos)
        level = tl.where(fed & is_control, lvl - 1, level)
        since = tl.where(fed, tl.where(is_control, 0, since + 1), since)
        ended = tl.where(fed & (token == think_end_id), 1, ended)
        n = tl.where(fed, n + 1, n)
        boundary = tl.load(boundary_ptr + tl.minimum(token, boundary_size - 1)) > 0
        soft_start = fed & boundary & (soft >= 0) & (n >= soft)
        thinking = ended == 0
        due = (n >= cap) | soft_start
        start_suffix = active & (pos < 0) & thinking & (cap >= 0) & due & (slen > 0)
        pos = tl.where(start_suffix, 0, pos)
        column = tl.minimum(tl.maximum(pos, 0), suffix_width - 1)
        suffix_token = tl.load(suffix_ptr + suffix_row * suffix_width + column)
        suffix_token = tl.where(pos < slen, suffix_token, -1)
        control = (level > 0) & (interval > 0) & (since == interval) & (thinking | (stop == 0))
        control_token = tl.load(control_ptr + tl.maximum(level, 0))
        control_token = tl.where(control, control_token, -1)
        forced = tl.where(pos >= 0, suffix_token, control_token)
        forced = tl.where(active, forced, -1)
        tl.store(base + 7, n, mask=active)
        tl.store(base + 8, since, mask=active)
        tl.store(base + 9, level, mask=active)
        tl.store(base + 10, ended, mask=active)
        tl.store(base + 11, pos, mask=active)
        tl.store(forced_ptr + row, forced)
        _mask_rows(logits_ptr, logits_stride, forced, row, vocab, BLOCK)


_kernels: dict | None = None  # {} once Triton turned out unusable here


def _load_kernels() -> dict:
    """Triton kernels (`step`: the fused step + mask, `mask`: masking only), or {} without
    Triton. Written with the same rules as `ForcingSlots.step`, one program per row; the tests
    run them in Triton's interpreter and `scripts/bench_v2_processor.py` compares them with the
    torch ops on a GPU."""
    global _kernels
    if _kernels is None:
        _kernels = {"mask": _force_rows_kernel, "step": _step_kernel} if triton else {}
    return _kernels


def _kernel_failed(e: Exception) -> None:
    global _kernels
    _kernels = {}
    logger.warning("Triton forcing kernel failed (%s); using torch ops from now on", e)


def force_rows(logits: torch.Tensor, forced: torch.Tensor, *, use_kernel: bool = True) -> None:
    """In place: each row with `forced[r] >= 0` becomes −inf except `forced[r]`, which becomes 0
    (same result as `budgetthinker.patches.masking.force_tokens`).

    On CUDA this never reads `forced` back: a Triton kernel touches only the forced rows (one
    program per row, idle rows return at once), or, without Triton, a masked fill over the batch.
    On CPU there is no device to wait for, so the forced rows are picked out directly.
    """
    if logits.device.type == "cpu":
        rows = torch.nonzero(forced >= 0).flatten()
        if rows.numel():
            tokens = forced[rows]
            logits[rows] = float("-inf")
            logits[rows, tokens] = 0.0
        return
    kernel = _load_kernels().get("mask") if use_kernel else None
    if kernel is not None and logits.dtype == torch.float32 and logits.stride(1) == 1:
        try:
            kernel[(logits.shape[0],)](
                logits, logits.stride(0), forced, logits.shape[1], BLOCK=4096
            )
            return
        except Exception as e:  # compile failure on an unusual stack: fall back, once
            _kernel_failed(e)
    force_rows_dense(logits, forced)


def force_rows_dense(logits: torch.Tensor, forced: torch.Tensor) -> None:
    """`force_rows` without Triton and without reading `forced` back: one masked fill over the
    whole batch (costs a pass over the logits, which the kernel avoids)."""
    hit = forced >= 0
    column = forced.clamp(min=0).unsqueeze(1)
    keep = torch.where(hit.unsqueeze(1), 0.0, logits.gather(1, column))
    logits.masked_fill_(hit.unsqueeze(1), float("-inf"))
    logits.scatter_(1, column, keep.to(logits.dtype))
