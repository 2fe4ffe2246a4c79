#!/usr/bin/env bash
# Freeze and thaw latency under the agent (freeze_bench.cu): builds it when needed, runs CYCLES
# freeze/thaw cycles on a counter kernel, prints the table (with the RM controls' own time apart from
# the command's delivery); JSON to bench/results/freeze.json (and $OUT/freeze.json when $OUT is set).
# Usage: bash bench/freeze/run.sh [CYCLES, default 200]. Environment: GVM_AGENT, NVCC, NVCC_ARCH, OUT,
# GVM_RM_STOP (preempt|disable: force one way of stopping channels), GVM_RM_THAW (full: enable with
# bOnlyDisableScheduling cleared); see cuda-intercept/src/compute.c; GVM_COMMAND_SPIN_US (the bench
# polls for the agent's answer that long before sleeping: takes the agent's wake of the bench off the
# path; include/gvm/self_command.h). On the H100 the thaw's RM control took 0.44 ms at p99 with either
# flag while its round trip's p99 was 0.69-1.9 ms, so the next A/B is of the delivery:
#   bash bench/freeze/run.sh 200; GVM_COMMAND_SPIN_US=3000 bash bench/freeze/run.sh 200
set -euo pipefail

say() { printf '[freeze] %s\n' "$*"; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

# shellcheck source=bench/lib/gpu.sh
source "$root/bench/lib/gpu.sh"
bin=$root/build/bench/freeze_bench
gvm_bench_cuda bench/freeze/freeze_bench.cu "$bin"
shm=$(mktemp -d /dev/shm/gvm-freeze-bench.XXXXXX)
trap 'rm -rf "$shm"' EXIT
json=bench/results/freeze.json
set +e
LD_PRELOAD="$agent" GVM_SHM_DIR="$shm" "$bin" "${1:-200}" "$json"
rc=$?
set -e
[ -n "${OUT:-}" ] && [ -f "$json" ] && cp "$json" "$OUT/freeze.json"
exit $rc
