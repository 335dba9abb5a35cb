//! Terminal ioctls: termios, window size, the state of a pty master, input pushed into a line
//! discipline, and (allocation-free, for a new process before it is seized) the controlling
//! terminal and its foreground process group.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::check;

/// The kernel's struct termios2 (flags, line discipline, control characters, speeds).
pub type Termios = libc::termios2;

/// An ioctl whose argument points at `T`, read or written by the kernel.
fn ioctl_ptr<T>(fd: BorrowedFd, request: libc::Ioctl, arg: *mut T) -> io::Result<()> {
    // SAFETY: `arg` points at a live, properly sized T for the duration of the call; the
    // request numbers used in this module take exactly such a pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) } as libc::c_long)?;
    Ok(())
}

fn get_int(fd: BorrowedFd, request: libc::Ioctl) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    ioctl_ptr(fd, request, &mut value)?;
    Ok(value)
}

fn set_int(fd: BorrowedFd, request: libc::Ioctl, value: i32) -> io::Result<()> {
    let mut value: libc::c_int = value;
    ioctl_ptr(fd, request, &mut value)
}

/// TCGETS2: the terminal's settings (through a master: its slave's).
pub fn get_termios(fd: BorrowedFd) -> io::Result<Termios> {
    let mut termios = Termios {
        c_iflag: 0,
        c_oflag: 0,
        c_cflag: 0,
        c_lflag: 0,
        c_line: 0,
        c_cc: [0; 19],
        c_ispeed: 0,
        c_ospeed: 0,
    };
    ioctl_ptr(fd, libc::TCGETS2, &mut termios)?;
    Ok(termios)
}

/// TCSETS2: new settings at once (no draining, no flushing).
pub fn set_termios(fd: BorrowedFd, termios: &Termios) -> io::Result<()> {
    let mut copy = *termios;
    ioctl_ptr(fd, libc::TCSETS2, &mut copy)
}

/// TIOCGWINSZ: rows, columns, x and y pixels.
pub fn get_winsize(fd: BorrowedFd) -> io::Result<[u16; 4]> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    ioctl_ptr(fd, libc::TIOCGWINSZ, &mut size)?;
    Ok([size.ws_row, size.ws_col, size.ws_xpixel, size.ws_ypixel])
}

pub fn set_winsize(fd: BorrowedFd, size: [u16; 4]) -> io::Result<()> {
    let mut size = libc::winsize {
        ws_row: size[0],
        ws_col: size[1],
        ws_xpixel: size[2],
        ws_ypixel: size[3],
    };
    ioctl_ptr(fd, libc::TIOCSWINSZ, &mut size)
}

/// TIOCGETD: the line discipline (0: N_TTY).
pub fn line_discipline(fd: BorrowedFd) -> io::Result<i32> {
    get_int(fd, libc::TIOCGETD)
}

/// TIOCGPTN: the N of /dev/pts/N, from a master.
pub fn pty_index(fd: BorrowedFd) -> io::Result<u32> {
    let mut index: libc::c_uint = 0;
    ioctl_ptr(fd, libc::TIOCGPTN, &mut index)?;
    Ok(index)
}

/// TIOCGPKT: whether the master is in packet mode.
pub fn packet_mode(fd: BorrowedFd) -> io::Result<bool> {
    Ok(get_int(fd, libc::TIOCGPKT)? != 0)
}

/// TIOCPKT on a master (switching it on clears a pending packet status).
pub fn set_packet_mode(fd: BorrowedFd, on: bool) -> io::Result<()> {
    set_int(fd, libc::TIOCPKT, on as i32)
}

/// TIOCGPTLCK: whether the slave of this master is locked (cannot be opened).
pub fn locked(fd: BorrowedFd) -> io::Result<bool> {
    Ok(get_int(fd, libc::TIOCGPTLCK)? != 0)
}

/// TIOCSPTLCK on a master.
pub fn set_locked(fd: BorrowedFd, on: bool) -> io::Result<()> {
    set_int(fd, libc::TIOCSPTLCK, on as i32)
}

/// TIOCGEXCL: exclusive mode (further opens refused but to CAP_SYS_ADMIN).
pub fn exclusive(fd: BorrowedFd) -> io::Result<bool> {
    Ok(get_int(fd, libc::TIOCGEXCL)? != 0)
}

/// TIOCEXCL or TIOCNXCL.
pub fn set_exclusive(fd: BorrowedFd, on: bool) -> io::Result<()> {
    let request = if on { libc::TIOCEXCL } else { libc::TIOCNXCL };
    // SAFETY: TIOCEXCL and TIOCNXCL take no argument.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request) } as libc::c_long)?;
    Ok(())
}

/// FIONREAD: the bytes a read could return now (in canonical mode: complete lines only).
pub fn readable(fd: BorrowedFd) -> io::Result<usize> {
    Ok(get_int(fd, libc::FIONREAD)?.max(0) as usize)
}

/// TIOCSTI: `byte` goes through the line discipline of this end as if it had just been
/// received, synchronously, with the terminal's current settings (needs CAP_SYS_ADMIN when
/// the terminal is not the caller's controlling terminal).
pub fn push_input(fd: BorrowedFd, byte: u8) -> io::Result<()> {
    let mut byte = byte;
    ioctl_ptr(fd, libc::TIOCSTI, &mut byte)
}

/// TIOCGPGRP: the foreground process group of the caller's controlling terminal `fd`.
pub fn foreground(fd: BorrowedFd) -> io::Result<i32> {
    get_int(fd, libc::TIOCGPGRP)
}

/// TIOCGSID: the session `fd` (a terminal) is the controlling terminal of.
pub fn session(fd: BorrowedFd) -> io::Result<i32> {
    get_int(fd, libc::TIOCGSID)
}

/// TIOCSPGRP: makes `pgid` the foreground process group of the caller's controlling terminal
/// `fd`. Allocation-free (also used by a new process before it is seized).
pub fn set_foreground_raw(fd: i32, pgid: i32) -> io::Result<()> {
    let mut pgid: libc::pid_t = pgid;
    // SAFETY: TIOCSPGRP reads one pid_t from a live local.
    check(unsafe { libc::ioctl(fd, libc::TIOCSPGRP, &mut pgid) } as libc::c_long)?;
    Ok(())
}

/// TIOCSCTTY: the terminal `fd` becomes the controlling terminal of the caller's session
/// (the caller must be a session leader without one). Allocation-free.
pub fn set_controlling_raw(fd: i32) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal it from another session).
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } as libc::c_long)?;
    Ok(())
}

/// Whether `fd` is a terminal (TCGETS2 works on it).
pub fn is_terminal(fd: BorrowedFd) -> bool {
    get_termios(fd).is_ok()
}
