//! Open file descriptors: regular files, directories, the common character devices, pipes
//! (with their unread data), eventfds and memfds (with their content), plus cwd and root. Any
//! other kind fails the dump with the pid, fd and kind named.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};

use crate::image::ImageDir;
use crate::image::proto::{
    CharDevice, Epoll, EpollTarget, EventFd, Fd, Fds, FileLock, LockKind, MemFd, Pipe, RegularFile,
    SignalFd, TimerFd, UnixSocket, fd,
};
use crate::sys::pidfd;

/// Character devices that are the same on every machine: (major, minor).
pub const PORTABLE_CHAR_DEVICES: [(u32, u32, &str); 4] = [
    (1, 3, "/dev/null"),
    (1, 5, "/dev/zero"),
    (1, 8, "/dev/random"),
    (1, 9, "/dev/urandom"),
];

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
    /// sock_diag's view of the unix sockets, read on first need.
    unix: Option<HashMap<u32, crate::sys::socket::UnixInfo>>,
    /// Unix sockets of the tree: (pid, fd, peer inode), and their inodes.
    sockets: Vec<(i32, i32, u64)>,
    socket_inodes: HashSet<u64>,
}

impl FileIds {
    /// Every unix socket of the tree must have its peer in the tree: the other end of a
    /// connection to the outside cannot be restored.
    pub fn check_peers(&self) -> Result<()> {
        for &(pid, fd, peer) in &self.sockets {
            if !self.socket_inodes.contains(&peer) {
                bail!(
                    "pid {pid} fd {fd}: unix socket connected to socket:[{peer}] outside the dumped tree is not supported"
                );
            }
        }
        Ok(())
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

/// A unix socket of the tree, if it is one rcr restores: connected, unnamed, its peer in the
/// tree (checked once the whole tree is seen: [`FileIds::check_peers`]). Other sockets are
/// None (refused by the caller).
fn unix_socket(
    pid: i32,
    fd: i32,
    inode: u64,
    flags: u32,
    copy: Option<&std::os::fd::OwnedFd>,
    ids: &mut FileIds,
) -> Result<Option<UnixSocket>> {
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

/// "(sec, nsec)" of timerfd fdinfo, in ns.
fn pair_ns(text: &str) -> Option<u64> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (sec, nsec) = inner.split_once(',')?;
    Some(sec.trim().parse::<u64>().ok()? * 1_000_000_000 + nsec.trim().parse::<u64>().ok()?)
}

fn timerfd_of(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<TimerFd> {
    let missing = || format!("pid {pid} fd {fd}: unreadable timerfd fdinfo");
    Ok(TimerFd {
        clock: info
            .field("clockid:")
            .and_then(|v| v.parse().ok())
            .with_context(missing)?,
        flags,
        value_ns: info
            .field("it_value:")
            .and_then(pair_ns)
            .with_context(missing)?,
        interval_ns: info
            .field("it_interval:")
            .and_then(pair_ns)
            .with_context(missing)?,
        ticks: info
            .field("ticks:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

/// Registrations from epoll fdinfo lines "tfd: N events: HEX data: HEX ...".
fn epoll_of(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<Epoll> {
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

/// A memfd's name from its link ("/memfd:NAME (deleted)").
fn memfd_name(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")?.strip_suffix(" (deleted)")
}

/// Saves a memfd's content to memfd-INODE.img once; returns (size, seals).
pub fn save_memfd(
    path: &str,
    inode: u64,
    images: &ImageDir,
    ids: &mut FileIds,
) -> Result<(u64, u32)> {
    let file = File::open(path).with_context(|| format!("{path}: cannot open the memfd"))?;
    let size = file.metadata()?.len();
    let seals = fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).unwrap_or(0) as u32;
    if ids.saved.insert(inode) {
        let mut out = crate::image::create_private(&images.memfd_path(inode))?;
        std::io::copy(&mut std::io::Read::take(&file, size), &mut out)?;
    }
    Ok((size, seals))
}

pub fn collect(pid: i32, images: &ImageDir, ids: &mut FileIds) -> Result<Fds> {
    let mut numbers: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("pid {pid}: cannot list fds"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut fds = Vec::with_capacity(numbers.len());
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
        let file = if let Some(name) = memfd_name(&link) {
            let (size, seals) = save_memfd(&proc_path, meta.ino(), images, ids)?;
            fd::File::Memfd(MemFd {
                inode: meta.ino(),
                name: name.to_owned(),
                flags,
                pos: info.pos,
                size,
                seals,
            })
        } else if (file_type.is_file() || file_type.is_dir()) && link.starts_with('/') {
            let unlinked = link.ends_with(" (deleted)") && meta.nlink() == 0;
            if unlinked {
                if file_type.is_dir() {
                    bail!("pid {pid} fd {fd}: removed directory {link} is not supported");
                }
                if ids.saved.insert(meta.ino()) {
                    let mut source = File::open(&proc_path)
                        .with_context(|| format!("pid {pid} fd {fd}: reading {link}"))?;
                    let mut out = crate::image::create_private(
                        &images.path().join(format!("unlinked-{}.img", meta.ino())),
                    )?;
                    std::io::copy(&mut source, &mut out)?;
                }
            }
            fd::File::Regular(RegularFile {
                path: link.trim_end_matches(" (deleted)").to_owned(),
                flags,
                pos: info.pos,
                size: meta.size(),
                mode: meta.mode(),
                unlinked,
                inode: meta.ino(),
            })
        } else if file_type.is_char_device() {
            let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            let Some(&(_, _, path)) = PORTABLE_CHAR_DEVICES
                .iter()
                .find(|(ma, mi, _)| *ma == major && *mi == minor)
            else {
                bail!("pid {pid} fd {fd}: unsupported character device {link} ({major}:{minor})");
            };
            fd::File::Chardev(CharDevice {
                path: path.to_owned(),
                flags,
                rdev_major: major,
                rdev_minor: minor,
                pos: info.pos,
            })
        } else if file_type.is_fifo() && (link.starts_with("pipe:") || link.starts_with('/')) {
            let fifo_path = if link.starts_with('/') {
                if link.ends_with(" (deleted)") {
                    bail!("pid {pid} fd {fd}: removed FIFO {link} is not supported");
                }
                link.clone()
            } else {
                String::new()
            };
            let inode = meta.ino();
            let write_end = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            let first = ids.saved.insert(inode);
            let (pipe_size, data) = if first {
                pipe_data(pid, fd)?
            } else {
                (0, Vec::new())
            };
            fd::File::Pipe(Pipe {
                inode,
                write_end,
                flags,
                pipe_size,
                has_data: first,
                data,
                fifo_path,
            })
        } else if link == "anon_inode:[eventfd]" {
            let count = info
                .field("eventfd-count:")
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .with_context(|| format!("pid {pid} fd {fd}: eventfd without a count"))?;
            fd::File::Eventfd(EventFd {
                count,
                flags,
                semaphore: info.field("eventfd-semaphore:") == Some("1"),
            })
        } else if link == "anon_inode:[signalfd]" {
            let mask = info
                .field("sigmask:")
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .with_context(|| format!("pid {pid} fd {fd}: signalfd without a mask"))?;
            fd::File::Signalfd(SignalFd { mask, flags })
        } else if link == "anon_inode:[timerfd]" {
            fd::File::Timerfd(timerfd_of(pid, fd, &info, flags)?)
        } else if link == "anon_inode:[eventpoll]" {
            fd::File::Epoll(epoll_of(pid, fd, &info, flags)?)
        } else if link.starts_with("socket:[")
            && let Some(socket) = unix_socket(pid, fd, meta.ino(), flags, copy.as_ref(), ids)?
        {
            fd::File::Unix(socket)
        } else {
            let kind = if link.starts_with("socket:") {
                "socket"
            } else if file_type.is_fifo() {
                "FIFO"
            } else {
                link.as_str()
            };
            bail!("pid {pid} fd {fd}: unsupported file kind {kind} ({link})");
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
        locks: Vec::new(),
    })
}

/// The file locks of the tree, from /proc/locks, each given to the process that must take it
/// again: a POSIX lock to its owner pid, a flock or OFD lock to a process with an fd on the
/// file (its open file description owns it; for several descriptions of one file, the first
/// fd of the tree is taken: an ambiguity /proc/locks cannot resolve).
pub fn collect_locks(pids: &[i32]) -> Result<HashMap<i32, Vec<FileLock>>> {
    let mut locks: HashMap<i32, Vec<FileLock>> = HashMap::new();
    let Ok(text) = fs::read_to_string("/proc/locks") else {
        return Ok(locks);
    };
    let mut fds_by_inode: HashMap<u64, Vec<(i32, i32)>> = HashMap::new();
    for &pid in pids {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut entries: Vec<(i32, u64)> = dir
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                Some((fd, fs::metadata(e.path()).ok()?.ino()))
            })
            .collect();
        entries.sort_unstable();
        for (fd, inode) in entries {
            fds_by_inode.entry(inode).or_default().push((pid, fd));
        }
    }
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
        // "1: POSIX ADVISORY WRITE PID MAJ:MIN:INODE START END"
        if words.len() < 8 {
            continue;
        }
        let owner: i32 = words[4].parse().unwrap_or(0);
        let inode: u64 = words[5]
            .rsplit(':')
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        let Some(holders) = fds_by_inode.get(&inode) else {
            continue;
        };
        let kind = match words[1] {
            "FLOCK" => LockKind::Flock,
            "POSIX" => LockKind::Posix,
            "OFDLCK" => LockKind::Ofd,
            other => bail!("file lock of kind {other} on inode {inode} is not supported"),
        };
        if words[2] != "ADVISORY" {
            bail!("mandatory or lease lock on inode {inode} is not supported");
        }
        let holder = match kind {
            LockKind::Posix => holders.iter().find(|(pid, _)| *pid == owner),
            _ if owner == -1 || pids.contains(&owner) => holders.first(),
            _ => None,
        };
        let Some(&(pid, fd)) = holder else {
            continue;
        };
        let start: u64 = words[6].parse().unwrap_or(0);
        let length = match words[7] {
            "EOF" => 0,
            end => end.parse::<u64>().map_or(0, |end| end - start + 1),
        };
        locks.entry(pid).or_default().push(FileLock {
            fd,
            kind: kind as i32,
            write: words[3] == "WRITE",
            start,
            length,
        });
    }
    Ok(locks)
}
