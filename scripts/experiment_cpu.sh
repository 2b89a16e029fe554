#!/usr/bin/env bash
# CPU evidence experiment (thin launcher): sets up the core and sft environments if needed, then
# runs budgetthinker.pipelines.experiment_cpu — synthetic traces → SFT data with and without control tokens
# → SFT of the embedded model for each arm → evaluation of both arms and the untrained model →
# runs/experiment_cpu/report.md, report.csv, evidence.png.
#
#   bash scripts/experiment_cpu.sh                          # configs/experiments/cpu_evidence.yaml
#   bash scripts/experiment_cpu.sh --dry-run                # print the commands, check the recipes
#   bash scripts/experiment_cpu.sh sft.max_steps=2 eval.problems=2 run_dir=runs/smoke
#
# A rerun skips the stages that finished (delete runs/experiment_cpu/ to start over).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --help before any setup: this header, then the command's own help if the environment exists
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
  sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
  [[ -x "$repo/.venv/bin/python" ]] && { echo; "$repo/.venv/bin/python" -m budgetthinker.pipelines.experiment_cpu --help; }
  exit 0
fi
config="configs/experiments/cpu_evidence.yaml"
if [[ $# -gt 0 && "$1" == *.yaml ]]; then
  config="$1"
  shift
fi
bash "$repo/scripts/setup_env.sh" core
bash "$repo/scripts/setup_env.sh" sft
export TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
cd "$repo"
# the sft environment reuses the embedded model converted by the core one
.venv/bin/python -m budgetthinker.preparation.models >/dev/null
exec "$repo/.venv/bin/python" -m budgetthinker.pipelines.experiment_cpu --config "$config" "$@"
