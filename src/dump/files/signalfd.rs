//! signalfd: its mask, from fdinfo.

use anyhow::{Context, Result};

use super::OneFd;
use crate::image::proto::SignalFd;

pub(super) fn dump(one: &OneFd) -> Result<SignalFd> {
    let mask = one
        .info
        .field("sigmask:")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .with_context(|| format!("pid {} fd {}: signalfd without a mask", one.pid, one.fd))?;
    Ok(SignalFd {
        mask,
        flags: one.flags,
    })
}
