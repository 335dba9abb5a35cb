//! eventfd: created with its count and semaphore mode.

use std::os::fd::OwnedFd;

use anyhow::Result;
use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};

use crate::image::proto::EventFd;

pub(super) fn open(e: &EventFd) -> Result<OwnedFd> {
    let mut flags = EfdFlags::EFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= EfdFlags::EFD_NONBLOCK;
    }
    if e.semaphore {
        flags |= EfdFlags::EFD_SEMAPHORE;
    }
    let eventfd = NixEventFd::from_flags(flags)?;
    if e.count > 0 {
        // An eventfd adds what is written to its counter.
        eventfd.write(e.count)?;
    }
    Ok(OwnedFd::from(eventfd))
}
