//! epoll: every registration (target fd, events, data), from fdinfo.

use anyhow::{Context, Result};

use super::OneFd;
use crate::image::proto::{Epoll, EpollTarget};

/// Registrations from epoll fdinfo lines "tfd: N events: HEX data: HEX ...".
pub(super) fn dump(one: &OneFd) -> Result<Epoll> {
    let (pid, fd, info, flags) = (one.pid, one.fd, one.info, one.flags);
    let mut targets = Vec::new();
    for line in info.text.lines().filter(|l| l.starts_with("tfd:")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let value = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1).copied())
        };
        let parsed = (|| {
            Some(EpollTarget {
                fd: value("tfd:")?.parse().ok()?,
                events: u32::from_str_radix(value("events:")?, 16).ok()?,
                data: u64::from_str_radix(value("data:")?, 16).ok()?,
            })
        })();
        targets.push(parsed.with_context(|| format!("pid {pid} fd {fd}: epoll line {line:?}"))?);
    }
    Ok(Epoll { flags, targets })
}
