//! Pseudo-terminals: masters (/dev/ptmx, fdinfo `tty-index:`) and slaves (/dev/pts/N), and
//! each process' controlling terminal. A pty whose master is in the tree is saved once, with
//! the first fd of the tree naming it: settings, window size, packet mode, lock, exclusive
//! mode and the data in flight both ways. A slave whose master is outside the tree is the
//! terminal of the shell the tree runs in: recorded as external with --shell-job, refused
//! otherwise.
//!
//! The data in flight cannot be peeked on a tty: with the tree frozen, rcr reads it through
//! copies of the descriptions and puts it straight back the way a restore fills a new pty
//! (see restore::files::tty), so that the live pty is as before (--leave-running, a failed
//! dump). Output queue (the slave wrote, the master has not read): read on the master
//! (packet mode off meanwhile), written back on the slave with OPOST off. Input queue (the
//! master wrote, the slave side has not read): read on a new slave description with ICANON
//! off, VMIN 0, VTIME 0 (switching ICANON off makes the whole queue, complete lines and the
//! line being edited, readable), pushed back through the line discipline with canonical
//! mode as it was, so that lines are split as before. Lost on the way: a packet status not
//! yet read by the master, EOF marks (VEOF) in a canonical queue (they come back as NUL
//! bytes).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{FileIds, OneFd, read_fdinfo};
use crate::dump::mm::Stat;
use crate::image::proto::{ControllingTty, Tty, TtyState};
use crate::restore::files::tty::{refill_input, refill_output, termios_to};
use crate::sys::{pidfd, tty as systty};

/// /dev/ptmx.
const PTMX: (u32, u32) = (5, 2);
/// Unix98 pty slaves: /dev/pts/N is (136, N).
const PTS_MAJOR: u32 = 136;

/// The ptys the tree has fds on, found before any process is dumped (a slave's master may
/// be in a later process).
#[derive(Default)]
pub struct TreeTtys {
    /// index -> one (pid, fd) of the tree on its master.
    masters: HashMap<u32, (i32, i32)>,
    /// index -> one (pid, fd) of the tree on a slave.
    slaves: HashMap<u32, (i32, i32)>,
    shell_job: bool,
    /// The terminal outside the tree (--shell-job), and where it was first seen.
    external: Option<(u32, String)>,
    /// Ptys whose state is saved already.
    saved: HashSet<u32>,
}

impl TreeTtys {
    /// Lists the pty fds of every process of `pids` (frozen).
    pub fn scan(pids: &[i32], shell_job: bool) -> Result<TreeTtys> {
        let mut ttys = TreeTtys {
            shell_job,
            ..TreeTtys::default()
        };
        for &pid in pids {
            let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            let mut numbers: Vec<i32> = dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            numbers.sort_unstable();
            for fd in numbers {
                let Ok(meta) = fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
                    continue;
                };
                if !std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) {
                    continue;
                }
                let rdev = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
                if rdev == PTMX {
                    let index = master_index(&read_fdinfo(pid, fd)?, pid, fd)?;
                    ttys.masters.entry(index).or_insert((pid, fd));
                } else if rdev.0 == PTS_MAJOR {
                    ttys.slaves.entry(rdev.1).or_insert((pid, fd));
                }
            }
        }
        Ok(ttys)
    }

    /// Notes the external terminal: only one is supported.
    fn note_external(&mut self, index: u32, pid: i32, where_: &str) -> Result<()> {
        match &self.external {
            Some((other, first)) if *other != index => crate::refuse!(
                "pid {pid} {where_}: a second terminal outside the dumped tree (/dev/pts/{index}; {first} is on /dev/pts/{other}) is not supported"
            ),
            Some(_) => {}
            None => self.external = Some((index, format!("pid {pid} {where_}"))),
        }
        Ok(())
    }
}

fn master_index(info: &super::FdInfo, pid: i32, fd: i32) -> Result<u32> {
    info.field("tty-index:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("pid {pid} fd {fd}: pty master without tty-index in fdinfo"))
}

/// A pty end, or None when the character device is not one.
pub(super) fn dump(one: &OneFd, ids: &mut FileIds) -> Result<Option<Tty>> {
    let OneFd {
        pid,
        fd,
        link,
        meta,
        ..
    } = *one;
    let rdev = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    let (index, master) = if rdev == PTMX {
        (master_index(one.info, pid, fd)?, true)
    } else if rdev.0 == PTS_MAJOR {
        (rdev.1, false)
    } else {
        return Ok(None);
    };
    let ttys = ids.ttys()?;
    if !master && link != format!("/dev/pts/{index}") {
        crate::refuse!(
            "pid {pid} fd {fd}: terminal {link} is not /dev/pts/{index} (another devpts instance?): not supported"
        );
    }
    if !master && !ttys.masters.contains_key(&index) {
        if !ttys.shell_job {
            crate::refuse!(
                "pid {pid} fd {fd}: {link} is a terminal whose master is outside the dumped tree (a shell job? dump it with --shell-job)"
            );
        }
        ttys.note_external(index, pid, &format!("fd {fd}"))?;
        return Ok(Some(Tty {
            index,
            master: false,
            flags: one.flags,
            external: true,
            state: None,
        }));
    }
    let state = if ttys.saved.insert(index) {
        Some(save_state(one, index, master, ttys)?)
    } else {
        None
    };
    Ok(Some(Tty {
        index,
        master,
        flags: one.flags,
        external: false,
        state,
    }))
}

/// A copy of the master's description and a new description of the slave, for the state.
fn open_pair(one: &OneFd, index: u32, master: bool, ttys: &TreeTtys) -> Result<(OwnedFd, OwnedFd)> {
    let (pid, fd) = (one.pid, one.fd);
    let master_fd = match one.copy {
        Some(copy) if master => copy.try_clone()?,
        _ => {
            let (mpid, mfd) = ttys.masters[&index];
            pidfd::pidfd_getfd(&pidfd::pidfd_open(mpid)?, mfd)
                .with_context(|| format!("pid {mpid} fd {mfd}: cannot take a copy"))?
        }
    };
    let Some(&(spid, sfd)) = ttys.slaves.get(&index) else {
        crate::refuse!(
            "pid {pid} fd {fd}: pty master of /dev/pts/{index} without its slave open in the dumped tree is not supported"
        );
    };
    // A locked pty's slave cannot be opened, not even by root: unlocked for the open.
    let locked = systty::locked(master_fd.as_fd())
        .with_context(|| format!("pid {pid} fd {fd}: /dev/pts/{index}: TIOCGPTLCK"))?;
    if locked {
        systty::set_locked(master_fd.as_fd(), false)
            .with_context(|| format!("pid {pid} fd {fd}: /dev/pts/{index}: unlock"))?;
    }
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/proc/{spid}/fd/{sfd}"));
    if locked {
        let _ = systty::set_locked(master_fd.as_fd(), true);
    }
    let slave = slave
        .with_context(|| format!("pid {spid} fd {sfd}: cannot open /dev/pts/{index} again"))?;
    Ok((master_fd, slave.into()))
}

fn save_state(one: &OneFd, index: u32, master: bool, ttys: &TreeTtys) -> Result<TtyState> {
    let what = || format!("pid {} fd {}: /dev/pts/{index}", one.pid, one.fd);
    let (master_fd, slave) = open_pair(one, index, master, ttys)?;
    let (m, s) = (master_fd.as_fd(), slave.as_fd());
    // The data in flight is read and put back through N_TTY's semantics.
    match systty::line_discipline(s) {
        Ok(0) => {}
        Ok(ldisc) => crate::refuse!(
            "{}: line discipline {ldisc} is not supported (only N_TTY)",
            what()
        ),
        Err(err) => return Err(err).with_context(what),
    }
    let termios = systty::get_termios(s).with_context(what)?;
    let [rows, cols, xpixel, ypixel] = systty::get_winsize(s).with_context(what)?;
    let packet_mode = systty::packet_mode(m).with_context(what)?;
    let locked = systty::locked(m).with_context(what)?;
    let exclusive = systty::exclusive(s).unwrap_or(false);
    if packet_mode {
        systty::set_packet_mode(m, false).with_context(what)?;
    }
    let moved = in_flight(m, s, &termios);
    if packet_mode {
        let _ = systty::set_packet_mode(m, true);
    }
    let (output, input) = moved.with_context(|| format!("{}: data in flight", what()))?;
    Ok(TtyState {
        termios: Some(termios_to(&termios)),
        rows: rows.into(),
        cols: cols.into(),
        xpixel: xpixel.into(),
        ypixel: ypixel.into(),
        packet_mode,
        locked,
        exclusive,
        output,
        input,
    })
}

/// Reads both queues and puts them back (whatever was read goes back, also on an error).
fn in_flight(
    master: BorrowedFd,
    slave: BorrowedFd,
    termios: &systty::Termios,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut output = Vec::new();
    let read = take_output(master, &mut output);
    refill_output(slave, termios, &output)?;
    read?;
    let mut input = Vec::new();
    let mut raw = *termios;
    raw.c_lflag &= !libc::ICANON;
    raw.c_cc[libc::VMIN] = 0;
    raw.c_cc[libc::VTIME] = 0;
    systty::set_termios(slave, &raw)?;
    let read = take_input(slave, &mut input);
    // Also puts `termios` back when nothing was read.
    refill_input(slave, master, termios, &input)?;
    read?;
    Ok((output, input))
}

/// Whether `fd` has input now; poll also moves data the pty has buffered into the line
/// discipline when it holds none.
fn poll_in(fd: BorrowedFd) -> std::io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let n = poll(&mut fds, 0u8)?;
    Ok(n > 0
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN)))
}

/// Reads the master's queue (raw: FIONREAD tells what a read returns) without blocking.
fn take_output(master: BorrowedFd, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut file = fs::File::from(master.try_clone_to_owned()?);
    loop {
        let mut ready = systty::readable(master)?;
        if ready == 0 && poll_in(master)? {
            ready = systty::readable(master)?;
        }
        if ready == 0 {
            return Ok(());
        }
        let start = out.len();
        out.resize(start + ready, 0);
        let n = file.read(&mut out[start..])?;
        out.truncate(start + n);
        if n == 0 {
            return Ok(());
        }
    }
}

/// Reads the slave's queue through a non-blocking description in non-canonical mode with
/// VMIN 0: a read returns 0 once the queue and the pty's buffer are empty.
fn take_input(slave: BorrowedFd, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut file = fs::File::from(slave.try_clone_to_owned()?);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            // Another reader holds the line discipline's read lock for a moment.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e),
        }
    }
}

/// The controlling terminal of a process (/proc/PID/stat tty_nr), checked against the
/// tree: `tree` holds (pid, pgid, sid) of every process.
pub fn controlling(
    pid: i32,
    stat: &Stat,
    tree: &[(i32, i32, i32)],
    ttys: &mut TreeTtys,
) -> Result<Option<ControllingTty>> {
    let tty_nr = stat.field(7);
    if tty_nr == 0 {
        return Ok(None);
    }
    let (major, minor) = (libc::major(tty_nr), libc::minor(tty_nr));
    let name = if major == PTS_MAJOR {
        format!("/dev/pts/{minor}")
    } else {
        format!("terminal {major}:{minor}")
    };
    let (pgid, sid) = (stat.field(5) as i32, stat.field(6) as i32);
    let tpgid = stat.field(8) as i64 as i32;
    if major == PTS_MAJOR && ttys.masters.contains_key(&minor) {
        if !tree.iter().any(|&(p, _, _)| p == sid) {
            crate::refuse!(
                "pid {pid}: its controlling terminal {name} belongs to session {sid}, whose leader is outside the dumped tree"
            );
        }
        let foreground_pgid = if sid == pid && tpgid > 0 {
            if !tree.iter().any(|&(_, g, s)| g == tpgid && s == sid) {
                crate::refuse!(
                    "pid {pid}: the foreground process group {tpgid} of its terminal {name} is not in the dumped tree"
                );
            }
            tpgid
        } else {
            0
        };
        return Ok(Some(ControllingTty {
            index: minor,
            external: false,
            foreground_pgid,
        }));
    }
    if !ttys.shell_job {
        crate::refuse!(
            "pid {pid}: its controlling terminal {name} is outside the dumped tree (a shell job? dump it with --shell-job)"
        );
    }
    if major != PTS_MAJOR {
        crate::refuse!(
            "pid {pid}: its controlling terminal {name} is not a pseudo-terminal (/dev/pts)"
        );
    }
    if sid == pid {
        crate::refuse!(
            "pid {pid}: leads the session of its terminal {name}: --shell-job restores the jobs of a shell, not the session leader"
        );
    }
    ttys.note_external(minor, pid, "(controlling terminal)")?;
    Ok(Some(ControllingTty {
        index: minor,
        external: true,
        foreground_pgid: if tpgid == pgid { tpgid } else { 0 },
    }))
}
