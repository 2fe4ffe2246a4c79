#!/bin/bash
# NCCL all-reduce between two processes, one per GPU, without and with the agent (issue 8, part 2):
# nccl_allreduce.py runs ROUNDS times each way (alternating, baseline first), every rank preloading
# build/Release/libgvm.so in the agent runs; then `nccl_allreduce.py compare` requires the same RESULT
# (sha256 of the exact sums) from every run and prints the overhead per size (median time per
# all-reduce with / without the agent). Under the agent each rank also checks that gvm counted its
# all-reduces as kernels on its own GPU, and none on the other.
#   bash test/gpu/nccl_allreduce.sh [extra nccl_allreduce.py arguments, e.g. --iters 50]
# Needs 2 GPUs and PyTorch with CUDA and NCCL ($PYTHON, default python3), else "SKIP: ..." and exit 0.
# Results: $OUT/nccl-allreduce/ (build/nccl-allreduce/ when $OUT is unset): base-N.json, agent-N.json,
# the logs and compare.txt.
# NCCL_CHECK_CPU=1 runs the same logic on the CPU with gloo (no GPU needed; small sizes), as CI can.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
rounds=${ROUNDS:-1}
out=${OUT:-build}/nccl-allreduce
mkdir -p "$out"
agent=$PWD/build/Release/libgvm.so
[ -f "$agent" ] || { echo "FAIL $agent missing (npm install builds it)"; exit 1; }
if [ "${NCCL_CHECK_CPU:-0}" = 1 ]; then
  set -- --backend gloo --device cpu --sizes 1K,64K,1M --iters 5 --warmup 1 "$@"
else
  if ! command -v nvidia-smi > /dev/null 2>&1; then echo "SKIP: no NVIDIA GPU (nvidia-smi not found)"; exit 0; fi
  n=$(timeout 60 nvidia-smi -L 2>/dev/null | grep -c '^GPU [0-9]')
  if [ "$n" -lt 2 ]; then echo "SKIP: $n GPU(s) listed by nvidia-smi, this check needs 2"; exit 0; fi
  if ! "$PY" -c 'import sys, torch, torch.distributed as d; sys.exit(not (torch.cuda.is_available() and torch.cuda.device_count() >= 2 and d.is_nccl_available()))' 2> /dev/null; then
    echo "SKIP: $PY has no PyTorch with CUDA, NCCL and 2 visible GPUs"; exit 0
  fi
  echo "GPUs: $(nvidia-smi -L | head -2 | tr '\n' ';') $("$PY" -c 'import torch; print("torch", torch.__version__, "nccl", ".".join(map(str, torch.cuda.nccl.version())))')"
  export CUDA_DEVICE_ORDER=PCI_BUS_ID
fi

fails=0
files=()
for r in $(seq "$rounds"); do
  echo "== round $r: without the agent"
  "$PY" test/gpu/nccl_allreduce.py --expect-agent no --out "$out/base-$r.json" "$@" 2>&1 | tee "$out/base-$r.log"
  [ "${PIPESTATUS[0]}" = 0 ] || fails=$((fails + 1))
  grep -q '^SKIP' "$out/base-$r.log" && exit 0
  echo "== round $r: with the agent (LD_PRELOAD in every rank)"
  LD_PRELOAD=$agent "$PY" test/gpu/nccl_allreduce.py --expect-agent yes --out "$out/agent-$r.json" "$@" 2>&1 | tee "$out/agent-$r.log"
  [ "${PIPESTATUS[0]}" = 0 ] || fails=$((fails + 1))
  files+=("$out/base-$r.json" "$out/agent-$r.json")
done
echo "== compare"
"$PY" test/gpu/nccl_allreduce.py compare "${files[@]}" | tee "$out/compare.txt"
[ "${PIPESTATUS[0]}" = 0 ] || fails=$((fails + 1))
echo "nccl all-reduce check: $fails failure(s)"
exit $((fails > 0))
