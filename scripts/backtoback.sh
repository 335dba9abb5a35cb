#!/usr/bin/env bash
# `rcr dump -t PID -D DIR && rcr restore -D DIR` back to back, no sleep, as a user types it,
# N times per scenario (default 50), then the restored tree is told go and must print PASS.
#
#   scripts/backtoback.sh [N] [SCENARIO...]     (default scenarios: unixtree pipes files-all)
#
# unixtree: two processes, a unix listener with an accepted and a waiting connection
# between them; pipes: two processes sharing pipes with data in flight; files-all: every
# file kind at once (unix listeners and waiting connections included).
#
# Each workload is orphaned as it starts (its parent exits), so the machine's init is its
# parent and reaps the killed tree whenever it gets to it: the restore must wait for those
# zombies (it says so at -v). Every process this script starts runs in (or names) its own
# temporary directory; on failure or exit only those are killed, by pid.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-50}
shift || true
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(unixtree pipes files-all)
# RCR and WORKLOAD may name other binaries (e.g. an older rcr, to compare).
if [ -z "${RCR:-}" ] || [ -z "${WORKLOAD:-}" ]; then
  cargo build --release --bins -q || exit 1
fi
RCR=${RCR:-$PWD/target/release/rcr}
WORKLOAD=${WORKLOAD:-$PWD/target/release/rcr-workload}

work=$(mktemp -d /tmp/rcr-backtoback.XXXXXX)

# Kills (by pid) every process whose command line names this script's directory: only
# workloads and rcr runs started here.
kill_ours() {
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    if tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF "$work"; then
      kill -9 "$p" 2>/dev/null || true
    fi
  done
}
trap 'kill_ours; rm -rf "$work"' EXIT

wait_file() { # FILE SECONDS
  local i
  for i in $(seq $(($2 * 100))); do [ -s "$1" ] && return 0; sleep 0.01; done
  return 1
}

total=0
passed=0
for scenario in "${SCENARIOS[@]}"; do
  ok=0
  waited=0
  for run in $(seq "$N"); do
    d=$work/$scenario-$run
    mkdir -p "$d/wl"
    # Orphaned at once: the subshell exits, the machine's init becomes the parent.
    ( setsid "$WORKLOAD" "$scenario" "$d/wl" </dev/null >"$d/wl/stdout" 2>"$d/wl/stderr" & )
    if ! wait_file "$d/wl/ready" 30; then
      echo "$scenario run $run: the workload did not get ready"; cat "$d/wl/stdout" "$d/wl/stderr"
      kill_ours; continue
    fi
    pid=$(cat "$d/wl/ready")
    if "$RCR" dump -t "$pid" -D "$d/img" 2>"$d/dump.err" &&
      "$RCR" -v restore -D "$d/img" --detach --pidfile "$d/pid" 2>"$d/restore.err"; then
      grep -q "for it to be reaped" "$d/restore.err" && waited=$((waited + 1))
      touch "$d/wl/go"
      for _ in $(seq 6000); do grep -q "PASS\|FAIL" "$d/wl/stdout" && break; sleep 0.01; done
      if [ "$(tail -n 1 "$d/wl/stdout")" = PASS ]; then
        ok=$((ok + 1))
      else
        echo "$scenario run $run: the restored tree did not PASS:"; cat "$d/wl/stdout"
      fi
    else
      echo "$scenario run $run: dump && restore failed:"; cat "$d/dump.err" "$d/restore.err" 2>/dev/null
    fi
    kill_ours
  done
  echo "$scenario: $ok of $N passed ($waited restores waited for zombies)"
  total=$((total + N))
  passed=$((passed + ok))
done
echo "all: $passed of $total passed"
[ "$passed" -eq "$total" ]
