#!/usr/bin/env bash
# bench/colocation: an LLM server beside a best-effort training job, every sharing case in one run
# (see run.py). Usage: bash bench/colocation/run.sh [--job lora|unet|all] [--cases a,b,...] [run.py options]
# With no options: every case beside the LoRA job, then beside the UNet (about 15 minutes on an H100).
# COLOC_TIMEOUT (s) bounds the whole run (default 3600; a machine lent for 10 minutes a call wants less
# and one job per call).
# Needs an NVIDIA GPU, PyTorch with transformers and peft, node (for the gvm CLI) and the built agent.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
PYTHON=${PYTHON:-python3}
export PYTHON
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU [0-9]'; then
  echo "SKIP: no NVIDIA GPU"; exit 0
fi
[ -f build/Release/libgvm.so ] || [ -n "${GVM_AGENT_PATH:-}" ] || { echo "ERROR: build the agent first (npm install)"; exit 1; }
command -v node >/dev/null || [ -n "${GVM_CLI:-}" ] || { echo "ERROR: node is needed for the gvm CLI"; exit 1; }
exec timeout -k 20 "${COLOC_TIMEOUT:-3600}" "$PYTHON" bench/colocation/run.py "$@"
