#!/usr/bin/env bash
# GPU compatibility suite for gvm: every workload in test/gpu runs without and with libgvm.so
# preloaded; outputs must be bit-identical. Prints a markdown table; writes gpu-suite.md/.json and
# logs to $OUT (or build/gpu-suite). Exit 1 if a hash differs or a workload fails.
#
# Usage (from anywhere; on the GPU machine prefix with `source .device/env.sh &&` so node is on PATH):
#   bash test/gpu/run.sh [--quick] [--only train_default,generate] [--list] [--timeout S] [--deadline S]
# Environment: GVM_AGENT (default build/Release/libgvm.so), GVM_CLI (default `node dist/cli/gvm.js`),
#   OUT (where results go), PYTHON (default python3).
set -euo pipefail

say() { printf '[gpu-suite] %s\n' "$*"; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
PYTHON=${PYTHON:-python3}

for a in "$@"; do
  case "$a" in
    --list|-h|--help) exec "$PYTHON" test/gpu/runner.py "$@" ;;
  esac
done

# --- skip politely where there is no GPU (CI); the real runs are on the GPU machine
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "SKIP: no NVIDIA GPU (nvidia-smi not found)"
  exit 0
fi
if ! gpus=$(timeout 60 nvidia-smi -L 2>&1); then
  echo "SKIP: no NVIDIA GPU (nvidia-smi -L failed: $(printf '%s' "$gpus" | head -n1))"
  exit 0
fi
if ! printf '%s\n' "$gpus" | grep -q '^GPU [0-9]'; then
  echo "SKIP: no NVIDIA GPU (nvidia-smi lists none)"
  exit 0
fi
say "GPUs: $(printf '%s' "$gpus" | tr '\n' ';')"

command -v "$PYTHON" >/dev/null || { say "ERROR: $PYTHON not found"; exit 1; }

# --- the agent (built when missing; see bench/lib/build-agent.sh)
# shellcheck source=bench/lib/build-agent.sh
source "$root/bench/lib/build-agent.sh"
gvm_ensure_agent || exit 1
export GVM_AGENT=$agent

# --- the CLI (optional: without it the workloads read the control block directly)
if [ -z "${GVM_CLI:-}" ]; then
  if ! command -v node >/dev/null 2>&1; then
    say "WARNING: node is not on PATH (on the GPU machine: source .device/env.sh first);" \
        "memory.current will be read from the control block, not through the CLI"
  elif [ ! -f "$root/dist/cli/gvm.js" ]; then
    say "WARNING: dist/cli/gvm.js is missing (npm run build?); the CLI checks will fall back" \
        "to reading the control block"
  fi
  export GVM_CLI="node $root/dist/cli/gvm.js"
fi
say "CLI: $GVM_CLI"

set +e
"$PYTHON" test/gpu/runner.py --agent "$agent" --cli "$GVM_CLI" "$@"
rc=$?
set -e
say "exit $rc"
exit $rc
