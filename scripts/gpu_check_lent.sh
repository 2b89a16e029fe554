#!/usr/bin/env bash
# GPU checks for the machine a GPU is lent with (torch + Triton + transformers, no vLLM), ≤ 5 min:
# the fused forcing kernel vs the torch ops vs Forcer at batch 256 (token identity, no sync), the
# transformers adapter's device-side path at batch 16 and 256 (target ≤ 1.02), and the V2
# processor's apply() next to a 1.5B-shape decode step. Installs nothing, downloads nothing; the
# project is used as source (PYTHONPATH=the checkout). Last line of stdout: one JSON object.
#
#   bash scripts/gpu_check_lent.sh                 # on a CUDA machine
#   bash scripts/gpu_check_lent.sh --device cpu    # the same code at small sizes (smoke test)
#
# Users' own GPU nodes with vLLM installed: scripts/gpu_check.sh checks vLLM's Model Runner V2.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
cd "$here"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$py" scripts/gpu_check_lent.py "$@"
