#!/usr/bin/env bash
# Dump/restore benchmark by memory size, with this machine's write and read limits measured in
# the same run. Arguments go to rcr-bench: [--dir DIR] [SIZE_MIB...].
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bins -q
exec target/release/rcr-bench "$@"
