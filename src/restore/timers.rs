//! Interval timers and POSIX timers. POSIX timers get their original ids through
//! PR_TIMER_CREATE_RESTORE_IDS (Linux 6.17+); on an older kernel a process with POSIX timers
//! is refused (the linear re-creation older tools use is not built).

use anyhow::Result;

use super::steps::Steps;
use crate::image::proto::Timers;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_THREAD_ID: i32 = 4;

fn timespec(ns: u64) -> [u64; 2] {
    [ns / 1_000_000_000, ns % 1_000_000_000]
}

fn timeval(ns: u64) -> [u64; 2] {
    [ns / 1_000_000_000, (ns % 1_000_000_000) / 1000]
}

pub fn restore(steps: &mut Steps, timers: &Timers) -> Result<()> {
    for itimer in &timers.itimers {
        if itimer.value_ns == 0 && itimer.interval_ns == 0 {
            continue;
        }
        steps.room(1, 32)?;
        let [isec, iusec] = timeval(itimer.interval_ns);
        let [vsec, vusec] = timeval(itimer.value_ns.max(1000));
        let value = steps.put_u64s(&[isec, iusec, vsec, vusec]);
        steps.add(
            format!("setitimer({})", itimer.which),
            libc::SYS_setitimer,
            &[itimer.which as u64, value, 0],
        );
    }
    if timers.posix.is_empty() {
        return Ok(());
    }
    let mut posix = timers.posix.clone();
    posix.sort_by_key(|t| t.id);
    steps.room(1, 0)?;
    // Without it, ids would come from the kernel's allocator: refused rather than wrong.
    steps.add(
        "choosing POSIX timer ids (prctl PR_TIMER_CREATE_RESTORE_IDS, Linux 6.17+)",
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0],
    );
    for timer in &posix {
        steps.room(3, 160)?;
        // struct sigevent: value, signo, notify, then the thread id for SIGEV_THREAD_ID.
        let mut sigevent = [0u8; 64];
        sigevent[0..8].copy_from_slice(&timer.value.to_le_bytes());
        sigevent[8..12].copy_from_slice(&timer.signo.to_le_bytes());
        sigevent[12..16].copy_from_slice(&timer.notify.to_le_bytes());
        if timer.notify & SIGEV_THREAD_ID != 0 {
            sigevent[16..20].copy_from_slice(&timer.thread.to_le_bytes());
        }
        let sigevent = steps.put(&sigevent);
        // With restore ids on, the kernel takes the id to create from *timerid.
        let id_slot = steps.put(&(timer.id as u64).to_le_bytes());
        steps.add_expect(
            format!("timer_create(id {})", timer.id),
            libc::SYS_timer_create,
            &[timer.clock as u64, sigevent, id_slot],
            0,
        );
        let [isec, insec] = timespec(timer.interval_ns);
        let [vsec, vnsec] = timespec(timer.value_ns);
        let spec = steps.put_u64s(&[isec, insec, vsec, vnsec]);
        steps.add(
            format!("timer_settime(id {})", timer.id),
            libc::SYS_timer_settime,
            &[timer.id as u64, 0, spec, 0],
        );
    }
    steps.room(1, 0)?;
    steps.add_may_fail(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS, off)",
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0],
    );
    Ok(())
}
