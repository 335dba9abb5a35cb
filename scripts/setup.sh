#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test rcr. Idempotent and quiet.
set -euo pipefail
need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The traced-task test attaches strace to a workload (it skips, saying so, without it).
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
# prlimit (limits test), setsid --ctty (terminal tests), unshare (chroot test).
for tool in prlimit setsid unshare; do
  command -v "$tool" >/dev/null 2>&1 || { need_apt+=(util-linux); break; }
done
# mount --rbind and chroot (chroot test).
command -v mount >/dev/null 2>&1 || need_apt+=(mount)
command -v chroot >/dev/null 2>&1 || need_apt+=(coreutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: no Rust toolchain (cargo) on this machine" >&2; exit 1; }
if command -v rustup >/dev/null 2>&1; then
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi
