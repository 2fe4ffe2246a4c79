#!/usr/bin/env bash
# run-or-dump.sh SECONDS CMD [ARGS...]: runs CMD in its own session; if it is still running after
# SECONDS, prints where every process of that session waits (bench/lib/hang_dump.py), kills them all
# and exits 124. Device runs are budgeted: a hang must cost one bounded run and leave a diagnosis.
set -u
limit=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
setsid "$@" &
pid=$!
for ((i = 0; i < limit * 10; i++)); do
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"
    exit $?
  fi
  sleep 0.1
done
echo "run-or-dump: still running after ${limit} s: $*" >&2
for p in $(pgrep -s "$pid"); do python3 "$here/hang_dump.py" "$p" >&2; done
kill -9 -- "-$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 124
