//! The unsafe edge of rcr: raw system calls and CPU instructions that nix and the standard
//! library do not offer, each wrapped in a safe function. Nothing outside this module uses
//! `unsafe`.

pub mod child;
pub mod clone3;
pub mod cpu;
pub mod fd;
pub mod inotify;
pub mod mem;
pub mod pidfd;
pub mod probe;
pub mod ptrace;
pub mod socket;
pub mod tty;
pub mod xstate;

use std::io;

/// Turns a raw libc return value into an io::Result.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
