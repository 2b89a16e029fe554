#!/usr/bin/env bash
# Set up the core environment (if needed), prepare the embedded default model for 8ratio and show
# control tokens being forced into its thinking by both engines.
#   bash scripts/demo.sh [--budget B] [--prompt TEXT]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --help before any setup: this header, then the command's own help if the environment exists
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
  sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
  exit 0
fi
budget=64
prompt="Explain step by step how to compute 17 times 23."
while [[ $# -gt 0 ]]; do
  case "$1" in
    --budget) budget="$2"; shift 2 ;;
    --prompt) prompt="$2"; shift 2 ;;
    *) echo "demo.sh: unknown argument '$1' (options: --budget B, --prompt TEXT)" >&2; exit 2 ;;
  esac
done
bash "$repo/scripts/setup_env.sh" core
bt="$repo/.venv/bin/budgetthinker"
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}" TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
for backend in hf vllm; do
  echo
  echo "=== backend: $backend ==="
  "$bt" generate --model default --backend "$backend" --budget "$budget" --prompt "$prompt"
done
