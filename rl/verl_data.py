"""verl's input files for one RL experiment: the budget curriculum written out as data.

verl reads prompts from parquet files row by row and knows nothing of budgets. The curriculum
(one budget per batch, drawn by epoch) therefore becomes the training file itself:

* every epoch shuffles the problems (seeded by `seed` and the epoch), cuts them into batches of
  `data.train_batch_size` (a short last batch is dropped, as verl's dataloader does), and draws
  one budget per batch from `Curriculum.budget(epoch, batch)`;
* each row carries its prompt with the tip for that budget, the gold answer, and
  `extra_info = {budget, epoch, batch, index, split, two_stage}`;
* all epochs are concatenated into one stream that verl reads in order (`data.shuffle=false`,
  `trainer.total_epochs=1`), so batch k of the run is batch k of the stream, and a resumed run
  (verl's stateful dataloader) continues with the same budgets;
* validation rows all get the validation budget.

The stream is a pure function of (problems, curriculum, epochs, batch size), written atomically;
`stream.json` beside it records what it holds, for logs and for the launcher's checks.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetthinker.control_spec import Mode
from budgetthinker.errors import UserError
from budgetthinker.rl.curriculum import Curriculum, check_budget
from budgetthinker.rl.data import RLProblem, rl_user_content

DATA_SOURCE = "budgetthinker"
"""`data_source` of every row (verl's `data.reward_fn_key`); the reward ignores it."""


@dataclass(frozen=True)
class StreamBatch:
    """One training batch of the curriculum stream."""

    epoch: int  # 1-based
    batch: int  # 0-based, counted over the whole run
    budget: int
    rows: tuple[int, ...]  # indices into the problem list


def curriculum_stream(
    n_problems: int, curriculum: Curriculum, epochs: int, batch_size: int, seed: int
) -> list[StreamBatch]:
    """Batches of the whole run, epoch by epoch, each with its budget."""
    if epochs < 1:
        raise UserError(f"budgetthinker.epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise UserError(f"data.train_batch_size must be at least 1, got {batch_size}")
    per_epoch = n_problems // batch_size
    if per_epoch == 0:
        raise UserError(
            f"{n_problems} training problems are fewer than data.train_batch_size {batch_size}; "
            "lower the batch size or add problems"
        )
    stream = []
    for epoch in range(1, epochs + 1):
        order = list(range(n_problems))
        random.Random(f"{seed}:shuffle:{epoch}").shuffle(order)
        for i in range(per_epoch):
            batch = (epoch - 1) * per_epoch + i
            rows = tuple(order[i * batch_size : (i + 1) * batch_size])
            stream.append(StreamBatch(epoch, batch, curriculum.budget(epoch, batch), rows))
    return stream


def verl_row(
    problem: RLProblem,
    budget: int,
    mode: Mode,
    tip: str,
    *,
    split: str,
    index: int,
    epoch: int = 0,
    batch: int = -1,
    two_stage: bool = False,
) -> dict[str, Any]:
    """One row in verl's schema (`prompt` as chat messages, `reward_model.ground_truth`)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [
            {"role": "user", "content": rl_user_content(problem.problem, budget, mode, tip)}
        ],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": problem.answer},
        "extra_info": {
            "split": split,
            "index": index,
            "budget": budget,
            "epoch": epoch,
            "batch": batch,
            "two_stage": two_stage,
        },
    }


@dataclass(frozen=True)
class VerlData:
    """Where the files went and what they hold."""

    train_file: Path
    val_file: Path | None
    steps_per_epoch: int
    total_steps: int
    budgets: list[int]  # budget of every training step, in order


def write_verl_data(
    out_dir: str | os.PathLike,
    train: Sequence[RLProblem],
    val: Sequence[RLProblem],
    curriculum: Curriculum,
    *,
    mode: Mode,
    tip: str,
    epochs: int,
    batch_size: int,
    validation_two_stage: bool = False,
) -> VerlData:
    """Write `train.parquet` (the curriculum stream), `val.parquet` and `stream.json`."""
    for epoch_budgets in curriculum.config.budgets:
        for b in epoch_budgets:
            check_budget(b, "curriculum budget")
    stream = curriculum_stream(len(train), curriculum, epochs, batch_size, curriculum.config.seed)
    rows = [
        verl_row(
            train[r], sb.budget, mode, tip, split="train", index=r, epoch=sb.epoch, batch=sb.batch
        )
        for sb in stream
        for r in sb.rows
    ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_file = _write_parquet(out / "train.parquet", rows)
    val_file = None
    if val:
        vb = curriculum.validation_budget
        val_rows = [
            verl_row(p, vb, mode, tip, split="val", index=i, two_stage=validation_two_stage)
            for i, p in enumerate(val)
        ]
        val_file = _write_parquet(out / "val.parquet", val_rows)
    per_epoch = len(stream) // epochs
    data = VerlData(train_file, val_file, per_epoch, len(stream), [sb.budget for sb in stream])
    summary = {
        "train_file": str(train_file),
        "val_file": str(val_file) if val_file else None,
        "problems": len(train),
        "validation_problems": len(val),
        "epochs": epochs,
        "batch_size": batch_size,
        "steps_per_epoch": per_epoch,
        "total_steps": len(stream),
        "validation_budget": curriculum.validation_budget,
        "budgets_per_epoch": [
            sorted({sb.budget for sb in stream if sb.epoch == e}) for e in range(1, epochs + 1)
        ],
        "step_budgets": data.budgets,
    }
    _atomic_write(out / "stream.json", json.dumps(summary, indent=1).encode())
    return data


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
