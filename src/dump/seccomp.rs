//! seccomp: the mode and every filter, oldest first (PTRACE_SECCOMP_GET_FILTER).

use anyhow::{Context, Result};

use crate::image::proto::Seccomp;
use crate::sys::ptrace::seccomp_filter;

pub fn collect(pid: i32) -> Result<Seccomp> {
    let mode = super::creds::seccomp_mode(pid)?;
    let mut filters = Vec::new();
    if mode == 2 {
        while let Some(program) = seccomp_filter(pid, filters.len())
            .with_context(|| format!("pid {pid}: cannot read seccomp filter {}", filters.len()))?
        {
            filters.push(program);
        }
    }
    Ok(Seccomp { mode, filters })
}
