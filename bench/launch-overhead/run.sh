#!/usr/bin/env bash
# Launch-overhead benchmark for gvm: builds launch.cu, then runs launch + torch_step alternating
# without and with LD_PRELOAD=libgvm.so (A B A B ..., --pairs, default 3) and prints a table of the
# added cost per launch. JSON goes to bench/results/launch-overhead.json (and $OUT if set).
#
# Usage: bash bench/launch-overhead/run.sh [--pairs 3] [--n 200000] [--reps 5] [--skip-torch] [--strict]
# Environment: GVM_AGENT (default build/Release/libgvm.so), NVCC (default: nvcc on PATH, then
#   /usr/local/cuda/bin/nvcc), NVCC_ARCH (default sm_90), PYTHON (default python3), OUT.
set -euo pipefail

say() { printf '[launch-overhead] %s\n' "$*"; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
PYTHON=${PYTHON:-python3}

for a in "$@"; do
  case "$a" in -h|--help) exec "$PYTHON" bench/launch-overhead/compare.py --help ;; esac
done

# shellcheck source=bench/lib/gpu.sh
source "$root/bench/lib/gpu.sh"
gvm_gpus_or_skip

# --- the agent (built when missing; see bench/lib/build-agent.sh)
# shellcheck source=bench/lib/build-agent.sh
source "$root/bench/lib/build-agent.sh"
gvm_ensure_agent || exit 1

# --- the launch benchmark
bin=$root/build/bench/launch
gvm_nvcc_build bench/launch-overhead/launch.cu "$bin" || exit 1

set +e
"$PYTHON" bench/launch-overhead/compare.py --launch "$bin" --agent "$agent" "$@"
rc=$?
set -e
say "exit $rc"
exit $rc
