//! Pending signals, queued again in the task's own context (a task may queue any siginfo to
//! itself): the process queue by the leader, each thread's queue by that thread, in order.
//! They stay pending behind the restorer's full signal mask until the task's own mask is set.

use anyhow::Result;

use super::steps::Steps;
use crate::image::proto::{SigInfo, Signals};

fn queue_all(
    steps: &mut Steps,
    pending: &[SigInfo],
    what: &str,
    syscall: impl Fn(u64, u64) -> (i64, Vec<u64>),
) -> Result<()> {
    // SIGKILL and SIGSTOP are never left queued by a live task; queueing them would end or
    // stop the task being restored.
    for info in pending
        .iter()
        .filter(|i| i.signo != libc::SIGKILL as u32 && i.signo != libc::SIGSTOP as u32)
    {
        steps.room(1, info.raw.len())?;
        let address = steps.put(&info.raw);
        let (nr, args) = syscall(u64::from(info.signo), address);
        steps.add(format!("queue {what} signal {}", info.signo), nr, &args);
    }
    Ok(())
}

/// The process-wide queue; run by the leader. `tgid` is the pid the task knows.
pub fn restore_shared(steps: &mut Steps, signals: &Signals, tgid: u32) -> Result<()> {
    queue_all(steps, &signals.shared, "process", |signo, info| {
        (
            libc::SYS_rt_sigqueueinfo,
            vec![u64::from(tgid), signo, info],
        )
    })
}

/// Thread `tid`'s own queue; run by that thread.
pub fn restore_thread(steps: &mut Steps, signals: &Signals, tgid: u32, tid: u32) -> Result<()> {
    let Some(thread) = signals.threads.iter().find(|t| t.tid == tid) else {
        return Ok(());
    };
    queue_all(steps, &thread.pending, "thread", |signo, info| {
        (
            libc::SYS_rt_tgsigqueueinfo,
            vec![u64::from(tgid), u64::from(tid), signo, info],
        )
    })
}
