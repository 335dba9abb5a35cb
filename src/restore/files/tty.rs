//! Pseudo-terminals: rcr opens /dev/ptmx until it gets the dumped index, gives the pty its
//! settings and the data that was in flight, and opens every slave description through
//! /dev/pts/N (O_NOCTTY). A slave of the external terminal (--shell-job) becomes a new
//! description of the terminal rcr restore runs on. The controlling terminal of a session
//! leader is taken in the new process itself (tree.rs), with a slave fd rcr holds for it.
//!
//! The data in flight goes back the way the dump put it back into the live pty: the output
//! queue (slave to master) is written on the slave with OPOST off, so that it is not
//! processed twice; the input queue (master to slave) goes through the slave's line
//! discipline synchronously (TIOCSTI) with echo, signals, flow control and editing
//! characters off, so that lines (newline, EOL, EOL2) are split as they were.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::{OpenedFiles, hold_above};
use crate::image::proto::{ControllingTty, Fds, Termios, Tty, TtyState, fd};
use crate::restore::ProcessImages;
use crate::sys::tty as systty;

/// How many bytes of the input queue go back through TIOCSTI: what an N_TTY read buffer
/// holds; the rest (only possible when the reader was far behind) is written on the master.
const LINE_DISCIPLINE_ROOM: usize = 4095;

/// The termios2 of an image.
pub fn termios_from(t: &Termios) -> systty::Termios {
    let mut cc = [0u8; 19];
    for (slot, byte) in cc.iter_mut().zip(&t.cc) {
        *slot = *byte;
    }
    systty::Termios {
        c_iflag: t.iflag,
        c_oflag: t.oflag,
        c_cflag: t.cflag,
        c_lflag: t.lflag,
        c_line: t.line as u8,
        c_cc: cc,
        c_ispeed: t.ispeed,
        c_ospeed: t.ospeed,
    }
}

/// The image form of a termios2.
pub fn termios_to(t: &systty::Termios) -> Termios {
    Termios {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: u32::from(t.c_line),
        cc: t.c_cc.to_vec(),
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
    }
}

/// Writes all of `data` on a non-blocking tty end, waiting (bounded) for room.
fn write_all_nonblocking(fd: BorrowedFd, data: &[u8]) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut done = 0;
    while done < data.len() {
        match nix::unistd::write(fd, &data[done..]) {
            Ok(n) => done += n,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                if Instant::now() > deadline {
                    return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
                }
                let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut fds, 100u8);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Puts `data` back into the master's read queue: written on the slave (opened
/// non-blocking) with output processing off, then `termios` again.
pub(crate) fn refill_output(
    slave: BorrowedFd,
    termios: &systty::Termios,
    data: &[u8],
) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut raw = *termios;
    raw.c_oflag &= !libc::OPOST;
    systty::set_termios(slave, &raw)?;
    let written = write_all_nonblocking(slave, data);
    let back = systty::set_termios(slave, termios);
    written.and(back)
}

/// Puts `data` back into the slave's read queue: pushed through its line discipline
/// (TIOCSTI) with the canonical mode of `termios` but nothing else that would act on the
/// bytes (echo, signals, flow control, input translation, editing characters), then
/// `termios` again. The slave's queue must be empty. Bytes beyond what the line discipline
/// holds (or all that is left when TIOCSTI is refused) are written on the master.
pub(crate) fn refill_input(
    slave: BorrowedFd,
    master: BorrowedFd,
    termios: &systty::Termios,
    data: &[u8],
) -> std::io::Result<()> {
    let mut quiet = *termios;
    quiet.c_iflag = 0;
    quiet.c_lflag &= libc::ICANON | libc::IEXTEN | libc::EXTPROC;
    for special in [
        libc::VERASE,
        libc::VKILL,
        libc::VWERASE,
        libc::VLNEXT,
        libc::VREPRINT,
        libc::VEOF,
    ] {
        // 0 (_POSIX_VDISABLE) is never special in N_TTY.
        quiet.c_cc[special] = 0;
    }
    systty::set_termios(slave, &quiet)?;
    let now = &data[..data.len().min(LINE_DISCIPLINE_ROOM)];
    let mut pushed = 0;
    for &byte in now {
        if let Err(err) = systty::push_input(slave, byte) {
            // No TIOCSTI (no CAP_SYS_ADMIN): the rest goes through the master, so that no
            // byte is lost, processed later with the final settings.
            crate::log::info(&format!(
                "TIOCSTI failed ({err}): {} bytes of input written on the master",
                data.len() - pushed
            ));
            break;
        }
        pushed += 1;
    }
    let back = systty::set_termios(slave, termios);
    let later = &data[pushed..];
    if !later.is_empty() {
        let mut file = std::fs::File::from(master.try_clone_to_owned()?);
        file.write_all(later)?;
    }
    back
}

/// Opens a tty device for the tree: the dumped access mode and status flags (O_ASYNC set
/// afterwards: open(2) ignores it), O_NOCTTY.
fn open_tty(path: &str, flags: u32, what: &str) -> Result<OwnedFd> {
    let accmode = flags & libc::O_ACCMODE as u32;
    let status = (flags as i32) & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC);
    let file = OpenOptions::new()
        .read(accmode == libc::O_RDONLY as u32 || accmode == libc::O_RDWR as u32)
        .write(accmode == libc::O_WRONLY as u32 || accmode == libc::O_RDWR as u32)
        .custom_flags(status | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("{what}: cannot open {path}"))?;
    if status & libc::O_ASYNC != 0 {
        fcntl(
            file.as_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(status)),
        )
        .with_context(|| format!("{what}: O_ASYNC"))?;
    }
    Ok(file.into())
}

/// The ptys of the tree as rcr holds them until the tree exists.
#[derive(Default)]
pub struct OpenedTtys {
    /// index -> the master description (taken by the one master entry).
    masters: HashMap<u32, Option<OwnedFd>>,
    /// index -> a slave fd rcr keeps: for the pty's settings, and for a session leader to
    /// take it as its controlling terminal.
    helpers: HashMap<u32, OwnedFd>,
    /// Lock (with a copy of the master to set it) and exclusive mode, set once every
    /// slave description is open.
    finish: Vec<(u32, Option<OwnedFd>, bool)>,
    /// --shell-job: external slaves become descriptions of rcr's own terminal.
    pub shell_job: bool,
}

/// The path of rcr's own terminal (its stdin), for the external slaves.
const OWN_TERMINAL: &str = "/proc/self/fd/0";

impl OpenedFiles {
    /// Creates every pty of the tree with its index, settings and data in flight.
    pub fn create_ttys(&mut self, all: &[&Fds]) -> Result<()> {
        let mut wanted: Vec<(u32, &Tty, &TtyState)> = all
            .iter()
            .flat_map(|fds| &fds.fds)
            .filter_map(|entry| match &entry.file {
                Some(fd::File::Tty(t)) if !t.external => Some((t.index, t, t.state.as_ref()?)),
                _ => None,
            })
            .collect();
        wanted.sort_by_key(|(index, _, _)| *index);
        wanted.dedup_by_key(|(index, _, _)| *index);
        if wanted.is_empty() {
            return Ok(());
        }
        // /dev/ptmx hands out the lowest free index: open until each wanted one comes,
        // holding the others meanwhile.
        let mut extras = Vec::new();
        let mut got: HashMap<u32, OwnedFd> = HashMap::new();
        for &(index, _, _) in &wanted {
            loop {
                let master = open_tty("/dev/ptmx", libc::O_RDWR as u32, "/dev/ptmx")?;
                let n = systty::pty_index(master.as_fd()).context("ptmx: TIOCGPTN")?;
                if n == index {
                    got.insert(index, master);
                    break;
                }
                if n > index {
                    bail!("pty /dev/pts/{index} is in use: cannot restore that terminal");
                }
                extras.push(master);
            }
        }
        drop(extras);
        for (index, _, state) in wanted {
            let master = got.remove(&index).expect("opened above");
            let what = format!("/dev/pts/{index}");
            let helper = Self::fill_pty(&master, state, &what)?;
            let master = hold_above(master, self.floor)?;
            let lock = if state.locked {
                Some(hold_above(master.try_clone()?, self.floor)?)
            } else {
                None
            };
            self.ttys.masters.insert(index, Some(master));
            self.ttys
                .helpers
                .insert(index, hold_above(helper, self.floor)?);
            self.ttys.finish.push((index, lock, state.exclusive));
        }
        Ok(())
    }

    /// The description of one tty entry.
    pub(super) fn open_tty(&mut self, t: &Tty, what: &str) -> Result<OwnedFd> {
        if t.external {
            if !self.ttys.shell_job {
                crate::refuse!(
                    "{what}: was on the terminal /dev/pts/{} outside the dumped tree: restore it with --shell-job",
                    t.index
                );
            }
            return open_tty(OWN_TERMINAL, t.flags, what)
                .with_context(|| format!("{what}: rcr's terminal"));
        }
        if t.master {
            let Some(slot) = self.ttys.masters.get_mut(&t.index) else {
                bail!("{what}: pty /dev/pts/{} has no saved state", t.index);
            };
            let master = slot.take().with_context(|| {
                format!(
                    "{what}: a second description of the master of /dev/pts/{} is not supported",
                    t.index
                )
            })?;
            let status =
                OFlag::from_bits_truncate(t.flags as i32) & (OFlag::O_NONBLOCK | OFlag::O_ASYNC);
            fcntl(master.as_fd(), FcntlArg::F_SETFL(status))
                .with_context(|| format!("{what}: master flags"))?;
            return Ok(master);
        }
        if !self.ttys.helpers.contains_key(&t.index) {
            bail!("{what}: pty /dev/pts/{} has no saved state", t.index);
        }
        open_tty(&format!("/dev/pts/{}", t.index), t.flags, what)
    }
    /// Settings and data of one new pty; returns rcr's slave fd on it.
    fn fill_pty(master: &OwnedFd, state: &TtyState, what: &str) -> Result<OwnedFd> {
        systty::set_locked(master.as_fd(), false).with_context(|| format!("{what}: unlock"))?;
        let slave = open_tty(
            what,
            (libc::O_RDWR | libc::O_NONBLOCK) as u32,
            &format!("{what} (slave)"),
        )?;
        let termios = termios_from(
            state
                .termios
                .as_ref()
                .with_context(|| format!("{what}: no termios in the image"))?,
        );
        systty::set_termios(slave.as_fd(), &termios)
            .with_context(|| format!("{what}: terminal settings"))?;
        systty::set_winsize(
            slave.as_fd(),
            [state.rows, state.cols, state.xpixel, state.ypixel].map(|v| v as u16),
        )
        .with_context(|| format!("{what}: window size"))?;
        refill_output(slave.as_fd(), &termios, &state.output)
            .with_context(|| format!("{what}: refilling its output queue"))?;
        refill_input(slave.as_fd(), master.as_fd(), &termios, &state.input)
            .with_context(|| format!("{what}: refilling its input queue"))?;
        // Last: switching packet mode on clears the packet status the steps above caused.
        systty::set_packet_mode(master.as_fd(), state.packet_mode)
            .with_context(|| format!("{what}: packet mode"))?;
        Ok(slave)
    }

    /// Once every slave description is open: each pty's lock and exclusive mode.
    pub fn finish_ttys(&mut self) -> Result<()> {
        for (index, locked, exclusive) in std::mem::take(&mut self.ttys.finish) {
            let what = format!("/dev/pts/{index}");
            if exclusive {
                systty::set_exclusive(self.ttys.helpers[&index].as_fd(), true)
                    .with_context(|| format!("{what}: exclusive mode"))?;
            }
            if let Some(master) = locked {
                systty::set_locked(master.as_fd(), true)
                    .with_context(|| format!("{what}: lock"))?;
            }
        }
        Ok(())
    }

    /// rcr's slave fd on pty `index` (inherited by the new processes until they close it).
    pub fn tty_helper(&self, index: u32) -> Option<i32> {
        self.ttys.helpers.get(&index).map(|fd| fd.as_raw_fd())
    }

    pub fn set_shell_job(&mut self, on: bool) {
        self.ttys.shell_job = on;
    }
}

/// Refuses, before anything is created, terminals the restore cannot give back: the
/// external terminal without --shell-job or without a terminal of rcr's own, a controlling
/// terminal or a foreground group that is not in the tree.
pub fn check(processes: &[ProcessImages], shell_job: bool) -> Result<()> {
    let live: Vec<(&ProcessImages, &Fds)> = processes
        .iter()
        .filter_map(|p| Some((p, &p.images.as_ref()?.fds)))
        .collect();
    let mut ptys = std::collections::HashSet::new();
    let mut external_fd = None;
    for (process, fds) in &live {
        for entry in &fds.fds {
            if let Some(fd::File::Tty(t)) = &entry.file {
                if t.external {
                    external_fd.get_or_insert((process.entry.pid, entry.fd, t.index));
                } else if t.state.is_some() {
                    ptys.insert(t.index);
                }
            }
        }
    }
    let external_ctty = live.iter().find_map(|(p, fds)| {
        fds.ctty
            .as_ref()
            .filter(|c| c.external)
            .map(|c| (p.entry.pid, c.index))
    });
    if !shell_job {
        if let Some((pid, fd, index)) = external_fd {
            crate::refuse!(
                "pid {pid} fd {fd}: was on the terminal /dev/pts/{index} outside the dumped tree: restore it with --shell-job"
            );
        }
        if let Some((pid, index)) = external_ctty {
            crate::refuse!(
                "pid {pid}: its controlling terminal /dev/pts/{index} was outside the dumped tree: restore it with --shell-job"
            );
        }
    } else if external_fd.is_some() || external_ctty.is_some() {
        let stdin = std::io::stdin();
        if !systty::is_terminal(stdin.as_fd()) {
            crate::refuse!("--shell-job: rcr's stdin is not a terminal to give the job");
        }
        if external_ctty.is_some() {
            let own_sid = nix::unistd::getsid(None)?.as_raw();
            if systty::session(stdin.as_fd()).ok() != Some(own_sid) {
                crate::refuse!(
                    "--shell-job: rcr's stdin is not its controlling terminal (run rcr restore from the job's new terminal)"
                );
            }
        }
    }
    for (process, fds) in &live {
        let Some(ctty) = fds.ctty.as_ref().filter(|c| !c.external) else {
            continue;
        };
        check_internal(process, ctty, &ptys, processes)?;
    }
    Ok(())
}

fn check_internal(
    process: &ProcessImages,
    ctty: &ControllingTty,
    ptys: &std::collections::HashSet<u32>,
    processes: &[ProcessImages],
) -> Result<()> {
    let pid = process.entry.pid;
    let index = ctty.index;
    if !ptys.contains(&index) {
        bail!("pid {pid}: its controlling terminal /dev/pts/{index} is not a pty of the images");
    }
    let leader = processes.iter().find(|p| p.entry.pid == process.entry.sid);
    let leader_ctty = leader
        .and_then(|l| l.images.as_ref())
        .and_then(|l| l.fds.ctty.as_ref());
    if leader_ctty.map(|c| (c.index, c.external)) != Some((index, false)) {
        bail!(
            "pid {pid}: its controlling terminal /dev/pts/{index} is not the one of its session leader {}",
            process.entry.sid
        );
    }
    if process.entry.sid == pid
        && ctty.foreground_pgid > 0
        && !processes
            .iter()
            .any(|p| p.entry.pgid == ctty.foreground_pgid as u32 && p.entry.sid == pid)
    {
        bail!(
            "pid {pid}: the foreground process group {} of /dev/pts/{index} has no process in its session",
            ctty.foreground_pgid
        );
    }
    Ok(())
}
