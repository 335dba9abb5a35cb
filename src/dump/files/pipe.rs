//! Pipes and FIFOs: each end, and the pipe's unread data and size (saved with the first end
//! of the tree that names the pipe). A pipe whose other end is held outside the tree is
//! marked external (the restore is told what it becomes); its data is saved only when the
//! tree is its reader.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};

use super::{FileIds, OneFd};
use crate::image::proto::{Fd, Pipe, fd};

/// What the dump learns of the tree's pipes (not FIFOs) fd by fd, to tell which ones have an
/// end outside the tree.
#[derive(Default)]
pub(super) struct TreePipes {
    /// The first fd of the tree on each pipe, and whether someone (the tree or not) held the
    /// pipe's other end then.
    first: HashMap<u64, (i32, i32, bool)>,
    /// The ends the tree's fds seen so far hold: (a read end, a write end).
    seen: HashMap<u64, (bool, bool)>,
    /// Pipes whose data is saved (with their first read end in the tree).
    data_saved: HashSet<u64>,
    /// Pipes known to have, or not to have, their other end outside the tree.
    external: HashMap<u64, bool>,
    /// Every pipe end of the whole tree, scanned when the fds seen so far cannot tell.
    scanned: Option<HashMap<u64, (bool, bool)>>,
}

/// (reads, writes) of an access mode.
fn ends_of(flags: u32) -> (bool, bool) {
    let accmode = flags & libc::O_ACCMODE as u32;
    (
        accmode != libc::O_WRONLY as u32,
        accmode != libc::O_RDONLY as u32,
    )
}

pub(super) fn dump(one: &OneFd, ids: &mut FileIds) -> Result<Pipe> {
    let OneFd {
        pid,
        fd,
        link,
        meta,
        ..
    } = *one;
    let fifo_path = if link.starts_with('/') {
        if link.ends_with(" (deleted)") {
            crate::refuse!("pid {pid} fd {fd}: removed FIFO {link} is not supported");
        }
        link.to_owned()
    } else {
        String::new()
    };
    let inode = meta.ino();
    let write_end = one.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
    let first = ids.saved.insert(inode);
    let has_data = if !fifo_path.is_empty() {
        first
    } else {
        let (reads, writes) = ends_of(one.flags);
        let pipes = &mut ids.pipes;
        let other_held = if first {
            let held = other_end_held(one, reads, writes)?;
            pipes.first.insert(inode, (pid, fd, held));
            held
        } else {
            pipes.first.get(&inode).is_some_and(|f| f.2)
        };
        let seen = pipes.seen.entry(inode).or_default();
        seen.0 |= reads;
        seen.1 |= writes;
        // The unread data goes with the tree's first read end: it is the data of whoever
        // reads the pipe; a pipe read only outside the tree keeps it for its reader (not
        // saved, so not delivered twice). A pipe nobody reads keeps it with its first end.
        let carrier = if reads {
            !pipes.data_saved.contains(&inode)
        } else {
            first && !other_held
        };
        if carrier {
            pipes.data_saved.insert(inode);
        }
        carrier
    };
    let (pipe_size, data) = if has_data {
        pipe_data(pid, fd)?
    } else {
        (0, Vec::new())
    };
    Ok(Pipe {
        inode,
        write_end,
        flags: one.flags,
        pipe_size,
        has_data,
        data,
        fifo_path,
        // Set once the process' fds are all seen (mark_external).
        external: false,
    })
}

/// Whether someone holds the other end of the pipe of `one` (its first fd in the tree, which
/// has a copy of its description): poll shows POLLERR on a write end without any reader,
/// POLLHUP on a read end without any writer. A description that reads and writes is both.
fn other_end_held(one: &OneFd, reads: bool, writes: bool) -> Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    if reads && writes {
        return Ok(true);
    }
    let Some(copy) = one.copy else {
        bail!("pid {} fd {}: no description copy", one.pid, one.fd);
    };
    let mut polled = [PollFd::new(copy.as_fd(), PollFlags::empty())];
    poll(&mut polled, PollTimeout::ZERO)
        .with_context(|| format!("pid {} fd {}: poll", one.pid, one.fd))?;
    let revents = polled[0].revents().unwrap_or(PollFlags::empty());
    let nobody = if writes {
        PollFlags::POLLERR
    } else {
        PollFlags::POLLHUP
    };
    Ok(!revents.contains(nobody))
}

/// Once all of a process' fds are seen: marks its ends of pipes whose other end is held
/// outside the tree (someone held it, and no fd of the tree is that end: known from the fds
/// seen so far when they hold both ends, else from one scan of the whole tree's fds), and
/// notes a warning for each such pipe, naming its first fd.
pub(super) fn mark_external(fds: &mut [Fd], ids: &mut FileIds) -> Result<()> {
    for entry in fds.iter_mut() {
        let Some(fd::File::Pipe(pipe)) = &mut entry.file else {
            continue;
        };
        if !pipe.fifo_path.is_empty() {
            continue;
        }
        let inode = pipe.inode;
        let external = match ids.pipes.external.get(&inode) {
            Some(&known) => known,
            None => {
                let (first_pid, first_fd, other_held) = ids.pipes.first[&inode];
                let (reads, writes) = ids.pipes.seen[&inode];
                let external = if !other_held || (reads && writes) {
                    false
                } else {
                    if ids.pipes.scanned.is_none() {
                        ids.pipes.scanned = Some(scan_pipe_ends(&ids.tty_scope.0)?);
                    }
                    let scanned = ids.pipes.scanned.as_ref().expect("scanned just now");
                    let (tree_reads, tree_writes) =
                        scanned.get(&inode).copied().unwrap_or_default();
                    if writes { !tree_reads } else { !tree_writes }
                };
                if external {
                    let (end, other) = if writes {
                        ("write", "read")
                    } else {
                        ("read", "write")
                    };
                    ids.warnings.push(format!(
                        "pid {first_pid} fd {first_fd}: pipe:[{inode}] ({end} end): its {other} end is held outside the dumped tree; restore it with --inherit-fd fd[N]:pipe:[{inode}] (an fd rcr restore is given) or --external-pipe pipe:[{inode}]=null"
                    ));
                }
                ids.pipes.external.insert(inode, external);
                external
            }
        };
        pipe.external = external;
    }
    Ok(())
}

/// Which ends of each pipe the processes `pids` hold: inode -> (a read end, a write end),
/// from their fd links and fdinfo flags.
fn scan_pipe_ends(pids: &[i32]) -> Result<HashMap<u64, (bool, bool)>> {
    let mut ends: HashMap<u64, (bool, bool)> = HashMap::new();
    for &pid in pids {
        let dir = fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("pid {pid}: cannot list fds"))?;
        for entry in dir.flatten() {
            let Ok(link) = fs::read_link(entry.path()) else {
                continue;
            };
            let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("pipe:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let Some(fd) = entry.file_name().to_str().and_then(|f| f.parse().ok()) else {
                continue;
            };
            let (reads, writes) = ends_of(super::read_fdinfo(pid, fd)?.flags);
            let held = ends.entry(inode).or_default();
            held.0 |= reads;
            held.1 |= writes;
        }
    }
    Ok(ends)
}

/// A pipe's unread data, read without consuming it: a new read end opened through /proc is
/// tee()d into a pipe of rcr's own.
fn pipe_data(pid: i32, fd: i32) -> Result<(u32, Vec<u8>)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("pid {pid} fd {fd}: pipe");
    let reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .with_context(what)?;
    let size = fcntl(reader.as_fd(), FcntlArg::F_GETPIPE_SZ).with_context(what)? as u32;
    let (copy_read, copy_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let _ = fcntl(copy_write.as_fd(), FcntlArg::F_SETPIPE_SZ(size as i32));
    let copied = match nix::fcntl::tee(
        reader.as_fd(),
        copy_write.as_fd(),
        size as usize,
        SpliceFFlags::SPLICE_F_NONBLOCK,
    ) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(err) => return Err(err).with_context(what),
    };
    drop(copy_write);
    let mut data = Vec::with_capacity(copied);
    File::from(copy_read).read_to_end(&mut data).or_else(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    Ok((size, data))
}
