"""Weighted special-token loss for SFT (docs/spec.md §4), registered through public hooks only.

    L = (1 / N_targets) · Σ_t w_t · CE_t,   w_t = w if target_t is a control token else 1

`special_token_loss`: `F` → w = 0 (control tokens are not learned: the engine inserts them),
`T` → w = 1 (default, plain cross-entropy), `T<n>` → w = n (e.g. `T10`). The sum is divided by
the number of target tokens (labels ≠ ignore_index), not by the sum of weights — faithful to the
original. With gradient accumulation the trainer passes `num_items_in_batch` (targets over all
micro-batches) and that is the divisor instead. Control-token ids come from the model's spec.

Two ways to plug it in, neither edits an installed file:

- `model.loss_function = SpecialTokenLoss(ids, w)` (a public property setter of transformers'
  `PreTrainedModel`): any trainer that passes `labels` to the model uses it — LLaMA-Factory,
  TRL, plain `Trainer`. `SpecialTokenLossCallback` does this at the start of training.
- `Trainer(compute_loss_func=loss.compute_loss_func)`: transformers' trainer hook.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from budgetthinker.errors import UserError

IGNORE_INDEX = -100
_WEIGHT_RE = re.compile(r"^T(\d+(?:\.\d+)?)$")


def parse_special_token_loss(value: object) -> float:
    """`F` → 0, `T` → 1, `T<n>` → n; anything else is a UserError.

    >>> [parse_special_token_loss(v) for v in ("F", "T", "T10")]
    [0.0, 1.0, 10.0]
    """
    text = str(value).strip()
    if text == "F":
        return 0.0
    if text == "T":
        return 1.0
    if m := _WEIGHT_RE.match(text):
        return float(m.group(1))
    raise UserError(
        f"special_token_loss must be F (weight 0), T (weight 1) or T<n> (weight n, e.g. T10), "
        f"got {value!r}"
    )


def weighted_token_loss(
    logits,
    labels,
    special_ids: Sequence[int],
    weight: float,
    num_items_in_batch=None,
    ignore_index: int = IGNORE_INDEX,
    shift_labels=None,
):
    """Causal-LM cross-entropy with control-token targets weighted by `weight`.

    `labels` are aligned with `logits` (the usual unshifted labels; the target of position i is
    labels[i + 1]); or pass `shift_labels` already shifted, as transformers does for some
    models. Returns a scalar tensor: Σ w·CE over targets ÷ (`num_items_in_batch` or the number
    of targets).
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    if shift_labels is None:
        labels = F.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:]
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    targets = shift_labels.reshape(-1).to(flat_logits.device)
    ce = F.cross_entropy(flat_logits, targets, ignore_index=ignore_index, reduction="none")
    if weight != 1.0 and len(special_ids):
        ids = torch.as_tensor(list(special_ids), device=targets.device, dtype=targets.dtype)
        special = torch.isin(targets, ids)
        # masked_fill for w = 0, so an infinite CE on a control token cannot turn into NaN
        ce = ce.masked_fill(special, 0.0) if weight == 0 else torch.where(special, ce * weight, ce)
    if num_items_in_batch is None:
        num_items_in_batch = (targets != ignore_index).sum().clamp(min=1)
    elif torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(ce.device)
    return ce.sum() / num_items_in_batch


class SpecialTokenLoss:
    """The loss with its control-token ids and weight bound; picklable (no closure).

    Call signature is transformers' `model.loss_function`:
    `(logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=-100,
    shift_labels=None, **kwargs)`.
    """

    def __init__(self, special_ids: Sequence[int], weight: float = 1.0):
        self.special_ids = tuple(int(i) for i in special_ids)
        self.weight = float(weight)

    @classmethod
    def from_spec(cls, spec, special_token_loss: object = "T") -> SpecialTokenLoss:
        return cls(spec.token_ids, parse_special_token_loss(special_token_loss))

    def __call__(
        self,
        logits,
        labels,
        vocab_size=None,
        num_items_in_batch=None,
        ignore_index: int = IGNORE_INDEX,
        shift_labels=None,
        **kwargs,
    ):
        return weighted_token_loss(
            logits,
            labels,
            self.special_ids,
            self.weight,
            num_items_in_batch,
            ignore_index,
            shift_labels,
        )

    def compute_loss_func(self, outputs, labels, num_items_in_batch=None):
        """transformers `Trainer(compute_loss_func=...)` signature."""
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        return self(logits, labels, num_items_in_batch=num_items_in_batch)

    def __repr__(self) -> str:
        return f"SpecialTokenLoss(weight={self.weight:g}, ids={list(self.special_ids)})"


def install(model, loss: SpecialTokenLoss):
    """Set `loss` as the model's `loss_function` (unwrapping DDP/DeepSpeed/PEFT wrappers);
    returns the model it was set on."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "module"):
            inner = inner.module
        else:
            break
    if not hasattr(type(inner), "loss_function"):
        raise UserError(f"{type(inner).__name__} has no loss_function hook (transformers >= 4.46)")
    inner.loss_function = loss
    return inner
