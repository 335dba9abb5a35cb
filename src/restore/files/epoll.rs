//! epoll: the instance is created by rcr, its registrations made by the process itself once
//! its fds are in place (an epoll item is keyed by the fd number).

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};

use crate::image::proto::{Fds, fd};
use crate::restore::steps::Steps;

pub(super) fn open(what: &str) -> Result<OwnedFd> {
    crate::sys::fd::epoll(libc::O_CLOEXEC).with_context(|| format!("{what}: epoll"))
}

const EPOLL_CTL_ADD: u64 = 1;

/// The process registers the epoll targets itself (its fds are in place by then), for the
/// epoll fds the dump chose (one per description: `registers`; images before 1.4: all).
pub fn restore_epoll_targets(steps: &mut Steps, fds: &Fds) -> Result<()> {
    for entry in &fds.fds {
        let Some(fd::File::Epoll(epoll)) = &entry.file else {
            continue;
        };
        if epoll.registers == Some(false) {
            continue;
        }
        for target in &epoll.targets {
            steps.room(1, 16)?;
            // struct epoll_event is packed on x86_64: u32 events, u64 data.
            let mut event = target.events.to_le_bytes().to_vec();
            event.extend_from_slice(&target.data.to_le_bytes());
            let event = steps.put(&event);
            steps.add(
                format!("epoll_ctl({}, ADD, {})", entry.fd, target.fd),
                libc::SYS_epoll_ctl,
                &[entry.fd as u64, EPOLL_CTL_ADD, target.fd as u64, event],
            );
        }
    }
    Ok(())
}
