//! Resource limits (process-wide) and per-thread nice, scheduler policy and priority, CPU
//! affinity, I/O priority and timer slack, all set in the task's context before it drops
//! privileges.

use anyhow::{Result, bail};

use super::steps::Steps;
use crate::image::proto::{Limits, RLimit, ThreadSched};

const RLIMIT_NAMES: [&str; 16] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

fn name(limit: &RLimit) -> &'static str {
    RLIMIT_NAMES
        .get(limit.resource as usize)
        .copied()
        .unwrap_or("RLIMIT_?")
}

/// Refuses limits rcr cannot grant: a hard limit above rcr's own, without CAP_SYS_RESOURCE.
pub fn check(pid: u32, limits: &Limits) -> Result<()> {
    let privileged = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false);
    if privileged {
        return Ok(());
    }
    for limit in &limits.rlimits {
        let Some(resource) = resource_of(limit.resource) else {
            continue;
        };
        let (_, own_hard) = nix::sys::resource::getrlimit(resource)?;
        if limit.hard > own_hard {
            bail!(
                "pid {pid}: {} hard limit {} is above what rcr may grant here ({own_hard}; CAP_SYS_RESOURCE is missing)",
                name(limit),
                limit.hard
            );
        }
    }
    Ok(())
}

fn resource_of(index: i32) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource::*;
    Some(match index {
        0 => RLIMIT_CPU,
        1 => RLIMIT_FSIZE,
        2 => RLIMIT_DATA,
        3 => RLIMIT_STACK,
        4 => RLIMIT_CORE,
        5 => RLIMIT_RSS,
        6 => RLIMIT_NPROC,
        7 => RLIMIT_NOFILE,
        8 => RLIMIT_MEMLOCK,
        9 => RLIMIT_AS,
        10 => RLIMIT_LOCKS,
        11 => RLIMIT_SIGPENDING,
        12 => RLIMIT_MSGQUEUE,
        13 => RLIMIT_NICE,
        14 => RLIMIT_RTPRIO,
        15 => RLIMIT_RTTIME,
        _ => return None,
    })
}

pub fn restore_process(steps: &mut Steps, limits: &Limits) -> Result<()> {
    for limit in &limits.rlimits {
        steps.room(1, 16)?;
        let new = steps.put_u64s(&[limit.soft, limit.hard]);
        steps.add(
            format!("prlimit64({})", name(limit)),
            libc::SYS_prlimit64,
            &[0, limit.resource as u64, new, 0],
        );
    }
    Ok(())
}

const PR_SET_TIMERSLACK: u64 = 29;
const IOPRIO_WHO_PROCESS: u64 = 1;

/// One thread's scheduling; run by that thread.
pub fn restore_thread(steps: &mut Steps, sched: &ThreadSched) -> Result<()> {
    steps.room(5, 128 + sched.affinity.len() * 8)?;
    steps.add(
        "setpriority",
        libc::SYS_setpriority,
        &[libc::PRIO_PROCESS as u64, 0, sched.nice as i64 as u64],
    );
    let param = steps.put_u64s(&[sched.priority as u32 as u64]);
    let mut policy = sched.policy as u64;
    if sched.reset_on_fork {
        policy |= libc::SCHED_RESET_ON_FORK as u64;
    }
    steps.add(
        "sched_setscheduler",
        libc::SYS_sched_setscheduler,
        &[0, policy, param],
    );
    if !sched.affinity.is_empty() {
        let mask = steps.put_u64s(&sched.affinity);
        steps.add(
            "sched_setaffinity",
            libc::SYS_sched_setaffinity,
            &[0, (sched.affinity.len() * 8) as u64, mask],
        );
    }
    steps.add(
        "ioprio_set",
        libc::SYS_ioprio_set,
        &[IOPRIO_WHO_PROCESS, 0, sched.ioprio as u64],
    );
    steps.add(
        "prctl(PR_SET_TIMERSLACK)",
        libc::SYS_prctl,
        &[PR_SET_TIMERSLACK, sched.timer_slack_ns, 0, 0, 0],
    );
    Ok(())
}
