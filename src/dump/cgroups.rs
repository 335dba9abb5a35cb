//! The cgroups a process is in, from /proc/PID/cgroup.

use std::fs;

use anyhow::{Context, Result};

use crate::image::proto::{CgroupPath, Cgroups};

pub fn collect(pid: i32) -> Result<Cgroups> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("pid {pid}: cannot read its cgroups"))?;
    let paths = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            Some(CgroupPath {
                hierarchy: parts.next()?.parse().ok()?,
                controllers: parts.next()?.to_owned(),
                path: parts.next()?.to_owned(),
            })
        })
        .collect();
    Ok(Cgroups { paths })
}
