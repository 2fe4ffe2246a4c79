#!/usr/bin/env bash
# Every device check of test/gpu in one call, each bounded in time (bench/lib/run-or-dump.sh prints
# where a hung check waits), with one summary table: check, result, ok/FAIL lines, seconds. Device
# time is budgeted, so one call must leave a verdict for every check even if some hang or fail.
#
# Usage (repository root, GPU machine; node on PATH for the CLI checks: `source .device/env.sh &&`):
#   bash test/gpu/check-all.sh [--only a,b] [--skip a,b] [--list]
# Logs and summary: build/gpu-checks/, archived to $OUT/gpu-checks.tgz when $OUT is set. Exit 1 if a check failed
# or timed out. Without a GPU: "SKIP: ..." and exit 0.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
say() { echo "[check-all] $*"; }
# shellcheck source=../../bench/lib/gpu.sh
. bench/lib/gpu.sh

# name | seconds | command (run by bash -c from the repository root; $AGENT and $BIN are set)
CHECKS=(
  "doctor|60|node dist/cli/gvm.js doctor"
  "agent|120|LD_PRELOAD=\$AGENT \$BIN/agent_check"
  "limit_race_oom|180|GVM_MEMORY_MODE=oom LD_PRELOAD=\$AGENT \$BIN/limit_race 10 4096"
  "limit_race_swap|180|GVM_MEMORY_MODE=swap LD_PRELOAD=\$AGENT \$BIN/limit_race 10 4096"
  "swap|180|GVM_MEMORY_MODE=swap LD_PRELOAD=\$AGENT \$BIN/swap_check"
  "ipc|120|GVM_MEMORY_MODE=swap LD_PRELOAD=\$AGENT \$BIN/ipc_check"
  "compute|240|bash test/gpu/compute_check.sh"
  "gvmd|180|bash test/gpu/gvmd_check.sh"
  "mps|150|bash test/gpu/mps_check.sh"
  "capture|120|node dist/cli/gvm.js run --class latency -- \${PYTHON:-python3} test/gpu/capture_stress.py 150"
  "static_engine|180|\${PYTHON:-python3} bench/workloads/static_engine.py"
  "multi_gpu|240|bash test/gpu/multi_gpu_check.sh 20"
  "nccl_allreduce|300|bash test/gpu/nccl_allreduce.sh"
  "ipc_across_gpus|180|n=\$(nvidia-smi -L | grep -c '^GPU'); [ \"\$n\" -ge 2 ] || { echo \"SKIP: \$n GPU(s), 2 needed\"; exit 0; }; rc=0; for p in '0 1' '1 0' '1 1'; do GVM_MEMORY_MODE=swap LD_PRELOAD=\$AGENT \$BIN/ipc_check \$p || rc=1; done; exit \$rc"
)
only="" skip=""
while [ $# -gt 0 ]; do
  case $1 in
    --only) only=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --list) for c in "${CHECKS[@]}"; do echo "${c%%|*}"; done; exit 0 ;;
    *) echo "usage: $0 [--only a,b] [--skip a,b] [--list]" >&2; exit 2 ;;
  esac
done
listed() { case ",$1," in *",$2,"*) return 0 ;; esac; return 1; }

gvm_gpus_or_skip
AGENT=${GVM_AGENT:-$root/build/Release/libgvm.so}
[ -f "$AGENT" ] || { say "ERROR: no agent at $AGENT (npm install builds it)"; exit 1; }
BIN=$root/build/gpu-checks-bin
# logs stay in the tree; $OUT gets one archive of them (a device call brings back only a few files)
out=$root/build/gpu-checks
mkdir -p "$BIN" "$out"
export AGENT BIN

# the C checks use the driver API only: gcc against the driver's own libcuda
for src in agent_check ipc_check limit_race swap_check; do
  if [ ! -x "$BIN/$src" ] || [ "test/gpu/$src.c" -nt "$BIN/$src" ]; then
    gcc -std=c11 -O2 -Wall -Wextra -I include -I /usr/local/cuda/include "test/gpu/$src.c" -o "$BIN/$src" \
      -lcuda -lpthread -ldl 2> "$out/build-$src.log" || say "build of $src failed: $(head -c 400 "$out/build-$src.log")"
  fi
done

failed=0
summary="$out/summary.md"
{
  echo "| check | result | ok lines | FAIL lines | seconds |"
  echo "|---|---|---|---|---|"
} > "$summary"
for c in "${CHECKS[@]}"; do
  IFS='|' read -r name limit cmd <<< "$c"
  if { [ -n "$only" ] && ! listed "$only" "$name"; } || { [ -n "$skip" ] && listed "$skip" "$name"; }; then continue; fi
  say "$name (at most ${limit} s): $cmd"
  t0=$(date +%s%N)
  bash bench/lib/run-or-dump.sh "$limit" bash -c "$cmd" > "$out/$name.log" 2>&1
  rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  secs=$((ms / 1000)).$(((ms % 1000) / 100))
  oks=$(grep -c '^ok' "$out/$name.log")
  fails=$(grep -c '^FAIL' "$out/$name.log")
  if [ "$rc" = 124 ]; then result="TIMEOUT"
  elif grep -q '^SKIP' "$out/$name.log"; then result="skip: $(grep -m1 '^SKIP' "$out/$name.log" | cut -c7-)"
  elif [ "$rc" = 0 ] && [ "$fails" = 0 ]; then result="pass"
  else result="FAIL (exit $rc)"
  fi
  case $result in pass | skip*) ;; *) failed=$((failed + 1)); tail -n 15 "$out/$name.log" | sed "s/^/  $name| /" ;; esac
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$result" "$oks" "$fails" "$secs" >> "$summary"
  say "$name: $result ($oks ok, $fails FAIL, $secs s)"
done
echo
cat "$summary"
echo
say "logs: $out"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/gpu-checks.tgz" -C "$root/build" gpu-checks && say "logs archived: \$OUT/gpu-checks.tgz"
fi
[ "$failed" = 0 ]
