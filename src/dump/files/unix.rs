//! Unix sockets, as sock_diag describes them, with their queued messages.

use anyhow::{Context, Result, bail};

use super::{FileIds, OneFd};
use crate::image::proto::UnixSocket;

/// A unix socket of the tree, if it is one rcr restores: connected, unnamed, its peer in the
/// tree (checked once the whole tree is seen: [`FileIds::check_peers`]). Other sockets are
/// None (refused by the caller).
pub(super) fn dump(one: &OneFd, ids: &mut FileIds) -> Result<Option<UnixSocket>> {
    use std::os::unix::fs::MetadataExt;
    let (pid, fd, inode, flags, copy) = (one.pid, one.fd, one.meta.ino(), one.flags, one.copy);
    if ids.unix.is_none() {
        ids.unix = Some(crate::sys::socket::unix_sockets().context("sock_diag")?);
    }
    let Some(info) = ids
        .unix
        .as_ref()
        .and_then(|all| all.get(&(inode as u32)))
        .cloned()
    else {
        return Ok(None);
    };
    const TCP_ESTABLISHED: u8 = 1;
    if info.state != TCP_ESTABLISHED || info.peer == 0 || info.name.is_some() {
        return Ok(None);
    }
    // A socket has one description: its first fd in the tree comes with a copy of it.
    let first = ids.saved.insert(inode);
    let queue = match copy {
        Some(copy) if first => crate::sys::socket::peek_queue(copy)
            .with_context(|| format!("pid {pid} fd {fd}: unix socket queue"))?,
        None if first => bail!("pid {pid} fd {fd}: unix socket without a description copy"),
        _ => Vec::new(),
    };
    ids.sockets.push((pid, fd, u64::from(info.peer)));
    ids.socket_inodes.insert(inode);
    Ok(Some(UnixSocket {
        inode,
        sock_type: u32::from(info.sock_type),
        peer: u64::from(info.peer),
        flags,
        has_queue: first,
        queue,
    }))
}
