//! File locks (flock, POSIX, OFD) held by the tree, from the `lock:` lines of each fd's
//! fdinfo: the kernel lists there exactly the locks whose file is this open file description
//! (flock and OFD locks: owned by the description, so shown in every process that shares it;
//! POSIX locks: only in the process that owns them).

use anyhow::{Result, bail};

use crate::image::proto::{FileLock, LockKind};

/// The locks of one fd's fdinfo text (lines "lock:\t1: POSIX  ADVISORY  WRITE PID
/// MAJ:MIN:INODE START END"). `description_first_in_tree`: flock and OFD locks are taken
/// from the first fd of their description only; `description_first_in_process`: POSIX locks
/// from the first fd of the description in each process.
pub(super) fn of_fd(
    pid: i32,
    fd: i32,
    fdinfo: &str,
    description_first_in_tree: bool,
    description_first_in_process: bool,
) -> Result<Vec<FileLock>> {
    let mut locks = Vec::new();
    for line in fdinfo.lines().filter_map(|l| l.strip_prefix("lock:")) {
        let words: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
        if words.len() < 8 {
            bail!("pid {pid} fd {fd}: unreadable lock line {line:?}");
        }
        let kind = match words[1] {
            "FLOCK" => LockKind::Flock,
            "POSIX" => LockKind::Posix,
            "OFDLCK" => LockKind::Ofd,
            other => {
                crate::refuse!("pid {pid} fd {fd}: file lock of kind {other} is not supported")
            }
        };
        if words[2] != "ADVISORY" {
            crate::refuse!("pid {pid} fd {fd}: mandatory lock or lease is not supported");
        }
        let wanted = match kind {
            LockKind::Posix => description_first_in_process,
            _ => description_first_in_tree,
        };
        if !wanted {
            continue;
        }
        let start: u64 = words[6].parse()?;
        let length = match words[7] {
            "EOF" => 0,
            end => end.parse::<u64>()? - start + 1,
        };
        locks.push(FileLock {
            fd,
            kind: kind as i32,
            write: words[3] == "WRITE",
            start,
            length,
        });
    }
    Ok(locks)
}
