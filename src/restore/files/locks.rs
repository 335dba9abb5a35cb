//! File locks, taken again by their owners once their fds are in place.

use anyhow::Result;

use crate::image::proto::{Fds, LockKind};
use crate::restore::steps::Steps;

/// The process takes its file locks again once its fds are in place and nothing is closed
/// after (a close of any fd on a file drops the process' POSIX locks on it): flock, POSIX
/// (fcntl F_SETLK, owned by the process) and OFD (F_OFD_SETLK, owned by the description).
/// Without waiting: a lock someone else took meanwhile fails the restore.
pub fn restore_locks(steps: &mut Steps, fds: &Fds) -> Result<()> {
    const F_OFD_SETLK: u64 = 37;
    for lock in &fds.locks {
        steps.room(1, 32)?;
        let label = format!(
            "{} {} lock on fd {}",
            lock.kind().as_str_name(),
            if lock.write { "write" } else { "read" },
            lock.fd
        );
        if lock.kind() == LockKind::Flock {
            let how = if lock.write {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            } | libc::LOCK_NB;
            steps.add(label, libc::SYS_flock, &[lock.fd as u64, how as u64]);
            continue;
        }
        // struct flock: short type, short whence, (pad), off_t start, off_t len, pid_t pid.
        let lock_type = if lock.write {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as u16;
        let mut flock = Vec::with_capacity(32);
        flock.extend_from_slice(&lock_type.to_le_bytes());
        flock.extend_from_slice(&(libc::SEEK_SET as u16).to_le_bytes());
        flock.extend_from_slice(&[0u8; 4]);
        flock.extend_from_slice(&lock.start.to_le_bytes());
        flock.extend_from_slice(&lock.length.to_le_bytes());
        flock.extend_from_slice(&[0u8; 8]);
        let flock = steps.put(&flock);
        let cmd = if lock.kind() == LockKind::Ofd {
            F_OFD_SETLK
        } else {
            libc::F_SETLK as u64
        };
        steps.add(label, libc::SYS_fcntl, &[lock.fd as u64, cmd, flock]);
    }
    Ok(())
}
