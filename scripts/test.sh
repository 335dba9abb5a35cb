#!/usr/bin/env bash
# Set-up plus the whole test suite: unit tests, integration tests with real processes,
# formatting and lints.
set -euo pipefail
cd "$(dirname "$0")/.."
# Sourced: the Rust toolchain it finds or installs is on PATH for what follows.
. scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
