#!/bin/bash
# Issue 4 device checks with PyTorch: training past its limit in swap mode gives the same losses,
# and inference keeps its outputs while its limit is lowered and raised. Needs node (the gvm CLI).
set -u
cd "$(dirname "$0")/../.."
A=${GVM_AGENT:-$PWD/build/Release/libgvm.so}
export GVM_CLI=${GVM_CLI:-node $PWD/dist/cli/gvm.js}
fails=0
t=$(mktemp -d)
LD_PRELOAD=$A timeout 200 python3 test/gpu/swap_torch.py train > "$t/free" 2>&1 || { echo "FAIL unlimited train"; cat "$t/free"; exit 1; }
peak=$(awk '/^PEAK/{print $2}' "$t/free")
limit=$((peak * 2 / 3))
GVM_MEMORY_MODE=swap GVM_MEMORY_LIMIT=$limit LD_PRELOAD=$A timeout 300 python3 test/gpu/swap_torch.py train > "$t/swap" 2>&1 || { echo "FAIL swap train"; cat "$t/swap"; exit 1; }
if [ "$(grep ^LOSSES "$t/free")" = "$(grep ^LOSSES "$t/swap")" ]; then echo "ok   training at 2/3 of its working set ($limit of $peak bytes): losses identical"
else echo "FAIL losses differ"; grep ^LOSSES "$t/free" "$t/swap"; fails=$((fails+1)); fi
echo "     time unlimited $(awk '/^TIME/{print $2}' "$t/free") s, swap $(awk '/^TIME/{print $2}' "$t/swap") s"
grep ^STAT "$t/swap" | tr ' ' '\n' | grep -A1 -E "memory_current|memory_swap_current" | paste - - | sed 's/^/     /'
LD_PRELOAD=$A timeout 200 python3 test/gpu/swap_torch.py infer > "$t/ifree" 2>&1
GVM_MEMORY_MODE=swap LD_PRELOAD=$A timeout 300 python3 test/gpu/swap_torch.py infer > "$t/iswap" 2>&1
if [ "$(grep ^HASHES "$t/ifree")" = "$(grep ^HASHES "$t/iswap")" ] && grep -q ^HASHES "$t/ifree"; then echo "ok   inference outputs identical while the limit was lowered and raised"
else echo "FAIL inference outputs differ"; tail -3 "$t/ifree" "$t/iswap"; fails=$((fails+1)); fi
grep ^NOTES "$t/iswap" | sed 's/^NOTES /     /'
echo "swap torch: $fails failure(s)"
exit $((fails > 0))
