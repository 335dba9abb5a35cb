//! File locks (flock, POSIX, OFD) held by the tree, from /proc/locks.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

use anyhow::{Result, bail};

use crate::image::proto::{FileLock, LockKind};

/// The file locks of the tree, from /proc/locks, each given to the process that must take it
/// again: a POSIX lock to its owner pid, a flock or OFD lock to a process with an fd on the
/// file (its open file description owns it; for several descriptions of one file, the first
/// fd of the tree is taken: an ambiguity /proc/locks cannot resolve).
pub fn collect_locks(pids: &[i32]) -> Result<HashMap<i32, Vec<FileLock>>> {
    let mut locks: HashMap<i32, Vec<FileLock>> = HashMap::new();
    let Ok(text) = fs::read_to_string("/proc/locks") else {
        return Ok(locks);
    };
    let mut fds_by_inode: HashMap<u64, Vec<(i32, i32)>> = HashMap::new();
    for &pid in pids {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut entries: Vec<(i32, u64)> = dir
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                Some((fd, fs::metadata(e.path()).ok()?.ino()))
            })
            .collect();
        entries.sort_unstable();
        for (fd, inode) in entries {
            fds_by_inode.entry(inode).or_default().push((pid, fd));
        }
    }
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
        // "1: POSIX ADVISORY WRITE PID MAJ:MIN:INODE START END"
        if words.len() < 8 {
            continue;
        }
        let owner: i32 = words[4].parse().unwrap_or(0);
        let inode: u64 = words[5]
            .rsplit(':')
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        let Some(holders) = fds_by_inode.get(&inode) else {
            continue;
        };
        let kind = match words[1] {
            "FLOCK" => LockKind::Flock,
            "POSIX" => LockKind::Posix,
            "OFDLCK" => LockKind::Ofd,
            other => bail!("file lock of kind {other} on inode {inode} is not supported"),
        };
        if words[2] != "ADVISORY" {
            bail!("mandatory or lease lock on inode {inode} is not supported");
        }
        let holder = match kind {
            LockKind::Posix => holders.iter().find(|(pid, _)| *pid == owner),
            _ if owner == -1 || pids.contains(&owner) => holders.first(),
            _ => None,
        };
        let Some(&(pid, fd)) = holder else {
            continue;
        };
        let start: u64 = words[6].parse().unwrap_or(0);
        let length = match words[7] {
            "EOF" => 0,
            end => end.parse::<u64>().map_or(0, |end| end - start + 1),
        };
        locks.entry(pid).or_default().push(FileLock {
            fd,
            kind: kind as i32,
            write: words[3] == "WRITE",
            start,
            length,
        });
    }
    Ok(locks)
}
