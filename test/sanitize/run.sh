#!/usr/bin/env bash
# Sanitizer pass over the agent (libgvm.so) on the fake driver, CPU only.
#
#   test/sanitize/run.sh [OUT_DIR] [asan|tsan|all]     (default: a temp dir, all)
#
# Builds the agent, the fake libcuda/RM and the fake programs twice out of the tree, with
# -fsanitize=address,undefined (OUT_DIR/asan) and -fsanitize=thread (OUT_DIR/tsan), runs the
# scenarios below under each, and fails if any sanitizer reported anything (reports are kept in
# OUT_DIR/logs). Needs what `npm install` needs (cmake, ninja or make, gcc with libasan/libtsan,
# CUDA headers) and the built CLI (dist/, `npm run build`) for the steered scenarios. See README.md.
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$(mktemp -d /tmp/gvm-sanitize.XXXXXX)}
WHICH=${2:-all}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
CLI="node $ROOT/dist/cli/gvm.js"
JOBS=${JOBS:-2}
TARGETS="gvm fakecuda fakerm gvm-prog-direct gvm-prog-dlsym gvm-prog-procaddr gvm-memory-prog gvm-limit-race gvm-multi-gpu-check gvm-ipc-check gvm-channel-race gvm-capture-race"
FAILED=0
START=$(date +%s)

say() { printf '%s\n' "$*"; }
bad() { say "FAIL $*"; FAILED=1; }

build() { # build VARIANT FLAGS
  local dir="$OUT/$1" flags="$2 -fno-omit-frame-pointer -g" link="${2%% *}"
  local gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S "$ROOT" -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE=-O1 \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_SHARED_LINKER_FLAGS="$link" -DCMAKE_EXE_LINKER_FLAGS="$link" \
    -DCMAKE_C_COMPILER_LAUNCHER="$HERE/cc-launcher.sh" >"$OUT/logs/cmake-$1.txt" 2>&1 &&
    cmake --build "$dir" -j"$JOBS" --target $TARGETS >>"$OUT/logs/cmake-$1.txt" 2>&1 ||
    { bad "build $1 (see $OUT/logs/cmake-$1.txt)"; return 1; }
}

# run NAME [ENV=V ...] -- PROGRAM ARGS...   (stdin from $STDIN, default empty)
run() {
  local name=$1; shift
  local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  local prog=$1; shift
  local shm; shm=$(mktemp -d "$OUT/shm.XXXXXX")
  local t0=$(date +%s)
  printf '%b' "${STDIN:-}" | env GVM_SHM_DIR="$shm" LD_LIBRARY_PATH="$B/fake" GVM_LOG=warn GVM_EVENT_INTERVAL_MS=1 \
    LD_PRELOAD="$B/Release/libgvm.so:$B/fake/libgvmfakerm.so" "${envs[@]}" \
    timeout 300 "$B/fake/bin/$prog" "$@" >"$OUT/logs/$V-$name.out" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] && [ "$V" = tsan ] && [ -n "${LOOSE:-}" ]; then
    say "  ($V $name: exit status $rc ignored: its timing checks do not hold at TSan's speed)"
  elif [ $rc -ne 0 ]; then bad "$V $name: exit status $rc (see $OUT/logs/$V-$name.out)"; fi
  say "  $V $name: rc=$rc $(( $(date +%s) - t0 ))s"
  rm -rf "$shm"
}

# A swap-mode program steered from outside: limits down and up (moves out and back), freeze, a
# move while frozen, thaw, class changes, and exit while frozen.
steered() {
  local shm; shm=$(mktemp -d "$OUT/shm.XXXXXX")
  local fifo="$shm/.in"; mkfifo "$fifo"
  env GVM_SHM_DIR="$shm" LD_LIBRARY_PATH="$B/fake" GVM_LOG=warn GVM_EVENT_INTERVAL_MS=1 GVM_MEMORY_MODE=swap \
    GVM_RM_ANY_DRIVER=1 LD_PRELOAD="$B/Release/libgvm.so:$B/fake/libgvmfakerm.so" \
    timeout 300 "$B/fake/bin/gvm-memory-prog" swap seed=5 count=8 <"$fifo" >"$OUT/logs/$V-steered.out" 2>&1 &
  local bg=$! ok=1 pid=""
  exec 9>"$fifo"
  for _ in $(seq 100); do grep -q READY "$OUT/logs/$V-steered.out" 2>/dev/null && break; sleep 0.1; done
  pid=$(ls "$shm" | grep -E '^[0-9]+$' | head -1) # the program's block (timeout forks it: not $bg)
  cli() { env GVM_SHM_DIR="$shm" $CLI "$@" >>"$OUT/logs/$V-steered.cli" 2>&1 || { ok=0; echo "^ gvm $*" >>"$OUT/logs/$V-steered.cli"; }; }
  for lim in 2M 64M 8M 1G 4M; do cli set "$pid" memory.limit $lim; echo verify >&9; sleep 0.2; done
  echo write 3 >&9
  cli set "$pid" policy.class best-effort; cli set "$pid" policy.class latency; cli set "$pid" policy.class none
  cli freeze "$pid"; cli set "$pid" memory.limit 2M; cli set "$pid" memory.limit 1G; cli thaw "$pid"
  echo verify >&9
  # the verify must be over before the next freeze: its copies would wait for the thaw (by design),
  # and under TSan it can take seconds
  for _ in $(seq 600); do [ "$(grep -c '^VERIFIED' "$OUT/logs/$V-steered.out")" -ge 6 ] && break; sleep 0.1; done
  cli freeze "$pid"; echo exit >&9
  exec 9>&-
  wait $bg; local rc=$?
  [ $ok -eq 1 ] || bad "$V steered: a gvm command failed (see $OUT/logs/$V-steered.cli)"
  [ $rc -eq 0 ] || bad "$V steered: exit status $rc"
  grep -q 'VERIFIED ok 8' "$OUT/logs/$V-steered.out" || bad "$V steered: buffers not verified"
  say "  $V steered (limits, freeze, move while frozen, thaw, classes, exit frozen): rc=$rc"
  rm -rf "$shm"
}

scenarios() {
  for b in direct dlsym procaddr; do STDIN='free\nexit\n' run "basic-$b" -- "gvm-prog-$b" basic; done
  STDIN='exit\n' run threads -- gvm-prog-procaddr threads
  STDIN='exit\n' run threads-swap GVM_MEMORY_MODE=swap GVM_RM_ANY_DRIVER=1 GVM_MEMORY_LIMIT=67108864 -- gvm-prog-direct threads
  STDIN='release\nfree\nexit\n' run hold -- gvm-prog-direct hold
  STDIN='gpu 1\nlaunch 20\ngsync\nnewctx\nreset\nexit\n' run multigpu -- gvm-prog-direct multigpu
  STDIN='exit\n' run gpus4 FAKE_CUDA_DEVICES=4 -- gvm-prog-dlsym gpus n=4
  run exit-early -- gvm-prog-direct exit-early
  if [ "$V" = asan ]; then # TSan does not follow a multi-threaded process into fork
    STDIN='exit\n' run fork-after -- gvm-prog-direct fork-after
    STDIN='exit\n' run fork-before -- gvm-prog-direct fork-before
  fi
  run mem-random -- gvm-memory-prog random seed=1 steps=300
  run mem-threads -- gvm-memory-prog threads seed=2 steps=150
  run mem-limit GVM_MEMORY_LIMIT=104870745 -- gvm-memory-prog limit
  for mode in oom swap; do LOOSE=1 run "limit-race-$mode" GVM_MEMORY_MODE=$mode GVM_RM_ANY_DRIVER=1 -- gvm-limit-race 6 256; done
  run multi-gpu-check GVM_RM_ANY_DRIVER=1 -- gvm-multi-gpu-check 3
  run ipc-check GVM_MEMORY_MODE=swap GVM_RM_ANY_DRIVER=1 -- gvm-ipc-check
  run ipc-check-1-0 GVM_MEMORY_MODE=swap GVM_RM_ANY_DRIVER=1 -- gvm-ipc-check 1 0
  run channel-race-thaw GVM_RM_ANY_DRIVER=1 -- gvm-channel-race thaw
  run channel-race-move GVM_MEMORY_MODE=swap GVM_RM_ANY_DRIVER=1 -- gvm-channel-race move
  run capture-race GVM_RM_ANY_DRIVER=1 FAKE_CUDA_KERNEL_US=2000 -- gvm-capture-race 20
  run capture-race-late-begin GVM_RM_ANY_DRIVER=1 FAKE_CUDA_KERNEL_US=2000 FAKE_CUDA_BEGIN_CAPTURE_DELAY_US=3000 -- gvm-capture-race 20 capturing-only
  if [ -f "$ROOT/dist/cli/gvm.js" ]; then steered; else say "  (no dist/: steered scenario skipped; npm run build)"; fi
}

reports() { # reports VARIANT: counts sanitizer reports in the logs, prints the first
  local files; files=$(grep -l -E '^(==[0-9]+==ERROR|WARNING: ThreadSanitizer|SUMMARY: (Address|Undefined|Thread)Sanitizer)|runtime error:' \
    "$OUT/logs/$1".* "$OUT/logs/$1-"*.out 2>/dev/null)
  if [ -n "$files" ]; then
    bad "$1: sanitizer reports in: $files"
    grep -h -E '^SUMMARY|runtime error:' $files | sort | uniq -c
  else
    say "  $1: no sanitizer report"
  fi
}

for V in asan tsan; do
  [ "$WHICH" = all ] || [ "$WHICH" = "$V" ] || continue
  B="$OUT/$V"
  say "== $V: building in $B"
  if [ $V = asan ]; then build asan "-fsanitize=address,undefined" || continue
    export ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0:log_path=$OUT/logs/asan"
    export UBSAN_OPTIONS="print_stacktrace=1:log_path=$OUT/logs/asan"
  else build tsan "-fsanitize=thread -Wno-tsan" || continue
    export TSAN_OPTIONS="log_path=$OUT/logs/tsan:exitcode=0:report_signal_unsafe=0:suppressions=$HERE/tsan.supp"
  fi
  say "== $V: scenarios"
  scenarios
  reports $V
  unset ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS
done
say "== done in $(( $(date +%s) - START ))s; logs in $OUT/logs"
[ $FAILED -eq 0 ] && say "PASS" || say "FAILED"
exit $FAILED
