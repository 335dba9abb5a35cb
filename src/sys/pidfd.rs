//! pidfd_open(2) and pidfd_getfd(2): take a copy of another process' file descriptor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::check;

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the returned fd is ours to own.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A duplicate, in this process, of file descriptor `target_fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: &OwnedFd, target_fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success the returned fd is ours to own.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const KCMP_FILE: i32 = 0;

/// Whether fd `a` of process `pid_a` and fd `b` of `pid_b` are the same open file description
/// (kcmp KCMP_FILE).
pub fn same_open_file(pid_a: i32, a: i32, pid_b: i32, b: i32) -> io::Result<bool> {
    Ok(compare_open_files(pid_a, a, pid_b, b)? == std::cmp::Ordering::Equal)
}

/// kcmp's order of two open file descriptions (consistent within a boot, meaningless
/// otherwise): lets rcr sort descriptions and find equal ones in O(log n).
pub fn compare_open_files(
    pid_a: i32,
    a: i32,
    pid_b: i32,
    b: i32,
) -> io::Result<std::cmp::Ordering> {
    // SAFETY: kcmp takes only integers.
    let ret = check(unsafe { libc::syscall(libc::SYS_kcmp, pid_a, pid_b, KCMP_FILE, a, b) })?;
    Ok(match ret {
        0 => std::cmp::Ordering::Equal,
        1 => std::cmp::Ordering::Less,
        _ => std::cmp::Ordering::Greater,
    })
}
