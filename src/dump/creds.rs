//! Credentials: uids, gids, groups and capability sets from /proc/PID/status, securebits from
//! the task itself.

use std::fs;

use anyhow::{Context, Result};

use crate::image::proto::Creds;

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

fn numbers(status: &str, name: &str) -> Vec<u32> {
    field(status, name)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn hex(status: &str, name: &str) -> u64 {
    field(status, name)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}

/// Everything but securebits, which only the task can read (PR_GET_SECUREBITS).
pub fn collect(pid: i32) -> Result<Creds> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("pid {pid}: cannot read its credentials"))?;
    Ok(Creds {
        uids: numbers(&status, "Uid:"),
        gids: numbers(&status, "Gid:"),
        groups: numbers(&status, "Groups:"),
        cap_inheritable: hex(&status, "CapInh:"),
        cap_permitted: hex(&status, "CapPrm:"),
        cap_effective: hex(&status, "CapEff:"),
        cap_bounding: hex(&status, "CapBnd:"),
        cap_ambient: hex(&status, "CapAmb:"),
        securebits: 0,
        no_new_privs: field(&status, "NoNewPrivs:") == Some("1"),
    })
}

/// The seccomp mode from /proc/PID/status (0 off, 1 strict, 2 filter).
pub fn seccomp_mode(pid: i32) -> Result<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(field(&status, "Seccomp:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}
