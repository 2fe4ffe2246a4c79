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

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "SKIP: no NVIDIA GPU (nvidia-smi not found)"; exit 0
fi
if ! gpus=$(timeout 60 nvidia-smi -L 2>&1) || ! printf '%s\n' "$gpus" | grep -q '^GPU [0-9]'; then
  echo "SKIP: no NVIDIA GPU (nvidia-smi lists none: $(printf '%s' "$gpus" | head -n1))"; exit 0
fi
say "GPUs: $(printf '%s' "$gpus" | tr '\n' ';')"

# --- the agent (built when missing; see bench/lib/build-agent.sh)
# shellcheck source=bench/lib/build-agent.sh
source "$root/bench/lib/build-agent.sh"
gvm_ensure_agent || exit 1

# --- the launch benchmark
nvcc=${NVCC:-$(command -v nvcc || true)}
[ -n "$nvcc" ] || nvcc=/usr/local/cuda/bin/nvcc
[ -x "$nvcc" ] || { say "ERROR: nvcc not found (set NVCC)"; exit 1; }
cuda_home=$(cd "$(dirname "$nvcc")/.." && pwd)
arch=${NVCC_ARCH:-sm_90}
bin=$root/build/bench/launch
src=$root/bench/launch-overhead/launch.cu
mkdir -p "$(dirname "$bin")"
if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ] || [ ! -f "$bin.arch" ] || [ "$(cat "$bin.arch")" != "$arch" ]; then
  say "building $bin with $nvcc (-arch=$arch)"
  # libcuda: the driver's, else the toolkit's link stub (the driver's libcuda.so.1 is used at run time)
  timeout 300 "$nvcc" -O2 -std=c++17 -arch="$arch" -o "$bin" "$src" \
    -L"$cuda_home/lib64/stubs" -L"$cuda_home/targets/x86_64-linux/lib/stubs" -lcuda \
    || { say "ERROR: nvcc failed"; exit 1; }
  echo "$arch" > "$bin.arch"
fi

set +e
"$PYTHON" bench/launch-overhead/compare.py --launch "$bin" --agent "$agent" "$@"
rc=$?
set -e
say "exit $rc"
exit $rc
