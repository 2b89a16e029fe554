#!/usr/bin/env bash
# Set up the core environment (if needed) and run the test suite.
#   bash scripts/test.sh [pytest args…]      e.g. bash scripts/test.sh -m "not slow"
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh" core
cd "$repo"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
