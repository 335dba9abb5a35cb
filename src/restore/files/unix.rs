//! Unix sockets: created by rcr before the tree, with their queues refilled.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};

use super::{OpenedFiles, hold_above};
use crate::image::proto::{Fds, UnixSocket, fd};

impl OpenedFiles {
    /// Creates every connected unix socket pair of the tree and refills both queues (what
    /// one end had to read is sent again from the other end, message by message).
    pub fn create_socketpairs(&mut self, all: &[&Fds]) -> Result<()> {
        let mut queues: HashMap<u64, &Vec<Vec<u8>>> = HashMap::new();
        let mut ends: Vec<&UnixSocket> = Vec::new();
        for entry in all.iter().flat_map(|fds| &fds.fds) {
            if let Some(fd::File::Unix(u)) = &entry.file
                && u.has_queue
            {
                queues.insert(u.inode, &u.queue);
                ends.push(u);
            }
        }
        for end in ends {
            if self.sockets.contains_key(&end.inode) {
                continue;
            }
            let what = || format!("socket:[{}]", end.inode);
            let kind = match end.sock_type as i32 {
                libc::SOCK_STREAM => SockType::Stream,
                libc::SOCK_DGRAM => SockType::Datagram,
                libc::SOCK_SEQPACKET => SockType::SeqPacket,
                other => bail!("socket:[{}]: unix socket type {other}", end.inode),
            };
            let (mine, peer) = socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC)
                .with_context(what)?;
            // Messages queued for one end are sent by the other.
            for (reader, sender) in [(end.inode, &peer), (end.peer, &mine)] {
                for message in queues.get(&reader).copied().into_iter().flatten() {
                    let sent =
                        nix::sys::socket::send(sender.as_raw_fd(), message, MsgFlags::MSG_DONTWAIT)
                            .with_context(what)?;
                    if sent != message.len() {
                        bail!(
                            "socket:[{reader}]: could queue only {sent} of {} bytes",
                            message.len()
                        );
                    }
                }
            }
            self.sockets
                .insert(end.inode, Some(hold_above(mine, self.floor)?));
            self.sockets
                .insert(end.peer, Some(hold_above(peer, self.floor)?));
        }
        Ok(())
    }

    /// The description of one unix socket.
    pub(super) fn open_unix(&mut self, u: &UnixSocket, what: &str) -> Result<OwnedFd> {
        let Some(end) = self.sockets.get_mut(&u.inode).and_then(Option::take) else {
            bail!("{what}: socket:[{}] has no saved peer", u.inode);
        };
        let flags = OFlag::from_bits_truncate(u.flags as i32) & OFlag::O_NONBLOCK;
        fcntl(end.as_fd(), FcntlArg::F_SETFL(flags))?;
        Ok(end)
    }
}
