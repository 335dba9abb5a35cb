//! Unix sockets, as sock_diag describes them: socket pairs, connections made through a
//! listener (which end was accepted), listening sockets with the connections waiting in
//! their queue, bound and unbound datagram sockets, sockets whose peer has gone; with their
//! queued messages (and datagram senders). A peer outside the tree is refused unless the
//! user said what to do with it (--external-unix).

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use super::{FileIds, OneFd};
use crate::image::proto::{ExternalUnix, SocketOptions, UnixSocket};
use crate::sys::socket::{Options, UnixInfo};

/// Socket options between the image and the kernel (both directions here, in one place).
impl From<Options> for SocketOptions {
    fn from(o: Options) -> SocketOptions {
        SocketOptions {
            sndbuf: o.sndbuf,
            rcvbuf: o.rcvbuf,
            passcred: o.passcred,
            passsec: o.passsec,
            rcvlowat: o.rcvlowat,
            sndtimeo_us: o.sndtimeo_us,
            rcvtimeo_us: o.rcvtimeo_us,
        }
    }
}

impl From<&SocketOptions> for Options {
    fn from(o: &SocketOptions) -> Options {
        Options {
            sndbuf: o.sndbuf,
            rcvbuf: o.rcvbuf,
            passcred: o.passcred,
            passsec: o.passsec,
            rcvlowat: o.rcvlowat,
            sndtimeo_us: o.sndtimeo_us,
            rcvtimeo_us: o.rcvtimeo_us,
        }
    }
}

pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_LISTEN: u32 = 10;

/// The unix sockets of the network namespace (read once, while the tree is frozen) and those
/// of the tree.
#[derive(Default)]
pub struct UnixTable {
    all: HashMap<u32, UnixInfo>,
    /// Client socket -> the listener whose queue its connection waits in.
    waiting_on: HashMap<u32, u32>,
    /// The addresses of the listening sockets.
    listener_names: HashSet<Vec<u8>>,
    /// Sockets of the tree: (pid, fd, inode), first fd of each.
    of_tree: Vec<(i32, i32, u32)>,
    inodes: HashSet<u32>,
    pub external: ExternalUnix,
}

impl UnixTable {
    fn load(&mut self) -> Result<()> {
        if self.all.is_empty() {
            self.all = crate::sys::socket::unix_sockets().context("sock_diag")?;
            for (&listener, info) in &self.all {
                for &client in &info.pending {
                    self.waiting_on.insert(client, listener);
                }
                if let Some(name) = info
                    .name
                    .as_ref()
                    .filter(|_| u32::from(info.state) == TCP_LISTEN)
                {
                    self.listener_names.insert(name.clone());
                }
            }
        }
        Ok(())
    }

    fn name_of(&self, inode: u32) -> Vec<u8> {
        self.all
            .get(&inode)
            .and_then(|i| i.name.clone())
            .unwrap_or_default()
    }

    /// Whether a listening socket is bound to `name`.
    fn is_listener_name(&self, name: &[u8]) -> bool {
        self.listener_names.contains(name)
    }

    /// Once the whole tree is seen: every peer must be in it, or the user must have said what
    /// to do with those outside.
    pub fn check_peers(&self) -> Result<()> {
        let option = "--external-unix reconnect|disconnect says what to do with it";
        for &(pid, fd, inode) in &self.of_tree {
            let info = &self.all[&inode];
            let what = format!("pid {pid} fd {fd}: unix socket socket:[{inode}]");
            if u32::from(info.state) == TCP_LISTEN {
                for client in info.pending.iter().filter(|c| !self.inodes.contains(c)) {
                    if self.external == ExternalUnix::Refuse {
                        crate::refuse!(
                            "{what} has a connection from socket:[{client}] outside the dumped tree waiting to be accepted ({option})"
                        );
                    }
                    crate::log::info(&format!(
                        "{what}: the waiting connection of socket:[{client}] (outside the tree) is not restored"
                    ));
                }
                continue;
            }
            let peer = match self.waiting_on.get(&inode) {
                Some(&listener) => listener,
                None if info.peer == 0 => continue,
                None => info.peer,
            };
            if self.inodes.contains(&peer) {
                let peer_info = &self.all[&peer];
                // A datagram socket connected to one of the tree that is not its pair: made
                // again by connecting to the peer's address.
                if u32::from(info.sock_type) == libc::SOCK_DGRAM as u32
                    && peer_info.peer != inode
                    && peer_info.name.is_none()
                {
                    crate::refuse!("{what} is connected to socket:[{peer}], which has no address");
                }
                continue;
            }
            let peer_name = self.name_of(peer);
            match self.external {
                ExternalUnix::Refuse => crate::refuse!(
                    "{what} is connected to socket:[{peer}] {} outside the dumped tree ({option})",
                    printable(&peer_name)
                ),
                ExternalUnix::Reconnect if peer_name.is_empty() => crate::refuse!(
                    "{what}: its peer socket:[{peer}] outside the tree has no address to connect to again (--external-unix disconnect restores it as closed by the peer)"
                ),
                ExternalUnix::Reconnect if accepted(self, info, inode) => crate::refuse!(
                    "{what} was accepted from a client outside the tree, which cannot connect again (--external-unix disconnect restores it as closed by the peer)"
                ),
                ExternalUnix::Reconnect
                    if peer_name.first().is_some_and(|&b| b != 0 && b != b'/') =>
                {
                    crate::refuse!(
                        "{what}: its peer outside the tree is bound to the relative path {}, which cannot be connected to again (--external-unix disconnect restores it as closed by the peer)",
                        printable(&peer_name)
                    )
                }
                ExternalUnix::Reconnect if info.rqueue > 0 => crate::refuse!(
                    "{what} has {} bytes from its peer outside the tree, lost by a new connection (--external-unix disconnect keeps them)",
                    info.rqueue
                ),
                _ => {}
            }
        }
        Ok(())
    }
}

/// An address for messages: a path as it is, an abstract name with '@' for its NUL.
pub fn printable(name: &[u8]) -> String {
    match name.split_first() {
        None => "(unnamed)".to_owned(),
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        Some(_) => String::from_utf8_lossy(name).into_owned(),
    }
}

/// Whether this end of a connection came from accept(): it shows its listener's address.
/// The client end may be unnamed or bound to an address of its own; of two named ends, the
/// one named like a listening socket was accepted.
fn accepted(table: &UnixTable, info: &UnixInfo, inode: u32) -> bool {
    if !stream_like(info)
        || u32::from(info.state) != TCP_ESTABLISHED
        || table.waiting_on.contains_key(&inode)
    {
        return false;
    }
    let Some(name) = &info.name else {
        return false;
    };
    let peer_name = table.name_of(info.peer);
    peer_name.is_empty() || (table.is_listener_name(name) && !table.is_listener_name(&peer_name))
}

/// A unix socket of the tree, or None when the socket is not a unix one (refused by the
/// caller). Peers are checked once the whole tree is seen: [`UnixTable::check_peers`].
pub(super) fn dump(one: &OneFd, ids: &mut FileIds) -> Result<Option<UnixSocket>> {
    let (pid, fd, inode) = (one.pid, one.fd, one.meta.ino());
    ids.unix.load()?;
    let table = &ids.unix;
    let Some(info) = table.all.get(&(inode as u32)) else {
        return Ok(None);
    };
    let what = || format!("pid {pid} fd {fd}: unix socket socket:[{inode}]");
    let state = u32::from(info.state);
    if ![TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN].contains(&state) {
        crate::refuse!("{}: state {state} is not supported", what());
    }
    let name = info.name.clone().unwrap_or_default();
    let is_path = name.first().is_some_and(|&b| b != 0);
    // A relative path is relative to the binder's cwd at bind time: taken as the process'
    // cwd now, which must hold that very socket file (at its name, or renamed in the same
    // directory).
    let mut bind_dir = String::new();
    let mut socket_file = None;
    if is_path {
        let relative = name[0] != b'/';
        let base = if relative {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .with_context(|| format!("{}: cwd", what()))?
        } else {
            std::path::PathBuf::new()
        };
        socket_file = find_socket_file(&base, &name, info.vfs_inode);
        if relative {
            if socket_file.is_none() {
                crate::refuse!(
                    "{}: bound to the relative path {}, which is not its socket file from the process' cwd {}, nor renamed in its directory (not supported)",
                    what(),
                    printable(&name),
                    base.display()
                );
            }
            bind_dir = base.to_string_lossy().into_owned();
        }
    }
    let waiting_on = table.waiting_on.get(&(inode as u32)).copied();
    if waiting_on.is_some() && info.wqueue > 0 {
        crate::refuse!(
            "{}: {} bytes sent into a connection not yet accepted by {} (not supported)",
            what(),
            info.wqueue,
            printable(&table.name_of(waiting_on.unwrap_or(0)))
        );
    }
    let accepted = accepted(table, info, inode as u32);
    let peer_named = !table.name_of(info.peer).is_empty();
    if stream_like(info)
        && state == TCP_ESTABLISHED
        && waiting_on.is_none()
        && !name.is_empty()
        && peer_named
        && !accepted
        && !accepted_peer(table, info.peer)
    {
        crate::refuse!(
            "{}: both ends of its connection are named and neither like a listener: which one was accepted is unknown",
            what()
        );
    }
    // The socket file of a path name: as it is (maybe renamed since bind), or gone.
    let (mut path_mode, mut path_uid, mut path_gid, mut path_removed) = (0, 0, 0, false);
    let mut renamed_to = Vec::new();
    if is_path && !accepted {
        match socket_file {
            Some((meta, renamed)) => {
                (path_mode, path_uid, path_gid) = (meta.mode(), meta.uid(), meta.gid());
                renamed_to = renamed.unwrap_or_default();
            }
            None => path_removed = true,
        }
    }
    let peer_name = match waiting_on {
        Some(listener) => table.name_of(listener),
        None => table.name_of(info.peer),
    };
    let (sock_type, peer, shutdown, backlog, pending) = (
        u32::from(info.sock_type),
        u64::from(info.peer),
        u32::from(info.shutdown),
        if state == TCP_LISTEN { info.wqueue } else { 0 },
        if state == TCP_LISTEN {
            info.pending.iter().map(|&c| u64::from(c)).collect()
        } else {
            Vec::new()
        },
    );
    // A socket has one description: its first fd in the tree comes with a copy of it.
    let first = ids.saved.insert(inode);
    let (queued, peek_offset) = match one.copy {
        _ if state == TCP_LISTEN => (Vec::new(), -1),
        Some(copy) if first => crate::sys::socket::peek_queue(copy).map_err(|err| {
            if err.kind() == std::io::ErrorKind::Unsupported {
                crate::refusal!("{}: queue: {err}", what())
            } else {
                anyhow::Error::new(err).context(format!("{}: queue", what()))
            }
        })?,
        None if first => bail!("{}: no description copy", what()),
        _ => (Vec::new(), -1),
    };
    let options = match one.copy {
        Some(copy) if first => {
            let options = crate::sys::socket::options(copy)
                .with_context(|| format!("{}: socket options", what()))?;
            Some(SocketOptions::from(options))
        }
        _ => None,
    };
    if first {
        ids.unix.of_tree.push((pid, fd, inode as u32));
        ids.unix.inodes.insert(inode as u32);
    }
    let dgram = sock_type == libc::SOCK_DGRAM as u32;
    Ok(Some(UnixSocket {
        inode,
        sock_type,
        peer,
        flags: one.flags,
        has_queue: first,
        senders: if dgram {
            queued.iter().map(|q| q.sender.clone()).collect()
        } else {
            Vec::new()
        },
        queue: queued.into_iter().map(|q| q.data).collect(),
        state,
        name,
        backlog,
        pending,
        shutdown,
        peer_name,
        waiting: waiting_on.is_some(),
        accepted,
        external: ids.unix.external as i32,
        path_mode,
        path_uid,
        path_gid,
        path_removed,
        peek_offset: (peek_offset >= 0).then_some(peek_offset),
        options,
        bind_dir,
        renamed_to,
    }))
}

/// The socket file of a socket bound to the path `name` (relative to `base`), found by its
/// inode (UNIX_DIAG_VFS): at that name, or renamed since in the same directory (a rename
/// keeps the inode), then with its new name in the form of `name`. None: not found there
/// (removed, or moved to another directory).
fn find_socket_file(
    base: &std::path::Path,
    name: &[u8],
    vfs_inode: Option<u32>,
) -> Option<(std::fs::Metadata, Option<Vec<u8>>)> {
    use std::os::unix::fs::{DirEntryExt, FileTypeExt};
    let vfs_inode = vfs_inode?;
    let is_it = |m: &std::fs::Metadata| m.file_type().is_socket() && m.ino() as u32 == vfs_inode;
    let path = base.join(std::ffi::OsStr::from_bytes(name));
    if let Ok(meta) = std::fs::symlink_metadata(&path)
        && is_it(&meta)
    {
        return Some((meta, None));
    }
    let dir = path.parent()?;
    let prefix = &name[..name.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)];
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        // d_ino may differ from st_ino (overlayfs): every socket is a candidate too.
        .filter(|e| e.ino() as u32 == vfs_inode || e.file_type().is_ok_and(|t| t.is_socket()))
        .find_map(|e| {
            let meta = std::fs::symlink_metadata(e.path()).ok()?;
            is_it(&meta).then(|| {
                let renamed = [prefix, e.file_name().as_bytes()].concat();
                (meta, Some(renamed))
            })
        })
}

fn stream_like(info: &UnixInfo) -> bool {
    matches!(
        i32::from(info.sock_type),
        libc::SOCK_STREAM | libc::SOCK_SEQPACKET
    )
}

fn accepted_peer(table: &UnixTable, peer: u32) -> bool {
    table
        .all
        .get(&peer)
        .is_some_and(|info| accepted(table, info, peer))
}
