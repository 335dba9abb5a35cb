//! Creating the tree with original PIDs (clone3 set_tid): rcr creates the root, every process
//! creates its own children, so parents, sessions and process groups come back. Each process,
//! in its own context and before the restorer takes over, places its file descriptors,
//! changes to its cwd, and reports through a pipe; zombies exit with their status.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Result, bail};

use super::files::Move;
use crate::image::proto::PsTreeEntry;
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let comm = stat.split(['(', ')']).nth(1).unwrap_or("?").to_owned();
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?;
    Some(if state == "Z" {
        format!("an unreaped zombie ({comm}) of parent {ppid}")
    } else {
        comm
    })
}

/// Creates the whole tree; returns when every process has placed its fds and waits to be
/// seized (zombies have exited). Returns the root's pid.
pub fn create(plans: &[ChildPlan]) -> Result<i32> {
    check_pids_free(plans)?;
    let root = &plans[0];
    let created = clone3::clone_with_pid(root.entry.pid as i32, || run_process(plans, 0));
    match created {
        Ok(pid) => Ok(pid),
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
            bail!("pid {} is already in use", root.entry.pid)
        }
        Err(err) => bail!("pid {}: clone3 failed: {err}", root.entry.pid),
    }
}

/// Like [`create`], inside a new PID namespace whose init is a small rcr process: the tree
/// keeps its original pids inside, so nothing outside can collide with them. The init relays
/// the root's report on `init_report`, reaps orphans, and exits with the root's status when
/// the root exits (which ends the namespace). Returns the init's pid (outside).
pub fn create_in_new_namespace(plans: &[ChildPlan], init_report: &OwnedFd) -> Result<i32> {
    let report_fd = init_report.as_raw_fd();
    clone3::clone_into_new_pid_namespace(|| run_init(plans, report_fd))
        .map_err(|err| anyhow::anyhow!("cannot create a pid namespace: {err}"))
}

fn run_init(plans: &[ChildPlan], report_fd: i32) -> i32 {
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

fn check_pids_free(plans: &[ChildPlan]) -> Result<()> {
    for plan in plans {
        for pid in std::iter::once(plan.entry.pid).chain(plan.entry.threads.iter().copied()) {
            if let Some(holder) = pid_holder(pid) {
                bail!("pid {pid} is already in use by {holder}");
            }
        }
    }
    Ok(())
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
        clone3::clone_with_pid(child_pid as i32, || run_process(plans, child_index))
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
