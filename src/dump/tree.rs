//! The process tree: which task may be dumped, and its place in its session.

use std::fs;

use anyhow::{Result, bail};

use super::mm::Stat;
use crate::image::proto::{PsTree, PsTreeEntry};

const PF_KTHREAD: u64 = 0x0020_0000;

/// Refuses targets rcr must never touch: pid 1, kernel threads, rcr itself and its ancestors.
pub fn check_target(pid: i32) -> Result<Stat> {
    if pid <= 0 {
        bail!("pid {pid}: not a valid pid");
    }
    if pid == 1 {
        bail!("pid 1: refusing to dump the init process");
    }
    let stat = match Stat::read(pid) {
        Ok(stat) => stat,
        Err(_) => bail!("pid {pid}: no such process"),
    };
    if stat.field(9) & PF_KTHREAD != 0 {
        bail!("pid {pid}: refusing to dump a kernel thread");
    }
    if pid as u32 == std::process::id() || is_descendant(std::process::id(), pid) {
        bail!("pid {pid}: refusing to dump rcr itself or one of its ancestors");
    }
    if matches!(stat.state(), 'Z' | 'X') {
        bail!("pid {pid}: is a zombie");
    }
    let threads = fs::read_dir(format!("/proc/{pid}/task"))?.count();
    if threads != 1 {
        bail!("pid {pid}: has {threads} threads; multi-threaded processes are not supported yet");
    }
    if !children(pid).is_empty() {
        bail!("pid {pid}: has child processes; process trees are not supported yet");
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let tracer = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    if tracer != "0" && !tracer.is_empty() {
        bail!("pid {pid}: is being traced by pid {tracer}");
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

pub fn collect(pid: i32, stat: &Stat) -> PsTree {
    PsTree {
        processes: vec![PsTreeEntry {
            pid: pid as u32,
            ppid: 0,
            pgid: stat.field(5) as u32,
            sid: stat.field(6) as u32,
            threads: vec![pid as u32],
        }],
    }
}
