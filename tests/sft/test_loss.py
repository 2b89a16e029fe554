"""Weighted special-token loss: F / T / T10 against values computed by hand on a fixed batch,
ignore_index handling, num_items_in_batch, and both public hooks."""

from __future__ import annotations

import math

import pytest

from budgetthinker.errors import UserError
from budgetthinker.sft.loss import SpecialTokenLoss, install, parse_special_token_loss

torch = pytest.importorskip("torch")

CTRL = (5, 6)  # control-token ids of the toy vocabulary


def _batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, generator=g)
    # targets (shifted): row 0 → [3, 5, -100, 6], row 1 → [-100, 2, 6, 1]
    labels = torch.tensor([[-100, 3, 5, -100, 6], [7, -100, 2, 6, 1]])
    return logits, labels


def _hand(logits, labels, weight):
    """Σ_t w_t · (logsumexp − logit[target]) over non-ignored targets ÷ their count."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1] - 1):
            target = int(labels[b, i + 1])
            if target == -100:
                continue
            row = [float(x) for x in logits[b, i]]
            ce = math.log(sum(math.exp(x) for x in row)) - row[target]
            total += (weight if target in CTRL else 1.0) * ce
            count += 1
    return total / count


@pytest.mark.parametrize(("value", "weight"), [("F", 0.0), ("T", 1.0), ("T10", 10.0)])
def test_matches_hand_computed(value, weight):
    logits, labels = _batch()
    loss = SpecialTokenLoss(CTRL, parse_special_token_loss(value))
    got = float(loss(logits, labels, vocab_size=8))
    assert got == pytest.approx(_hand(logits, labels, weight), rel=1e-6)


def test_t_equals_transformers_causal_lm_loss():
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, labels = _batch()
    ours = SpecialTokenLoss(CTRL, 1.0)(logits, labels, vocab_size=8)
    assert float(ours) == pytest.approx(float(ForCausalLMLoss(logits, labels, vocab_size=8)))
    ours = SpecialTokenLoss(CTRL, 1.0)(logits, labels, num_items_in_batch=11)
    theirs = ForCausalLMLoss(logits, labels, vocab_size=8, num_items_in_batch=11)
    assert float(ours) == pytest.approx(float(theirs))


def test_not_renormalised_and_num_items():
    logits, labels = _batch()
    f, t, t10 = (float(SpecialTokenLoss(CTRL, w)(logits, labels)) for w in (0, 1, 10))
    # linear in the weight with the same denominator (6 targets): no re-normalisation
    assert t10 - t == pytest.approx(9 * (t - f), rel=1e-6)
    summed = _hand(logits, labels, 10.0) * 6
    got = SpecialTokenLoss(CTRL, 10)(logits, labels, num_items_in_batch=torch.tensor(24))
    assert float(got) == pytest.approx(summed / 24, rel=1e-6)


def test_ignore_index_and_shift_labels():
    logits, labels = _batch()
    loss = SpecialTokenLoss(CTRL, 10)
    # a different ignore_index value is honoured
    alt = labels.clone()
    alt[alt == -100] = -1
    assert float(loss(logits, alt, ignore_index=-1)) == pytest.approx(float(loss(logits, labels)))
    # pre-shifted labels give the same value
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    assert float(loss(logits, None, shift_labels=shifted)) == pytest.approx(
        float(loss(logits, labels))
    )
    # an all-ignored batch is 0, not NaN
    assert float(loss(logits, torch.full_like(labels, -100))) == 0.0


def test_weight_zero_has_no_nan_gradient():
    logits, labels = _batch()
    logits = logits.clone()
    logits[0, 1, 5] = -float("inf")  # control-token target with infinite CE
    logits.requires_grad_(True)
    value = SpecialTokenLoss(CTRL, 0)(logits, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_parse_values():
    assert parse_special_token_loss("T2.5") == 2.5
    for bad in ("", "X", "T-1", "F1", "t"):
        with pytest.raises(UserError, match="special_token_loss"):
            parse_special_token_loss(bad)


def test_hooks_on_a_real_model():
    """model.loss_function (public setter) and Trainer's compute_loss_func signature."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=8,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = torch.tensor([[1, 3, 5, 2, 6], [7, 4, 2, 6, 1]])
    labels = ids.clone()
    labels[0, 0] = -100
    base = model(input_ids=ids, labels=labels).loss.item()
    loss = SpecialTokenLoss(CTRL, 10)
    assert install(model, loss) is model and model.loss_function is loss
    out = model(input_ids=ids, labels=labels)
    assert float(out.loss) == pytest.approx(_hand(out.logits.detach(), labels, 10.0), rel=1e-5)
    assert float(out.loss) != pytest.approx(base)
    assert float(loss.compute_loss_func(out, labels)) == pytest.approx(float(out.loss))
    import pickle

    # torchrun workers get the loss pickled: the copy must compute the same value
    copy = pickle.loads(pickle.dumps(loss))
    assert float(copy(out.logits, labels)) == pytest.approx(float(out.loss), rel=1e-6)
