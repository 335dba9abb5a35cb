//! timerfd: clock, time left and interval, from fdinfo.

use anyhow::{Context, Result};

use super::OneFd;
use crate::image::proto::TimerFd;

/// "(sec, nsec)" of timerfd fdinfo, in ns.
fn pair_ns(text: &str) -> Option<u64> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (sec, nsec) = inner.split_once(',')?;
    Some(sec.trim().parse::<u64>().ok()? * 1_000_000_000 + nsec.trim().parse::<u64>().ok()?)
}

pub(super) fn dump(one: &OneFd) -> Result<TimerFd> {
    let (pid, fd, info, flags) = (one.pid, one.fd, one.info, one.flags);
    let missing = || format!("pid {pid} fd {fd}: unreadable timerfd fdinfo");
    Ok(TimerFd {
        clock: info
            .field("clockid:")
            .and_then(|v| v.parse().ok())
            .with_context(missing)?,
        flags,
        value_ns: info
            .field("it_value:")
            .and_then(pair_ns)
            .with_context(missing)?,
        interval_ns: info
            .field("it_interval:")
            .and_then(pair_ns)
            .with_context(missing)?,
        ticks: info
            .field("ticks:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}
