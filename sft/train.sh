#!/usr/bin/env bash
# SFT launcher (thin): sets up the sft environment if needed, then runs `budgetthinker sft`.
#
#   bash sft/train.sh                                   # configs/sft/cpu_smoke.yaml on CPU
#   bash sft/train.sh configs/sft/release.yaml          # the release recipe (8 GPUs, DeepSpeed)
#   bash sft/train.sh configs/sft/release.yaml budgetthinker.nproc=4 learning_rate=1e-5
#
# The original variable `special_token_loss` (F | T | T<n>) is accepted as an alias of
# budgetthinker.special_token_loss; command-line key=value overrides win over it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --help before any setup: this header, then the command's own help if the environment exists
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
  sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
  [[ -x "$repo/.venv-sft/bin/budgetthinker" ]] && { echo; "$repo/.venv-sft/bin/budgetthinker" sft --help; }
  exit 0
fi
config="$repo/configs/sft/cpu_smoke.yaml"
if [[ $# -gt 0 && "$1" == *.yaml ]]; then
  config="$1"
  shift
fi
bash "$repo/scripts/setup_env.sh" sft
cd "$repo"
exec "$repo/.venv-sft/bin/budgetthinker" sft --config "$config" "$@"
