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
    # The two forks part where 1 − t·d^i and t·d^i do: threshold 0.2 → below 0.8 / below 0.2.
    hf = get_scale_func("entropy_thresholding", [9], threshold=0.2, compat=["hf_fork"])
    vllm = get_scale_func("entropy_thresholding", [9], threshold=0.2, compat=["vllm_fork"])
    assert call(hf, entropies=[0.5])[0] is True and call(vllm, entropies=[0.5])[0] is False


def hf_fork_reference(threshold, decay_factor, last_k, iteration, seq, entropies):
    """The HF fork's rule (reference notes A3, issue 20), written out: a last_k strictly between 0
    and 1 becomes ceil(last_k · len(seq)); any last_k above −1 keeps entropies[-last_k:] (so 0
    keeps them all); the mean is 0 for none; go on while it is below 1 − threshold·decay^i."""
    return _fork_mean(last_k, seq, entropies) < 1 - threshold * decay_factor**iteration


def vllm_fork_reference(threshold, decay_factor, last_k, iteration, seq, entropies):
    """The later vLLM fork: the same window, go on while the mean is below threshold·decay^i."""
    return _fork_mean(last_k, seq, entropies) < threshold * decay_factor**iteration


def _fork_mean(last_k, seq, entropies):
    window = list(entropies)
    if 0 < last_k < 1:
        last_k = math.ceil(last_k * len(seq))
    if last_k > -1 and last_k != 0:  # entropies[-0:] is all of them
        window = window[max(0, len(window) - last_k) :]
    return sum(window) / len(window) if window else 0.0


def entropy_cases():
    """Constructed entropy lists (exact ties with the limits included) × thresholds × decays ×
    last_k (−1, 0, −3, integers, fractions) × iterations 0–3 × sequence lengths."""
    import random

    rng = random.Random(7)
    lists = [[], [0.5], [0.0, 1.0], [0.25, 0.75], [0.2] * 5, [0.8, 0.1, 0.1], [1.0] * 3]
    lists += [[rng.choice([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, rng.random()])
               for _ in range(rng.randint(1, 12))] for _ in range(12)]  # fmt: skip
    for ent in lists:
        for threshold in (0.1, 0.2, 0.5, 0.75, 0.9):
            for decay in (1.0, 0.9, 0.5):
                for last_k in (-1, 0, -3, 1, 2, 5, 20, 0.1, 0.25, 0.5, 0.99):
                    for iteration in range(4):
                        yield threshold, decay, last_k, iteration, range(rng.randint(1, 40)), ent


@pytest.mark.parametrize(("rule", "reference"), [("hf_fork", hf_fork_reference),
                                                 ("vllm_fork", vllm_fork_reference)])
def test_fork_rules_against_their_re_implementations(rule, reference):
    same = total = 0
    for threshold, decay, last_k, iteration, seq, ent in entropy_cases():
        scaler = get_scale_func("entropy_thresholding", [9], threshold=threshold,
                                decay_factor=decay, last_k=last_k, compat=[rule])  # fmt: skip
        ours = call(scaler, iteration=iteration, seq=seq, entropies=ent)
        expected = reference(threshold, decay, last_k, iteration, seq, ent)
        total += 1
        same += ours == (expected, [9])
    print(f"entropy_thresholding compat {rule}: {same}/{total} identical")
    assert same == total
    # Not vacuous: the rules differ from each other and from our default on these cases.
    differ = sum(hf_fork_reference(*c) != vllm_fork_reference(*c) for c in entropy_cases())
    print(f"hf_fork and vllm_fork agree on {total - differ}/{total}")
    assert 0 < differ < total


def test_compat_names_and_parameters_the_forks_cannot_run():
    with pytest.raises(UserError, match=r"compat: no switch for 'hf' here; .* lists originals: "
                       r"hf_fork \(.*\), vllm_fork \(.*\), s1 \("):  # fmt: skip
        get_scale_func("entropy_thresholding", [9], compat=["hf"])
    with pytest.raises(UserError, match="hf_fork and vllm_fork are two different rules"):
        get_scale_func("entropy_thresholding", [9], compat=["hf_fork", "vllm_fork"])
    for bad in (2.0, -0.5, 0.0):
        with pytest.raises(UserError, match=f"last_k {bad} with compat vllm_fork"):
            get_scale_func("entropy_thresholding", [9], last_k=bad, compat=["vllm_fork"])
        get_scale_func("entropy_thresholding", [9], last_k=bad)  # our rule takes it
    with pytest.raises(UserError, match="scaling function 'default' has no parameter 'compat'"):
        get_scale_func("default", [9], compat=["hf_fork"])
    from budgetthinker.evaluation.methods import get_method

    # compat: [s1] on s1 is what the s1-era docs promised: the HF fork's rule (0.3 < 1 − 0.2)
    s1 = get_method({"name": "s1",
                     "scale_func": {"name": "entropy_thresholding", "threshold": 0.2}})  # fmt: skip
    assert s1.scaler([9], compat=True)(iteration=0, seq=[1], entropies=[0.3])[0] is True
    assert s1.scaler([9], compat=False)(iteration=0, seq=[1], entropies=[0.3])[0] is True
    assert s1.scaler([9], compat=False)(iteration=0, seq=[1], entropies=[0.1])[0] is False


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
