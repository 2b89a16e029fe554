#!/usr/bin/env bash
# The release pipeline in one command (GPU nodes): prepare → SFT data → SFT 2 + 4 epochs
# (LLaMA-Factory, .venv-sft) → GRPO (rl/8ratio_v1.sh, verl, .venv-rl) → merge the last RL
# checkpoint → the math500_release sweep. Sets up the three environments if needed, then runs
# budgetthinker.pipelines.release; a rerun skips the stages that finished.
#
#   bash scripts/release_pipeline.sh MODEL_DIR traces=TRACES.jsonl \
#       rl.train_files=[train_RL.parquet] rl.val_files=[math500_RL.parquet] eval.data_dir=DATA
#   bash scripts/release_pipeline.sh MODEL_DIR --dry-run …   # print every command, check every
#                                                            # config, train nothing (CPU too)
#
# Recipe: configs/experiments/release.yaml (key=value overrides, e.g. run_dir=runs/r2
# sft.overrides=[budgetthinker.nproc=4] rl.overrides=[trainer.n_gpus_per_node=8]).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --help before any setup: this header, then the command's own help if the environment exists
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
  sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
  [[ -x "$repo/.venv/bin/python" ]] && { echo; "$repo/.venv/bin/python" -m budgetthinker.pipelines.release --help; }
  exit 0
fi
for stage in core sft rl; do
  bash "$repo/scripts/setup_env.sh" "$stage"
done
cd "$repo"
# MODEL_DIR=default: the embedded model, converted by the core environment only
.venv/bin/python -m budgetthinker.preparation.models >/dev/null
exec "$repo/.venv/bin/python" -m budgetthinker.pipelines.release "$@"
