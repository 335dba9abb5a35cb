//! Puts a restored process back into the cgroups it was dumped from (v2 and v1 hierarchies
//! mounted on this machine), creating a missing cgroup directory.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::image::proto::Cgroups;

/// cgroup mounts of this machine: (hierarchy controllers as in /proc/PID/cgroup, mount point).
fn mounts() -> Vec<(String, PathBuf)> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            let _source = right.next()?;
            let options = right.next().unwrap_or("");
            match fstype {
                "cgroup2" => Some((String::new(), PathBuf::from(mount_point))),
                "cgroup" => {
                    let controllers: Vec<&str> = options
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime")
                        })
                        .filter(|o| !o.starts_with("release_agent") && *o != "xattr")
                        .collect();
                    Some((controllers.join(","), PathBuf::from(mount_point)))
                }
                _ => None,
            }
        })
        .collect()
}

fn current(pid: i32) -> Result<Cgroups> {
    crate::dump::cgroups::collect(pid)
}

/// `pid` is the process as rcr sees it.
pub fn restore(pid: i32, cgroups: &Cgroups) -> Result<()> {
    let now = current(pid)?;
    let mounts = mounts();
    for wanted in &cgroups.paths {
        if now
            .paths
            .iter()
            .any(|p| p.controllers == wanted.controllers && p.path == wanted.path)
        {
            continue;
        }
        let Some((_, mount)) = mounts.iter().find(|(c, _)| *c == wanted.controllers) else {
            crate::log::info(&format!(
                "pid {pid}: cgroup hierarchy '{}' is not mounted here: left as it is",
                wanted.controllers
            ));
            continue;
        };
        let dir = mount.join(wanted.path.trim_start_matches('/'));
        fs::create_dir_all(&dir)
            .with_context(|| format!("pid {pid}: cannot create cgroup {}", dir.display()))?;
        fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("pid {pid}: cannot move it into cgroup {}", dir.display()))?;
    }
    Ok(())
}
