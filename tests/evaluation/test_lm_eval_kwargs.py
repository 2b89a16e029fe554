"""lm-eval's gen_kwargs → our settings: parsed by lm-eval's own CLI parser, as the forks' users
write them, and built into a real `EvalConfig` with its methods (no model needed)."""

from __future__ import annotations

import pytest

from budgetthinker.config import build
from budgetthinker.errors import UserError
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.lm_eval_kwargs import parse_gen_kwargs
from budgetthinker.evaluation.methods import get_methods

lm_eval_cli = pytest.importorskip("lm_eval._cli.utils", reason="lm-eval is not installed")


def setting(text: str, task: dict | None = None):
    """What the model gets for `--gen_kwargs TEXT` over a task's generation_kwargs."""
    kwargs = {**(task or {}), **lm_eval_cli.key_val_to_dict(text)}
    s = parse_gen_kwargs(kwargs)
    cfg = build(EvalConfig, {"model": "default", **s.config})
    (method,) = get_methods(cfg.methods)
    return s, cfg, method


def test_ours():
    s, cfg, method = setting("method=control,budget=2000", {"until": ["\n\n"], "do_sample": False})
    assert method.name == "control" and cfg.budgets == [2000]
    assert cfg.max_new_tokens is None  # the method's own cap, B + B//50, as in `eval`
    assert cfg.sampling.temperature == 0.0 and s.until == ("\n\n",) and not s.system_line
    s, cfg, method = setting("method=prompt_v1,budget=500,max_gen_toks=900,system_line=true")
    assert cfg.max_new_tokens == 900 and s.system_line and method.name == "prompt_v1"
    _, cfg, method = setting("method=s1,budget=300,tip=withoutremaining,compat=s1")
    assert method.params["tip"] == "withoutremaining" and cfg.compat == ["s1"]
    _, _, method = setting("method=tale,budget=300,compat=tale")  # TALE's own compat
    assert method.params["compat"] == ["tale"]


def test_the_s1_fork_command_selects_s1_with_its_meaning():
    # eval/commands.sh of the s1 fork, verbatim
    _, cfg, method = setting(
        "max_gen_toks=32768,max_tokens_thinking=auto,thinking_n_ignore=6,thinking_n_ignore_str=Wait"
    )
    assert method.name == "s1"
    assert method.params["max_tokens_thinking"] == "auto"
    assert method.params["thinking_n_ignore"] == 6
    assert method.params["thinking_n_ignore_str"] == "Wait"
    assert method.params["max_gen_toks"] == 32768  # answer cap and auto's total, as the fork
    assert cfg.budgets == [32768] and cfg.compat == []
    _, cfg, method = setting("max_tokens_thinking=2000,until_thinking=<|im_start|>")
    assert cfg.budgets == [2000] and method.params["until_thinking"] == "<|im_start|>"
    _, cfg, _ = setting("thinking_n_ignore=1")  # no cap: B = max_gen_toks (lm-eval's 256)
    assert cfg.budgets == [256]


def test_the_scaling_fork_names_get_the_forks_rule():
    _, _, method = setting(
        "max_gen_toks=4096,max_tokens_thinking=auto,thinking_n_ignore=6,thinking_n_ignore_str=Wait,"
        "scale_func_name=entropy_thresholding,threshold=0.5,decay_factor=0.9,last_k=-1"
    )
    assert method.params["scale_func"] == {
        "name": "entropy_thresholding", "threshold": 0.5, "decay_factor": 0.9,
        "last_k": -1, "compat": ["hf_fork"],
    }  # fmt: skip
    assert isinstance(method.params["scale_func"]["last_k"], int)  # lm-eval parsed "-1" as -1.0
    _, _, method = setting("scale_func_name=entropy_thresholding,scale_func_compat=vllm_fork")
    assert method.params["scale_func"]["compat"] == ["vllm_fork"]
    _, _, method = setting("scale_func_name=entropy_thresholding,scale_func_compat=none")
    assert "compat" not in method.params["scale_func"]  # our documented rule
    _, _, method = setting("thinking_n_ignore=2,scale_func_name=default")
    assert method.params["scale_func"] == {"name": "default"}


def test_sampling_follows_lm_eval():
    assert setting("method=none,do_sample=true")[1].sampling.temperature == 1.0
    cfg = setting("method=none,do_sample=true,temperature=0.6,top_p=0.9")[1]
    assert (cfg.sampling.temperature, cfg.sampling.top_p) == (0.6, 0.9)
    assert setting("method=none,do_sample=false,temperature=0.6")[1].sampling.temperature == 0
    _, cfg, method = setting("max_gen_toks=128")  # no method, no fork key: plain generation
    assert method.name == "none" and cfg.budgets == [128] and cfg.max_new_tokens == 128


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("method=control,budget=100,top_k=5", ["'top_k'", "accepted:", "budget", "method"]),
        ("temperature_thinking=0.7", ["temperature_thinking", "per-phase", "thinking_n_ignore"]),
        ("method=control,budget=100,thinking_n_ignore=2", ["thinking_n_ignore", "method=s1"]),
        ("method=control", ["budget=B"]),
        ("method=nosuch,budget=5", ["unknown method 'nosuch'", "control"]),
        ("threshold=0.3", ["scale_func_name"]),
        ("scale_func_name=entropy_thresholding,scale_func_compat=x", ["hf_fork, vllm_fork"]),
        ("method=s1,budget=10,max_gen_toks=0", ["max_gen_toks"]),
        ("method=none,until=7", ["until"]),
    ],
)
def test_mistakes_are_one_line_naming_the_fix(text, needles):
    with pytest.raises(UserError) as e:
        setting(text)
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value)
