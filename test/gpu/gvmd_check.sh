#!/bin/bash
# Device check of gvmd: the FUSE tree over a real PyTorch process, as GVM's README shows it:
# cat memory.current, echo 1 > compute.freeze stops its progress, echo 0 resumes it.
set -u
cd "$(dirname "$0")/../.."
# shellcheck source=cli_check_lib.sh
. test/gpu/cli_check_lib.sh
tmp=$(mktemp -d); mnt=$tmp/mnt
LOOP_SECONDS=20 $GVM run -- python3 test/gpu/compute_loop.py "$tmp/p" > "$tmp/o" 2>&1 &
for _ in $(seq 100); do grep -q '^PID' "$tmp/o" 2>/dev/null && [ -s "$tmp/p" ] && break; sleep 0.1; done
pid=$(awk '/^PID/{print $2}' "$tmp/o")
node dist/daemon/gvmd.js --mount "$mnt" --metrics-port 0 > "$tmp/gvmd.log" 2>&1 &
gvmd=$!
for _ in $(seq 100); do [ -d "$mnt/processes/$pid/0" ] && break; sleep 0.1; done
dir=$mnt/processes/$pid/0
if [ ! -d "$dir" ]; then
  # what the tree, the block directory and gvm itself show, so one device run says why
  bad "no $dir after 10 s"
  echo "     pid namespace: $(readlink /proc/self/ns/pid); blocks: $(ls -A /dev/shm/gvm 2>&1 | tr '\n' ' ')"
  echo "     tree: $(ls -A "$mnt" 2>&1 | tr '\n' ' ') / processes: $(ls -A "$mnt/processes" 2>&1 | tr '\n' ' ')"
  echo "     processes/$pid: $(ls -A "$mnt/processes/$pid" 2>&1 | tr '\n' ' ')"
  echo "     gvm ps: $($GVM ps 2>&1 | head -5 | tr '\n' ' ')"
  kill -TERM $gvmd; wait $gvmd; kill %1 2>/dev/null; wait
  sed 's/^/     gvmd| /' "$tmp/gvmd.log" | tail -20
  echo "gvmd check: $fails failure(s)"
  exit 1
fi
cur=$(cat "$dir/memory.current") && [ "$cur" = "$($GVM get "$pid" memory.current)" ] && ok "cat memory.current: $cur (same as gvm get)" || bad "memory.current: '$cur'"
head -3 "$dir/gcgroup.stat" | sed 's/^/     /'
a=0 b=0
echo 1 > "$dir/compute.freeze" && a=$(iters "$tmp/p") && sleep 2 && b=$(iters "$tmp/p")
[ "$a" = "$b" ] && ok "echo 1 > compute.freeze: no progress in 2 s (iteration $a)" || bad "progress while frozen: $a -> $b"
c=0
echo 0 > "$dir/compute.freeze" && sleep 1 && c=$(iters "$tmp/p")
[ "$c" -gt "$b" ] && ok "echo 0 > compute.freeze: progress resumed ($b -> $c)" || bad "no progress after thaw"
echo 15 > "$dir/compute.priority" && [ "$(cat "$dir/compute.priority")" = 15 ] && ok "echo 15 > compute.priority" || bad "priority"
echo 999 > "$dir/compute.priority" 2>/dev/null && bad "priority 999 accepted" || ok "priority 999 refused"
python3 - "$dir/memory.current" <<'PY'
import sys, time
t = time.perf_counter()
for _ in range(200):
    with open(sys.argv[1]) as f: f.read()
print("     one open+read+close of memory.current: %.3f ms" % ((time.perf_counter() - t) / 200 * 1e3))
PY
kill -TERM $gvmd; wait $gvmd; kill %1 2>/dev/null; wait
cat "$tmp/gvmd.log"
echo "gvmd check: $fails failure(s)"
exit $((fails > 0))
