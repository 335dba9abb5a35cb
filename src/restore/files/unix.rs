//! Unix sockets, made by rcr before the tree exists, the way the tree had them: socket pairs,
//! connections accepted from a listener (made again through a temporary listener at the same
//! address, so each end shows the address it showed), listening sockets with the connections
//! waiting in their queue (their clients connect again, in order), bound datagram sockets
//! and those connected to them, sockets whose peer has gone or is outside the tree; then
//! every queue is refilled by the socket that had sent it, and shutdowns are replayed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, Shutdown, SockFlag, SockType, UnixAddr, accept4, bind,
    connect, listen, send, sendto, shutdown, socket, socketpair,
};

use super::{OpenedFiles, hold_above};
use crate::dump::files::{TCP_ESTABLISHED, TCP_LISTEN, printable};
use crate::image::proto::{ExternalUnix, Fds, UnixSocket, fd};

/// How a socket of the image is made again.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// Not connected: created, bound if it was.
    Alone,
    /// One end of a pair of unnamed sockets connected to each other (socketpair).
    Pair,
    /// Accepted from a listener at its address; its peer (a `Client`) is in the tree.
    Accepted,
    /// Connected to an `Accepted` socket of the tree.
    Client,
    /// Its connection waits in the queue of a listener of the tree.
    Waiting,
    Listener,
    /// A datagram socket connected to a named socket of the tree.
    DgramConnected,
    /// The peer is outside the tree: connected again to its address.
    Reconnect,
    /// The peer has closed its end (or is outside, restored as closed): a pair whose other
    /// end rcr closes once the queue is refilled.
    PeerGone,
}

/// `waiting_in_tree`: the clients waiting in the queue of a listener of the tree.
fn classify(
    s: &UnixSocket,
    all: &BTreeMap<u64, &UnixSocket>,
    waiting_in_tree: &HashSet<u64>,
) -> Result<Role> {
    let peer = all.get(&s.peer);
    let what = || format!("socket:[{}]", s.inode);
    let outside = |mode: ExternalUnix| match mode {
        ExternalUnix::Reconnect => Ok(Role::Reconnect),
        ExternalUnix::Disconnect => Ok(Role::PeerGone),
        ExternalUnix::Refuse => bail!(
            "{}: peer outside the tree, and no way to restore it",
            what()
        ),
    };
    if s.state == TCP_LISTEN {
        return Ok(Role::Listener);
    }
    if s.waiting {
        return if waiting_in_tree.contains(&s.inode) {
            Ok(Role::Waiting)
        } else {
            outside(s.external())
        };
    }
    let dgram = s.sock_type == libc::SOCK_DGRAM as u32;
    if s.peer == 0 {
        // A datagram socket someone connected to shows ESTABLISHED too, without a peer.
        return Ok(if s.state == TCP_ESTABLISHED && !dgram {
            Role::PeerGone
        } else {
            Role::Alone
        });
    }
    let Some(peer) = peer else {
        return outside(s.external());
    };
    Ok(
        if s.name.is_empty() && peer.name.is_empty() && peer.peer == s.inode {
            Role::Pair
        } else if dgram {
            Role::DgramConnected
        } else if s.accepted {
            Role::Accepted
        } else if peer.accepted {
            Role::Client
        } else {
            bail!(
                "{}: connected to socket:[{}], and neither end was accepted",
                what(),
                peer.inode
            )
        },
    )
}

/// A socket address: a path (relative ones to `dir`), or an abstract name.
#[derive(Clone, Copy)]
struct Address<'a> {
    name: &'a [u8],
    dir: &'a str,
}

impl<'a> Address<'a> {
    /// The address a socket of the image is bound to.
    fn of(s: &'a UnixSocket) -> Address<'a> {
        Address {
            name: &s.name,
            dir: &s.bind_dir,
        }
    }

    fn is_path(&self) -> bool {
        self.name.first().is_some_and(|&b| b != 0)
    }

    /// The socket file of a path address.
    fn file(&self) -> PathBuf {
        Path::new(self.dir).join(OsStr::from_bytes(self.name))
    }

    /// Runs `call` (bind, connect, sendto) with the address; a relative path in a thread
    /// whose working directory is `dir`, so that the socket keeps the name it had.
    fn run<R: Send>(
        &self,
        call: impl FnOnce(&UnixAddr) -> nix::Result<R> + Send,
    ) -> std::io::Result<R> {
        let addr = match self.name.split_first() {
            Some((0, abstract_name)) => UnixAddr::new_abstract(abstract_name)?,
            _ => UnixAddr::new(OsStr::from_bytes(self.name))?,
        };
        if !self.is_path() || self.name[0] == b'/' {
            return Ok(call(&addr)?);
        }
        let dir: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(self.dir)?
            .into();
        crate::sys::fd::in_directory(dir.as_fd(), || Ok(call(&addr)?))
    }

    fn printable(&self) -> String {
        if self.is_path() && self.name[0] != b'/' {
            self.file().display().to_string()
        } else {
            printable(self.name)
        }
    }
}

fn sock_type(s: &UnixSocket) -> Result<SockType> {
    Ok(match s.sock_type as i32 {
        libc::SOCK_STREAM => SockType::Stream,
        libc::SOCK_DGRAM => SockType::Datagram,
        libc::SOCK_SEQPACKET => SockType::SeqPacket,
        other => bail!("socket:[{}]: unix socket type {other}", s.inode),
    })
}

fn new_socket(s: &UnixSocket) -> Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        sock_type(s)?,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .with_context(|| format!("socket:[{}]", s.inode))
}

/// SOL_SOCKET options as dumped (images before 1.4 have none).
fn apply_options(sock: &OwnedFd, s: &UnixSocket) -> Result<()> {
    let Some(o) = &s.options else {
        return Ok(());
    };
    crate::sys::socket::set_options(sock, &o.into())
        .with_context(|| format!("socket:[{}]: socket options", s.inode))
}

/// A connected pair of sockets of `s`'s type.
fn new_pair(s: &UnixSocket) -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        sock_type(s)?,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .with_context(|| format!("socket:[{}]: socketpair", s.inode))
}

/// Binds to `address`. A path still there from the dumped process (a socket file no live
/// socket holds) is removed first; an address a live socket holds is an error.
fn bind_to(sock: &OwnedFd, address: Address, what: &str) -> Result<()> {
    let fd = sock.as_raw_fd();
    match address.run(|addr| bind(fd, addr)) {
        Err(err) if err.raw_os_error() == Some(libc::EADDRINUSE) && address.is_path() => {
            let path = address.file();
            let meta = std::fs::symlink_metadata(&path)?;
            let live = crate::sys::socket::unix_sockets().context("sock_diag")?;
            let held = live.values().any(|i| i.is_file(&meta));
            if held || !meta.file_type().is_socket() {
                bail!(
                    "{what}: {} is in use (by a live socket, or not a socket)",
                    path.display()
                );
            }
            std::fs::remove_file(&path)?;
            address
                .run(|addr| bind(fd, addr))
                .with_context(|| format!("{what}: bind to {}", path.display()))
        }
        Err(err) => Err(err).with_context(|| format!("{what}: bind to {}", address.printable())),
        Ok(()) => Ok(()),
    }
}

/// Moves a restored socket's file from the name it was bound to to the name it had at the
/// dump. A file there that is a socket no live socket holds (left by the dumped process) is
/// replaced; anything else there is an error.
fn rename_socket_file(from: &Path, to: &Path, what: &str) -> Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(to) {
        let live = crate::sys::socket::unix_sockets().context("sock_diag")?;
        let held = live.values().any(|i| i.is_file(&meta));
        if held || !meta.file_type().is_socket() {
            bail!(
                "{what}: its socket file was renamed to {}, which is in use (by a live socket, or not a socket)",
                to.display()
            );
        }
    }
    std::fs::rename(from, to).with_context(|| {
        format!(
            "{what}: renaming its socket file {} to {}",
            from.display(),
            to.display()
        )
    })
}

fn connect_to(sock: &OwnedFd, address: Address, what: &str) -> Result<()> {
    let fd = sock.as_raw_fd();
    address
        .run(|addr| connect(fd, addr))
        .with_context(|| format!("{what}: connect to {}", address.printable()))
}

/// Sends every message of `queue` from `sender` (to `to` when given), without waiting.
fn refill(sender: &OwnedFd, queue: &[Vec<u8>], to: Option<Address>, what: &str) -> Result<()> {
    let fd = sender.as_raw_fd();
    for message in queue {
        let sent = match to {
            Some(address) => address.run(|addr| sendto(fd, message, addr, MsgFlags::MSG_DONTWAIT)),
            None => Ok(send(fd, message, MsgFlags::MSG_DONTWAIT)?),
        }
        .with_context(|| format!("{what}: refilling its queue"))?;
        if sent != message.len() {
            bail!("{what}: could queue only {sent} of {} bytes", message.len());
        }
    }
    Ok(())
}

impl OpenedFiles {
    /// Makes every unix socket of the tree, connected as it was, queues refilled.
    pub fn create_unix_sockets(&mut self, all: &[&Fds]) -> Result<()> {
        // One record per socket: the first entry naming it carries the queue.
        let sockets: BTreeMap<u64, &UnixSocket> = all
            .iter()
            .flat_map(|fds| &fds.fds)
            .filter_map(|entry| match &entry.file {
                Some(fd::File::Unix(u)) if u.has_queue => Some((u.inode, u)),
                _ => None,
            })
            .collect();
        if sockets.is_empty() {
            return Ok(());
        }
        let waiting_in_tree: HashSet<u64> = sockets
            .values()
            .filter(|l| l.state == TCP_LISTEN)
            .flat_map(|l| l.pending.iter().copied())
            .collect();
        let roles: HashMap<u64, Role> = sockets
            .values()
            .map(|s| Ok((s.inode, classify(s, &sockets, &waiting_in_tree)?)))
            .collect::<Result<_>>()?;
        let what = |s: &UnixSocket| format!("socket:[{}] {}", s.inode, printable(&s.name));
        let mut made: HashMap<u64, OwnedFd> = HashMap::new();

        // Pairs, and sockets of their own (bound to their address when they had one).
        for s in sockets.values() {
            match roles[&s.inode] {
                Role::Pair if !made.contains_key(&s.inode) => {
                    let (mine, peer) = new_pair(s)?;
                    made.insert(s.inode, mine);
                    made.insert(s.peer, peer);
                }
                Role::Alone
                | Role::Client
                | Role::Waiting
                | Role::DgramConnected
                | Role::Reconnect => {
                    let sock = new_socket(s)?;
                    if !s.name.is_empty() {
                        bind_to(&sock, Address::of(s), &what(s))?;
                    }
                    made.insert(s.inode, sock);
                }
                _ => {}
            }
        }

        // Accepted connections, per listener address: a temporary listener there, each
        // client connects, the accepted end is taken; then the address is free again.
        let mut by_address: BTreeMap<(&[u8], &str), Vec<&UnixSocket>> = BTreeMap::new();
        for s in sockets
            .values()
            .filter(|s| roles[&s.inode] == Role::Accepted)
        {
            by_address
                .entry((&s.name, &s.bind_dir))
                .or_default()
                .push(s);
        }
        for (_, accepted) in by_address {
            let first = accepted[0];
            let address = Address::of(first);
            let listener = new_socket(first)?;
            bind_to(&listener, address, &what(first))?;
            listen(&listener, Backlog::new(accepted.len() as i32)?)?;
            for s in accepted {
                connect_to(&made[&s.peer], address, &format!("socket:[{}]", s.peer))?;
                let end = accept4(
                    listener.as_fd(),
                    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                )
                .with_context(|| format!("{}: accept", what(s)))?;
                made.insert(s.inode, end);
            }
            drop(listener);
            if address.is_path() {
                std::fs::remove_file(address.file())?;
            }
        }

        // Listening sockets, then the connections that waited in their queue, in order.
        for s in sockets
            .values()
            .filter(|s| roles[&s.inode] == Role::Listener)
        {
            let sock = new_socket(s)?;
            bind_to(&sock, Address::of(s), &what(s))?;
            listen(&sock, Backlog::new(s.backlog.min(i32::MAX as u32) as i32)?)
                .with_context(|| format!("{}: listen", what(s)))?;
            for client in &s.pending {
                if let Some(client_sock) = made.get(client) {
                    connect_to(client_sock, Address::of(s), &format!("socket:[{client}]"))?;
                }
            }
            made.insert(s.inode, sock);
        }

        // Socket options, before the queues (buffer sizes bound what they take).
        for s in sockets.values() {
            if let Some(sock) = made.get(&s.inode) {
                apply_options(sock, s)?;
            }
        }

        // Queues, each refilled by whoever had sent it: datagrams before any datagram socket
        // connects (a connected socket takes datagrams from its peer only).
        let mut anonymous_sender: Option<OwnedFd> = None;
        for s in sockets.values().filter(|s| !s.queue.is_empty()) {
            let role = roles[&s.inode];
            if matches!(role, Role::PeerGone | Role::Reconnect) {
                continue;
            }
            if s.sock_type != libc::SOCK_DGRAM as u32 || role == Role::Pair {
                refill(&made[&s.peer], &s.queue, None, &what(s))?;
                continue;
            }
            if s.name.is_empty() {
                bail!("{}: datagrams queued on an unnamed socket", what(s));
            }
            let to = Address::of(s);
            for (index, message) in s.queue.iter().enumerate() {
                let sender_name = s.senders.get(index).map(Vec::as_slice).unwrap_or(&[]);
                let named_sender = sockets
                    .values()
                    .find(|o| !sender_name.is_empty() && o.name == sender_name && !o.accepted)
                    .and_then(|o| made.get(&o.inode));
                let sender = match named_sender {
                    Some(sender) => sender,
                    None => anonymous_sender.get_or_insert(new_socket(s)?),
                };
                refill(sender, std::slice::from_ref(message), Some(to), &what(s))?;
            }
        }
        drop(anonymous_sender);

        // Connections made by address: datagram sockets to their peer, sockets whose peer is
        // outside to that peer again; sockets whose peer is gone get a pair whose other end
        // is closed once their queue is back.
        for s in sockets.values() {
            match roles[&s.inode] {
                Role::DgramConnected => {
                    let peer = sockets[&s.peer];
                    connect_to(&made[&s.inode], Address::of(peer), &what(s))?;
                }
                Role::Reconnect => {
                    let peer = Address {
                        name: &s.peer_name,
                        dir: "",
                    };
                    connect_to(&made[&s.inode], peer, &what(s))?
                }
                Role::PeerGone => {
                    let (mine, gone) = new_pair(s)?;
                    apply_options(&mine, s)?;
                    refill(&gone, &s.queue, None, &what(s))?;
                    drop(gone);
                    made.insert(s.inode, mine);
                }
                _ => {}
            }
        }

        // Shutdowns (after the queues: nothing can be sent past a shutdown).
        for s in sockets.values().filter(|s| s.shutdown != 0) {
            if roles[&s.inode] == Role::PeerGone {
                continue;
            }
            let sock = made[&s.inode].as_raw_fd();
            if s.shutdown & 2 != 0 {
                shutdown(sock, Shutdown::Write)
                    .with_context(|| format!("{}: shutdown", what(s)))?;
            }
            if s.shutdown & 1 != 0 {
                shutdown(sock, Shutdown::Read).with_context(|| format!("{}: shutdown", what(s)))?;
            }
        }

        // SO_PEEK_OFF where the process had enabled it (the queue is the same again).
        for s in sockets.values() {
            if let Some(offset) = s.peek_offset {
                crate::sys::socket::set_peek_offset(&made[&s.inode], offset)
                    .with_context(|| format!("{}: SO_PEEK_OFF", what(s)))?;
            }
        }

        // Socket files as they were: renamed since bind, their mode and owner, or removed.
        for s in sockets.values() {
            if s.name.first().is_none_or(|&b| b == 0) || s.accepted {
                continue;
            }
            let mut path = Address::of(s).file();
            if !s.renamed_to.is_empty() {
                let now = Address {
                    name: &s.renamed_to,
                    dir: &s.bind_dir,
                }
                .file();
                rename_socket_file(&path, &now, &what(s))?;
                path = now;
            }
            if s.path_removed {
                std::fs::remove_file(path)
                    .with_context(|| format!("{}: removing its file again", what(s)))?;
            } else if s.path_mode != 0 {
                std::fs::set_permissions(&path, PermissionsExt::from_mode(s.path_mode & 0o7777))?;
                std::os::unix::fs::lchown(path, Some(s.path_uid), Some(s.path_gid))?;
            }
        }

        for (inode, sock) in made {
            self.sockets
                .insert(inode, Some(hold_above(sock, self.floor)?));
        }
        Ok(())
    }

    /// The description of one unix socket, with its status flags.
    pub(super) fn open_unix(&mut self, u: &UnixSocket, what: &str) -> Result<OwnedFd> {
        let Some(end) = self.sockets.get_mut(&u.inode).and_then(Option::take) else {
            bail!("{what}: socket:[{}] was not made", u.inode);
        };
        let flags = OFlag::from_bits_truncate(u.flags as i32) & OFlag::O_NONBLOCK;
        fcntl(end.as_fd(), FcntlArg::F_SETFL(flags))?;
        Ok(end)
    }
}
