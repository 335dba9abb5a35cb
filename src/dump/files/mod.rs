//! Open file descriptors, one module per kind: regular files and directories, the common
//! character devices, pipes and FIFOs (with their unread data), unix sockets (with their
//! queues), pseudo-terminals (with their settings and data in flight, and each process'
//! controlling terminal), eventfd, signalfd, timerfd, epoll, inotify, memfd, file locks; plus
//! cwd and root. Any other kind fails the dump with the pid, fd and kind named.

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
mod tty;
mod unix;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::{Context, Result};

pub use chardev::PORTABLE_CHAR_DEVICES;
pub use memfd::save_memfd;
pub use unix::{TCP_ESTABLISHED, TCP_LISTEN, printable};

use crate::image::ImageDir;
use crate::image::proto::{Fd, Fds, fd};
use crate::sys::pidfd;

struct FdInfo {
    pos: u64,
    flags: u32,
    text: String,
}

fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .with_context(|| format!("pid {pid} fd {fd}: cannot read fdinfo"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("pid {pid} fd {fd}: no {name} in fdinfo"))
    };
    Ok(FdInfo {
        pos: field("pos:")?.parse()?,
        flags: u32::from_str_radix(field("flags:")?, 8)?,
        text: text.clone(),
    })
}

impl FdInfo {
    fn field(&self, name: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    }
}

/// What each kind's dump gets to know of one fd.
#[derive(Clone, Copy)]
struct OneFd<'a> {
    pid: i32,
    fd: i32,
    /// Its /proc/PID/fd link ("/path", "pipe:[N]", "anon_inode:[eventfd]"...).
    link: &'a str,
    /// /proc/PID/fd/FD, to open or stat the file itself.
    proc_path: &'a str,
    meta: &'a fs::Metadata,
    info: &'a FdInfo,
    /// Status flags without O_CLOEXEC.
    flags: u32,
    /// rcr's copy of the description (pidfd_getfd), for the first fd of each description.
    copy: Option<&'a OwnedFd>,
    images: &'a ImageDir,
}

/// One fd of the dumped tree: (pid, fd, description id).
type FdOfTree = (i32, i32, u64);

/// Open file descriptions of the whole dumped tree: fds that are the same description (dup,
/// fork) get the same id, found with kcmp among fds on the same inode.
#[derive(Default)]
pub struct FileIds {
    by_inode: HashMap<(u64, u64), Vec<FdOfTree>>,
    next: u64,
    /// Pipes and memfds whose content is already saved.
    saved: HashSet<u64>,
    /// The unix sockets (sock_diag), read on first need, and those of the tree.
    unix: unix::UnixTable,
    /// What the user must be told once the dump is complete (state that is not saved).
    warnings: Vec<String>,
    /// The ptys of the tree, scanned at the first pty fd or controlling terminal met (most
    /// trees have none: no second pass over every fd), and the tree to scan.
    ttys: Option<tty::TreeTtys>,
    tty_scope: (Vec<i32>, bool),
    /// Epoll descriptions whose registrations an fd of the tree makes at restore, and those
    /// still without one (with their first fd).
    epolls_registered: HashSet<u64>,
    epolls_unregistered: HashMap<u64, (i32, i32)>,
    /// The tree's pipes: which ends it holds, which have an end outside it.
    pipes: pipe::TreePipes,
}

impl FileIds {
    pub fn new(external_unix: crate::image::proto::ExternalUnix) -> FileIds {
        let mut ids = FileIds::default();
        ids.unix.external = external_unix;
        ids
    }

    /// The warnings of the fds collected so far (see crate::log::warn).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Notes the frozen tree `pids` whose pty fds (and pipe ends) are looked for at the first
    /// need (a slave's master, a pipe's other end may be in a later process); `shell_job`: a
    /// terminal outside the tree is the shell's (--shell-job).
    pub fn scan_ttys(&mut self, pids: &[i32], shell_job: bool) {
        self.tty_scope = (pids.to_vec(), shell_job);
    }

    fn ttys(&mut self) -> Result<&mut tty::TreeTtys> {
        if self.ttys.is_none() {
            let (pids, shell_job) = &self.tty_scope;
            self.ttys = Some(tty::TreeTtys::scan(pids, *shell_job)?);
        }
        Ok(self.ttys.as_mut().expect("scanned just now"))
    }

    /// The controlling terminal of `pid`; `tree` holds (pid, pgid, sid) of every process.
    pub fn controlling_tty(
        &mut self,
        pid: i32,
        stat: &crate::dump::mm::Stat,
        tree: &[(i32, i32, i32)],
    ) -> Result<Option<crate::image::proto::ControllingTty>> {
        if stat.field(7) == 0 {
            return Ok(None);
        }
        tty::controlling(pid, stat, tree, self.ttys()?)
    }

    /// Once the whole tree is seen: every unix socket's peer is in the tree (or the user said
    /// what to do with it), every epoll has a process to make its registrations again.
    pub fn check_whole_tree(&self) -> Result<()> {
        if let Some((pid, fd)) = self.epolls_unregistered.values().min() {
            crate::refuse!(
                "pid {pid} fd {fd}: epoll registrations name fds that no process of the tree holds at those numbers (not supported)"
            );
        }
        self.unix.check_peers()
    }

    /// The description id of `pid`'s `fd`, and an earlier fd of the same description. The
    /// fds of one inode are kept sorted in kcmp order, so a thousand opens of one file cost
    /// a binary search each, not a comparison with every other.
    fn id_of(&mut self, key: (u64, u64), pid: i32, fd: i32) -> Result<(u64, Option<(i32, i32)>)> {
        let sorted = self.by_inode.entry(key).or_default();
        let mut error = None;
        let found = sorted.binary_search_by(|&(other_pid, other_fd, _)| {
            pidfd::compare_open_files(other_pid, other_fd, pid, fd).unwrap_or_else(|e| {
                error.get_or_insert(e);
                std::cmp::Ordering::Less
            })
        });
        if let Some(err) = error {
            return Err(err).with_context(|| format!("pid {pid} fd {fd}: kcmp"));
        }
        match found {
            Ok(index) => {
                let (other_pid, other_fd, id) = sorted[index];
                Ok((id, Some((other_pid, other_fd))))
            }
            Err(index) => {
                self.next += 1;
                sorted.insert(index, (pid, fd, self.next));
                Ok((self.next, None))
            }
        }
    }
}

pub fn collect(pid: i32, images: &ImageDir, ids: &mut FileIds) -> Result<Fds> {
    let mut numbers: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("pid {pid}: cannot list fds"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut fds = Vec::with_capacity(numbers.len());
    let mut locks = Vec::new();
    let mut descriptions_here = HashSet::new();
    let mut pidfd = None;
    for fd in numbers {
        let proc_path = format!("/proc/{pid}/fd/{fd}");
        let link = fs::read_link(&proc_path)
            .with_context(|| format!("pid {pid} fd {fd}: cannot read link"))?
            .to_string_lossy()
            .into_owned();
        let info = read_fdinfo(pid, fd)?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let meta = fs::metadata(&proc_path)
            .with_context(|| format!("pid {pid} fd {fd}: cannot stat {link}"))?;
        let key = (meta.dev(), meta.ino());
        let (file_id, same_as) = ids.id_of(key, pid, fd)?;
        let dup_of = same_as.filter(|(p, _)| *p == pid).map(|(_, f)| f);
        let first_here = descriptions_here.insert(file_id);
        locks.extend(locks::of_fd(
            pid,
            fd,
            &info.text,
            same_as.is_none(),
            first_here,
        )?);
        // The first fd of each description: one copy of it in rcr, for what only the
        // description tells (owner and signal, a socket's queue).
        let copy = if same_as.is_none() {
            let pidfd = match &pidfd {
                Some(pidfd) => pidfd,
                None => pidfd.insert(pidfd::pidfd_open(pid)?),
            };
            Some(
                pidfd::pidfd_getfd(pidfd, fd)
                    .with_context(|| format!("pid {pid} fd {fd}: cannot take a copy"))?,
            )
        } else {
            None
        };
        let file_type = meta.file_type();
        let one = OneFd {
            pid,
            fd,
            link: &link,
            proc_path: &proc_path,
            meta: &meta,
            info: &info,
            flags,
            copy: copy.as_ref(),
            images,
        };
        let file = if let Some(memfd) = memfd::dump(&one, ids)? {
            fd::File::Memfd(memfd)
        } else if (file_type.is_file() || file_type.is_dir()) && link.starts_with('/') {
            fd::File::Regular(regular::dump(&one, ids)?)
        } else if file_type.is_char_device()
            && let Some(tty) = tty::dump(&one, ids)?
        {
            fd::File::Tty(tty)
        } else if file_type.is_char_device()
            && let Some(device) = chardev::dump(&one)?
        {
            fd::File::Chardev(device)
        } else if file_type.is_fifo() && (link.starts_with("pipe:") || link.starts_with('/')) {
            fd::File::Pipe(pipe::dump(&one, ids)?)
        } else if link == "anon_inode:[eventfd]" {
            fd::File::Eventfd(eventfd::dump(&one)?)
        } else if link == "anon_inode:[signalfd]" {
            fd::File::Signalfd(signalfd::dump(&one)?)
        } else if link == "anon_inode:[timerfd]" {
            fd::File::Timerfd(timerfd::dump(&one)?)
        } else if link == "anon_inode:[eventpoll]" {
            fd::File::Epoll(epoll::dump(&one, ids, file_id)?)
        } else if link == "anon_inode:inotify" {
            fd::File::Inotify(inotify::dump(&one, ids)?)
        } else if link.starts_with("socket:[")
            && let Some(socket) = unix::dump(&one, ids)?
        {
            fd::File::Unix(socket)
        } else {
            let kind = if link.starts_with("socket:") {
                let what = copy
                    .as_ref()
                    .and_then(|c| crate::sys::socket::describe(c).ok())
                    .unwrap_or_else(|| "socket".to_owned());
                crate::refuse!("pid {pid} fd {fd}: {what} ({link}): not supported yet");
            } else if file_type.is_fifo() {
                "FIFO".to_owned()
            } else if file_type.is_block_device() {
                let rdev = meta.rdev();
                format!("block device {}:{}", libc::major(rdev), libc::minor(rdev))
            } else if file_type.is_char_device() {
                let rdev = meta.rdev();
                format!(
                    "character device {}:{}",
                    libc::major(rdev),
                    libc::minor(rdev)
                )
            } else if let Some(name) = link.strip_prefix("anon_inode:") {
                // "anon_inode:[fanotify]", "anon_inode:[pidfd]", "anon_inode:bpf-map"...
                format!(
                    "{} file",
                    name.trim_start_matches('[').trim_end_matches(']')
                )
            } else {
                link.clone()
            };
            if kind == link {
                crate::refuse!("pid {pid} fd {fd}: {link}: not supported yet");
            }
            crate::refuse!("pid {pid} fd {fd}: {kind} ({link}): not supported yet");
        };
        // Owner and signal belong to the description: read once, through the copy.
        let (owner_kind, owner_pid, signal) = copy.as_ref().map_or((0, 0, 0), |c| {
            crate::sys::fd::owner_and_signal(c).unwrap_or((0, 0, 0))
        });
        fds.push(Fd {
            fd,
            cloexec,
            file: Some(file),
            dup_of,
            file_id,
            owner_kind,
            owner_pid,
            signal,
        });
    }
    pipe::mark_external(&mut fds, ids)?;
    let link = |name: &str| -> Result<String> {
        Ok(fs::read_link(format!("/proc/{pid}/{name}"))
            .with_context(|| format!("pid {pid}: cannot read {name}"))?
            .to_string_lossy()
            .into_owned())
    };
    Ok(Fds {
        fds,
        cwd: link("cwd")?,
        root: link("root")?,
        locks,
        ctty: None,
    })
}
