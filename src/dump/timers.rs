//! Interval timers (getitimer) and POSIX timers (/proc/PID/timers for ids and notification,
//! timer_gettime in the task for the time left).

use std::fs;

use anyhow::{Context, Result, bail};

use crate::image::proto::{ITimer, PosixTimer, Timers};
use crate::parasite::Parasite;

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;

/// Parses /proc/PID/timers: blocks that start with an `ID:` line.
fn parse_proc_timers(pid: i32, text: &str) -> Result<Vec<PosixTimer>> {
    let mut timers: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("ID: ") {
            timers.push(PosixTimer {
                id: id.trim().parse()?,
                ..Default::default()
            });
            continue;
        }
        let Some(timer) = timers.last_mut() else {
            continue;
        };
        let id = timer.id;
        if let Some(v) = line.strip_prefix("signal: ") {
            let (signo, value) = v.split_once('/').context("signal line")?;
            timer.signo = signo.trim().parse()?;
            timer.value = u64::from_str_radix(value.trim().trim_start_matches("0x"), 16)?;
        } else if let Some(v) = line.strip_prefix("notify: ") {
            let (how, target) = v.split_once('/').context("notify line")?;
            let mut notify = match how {
                "signal" => SIGEV_SIGNAL,
                "none" => SIGEV_NONE,
                "thread" => SIGEV_THREAD,
                other => bail!("pid {pid}: timer {id}: unknown notification {other}"),
            };
            if let Some(tid) = target.strip_prefix("tid.") {
                notify |= SIGEV_THREAD_ID;
                timer.thread = tid.trim().parse()?;
            }
            timer.notify = notify;
        } else if let Some(v) = line.strip_prefix("ClockID: ") {
            timer.clock = v.trim().parse()?;
        }
    }
    Ok(timers)
}

fn timeval_ns(bytes: &[u8]) -> u64 {
    let sec = i64::from_le_bytes(bytes[0..8].try_into().unwrap());
    let usec = i64::from_le_bytes(bytes[8..16].try_into().unwrap());
    (sec as u64) * 1_000_000_000 + (usec as u64) * 1000
}

fn timespec_ns(bytes: &[u8]) -> u64 {
    let sec = i64::from_le_bytes(bytes[0..8].try_into().unwrap());
    let nsec = i64::from_le_bytes(bytes[8..16].try_into().unwrap());
    (sec as u64) * 1_000_000_000 + nsec as u64
}

pub fn collect(parasite: &mut Parasite, pid: i32) -> Result<Timers> {
    let text = fs::read_to_string(format!("/proc/{pid}/timers"))
        .with_context(|| format!("pid {pid}: cannot read its POSIX timers"))?;
    let mut posix = parse_proc_timers(pid, &text)?;
    let mut batch = parasite.batch();
    let itimer_out = batch.reserve(32 * 3);
    for which in 0..3u64 {
        batch.syscall(libc::SYS_getitimer, &[which, itimer_out + which * 32]);
    }
    let spec_out = batch.reserve(32 * posix.len().max(1));
    let mut overruns = Vec::new();
    for (i, timer) in posix.iter().enumerate() {
        batch.syscall(
            libc::SYS_timer_gettime,
            &[timer.id as u64, spec_out + (i * 32) as u64],
        );
        overruns.push(batch.syscall(libc::SYS_timer_getoverrun, &[timer.id as u64]));
    }
    let result = parasite.run(&batch)?;
    if let Some((index, errno)) = result.failure() {
        bail!(
            "pid {pid}: reading timers failed at step {index}: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
    let raw = parasite.read(itimer_out, 96)?;
    let itimers = (0..3)
        .map(|which| {
            let b = &raw[which * 32..which * 32 + 32];
            ITimer {
                which: which as i32,
                interval_ns: timeval_ns(&b[0..16]),
                value_ns: timeval_ns(&b[16..32]),
            }
        })
        .collect();
    if !posix.is_empty() {
        let raw = parasite.read(spec_out, 32 * posix.len())?;
        for (i, timer) in posix.iter_mut().enumerate() {
            let b = &raw[i * 32..i * 32 + 32];
            timer.interval_ns = timespec_ns(&b[0..16]);
            timer.value_ns = timespec_ns(&b[16..32]);
            timer.overrun = result.results[overruns[i]] as i32;
        }
    }
    Ok(Timers { itimers, posix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_timers() {
        let text = "ID: 0\nsignal: 39/0000000000005555\nnotify: signal/pid.77\nClockID: 1\n\
                    ID: 3\nsignal: 40/0000000000000000\nnotify: signal/tid.78\nClockID: 0\n";
        let timers = parse_proc_timers(77, text).unwrap();
        assert_eq!(timers.len(), 2);
        assert_eq!(
            (timers[0].id, timers[0].signo, timers[0].value),
            (0, 39, 0x5555)
        );
        assert_eq!((timers[0].clock, timers[0].notify), (1, SIGEV_SIGNAL));
        assert_eq!(timers[1].notify, SIGEV_SIGNAL | SIGEV_THREAD_ID);
        assert_eq!(timers[1].thread, 78);
    }
}
