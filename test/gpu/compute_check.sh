#!/bin/bash
# Device check of compute control through the CLI on real PyTorch processes: freeze stops progress
# and thaw resumes it, priority changes the timeslice read back from the RM, kill -9 while frozen
# leaves the GPU usable, and a freeze before the first context holds the first kernels.
# Needs node on PATH (source .device/env.sh) and the built agent, addon and dist/.
set -u
cd "$(dirname "$0")/../.."
# shellcheck source=cli_check_lib.sh
. test/gpu/cli_check_lib.sh
tmp=$(mktemp -d)

# 1. freeze / thaw a running PyTorch loop
LOOP_SECONDS=15 $GVM run -- python3 test/gpu/compute_loop.py "$tmp/p1" > "$tmp/o1" 2>&1 &
for _ in $(seq 100); do grep -q '^PID' "$tmp/o1" 2>/dev/null && [ -s "$tmp/p1" ] && break; sleep 0.1; done
pid=$(awk '/^PID/{print $2}' "$tmp/o1")
sleep 1
$GVM freeze "$pid" && a=$(iters "$tmp/p1") && sleep 2 && b=$(iters "$tmp/p1")
[ "$a" = "$b" ] && ok "frozen PyTorch loop made no progress in 2 s (iteration $a)" || bad "progress while frozen: $a -> $b"
[ "$($GVM get "$pid" compute.freeze)" = 1 ] && ok "compute.freeze reads 1" || bad "compute.freeze not 1"
$GVM thaw "$pid" && sleep 1 && c=$(iters "$tmp/p1")
[ "$c" -gt "$b" ] && ok "thawed loop progresses ($b -> $c)" || bad "no progress after thaw"
# 2. priority: timeslice read back on every TSG
$GVM set "$pid" compute.priority 15 && $GVM debug rm "$pid" > "$tmp/rm15"
grep -c " 16 us" "$tmp/rm15" | grep -q '^4$' && ok "priority 15: all 4 TSGs read back 16 us" || { bad "priority 15 timeslices"; cat "$tmp/rm15"; }
$GVM set "$pid" compute.priority 8 && $GVM debug rm "$pid" | grep -c " 2048 us" | grep -q '^4$' && ok "priority 8: back to 2048 us" || bad "priority 8"
$GVM set "$pid" compute.priority 16 2>/dev/null; [ $? = 2 ] && ok "priority 16 refused (exit 2)" || bad "priority 16 accepted"
# 3. kill -9 while frozen, then a new process uses the GPU normally
$GVM freeze "$pid" > /dev/null && kill -9 "$pid"; wait 2>/dev/null
sleep 1
if timeout 60 python3 -c "import torch; x=torch.ones(4096,4096,device='cuda'); print(float((x@x).sum()))" > "$tmp/after" 2>&1; then
  ok "after kill -9 while frozen the next process ran: $(cat "$tmp/after")"
else bad "GPU unusable after kill -9 while frozen: $(cat "$tmp/after")"; fi
$GVM ps --json > "$tmp/ps"; grep -q "\"pid\":$pid" "$tmp/ps" && bad "killed process still listed" || ok "killed process no longer listed"
# 4. freeze before the first context
GVM_LOG=info GVM_RM_TRACE=$tmp/rm4.trace LOOP_SECONDS=3 $GVM run -- python3 test/gpu/compute_loop.py "$tmp/p4" "$tmp/go4" --init-only-first > "$tmp/o4" 2>&1 &
for _ in $(seq 100); do grep -q '^PID' "$tmp/o4" 2>/dev/null && break; sleep 0.1; done
pid4=$(awk '/^PID/{print $2}' "$tmp/o4")
for _ in $(seq 50); do $GVM get "$pid4" compute.freeze > /dev/null 2>&1 && break; sleep 0.1; done
$GVM freeze "$pid4"
touch "$tmp/go4"; sleep 4
if [ ! -s "$tmp/p4" ]; then ok "frozen before its first context: no iteration in 4 s"
else
  bad "iterations while frozen before the first context: $(iters "$tmp/p4")"
  # what the agent saw: its log, the channels it knows now, and libcuda's RM objects and controls
  grep -i 'gvm' "$tmp/o4" | head -20 | sed 's/^/     o4| /'
  $GVM debug rm "$pid4" 2>&1 | head -30 | sed 's/^/     rm| /'
  python3 test/gpu/rm_trace_summary.py "$tmp/rm4.trace" 2>&1 | head -40 | sed 's/^/     trace| /'
fi
$GVM thaw "$pid4"; wait
grep -q '^DONE' "$tmp/o4" && ok "after thaw it ran to the end: $(grep DONE "$tmp/o4")" || { bad "did not finish after thaw"; tail -3 "$tmp/o4"; }
ls /dev/shm/gvm/ | grep -v "^boards$" | grep -qv "^\." && bad "blocks left in /dev/shm/gvm: $(ls /dev/shm/gvm)" || ok "no control block left behind"
echo "compute check: $fails failure(s)"
rm -rf "$tmp"
exit $((fails > 0))
