//! The process tree: which tasks may be dumped, freezing every thread of every process below
//! the root (rescanning until no new thread or child appears), and letting them go again.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};

use super::mm::Stat;
use super::task;
use crate::image::proto::{PsTree, PsTreeEntry};
use crate::log;
use crate::ptrace::{self as pt, Regs};
use crate::sys;

const PF_KTHREAD: u64 = 0x0020_0000;

/// Refuses targets rcr must never touch: pid 1, kernel threads, rcr itself and its ancestors.
pub fn check_target(pid: i32) -> Result<Stat> {
    if pid <= 0 {
        bail!("pid {pid}: not a valid pid");
    }
    if pid == 1 {
        crate::refuse!("pid 1: refusing to dump the init process");
    }
    let stat = match Stat::read(pid) {
        Ok(stat) => stat,
        Err(_) => bail!("pid {pid}: no such process"),
    };
    if stat.field(9) & PF_KTHREAD != 0 {
        crate::refuse!("pid {pid}: refusing to dump a kernel thread");
    }
    if pid as u32 == std::process::id() || is_descendant(std::process::id(), pid) {
        crate::refuse!("pid {pid}: refusing to dump rcr itself or one of its ancestors");
    }
    if matches!(stat.state(), 'Z' | 'X') {
        bail!("pid {pid}: is a zombie");
    }
    Ok(stat)
}

/// Children of every thread of `pid`.
pub fn children(pid: i32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(text) = fs::read_to_string(path) {
            children.extend(
                text.split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    children.sort_unstable();
    children.dedup();
    children
}

/// Whether `pid` is in the tree below `root`: found by walking down from the target (the
/// processes the user named), never up through processes rcr was not asked about.
fn is_descendant(pid: u32, root: i32) -> bool {
    let mut queue = vec![root as u32];
    let mut visited = 0;
    while let Some(next) = queue.pop() {
        visited += 1;
        if visited > 100_000 {
            return false;
        }
        for child in children(next as i32) {
            if child == pid {
                return true;
            }
            queue.push(child);
        }
    }
    false
}

fn tids(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // The thread group leader first.
    tids.sort_unstable_by_key(|&tid| (tid != pid, tid));
    tids
}

fn tracer_of(tid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let tracer: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()?;
    (tracer != 0).then_some(tracer)
}

/// A frozen thread: its registers and, once rcr changed it, its original signal mask.
pub struct FrozenThread {
    pub tid: i32,
    pub regs: Regs,
    pub sigmask: Option<u64>,
}

pub struct FrozenProcess {
    pub pid: i32,
    pub ppid: i32,
    pub stat: Stat,
    /// Wait status of a zombie (no thread of it is seized).
    pub zombie: Option<i32>,
    pub was_stopped: bool,
    pub threads: Vec<FrozenThread>,
}

/// Every process of the tree, parents before children.
pub struct Frozen {
    pub processes: Vec<FrozenProcess>,
}

/// What happens to the tree when rcr lets go of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Exactly as before the dump (also after a failure).
    AsBefore,
    Stopped,
    Kill,
}

/// Seizes every thread of `root` and of all its descendants. On failure, everything seized so
/// far is let go as it was.
pub fn seize_tree(root: i32, root_stat: Stat) -> Result<Frozen> {
    let mut frozen = Frozen {
        processes: Vec::new(),
    };
    match seize_into(&mut frozen, root, root_stat) {
        Ok(()) => Ok(frozen),
        Err(err) => {
            frozen.release(Release::AsBefore);
            Err(err)
        }
    }
}

fn seize_into(frozen: &mut Frozen, root: i32, root_stat: Stat) -> Result<()> {
    let mut queue = std::collections::VecDeque::from([(root, Some(root_stat))]);
    let mut seen = BTreeSet::from([root]);
    while let Some((pid, stat)) = queue.pop_front() {
        let stat = match stat {
            Some(stat) => stat,
            None => match Stat::read(pid) {
                Ok(stat) => stat,
                // Exited and reaped at once (its parent ignores SIGCHLD): not in the tree.
                Err(_) if !pid_exists(pid) => continue,
                Err(err) => return Err(err),
            },
        };
        let ppid = stat.field(4) as i32;
        if matches!(stat.state(), 'Z' | 'X') {
            frozen.push_zombie(pid, stat, None);
            continue;
        }
        frozen.processes.push(FrozenProcess {
            pid,
            ppid,
            stat,
            zombie: None,
            was_stopped: false,
            threads: Vec::new(),
        });
        let process = frozen.processes.last_mut().unwrap();
        // A child that exits while the tree is seized is a zombie of its (frozen) parent
        // now, recorded as one (with the wait status rcr collected as its tracer, if it did).
        let mut ended: Option<Option<i32>> = None;
        // Threads may be created until every thread is frozen: rescan until stable.
        'threads: loop {
            let mut new = 0;
            for tid in tids(pid) {
                if process.threads.iter().any(|t| t.tid == tid) {
                    continue;
                }
                if let Some(tracer) = tracer_of(tid) {
                    bail!("pid {tid}: is being traced by pid {tracer}");
                }
                let seized = match pt::seize_or_end(tid) {
                    Ok(pt::Seizing::Stopped(seized)) => seized,
                    // A child that exits while the tree is seized is a zombie of its (frozen)
                    // parent now, recorded as one; gone if its parent does not wait.
                    Ok(pt::Seizing::Ended(status)) if tid == pid && pid != root => {
                        ended = Some(Some(status));
                        break 'threads;
                    }
                    // A thread that exited meanwhile is simply gone.
                    Ok(pt::Seizing::Ended(_)) if tid != pid => continue,
                    Ok(pt::Seizing::Ended(status)) => {
                        bail!("pid {pid}: exited while being seized (wait status {status:#x})")
                    }
                    Err(_)
                        if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() =>
                    {
                        continue;
                    }
                    // The seize came too late: a zombie already (or reaped meanwhile).
                    Err(_) if tid == pid && pid != root && is_zombie_or_gone(pid) => {
                        ended = Some(None);
                        break 'threads;
                    }
                    Err(err) => return Err(err),
                };
                process.was_stopped |= seized.was_stopped;
                // The task's seccomp filters must not judge the parasite's system calls.
                let _ = nix::sys::ptrace::setoptions(
                    pt::pid(tid),
                    nix::sys::ptrace::Options::PTRACE_O_TRACESYSGOOD | pt::SUSPEND_SECCOMP,
                );
                let regs = pt::get_regs(tid)?;
                process.threads.push(FrozenThread {
                    tid,
                    regs,
                    sigmask: None,
                });
                new += 1;
            }
            if new == 0 {
                break;
            }
        }
        if let Some(status) = ended {
            frozen.processes.pop();
            // Gone if its parent does not wait for children (reaped as it exited).
            match Stat::read(pid) {
                Ok(stat) => {
                    log::info(&format!(
                        "pid {pid}: exited while the tree was seized: recorded as a zombie"
                    ));
                    frozen.push_zombie(pid, stat, status);
                }
                Err(_) => log::info(&format!(
                    "pid {pid}: exited while the tree was seized and was reaped: not in the tree"
                )),
            }
            continue;
        }
        if process.threads.is_empty() {
            bail!("pid {pid}: exited while being seized");
        }
        if process.was_stopped {
            end_group_stop(process)?;
        }
        // With every thread frozen, its children can no longer change.
        for child in children(pid) {
            let child = child as i32;
            if seen.insert(child) {
                queue.push_back((child, None));
            }
        }
    }
    Ok(())
}

fn pid_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the process `pid` has exited (a zombie, or reaped already).
fn is_zombie_or_gone(pid: i32) -> bool {
    Stat::read(pid).map_or(true, |stat| matches!(stat.state(), 'Z' | 'X'))
}

/// A seized process in a group stop re-enters the stop whenever it is resumed, so the
/// parasite could never run in it. SIGCONT ends the group stop; each thread then reports one
/// more PTRACE_EVENT_STOP (the group-stop-end notification) and is an ordinary frozen thread.
/// The process is stopped again with SIGSTOP when rcr lets it go (or restores it).
fn end_group_stop(process: &FrozenProcess) -> Result<()> {
    kill(pt::pid(process.pid), Signal::SIGCONT)
        .with_context(|| format!("pid {}: cannot end its group stop", process.pid))?;
    for thread in &process.threads {
        nix::sys::ptrace::cont(pt::pid(thread.tid), None)?;
        loop {
            match pt::wait_stop(thread.tid)? {
                pt::Stop::Event(_) => break,
                // A SIGCONT handler would run now, not in the original: not delivered.
                pt::Stop::Signal(Signal::SIGCONT) => {
                    nix::sys::ptrace::cont(pt::pid(thread.tid), None)?
                }
                pt::Stop::Signal(sig) => nix::sys::ptrace::cont(pt::pid(thread.tid), Some(sig))?,
                pt::Stop::Syscall => nix::sys::ptrace::cont(pt::pid(thread.tid), None)?,
            }
        }
    }
    Ok(())
}

impl Frozen {
    /// Records a zombie: its wait status as rcr collected it, or as /proc shows it.
    fn push_zombie(&mut self, pid: i32, stat: Stat, status: Option<i32>) {
        self.processes.push(FrozenProcess {
            pid,
            ppid: stat.field(4) as i32,
            zombie: Some(status.unwrap_or(stat.field(52) as i32)),
            stat,
            was_stopped: false,
            threads: Vec::new(),
        });
    }

    /// Blocks every signal but SIGTRAP in every thread while rcr works inside the tree,
    /// keeping the original masks to put back.
    pub fn mask_signals(&mut self, mask: u64) -> Result<()> {
        for thread in self.threads_mut() {
            let original = sys::ptrace::get_sigmask(thread.tid)
                .with_context(|| format!("pid {}: cannot read the signal mask", thread.tid))?;
            thread.sigmask = Some(original);
            sys::ptrace::set_sigmask(thread.tid, mask)?;
        }
        Ok(())
    }

    fn threads_mut(&mut self) -> impl Iterator<Item = &mut FrozenThread> {
        self.processes.iter_mut().flat_map(|p| p.threads.iter_mut())
    }

    /// Lets the tree go: registers and masks as they were, then detached (left as before or
    /// stopped) or killed. Best effort: every thread is let go even if one fails.
    pub fn release(&mut self, how: Release) {
        for process in &self.processes {
            for thread in &process.threads {
                if let Some(mask) = thread.sigmask {
                    let _ = sys::ptrace::set_sigmask(thread.tid, mask);
                }
                let _ = pt::set_regs(thread.tid, &task::resume_regs(&thread.regs, true));
            }
        }
        if how == Release::Kill {
            for process in self.processes.iter().filter(|p| p.zombie.is_none()) {
                let _ = kill(pt::pid(process.pid), Signal::SIGKILL);
            }
            let killed = Instant::now();
            self.wait_killed();
            log::debug(&format!(
                "the killed tree exited within {:?} of SIGKILL",
                killed.elapsed()
            ));
            return;
        }
        for process in &self.processes {
            let stop = match how {
                Release::AsBefore => process.was_stopped,
                Release::Stopped => true,
                Release::Kill => false,
            };
            for thread in &process.threads {
                let _ = pt::detach(thread.tid, stop && thread.tid == process.pid);
            }
        }
    }

    /// After SIGKILL: waits, as their tracer, until every thread of the tree has exited, so
    /// that their files (a listener's socket, a lock) are released and their pids are held
    /// by zombies at most when rcr returns. Threads before their leader: a leader's exit is
    /// reported once its other threads are reaped. Bounded (a task stuck in an
    /// uninterruptible sleep does not hang the dump): 10 s, then a warning.
    fn wait_killed(&self) {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let deadline = Instant::now() + Duration::from_secs(10);
        for process in &self.processes {
            for thread in process.threads.iter().rev() {
                let mut pause = Duration::from_micros(20);
                loop {
                    match waitpid(
                        pt::pid(thread.tid),
                        Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
                    ) {
                        Ok(WaitStatus::StillAlive) => {}
                        // A stop reported before the kill: its end comes next.
                        Ok(WaitStatus::Stopped(..) | WaitStatus::PtraceEvent(..))
                        | Ok(WaitStatus::PtraceSyscall(..))
                        | Ok(WaitStatus::Continued(..)) => continue,
                        // Ended, or not ours to wait for any more.
                        Ok(_) | Err(_) => break,
                    }
                    if Instant::now() > deadline {
                        log::warn(&format!(
                            "pid {}: not dead 10 s after SIGKILL (state {}); its files may still be open",
                            thread.tid,
                            Stat::read(thread.tid).map_or('?', |s| s.state())
                        ));
                        return;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
            }
        }
    }

    pub fn pstree(&self) -> PsTree {
        PsTree {
            processes: self
                .processes
                .iter()
                .enumerate()
                .map(|(index, p)| PsTreeEntry {
                    pid: p.pid as u32,
                    ppid: if index == 0 { 0 } else { p.ppid as u32 },
                    pgid: p.stat.field(5) as u32,
                    sid: p.stat.field(6) as u32,
                    threads: p.threads.iter().map(|t| t.tid as u32).collect(),
                    zombie: p.zombie.is_some(),
                    exit_status: p.zombie.unwrap_or(0),
                    stopped: p.was_stopped,
                })
                .collect(),
        }
    }
}
