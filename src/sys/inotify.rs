//! inotify(7) instances and open_by_handle_at(2), which finds a watched inode again from the
//! file handle inotify's fdinfo shows.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::check;

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a path"))
}

/// inotify_init1(flags): a new inotify instance without watches.
pub fn init(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with an integer argument.
    owned(unsafe { libc::syscall(libc::SYS_inotify_init1, flags) })
}

/// inotify_add_watch: the watch descriptor the kernel gives (or the existing one of that
/// inode in this instance).
pub fn add_watch(fd: &impl AsRawFd, path: &Path, mask: u32) -> io::Result<i32> {
    let path = c_path(path)?;
    // SAFETY: the kernel reads a NUL-terminated path that lives across the call.
    let wd = check(unsafe {
        libc::syscall(
            libc::SYS_inotify_add_watch,
            fd.as_raw_fd(),
            path.as_ptr(),
            mask,
        )
    })?;
    Ok(wd as i32)
}

/// inotify_rm_watch (the kernel queues an IN_IGNORED event for `wd`).
pub fn rm_watch(fd: &impl AsRawFd, wd: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_inotify_rm_watch, fd.as_raw_fd(), wd) })?;
    Ok(())
}

/// FIONREAD: the bytes waiting to be read (an inotify instance: its queued events).
pub fn queued_bytes(fd: &impl AsRawFd) -> io::Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into a live variable.
    check(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) }
            as libc::c_long,
    )?;
    Ok(n as u32)
}

/// open_by_handle_at(AT_FDCWD, handle, flags): the inode behind a file handle (`handle_type`
/// and `handle` as name_to_handle_at or fdinfo give them) on the filesystem of the calling
/// thread's working directory. (A mount fd would have to be a real open, not O_PATH, and
/// opening a directory can queue IN_OPEN events to a watcher: the caller rather moves the
/// working directory of a thread of its own, with fchdir to an O_PATH fd, which is silent.)
pub fn open_by_handle_at_cwd(handle_type: i32, handle: &[u8], flags: i32) -> io::Result<OwnedFd> {
    // struct file_handle { u32 handle_bytes; int handle_type; unsigned char f_handle[]; },
    // built in u32 words so that it is aligned.
    let mut words = vec![handle.len() as u32, handle_type as u32];
    words.extend(handle.chunks(4).map(|chunk| {
        let mut bytes = [0u8; 4];
        bytes[..chunk.len()].copy_from_slice(chunk);
        u32::from_ne_bytes(bytes)
    }));
    // SAFETY: the kernel reads a struct file_handle of handle_bytes bytes from `words`, which
    // holds the header and at least that many bytes, and lives across the call.
    owned(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            libc::AT_FDCWD,
            words.as_ptr(),
            flags,
        )
    })
}
