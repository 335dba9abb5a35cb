#!/usr/bin/env bash
# Runs the whole test suite N times in a row (default 20) while two busy-looping processes
# keep both cores loaded, and stops at the first failure. A flaky test shows up here; its log
# is kept. Usage: scripts/soak.sh [N] [LOGDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
logs=${2:-$(mktemp -d /tmp/rcr-soak.XXXXXX)}
mkdir -p "$logs"
scripts/setup.sh
cargo test --release --no-run -q

# The spinners are this script's own children, killed by pid when it exits, however it exits.
spinners=()
stop_spinners() {
  for pid in "${spinners[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${spinners[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_spinners EXIT
for _ in 1 2; do
  ( while :; do :; done ) &
  spinners+=($!)
done

for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if cargo test --release >"$logs/run-$i.log" 2>&1; then
    echo "run $i/$runs: pass ($(($(date +%s) - start)) s)"
    rm -f "$logs/run-$i.log"
  else
    echo "run $i/$runs: FAIL ($(($(date +%s) - start)) s), log kept: $logs/run-$i.log"
    grep -E '^test .* FAILED|panicked' "$logs/run-$i.log" | head -20 || true
    exit 1
  fi
done
echo "$runs passed, 0 failed"
