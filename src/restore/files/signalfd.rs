//! signalfd: created with its mask.

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};

use crate::image::proto::SignalFd;

pub(super) fn open(s: &SignalFd, what: &str) -> Result<OwnedFd> {
    let flags = (s.flags as i32 & libc::O_NONBLOCK) | libc::O_CLOEXEC;
    crate::sys::fd::signalfd(s.mask, flags).with_context(|| format!("{what}: signalfd"))
}
