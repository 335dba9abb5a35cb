//! Creating the tree with original PIDs (clone3 set_tid): rcr creates the root, every process
//! creates its own children, so parents, sessions and process groups come back. Each process,
//! in its own context and before the restorer takes over, places its file descriptors,
//! changes to its cwd, and reports through a pipe; zombies exit with their status.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::files::Move;
use crate::image::proto::PsTreeEntry;
use crate::log;
use crate::sys::{child, clone3};

/// What one new process does before it is seized, all decided by rcr beforehand.
pub struct ChildPlan {
    pub entry: PsTreeEntry,
    pub moves: Vec<Move>,
    pub cwd: Option<OwnedFd>,
    /// Its root directory when it is not rcr's (a chroot), entered before the cwd.
    pub root: Option<OwnedFd>,
    /// Every fd the process keeps (its own and the restorer's), sorted.
    pub keep: Vec<i32>,
    /// Indexes of its children in the plan list, in creation order.
    pub children: Vec<usize>,
    /// The pipe it reports on: rcr or its parent reads `report_read`.
    pub report_read: Option<OwnedFd>,
    pub report_write: Option<OwnedFd>,
    /// A session leader's controlling terminal: an fd rcr holds on it (inherited), and the
    /// foreground process group to give it once the session's processes exist (0: its own).
    pub ctty: Option<(i32, i32)>,
}

/// A report: errno (0 = ready) and the pid it concerns.
const REPORT_LEN: usize = 5;

fn report(fd: i32, errno: u8, pid: u32) {
    let mut bytes = [0u8; REPORT_LEN];
    bytes[0] = errno;
    bytes[1..].copy_from_slice(&pid.to_le_bytes());
    let _ = child::write_all(fd, &bytes);
}

/// Says who holds `pid`, for the error when it is taken.
pub fn pid_holder(pid: u32) -> Option<String> {
    holder(pid).map(|(who, _)| who)
}

/// Who holds `pid`, and whether it is a zombie (which goes once its parent reaps it).
fn holder(pid: u32) -> Option<(String, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let comm = stat.split(['(', ')']).nth(1).unwrap_or("?").to_owned();
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?;
    Some(if state == "Z" {
        (
            format!("an unreaped zombie ({comm}) of parent {ppid}"),
            true,
        )
    } else {
        (comm, false)
    })
}

/// Creates the whole tree; returns when every process has placed its fds and waits to be
/// seized (zombies have exited). Returns the root's pid.
pub fn create(plans: &[ChildPlan], pid_wait: Duration) -> Result<i32> {
    check_pids_free(plans, pid_wait)?;
    set_report_close_delay();
    let root = &plans[0];
    let created = clone_pid(root.entry.pid as i32, || run_process(plans, 0));
    match created {
        Ok(pid) => Ok(pid),
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
            bail!("pid {} is already in use", root.entry.pid)
        }
        Err(err) => bail!("pid {}: clone3 failed: {err}", root.entry.pid),
    }
}

/// The pipes between rcr and the init of a new pid namespace.
pub struct InitPipes {
    /// The init relays the root's report on it.
    pub report: OwnedFd,
    /// rcr writes one byte on it once the tree is restored: from then on the init no longer
    /// dies with rcr (it would take the namespace with it), so the tree outlives
    /// `rcr restore --detach`, or an rcr that is killed.
    pub restored_read: OwnedFd,
    pub restored_write: OwnedFd,
    /// The init answers one byte on it once it no longer dies with rcr.
    pub ack_read: OwnedFd,
    pub ack_write: OwnedFd,
}

/// Like [`create`], inside a new PID namespace whose init is a small rcr process: the tree
/// keeps its original pids inside, so nothing outside can collide with them. The init relays
/// the root's report, dies with rcr until rcr says the tree is restored, reaps orphans, and
/// exits with the root's status when the root exits (which ends the namespace). Returns the
/// init's pid (outside).
pub fn create_in_new_namespace(plans: &[ChildPlan], pipes: &InitPipes) -> Result<i32> {
    set_report_close_delay();
    let fds = (
        pipes.report.as_raw_fd(),
        pipes.restored_read.as_raw_fd(),
        pipes.ack_write.as_raw_fd(),
    );
    clone3::clone_into_new_pid_namespace(|| run_init(plans, fds))
        .map_err(|err| anyhow::anyhow!("cannot create a pid namespace: {err}"))
}

/// Test hook: `RCR_TEST_REPORT_CLOSE_DELAY_MS=N` makes every new process wait N ms between
/// its report and closing its report pipe, so that rcr seizes it in between (the race a
/// restored process must not lose: it must never keep that fd). Read by rcr before it
/// clones (the children read the copy).
static REPORT_CLOSE_DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn set_report_close_delay() {
    if let Some(ms) = std::env::var("RCR_TEST_REPORT_CLOSE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        REPORT_CLOSE_DELAY_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

fn run_init(plans: &[ChildPlan], (report_fd, restored_read, ack_write): (i32, i32, i32)) -> i32 {
    let root = &plans[0];
    let root_pid = root.entry.pid;
    if let Err(err) = child::set_pdeathsig(libc::SIGKILL).and_then(|()| mount_own_proc()) {
        report(report_fd, err.raw_os_error().unwrap_or(libc::EIO) as u8, 1);
        return 1;
    }
    if let Err(err) = clone3::clone_with_pid(root_pid as i32, || run_process(plans, 0)) {
        report(
            report_fd,
            err.raw_os_error().unwrap_or(libc::EIO) as u8,
            root_pid,
        );
        return 1;
    }
    let read_fd = root.report_read.as_ref().map_or(-1, |f| f.as_raw_fd());
    let mut bytes = [0u8; REPORT_LEN];
    let mut got = 0;
    while got < REPORT_LEN {
        match child::read(read_fd, &mut bytes[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    if got < REPORT_LEN {
        report(report_fd, libc::ECHILD as u8, root_pid);
        return 1;
    }
    let _ = child::write_all(report_fd, &bytes);
    // Until rcr says the tree is restored, the init dies with rcr (pdeathsig); after that
    // it stays, whether rcr waits for it or not. End of file: rcr failed (it kills the init).
    // Nothing of rcr's stays open in the init (rcr reads the report pipe to its end) but
    // the pipes on which rcr says the tree is restored and the init answers.
    let mut next = 0;
    let mut keep = [restored_read as u32, ack_write as u32];
    keep.sort_unstable();
    for fd in keep {
        if fd > next {
            let _ = child::close_range(next, fd - 1);
        }
        next = fd + 1;
    }
    let _ = child::close_range(next, u32::MAX);
    let mut restored = [0u8; 1];
    if !matches!(child::read(restored_read, &mut restored), Ok(1)) {
        return 1;
    }
    if child::set_pdeathsig(0).is_err() || child::write_all(ack_write, &[1]).is_err() {
        return 1;
    }
    let _ = child::close_range(0, u32::MAX);
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(-1), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(pid, code))
                if pid.as_raw() == root_pid as i32 =>
            {
                return code;
            }
            Ok(nix::sys::wait::WaitStatus::Signaled(pid, sig, _))
                if pid.as_raw() == root_pid as i32 =>
            {
                // pid 1 cannot kill itself with a signal: report it as a shell would.
                return 128 + sig as i32;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 0,
        }
    }
}

/// Gives the new namespace a /proc that shows its own pids (the processes read
/// /proc/self, /proc/PID... with the pids they know), without touching the host's mounts.
fn mount_own_proc() -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )?;
    Ok(())
}

/// Every pid and tid of the tree must be free. One held by a zombie (a dumped process its
/// parent has not reaped yet: right after `rcr dump`, it often is) is waited for, up to
/// `wait`; one held by a live process is refused at once.
fn check_pids_free(plans: &[ChildPlan], wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    let pids: Vec<u32> = plans
        .iter()
        .flat_map(|p| std::iter::once(p.entry.pid).chain(p.entry.threads.iter().copied()))
        .collect();
    let mut announced = std::collections::BTreeSet::new();
    loop {
        let mut zombie = None;
        for &pid in &pids {
            match holder(pid) {
                None => {}
                Some((who, false)) => bail!("pid {pid} is already in use by {who}"),
                Some((who, true)) => {
                    zombie.get_or_insert((pid, who));
                }
            }
        }
        let Some((pid, who)) = zombie else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            if wait.is_zero() {
                bail!("pid {pid} is already in use by {who}");
            }
            bail!(
                "pid {pid} is still in use by {who} after {} s (--pid-wait SECS waits longer)",
                wait.as_secs_f64()
            );
        }
        if announced.insert(pid) {
            log::info(&format!(
                "pid {pid} is held by {who}: waiting up to {:.1} s for it to be reaped",
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            ));
        }
        wait_reaped(pid, deadline);
    }
}

/// clone3 with the pid `pid`. EEXIST is tried again for up to 200 ms: the pid of a zombie
/// reaped a moment ago is released a little after /proc stops showing it.
fn clone_pid(pid: i32, child: impl Fn() -> i32) -> std::io::Result<i32> {
    let mut tries = 0;
    loop {
        match clone3::clone_with_pid(pid, &child) {
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) && tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

/// Returns once `pid` is reaped (or at `deadline`): a pidfd of a zombie reports POLLHUP when
/// it is reaped; a pid that has no pidfd (a thread) is looked at in /proc every 10 ms.
fn wait_reaped(pid: u32, deadline: Instant) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let left = deadline.saturating_duration_since(Instant::now());
    match crate::sys::pidfd::pidfd_open(pid as i32) {
        Ok(pidfd) => {
            // No events asked for: only POLLHUP (reaped) ends the wait.
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::empty())];
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let _ = poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            );
        }
        Err(_) => std::thread::sleep(left.min(Duration::from_millis(10))),
    }
}

/// Waits for the root's report. rcr must have closed its copies of every report pipe's write
/// end, so that a process that dies is seen as end of file.
pub fn wait_ready(root: &ChildPlan, read_end: &OwnedFd, root_pid: i32) -> Result<()> {
    let mut reader = File::from(read_end.try_clone()?);
    let mut bytes = [0u8; REPORT_LEN];
    let got = read_full(&mut reader, &mut bytes)?;
    // End of file once every process has closed its copy: their fd tables are final.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    if got != REPORT_LEN {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(root_pid), None);
        bail!(
            "pid {}: the new process died while being prepared",
            root.entry.pid
        );
    }
    if bytes[0] != 0 {
        let pid = u32::from_le_bytes(bytes[1..].try_into().unwrap());
        let cause = std::io::Error::from_raw_os_error(bytes[0].into());
        bail!("pid {pid}: preparing the new process failed: {cause}");
    }
    Ok(())
}

fn read_full(reader: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = reader.read(&mut buf[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// The life of a new process until rcr seizes it: only plain system calls.
fn run_process(plans: &[ChildPlan], index: usize) -> i32 {
    let plan = &plans[index];
    let pid = plan.entry.pid;
    let report_fd = plan.report_write.as_ref().map_or(-1, |f| f.as_raw_fd());
    match prepare(plans, index) {
        Ok(()) => {}
        Err(Failure { errno, pid }) => {
            report(report_fd, errno, pid);
            return 1;
        }
    }
    if plan.entry.zombie {
        report(report_fd, 0, pid);
        child::exit_like(plan.entry.exit_status);
    }
    report(report_fd, 0, pid);
    let delay = REPORT_CLOSE_DELAY_MS.load(std::sync::atomic::Ordering::Relaxed);
    if delay > 0 {
        std::thread::sleep(Duration::from_millis(delay));
    }
    // rcr may seize the process before this (it closes the fd then, with its own).
    let _ = child::close_range(report_fd as u32, report_fd as u32);
    child::pause_forever()
}

struct Failure {
    errno: u8,
    pid: u32,
}

fn failed(pid: u32) -> impl Fn(std::io::Error) -> Failure {
    move |err| Failure {
        errno: err.raw_os_error().unwrap_or(libc::EIO) as u8,
        pid,
    }
}

fn prepare(plans: &[ChildPlan], index: usize) -> std::result::Result<(), Failure> {
    let plan = &plans[index];
    let entry = &plan.entry;
    let pid = entry.pid;
    let fail = failed(pid);
    child::set_pdeathsig(libc::SIGKILL).map_err(&fail)?;
    if entry.sid == pid {
        child::setsid().map_err(&fail)?;
        // Before any child: they get the controlling terminal from the session leader.
        if let Some((tty, _)) = plan.ctty {
            crate::sys::tty::set_controlling_raw(tty).map_err(&fail)?;
        }
    } else if entry.pgid == pid {
        child::setpgid_self().map_err(&fail)?;
    } else if index != 0 {
        // A group led by an ancestor or an earlier sibling, which exists by now.
        child::setpgid(entry.pgid as i32).map_err(&fail)?;
    }
    // Children one at a time, each fully prepared before the next: groups and sessions they
    // join then exist, whatever the order.
    for &child_index in &plan.children {
        let child_plan = &plans[child_index];
        let child_pid = child_plan.entry.pid;
        clone_pid(child_pid as i32, || run_process(plans, child_index))
            .map_err(failed(child_pid))?;
        let read_fd = child_plan
            .report_read
            .as_ref()
            .map_or(-1, |f| f.as_raw_fd());
        let mut bytes = [0u8; REPORT_LEN];
        let mut got = 0;
        while got < REPORT_LEN {
            let n = child::read(read_fd, &mut bytes[got..]).map_err(failed(child_pid))?;
            if n == 0 {
                return Err(Failure {
                    errno: libc::ECHILD as u8,
                    pid: child_pid,
                });
            }
            got += n;
        }
        if bytes[0] != 0 {
            return Err(Failure {
                errno: bytes[0],
                pid: u32::from_le_bytes(bytes[1..].try_into().unwrap()),
            });
        }
    }
    // Every process of the session is a descendant, created by now: its groups exist.
    if let Some((tty, foreground)) = plan.ctty
        && foreground > 0
        && foreground as u32 != pid
    {
        crate::sys::tty::set_foreground_raw(tty, foreground).map_err(&fail)?;
    }
    if entry.zombie {
        return Ok(());
    }
    if let Some(root) = &plan.root {
        child::fchdir(root.as_raw_fd()).map_err(&fail)?;
        child::chroot_here().map_err(&fail)?;
    }
    if let Some(cwd) = &plan.cwd {
        child::fchdir(cwd.as_raw_fd()).map_err(&fail)?;
    }
    for m in &plan.moves {
        child::dup_to(m.src, m.dst, m.cloexec).map_err(&fail)?;
    }
    // Close everything else but the report pipe.
    let report_fd = plan.report_write.as_ref().map_or(-1, |f| f.as_raw_fd());
    let mut next = 0i32;
    let close_before = |fd: i32, next: &mut i32| -> std::io::Result<()> {
        if fd > *next {
            child::close_range(*next as u32, (fd - 1) as u32)?;
        }
        *next = (*next).max(fd + 1);
        Ok(())
    };
    let mut kept: Vec<i32> = plan.keep.clone();
    kept.push(report_fd);
    kept.sort_unstable();
    for fd in kept {
        close_before(fd, &mut next).map_err(&fail)?;
    }
    child::close_range(next as u32, u32::MAX).map_err(&fail)
}
