"""Add the control tokens of a mode to a base model and write a prepared model folder.

docs/spec.md §1: token strings and their order are faithful (level 1 first, so on the
DeepSeek-R1-Distill tokenizer 1/8…7/8 get ids 151665…151671); `<think>`/`</think>` are added when
the tokenizer lacks them. Improved: new embedding rows (input and output) start at the mean of the
existing rows instead of whatever padding rows happened to be there, and a grown vocabulary is
padded to a multiple of 64. `embedding_init="text"` starts each new row at the mean of the rows of
the pieces its own string splits into in the base vocabulary (`</think>` → `</`, `think`, `>`), so
the control tokens start apart from each other (7/8 ≠ 1/8) and a new `</think>` starts with a
usable output logit (the CPU evidence experiment, docs/logs/experiment_cpu_2026-11-29.md, found the
mean row too far from any context for 24 steps of SFT to teach it). `embedding_init="resized"` is
the original (compat): only `model.resize_token_embeddings(len(tokenizer))`, so on
DeepSeek-R1-Distill-Qwen the matrix shrinks from 151936 to 151672 rows and the control tokens keep
the checkpoint's untrained padding rows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from budgetthinker.control_spec import (
    THINK_END,
    THINK_START,
    TWO_STAGE_SUFFIXES,
    ControlSpec,
    has_spec,
    load_spec,
    parse_mode,
)
from budgetthinker.errors import UserError, native_write_errno
from budgetthinker.outputs import check_writable, publish_dir, staging_dir, user_path
from budgetthinker.preparation.embedded_model import resolve_base

VOCAB_MULTIPLE = 64
EMBEDDING_INITS = ("mean", "text", "resized")
"""`mean`: new rows at the mean of the existing ones (improved); `text`: each new row at the mean
of the rows of its own string's pieces in the base vocabulary; `resized`: the original's
`resize_token_embeddings(len(tokenizer))` and nothing more."""


def prepare_model(
    base: str,
    mode: str,
    out: str | Path,
    *,
    noise: float = 0.0,
    seed: int = 0,
    quiet: bool = False,
    embedding_init: str = "mean",
) -> ControlSpec:
    """Prepare `base` (a folder or `default`) for `mode` into `out`; return the spec.

    Idempotent: an `out` that already holds the same preparation is left as it is. A base or an
    `out` prepared for another mode is a UserError, and nothing is written.
    """
    parsed = parse_mode(mode)
    if embedding_init not in EMBEDDING_INITS:
        raise UserError(
            f"unknown embedding init {embedding_init!r}; use mean (new rows at the mean of the "
            "existing rows), text (each new row at the mean of its own string's pieces) or "
            "resized (the original: rows left as resize_token_embeddings leaves them)"
        )
    if not noise >= 0:
        raise UserError(f"--noise must be >= 0 (0 = rows exactly at the mean), got {noise}")
    out = user_path(out)
    say = (lambda *_: None) if quiet else print
    if has_spec(out):
        existing = load_spec(out)
        if existing.mode != parsed.name:
            raise UserError(
                f"{out} is already prepared with mode {existing.mode}, not {parsed.name}; "
                "choose another --out folder"
            )
        say(f"{out} is already prepared with mode {parsed.name}; nothing to do.")
        return existing
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not a prepared model; choose a new folder")
    check_writable(out.parent)  # before minutes of loading, not after
    base_dir = resolve_base(base)
    if has_spec(base_dir):
        existing = load_spec(base_dir)
        if existing.mode != parsed.name:
            raise UserError(
                f"base {base_dir} is already prepared with mode {existing.mode}; prepare from "
                f"the original base model ({existing.base_model or 'the model it came from'})"
            )
        say(f"{base_dir} is already prepared with mode {parsed.name}; copying it to {out}.")
        out.parent.mkdir(parents=True, exist_ok=True)
        with staging_dir(out.parent, "prepare") as tmp:
            shutil.copytree(base_dir, tmp / "model")
            publish_dir(tmp / "model", out)
        return existing

    from budgetthinker.preparation.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(base_dir, check_spec=False)
    model = load_causal_lm(base_dir, dtype="auto")
    old_len = len(tokenizer)
    spec = add_control_tokens(
        tokenizer,
        parsed.name,
        base_model=str(base) if base == "default" else str(base_dir.resolve()),
    )
    new_ids = list(range(old_len, len(tokenizer)))
    with _seeded(seed):  # rows a resize draws at random: the same bytes for the same inputs
        if embedding_init == "resized":
            model.resize_token_embeddings(len(tokenizer))  # the original's one line
        else:
            pieces = _base_pieces(tokenizer, new_ids, old_len) if embedding_init == "text" else None
            _grow_embeddings(model, len(tokenizer), old_len, new_ids, noise, seed, pieces)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out.parent, "prepare") as tmp:
        staged = tmp / "model"
        try:
            model.save_pretrained(staged)
        except Exception as e:  # safetensors' native writer: a full disk in its own error type
            code = native_write_errno(e)
            if code is None:
                raise
            raise OSError(code, os.strerror(code), str(out)) from None
        tokenizer.save_pretrained(staged)
        spec.save(staged)
        if out.exists():
            out.rmdir()  # empty (checked above)
        publish_dir(staged, out)
    say(
        f"Prepared {out}: mode {parsed.name}, {len(spec.token_ids)} control tokens "
        f"(ids {spec.token_ids[0]}…{spec.token_ids[-1]}), vocabulary {old_len} → "
        f"{len(tokenizer)}."
    )
    return spec


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global generator seeded with `seed` for the block (and restored after): a grown
    embedding's padding rows are drawn by transformers' weight init from that generator."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def add_control_tokens(tokenizer, mode: str, base_model: str = "") -> ControlSpec:
    """Add the mode's control tokens (level 1 first) and any missing thinking delimiters to
    `tokenizer` in place; return the spec with the ids the tokenizer gave them."""
    parsed = parse_mode(mode)
    strings = parsed.token_strings()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": strings}, replace_extra_special_tokens=False
    )
    missing_think = [t for t in (THINK_START, THINK_END) if not _is_single_token(tokenizer, t)]
    if missing_think:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing_think}, replace_extra_special_tokens=False
        )
    token_ids = tuple(tokenizer.convert_tokens_to_ids(strings))
    for s, tid in zip(strings, token_ids, strict=False):
        if tokenizer.encode(s, add_special_tokens=False) != [tid]:
            raise UserError(f"control token {s!r} does not encode to one token")
    return ControlSpec(
        mode=parsed.name,
        token_strings=tuple(strings),
        token_ids=token_ids,
        think_start=THINK_START,
        think_start_id=tokenizer.convert_tokens_to_ids(THINK_START),
        think_end=THINK_END,
        think_end_id=tokenizer.convert_tokens_to_ids(THINK_END),
        suffix_ids={
            name: tuple(tokenizer.encode(text, add_special_tokens=False))
            for name, text in TWO_STAGE_SUFFIXES.items()
        },
        base_model=base_model,
    )


def _is_single_token(tokenizer, text: str) -> bool:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == text


def _base_pieces(tokenizer, new_ids: list[int], old_len: int) -> list[list[int]]:
    """For each new token, the ids its string splits into when no added token is matched:
    pieces of the base vocabulary only (every id below `old_len`)."""
    pieces = []
    for tid in new_ids:
        text = tokenizer.convert_ids_to_tokens(tid)
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if not ids or max(ids) >= old_len:
            raise UserError(
                f"the base tokenizer cannot spell {text!r} with its own vocabulary, so "
                "--embedding-init text has no pieces to start from; use --embedding-init mean"
            )
        pieces.append(ids)
    return pieces


def _grow_embeddings(
    model,
    vocab: int,
    old_len: int,
    new_ids: list[int],
    noise: float,
    seed: int,
    pieces: list[list[int]] | None = None,
):
    """Make room for `vocab` tokens (padded to a multiple of 64) and set the rows of the new
    tokens (input and output) to the mean of the rows of the `old_len` existing tokens, or, with
    `pieces`, each to the mean of the rows of its own pieces."""
    import torch

    rows = model.get_input_embeddings().weight.shape[0]
    if vocab > rows:
        model.resize_token_embeddings(vocab, pad_to_multiple_of=VOCAB_MULTIPLE, mean_resizing=False)
    if not new_ids:
        return
    gen = torch.Generator().manual_seed(seed)
    index = torch.tensor(new_ids)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:
            mean = weight[:old_len].float().mean(dim=0)
            if pieces is None:
                fill = mean.expand(len(new_ids), -1).clone()
            else:
                fill = torch.stack([weight[ids].float().mean(dim=0) for ids in pieces])
            if noise > 0:
                fill += noise * mean.abs().mean() * torch.randn(fill.shape, generator=gen)
            weight[index] = fill.to(weight.dtype)
