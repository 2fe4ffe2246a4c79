#!/usr/bin/env bash
# Swap-move bandwidth: gvm's moves (device -> host and back, cold and with a warm pinned pool) against
# the driver's managed-memory prefetch, for 1, 4 and 16 GiB in one run, every byte checked after each
# round trip. Builds the agent (when missing) and swap_bench.cu, runs it under the agent in swap mode,
# prints a table; JSON goes to bench/results/swap.json (and $OUT/swap.json when $OUT is set).
#
# Usage: bash bench/swap/run.sh [--sizes 1,4,16] [--buf-mib 1024] [--rounds 3] [--no-managed] [--target 40]
# A step of a child that takes longer than SWAP_BENCH_STEP_S (default 120) ends it, after
# bench/lib/hang_dump.py printed where each of its threads waits; SWAP_BENCH_VERBOSE=1 shows the
# agent's debug lines.
# Environment: GVM_AGENT (default build/Release/libgvm.so), NVCC, NVCC_ARCH (default sm_90), OUT,
#   GVM_SWAP_POOL_MIB (default 17408: the 16 GiB case fits the warm pool), and the mover's tunables
#   (GVM_SWAP_STREAMS, GVM_SWAP_CHUNK_MIB, GVM_SWAP_PREWARM_MIB: see cuda-intercept/src/swap.c) passed
#   through as set; with GVM_SWAP_PREWARM_MIB round 1 waits for the pre-warm and is "prewarmed".
set -euo pipefail

say() { printf '[swap] %s\n' "$*"; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

# shellcheck source=bench/lib/gpu.sh
source "$root/bench/lib/gpu.sh"
bin=$root/build/bench/swap_bench
gvm_bench_cuda bench/swap/swap_bench.cu "$bin"

export GVM_SWAP_POOL_MIB=${GVM_SWAP_POOL_MIB:-17408}
shm=$(mktemp -d /dev/shm/gvm-swap-bench.XXXXXX)
trap 'rm -rf "$shm"' EXIT
say "pool ${GVM_SWAP_POOL_MIB} MiB, streams ${GVM_SWAP_STREAMS:-default}, chunk ${GVM_SWAP_CHUNK_MIB:-default} MiB"
json=bench/results/swap.json
set +e
SWAP_BENCH_DUMP=${SWAP_BENCH_DUMP:-$root/bench/lib/hang_dump.py} \
LD_PRELOAD="$agent" GVM_MEMORY_MODE=swap GVM_SHM_DIR="$shm" "$bin" --json "$json" "$@"
rc=$?
set -e
if [ -n "${OUT:-}" ] && [ -f "$json" ]; then cp "$json" "$OUT/swap.json"; fi
say "exit $rc"
exit $rc
