//! Open-file scenarios: `pipes`, `sharedfd`, `eventfd`, `memfd` and the `unsupported*` ones.
//!
//! Every fd a scenario checks is placed at a fixed number (see the constants), so a restore
//! that moves an fd shows. Each process records, right before it is armed (or, for the root,
//! before ready), the /proc/self/fd link, F_GETFL (O_LARGEFILE included) and F_GETFD of
//! those fds and compares them after go; a pipe's link is compared as `pipe:[*]` only (a
//! restored pipe is a new inode), the pipes' identities being checked by what flows through
//! them. The multi-process ones (`pipes`, `sharedfd`) follow the protocol of procs.rs (armed
//! files, result files, the root prints PASS/FAIL); `memfd` runs its own single-process flow
//! (its /proc/self/maps comparison tolerates a new inode number for memfd mappings, nothing
//! else); `eventfd` and `unsupported*` are parts of the ordinary single-process flow (the
//! inotify scenarios are in inotify.rs).
//!
//! - `pipes`: root P, child C (armed name `C`). Pipe A: read end fd 10 (FD_CLOEXEC), write
//!   end fd 11 (O_NONBLOCK), F_SETPIPE_SZ 256 KiB, holds the 15 bytes "hello through A".
//!   Pipe B (F_SETPIPE_SZ 1 MiB): write end fd 12 in P, read end fd 13 in C only; holds
//!   100 KiB of a pattern written by P, unread. Pipe D: read end fd 14 in P (FD_CLOEXEC),
//!   write end closed, holds "bye". After go P checks A (FIONREAD, data, sizes, flags, then
//!   a byte written through 11 comes out of 10), reads "bye" then EOF from D, checks B's
//!   size, then closes fd 12; C checks FIONREAD 100 KiB, reads and checks the pattern, then
//!   must see EOF (so no other write end of B may exist anywhere).
//! - `sharedfd`: DIR/shared.txt ("0123456789abcdefghij") opened O_RDWR at fd 10
//!   (FD_CLOEXEC), dup2'ed to fd 20 (no FD_CLOEXEC), and opened a second time at fd 21 at
//!   offset 2 (a description of its own); then child C is forked and inherits all three.
//!   After go C checks offsets 0/0/2, reads "01234" through fd 20, sees offset 5 on its
//!   fd 10 and 2 on fd 21, writes its result; P waits for it, then sees offset 5 on fds 10
//!   and 20 and 2 on fd 21, reads "567" through fd 10 and sees offset 8 on fd 20.
//! - `eventfd`: fd 10 = eventfd(42, EFD_NONBLOCK); fd 11 = eventfd(3, EFD_SEMAPHORE |
//!   EFD_NONBLOCK), FD_CLOEXEC; fd 12 = eventfd(0, 0) (blocking). After go: fd 10 reads 42
//!   then EAGAIN; fd 11 reads 1, 1, 1 then EAGAIN; fd 12 is not readable (poll), and a
//!   value written to each comes back.
//! - `memfd`: fd 10 = memfd_create("rcr-test", MFD_ALLOW_SEALING): 3 pages of a pattern,
//!   ftruncate to 3*4096+100, offset 1234, mapped MAP_SHARED RW (4 pages), two bytes changed
//!   through the mapping (at 5000 and 12300), seals F_SEAL_SHRINK|F_SEAL_GROW. fd 11 =
//!   memfd_create("rcr-plain", MFD_CLOEXEC) (no sealing: F_GET_SEALS is F_SEAL_SEAL) with
//!   "plain memfd data" at offset 3. After go: links `/memfd:rcr-test (deleted)` and
//!   `/memfd:rcr-plain (deleted)`, sizes, contents (fd and mapping), offsets, seals; a byte
//!   written through the fd shows in the mapping and one written through the mapping shows
//!   through the fd; growing and shrinking fd 10 fail with EPERM.
//! - `unsupported`: a unix socketpair at fds 10 and 11 with "ping" sent 10 -> 11 and unread.
//!   `unsupported-listen`: a TCP listener on 127.0.0.1 at fd 10 (another socket family).
//!   `unsupported-signalfd` (fd 10, SIGUSR2, SFD_NONBLOCK), `unsupported-timerfd` (fd 10,
//!   CLOCK_MONOTONIC, armed 3600 s, interval 3600 s), `unsupported-epoll` (fd 10, empty),
//!   `unsupported-fanotify` (fd 10, FAN_CLASS_NOTIF|FAN_NONBLOCK, FAN_CLOSE_WRITE of the
//!   files in DIR). For a dump that must be refused; after go each checks its fds are as
//!   before (link, flags and, except the timerfd, /proc/self/fdinfo text) and still work (the
//!   socket delivers "ping" and "pong", the timer is still armed, the fanotify instance
//!   reports the closing of a file `fan-probe` written in DIR).

use crate::procs::{MapsBufs, Member, Own, abort_setup};
use crate::sys::{self, FdSet, Mapping, Shown, WaitStatus, XorShift, errno};
use crate::{Check, Ctx, fail};
use std::ffi::CString;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers (no allocation unless noted).

/// Moves `old` to fd number `new` (closing `old`) and sets or clears FD_CLOEXEC.
pub(crate) fn place(old: i32, new: i32, cloexec: bool) -> Result<(), String> {
    if old != new {
        // SAFETY: dup2 onto a number this process does not use otherwise.
        if unsafe { libc::dup2(old, new) } != new {
            return Err(format!("dup2({old}, {new}): errno {}", errno()));
        }
        sys::close(old);
    }
    let flags = if cloexec { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: fcntl on our own fd.
    if unsafe { libc::fcntl(new, libc::F_SETFD, flags) } != 0 {
        return Err(format!("F_SETFD on fd {new}: errno {}", errno()));
    }
    Ok(())
}

/// A new pipe with its read end at `r` and its write end at `w` (any FD_CLOEXEC cleared).
fn make_pipe(r: i32, w: i32) -> Result<(), String> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds into p.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: errno {}", errno()));
    }
    place(p[0], r, false)?;
    place(p[1], w, false)
}

fn fcntl(fd: i32, cmd: i32) -> i32 {
    // SAFETY: an fcntl query on an fd number has no memory effects.
    unsafe { libc::fcntl(fd, cmd) }
}

fn fcntl_arg(fd: i32, cmd: i32, arg: i32) -> i32 {
    // SAFETY: an fcntl with an integer argument has no memory effects.
    unsafe { libc::fcntl(fd, cmd, arg) }
}

fn lseek_cur(fd: i32) -> i64 {
    // SAFETY: lseek has no memory effects.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

/// read(2) once; Ok(bytes) or Err(errno).
pub(crate) fn read_once(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: read writes at most buf.len() bytes into buf.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

/// poll for POLLIN with a timeout; Ok(revents) (0 on timeout).
pub(crate) fn poll_in(fd: i32, ms: i32) -> Result<i16, i32> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        return Ok(if r == 0 { 0 } else { p.revents });
    }
}

/// FIONREAD: the bytes waiting in a pipe or socket.
pub(crate) fn fionread(fd: i32) -> Result<i32, i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return Err(errno());
    }
    Ok(n)
}

fn bytes_pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed);
    (0..len).map(|_| rng.next() as u8).collect()
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// What one fd looks like from inside: link, F_GETFL, F_GETFD. (F_GETFL keeps the kernel's
/// O_LARGEFILE, 0o100000, which a 64-bit open(2) adds: rcr's reopen must add it too.)
#[derive(Clone, Copy)]
pub(crate) struct FdSnap {
    fd: i32,
    link: [u8; 512],
    link_len: usize,
    flags: i32,
    fd_flags: i32,
}

impl FdSnap {
    pub(crate) const EMPTY: FdSnap = FdSnap {
        fd: -1,
        link: [0; 512],
        link_len: 0,
        flags: -1,
        fd_flags: -1,
    };

    pub(crate) fn take(fd: i32) -> FdSnap {
        let mut link = [0u8; 512];
        let n = sys::fd_link(fd, &mut link).len();
        let flags = fcntl(fd, libc::F_GETFL);
        FdSnap {
            fd,
            link,
            link_len: n,
            flags,
            fd_flags: fcntl(fd, libc::F_GETFD),
        }
    }

    fn link(&self) -> &[u8] {
        &self.link[..self.link_len]
    }

    /// Compares with the state now; `what` names the scenario in messages.
    pub(crate) fn verify(&self, what: &str, chk: &mut Check) {
        let now = FdSnap::take(self.fd);
        let fd = self.fd;
        // A restored pipe or socket is a new object with a new inode number.
        let both_pipes = (self.link().starts_with(b"pipe:[") && now.link().starts_with(b"pipe:["))
            || (self.link().starts_with(b"socket:[") && now.link().starts_with(b"socket:["));
        if now.link() != self.link() && !both_pipes {
            fail!(
                chk,
                "{what}: fd {fd} is `{}`, expected `{}`",
                Shown(now.link()),
                Shown(self.link())
            );
        }
        if now.flags != self.flags {
            fail!(
                chk,
                "{what}: fd {fd} F_GETFL {:#o}, expected {:#o}",
                now.flags,
                self.flags
            );
        }
        if now.fd_flags != self.fd_flags {
            fail!(
                chk,
                "{what}: fd {fd} F_GETFD {:#x}, expected {:#x}",
                now.fd_flags,
                self.fd_flags
            );
        }
    }
}

pub(crate) fn snaps<const N: usize>(fds: [i32; N]) -> [FdSnap; N] {
    let mut s = [FdSnap::EMPTY; N];
    for (slot, fd) in s.iter_mut().zip(fds) {
        *slot = FdSnap::take(fd);
    }
    s
}

pub(crate) fn verify_snaps(what: &str, s: &[FdSnap], chk: &mut Check) {
    for x in s {
        x.verify(what, chk);
    }
}

/// Fails unless /proc/self/fdinfo/FD (at `path`, read into `scratch`) reads `before`.
pub(crate) fn compare_fdinfo(
    fd: i32,
    path: &std::ffi::CStr,
    before: &[u8],
    scratch: &mut [u8],
    chk: &mut Check,
) {
    match sys::read_file_into(path, scratch) {
        Ok(n) if scratch[..n] == *before => {}
        Ok(n) => fail!(
            chk,
            "/proc/self/fdinfo/{fd} is `{}`, was `{}`",
            Shown(&scratch[..n]),
            Shown(before)
        ),
        Err(e) => fail!(chk, "reading /proc/self/fdinfo/{fd}: errno {e}"),
    }
}

/// Fails if the links of fds `a` and `b` are equal (`same` false) or differ (`same` true).
fn check_same_link(what: &str, a: i32, b: i32, same: bool, chk: &mut Check) {
    let (mut la, mut lb) = ([0u8; 512], [0u8; 512]);
    let (x, y) = (sys::fd_link(a, &mut la), sys::fd_link(b, &mut lb));
    if (x == y) != same {
        fail!(
            chk,
            "{what}: fd {a} is `{}` and fd {b} is `{}`: expected {} object",
            Shown(x),
            Shown(y),
            if same {
                "the same"
            } else {
                "different objects, not the same"
            }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The child protocol of the multi-process scenarios (as in procs.rs).

/// Waits (30 s) for DIR/armed-NAME and checks it holds `pid`.
pub(crate) fn wait_armed(ctx: &Ctx, name: &str, pid: i32) -> Result<(), String> {
    let path = ctx.path(&format!("armed-{name}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 2200];
    loop {
        if let Ok(n) = sys::read_file_into(&path, &mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            return match text.trim().parse::<i32>() {
                Ok(p) if p == pid => Ok(()),
                Ok(p) => Err(format!("{name}: armed pid {p}, forked {pid}")),
                Err(_) => Err(format!("{name}: {}", text.trim())),
            };
        }
        if Instant::now() > deadline {
            return Err(format!("{name} not armed within 30 s"));
        }
        sys::sleep_ms(10);
    }
}

/// A child the root waits for after go: its result file, then its exit status 0.
pub(crate) struct Child {
    label: &'static str,
    pid: i32,
    result: CString,
}

impl Child {
    pub(crate) fn new(ctx: &Ctx, label: &'static str, pid: i32) -> Child {
        Child {
            label,
            pid,
            result: ctx.path(&format!("result-{pid}")),
        }
    }

    /// Waits (until `deadline`) for the result file, checks it says PASS, reaps the child
    /// (killing it if it does not exit in time).
    pub(crate) fn collect(&self, deadline: Instant, chk: &mut Check) {
        let (label, pid) = (self.label, self.pid);
        while !sys::exists(&self.result) && Instant::now() < deadline {
            sys::sleep_ms(10);
        }
        let mut buf = [0u8; 2200];
        match sys::read_file_into(&self.result, &mut buf) {
            Ok(n) if buf[..n].starts_with(b"PASS") => {}
            Ok(n) => {
                let text = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
                fail!(chk, "{label} (pid {pid}): {}", Shown(text));
            }
            Err(e) => fail!(
                chk,
                "{label} (pid {pid}): no result file (errno {e}) within the wait bound"
            ),
        }
        match sys::wait_until(pid, deadline) {
            Ok(Some(st)) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
            Ok(Some(st)) => fail!(
                chk,
                "{label} (pid {pid}) ended with {}, expected exit 0",
                WaitStatus(st)
            ),
            Ok(None) => {
                fail!(chk, "{label} (pid {pid}) did not exit in time");
                // SAFETY: our own child; killed and reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
            Err(e) => fail!(chk, "waitpid({pid}) for {label}: errno {e}"),
        }
    }
}

/// The bound in milliseconds for poll.
fn bound_ms(bound: Duration) -> i32 {
    bound.as_millis().min(i32::MAX as u128) as i32
}

// ---------------------------------------------------------------------------------------------
// `pipes`

const A_READ: i32 = 10;
const A_WRITE: i32 = 11;
const B_WRITE: i32 = 12;
const B_READ: i32 = 13;
const D_READ: i32 = 14;
const A_DATA: &[u8] = b"hello through A";
const A_SIZE: i32 = 256 << 10;
const B_SIZE: i32 = 1 << 20;
const B_LEN: usize = 100 << 10;
const B_SEED: u64 = 0x7069_7065_0000_00b1;
const D_DATA: &[u8] = b"bye";
/// How long a check waits for data or EOF that must already be there.
const PROMPT_MS: i32 = 5000;

pub fn pipes(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let bound = sys::wait_bound();
    let pattern = bytes_pattern(B_LEN, B_SEED);
    let mut readback = vec![0u8; B_LEN];
    let setup_b = || -> Result<(), String> {
        make_pipe(B_READ, B_WRITE)?;
        let got = fcntl_arg(B_WRITE, libc::F_SETPIPE_SZ, B_SIZE);
        if got != B_SIZE {
            return Err(format!(
                "F_SETPIPE_SZ(B, {B_SIZE}) gave {got}, errno {}",
                errno()
            ));
        }
        sys::write_all(B_WRITE, &pattern).map_err(|e| format!("write into B: errno {e}"))
    };
    if let Err(e) = setup_b() {
        crate::die(format_args!("pipes: {e}"));
    }
    let c = match sys::fork() {
        Ok(0) => pipes_child(ctx, bufs, &pattern, &mut readback, bound),
        Ok(pid) => pid,
        Err(e) => crate::die(format_args!("pipes: fork: errno {e}")),
    };
    sys::close(B_READ);
    let setup_a_d = || -> Result<(), String> {
        make_pipe(A_READ, A_WRITE)?;
        place(A_READ, A_READ, true)?;
        let got = fcntl_arg(A_WRITE, libc::F_SETPIPE_SZ, A_SIZE);
        if got != A_SIZE {
            return Err(format!(
                "F_SETPIPE_SZ(A, {A_SIZE}) gave {got}, errno {}",
                errno()
            ));
        }
        if fcntl_arg(A_WRITE, libc::F_SETFL, libc::O_NONBLOCK) != 0 {
            return Err(format!("F_SETFL O_NONBLOCK on A: errno {}", errno()));
        }
        sys::write_all(A_WRITE, A_DATA).map_err(|e| format!("write into A: errno {e}"))?;
        let mut p = [0i32; 2];
        // SAFETY: pipe2 writes two fds into p.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe2 (D): errno {}", errno()));
        }
        place(p[0], D_READ, true)?;
        let w = sys::write_all(p[1], D_DATA);
        sys::close(p[1]);
        w.map_err(|e| format!("write into D: errno {e}"))
    };
    if let Err(e) = setup_a_d() {
        abort_setup(&[c], &[], &format!("pipes: {e}"));
    }
    if let Err(e) = wait_armed(ctx, "C", c) {
        abort_setup(&[c], &[], &e);
    }
    let child = Child::new(ctx, "C", c);
    let before = snaps([A_READ, A_WRITE, B_WRITE, D_READ]);
    let own = crate::procs::root_ready(ctx, bufs, &[c], &[]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    verify_snaps("pipes", &before, &mut chk);
    check_same_link("pipe A", A_READ, A_WRITE, true, &mut chk);
    check_same_link("pipes A and B", A_READ, B_WRITE, false, &mut chk);
    check_same_link("pipes A and D", A_READ, D_READ, false, &mut chk);
    check_same_link("pipes B and D", B_WRITE, D_READ, false, &mut chk);
    check_pipe_a(&mut chk);
    check_pipe_d(&mut chk);
    match fcntl(B_WRITE, libc::F_GETPIPE_SZ) {
        B_SIZE => {}
        n => fail!(
            chk,
            "pipe B: F_GETPIPE_SZ on the write end (fd {B_WRITE}) is {n}, expected {B_SIZE}"
        ),
    }
    // C reads its 100 KiB, then must see EOF once this last write end is closed.
    sys::close(B_WRITE);
    child.collect(Instant::now() + bound, &mut chk);
    chk.finish()
}

fn check_pipe_a(chk: &mut Check) {
    for fd in [A_READ, A_WRITE] {
        let n = fcntl(fd, libc::F_GETPIPE_SZ);
        if n != A_SIZE {
            fail!(
                chk,
                "pipe A: F_GETPIPE_SZ on fd {fd} is {n}, expected {A_SIZE}"
            );
        }
    }
    let wfl = fcntl(A_WRITE, libc::F_GETFL);
    if wfl < 0 || wfl & libc::O_NONBLOCK == 0 || wfl & libc::O_ACCMODE != libc::O_WRONLY {
        fail!(
            chk,
            "pipe A: write end fd {A_WRITE} F_GETFL {wfl:#o}, expected O_WRONLY|O_NONBLOCK"
        );
    }
    let rfl = fcntl(A_READ, libc::F_GETFL);
    if rfl < 0 || rfl & libc::O_NONBLOCK != 0 || rfl & libc::O_ACCMODE != libc::O_RDONLY {
        fail!(
            chk,
            "pipe A: read end fd {A_READ} F_GETFL {rfl:#o}, expected O_RDONLY, blocking"
        );
    }
    match fionread(A_READ) {
        Ok(n) if n as usize == A_DATA.len() => {}
        Ok(n) => fail!(chk, "pipe A: FIONREAD is {n}, expected {}", A_DATA.len()),
        Err(e) => fail!(chk, "pipe A: FIONREAD: errno {e}"),
    }
    let mut buf = [0u8; 64];
    match poll_in(A_READ, 0) {
        Ok(r) if r & libc::POLLIN != 0 => match read_once(A_READ, &mut buf) {
            Ok(n) if &buf[..n] == A_DATA => {}
            Ok(n) => fail!(
                chk,
                "pipe A: read `{}`, expected `{}`",
                Shown(&buf[..n]),
                Shown(A_DATA)
            ),
            Err(e) => fail!(chk, "pipe A: read: errno {e}"),
        },
        Ok(r) => {
            fail!(chk, "pipe A: nothing to read (poll revents {r:#x})");
            return;
        }
        Err(e) => {
            fail!(chk, "pipe A: poll: errno {e}");
            return;
        }
    }
    match poll_in(A_READ, 0) {
        Ok(0) => {}
        Ok(r) => fail!(
            chk,
            "pipe A: still readable after its data (revents {r:#x})"
        ),
        Err(e) => fail!(chk, "pipe A: poll: errno {e}"),
    }
    // Still one pipe: what goes into fd 11 comes out of fd 10.
    if let Err(e) = sys::write_all(A_WRITE, b"x") {
        fail!(chk, "pipe A: write into fd {A_WRITE}: errno {e}");
        return;
    }
    match poll_in(A_READ, PROMPT_MS) {
        Ok(r) if r & libc::POLLIN != 0 => match read_once(A_READ, &mut buf) {
            Ok(1) if buf[0] == b'x' => {}
            Ok(n) => fail!(
                chk,
                "pipe A: after writing `x` into fd {A_WRITE}, fd {A_READ} gave `{}`",
                Shown(&buf[..n])
            ),
            Err(e) => fail!(chk, "pipe A: read: errno {e}"),
        },
        Ok(r) => fail!(
            chk,
            "pipe A: a byte written into fd {A_WRITE} does not come out of fd {A_READ} \
             (revents {r:#x}): not one pipe"
        ),
        Err(e) => fail!(chk, "pipe A: poll: errno {e}"),
    }
}

fn check_pipe_d(chk: &mut Check) {
    let mut buf = [0u8; 16];
    match poll_in(D_READ, PROMPT_MS) {
        Ok(r) if r & libc::POLLIN != 0 => match read_once(D_READ, &mut buf) {
            Ok(n) if &buf[..n] == D_DATA => {}
            Ok(n) => fail!(chk, "pipe D: read `{}`, expected `bye`", Shown(&buf[..n])),
            Err(e) => fail!(chk, "pipe D: read: errno {e}"),
        },
        Ok(r) => {
            fail!(
                chk,
                "pipe D: no data within {PROMPT_MS} ms (revents {r:#x})"
            );
            return;
        }
        Err(e) => {
            fail!(chk, "pipe D: poll: errno {e}");
            return;
        }
    }
    match poll_in(D_READ, PROMPT_MS) {
        Ok(0) => fail!(
            chk,
            "pipe D: no EOF within {PROMPT_MS} ms after its data: a write end exists again"
        ),
        Ok(_) => match read_once(D_READ, &mut buf) {
            Ok(0) => {}
            Ok(n) => fail!(chk, "pipe D: more data after `bye`: `{}`", Shown(&buf[..n])),
            Err(e) => fail!(chk, "pipe D: read after the data: errno {e}"),
        },
        Err(e) => fail!(chk, "pipe D: poll: errno {e}"),
    }
}

/// C: keeps only B's read end (fd 13), waits for go without reading, then reads and checks.
fn pipes_child(
    ctx: &Ctx,
    bufs: &mut MapsBufs,
    pattern: &[u8],
    readback: &mut [u8],
    bound: Duration,
) -> ! {
    let me = Member::new(ctx, "C");
    sys::close(B_WRITE);
    let before = snaps([B_READ]);
    let own = match Own::record(bufs) {
        Ok(o) => o,
        Err(e) => me.setup_failed(&e),
    };
    me.arm();
    sys::wait_for_every(&ctx.go, 20);
    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    verify_snaps("pipes (C)", &before, &mut chk);
    match fcntl(B_READ, libc::F_GETPIPE_SZ) {
        B_SIZE => {}
        n => fail!(
            chk,
            "pipe B: F_GETPIPE_SZ on fd {B_READ} is {n}, expected {B_SIZE}"
        ),
    }
    match fionread(B_READ) {
        Ok(n) if n as usize == B_LEN => {}
        Ok(n) => fail!(chk, "pipe B: FIONREAD is {n}, expected {B_LEN}"),
        Err(e) => fail!(chk, "pipe B: FIONREAD: errno {e}"),
    }
    let mut got = 0;
    while got < B_LEN {
        match poll_in(B_READ, PROMPT_MS) {
            Ok(r) if r & libc::POLLIN != 0 => {}
            Ok(r) => {
                fail!(
                    chk,
                    "pipe B: only {got} of {B_LEN} bytes came (revents {r:#x} after \
                     {PROMPT_MS} ms)"
                );
                break;
            }
            Err(e) => {
                fail!(chk, "pipe B: poll: errno {e}");
                break;
            }
        }
        match read_once(B_READ, &mut readback[got..]) {
            Ok(0) => {
                fail!(chk, "pipe B: EOF after {got} of {B_LEN} bytes");
                break;
            }
            Ok(n) => got += n,
            Err(libc::EINTR) => {}
            Err(e) => {
                fail!(chk, "pipe B: read after {got} bytes: errno {e}");
                break;
            }
        }
    }
    if got == B_LEN {
        if let Some(i) = first_diff(readback, pattern) {
            fail!(
                chk,
                "pipe B: byte {i} is {:#04x}, expected {:#04x}",
                readback[i],
                pattern[i]
            );
        }
        // P closes its write end (the only one) after go: then EOF.
        let mut one = [0u8; 1];
        match poll_in(B_READ, bound_ms(bound)) {
            Ok(0) => fail!(
                chk,
                "pipe B: no EOF within the wait bound: some write end of B is still open"
            ),
            Ok(_) => match read_once(B_READ, &mut one) {
                Ok(0) => {}
                Ok(_) => fail!(chk, "pipe B: more than {B_LEN} bytes in the pipe"),
                Err(e) => fail!(chk, "pipe B: read at the end: errno {e}"),
            },
            Err(e) => fail!(chk, "pipe B: poll at the end: errno {e}"),
        }
    }
    me.report(&chk)
}

// ---------------------------------------------------------------------------------------------
// `sharedfd`

const SH_FD: i32 = 10;
const SH_DUP: i32 = 20;
const SH_OTHER: i32 = 21;
const SH_CONTENT: &[u8] = b"0123456789abcdefghij";
const SH_OTHER_OFFSET: i64 = 2;

fn check_offset(what: &str, fd: i32, want: i64, chk: &mut Check) {
    let at = lseek_cur(fd);
    if at != want {
        fail!(chk, "{what}: fd {fd} is at offset {at}, expected {want}");
    }
}

fn read_expect(what: &str, fd: i32, want: &[u8], chk: &mut Check) {
    let mut buf = [0u8; 16];
    match read_once(fd, &mut buf[..want.len()]) {
        Ok(n) if &buf[..n] == want => {}
        Ok(n) => fail!(
            chk,
            "{what}: read through fd {fd} gave `{}`, expected `{}`",
            Shown(&buf[..n]),
            Shown(want)
        ),
        Err(e) => fail!(chk, "{what}: read through fd {fd}: errno {e}"),
    }
}

pub fn sharedfd(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let bound = sys::wait_bound();
    let path = ctx.path("shared.txt");
    let setup = || -> Result<(), String> {
        sys::write_file(&path, SH_CONTENT)?;
        let fd = sys::open(&path, libc::O_RDWR | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("open shared.txt: errno {e}"))?;
        place(fd, SH_FD, true)?;
        // SAFETY: dup2 onto an unused number.
        if unsafe { libc::dup2(SH_FD, SH_DUP) } != SH_DUP {
            return Err(format!("dup2({SH_FD}, {SH_DUP}): errno {}", errno()));
        }
        let other = sys::open(&path, libc::O_RDWR | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("open shared.txt again: errno {e}"))?;
        place(other, SH_OTHER, false)?;
        // SAFETY: lseek on our fd.
        if unsafe { libc::lseek(SH_OTHER, SH_OTHER_OFFSET, libc::SEEK_SET) } != SH_OTHER_OFFSET {
            return Err(format!("lseek fd {SH_OTHER}: errno {}", errno()));
        }
        Ok(())
    };
    if let Err(e) = setup() {
        crate::die(format_args!("sharedfd: {e}"));
    }
    let c = match sys::fork() {
        Ok(0) => sharedfd_child(ctx, bufs),
        Ok(pid) => pid,
        Err(e) => crate::die(format_args!("sharedfd: fork: errno {e}")),
    };
    if let Err(e) = wait_armed(ctx, "C", c) {
        abort_setup(&[c], &[], &e);
    }
    let child = Child::new(ctx, "C", c);
    let before = snaps([SH_FD, SH_DUP, SH_OTHER]);
    let own = crate::procs::root_ready(ctx, bufs, &[c], &[]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    verify_snaps("sharedfd", &before, &mut chk);
    // C reads 5 bytes through its fd 20 before writing its result.
    child.collect(Instant::now() + bound, &mut chk);
    let what = "sharedfd: after C read 5 bytes through its fd 20";
    check_offset(what, SH_FD, 5, &mut chk);
    check_offset(what, SH_DUP, 5, &mut chk);
    check_offset(what, SH_OTHER, SH_OTHER_OFFSET, &mut chk);
    read_expect("sharedfd", SH_FD, b"567", &mut chk);
    check_offset(
        "sharedfd: after reading 3 bytes through fd 10",
        SH_DUP,
        8,
        &mut chk,
    );
    chk.finish()
}

fn sharedfd_child(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let me = Member::new(ctx, "C");
    let before = snaps([SH_FD, SH_DUP, SH_OTHER]);
    let own = match Own::record(bufs) {
        Ok(o) => o,
        Err(e) => me.setup_failed(&e),
    };
    me.arm();
    sys::wait_for_every(&ctx.go, 20);
    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    verify_snaps("sharedfd (C)", &before, &mut chk);
    let what = "sharedfd (C) before reading";
    check_offset(what, SH_FD, 0, &mut chk);
    check_offset(what, SH_DUP, 0, &mut chk);
    check_offset(what, SH_OTHER, SH_OTHER_OFFSET, &mut chk);
    read_expect("sharedfd (C)", SH_DUP, b"01234", &mut chk);
    let what = "sharedfd (C) after reading 5 bytes through fd 20";
    check_offset(what, SH_FD, 5, &mut chk);
    check_offset(what, SH_OTHER, SH_OTHER_OFFSET, &mut chk);
    me.report(&chk)
}

// ---------------------------------------------------------------------------------------------
// `eventfd`

const EV_PLAIN: i32 = 10;
const EV_SEM: i32 = 11;
const EV_BLOCKING: i32 = 12;

pub struct EventFds {
    before: [FdSnap; 3],
}

fn eventfd_at(init: u32, flags: i32, fd: i32, cloexec: bool) -> Result<(), String> {
    // SAFETY: eventfd has no memory effects.
    let e = unsafe { libc::eventfd(init, flags) };
    if e < 0 {
        return Err(format!("eventfd({init}, {flags:#x}): errno {}", errno()));
    }
    place(e, fd, cloexec)
}

fn ev_read(fd: i32) -> Result<u64, i32> {
    let mut b = [0u8; 8];
    match read_once(fd, &mut b) {
        Ok(8) => Ok(u64::from_ne_bytes(b)),
        Ok(_) => Err(libc::EIO),
        Err(e) => Err(e),
    }
}

fn ev_write(fd: i32, v: u64) -> Result<(), i32> {
    sys::write_all(fd, &v.to_ne_bytes())
}

impl EventFds {
    pub fn new() -> Result<EventFds, String> {
        eventfd_at(42, libc::EFD_NONBLOCK, EV_PLAIN, false)?;
        eventfd_at(
            3,
            libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
            EV_SEM,
            true,
        )?;
        eventfd_at(0, 0, EV_BLOCKING, false)?;
        Ok(EventFds {
            before: [FdSnap::EMPTY; 3],
        })
    }
}

impl crate::parts::Part for EventFds {
    fn before_ready(&mut self) {
        self.before = snaps([EV_PLAIN, EV_SEM, EV_BLOCKING]);
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("eventfd", &self.before, chk);
        let want: [Result<u64, i32>; 2] = [Ok(42), Err(libc::EAGAIN)];
        for (i, w) in want.iter().enumerate() {
            let got = ev_read(EV_PLAIN);
            if got != *w {
                fail!(
                    chk,
                    "eventfd fd {EV_PLAIN}: read {} gave {got:?}, expected {w:?} (errno \
                     {} is EAGAIN)",
                    i + 1,
                    libc::EAGAIN
                );
            }
        }
        let want: [Result<u64, i32>; 4] = [Ok(1), Ok(1), Ok(1), Err(libc::EAGAIN)];
        for (i, w) in want.iter().enumerate() {
            let got = ev_read(EV_SEM);
            if got != *w {
                fail!(
                    chk,
                    "eventfd fd {EV_SEM} (semaphore, counter 3): read {} gave {got:?}, \
                     expected {w:?} (errno {} is EAGAIN)",
                    i + 1,
                    libc::EAGAIN
                );
            }
        }
        match poll_in(EV_BLOCKING, 0) {
            Ok(0) => {}
            Ok(r) => fail!(
                chk,
                "eventfd fd {EV_BLOCKING} (counter 0) is readable (revents {r:#x})"
            ),
            Err(e) => fail!(chk, "eventfd fd {EV_BLOCKING}: poll: errno {e}"),
        }
        // Each still works: a value written comes back (the semaphore one as 1).
        for (fd, v, back) in [(EV_PLAIN, 5, 5), (EV_SEM, 2, 1), (EV_BLOCKING, 7, 7)] {
            if let Err(e) = ev_write(fd, v) {
                fail!(chk, "eventfd fd {fd}: write {v}: errno {e}");
                continue;
            }
            match ev_read(fd) {
                Ok(x) if x == back => {}
                got => fail!(
                    chk,
                    "eventfd fd {fd}: after writing {v}, read gave {got:?}, expected {back}"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `memfd`

const MEMFD: i32 = 10;
const MEMFD_PLAIN: i32 = 11;
const MEMFD_SIZE: usize = 3 * 4096 + 100;
const MEMFD_MAP_LEN: usize = 4 * 4096;
const MEMFD_OFFSET: i64 = 1234;
const MEMFD_SEED: u64 = 0x6d65_6d66_6400_0001;
const MEMFD_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
const MEMFD_LINK: &[u8] = b"/memfd:rcr-test (deleted)";
const PLAIN_LINK: &[u8] = b"/memfd:rcr-plain (deleted)";
const PLAIN_CONTENT: &[u8] = b"plain memfd data";
const PLAIN_OFFSET: i64 = 3;
/// Offsets changed through the mapping before ready (one in the page after the 3 full
/// ones, below the size).
const MAP_CHANGED: [usize; 2] = [5000, 12300];
/// After go: a byte written through the fd, and one through the mapping.
const FD_POKE: usize = 7000;
const MAP_POKE: usize = 8000;

fn memfd_at(name: &std::ffi::CStr, flags: u32, fd: i32, cloexec: bool) -> Result<(), String> {
    // SAFETY: `name` is NUL-terminated.
    let m = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if m < 0 {
        return Err(format!("memfd_create({name:?}): errno {}", errno()));
    }
    place(m, fd, cloexec)
}

fn seek_to(fd: i32, off: i64) -> Result<(), String> {
    // SAFETY: lseek has no memory effects.
    if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } != off {
        return Err(format!("lseek fd {fd} to {off}: errno {}", errno()));
    }
    Ok(())
}

fn fstat_size(fd: i32) -> Result<i64, i32> {
    // SAFETY: an all-zero stat is valid; fstat fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one struct stat.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(errno());
    }
    Ok(st.st_size)
}

/// (the line up to the end of its dev field, its path) of a /proc/self/maps line.
fn maps_line_parts(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = 0;
    let mut dev_end = 0;
    // Fields: range perms offset dev inode, then the path.
    for field in 1..=5 {
        while line.get(i) == Some(&b' ') {
            i += 1;
        }
        let start = i;
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
        if start == i {
            return None;
        }
        if field == 4 {
            dev_end = i;
        }
    }
    Some((&line[..dev_end], line[i..].trim_ascii()))
}

/// Exact line-by-line comparison, except that the inode of a memfd mapping may change.
fn compare_maps_memfd(before: &[u8], after: &[u8], chk: &mut Check) {
    if before == after {
        return;
    }
    let mut a = before.split(|&b| b == b'\n');
    let mut b = after.split(|&b| b == b'\n');
    let mut line = 1;
    loop {
        match (a.next(), b.next()) {
            (None, None) => return,
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y))
                if matches!(
                    (maps_line_parts(x), maps_line_parts(y)),
                    (Some((px, fx)), Some((py, fy)))
                        if px == py && fx == fy && fx.starts_with(b"/memfd:")
                ) => {}
            (x, y) => {
                fail!(
                    chk,
                    "/proc/self/maps differs at line {line} (memfd inodes not compared): \
                     before `{}`, after `{}`",
                    Shown(x.unwrap_or(b"<none>")),
                    Shown(y.unwrap_or(b"<none>"))
                );
                return;
            }
        }
        line += 1;
    }
}

struct Memfd {
    map: Mapping,
    expect: Vec<u8>,
    readback: Vec<u8>,
    before: [FdSnap; 2],
}

impl Memfd {
    fn new() -> Result<Memfd, String> {
        memfd_at(c"rcr-test", libc::MFD_ALLOW_SEALING, MEMFD, true)?;
        let mut expect = bytes_pattern(3 * 4096, MEMFD_SEED);
        sys::write_all(MEMFD, &expect).map_err(|e| format!("write memfd: errno {e}"))?;
        // SAFETY: ftruncate on our fd.
        if unsafe { libc::ftruncate(MEMFD, MEMFD_SIZE as i64) } != 0 {
            return Err(format!("ftruncate memfd: errno {}", errno()));
        }
        expect.resize(MEMFD_SIZE, 0);
        seek_to(MEMFD, MEMFD_OFFSET)?;
        let mut map = Mapping::file(
            MEMFD,
            MEMFD_MAP_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )?;
        for &off in &MAP_CHANGED {
            let v = !expect[off] ^ 0x10;
            map.bytes_mut()[off] = v;
            expect[off] = v;
        }
        if fcntl_arg(MEMFD, libc::F_ADD_SEALS, MEMFD_SEALS) != 0 {
            return Err(format!("F_ADD_SEALS: errno {}", errno()));
        }
        // Sanity: the fd sees the change made through the mapping.
        let mut readback = vec![0u8; MEMFD_SIZE];
        sys::pread_exact(MEMFD, &mut readback, 0).map_err(|e| format!("pread memfd: {e}"))?;
        if readback != expect {
            return Err("memfd: the fd does not see the writes through the mapping".into());
        }

        memfd_at(c"rcr-plain", libc::MFD_CLOEXEC, MEMFD_PLAIN, true)?;
        sys::write_all(MEMFD_PLAIN, PLAIN_CONTENT)
            .map_err(|e| format!("write plain memfd: errno {e}"))?;
        seek_to(MEMFD_PLAIN, PLAIN_OFFSET)?;
        Ok(Memfd {
            map,
            expect,
            readback,
            before: [FdSnap::EMPTY; 2],
        })
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("memfd", &self.before, chk);
        for (fd, link) in [(MEMFD, MEMFD_LINK), (MEMFD_PLAIN, PLAIN_LINK)] {
            let mut buf = [0u8; 512];
            let now = sys::fd_link(fd, &mut buf);
            if now != link {
                fail!(
                    chk,
                    "memfd: fd {fd} is `{}`, expected `{}`",
                    Shown(now),
                    Shown(link)
                );
            }
        }
        for (fd, size) in [(MEMFD, MEMFD_SIZE), (MEMFD_PLAIN, PLAIN_CONTENT.len())] {
            match fstat_size(fd) {
                Ok(s) if s == size as i64 => {}
                Ok(s) => fail!(chk, "memfd: fd {fd} size {s}, expected {size}"),
                Err(e) => fail!(chk, "memfd: fstat fd {fd}: errno {e}"),
            }
        }
        for (fd, seals) in [(MEMFD, MEMFD_SEALS), (MEMFD_PLAIN, libc::F_SEAL_SEAL)] {
            let s = fcntl(fd, libc::F_GET_SEALS);
            if s != seals {
                fail!(
                    chk,
                    "memfd: fd {fd} F_GET_SEALS {s:#x}, expected {seals:#x}"
                );
            }
        }
        check_offset("memfd", MEMFD, MEMFD_OFFSET, chk);
        check_offset("memfd", MEMFD_PLAIN, PLAIN_OFFSET, chk);
        let mut plain = [0u8; PLAIN_CONTENT.len()];
        match sys::pread_exact(MEMFD_PLAIN, &mut plain, 0) {
            Ok(()) if plain == PLAIN_CONTENT => {}
            Ok(()) => fail!(chk, "memfd: fd {MEMFD_PLAIN} holds `{}`", Shown(&plain)),
            Err(e) => fail!(chk, "memfd: pread fd {MEMFD_PLAIN}: errno {e}"),
        }
        match sys::pread_exact(MEMFD, &mut self.readback, 0) {
            Ok(()) => {
                if let Some(i) = first_diff(&self.readback, &self.expect) {
                    fail!(
                        chk,
                        "memfd: through fd {MEMFD}, byte {i} is {:#04x}, expected {:#04x}",
                        self.readback[i],
                        self.expect[i]
                    );
                }
            }
            Err(e) => fail!(chk, "memfd: pread fd {MEMFD}: errno {e}"),
        }
        let mapped = self.map.bytes();
        if let Some(i) = first_diff(&mapped[..MEMFD_SIZE], &self.expect) {
            fail!(
                chk,
                "memfd: through the mapping, byte {i} is {:#04x}, expected {:#04x}",
                mapped[i],
                self.expect[i]
            );
        }
        if let Some(i) = mapped[MEMFD_SIZE..].iter().position(|&b| b != 0) {
            fail!(
                chk,
                "memfd: mapping byte {} (past the size) is not zero",
                MEMFD_SIZE + i
            );
        }
        // Still one object: fd -> mapping and mapping -> fd.
        let v = !self.expect[FD_POKE];
        // SAFETY: pwrite reads one byte from a local.
        let n = unsafe { libc::pwrite(MEMFD, (&v as *const u8).cast(), 1, FD_POKE as i64) };
        if n != 1 {
            fail!(chk, "memfd: pwrite at {FD_POKE}: errno {}", errno());
        } else if self.map.bytes()[FD_POKE] != v {
            fail!(
                chk,
                "memfd: a byte written through fd {MEMFD} at {FD_POKE} does not show in the \
                 mapping: not the same object"
            );
        }
        let v = !self.expect[MAP_POKE];
        self.map.bytes_mut()[MAP_POKE] = v;
        let mut one = [0u8; 1];
        match sys::pread_exact(MEMFD, &mut one, MAP_POKE as i64) {
            Ok(()) if one[0] == v => {}
            Ok(()) => fail!(
                chk,
                "memfd: a byte written through the mapping at {MAP_POKE} does not show \
                 through fd {MEMFD}: not the same object"
            ),
            Err(e) => fail!(chk, "memfd: pread at {MAP_POKE}: errno {e}"),
        }
        // The seals hold (last: a shrink that wrongly worked would cut the mapping).
        for len in [MEMFD_SIZE + 4096, 100] {
            // SAFETY: ftruncate on our fd.
            let r = unsafe { libc::ftruncate(MEMFD, len as i64) };
            let e = errno();
            if r == 0 || e != libc::EPERM {
                fail!(
                    chk,
                    "memfd: ftruncate(fd {MEMFD}, {len}) returned {r} (errno {e}), expected \
                     EPERM from the seals"
                );
            }
        }
    }
}

/// `memfd`: its own single-process flow (see the module comment).
pub fn memfd(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let mut m = match Memfd::new() {
        Ok(m) => m,
        Err(e) => crate::die(format_args!("setup of memfd: {e}")),
    };
    crate::touch_stack();
    m.before = snaps([MEMFD, MEMFD_PLAIN]);
    let mut fds_before = FdSet::new();
    let mut fds_after = FdSet::new();
    if let Err(e) = fds_before.read() {
        crate::die(format_args!("listing /proc/self/fd: errno {e}"));
    }
    let pid = sys::getpid();
    let n_before = match sys::read_file_into(c"/proc/self/maps", &mut bufs.before) {
        Ok(n) => n,
        Err(e) => crate::die(format_args!("reading /proc/self/maps: errno {e}")),
    };
    if let Err(e) = crate::write_ready(ctx, pid) {
        crate::die(format_args!("writing ready: errno {e}"));
    }

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    match sys::read_file_into(c"/proc/self/maps", &mut bufs.after) {
        Ok(n) => compare_maps_memfd(&bufs.before[..n_before], &bufs.after[..n], &mut chk),
        Err(e) => fail!(chk, "reading /proc/self/maps after go: errno {e}"),
    }
    match fds_after.read() {
        Ok(()) => crate::compare_fds(fds_before.as_slice(), fds_after.as_slice(), &mut chk),
        Err(e) => fail!(chk, "listing /proc/self/fd after go: errno {e}"),
    }
    let pid_after = sys::getpid();
    if pid_after != pid {
        fail!(chk, "getpid() is {pid_after}, expected {pid}");
    }
    m.verify(&mut chk);
    chk.finish()
}

// ---------------------------------------------------------------------------------------------
// `unsupported*`

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Socket,
    Listen,
    Signalfd,
    Timerfd,
    Epoll,
    Fanotify,
}

impl Kind {
    /// The scenario name `unsupported` or `unsupported-KIND`.
    pub fn from_scenario(name: &str) -> Option<Kind> {
        Some(match name {
            "unsupported" => Kind::Socket,
            "unsupported-listen" => Kind::Listen,
            "unsupported-signalfd" => Kind::Signalfd,
            "unsupported-timerfd" => Kind::Timerfd,
            "unsupported-epoll" => Kind::Epoll,
            "unsupported-fanotify" => Kind::Fanotify,
            _ => return None,
        })
    }
}

const UNS_A: i32 = 10;
const UNS_B: i32 = 11;
const TIMER_SECS: i64 = 3600;

pub struct Unsupported {
    kind: Kind,
    n: usize,
    before: [FdSnap; 2],
    info_paths: [CString; 2],
    info_before: [Vec<u8>; 2],
    info_len: [usize; 2],
    info_after: Vec<u8>,
    events: Vec<u8>,
    probe: CString,
}

impl Unsupported {
    pub fn new(kind: Kind, ctx: &Ctx) -> Result<Unsupported, String> {
        let fail = |what: &str| format!("{what}: errno {}", errno());
        let mut n = 1;
        match kind {
            Kind::Socket => {
                let mut sv = [0i32; 2];
                // SAFETY: socketpair writes two fds into sv.
                let r = unsafe {
                    libc::socketpair(
                        libc::AF_UNIX,
                        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                        0,
                        sv.as_mut_ptr(),
                    )
                };
                if r != 0 {
                    return Err(fail("socketpair"));
                }
                place(sv[0], UNS_A, false)?;
                place(sv[1], UNS_B, false)?;
                sys::write_all(UNS_A, b"ping").map_err(|e| format!("send ping: errno {e}"))?;
                n = 2;
            }
            Kind::Listen => {
                // A TCP listener on 127.0.0.1 (any port): a socket family rcr refuses.
                // SAFETY: socket/bind/listen with a live sockaddr_in.
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    if fd < 0 {
                        return Err(fail("socket"));
                    }
                    let mut addr: libc::sockaddr_in = std::mem::zeroed();
                    addr.sin_family = libc::AF_INET as libc::sa_family_t;
                    addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
                    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    if libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len) != 0
                        || libc::listen(fd, 4) != 0
                    {
                        return Err(fail("bind/listen"));
                    }
                    place(fd, UNS_A, false)?;
                }
            }
            Kind::Signalfd => {
                // SAFETY: an all-zero sigset_t is valid; sigemptyset/sigaddset fill it in.
                let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
                // SAFETY: valid sigset_t pointer.
                unsafe {
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGUSR2);
                }
                // SAFETY: a valid mask.
                let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK) };
                if fd < 0 {
                    return Err(fail("signalfd"));
                }
                place(fd, UNS_A, true)?;
            }
            Kind::Timerfd => {
                // SAFETY: timerfd_create has no memory effects.
                let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) };
                if fd < 0 {
                    return Err(fail("timerfd_create"));
                }
                place(fd, UNS_A, false)?;
                let ts = libc::timespec {
                    tv_sec: TIMER_SECS,
                    tv_nsec: 0,
                };
                let spec = libc::itimerspec {
                    it_interval: ts,
                    it_value: ts,
                };
                // SAFETY: a valid itimerspec; the old value is not asked for.
                if unsafe { libc::timerfd_settime(UNS_A, 0, &spec, std::ptr::null_mut()) } != 0 {
                    return Err(fail("timerfd_settime"));
                }
                // A second one, one-shot after 1 ms, expired and unread: one tick pending.
                // SAFETY: as above.
                let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) };
                if fd < 0 {
                    return Err(fail("timerfd_create"));
                }
                place(fd, UNS_B, false)?;
                let once = libc::itimerspec {
                    it_interval: libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    },
                    it_value: libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 1_000_000,
                    },
                };
                // SAFETY: as above.
                if unsafe { libc::timerfd_settime(UNS_B, 0, &once, std::ptr::null_mut()) } != 0 {
                    return Err(fail("timerfd_settime"));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                n = 2;
            }
            Kind::Epoll => {
                // SAFETY: epoll_create1 has no memory effects.
                let fd = unsafe { libc::epoll_create1(0) };
                if fd < 0 {
                    return Err(fail("epoll_create1"));
                }
                place(fd, UNS_A, false)?;
            }
            Kind::Fanotify => {
                // SAFETY: fanotify_init has no memory effects.
                let fd = unsafe {
                    libc::fanotify_init(
                        libc::FAN_CLASS_NOTIF | libc::FAN_NONBLOCK,
                        libc::O_RDONLY as u32,
                    )
                };
                if fd < 0 {
                    return Err(fail("fanotify_init"));
                }
                place(fd, UNS_A, false)?;
                let dir = ctx.path(".");
                // SAFETY: `dir` is NUL-terminated.
                let r = unsafe {
                    libc::fanotify_mark(
                        UNS_A,
                        libc::FAN_MARK_ADD,
                        libc::FAN_CLOSE_WRITE | libc::FAN_EVENT_ON_CHILD,
                        libc::AT_FDCWD,
                        dir.as_ptr(),
                    )
                };
                if r != 0 {
                    return Err(fail("fanotify_mark"));
                }
            }
        }
        let info_paths = [UNS_A, UNS_B]
            .map(|fd| CString::new(format!("/proc/self/fdinfo/{fd}")).expect("no NUL in the path"));
        Ok(Unsupported {
            kind,
            n,
            before: [FdSnap::EMPTY; 2],
            info_paths,
            info_before: [vec![0u8; 8192], vec![0u8; 8192]],
            info_len: [0; 2],
            info_after: vec![0u8; 8192],
            events: vec![0u8; 8192],
            probe: ctx.path("fan-probe"),
        })
    }

    fn fds(&self) -> &[i32] {
        &[UNS_A, UNS_B][..self.n]
    }

    fn verify_kind(&mut self, chk: &mut Check) {
        match self.kind {
            Kind::Socket => {
                let mut buf = [0u8; 16];
                // SAFETY: recv writes at most buf.len() bytes into buf.
                let n = unsafe {
                    libc::recv(
                        UNS_B,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n != 4 || &buf[..4] != b"ping" {
                    fail!(
                        chk,
                        "socket fd {UNS_B}: recv gave {n} (errno {}), `{}`, expected `ping`",
                        errno(),
                        Shown(&buf[..n.max(0) as usize])
                    );
                }
                if let Err(e) = sys::write_all(UNS_B, b"pong") {
                    fail!(chk, "socket fd {UNS_B}: send pong: errno {e}");
                    return;
                }
                let _ = poll_in(UNS_A, PROMPT_MS);
                // SAFETY: as above.
                let n = unsafe {
                    libc::recv(
                        UNS_A,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n != 4 || &buf[..4] != b"pong" {
                    fail!(
                        chk,
                        "socket fd {UNS_A}: recv gave {n} (errno {}), expected `pong`",
                        errno()
                    );
                }
            }
            Kind::Signalfd => {}
            Kind::Timerfd => {
                // SAFETY: an all-zero itimerspec is valid; timerfd_gettime fills it in.
                let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
                // SAFETY: a valid out pointer.
                if unsafe { libc::timerfd_gettime(UNS_A, &mut cur) } != 0 {
                    fail!(chk, "timerfd_gettime: errno {}", errno());
                    return;
                }
                // The expired one-shot timer: its one unread expiration, then nothing.
                let mut ticks = [0u8; 8];
                match read_once(UNS_B, &mut ticks) {
                    Ok(8) if u64::from_ne_bytes(ticks) == 1 => {}
                    got => fail!(
                        chk,
                        "timerfd fd {UNS_B}: read gave {got:?} ({} ticks), expected 1 tick",
                        u64::from_ne_bytes(ticks)
                    ),
                }
                match read_once(UNS_B, &mut ticks) {
                    Err(libc::EAGAIN) => {}
                    got => fail!(chk, "timerfd fd {UNS_B}: second read gave {got:?}"),
                }
                let (v, i) = (cur.it_value, cur.it_interval);
                let armed = (v.tv_sec > 0 || v.tv_nsec > 0) && v.tv_sec <= TIMER_SECS;
                if !armed || i.tv_sec != TIMER_SECS || i.tv_nsec != 0 {
                    fail!(
                        chk,
                        "timerfd: value {}.{:09} s, interval {}.{:09} s; expected armed, \
                         interval {TIMER_SECS} s",
                        v.tv_sec,
                        v.tv_nsec,
                        i.tv_sec,
                        i.tv_nsec
                    );
                }
            }
            Kind::Epoll => {
                let mut ev = libc::epoll_event { events: 0, u64: 0 };
                // SAFETY: room for one event.
                let r = unsafe { libc::epoll_wait(UNS_A, &mut ev, 1, 0) };
                if r != 0 {
                    fail!(
                        chk,
                        "epoll_wait on the empty epoll gave {r} (errno {})",
                        errno()
                    );
                }
            }
            Kind::Listen => {
                let mut on: i32 = 0;
                let mut len = 4 as libc::socklen_t;
                // SAFETY: getsockopt writes an int into a live variable.
                let r = unsafe {
                    libc::getsockopt(
                        UNS_A,
                        libc::SOL_SOCKET,
                        libc::SO_ACCEPTCONN,
                        (&mut on as *mut i32).cast(),
                        &mut len,
                    )
                };
                if r != 0 || on != 1 {
                    fail!(
                        chk,
                        "listening socket fd {UNS_A}: SO_ACCEPTCONN {on} (r {r})"
                    );
                }
            }
            Kind::Fanotify => {
                match sys::open(
                    &self.probe,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                    0o644,
                ) {
                    Ok(fd) => sys::close(fd),
                    Err(e) => {
                        fail!(chk, "fanotify: creating fan-probe: errno {e}");
                        return;
                    }
                }
                let _ = poll_in(UNS_A, PROMPT_MS);
                let n = match read_once(UNS_A, &mut self.events) {
                    Ok(n) => n,
                    Err(e) => {
                        fail!(chk, "fanotify: read: errno {e} (no event for fan-probe)");
                        return;
                    }
                };
                // struct fanotify_event_metadata { u32 event_len; u8 vers, reserved;
                // u16 metadata_len; u64 mask; i32 fd; i32 pid; }: each event brings an fd.
                let mut off = 0;
                let mut seen = false;
                let mut link = [0u8; 512];
                while off + 24 <= n {
                    let ev = &self.events[off..n];
                    let len = u32::from_ne_bytes([ev[0], ev[1], ev[2], ev[3]]) as usize;
                    let fd = i32::from_ne_bytes([ev[16], ev[17], ev[18], ev[19]]);
                    if fd >= 0 {
                        seen |= sys::fd_link(fd, &mut link).ends_with(b"/fan-probe");
                        sys::close(fd);
                    }
                    off += len.max(24);
                }
                if !seen {
                    fail!(
                        chk,
                        "fanotify: no FAN_CLOSE_WRITE event for fan-probe in {n} bytes of events"
                    );
                }
            }
        }
    }
}

impl crate::parts::Part for Unsupported {
    fn before_ready(&mut self) {
        for (i, &fd) in [UNS_A, UNS_B][..self.n].iter().enumerate() {
            self.before[i] = FdSnap::take(fd);
            self.info_len[i] =
                sys::read_file_into(&self.info_paths[i], &mut self.info_before[i]).unwrap_or(0);
        }
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("unsupported", &self.before[..self.n], chk);
        // /proc/self/fdinfo is the same (a timer's remaining time moves, a restored socket has
        // a new inode: not compared).
        if self.kind != Kind::Timerfd && self.kind != Kind::Socket {
            for i in 0..self.n {
                let before = &self.info_before[i][..self.info_len[i]];
                let (fd, path) = (self.fds()[i], &self.info_paths[i]);
                compare_fdinfo(fd, path, before, &mut self.info_after, chk);
            }
        }
        self.verify_kind(chk);
    }
}

// ---------------------------------------------------------------------------------------------
// `unlinked`: a file opened at fd 20 (O_RDWR, mode 0640) and dup'ed to fd 21, written, its
// offset at 3, then its name removed. After the restore: the same content, no name (nlink
// 0, link ends in " (deleted)"), the same mode, and one offset shared by both fds.

const UNLINKED: i32 = 20;
const UNLINKED_DUP: i32 = 21;
const UNLINKED_DATA: &[u8] = b"unlinked content, kept by rcr";

pub struct Unlinked {
    before: [FdSnap; 2],
}

impl Unlinked {
    pub fn new(ctx: &Ctx) -> Result<Unlinked, String> {
        let path = ctx.path("unlinked.txt");
        // SAFETY: open/write/lseek/unlink on a path and fds this scenario owns.
        unsafe {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
                0o640,
            );
            if fd < 0 {
                return Err(format!("open unlinked.txt: errno {}", errno()));
            }
            place(fd, UNLINKED, false)?;
            sys::write_all(UNLINKED, UNLINKED_DATA).map_err(|e| format!("write: errno {e}"))?;
            if libc::lseek(UNLINKED, 3, libc::SEEK_SET) != 3 {
                return Err(format!("lseek: errno {}", errno()));
            }
            if libc::dup2(UNLINKED, UNLINKED_DUP) != UNLINKED_DUP {
                return Err(format!("dup2: errno {}", errno()));
            }
            if libc::unlink(path.as_ptr()) != 0 {
                return Err(format!("unlink: errno {}", errno()));
            }
        }
        Ok(Unlinked {
            before: [FdSnap::EMPTY; 2],
        })
    }
}

impl crate::parts::Part for Unlinked {
    fn before_ready(&mut self) {
        self.before = snaps([UNLINKED, UNLINKED_DUP]);
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("unlinked", &self.before, chk);
        let mut buf = [0u8; 5];
        match read_once(UNLINKED, &mut buf) {
            Ok(5) if buf == UNLINKED_DATA[3..8] => {}
            got => fail!(
                chk,
                "unlinked fd {UNLINKED}: read at offset 3 gave {got:?} {buf:?}"
            ),
        }
        // SAFETY: lseek, fstat and pread on fds this scenario owns, into live buffers.
        unsafe {
            let shared = libc::lseek(UNLINKED_DUP, 0, libc::SEEK_CUR);
            if shared != 8 {
                fail!(
                    chk,
                    "unlinked fd {UNLINKED_DUP}: offset {shared}, expected 8 (shared)"
                );
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(UNLINKED, &mut st) != 0 {
                fail!(chk, "unlinked: fstat: errno {}", errno());
            } else {
                if st.st_nlink != 0 {
                    fail!(chk, "unlinked: nlink {}, expected 0", st.st_nlink);
                }
                if st.st_mode & 0o7777 != 0o640 {
                    fail!(
                        chk,
                        "unlinked: mode {:o}, expected 640",
                        st.st_mode & 0o7777
                    );
                }
                if st.st_size as usize != UNLINKED_DATA.len() {
                    fail!(chk, "unlinked: size {}", st.st_size);
                }
            }
            let mut all = [0u8; 64];
            let n = libc::pread(UNLINKED, all.as_mut_ptr().cast(), all.len(), 0);
            if n < 0 || &all[..n as usize] != UNLINKED_DATA {
                fail!(chk, "unlinked: content {:?}", &all[..n.max(0) as usize]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `locks`: an exclusive flock on DIR/lock-flock (fd 30), a POSIX write lock on bytes 20..29 of
// DIR/lock-posix (fd 31), an OFD read lock on bytes 5..9 of DIR/lock-ofd (fd 32). Fds 28 and
// 29 are other descriptions of lock-ofd and lock-flock, opened first, holding no lock. After
// the restore /proc/locks must show the same three locks on the same files, held by this
// process (POSIX, FLOCK) or by its description (OFD, pid -1), and /proc/self/fdinfo must show
// the flock and the OFD lock on fds 30 and 32, not on 29 and 28 (the descriptions that hold
// them, not merely some description of the same file).

const LOCK_FDS: [i32; 3] = [30, 31, 32];
const OTHER_OFD: i32 = 28;
const OTHER_FLOCK: i32 = 29;

/// Whether /proc/self/fdinfo/FD lists a lock of `kind` (FLOCK, POSIX, OFDLCK).
fn fdinfo_has_lock(fd: i32, kind: &str) -> bool {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("lock:") && l.split_whitespace().any(|w| w == kind))
}

pub struct Locks {
    inodes: [u64; 3],
}

fn lock_line(kind: &str, inode: u64, start: &str, end: &str, pid: &str, text: &str) -> bool {
    text.lines().any(|line| {
        let w: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
        w.len() >= 8
            && w[1] == kind
            && w[4] == pid
            && w[5].rsplit(':').next() == Some(inode.to_string().as_str())
            && w[6] == start
            && w[7] == end
    })
}

impl Locks {
    pub fn new(ctx: &Ctx) -> Result<Locks, String> {
        let mut inodes = [0u64; 3];
        for (i, name) in ["lock-flock", "lock-posix", "lock-ofd"].iter().enumerate() {
            let path = ctx.path(name);
            // SAFETY: open/write/fstat on a path and an fd this scenario owns.
            unsafe {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
                    0o600,
                );
                if fd < 0 {
                    return Err(format!("open {name}: errno {}", errno()));
                }
                place(fd, LOCK_FDS[i], false)?;
                sys::write_all(LOCK_FDS[i], &[b'l'; 64])
                    .map_err(|e| format!("write: errno {e}"))?;
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstat(LOCK_FDS[i], &mut st);
                inodes[i] = st.st_ino;
            }
        }
        let lock = |fd: i32, cmd: i32, kind: i32, start: i64, len: i64| -> Result<(), String> {
            // SAFETY: fcntl with a live struct flock.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = kind as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            fl.l_start = start;
            fl.l_len = len;
            if unsafe { libc::fcntl(fd, cmd, &fl) } != 0 {
                return Err(format!("fcntl lock fd {fd}: errno {}", errno()));
            }
            Ok(())
        };
        // SAFETY: flock on an fd this scenario owns.
        if unsafe { libc::flock(LOCK_FDS[0], libc::LOCK_EX) } != 0 {
            return Err(format!("flock: errno {}", errno()));
        }
        for (other, name) in [(OTHER_OFD, "lock-ofd"), (OTHER_FLOCK, "lock-flock")] {
            let path = ctx.path(name);
            // SAFETY: open of a path of this scenario.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
            if fd < 0 {
                return Err(format!("open {name} again: errno {}", errno()));
            }
            place(fd, other, false)?;
        }
        lock(LOCK_FDS[1], libc::F_SETLK, libc::F_WRLCK, 20, 10)?;
        lock(LOCK_FDS[2], libc::F_OFD_SETLK, libc::F_RDLCK, 5, 5)?;
        Ok(Locks { inodes })
    }
}

impl crate::parts::Part for Locks {
    fn before_ready(&mut self) {}

    fn verify(&mut self, chk: &mut Check) {
        let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        // SAFETY: getpid has no arguments.
        let pid = unsafe { libc::getpid() }.to_string();
        if !lock_line("FLOCK", self.inodes[0], "0", "EOF", &pid, &text) {
            fail!(chk, "locks: the flock on fd {} is gone", LOCK_FDS[0]);
        }
        if !lock_line("POSIX", self.inodes[1], "20", "29", &pid, &text) {
            fail!(
                chk,
                "locks: the POSIX lock 20..29 on fd {} is gone",
                LOCK_FDS[1]
            );
        }
        if !lock_line("OFDLCK", self.inodes[2], "5", "9", "-1", &text) {
            fail!(
                chk,
                "locks: the OFD lock 5..9 on fd {} is gone",
                LOCK_FDS[2]
            );
        }
        for (fd, kind, held) in [
            (LOCK_FDS[0], "FLOCK", true),
            (OTHER_FLOCK, "FLOCK", false),
            (LOCK_FDS[2], "OFDLCK", true),
            (OTHER_OFD, "OFDLCK", false),
        ] {
            if fdinfo_has_lock(fd, kind) != held {
                fail!(
                    chk,
                    "locks: fdinfo of fd {fd} {} a {kind} lock",
                    if held { "lacks" } else { "shows" }
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `pipe-outside`: pipes whose other end a process outside the tree holds, as a shell's
// `workload | cat > log` and `producer | workload` leave them. The test (the workload's
// parent) made two pipes and names in RCR_WORKLOAD_PIPE_FDS="W R" its fd of the write end of
// the first and of the read end of the second; the workload opens them through
// /proc/PPID/fd: fd 120 writes into the first (FD_CLOEXEC), fd 121 (O_NONBLOCK) reads the
// second. Before ready it writes "before" into 120. After go it reads DIR/mode and reads 121
// until end of file (5 s at most): `inherit` expects "queued" (what the test had written
// before the dump) then "more" (written by the test after the restore), `null` expects
// "queued" only; then it writes "after" into 120 (SIGPIPE is at its default, as in a C
// program: a write end without a reader kills it). Flags and FD_CLOEXEC of both fds are as
// at ready.

const OUTSIDE_WRITE: i32 = 120;
const OUTSIDE_READ: i32 = 121;

pub struct PipeOutside {
    mode_path: CString,
    flags: [i32; 2],
    fd_flags: [i32; 2],
}

impl PipeOutside {
    pub fn new(ctx: &Ctx) -> Result<PipeOutside, String> {
        let fds = std::env::var("RCR_WORKLOAD_PIPE_FDS")
            .map_err(|_| "RCR_WORKLOAD_PIPE_FDS is not set".to_owned())?;
        let mut numbers = fds.split_whitespace().map(|n| n.parse::<i32>());
        let (Some(Ok(w)), Some(Ok(r))) = (numbers.next(), numbers.next()) else {
            return Err(format!(
                "RCR_WORKLOAD_PIPE_FDS `{fds}`: two fd numbers expected"
            ));
        };
        // SAFETY: getppid has no arguments.
        let parent = unsafe { libc::getppid() };
        for (number, flags, at, cloexec) in [
            (w, libc::O_WRONLY, OUTSIDE_WRITE, true),
            (r, libc::O_RDONLY | libc::O_NONBLOCK, OUTSIDE_READ, false),
        ] {
            let path = sys::cstring(std::path::Path::new(&format!("/proc/{parent}/fd/{number}")));
            let fd = sys::open(&path, flags, 0)
                .map_err(|e| format!("open /proc/{parent}/fd/{number}: errno {e}"))?;
            place(fd, at, cloexec)?;
        }
        // As a C program has it (Rust's runtime ignores SIGPIPE): a write into a pipe without
        // a reader kills.
        // SAFETY: signal() with a constant disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        sys::write_all(OUTSIDE_WRITE, b"before").map_err(|e| format!("write before: errno {e}"))?;
        let mut me = PipeOutside {
            mode_path: ctx.path("mode"),
            flags: [0; 2],
            fd_flags: [0; 2],
        };
        for (i, fd) in [OUTSIDE_WRITE, OUTSIDE_READ].into_iter().enumerate() {
            // SAFETY: fcntl on our own fds.
            unsafe {
                me.flags[i] = libc::fcntl(fd, libc::F_GETFL);
                me.fd_flags[i] = libc::fcntl(fd, libc::F_GETFD);
            }
        }
        Ok(me)
    }
}

impl crate::parts::Part for PipeOutside {
    fn verify(&mut self, chk: &mut Check) {
        for (i, fd) in [OUTSIDE_WRITE, OUTSIDE_READ].into_iter().enumerate() {
            // SAFETY: fcntl on our own fds.
            let (flags, fd_flags) = unsafe {
                (
                    libc::fcntl(fd, libc::F_GETFL),
                    libc::fcntl(fd, libc::F_GETFD),
                )
            };
            let mask = libc::O_ACCMODE | libc::O_NONBLOCK;
            if flags & mask != self.flags[i] & mask || fd_flags != self.fd_flags[i] {
                fail!(
                    chk,
                    "pipe-outside fd {fd}: F_GETFL {flags:#o} F_GETFD {fd_flags}, expected {:#o} and {}",
                    self.flags[i],
                    self.fd_flags[i]
                );
            }
        }
        let mut mode = [0u8; 32];
        let n = match sys::open(&self.mode_path, libc::O_RDONLY, 0) {
            Ok(fd) => {
                let n = read_once(fd, &mut mode).unwrap_or(0);
                sys::close(fd);
                n
            }
            Err(e) => {
                fail!(chk, "DIR/mode: errno {e}");
                return;
            }
        };
        let expected: &[u8] = match mode[..n].trim_ascii() {
            b"inherit" => b"queuedmore",
            b"null" => b"queued",
            other => {
                fail!(chk, "DIR/mode: unknown mode `{}`", Shown(other));
                return;
            }
        };
        let mut got = [0u8; 64];
        let mut len = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        let eof = loop {
            if Instant::now() > deadline {
                break false;
            }
            let _ = poll_in(OUTSIDE_READ, 100);
            match read_once(OUTSIDE_READ, &mut got[len..]) {
                Ok(0) => break true,
                Ok(k) => len += k,
                Err(libc::EAGAIN) => {}
                Err(e) => {
                    fail!(chk, "read fd {OUTSIDE_READ}: errno {e}");
                    return;
                }
            }
            if len == got.len() {
                break false;
            }
        };
        if &got[..len] != expected || !eof {
            fail!(
                chk,
                "fd {OUTSIDE_READ} read `{}`{}, expected `{}` then end of file",
                Shown(&got[..len]),
                if eof {
                    " then end of file"
                } else {
                    " without end of file"
                },
                Shown(expected)
            );
        }
        if let Err(e) = sys::write_all(OUTSIDE_WRITE, b"after") {
            fail!(chk, "write after into fd {OUTSIDE_WRITE}: errno {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `locks-mapped`: POSIX record locks on files the process also maps, as a database keeps its
// shared-memory index (SQLite's WAL -shm file) locked while it maps it. Each file is 8 KiB:
// - DIR/lock-shm: fd 110 (O_RDWR), mapped MAP_SHARED read-write (one byte written through
//   the mapping); a POSIX read lock on bytes 0..9 and a write lock on 120..139.
// - DIR/lock-priv: fd 111 (O_RDONLY), mapped MAP_PRIVATE read-write (one byte written, a
//   private copy); a POSIX read lock on bytes 10..19.
// - DIR/lock-twice: opened twice, fds 112 and 113 (two descriptions, both O_RDWR); a write
//   lock on bytes 0..4 through 112, a read lock on 50..59 through 113; mapped MAP_SHARED
//   read-only through 113.
// - DIR/lock-plain: fd 114 (O_RDWR), not mapped, a write lock from byte 4096 to the end of
//   the file (length 0).
// After the restore each lock is there with its range and type: F_OFD_GETLK through the fd
// that took it (an OFD lock request conflicts with the process' own POSIX locks, so the
// kernel reports each one; nothing is opened or closed, which would drop them) gives back
// the lock's type, start, length and this pid, and /proc/locks lists it for this pid.

const MAPPED_LOCK_FDS: [i32; 5] = [110, 111, 112, 113, 114];
const MAPPED_LOCK_FILES: [&str; 4] = ["lock-shm", "lock-priv", "lock-twice", "lock-plain"];
/// (fd, write, start, length) of every lock `locks-mapped` holds.
const MAPPED_LOCKS: [(i32, bool, i64, i64); 5] = [
    (110, false, 0, 10),
    (110, true, 120, 20),
    (111, false, 10, 10),
    (112, true, 0, 5),
    (113, false, 50, 10),
];
const PLAIN_LOCK: (i32, bool, i64, i64) = (114, true, 4096, 0);

pub struct LocksMapped {
    /// Inode of the file of each lock of MAPPED_LOCKS, then of PLAIN_LOCK.
    inodes: [u64; 6],
    _maps: Vec<Mapping>,
}

/// A POSIX lock (F_SETLK) or an OFD probe (F_OFD_GETLK) on `fd`; returns the flock.
fn record_lock(fd: i32, cmd: i32, write: bool, start: i64, len: i64) -> Result<libc::flock, i32> {
    // SAFETY: struct flock is plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fcntl with a live struct flock.
    if unsafe { libc::fcntl(fd, cmd, &mut fl) } != 0 {
        return Err(errno());
    }
    Ok(fl)
}

fn fstat_inode(fd: i32) -> u64 {
    // SAFETY: fstat into a zeroed struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st);
        st.st_ino
    }
}

impl LocksMapped {
    pub fn new(ctx: &Ctx) -> Result<LocksMapped, String> {
        const SIZE: usize = 8192;
        let mut maps = Vec::new();
        // The files, each 8 KiB of 'm'.
        for name in MAPPED_LOCK_FILES {
            let path = ctx.path(name);
            let fd = sys::open(&path, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o600)
                .map_err(|e| format!("create {name}: errno {e}"))?;
            sys::write_all(fd, &[b'm'; SIZE]).map_err(|e| format!("write {name}: errno {e}"))?;
            sys::close(fd);
        }
        let opens = [
            ("lock-shm", libc::O_RDWR),
            ("lock-priv", libc::O_RDONLY),
            ("lock-twice", libc::O_RDWR),
            ("lock-twice", libc::O_RDWR),
            ("lock-plain", libc::O_RDWR),
        ];
        for (i, (name, flags)) in opens.iter().enumerate() {
            let fd = sys::open(&ctx.path(name), *flags, 0)
                .map_err(|e| format!("open {name}: errno {e}"))?;
            place(fd, MAPPED_LOCK_FDS[i], false)?;
        }
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let mut shm = Mapping::file(110, SIZE, rw, libc::MAP_SHARED)?;
        shm.bytes_mut()[100] = b'S';
        let mut private = Mapping::file(111, SIZE, rw, libc::MAP_PRIVATE)?;
        private.bytes_mut()[200] = b'P';
        let twice = Mapping::file(113, SIZE, libc::PROT_READ, libc::MAP_SHARED)?;
        maps.extend([shm, private, twice]);
        let mut inodes = [0u64; 6];
        for (i, &(fd, write, start, len)) in MAPPED_LOCKS.iter().chain([&PLAIN_LOCK]).enumerate() {
            record_lock(fd, libc::F_SETLK, write, start, len)
                .map_err(|e| format!("lock fd {fd} {start}+{len}: errno {e}"))?;
            inodes[i] = fstat_inode(fd);
        }
        Ok(LocksMapped {
            inodes,
            _maps: maps,
        })
    }
}

impl crate::parts::Part for LocksMapped {
    fn verify(&mut self, chk: &mut Check) {
        let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        let pid = sys::getpid();
        let pid_text = pid.to_string();
        for (i, &(fd, write, start, len)) in MAPPED_LOCKS.iter().chain([&PLAIN_LOCK]).enumerate() {
            let kind = if write { "write" } else { "read" };
            match record_lock(fd, libc::F_OFD_GETLK, true, start, len) {
                Err(e) => fail!(chk, "locks-mapped: F_OFD_GETLK on fd {fd}: errno {e}"),
                Ok(fl) if fl.l_type == libc::F_UNLCK as i16 => fail!(
                    chk,
                    "locks-mapped: the POSIX {kind} lock {start}+{len} taken through fd {fd} is gone"
                ),
                Ok(fl) => {
                    let want = if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
                    if fl.l_type != want
                        || fl.l_start != start
                        || fl.l_len != len
                        || fl.l_pid != pid
                    {
                        fail!(
                            chk,
                            "locks-mapped: fd {fd}: expected a {kind} lock {start}+{len} of pid {pid}, found type {} {}+{} of pid {}",
                            fl.l_type,
                            fl.l_start,
                            fl.l_len,
                            fl.l_pid
                        );
                    }
                }
            }
            let end = if len == 0 {
                "EOF".to_owned()
            } else {
                (start + len - 1).to_string()
            };
            let listed = text.lines().any(|line| {
                let w: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
                w.len() >= 8
                    && w[1] == "POSIX"
                    && w[3] == if write { "WRITE" } else { "READ" }
                    && w[4] == pid_text
                    && w[5].rsplit(':').next() == Some(self.inodes[i].to_string().as_str())
                    && w[6] == start.to_string()
                    && w[7] == end
            });
            if !listed {
                fail!(
                    chk,
                    "locks-mapped: /proc/locks lacks the POSIX {kind} lock {start}..{end} of fd {fd}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `fifo`: a named pipe DIR/fifo, read end fd 40 (O_NONBLOCK), write end fd 41, holding
// "through the fifo" unread. After the restore: both fds name DIR/fifo, the flags are as
// before, the data comes out of fd 40, and a new write through 41 comes out too.

const FIFO_R: i32 = 40;
const FIFO_W: i32 = 41;
const FIFO_DATA: &[u8] = b"through the fifo";

pub struct Fifo {
    before: [FdSnap; 2],
}

impl Fifo {
    pub fn new(ctx: &Ctx) -> Result<Fifo, String> {
        let path = ctx.path("fifo");
        // SAFETY: mkfifo/open on a path of this scenario, fds it owns.
        unsafe {
            if libc::mkfifo(path.as_ptr(), 0o600) != 0 {
                return Err(format!("mkfifo: errno {}", errno()));
            }
            let r = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK);
            if r < 0 {
                return Err(format!("open fifo for reading: errno {}", errno()));
            }
            place(r, FIFO_R, false)?;
            let w = libc::open(path.as_ptr(), libc::O_WRONLY);
            if w < 0 {
                return Err(format!("open fifo for writing: errno {}", errno()));
            }
            place(w, FIFO_W, false)?;
        }
        sys::write_all(FIFO_W, FIFO_DATA).map_err(|e| format!("write fifo: errno {e}"))?;
        Ok(Fifo {
            before: [FdSnap::EMPTY; 2],
        })
    }
}

impl crate::parts::Part for Fifo {
    fn before_ready(&mut self) {
        self.before = snaps([FIFO_R, FIFO_W]);
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("fifo", &self.before, chk);
        let mut buf = [0u8; 64];
        match read_once(FIFO_R, &mut buf) {
            Ok(n) if &buf[..n] == FIFO_DATA => {}
            got => fail!(chk, "fifo fd {FIFO_R}: read gave {got:?} {:?}", &buf[..16]),
        }
        if let Err(e) = sys::write_all(FIFO_W, b"again") {
            fail!(chk, "fifo fd {FIFO_W}: write: errno {e}");
        }
        match read_once(FIFO_R, &mut buf) {
            Ok(5) if &buf[..5] == b"again" => {}
            got => fail!(chk, "fifo fd {FIFO_R}: second read gave {got:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `fdowner`: a pipe (read end fd 50, write end 51) whose read end's description has this
// process as owner (F_SETOWN) and SIGUSR2 as its signal (F_SETSIG), with O_ASYNC. After the
// restore F_GETOWN and F_GETSIG say the same.

const OWNED_R: i32 = 50;
const OWNED_W: i32 = 51;

pub struct FdOwner {
    pid: i32,
}

impl FdOwner {
    pub fn new() -> Result<FdOwner, String> {
        let mut p = [0i32; 2];
        // SAFETY: pipe/fcntl/getpid on fds this scenario owns; SIGUSR2 is ignored so that a
        // stray SIGIO-as-SIGUSR2 cannot kill the workload.
        unsafe {
            if libc::pipe(p.as_mut_ptr()) != 0 {
                return Err(format!("pipe: errno {}", errno()));
            }
            place(p[0], OWNED_R, false)?;
            place(p[1], OWNED_W, false)?;
            libc::signal(libc::SIGUSR2, libc::SIG_IGN);
            let pid = libc::getpid();
            if libc::fcntl(OWNED_R, libc::F_SETOWN, pid) != 0
                || libc::fcntl(OWNED_R, 10 /* F_SETSIG */, libc::SIGUSR2) != 0
            {
                return Err(format!("F_SETOWN/F_SETSIG: errno {}", errno()));
            }
            Ok(FdOwner { pid })
        }
    }
}

impl crate::parts::Part for FdOwner {
    fn before_ready(&mut self) {}

    fn verify(&mut self, chk: &mut Check) {
        // SAFETY: fcntl queries on an fd this scenario owns.
        let (owner, signal) = unsafe {
            (
                libc::fcntl(OWNED_R, libc::F_GETOWN),
                libc::fcntl(OWNED_R, 11 /* F_GETSIG */),
            )
        };
        if owner != self.pid {
            fail!(chk, "fd {OWNED_R}: F_GETOWN {owner}, expected {}", self.pid);
        }
        if signal != libc::SIGUSR2 {
            fail!(chk, "fd {OWNED_R}: F_GETSIG {signal}, expected SIGUSR2");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `MoreKinds`, a part of `files-all` (the kinds the other parts hold at fds of their own):
// fd 100/101 an anonymous pipe holding "pipe-data"; fd 102 a signalfd for SIGUSR1|SIGUSR2;
// fd 103 a timerfd armed at 3600 s with interval 3600 s; fd 104 an epoll registered on fd 100
// (EPOLLIN, data 0x100) and fd 101 (EPOLLOUT, data 0x101); fd 105 a memfd "files-all" holding
// "memfd-content"; fd 106 /dev/zero; fd 107 the directory DIR. After go: each is as before
// (FdSnap), the pipe delivers, the signalfd's mask and the timer are as set, the epoll
// reports both pipe ends with their data, the memfd holds its content under its name,
// /dev/zero reads zeros, fd 107 is DIR.

const MORE_PIPE_R: i32 = 100;
const MORE_PIPE_W: i32 = 101;
const MORE_SIGNALFD: i32 = 102;
const MORE_TIMERFD: i32 = 103;
const MORE_EPOLL: i32 = 104;
const MORE_MEMFD: i32 = 105;
const MORE_ZERO: i32 = 106;
const MORE_DIR: i32 = 107;
const MORE_ALL: [i32; 8] = [
    MORE_PIPE_R,
    MORE_PIPE_W,
    MORE_SIGNALFD,
    MORE_TIMERFD,
    MORE_EPOLL,
    MORE_MEMFD,
    MORE_ZERO,
    MORE_DIR,
];

pub struct MoreKinds {
    before: [FdSnap; 8],
    sigmask_before: [u8; 512],
    sigmask_len: usize,
    fdinfo_path: CString,
    scratch: Vec<u8>,
}

/// The "sigmask:" line of an fdinfo text.
fn sigmask_line(text: &[u8]) -> &[u8] {
    text.split(|&b| b == b'\n')
        .find(|l| l.starts_with(b"sigmask:"))
        .unwrap_or(&[])
}

impl MoreKinds {
    pub fn new(ctx: &Ctx) -> Result<MoreKinds, String> {
        let fail = |what: &str| format!("more kinds: {what}: errno {}", errno());
        make_pipe(MORE_PIPE_R, MORE_PIPE_W)?;
        sys::write_all(MORE_PIPE_W, b"pipe-data").map_err(|_| fail("write the pipe"))?;
        // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset; the calls below
        // create fds this part owns from valid arguments.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            let sfd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK);
            if sfd < 0 {
                return Err(fail("signalfd"));
            }
            place(sfd, MORE_SIGNALFD, false)?;
            let tfd = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK);
            if tfd < 0 {
                return Err(fail("timerfd_create"));
            }
            place(tfd, MORE_TIMERFD, false)?;
            let hour = libc::timespec {
                tv_sec: TIMER_SECS,
                tv_nsec: 0,
            };
            let spec = libc::itimerspec {
                it_interval: hour,
                it_value: hour,
            };
            if libc::timerfd_settime(MORE_TIMERFD, 0, &spec, std::ptr::null_mut()) != 0 {
                return Err(fail("timerfd_settime"));
            }
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if ep < 0 {
                return Err(fail("epoll_create1"));
            }
            place(ep, MORE_EPOLL, true)?;
            for (fd, events, data) in [
                (MORE_PIPE_R, libc::EPOLLIN, 0x100u64),
                (MORE_PIPE_W, libc::EPOLLOUT, 0x101),
            ] {
                let mut ev = libc::epoll_event {
                    events: events as u32,
                    u64: data,
                };
                if libc::epoll_ctl(MORE_EPOLL, libc::EPOLL_CTL_ADD, fd, &mut ev) != 0 {
                    return Err(fail("epoll_ctl"));
                }
            }
            let mfd = libc::memfd_create(c"files-all".as_ptr(), 0);
            if mfd < 0 {
                return Err(fail("memfd_create"));
            }
            place(mfd, MORE_MEMFD, false)?;
            let zero = libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY);
            if zero < 0 {
                return Err(fail("open /dev/zero"));
            }
            place(zero, MORE_ZERO, false)?;
            let dir = ctx.path(".");
            let d = libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            if d < 0 {
                return Err(fail("open DIR"));
            }
            place(d, MORE_DIR, false)?;
        }
        sys::write_all(MORE_MEMFD, b"memfd-content").map_err(|_| fail("write the memfd"))?;
        Ok(MoreKinds {
            before: [FdSnap::EMPTY; 8],
            sigmask_before: [0; 512],
            sigmask_len: 0,
            fdinfo_path: CString::new(format!("/proc/self/fdinfo/{MORE_SIGNALFD}"))
                .expect("no NUL"),
            scratch: vec![0u8; 4096],
        })
    }
}

impl crate::parts::Part for MoreKinds {
    fn before_ready(&mut self) {
        self.before = snaps(MORE_ALL);
        let n = sys::read_file_into(&self.fdinfo_path, &mut self.scratch).unwrap_or(0);
        let line = sigmask_line(&self.scratch[..n]);
        self.sigmask_len = line.len().min(512);
        self.sigmask_before[..self.sigmask_len].copy_from_slice(&line[..self.sigmask_len]);
    }

    fn verify(&mut self, chk: &mut Check) {
        verify_snaps("more kinds", &self.before, chk);
        let mut buf = [0u8; 32];
        match read_once(MORE_PIPE_R, &mut buf) {
            Ok(9) if &buf[..9] == b"pipe-data" => {}
            got => fail!(chk, "more kinds: pipe read {got:?}"),
        }
        let n = sys::read_file_into(&self.fdinfo_path, &mut self.scratch).unwrap_or(0);
        let now = sigmask_line(&self.scratch[..n]);
        if now.is_empty() || now != &self.sigmask_before[..self.sigmask_len] {
            fail!(
                chk,
                "more kinds: signalfd `{}`, was `{}`",
                Shown(now),
                Shown(&self.sigmask_before[..self.sigmask_len])
            );
        }
        // SAFETY: timerfd_gettime fills a local itimerspec.
        let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let r = unsafe { libc::timerfd_gettime(MORE_TIMERFD, &mut cur) };
        if r != 0 || cur.it_interval.tv_sec != TIMER_SECS || cur.it_value.tv_sec == 0 {
            fail!(
                chk,
                "more kinds: timerfd value {} s interval {} s",
                cur.it_value.tv_sec,
                cur.it_interval.tv_sec
            );
        }
        // The pipe is empty now: only the write end is ready.
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: room for 4 events.
        let n = unsafe { libc::epoll_wait(MORE_EPOLL, events.as_mut_ptr(), 4, 0) };
        if n != 1 || events[0].u64 != 0x101 || events[0].events != libc::EPOLLOUT as u32 {
            fail!(
                chk,
                "more kinds: epoll_wait gave {n} events, expected fd 101's EPOLLOUT"
            );
        }
        if sys::write_all(MORE_PIPE_W, b"x").is_err() {
            fail!(chk, "more kinds: write the pipe: errno {}", errno());
        }
        // SAFETY: room for 4 events.
        let n = unsafe { libc::epoll_wait(MORE_EPOLL, events.as_mut_ptr(), 4, 0) };
        if n != 2 {
            fail!(
                chk,
                "more kinds: epoll_wait after a write gave {n} events, expected 2"
            );
        }
        // SAFETY: pread into a local buffer.
        let n = unsafe { libc::pread(MORE_MEMFD, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n != 13 || &buf[..13] != b"memfd-content" {
            fail!(
                chk,
                "more kinds: memfd holds {n} bytes `{}`",
                Shown(&buf[..n.max(0) as usize])
            );
        }
        match read_once(MORE_ZERO, &mut buf) {
            Ok(32) if buf.iter().all(|&b| b == 0) => {}
            got => fail!(chk, "more kinds: /dev/zero read {got:?}"),
        }
    }
}
