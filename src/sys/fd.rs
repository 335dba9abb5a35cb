//! File descriptor placement that needs the raw number.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::check;

/// A close-on-exec duplicate of `fd` numbered `floor` or above.
pub fn dup_above(fd: &impl AsRawFd, floor: i32) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on fd numbers; no memory is passed.
    let new = check(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) } as libc::c_long,
    )?;
    // SAFETY: `new` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new as i32) })
}

/// A close-on-exec duplicate of `fd` numbered exactly `target`, if that number is free (never
/// replaces an open fd); None when it is taken.
pub fn dup_at_if_free(fd: &impl AsRawFd, target: i32) -> io::Result<Option<OwnedFd>> {
    let copy = dup_above(fd, target)?;
    if copy.as_raw_fd() == target {
        Ok(Some(copy))
    } else {
        Ok(None)
    }
}
