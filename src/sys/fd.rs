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

/// Takes fd number `fd` that rcr received open from its caller (`--inherit-fd fd[N]:...`): a
/// close-on-exec duplicate of it numbered 3 or above, the number itself closed when it is
/// not a standard stream (so that rcr holds no second copy of it). EBADF if it is not open.
/// Call it before rcr opens anything of its own: a number rcr itself opened would be taken
/// for the caller's.
pub fn take_inherited(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor number; no memory is passed.
    let copy = owned(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) } as libc::c_long)?;
    if fd > 2 {
        // SAFETY: rcr never owns this number: its caller opened it, and rcr opened nothing
        // yet; closing it leaves only the copy.
        unsafe { libc::close(fd) };
    }
    Ok(copy)
}

/// Whether descriptor number `fd` is open in rcr.
pub fn is_open(fd: i32) -> bool {
    // SAFETY: fcntl on a descriptor number; no memory is passed.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// signalfd(-1, mask, flags): a new signalfd for the signals of `mask` (bit n-1 = signal n).
pub fn signalfd(mask: u64, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: the kernel reads 8 bytes of mask from a live u64.
    owned(unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8, flags) })
}

/// A timerfd on `clock`, armed to fire in `value_ns` (0: disarmed) and every `interval_ns`.
pub fn timerfd(
    clock: i32,
    flags: i32,
    value_ns: u64,
    interval_ns: u64,
    ticks: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = owned(unsafe { libc::syscall(libc::SYS_timerfd_create, clock, flags) })?;
    let spec = |ns: u64| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    let its = libc::itimerspec {
        it_interval: spec(interval_ns),
        it_value: spec(value_ns),
    };
    // SAFETY: the kernel reads a live itimerspec.
    check(unsafe {
        libc::syscall(
            libc::SYS_timerfd_settime,
            fd.as_raw_fd(),
            0,
            &its as *const libc::itimerspec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    })?;
    if ticks > 0 {
        // TFD_IOC_SET_TICKS = _IOW('T', 0, u64): the expirations not yet read.
        const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
        // SAFETY: the kernel reads one u64 from a live variable.
        check(unsafe {
            libc::syscall(
                libc::SYS_ioctl,
                fd.as_raw_fd(),
                TFD_IOC_SET_TICKS,
                &ticks as *const u64,
            )
        })?;
    }
    Ok(fd)
}

/// A new, empty epoll instance.
pub fn epoll(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with an integer argument.
    owned(unsafe { libc::syscall(libc::SYS_epoll_create1, flags) })
}

pub const F_SETSIG: i32 = 10;
pub const F_GETSIG: i32 = 11;
pub const F_SETOWN_EX: i32 = 15;
pub const F_GETOWN_EX: i32 = 16;

/// struct f_owner_ex.
#[repr(C)]
#[derive(Default)]
struct OwnerEx {
    kind: i32,
    pid: i32,
}

/// Who gets SIGIO/SIGURG for an open file description (F_GETOWN_EX: kind and pid, pid 0 for
/// nobody) and with which signal (F_GETSIG, 0 for SIGIO).
pub fn owner_and_signal(fd: &impl AsRawFd) -> io::Result<(i32, i32, i32)> {
    let mut owner = OwnerEx::default();
    // SAFETY: the kernel writes a struct f_owner_ex into a live one.
    check(
        unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut owner as *mut OwnerEx) }
            as libc::c_long,
    )?;
    // SAFETY: fcntl with no memory argument.
    let signal = check(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) } as libc::c_long)?;
    Ok((owner.kind, owner.pid, signal as i32))
}

/// Runs `work` with `dir` as its working directory, in a thread of its own whose working
/// directory is unshared from rcr's (rcr's own stays as it is): for calls that take a path
/// relative to a directory and have no *at() form (bind and connect on a relative unix
/// socket path, open_by_handle_at with a mount that cannot be an O_PATH fd).
pub fn in_directory<R: Send>(
    dir: std::os::fd::BorrowedFd<'_>,
    work: impl FnOnce() -> io::Result<R> + Send,
) -> io::Result<R> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<R> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                nix::unistd::fchdir(dir)?;
                work()
            })
            .join()
            .map_err(|_| io::Error::other("the thread working in a directory panicked"))?
    })
}
