#!/usr/bin/env bash
# The demo: start a process that counts, dump it (which kills it), restore it, and watch it
# count on from where it stopped, with the same PID.
set -euo pipefail
cd "$(dirname "$0")/.."
# Sourced: the Rust toolchain it finds or installs is on PATH for what follows.
. scripts/setup.sh
cargo build --release --bins -q
RCR=$PWD/target/release/rcr
WORKLOAD=$PWD/target/release/rcr-workload

# Only stdio goes to the counter: no stray descriptors from whoever runs this script.
for fd in $(ls /proc/$$/fd); do
  if [ "$fd" -gt 2 ] && [ "$fd" != 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
done

work=$(mktemp -d /tmp/rcr-demo.XXXXXX)
out=$work/counter.out
counter=""
restorer=""
cleanup() {
  [ -n "$counter" ] && kill -9 "$counter" 2>/dev/null || true
  [ -n "$restorer" ] && wait "$restorer" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$WORKLOAD" counter "$work" </dev/null >"$out" 2>&1 &
counter=$!
for _ in $(seq 100); do [ -f "$work/ready" ] && break; sleep 0.1; done
sleep 1
echo "== the counter runs as pid $counter:"
tail -n 3 "$out"

echo "== rcr dump -t $counter -D $work/images"
"$RCR" -v dump -t "$counter" -D "$work/images"
wait "$counter" 2>/dev/null || true
echo "== dumped and killed; images:"
ls -l "$work/images"
last=$(tail -n 1 "$out")
sleep 1
echo "== still gone a second later, last line: $last"

echo "== rcr restore -D $work/images"
"$RCR" -v restore -D "$work/images" &
restorer=$!
sleep 1.5
echo "== restored, counting on from where it stopped (the last line before the dump, then on):"
grep -A 4 -x -F "$last" "$out"
pid_now=$(tail -n 1 "$out" | awk '{print $2}')
if [ "$pid_now" = "$counter" ]; then echo "== same pid: $pid_now"; else echo "== pid changed: $pid_now" >&2; exit 1; fi
kill -9 "$counter"
counter=""
wait "$restorer" 2>/dev/null || true
restorer=""
echo "== demo done"
