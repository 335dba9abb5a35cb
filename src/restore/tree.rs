//! Creating the task with its original PID (clone3 set_tid) and preparing it, in its own
//! context, before the restorer takes over: file descriptors at their numbers, cwd, session.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

use super::files::Move;
use crate::image::proto::PsTreeEntry;
use crate::sys::{child, clone3};

/// What the new task does before it is seized, all decided by rcr beforehand.
pub struct ChildPlan {
    pub moves: Vec<Move>,
    pub cwd: Option<OwnedFd>,
    /// Every fd the task keeps (its own and the restorer's), sorted.
    pub keep: Vec<i32>,
    pub new_session: bool,
    pub new_group: bool,
    /// rcr's own descriptors are held at or above this number.
    pub floor: i32,
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

/// Creates the task; returns its pid once it has placed its fds and waits to be seized.
pub fn create(entry: &PsTreeEntry, plan: &ChildPlan) -> Result<i32> {
    let pid = entry.pid;
    if let Some(holder) = pid_holder(pid) {
        bail!("pid {pid} is already in use by {holder}");
    }
    let (sync_read, sync_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Above every fd the task will have, so placing them cannot close it.
    let sync_write = super::files::hold_above(sync_write, plan.floor)?;
    let sync_fd = sync_write.as_raw_fd();
    let mut keep = plan.keep.clone();
    keep.push(sync_fd);
    keep.sort_unstable();
    let created = clone3::clone_with_pid(pid as i32, || {
        let code = match prepare_child(plan, &keep) {
            Ok(()) => 0u8,
            Err(err) => err.raw_os_error().unwrap_or(libc::EIO) as u8,
        };
        let _ = child::write_all(sync_fd, &[code]);
        if code != 0 {
            return 1;
        }
        let _ = child::close_range(sync_fd as u32, sync_fd as u32);
        child::pause_forever()
    });
    drop(sync_write);
    let child_pid = match created {
        Ok(child_pid) => child_pid,
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
            bail!("pid {pid} is already in use")
        }
        Err(err) => return Err(err).context(format!("pid {pid}: clone3 failed")),
    };
    let mut status = [0u8; 1];
    let mut reader = File::from(sync_read);
    let got = reader.read(&mut status)?;
    // End of file once the task has closed its end too: then its fd table is final.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    if got != 1 || status[0] != 0 {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child_pid), None);
        let cause = if got == 1 {
            std::io::Error::from_raw_os_error(status[0].into()).to_string()
        } else {
            "it died".to_owned()
        };
        bail!("pid {pid}: preparing the new task failed: {cause}");
    }
    Ok(child_pid)
}

/// Runs in the new task: only plain system calls.
fn prepare_child(plan: &ChildPlan, keep: &[i32]) -> std::io::Result<()> {
    child::set_pdeathsig(libc::SIGKILL)?;
    if plan.new_session {
        child::setsid()?;
    } else if plan.new_group {
        child::setpgid_self()?;
    }
    if let Some(cwd) = &plan.cwd {
        child::fchdir(cwd.as_raw_fd())?;
    }
    for m in &plan.moves {
        child::dup_to(m.src, m.dst, m.cloexec)?;
    }
    // Close everything else (the sync pipe is closed after reporting).
    let mut next = 0i32;
    for &fd in keep {
        if fd > next {
            child::close_range(next as u32, (fd - 1) as u32)?;
        }
        next = next.max(fd + 1);
    }
    child::close_range(next as u32, u32::MAX)
}
