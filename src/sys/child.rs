//! Raw, allocation-free system calls for a freshly cloned child before it is handed to the
//! restorer: placing file descriptors, session setup, waiting to be seized.

use std::io;

use super::check;

/// dup3(old, new, O_CLOEXEC if cloexec).
pub fn dup_to(old: i32, new: i32, cloexec: bool) -> io::Result<()> {
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    if old == new {
        // dup3 refuses equal fds; only the close-on-exec flag needs setting.
        let fd_flags = if cloexec { libc::FD_CLOEXEC } else { 0 };
        // SAFETY: fcntl on an fd number; no memory is passed.
        check(unsafe { libc::fcntl(new, libc::F_SETFD, fd_flags) } as libc::c_long)?;
        return Ok(());
    }
    // SAFETY: dup3 on fd numbers; no memory is passed.
    check(unsafe { libc::dup3(old, new, flags) } as libc::c_long)?;
    Ok(())
}

/// Closes every fd in first..=last.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range on fd numbers; no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) })?;
    Ok(())
}

pub fn write_all(fd: i32, bytes: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: the kernel reads from a live slice within its bounds.
        let n = check(unsafe {
            libc::write(fd, bytes[done..].as_ptr().cast(), bytes.len() - done) as libc::c_long
        })?;
        done += n as usize;
    }
    Ok(())
}

pub fn fchdir(fd: i32) -> io::Result<()> {
    // SAFETY: fchdir on an fd number.
    check(unsafe { libc::fchdir(fd) } as libc::c_long)?;
    Ok(())
}

/// chroot(".") : the current directory becomes the root.
pub fn chroot_here() -> io::Result<()> {
    // SAFETY: a NUL-terminated static path.
    check(unsafe { libc::chroot(c".".as_ptr()) } as libc::c_long)?;
    Ok(())
}

pub fn set_pdeathsig(signal: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) }
            as libc::c_long,
    )?;
    Ok(())
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() } as libc::c_long)?;
    Ok(())
}

pub fn setpgid_self() -> io::Result<()> {
    setpgid(0)
}

/// Moves this process into process group `pgid` (0: a group of its own).
pub fn setpgid(pgid: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::setpgid(0, pgid) } as libc::c_long)?;
    Ok(())
}

/// Reads up to `buf.len()` bytes; 0 at end of file.
pub fn read(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into a live buffer.
    let n = check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) as libc::c_long })?;
    Ok(n as usize)
}

/// Ends this process the way a dumped zombie ended: with exit code or terminating signal
/// taken from a wait status.
pub fn exit_like(wait_status: i32) -> ! {
    let signal = wait_status & 0x7f;
    if signal != 0 {
        // SAFETY: resetting a disposition and signalling ourselves take integers only.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::kill(libc::getpid(), signal);
        }
    }
    // SAFETY: _exit ends the process without running anything of the parent's.
    unsafe { libc::_exit((wait_status >> 8) & 0xff) }
}

/// Sleeps until a tracer takes over; never returns.
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: pause has no arguments; a signal or ptrace interrupt ends it, and we loop.
        unsafe { libc::pause() };
    }
}
