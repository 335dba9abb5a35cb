//! eventfd: its count and semaphore mode, from fdinfo.

use anyhow::{Context, Result};

use super::OneFd;
use crate::image::proto::EventFd;

pub(super) fn dump(one: &OneFd) -> Result<EventFd> {
    let count = one
        .info
        .field("eventfd-count:")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .with_context(|| format!("pid {} fd {}: eventfd without a count", one.pid, one.fd))?;
    Ok(EventFd {
        count,
        flags: one.flags,
        semaphore: one.info.field("eventfd-semaphore:") == Some("1"),
    })
}
