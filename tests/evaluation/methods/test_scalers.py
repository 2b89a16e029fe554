"""Scaling functions: the registry, both decorators, dotted paths, entropy_thresholding's rule
on constructed entropies, and per-token entropies from the engines against torch."""

from __future__ import annotations

import math

import pytest

from budgetthinker.errors import UserError
from budgetthinker.evaluation.methods.scalers import (
    SCALERS,
    get_scale_func,
    register_scaler,
    scale_token_only,
    should_continue_scaling,
)
from budgetthinker.generation import GenRequest, entropy_of_logprobs


def call(scaler, iteration=0, seq=(1, 2, 3), entropies=()):
    return scaler(iteration=iteration, seq=list(seq), entropies=list(entropies))


def test_default_always_continues_with_the_ignore_string():
    assert call(get_scale_func("default", [7, 8])) == (True, [7, 8])
    assert call(get_scale_func("default", []), iteration=5) == (True, [])


def test_entropy_thresholding_follows_spec_and_compat_rules():
    scaler = get_scale_func("entropy_thresholding", [9], threshold=0.5)
    assert call(scaler, entropies=[0.9, 0.7]) == (True, [9])  # uncertain: keep thinking
    assert call(scaler, entropies=[0.1, 0.3]) == (False, [9])  # confident: stop
    decaying = get_scale_func("entropy_thresholding", [9], threshold=0.5, decay_factor=0.5)
    assert call(decaying, iteration=0, entropies=[0.4])[0] is False  # 0.4 < 0.5
    assert call(decaying, iteration=1, entropies=[0.4])[0] is True  # 0.4 > 0.25
    last = get_scale_func("entropy_thresholding", [9], threshold=0.5, last_k=2)
    assert call(last, entropies=[0.9, 0.9, 0.1, 0.2])[0] is False  # only the last two count
    frac = get_scale_func("entropy_thresholding", [9], threshold=0.5, last_k=0.25)
    assert call(frac, entropies=[0.1, 0.1, 0.1, 0.9])[0] is True  # ceil(0.25·4) = 1 token
    fork = get_scale_func("entropy_thresholding", [9], threshold=0.5, compat=["s1"])
    assert call(fork, entropies=[0.1])[0] is True and call(fork, entropies=[0.9])[0] is False
    # The fork's fraction is of the whole sequence (prompt included): ceil(0.5·8) = 4 tokens.
    fork_frac = get_scale_func("entropy_thresholding", [9], threshold=0.5, last_k=0.5,
                               compat="s1")  # fmt: skip
    assert call(fork_frac, seq=range(8), entropies=[0.9, 0.0, 0.0, 0.0, 0.1])[0] is True


def test_decorators_and_registration():
    @register_scaler("test_short_rounds")
    @should_continue_scaling
    def short(*, iteration, seq, entropies, limit=2):
        return iteration < limit

    @register_scaler("test_hmm")
    @scale_token_only
    def hmm(*, iteration, seq, entropies, scale_token):
        return [*scale_token, 42]

    try:
        assert call(get_scale_func("test_short_rounds", [5], limit=1)) == (True, [5])
        assert call(get_scale_func("test_short_rounds", [5], limit=1), iteration=1) == (False, [5])
        assert call(get_scale_func("test_hmm", [5]), iteration=9) == (True, [5, 42])
    finally:
        SCALERS.pop("test_short_rounds")
        SCALERS.pop("test_hmm")


def test_custom_scaler_by_dotted_path_and_errors():
    path = "tests.evaluation.methods.scaler_plugin:two_rounds"
    assert call(get_scale_func(path, [3]), iteration=0) == (True, [3])
    assert call(get_scale_func(path, [3]), iteration=1) == (False, [3])
    with pytest.raises(UserError, match="unknown scaling function 'entropy'; choose from"):
        get_scale_func("entropy", [3])
    with pytest.raises(UserError, match="cannot load scaling function 'nowhere.mod:f'"):
        get_scale_func("nowhere.mod:f", [3])
    with pytest.raises(UserError, match="scaling function 'default' has no parameter 'k'"):
        get_scale_func("default", [3], k=1)


def test_entropy_of_logprobs():
    assert entropy_of_logprobs([0.0, -math.inf]) == 0.0  # a forced token
    uniform = [math.log(0.25)] * 4
    assert entropy_of_logprobs(uniform) == pytest.approx(1.0)


@pytest.mark.slow
def test_hf_entropies_equal_torch_on_the_same_logits(hf_backend, prompt_ids):
    import torch

    from budgetthinker.patches.hf_backend import normalised_entropy

    prompt = prompt_ids[0]
    [result] = hf_backend.run([GenRequest(prompt, max_new_tokens=6, entropies=True,
                                          logprobs=True)])  # fmt: skip
    ids = torch.tensor([prompt + result.token_ids])
    with torch.inference_mode():
        logits = hf_backend.model(ids).logits[0, len(prompt) - 1 : -1].float()
    expected = normalised_entropy(logits)
    probs = torch.softmax(logits, -1)
    direct = -(probs * torch.log_softmax(logits, -1)).sum(-1) / math.log(logits.shape[-1])
    assert torch.allclose(expected, direct, atol=1e-5)
    assert result.entropies == pytest.approx(direct.tolist(), abs=1e-4)
    chosen = torch.log_softmax(logits, -1)[torch.arange(len(result.token_ids)), result.token_ids]
    assert result.logprobs == pytest.approx(chosen.tolist(), abs=1e-4)
    assert len(set(round(e, 3) for e in result.entropies)) > 1
