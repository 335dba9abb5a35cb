//! Resource limits (prlimit64 in the task), and per thread: nice, scheduler policy and
//! priority, CPU affinity, I/O priority and timer slack (from outside).

use anyhow::{Context, Result, bail};

use crate::image::proto::{Limits, RLimit, ThreadSched};
use crate::parasite::Parasite;
use crate::sys;

pub const RLIMITS: i32 = 16;

fn thread_sched(pid: i32, tid: i32) -> Result<ThreadSched> {
    let stat = super::mm::Stat::read_task(pid, tid)?;
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(tid))
        .with_context(|| format!("tid {tid}: cannot read its CPU affinity"))?;
    let count = nix::sched::CpuSet::count();
    let mut affinity = vec![0u64; count.div_ceil(64)];
    for cpu in 0..count {
        if cpus.is_set(cpu).unwrap_or(false) {
            affinity[cpu / 64] |= 1 << (cpu % 64);
        }
    }
    Ok(ThreadSched {
        tid: tid as u32,
        policy: stat.field(41) as i32,
        reset_on_fork: false,
        priority: stat.field(40) as i32,
        nice: stat.field(19) as i64 as i32,
        affinity,
        ioprio: sys::ptrace::ioprio(tid).unwrap_or(0),
        // Read in the thread itself (task::collect_thread_in_task).
        timer_slack_ns: 0,
    })
}

pub fn collect(parasite: &mut Parasite, pid: i32, tids: &[i32]) -> Result<Limits> {
    let mut batch = parasite.batch();
    let out = batch.reserve(16 * RLIMITS as usize);
    for resource in 0..RLIMITS {
        batch.syscall(
            libc::SYS_prlimit64,
            &[0, resource as u64, 0, out + 16 * resource as u64],
        );
    }
    let result = parasite.run(&batch)?;
    if let Some((index, errno)) = result.failure() {
        bail!(
            "pid {pid}: reading rlimit {index} failed: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
    let raw = parasite.read(out, 16 * RLIMITS as usize)?;
    let rlimits = (0..RLIMITS as usize)
        .map(|r| RLimit {
            resource: r as i32,
            soft: u64::from_le_bytes(raw[r * 16..r * 16 + 8].try_into().unwrap()),
            hard: u64::from_le_bytes(raw[r * 16 + 8..r * 16 + 16].try_into().unwrap()),
        })
        .collect();
    let threads = tids
        .iter()
        .map(|&tid| thread_sched(pid, tid))
        .collect::<Result<Vec<_>>>()?;
    Ok(Limits {
        rlimits,
        nice: threads.first().map_or(0, |t| t.nice),
        threads,
    })
}
