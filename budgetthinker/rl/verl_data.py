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
* validation rows all get the validation budget;
* problems whose prompt would exceed `data.max_prompt_length` tokens (rendered with the policy's
  chat template, as verl renders it, for every budget the problem could draw) are dropped here,
  before batching, and verl's own `filter_overlong_prompts` stays off: a row verl dropped later
  would shift every following batch, mixing budgets and moving `save_freq` off the epochs.

The stream is a pure function of (problems, curriculum, epochs, batch size), written atomically;
`stream.json` beside it records what it holds, for logs and for the launcher's checks.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetthinker.control_spec import Mode
from budgetthinker.errors import UserError
from budgetthinker.outputs import atomic_text, atomic_write
from budgetthinker.rl.curriculum import Curriculum, check_budget
from budgetthinker.rl.data import RLProblem, rl_user_content

DATA_SOURCE = "budgetthinker"
"""`data_source` of every row (verl's `data.reward_fn_key`); the reward ignores it."""


PromptLengths = Callable[[list[list[dict[str, str]]]], list[int]]
"""Token counts of chat prompts (lists of messages), as verl renders them for the rollout."""


def chat_prompt_lengths(tokenizer: Any, chat_template_kwargs: dict | None = None) -> PromptLengths:
    """What verl's `RLHFDataset` counts: the chat template with the generation prompt (and
    `data.apply_chat_template_kwargs`), tokenized without added special tokens; batched."""
    kwargs = dict(chat_template_kwargs or {})
    for key in ("tokenize", "return_dict", "return_tensors", "add_generation_prompt"):
        kwargs.pop(key, None)

    def lengths(prompts: list[list[dict[str, str]]]) -> list[int]:
        if not prompts:
            return []
        texts = tokenizer.apply_chat_template(
            prompts, add_generation_prompt=True, tokenize=False, **kwargs
        )
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    return lengths


def fitting(
    problems: Sequence[RLProblem],
    budgets: Sequence[int],
    mode: Mode,
    tip: str,
    lengths: PromptLengths,
    max_prompt_length: int,
) -> tuple[list[int], int]:
    """Indices of the problems whose prompt fits `max_prompt_length` tokens with every one of
    `budgets` (the tip's length depends on the budget), and the longest prompt seen."""
    longest = [0] * len(problems)
    for budget in sorted(set(budgets)):
        prompts = [verl_row(p, budget, mode, tip, split="", index=0)["prompt"] for p in problems]
        for i, n in enumerate(lengths(prompts)):
            longest[i] = max(longest[i], n)
    keep = [i for i, n in enumerate(longest) if n <= max_prompt_length]
    return keep, max(longest, default=0)


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
            "lower the batch size or add problems (synthetic problems: "
            "budgetthinker.data.synthetic.n=N)"
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
    # problems left out because their prompt is longer than data.max_prompt_length
    dropped: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})


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
    prompt_lengths: PromptLengths | None = None,
    max_prompt_length: int | None = None,
) -> VerlData:
    """Write `train.parquet` (the curriculum stream), `val.parquet` and `stream.json`.

    With `prompt_lengths` and `max_prompt_length`, problems whose prompt is too long are left
    out before the stream is cut into batches (train: with every curriculum budget; val: with
    the validation budget).
    """
    budgets = sorted({b for epoch_budgets in curriculum.config.budgets for b in epoch_budgets})
    for b in budgets:
        check_budget(b, "curriculum budget")
    dropped = {"train": 0, "val": 0}
    # extra_info.index stays the problem's row in the input files, dropped rows or not
    train_index, val_index = list(range(len(train))), list(range(len(val)))
    if prompt_lengths is not None and max_prompt_length is not None:
        keep, longest = fitting(train, budgets, mode, tip, prompt_lengths, max_prompt_length)
        dropped["train"] = len(train) - len(keep)
        if not keep:
            raise UserError(
                f"every training prompt is longer than data.max_prompt_length "
                f"{max_prompt_length} tokens (the longest has {longest}); raise it"
            )
        train, train_index = [train[i] for i in keep], keep
        keep_val, _ = fitting(
            val, [curriculum.validation_budget], mode, tip, prompt_lengths, max_prompt_length
        )
        dropped["val"] = len(val) - len(keep_val)
        val, val_index = [val[i] for i in keep_val], keep_val
    stream = curriculum_stream(len(train), curriculum, epochs, batch_size, curriculum.config.seed)
    rows = [
        verl_row(
            train[r],
            sb.budget,
            mode,
            tip,
            split="train",
            index=train_index[r],
            epoch=sb.epoch,
            batch=sb.batch,
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
            verl_row(p, vb, mode, tip, split="val", index=j, two_stage=validation_two_stage)
            for p, j in zip(val, val_index, strict=True)
        ]
        val_file = _write_parquet(out / "val.parquet", val_rows)
    per_epoch = len(stream) // epochs
    data = VerlData(
        train_file, val_file, per_epoch, len(stream), [sb.budget for sb in stream], dropped
    )
    summary = {
        "train_file": str(train_file),
        "val_file": str(val_file) if val_file else None,
        "problems": len(train),
        "validation_problems": len(val),
        "max_prompt_length": max_prompt_length,
        "dropped_overlong": dropped,
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
    atomic_text(out / "stream.json", json.dumps(summary, indent=1))
    return data


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_write(path, "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    return path

