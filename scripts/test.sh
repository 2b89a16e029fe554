#!/usr/bin/env bash
# Set up an environment (if needed) and run the tests.
#   bash scripts/test.sh [pytest args…]        core: ruff + the whole suite, e.g. -m "not slow"
#   bash scripts/test.sh sft [pytest args…]    sft environment (.venv-sft): tests/sft, including
#                                              a real LLaMA-Factory run on CPU
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [[ "${1:-}" == "sft" ]]; then
  shift
  bash "$repo/scripts/setup_env.sh" sft
  exec .venv-sft/bin/python -m pytest tests/sft "$@"
fi
bash "$repo/scripts/setup_env.sh" core
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
