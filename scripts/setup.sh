#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test rcr, the Rust toolchain
# included. Idempotent and quiet. scripts/test.sh and scripts/demo.sh source it
# (`. scripts/setup.sh`), so that the toolchain it finds or installs is the one they use; it
# can also be run on its own.
set -euo pipefail
rcr_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The oldest Rust that builds rcr: Cargo.toml's rust-version.
rcr_min_rust=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' "$rcr_root/Cargo.toml")

# rcr_version_ge A B: dotted version A is B or newer.
rcr_version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
# cargo and rustc on PATH, and rustc at least rcr_min_rust.
rcr_rust_ok() {
  command -v cargo >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1 &&
    rcr_version_ge "$(rustc --version | awk '{print $2}')" "$rcr_min_rust"
}

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

# Rust: a rustup installation in ~/.cargo if there is one and it is new enough; otherwise
# Debian 12's own recent toolchain (bookworm-security: rustc-web, cargo-web, rust-web-clippy,
# rustfmt-web, in /usr/bin), since nothing can be downloaded from elsewhere.
if ! rcr_rust_ok && [ -f "$HOME/.cargo/env" ]; then
  . "$HOME/.cargo/env"
fi
rcr_debian_rust=0
if ! rcr_rust_ok; then
  rcr_debian_rust=1
  need_apt+=(rustc-web cargo-web rust-web-clippy rustfmt-web)
elif [ "$(command -v cargo)" = /usr/bin/cargo ]; then
  # Debian's toolchain already: clippy and rustfmt come as packages of their own.
  cargo clippy --version >/dev/null 2>&1 || need_apt+=(rust-web-clippy)
  cargo fmt --version >/dev/null 2>&1 || need_apt+=(rustfmt-web)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ "$rcr_debian_rust" = 1 ] && ! rcr_rust_ok; then
  # An older rustc earlier on PATH (an old toolchain in ~/.cargo/bin) hides Debian's.
  export PATH="/usr/bin:$PATH"
fi
rcr_rust_ok || {
  echo "setup: no Rust $rcr_min_rust or newer (cargo, rustc) on this machine, and Debian's rustc-web/cargo-web could not be installed" >&2
  exit 1
}
if command -v rustup >/dev/null 2>&1 && [ "$(command -v cargo)" != /usr/bin/cargo ]; then
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi
