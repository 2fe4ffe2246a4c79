#!/bin/bash
# Device check of one process on two GPUs under the agent (issue 8, part 1):
#   1. multi_gpu_check.c: per-GPU accounting, a limit and a priority on GPU 1 that leave GPU 0 alone,
#      freeze of GPU 1 only (zero progress there, GPU 0 progressing; freeze/thaw times), swap on GPU 1;
#   2. the same program in `serve` mode steered from outside through the gvm CLI: gvm get/set/freeze/
#      thaw/debug rm with PID:GPU reach one GPU only.
# Needs two GPUs (else "SKIP: ..." and exit 0), the built agent (build/Release/libgvm.so), gcc, the CUDA
# headers, and node with dist/ for part 2 (source .device/env.sh). Prints ok/FAIL lines; exit 0 when
# every check held. Output also goes to $OUT/multi-gpu-check.txt when $OUT is set.
#   bash test/gpu/multi_gpu_check.sh [freeze-cycles]
# GVM_CHECK_FAKE=1 runs it all on the fake driver (build/fake) instead, as CI does.
set -u
cd "$(dirname "$0")/../.."
cycles=${1:-10}
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
tmp=$(mktemp -d)
trap 'exec 3>&- 2>/dev/null; [ -n "${spid:-}" ] && kill "$spid" 2>/dev/null; rm -rf "$tmp"' EXIT
cuda=${CUDA_PATH:-/usr/local/cuda}
bin=build/multi_gpu_check
export CUDA_DEVICE_ORDER=PCI_BUS_ID # CUDA ordinals in nvidia-smi's order: gvm's GPU numbers are nvidia-smi's

if [ "${GVM_CHECK_FAKE:-0}" = 1 ]; then
  bin=build/fake/bin/gvm-multi-gpu-check # the same source, linked to the fake libcuda
  export LD_LIBRARY_PATH=$PWD/build/fake GVM_RM_ANY_DRIVER=1 GVM_SHM_DIR=$tmp/shm GVM_NVIDIA_PROC_DIR=/nonexistent
  mkdir -p "$GVM_SHM_DIR"
  preload=$PWD/build/Release/libgvm.so:$PWD/build/fake/libgvmfakerm.so
else
  if ! command -v nvidia-smi > /dev/null 2>&1; then echo "SKIP: no NVIDIA GPU (nvidia-smi not found)"; exit 0; fi
  n=$(timeout 60 nvidia-smi -L 2>/dev/null | grep -c '^GPU [0-9]')
  if [ "$n" -lt 2 ]; then echo "SKIP: $n GPU(s) listed by nvidia-smi, this check needs 2"; exit 0; fi
  echo "GPUs: $(nvidia-smi -L | head -2 | tr '\n' ';')"
  mkdir -p build
  gcc -std=c11 -O2 -Wall -Wextra -Werror -I include -I "$cuda/include" test/gpu/multi_gpu_check.c \
    -L"$cuda/lib64/stubs" -L"$cuda/targets/x86_64-linux/lib/stubs" -lcuda -lpthread -o "$bin" || { echo "FAIL build"; exit 1; }
  preload=$PWD/build/Release/libgvm.so
fi
[ -f build/Release/libgvm.so ] || { echo "FAIL build/Release/libgvm.so missing (npm install builds it)"; exit 1; }

run() {
  # part 1: the program checks itself
  LD_PRELOAD=$preload "$bin" "$cycles" | tee "$tmp/check.txt"
  local rc=${PIPESTATUS[0]}
  grep -q '^0 failure(s)$' "$tmp/check.txt" && [ "$rc" = 0 ] && ok "multi_gpu_check: every check held" \
    || bad "multi_gpu_check exited $rc with $(grep -c '^FAIL' "$tmp/check.txt") failed check(s)"

  # part 2: the CLI steers one GPU of a running process
  if ! command -v node > /dev/null 2>&1 || [ ! -f dist/cli/gvm.js ]; then
    bad "the CLI part needs node on PATH and dist/ (npx tsc -p tsconfig.json)"
    return
  fi
  GVM="node dist/cli/gvm.js"
  mkfifo "$tmp/in"
  LD_PRELOAD=$preload "$bin" serve < "$tmp/in" > "$tmp/serve.txt" 2>&1 &
  spid=$!
  exec 3> "$tmp/in"
  for _ in $(seq 300); do grep -q '^READY' "$tmp/serve.txt" && break; sleep 0.1; done
  local pid mem0 mem1
  read -r _ pid mem0 mem1 < <(grep '^READY' "$tmp/serve.txt")
  [ -n "${pid:-}" ] || { bad "serve mode did not start: $(cat "$tmp/serve.txt")"; return; }
  progress() { # prints the rounds of GPU 0 and GPU 1
    local before; before=$(grep -c '^PROGRESS' "$tmp/serve.txt")
    echo progress >&3
    for _ in $(seq 100); do [ "$(grep -c '^PROGRESS' "$tmp/serve.txt")" -gt "$before" ] && break; sleep 0.02; done
    grep '^PROGRESS' "$tmp/serve.txt" | tail -1 | cut -d' ' -f2-
  }
  [ "$($GVM get "$pid:0" memory.current)" = "$mem0" ] && [ "$($GVM get "$pid:1" memory.current)" = "$mem1" ] \
    && ok "gvm get PID:0 / PID:1 memory.current: $mem0 / $mem1 (each GPU its own)" \
    || bad "memory.current per GPU: $($GVM get "$pid:0" memory.current) / $($GVM get "$pid:1" memory.current), want $mem0 / $mem1"
  local rows; rows=$($GVM ps --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{
    console.log(JSON.parse(s).filter(r=>r.pid===$pid).map(r=>r.gpu.index+':'+r.gpu.memory.current).join(' '))})")
  [ "$rows" = "0:$mem0 1:$mem1" ] && ok "gvm ps --json: one row per GPU ($rows)" || bad "gvm ps rows: '$rows'"
  local limit0; limit0=$($GVM get "$pid:0" memory.limit)
  $GVM set "$pid:1" memory.limit 1G > /dev/null
  [ "$($GVM get "$pid:1" memory.limit)" = 1073741824 ] && [ "$($GVM get "$pid:0" memory.limit)" = "$limit0" ] \
    && ok "gvm set PID:1 memory.limit 1G: GPU 1 limited, GPU 0 still $limit0" || bad "memory.limit per GPU"
  $GVM set "$pid:1" compute.priority 15 > /dev/null
  $GVM debug rm "$pid:1" > "$tmp/rm1"
  $GVM debug rm "$pid:0" > "$tmp/rm0"
  local t1 s1 s0
  t1=$(sed -n 's/^TSGs: //p' "$tmp/rm1"); s1=$(grep -c ' 16 us$' "$tmp/rm1"); s0=$(grep -c ' 16 us$' "$tmp/rm0")
  [ "${t1:-0}" -gt 0 ] && [ "$s1" = "$t1" ] && [ "$s0" = 0 ] && [ "$($GVM get "$pid:0" compute.priority)" = 8 ] \
    && ok "gvm set PID:1 compute.priority 15: $s1 of GPU 1's $t1 TSGs at 16 us, none of GPU 0's, GPU 0 at priority 8" \
    || { bad "priority per GPU"; cat "$tmp/rm1" "$tmp/rm0"; }
  $GVM set "$pid:1" compute.priority 8 > /dev/null
  $GVM freeze "$pid:1" > "$tmp/freeze"
  sleep 0.2
  local a b c
  a=$(progress); sleep 1; b=$(progress)
  [ "${a#* }" = "${b#* }" ] && [ "${b% *}" -gt "${a% *}" ] \
    && ok "gvm freeze PID:1: GPU 1 stood still for 1 s (${a#* } rounds), GPU 0 went on (${a% *} -> ${b% *}); $(cut -d' ' -f2- "$tmp/freeze")" \
    || bad "freeze of GPU 1: progress $a -> $b (GPU 0 GPU 1)"
  [ "$($GVM get "$pid:1" compute.freeze)$($GVM get "$pid:0" compute.freeze)" = 10 ] && ok "compute.freeze: GPU 1 1, GPU 0 0" \
    || bad "compute.freeze flags"
  $GVM thaw "$pid:1" > /dev/null
  sleep 0.5; c=$(progress)
  [ "${c#* }" -gt "${b#* }" ] && ok "gvm thaw PID:1: GPU 1 progresses again (${b#* } -> ${c#* })" || bad "no progress after the thaw: $b -> $c"
  echo exit >&3
  exec 3>&-
  wait "$spid"; local src=$?
  spid=
  [ "$src" = 0 ] && ok "the served process exited cleanly" || bad "served process exited $src: $(tail -3 "$tmp/serve.txt")"
}

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  run 2>&1 | tee "$OUT/multi-gpu-check.txt"
  fails=$(grep -c '^FAIL' "$OUT/multi-gpu-check.txt")
else
  run
fi
echo "multi-GPU check: $fails failure(s)"
exit $((fails > 0))
