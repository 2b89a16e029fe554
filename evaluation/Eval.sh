#!/usr/bin/env bash
# Budget sweep launcher (thin): sets up the environment if needed, then runs `budgetthinker eval`.
#
#   bash evaluation/Eval.sh                                  # embedded default recipe on CPU
#   bash evaluation/Eval.sh configs/eval/math500_release.yaml model=DIR data.data_dir=DIR
#   bash evaluation/Eval.sh budgets=[64,128] backend=vllm    # overrides on the default recipe
#
# The original scripts' variables are accepted as aliases: MODEL_NAME_OR_PATH, DATA_NAME (comma
# list), remaining (8ratio → method control), tip (prompt_v1 | prompt_v2 | withoutremaining),
# stage (2 → two-stage), budget ("100 250 …"), PROMPT_TYPE (ignored: the model's own chat
# template is always used). Command-line key=value overrides win over them.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --help before any setup: this header, then the command's own help if the environment exists
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
  sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
  [[ -x "$repo/.venv/bin/budgetthinker" ]] && { echo; "$repo/.venv/bin/budgetthinker" eval --help; }
  exit 0
fi
config="$repo/configs/eval/default.yaml"
if [[ $# -gt 0 && "$1" == *.yaml ]]; then
  config="$1"
  shift
fi
if [[ -n "${PROMPT_TYPE:-}" ]]; then
  echo "[Eval.sh] PROMPT_TYPE=$PROMPT_TYPE ignored: prompts use the model's own chat template." >&2
fi
bash "$repo/scripts/setup_env.sh" core
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}" TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
cd "$repo"
exec "$repo/.venv/bin/budgetthinker" eval --config "$config" "$@"
