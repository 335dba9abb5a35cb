//! Open files: opened by rcr before the task exists (so that a missing file is an error before
//! anything is created), then placed at their numbers by the new task itself. One module per
//! kind, named as in dump::files.

mod chardev;
mod epoll;
mod eventfd;
mod inotify;
mod locks;
mod memfd;
mod pipe;
mod regular;
mod signalfd;
mod timerfd;
pub mod tty;
mod unix;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, bail};
use nix::unistd::{Whence, lseek};

pub use epoll::restore_epoll_targets;
pub use locks::restore_locks;
pub use pipe::{
    ExternalPipe, ExternalPipeChoice, parse_external_pipe, parse_inherit_fd, resolve_external_pipes,
};
pub use regular::check_sizes;

use crate::image::ImageDir;
use crate::image::proto::{Fd, Fds, fd};

/// One fd to place in the child: `src` (held by rcr, inherited) goes to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct Move {
    pub src: i32,
    pub dst: i32,
    pub cloexec: bool,
}

/// Opens a dumped file description again, with its flags and offset.
fn reopen(path: &str, flags: u32, pos: u64, what: &str) -> Result<OwnedFd> {
    let creation =
        (libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC) as u32;
    let accmode = flags & libc::O_ACCMODE as u32;
    let file = OpenOptions::new()
        .read(accmode == libc::O_RDONLY as u32 || accmode == libc::O_RDWR as u32)
        .write(accmode == libc::O_WRONLY as u32 || accmode == libc::O_RDWR as u32)
        .custom_flags((flags & !creation & !(libc::O_ACCMODE as u32)) as i32)
        .open(path)
        .with_context(|| format!("{what}: cannot open {path}"))?;
    let fd: OwnedFd = file.into();
    if pos != 0 {
        lseek(fd.as_fd(), pos as i64, Whence::SeekSet).with_context(|| format!("{what}: seek"))?;
    }
    Ok(fd)
}

/// Moves an fd rcr holds above `floor`, so that placing the task's fds cannot clobber it.
pub fn hold_above(fd: OwnedFd, floor: i32) -> Result<OwnedFd> {
    Ok(crate::sys::fd::dup_above(&fd, floor)?)
}

/// Every file description the restored tree will hold, opened once by rcr: by dumped
/// description id (shared across fds and processes), pipes by inode, memfds by inode.
pub struct OpenedFiles {
    floor: i32,
    images: std::path::PathBuf,
    by_id: HashMap<u64, OwnedFd>,
    pipes: HashMap<u64, (Option<OwnedFd>, Option<OwnedFd>)>,
    memfds: HashMap<u64, OwnedFd>,
    unlinked: HashMap<u64, OwnedFd>,
    fifos: HashMap<u64, OwnedFd>,
    sockets: HashMap<u64, Option<OwnedFd>>,
    held: Vec<OwnedFd>,
    /// The ptys of the tree.
    ttys: tty::OpenedTtys,
    /// Descriptions that only one process of the tree has (they may be placed in place).
    single_process: std::collections::HashSet<u64>,
    /// What the pipes whose other end was outside the tree become, by inode.
    external_pipes: HashMap<u64, pipe::ExternalPipe>,
}

impl OpenedFiles {
    pub fn new(images: &ImageDir, floor: i32) -> OpenedFiles {
        OpenedFiles {
            floor,
            images: images.path().to_owned(),
            by_id: HashMap::new(),
            pipes: HashMap::new(),
            memfds: HashMap::new(),
            unlinked: HashMap::new(),
            fifos: HashMap::new(),
            sockets: HashMap::new(),
            held: Vec::new(),
            ttys: Default::default(),
            single_process: Default::default(),
            external_pipes: HashMap::new(),
        }
    }

    /// Notes which descriptions only one process uses, from every process' fds.
    pub fn count_users(&mut self, all: &[&Fds]) {
        let mut users: HashMap<u64, usize> = HashMap::new();
        for fds in all {
            let ids: std::collections::HashSet<u64> = fds.fds.iter().map(|f| f.file_id).collect();
            for id in ids {
                *users.entry(id).or_default() += 1;
            }
        }
        self.single_process = users
            .into_iter()
            .filter(|&(id, count)| id != 0 && count == 1)
            .map(|(id, _)| id)
            .collect();
    }

    /// A new description of the file behind `fd`, opened through /proc with `flags`.
    fn reopen_fd(fd: &OwnedFd, flags: u32, pos: u64, what: &str) -> Result<OwnedFd> {
        reopen(
            &format!("/proc/self/fd/{}", fd.as_raw_fd()),
            flags,
            pos,
            what,
        )
    }

    /// Opens (or reuses) the description of one dumped fd.
    fn open(&mut self, pid: u32, entry: &Fd) -> Result<i32> {
        if entry.file_id != 0
            && let Some(held) = self.by_id.get(&entry.file_id)
        {
            return Ok(held.as_raw_fd());
        }
        let what = format!("pid {pid} fd {}", entry.fd);
        let opened = match &entry.file {
            Some(fd::File::Regular(f)) => self.open_regular(f, &what)?,
            Some(fd::File::Chardev(c)) => chardev::open(c, &what)?,
            Some(fd::File::Pipe(p)) => self.open_pipe(p, &what)?,
            Some(fd::File::Eventfd(e)) => eventfd::open(e)?,
            Some(fd::File::Memfd(m)) => self.open_memfd(m, &what)?,
            Some(fd::File::Signalfd(s)) => signalfd::open(s, &what)?,
            Some(fd::File::Timerfd(t)) => timerfd::open(t, &what)?,
            Some(fd::File::Epoll(_)) => epoll::open(&what)?,
            Some(fd::File::Inotify(i)) => inotify::open(i, &what)?,
            Some(fd::File::Unix(u)) => self.open_unix(u, &what)?,
            Some(fd::File::Tty(t)) => self.open_tty(t, &what)?,
            None => bail!("{what}: empty fd entry"),
        };
        // A description only this process uses goes straight to its own number when that is
        // free here: rcr then needs no second fd for it (a process with N fds fits under an
        // open-file limit near N, not 2N), and the new process finds it in place.
        let in_place = if entry.file_id != 0 && self.single_process.contains(&entry.file_id) {
            crate::sys::fd::dup_at_if_free(&opened, entry.fd)?
        } else {
            None
        };
        let opened = match in_place {
            Some(placed) => placed,
            None => hold_above(opened, self.floor)?,
        };
        let raw = opened.as_raw_fd();
        if entry.file_id != 0 {
            self.by_id.insert(entry.file_id, opened);
        } else {
            self.held.push(opened);
        }
        Ok(raw)
    }

    /// Where each of `fds` goes in the new process.
    pub fn plan(&mut self, pid: u32, fds: &Fds) -> Result<Vec<Move>> {
        let mut moves: Vec<Move> = Vec::new();
        for entry in &fds.fds {
            let src = match entry.dup_of {
                // Images before 1.3: the same description again, within the process.
                Some(original) if entry.file_id == 0 => {
                    let Some(source) = moves.iter().find(|m| m.dst == original) else {
                        bail!(
                            "pid {pid} fd {}: duplicate of unknown fd {original}",
                            entry.fd
                        );
                    };
                    source.src
                }
                _ => self.open(pid, entry)?,
            };
            moves.push(Move {
                src,
                dst: entry.fd,
                cloexec: entry.cloexec,
            });
        }
        Ok(moves)
    }

    pub fn floor(&self) -> i32 {
        self.floor
    }

    /// Holds another descriptor until the tree is created.
    pub fn hold(&mut self, fd: OwnedFd) -> Result<i32> {
        let fd = hold_above(fd, self.floor)?;
        let raw = fd.as_raw_fd();
        self.held.push(fd);
        Ok(raw)
    }
}

/// F_SETOWN_EX / F_SETSIG, set by the process on its own fds (the owner pid must exist, which
/// it does only once the tree is there). Only the first fd of a description carries them.
pub fn restore_owners(steps: &mut super::steps::Steps, fds: &Fds) -> Result<()> {
    for entry in fds.fds.iter().filter(|f| f.owner_pid != 0 || f.signal != 0) {
        steps.room(2, 16)?;
        if entry.owner_pid != 0 {
            let owner = steps.put(
                &[
                    entry.owner_kind.to_le_bytes(),
                    entry.owner_pid.to_le_bytes(),
                ]
                .concat(),
            );
            steps.add(
                format!("fcntl({}, F_SETOWN_EX, {})", entry.fd, entry.owner_pid),
                libc::SYS_fcntl,
                &[entry.fd as u64, crate::sys::fd::F_SETOWN_EX as u64, owner],
            );
        }
        if entry.signal != 0 {
            steps.add(
                format!("fcntl({}, F_SETSIG, {})", entry.fd, entry.signal),
                libc::SYS_fcntl,
                &[
                    entry.fd as u64,
                    crate::sys::fd::F_SETSIG as u64,
                    entry.signal as u64,
                ],
            );
        }
    }
    Ok(())
}
