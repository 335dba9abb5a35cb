//! epoll: every registration (target fd, events, data), from fdinfo, and which fd of the
//! tree makes them again at restore: an epoll item is keyed by its target's file and fd
//! number, so one process that holds every target at its number registers them, once per
//! epoll description however many fds and processes share it.

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};

use super::{FileIds, OneFd};
use crate::image::proto::{Epoll, EpollTarget};

/// Registrations from epoll fdinfo lines "tfd: N events: HEX data: HEX pos:P ino:HEX ...".
pub(super) fn dump(one: &OneFd, ids: &mut FileIds, file_id: u64) -> Result<Epoll> {
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
        let inode = words
            .iter()
            .find_map(|w| w.strip_prefix("ino:"))
            .and_then(|v| u64::from_str_radix(v, 16).ok());
        let parsed = (|| {
            Some(EpollTarget {
                fd: value("tfd:")?.parse().ok()?,
                events: u32::from_str_radix(value("events:")?, 16).ok()?,
                data: u64::from_str_radix(value("data:")?, 16).ok()?,
                inode: inode?,
            })
        })();
        targets.push(parsed.with_context(|| format!("pid {pid} fd {fd}: epoll line {line:?}"))?);
    }
    let registers = !ids.epolls_registered.contains(&file_id)
        && targets.iter().all(|t| {
            std::fs::metadata(format!("/proc/{pid}/fd/{}", t.fd)).is_ok_and(|m| m.ino() == t.inode)
        });
    if registers {
        ids.epolls_registered.insert(file_id);
        ids.epolls_unregistered.remove(&file_id);
    } else if !ids.epolls_registered.contains(&file_id) {
        ids.epolls_unregistered.entry(file_id).or_insert((pid, fd));
    }
    Ok(Epoll {
        flags,
        targets,
        registers: Some(registers),
    })
}
