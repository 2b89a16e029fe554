"""`scripts/gpu_check_lent.sh` (the GPU checks for the lent machine) runs here in its CPU mode:
the same code at small sizes, so the script is known to work before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check_lent.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_cpu_mode_runs_every_part_and_ends_with_one_json_line():
    done = _run("--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and result["mode"].startswith("cpu smoke test")
    assert result["kernel"]["matches_forcer"] is True
    assert result["hf_sync_free"] is True
    assert [r["same_tokens"] for r in result["hf_adapter"]] == [True]
    assert result["hf_adapter"][0]["forced_per_row"] > 0
    assert result["v2_apply_over_decode_step"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_says_so_in_one_line():
    done = _run()
    assert done.returncode == 2
    assert done.stdout.strip().count("\n") == 0 and "no CUDA device" in done.stdout
