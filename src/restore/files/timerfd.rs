//! timerfd: created on its clock with the time left and interval it had, and its count of
//! unread expirations (TFD_IOC_SET_TICKS).

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};

use crate::image::proto::TimerFd;

pub(super) fn open(t: &TimerFd, what: &str) -> Result<OwnedFd> {
    let flags = (t.flags as i32 & libc::O_NONBLOCK) | libc::O_CLOEXEC;
    crate::sys::fd::timerfd(t.clock, flags, t.value_ns, t.interval_ns, t.ticks)
        .with_context(|| format!("{what}: timerfd"))
}
