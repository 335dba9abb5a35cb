//! Open files: opened by rcr before the task exists (so that a missing file is an error before
//! anything is created), then placed at their numbers by the new task itself.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::MFdFlags;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};
use nix::unistd::{Whence, lseek};

use crate::image::ImageDir;
use crate::image::proto::{Fd, Fds, LockKind, RegularFile, fd};

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
    /// Descriptions that only one process of the tree has (they may be placed in place).
    single_process: std::collections::HashSet<u64>,
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
            single_process: Default::default(),
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

    /// Creates every pipe of the tree with its size and unread data.
    pub fn create_pipes(&mut self, all: &[&Fds]) -> Result<()> {
        for entry in all.iter().flat_map(|fds| &fds.fds) {
            let Some(fd::File::Pipe(pipe)) = &entry.file else {
                continue;
            };
            if !pipe.has_data {
                continue;
            }
            if !pipe.fifo_path.is_empty() {
                self.create_fifo(pipe)?;
                continue;
            }
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            if pipe.pipe_size > 0 {
                fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(pipe.pipe_size as i32))
                    .with_context(|| format!("pipe:[{}]: size {}", pipe.inode, pipe.pipe_size))?;
            }
            if !pipe.data.is_empty() {
                let mut writer = std::fs::File::from(write.try_clone()?);
                writer
                    .write_all(&pipe.data)
                    .with_context(|| format!("pipe:[{}]: refilling it", pipe.inode))?;
            }
            let read = hold_above(read, self.floor)?;
            let write = hold_above(write, self.floor)?;
            self.pipes.insert(pipe.inode, (Some(read), Some(write)));
        }
        Ok(())
    }

    /// Creates every connected unix socket pair of the tree and refills both queues (what
    /// one end had to read is sent again from the other end, message by message).
    pub fn create_socketpairs(&mut self, all: &[&Fds]) -> Result<()> {
        let mut queues: HashMap<u64, &Vec<Vec<u8>>> = HashMap::new();
        let mut ends: Vec<&crate::image::proto::UnixSocket> = Vec::new();
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

    /// A FIFO: rcr keeps it open read-write (so it exists, and opening either end cannot
    /// block), refills it, and opens each end's description through its path.
    fn create_fifo(&mut self, pipe: &crate::image::proto::Pipe) -> Result<()> {
        let what = || format!("FIFO {}", pipe.fifo_path);
        let keeper: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pipe.fifo_path)
            .with_context(what)?
            .into();
        if pipe.pipe_size > 0 {
            fcntl(
                keeper.as_fd(),
                FcntlArg::F_SETPIPE_SZ(pipe.pipe_size as i32),
            )
            .with_context(what)?;
        }
        if !pipe.data.is_empty() {
            std::fs::File::from(keeper.try_clone()?)
                .write_all(&pipe.data)
                .with_context(what)?;
        }
        let keeper = hold_above(keeper, self.floor)?;
        self.fifos.insert(pipe.inode, keeper);
        Ok(())
    }

    /// The memfd of `inode`, created with its name, content and seals on first use.
    pub fn memfd(&mut self, inode: u64, name: &str, size: u64, seals: u32) -> Result<&OwnedFd> {
        if !self.memfds.contains_key(&inode) {
            let cname = CString::new(name)?;
            let memfd = nix::sys::memfd::memfd_create(
                cname.as_c_str(),
                MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
            )
            .with_context(|| format!("memfd:{name}: cannot create it"))?;
            let mut file = std::fs::File::from(memfd);
            let content = self.images.join(format!("memfd-{inode}.img"));
            let mut source = std::fs::File::open(&content)
                .with_context(|| format!("cannot open {}", content.display()))?;
            std::io::copy(&mut source, &mut file)?;
            file.set_len(size)?;
            let memfd: OwnedFd = file.into();
            if seals != 0 {
                let seals = nix::fcntl::SealFlag::from_bits_truncate(seals as i32);
                fcntl(memfd.as_fd(), FcntlArg::F_ADD_SEALS(seals))
                    .with_context(|| format!("memfd:{name}: cannot seal it"))?;
            }
            let memfd = hold_above(memfd, self.floor)?;
            self.memfds.insert(inode, memfd);
        }
        Ok(&self.memfds[&inode])
    }

    /// A file with the content an unlinked file had and no name, in the directory it was in
    /// (or, if that is gone, the image directory). One per dumped inode.
    fn unlinked(&mut self, f: &RegularFile) -> Result<&OwnedFd> {
        if !self.unlinked.contains_key(&f.inode) {
            let content = self.images.join(format!("unlinked-{}.img", f.inode));
            let mut source = std::fs::File::open(&content)
                .with_context(|| format!("cannot open {}", content.display()))?;
            let dir = std::path::Path::new(&f.path)
                .parent()
                .filter(|d| d.is_dir())
                .unwrap_or(&self.images)
                .to_owned();
            // Under its old name, removed at once, the fd shows what it showed at the dump
            // ("NAME (deleted)"); if that name is taken now, an O_TMPFILE in the same place.
            let mut file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(f.mode & 0o7777)
                .open(&f.path)
            {
                Ok(file) => {
                    std::fs::remove_file(&f.path)?;
                    file
                }
                Err(_) => OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_TMPFILE)
                    .mode(f.mode & 0o7777)
                    .open(&dir)
                    .with_context(|| {
                        format!("cannot create an unnamed file in {}", dir.display())
                    })?,
            };
            // The mode exactly, whatever rcr's umask took away.
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                f.mode & 0o7777,
            ))?;
            std::io::copy(&mut source, &mut file)?;
            let held = hold_above(file.into(), self.floor)?;
            self.unlinked.insert(f.inode, held);
        }
        Ok(&self.unlinked[&f.inode])
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
            Some(fd::File::Regular(f)) if f.unlinked => {
                let file = self
                    .unlinked(f)
                    .with_context(|| format!("{what}: {} (deleted)", f.path))?;
                Self::reopen_fd(file, f.flags, f.pos, &what)?
            }
            Some(fd::File::Regular(f)) => reopen(&f.path, f.flags, f.pos, &what)?,
            Some(fd::File::Chardev(c)) => reopen(&c.path, c.flags, c.pos, &what)?,
            Some(fd::File::Pipe(p)) if !p.fifo_path.is_empty() => {
                if !self.fifos.contains_key(&p.inode) {
                    self.create_fifo(p)?;
                }
                // Non-blocking to open (rcr's keeper is both a reader and a writer), then the
                // dumped flags.
                let end = reopen(&p.fifo_path, p.flags | libc::O_NONBLOCK as u32, 0, &what)?;
                let flags = OFlag::from_bits_truncate(p.flags as i32)
                    & (OFlag::O_NONBLOCK | OFlag::O_DIRECT | OFlag::O_ASYNC);
                fcntl(end.as_fd(), FcntlArg::F_SETFL(flags))?;
                end
            }
            Some(fd::File::Pipe(p)) => {
                let Some((read, write)) = self.pipes.get_mut(&p.inode) else {
                    bail!("{what}: pipe:[{}] has no saved state", p.inode);
                };
                // The first description of each end takes rcr's own; a second description of
                // the same end (opened again through /proc) gets a copy.
                let end = if p.write_end { write } else { read };
                let end = match end.take() {
                    Some(end) => end,
                    None => bail!(
                        "{what}: a second description of one end of pipe:[{}] is not supported",
                        p.inode
                    ),
                };
                let flags = OFlag::from_bits_truncate(p.flags as i32)
                    & (OFlag::O_NONBLOCK | OFlag::O_DIRECT | OFlag::O_ASYNC);
                fcntl(end.as_fd(), FcntlArg::F_SETFL(flags))?;
                end
            }
            Some(fd::File::Eventfd(e)) => {
                let mut flags = EfdFlags::EFD_CLOEXEC;
                if e.flags & libc::O_NONBLOCK as u32 != 0 {
                    flags |= EfdFlags::EFD_NONBLOCK;
                }
                if e.semaphore {
                    flags |= EfdFlags::EFD_SEMAPHORE;
                }
                let eventfd = EventFd::from_flags(flags)?;
                if e.count > 0 {
                    // An eventfd adds what is written to its counter.
                    eventfd.write(e.count)?;
                }
                OwnedFd::from(eventfd)
            }
            Some(fd::File::Memfd(m)) => {
                let memfd = self.memfd(m.inode, &m.name, m.size, m.seals)?;
                Self::reopen_fd(memfd, m.flags, m.pos, &what)?
            }
            Some(fd::File::Signalfd(sfd)) => {
                let flags = (sfd.flags as i32 & libc::O_NONBLOCK) | libc::O_CLOEXEC;
                crate::sys::fd::signalfd(sfd.mask, flags)
                    .with_context(|| format!("{what}: signalfd"))?
            }
            Some(fd::File::Timerfd(t)) => {
                let flags = (t.flags as i32 & libc::O_NONBLOCK) | libc::O_CLOEXEC;
                crate::sys::fd::timerfd(t.clock, flags, t.value_ns, t.interval_ns)
                    .with_context(|| format!("{what}: timerfd"))?
            }
            // Its registrations are made by the process itself once its fds are in place
            // (see task::restore_in_task): an epoll item is keyed by the fd number.
            Some(fd::File::Epoll(_)) => {
                crate::sys::fd::epoll(libc::O_CLOEXEC).with_context(|| format!("{what}: epoll"))?
            }
            Some(fd::File::Unix(u)) => {
                let Some(end) = self.sockets.get_mut(&u.inode).and_then(Option::take) else {
                    bail!("{what}: socket:[{}] has no saved peer", u.inode);
                };
                let flags = OFlag::from_bits_truncate(u.flags as i32) & OFlag::O_NONBLOCK;
                fcntl(end.as_fd(), FcntlArg::F_SETFL(flags))?;
                end
            }
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

const EPOLL_CTL_ADD: u64 = 1;

/// The process registers every epoll target itself (its fds are in place by then). An epoll
/// description shared by several processes would be registered twice (EEXIST): not
/// supported yet, and it fails visibly.
pub fn restore_epoll_targets(steps: &mut super::steps::Steps, fds: &Fds) -> Result<()> {
    for entry in &fds.fds {
        let Some(fd::File::Epoll(epoll)) = &entry.file else {
            continue;
        };
        for target in &epoll.targets {
            steps.room(1, 16)?;
            // struct epoll_event is packed on x86_64: u32 events, u64 data.
            let mut event = target.events.to_le_bytes().to_vec();
            event.extend_from_slice(&target.data.to_le_bytes());
            let event = steps.put(&event);
            steps.add(
                format!("epoll_ctl({}, ADD, {})", entry.fd, target.fd),
                libc::SYS_epoll_ctl,
                &[entry.fd as u64, EPOLL_CTL_ADD, target.fd as u64, event],
            );
        }
    }
    Ok(())
}

/// The process takes its file locks again once its fds are in place: flock, POSIX
/// (fcntl F_SETLK, owned by the process) and OFD (F_OFD_SETLK, owned by the description).
/// Without waiting: a lock someone else took meanwhile fails the restore.
pub fn restore_locks(steps: &mut super::steps::Steps, fds: &Fds) -> Result<()> {
    const F_OFD_SETLK: u64 = 37;
    for lock in &fds.locks {
        steps.room(1, 32)?;
        let label = format!(
            "{} {} lock on fd {}",
            lock.kind().as_str_name(),
            if lock.write { "write" } else { "read" },
            lock.fd
        );
        if lock.kind() == LockKind::Flock {
            let how = if lock.write {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            } | libc::LOCK_NB;
            steps.add(label, libc::SYS_flock, &[lock.fd as u64, how as u64]);
            continue;
        }
        // struct flock: short type, short whence, (pad), off_t start, off_t len, pid_t pid.
        let lock_type = if lock.write {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as u16;
        let mut flock = Vec::with_capacity(32);
        flock.extend_from_slice(&lock_type.to_le_bytes());
        flock.extend_from_slice(&(libc::SEEK_SET as u16).to_le_bytes());
        flock.extend_from_slice(&[0u8; 4]);
        flock.extend_from_slice(&lock.start.to_le_bytes());
        flock.extend_from_slice(&lock.length.to_le_bytes());
        flock.extend_from_slice(&[0u8; 8]);
        let flock = steps.put(&flock);
        let cmd = if lock.kind() == LockKind::Ofd {
            F_OFD_SETLK
        } else {
            libc::F_SETLK as u64
        };
        steps.add(label, libc::SYS_fcntl, &[lock.fd as u64, cmd, flock]);
    }
    Ok(())
}

/// Refuses files that changed size since the dump: the process would find other data at the
/// offsets it remembers. `--ignore-file-size` restores anyway (a log that grew, say).
pub fn check_sizes(pid: u32, fds: &Fds) -> Result<()> {
    for entry in &fds.fds {
        let Some(fd::File::Regular(f)) = &entry.file else {
            continue;
        };
        if f.unlinked || f.mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let now = std::fs::metadata(&f.path)
            .with_context(|| format!("pid {pid} fd {}: {}", entry.fd, f.path))?
            .len();
        if now != f.size {
            bail!(
                "pid {pid} fd {}: {} is {now} bytes, {} at the dump (--ignore-file-size restores anyway)",
                entry.fd,
                f.path,
                f.size
            );
        }
    }
    Ok(())
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
