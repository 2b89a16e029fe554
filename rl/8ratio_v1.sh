#!/usr/bin/env bash
# RL launcher (thin): the release recipe (docs/spec.md §5) on verl — GRPO, budget curriculum 8ratio_v1,
# control tokens forced in vLLM rollouts. Sets up the rl environment if needed, then runs
# `budgetthinker rl --engine verl`, which writes the curriculum data and starts verl.
#
#   bash rl/8ratio_v1.sh actor_rollout_ref.model.path=/path/to/sft-checkpoint
#   bash rl/8ratio_v1.sh actor_rollout_ref.model.path=… trainer.n_gpus_per_node=8 trainer.nnodes=2
#   bash rl/8ratio_v1.sh --dry-run actor_rollout_ref.model.path=default   # check only (CPU too)
#
# Overrides are verl/Hydra `key=value`s and come last, so they win. The original variables are
# aliases: MODEL_PATH (the policy model), steady (the recipe name, default 8ratio_v1),
# stage (2: two-stage validation), remaining (8ratio: force control tokens; default: do not).
# Multi-node: start Ray on every node first (docs/stages/rl.md, "Multi-GPU, multi-node").
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --help before any setup: this header, then the command's own help if the environment exists
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
  sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
  [[ -x "$repo/.venv-rl/bin/budgetthinker" ]] && { echo; "$repo/.venv-rl/bin/budgetthinker" rl --help; }
  exit 0
fi
bash "$repo/scripts/setup_env.sh" rl
cd "$repo"
exec "$repo/.venv-rl/bin/budgetthinker" rl --engine verl --config "${steady:-8ratio_v1}" "$@"
