#!/bin/bash
# Device check under NVIDIA MPS: a PyTorch loop under gvm is an MPS client, so its kernels run on the
# MPS server's channels, not on channels of its own RM client. The agent must then say so instead of
# pretending: freeze is the software freeze (launches held at the hook) and stops progress, thaw
# resumes it, compute.priority is refused (EGVM_UNSUPPORTED). Also records what the agent's RM
# observer sees in an MPS client (`gvm debug rm`), a fact for the notes.
# Needs node on PATH (source .device/env.sh), the built agent, addon and dist/, and the MPS binaries.
set -u
cd "$(dirname "$0")/../.."
# shellcheck source=cli_check_lib.sh
. test/gpu/cli_check_lib.sh
command -v nvidia-cuda-mps-control > /dev/null || { echo "SKIP: no nvidia-cuda-mps-control"; exit 0; }
tmp=$(mktemp -d)
export CUDA_MPS_PIPE_DIRECTORY=$tmp/pipe CUDA_MPS_LOG_DIRECTORY=$tmp/log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
nvidia-cuda-mps-control -d || { echo "SKIP: the MPS control daemon did not start"; rm -rf "$tmp"; exit 0; }
cleanup() { echo quit | nvidia-cuda-mps-control > /dev/null 2>&1; sleep 1; rm -rf "$tmp"; }
trap cleanup EXIT

LOOP_SECONDS=20 $GVM run -- python3 test/gpu/compute_loop.py "$tmp/p1" > "$tmp/o1" 2>&1 &
for _ in $(seq 200); do grep -q '^PID' "$tmp/o1" 2>/dev/null && [ -s "$tmp/p1" ] && break; sleep 0.1; done
pid=$(awk '/^PID/{print $2}' "$tmp/o1")
[ -n "$pid" ] || { bad "the loop did not start under MPS: $(tail -5 "$tmp/o1")"; exit 1; }
sleep 1
echo "--- gvm debug rm $pid (an MPS client)"
$GVM debug rm "$pid" 2>&1 | tee "$tmp/rm"
ls "$CUDA_MPS_LOG_DIRECTORY" > /dev/null && grep -q "New client" "$CUDA_MPS_LOG_DIRECTORY/control.log" 2>/dev/null \
  && ok "the MPS daemon took the process as a client" || echo "note: no 'New client' line in the MPS control log"

out=$($GVM freeze "$pid" 2>&1)
echo "$out"
echo "$out" | grep -q "software freeze (an MPS client" && ok "freeze says it is the software freeze of an MPS client" \
  || bad "freeze answer: $out"
a=$(iters "$tmp/p1"); sleep 2; b=$(iters "$tmp/p1")
[ "$a" = "$b" ] && ok "frozen MPS client made no progress in 2 s (iteration $a)" || bad "progress while frozen: $a -> $b"
$GVM thaw "$pid" && sleep 1 && c=$(iters "$tmp/p1")
[ "$c" -gt "$b" ] && ok "thawed loop progresses ($b -> $c)" || bad "no progress after thaw"
err=$($GVM set "$pid" compute.priority 15 2>&1); rc=$?
[ $rc = 1 ] && echo "$err" | grep -q EGVM_UNSUPPORTED && ok "priority refused: $err" || bad "priority under MPS: rc $rc, $err"
wait
grep -q '^DONE' "$tmp/o1" && ok "the loop ran to its end: $(grep DONE "$tmp/o1")" || bad "the loop did not finish: $(tail -3 "$tmp/o1")"
echo "mps check: $fails failure(s)"
exit $((fails > 0))
