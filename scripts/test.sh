#!/usr/bin/env bash
# Set up the environments (if needed) and run the tests.
#   bash scripts/test.sh                     everything: sets up all three environments, then
#                                            ruff + the core suite in .venv (incl. the import
#                                            layers, the docs build and the end-to-end script
#                                            smokes that need .venv-sft/.venv-rl), then the SFT
#                                            tests in .venv-sft and the verl tests in .venv-rl
#                                            (this is what CI runs)
#   bash scripts/test.sh [core] [pytest args…]   the core suite only, e.g. -m "not slow"
#   bash scripts/test.sh sft [pytest args…]      tests/sft in .venv-sft (LLaMA-Factory pins an
#                                                older transformers), incl. a real CPU SFT run
#   bash scripts/test.sh rl [pytest args…]       the RL tests in .venv-rl (verl 0.9.1: config,
#                                                reward loader, dataset, agent loop on CPU)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --help before any setup: this header, then the command's own help if the environment exists
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
  sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
  exit 0
fi
cd "$repo"
# Property tests draw the same examples every run here (tests/conftest.py); plain pytest explores.
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"

stage="all"
case "${1:-}" in
  core|sft|rl) stage="$1"; shift ;;
esac
[[ "$stage" == "all" && $# -gt 0 ]] && stage="core"

run_core() {
  bash "$repo/scripts/setup_env.sh" core
  .venv/bin/ruff check .
  .venv/bin/python -m pytest "$@"
}

# The embedded model is converted from GGUF by the core environment only (older transformers get
# its tokenizer wrong); the sft and rl environments reuse the cached folder.
embedded_model() {
  bash "$repo/scripts/setup_env.sh" core
  .venv/bin/python -m budgetthinker.preparation.models >/dev/null
}

run_sft() {
  embedded_model
  bash "$repo/scripts/setup_env.sh" sft
  .venv-sft/bin/python -m pytest tests/sft "$@"
}

run_rl() {
  embedded_model
  bash "$repo/scripts/setup_env.sh" rl
  .venv-rl/bin/python -m pytest tests/rl "$@"
}

case "$stage" in
  core) run_core "$@" ;;
  sft) run_sft "$@" ;;
  rl) run_rl "$@" ;;
  all)
    for env in core sft rl; do bash "$repo/scripts/setup_env.sh" "$env"; done
    run_core; run_sft; run_rl ;;
esac
