#!/usr/bin/env bash
# Builds the fake driver standalone and checks every program and scenario
# against it, without the gvm agent. Usage: smoke.sh [build-dir]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-/tmp/gvm-fake-build}
cmake -S "$here" -B "$build" >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null

lib="$build/fake"
bin="$lib/bin"
export LD_LIBRARY_PATH="$lib" LD_PRELOAD="$lib/libgvmfakerm.so"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Checks also fail inside $(...) subshells, so failures are lines in a file.
fail() { echo "FAIL: $*" | tee -a "$work/failures" >&2; }

# run <program> <commands> <args...>: stdout of the program, given the commands on stdin.
run() {
    local prog=$1 cmds=$2
    shift 2
    printf '%b' "$cmds" | timeout 60 "$bin/$prog" "$@" 2>"$work/stderr" || {
        fail "$prog $* exited $?: $(head -3 "$work/stderr")"
        return 0
    }
}

expect_line() { # expect_line <output> <regex> <what>
    grep -Eq "$2" <<<"$1" || fail "$3: no line matching $2 in: $1"
}

gpu0() { # gpu0 <device> <managed> <host> <kernels>: JSON of GPU 0 as the programs print it
    echo "\"0\":\\{\"deviceBytes\":$1,\"managedBytes\":$2,\"hostBytes\":$3,\"kernels\":$4\\}"
}

FAKE_RM_LOG="$work/selftest.log" "$bin/gvm-fake-selftest" >/dev/null || fail "gvm-fake-selftest"

for b in direct dlsym procaddr; do
    p=gvm-prog-$b
    out=$(FAKE_RM_LOG="$work/rm-$b.log" run $p 'sync\nfree\nexit\n' basic)
    expect_line "$out" "^READY \{\"pid\":[0-9]+,\"gpus\":\{$(gpu0 15831040 4194304 1048576 125)\}\}$" "$p basic"
    expect_line "$out" '^SYNCED$' "$p basic sync"
    expect_line "$out" "^FREED .*$(gpu0 0 0 0 125)" "$p basic free"

    out=$(run $p 'exit\n' basic kernels=7)
    expect_line "$out" "^READY .*$(gpu0 15831040 4194304 1048576 32)" "$p basic kernels=7"

    out=$(run $p 'free\n' threads)
    expect_line "$out" '^READY .*"kernels":1600\}' "$p threads"
    expect_line "$out" "^FREED .*$(gpu0 0 0 0 1600)" "$p threads free"

    out=$(FAKE_CUDA_KERNEL_US=200 run $p 'release\nsync\nfree\n' hold)
    expect_line "$out" "^READY .*$(gpu0 15831040 4194304 1048576 125)" "$p hold"
    expect_line "$out" '^RELEASED$' "$p hold release"

    out=$(run $p 'free\n' multigpu)
    expect_line "$out" "^READY .*$(gpu0 8388608 0 0 20),\"1\":\{\"deviceBytes\":16777216,\"managedBytes\":0,\"hostBytes\":0,\"kernels\":30\}" "$p multigpu"

    out=$(run $p 'exit\n' fork-before)
    [ "$(grep -c '^READY .*"role":"\(parent\|child\)"' <<<"$out")" = 2 ] || fail "$p fork-before: $out"

    out=$(run $p 'exit\n' fork-after)
    expect_line "$out" '^READY ' "$p fork-after"

    out=$(run $p '' exit-early)
    expect_line "$out" "^READY .*$(gpu0 1048576 0 0 0)" "$p exit-early"

    out=$(run $p 'free\n' nocuda)
    expect_line "$out" '^READY \{"pid":[0-9]+,"gpus":\{\}\}$' "$p nocuda"

    # The RM objects libcuda creates: client, 2 devices + subdevices, one context.
    log="$work/rm-$b.log"
    for want in "0x0041 1" "0x0080 2" "0x2080 2" "0xa06c 4" "0x9067 4" "0xc86f 11"; do
        set -- $want
        n=$(grep -c "^alloc .*hClass=$1 .*status=0x0" "$log" || true)
        [ "$n" = "$2" ] || fail "$p: $n allocs of class $1 in the RM log, expected $2"
    done
done

# Without LD_PRELOAD the fake RM is only libcuda's DT_NEEDED; it must still answer.
out=$(LD_PRELOAD= FAKE_RM_LOG="$work/noload.log" run gvm-prog-dlsym 'exit\n' basic)
expect_line "$out" '^READY ' "dlsym without LD_PRELOAD"
[ "$(grep -c 'status=0x0' "$work/noload.log")" = 24 ] || fail "RM log without LD_PRELOAD"

if [ -x "$bin/gvm-prog-cudart" ]; then
    set +e
    out=$(timeout 60 "$bin/gvm-prog-cudart" </dev/null)
    rc=$?
    set -e
    [ $rc = 3 ] && grep -q '^UNSUPPORTED ' <<<"$out" || fail "gvm-prog-cudart: rc=$rc $out"
fi

if [ ! -s "$work/failures" ]; then
    echo "smoke: all checks passed"
else
    echo "smoke: $(wc -l <"$work/failures") check(s) failed"
    exit 1
fi
