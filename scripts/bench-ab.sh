#!/usr/bin/env bash
# Before/after comparison of two builds: alternates `rcr-bench` of BEFORE_DIR and AFTER_DIR
# (each holding rcr and rcr-bench of one build, e.g. copies of target/release), ROUNDS times,
# so that both meet the machine in the same state. Remaining arguments go to rcr-bench
# (sizes). RCR_BENCH_RUNS (default 5) runs per figure; RT=1 runs under chrt -f 10
# (SCHED_FIFO), so that other work on the machine waits while rcr runs.
#
#     scripts/bench-ab.sh /tmp/before /tmp/after 3 64 1024
set -euo pipefail
before=$1 after=$2 rounds=$3
shift 3
export RCR_BENCH_RUNS=${RCR_BENCH_RUNS:-5}
prio=()
if [ "${RT:-0}" = 1 ]; then prio=(chrt -f 10); fi
for round in $(seq "$rounds"); do
    for build in "$before" "$after"; do
        echo "== $build round $round $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
        mkdir -p "/dev/shm/rcr-bench-ab-$(basename "$build")"
        "${prio[@]}" "$build/rcr-bench" --dir "/dev/shm/rcr-bench-ab-$(basename "$build")" "$@" |
            grep MiB
    done
done
