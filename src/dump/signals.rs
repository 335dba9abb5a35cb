//! Pending signals: the process-wide queue and each thread's own, read with
//! PTRACE_PEEKSIGINFO (the queues are left as they are).

use anyhow::{Context, Result};

use crate::image::proto::{SigInfo, Signals, ThreadSignals};
use crate::sys::ptrace::{SIGINFO_SIZE, peek_siginfo};

fn to_proto(raw: &[u8; SIGINFO_SIZE]) -> SigInfo {
    SigInfo {
        signo: u32::from_le_bytes(raw[0..4].try_into().unwrap()),
        code: i32::from_le_bytes(raw[8..12].try_into().unwrap()),
        raw: raw.to_vec(),
    }
}

/// Whether a queued signal is the SIGCONT rcr itself sent to end a group stop (see
/// tree::end_group_stop): not the task's, so not saved.
fn sent_by_rcr(raw: &[u8; SIGINFO_SIZE]) -> bool {
    let signo = i32::from_le_bytes(raw[0..4].try_into().unwrap());
    let code = i32::from_le_bytes(raw[8..12].try_into().unwrap());
    let sender = u32::from_le_bytes(raw[16..20].try_into().unwrap());
    signo == libc::SIGCONT && code == 0 && sender == std::process::id()
}

pub fn collect(pid: i32, tids: &[i32]) -> Result<Signals> {
    let mut shared = peek_siginfo(pid, true)
        .with_context(|| format!("pid {pid}: cannot read its pending signals"))?;
    if let Some(ours) = shared.iter().position(sent_by_rcr) {
        shared.remove(ours);
    }
    let mut threads = Vec::new();
    for &tid in tids {
        let pending = peek_siginfo(tid, false)
            .with_context(|| format!("tid {tid}: cannot read its pending signals"))?;
        if !pending.is_empty() {
            threads.push(ThreadSignals {
                tid: tid as u32,
                pending: pending.iter().map(to_proto).collect(),
            });
        }
    }
    Ok(Signals {
        shared: shared.iter().map(to_proto).collect(),
        threads,
    })
}
