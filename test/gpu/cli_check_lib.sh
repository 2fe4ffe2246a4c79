# Shared by the device checks that drive a PyTorch loop (compute_loop.py) through the gvm CLI:
# sourced after `cd` to the repository root. ok/bad print a check's line and count failures.
GVM="node dist/cli/gvm.js"
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
# the loop rewrites its progress file each iteration: a read may land on the empty, truncated file
iters() { local v=""; for _ in 1 2 3 4 5; do v=$(cut -d' ' -f1 "$1" 2>/dev/null); [ -n "$v" ] && break; sleep 0.01; done; echo "${v:-0}"; }
