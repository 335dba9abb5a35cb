//! Terminal scenarios: `ttys` (a pty pair inside the tree) and `ttyshell` (a tiny shell whose
//! job, `ttyjob`, runs on the shell's terminal; the tests dump the job with --shell-job).
//!
//! - `ttys`: root P opens /dev/ptmx at fd 10 (index N). Child C (armed `C`) starts a session
//!   (setsid), opens /dev/pts/N without O_NOCTTY (its controlling terminal) at fd 11, sets
//!   ECHO off, VINTR ^G, VQUIT disabled, a window of 33x101 (7x9 pixels), TIOCEXCL, forks G
//!   (armed `G`, a process group of its own in C's session) and makes G's group the
//!   foreground, then writes "from the slave\n" on fd 11 (unread by P: the master's queue
//!   holds "from the slave\r\n"). Then P turns packet mode on and writes "line one\npartial"
//!   on the master (unread: the slave's queue holds one complete line and a partial one),
//!   and writes ready. After go: P checks fd 10 (link, flags, TIOCGPTN N, packet mode, window
//!   size), reads at once [TIOCPKT_DATA] "from the slave\r\n", then waits for "ping\r\n" and
//!   answers "pong\n". G checks it is the foreground group, that /dev/tty opens (the same
//!   terminal), that its session is C's; reads "line one\n" (FIONREAD 9), sees the partial
//!   line is not readable in canonical mode, reads "partial" with ICANON off, puts the
//!   settings back and creates DIR/g-input-done; then reads "pong\n". C waits for
//!   g-input-done, checks fd 11 (link /dev/pts/N, flags), the settings (TCGETS2, every
//!   field), the window size, TIOCGEXCL, that the terminal's session is C and its
//!   foreground group G, that /dev/tty opens; then writes "ping\n" and collects G.
//! - `ttyshell` (started with fds 0-2 on a terminal it has as controlling terminal, leading
//!   its session; RCR_WORKLOAD_NO_SETSID=1): forks the job J, puts it in a group of its own
//!   in the foreground, waits for it and exits with its status. J runs the single-process
//!   flow with the `ttyjob` part: before ready it waits to be in the foreground; after go it
//!   checks that fds 0, 1 and 2 are on the terminal named in DIR/newtty (written by the test
//!   before go), with the same flags, that it is the foreground group, that /dev/tty opens
//!   (the same terminal), writes "job-output\n" on fd 1 and reads the line "typed-line\n"
//!   from fd 0 (30 s bound). Its PASS/FAIL line goes to fd 1, the terminal.

use crate::files::{Child, wait_armed};
use crate::procs::abort_setup;
use crate::procs::{MapsBufs, Member, Own};
use crate::sys::{self, Shown, errno};
use crate::{Check, Ctx, fail};
use std::ffi::CString;
use std::time::{Duration, Instant};

pub const MASTER: i32 = 10;
pub const SLAVE: i32 = 11;
const ROWS: u16 = 33;
const COLS: u16 = 101;
const XPIXEL: u16 = 7;
const YPIXEL: u16 = 9;
const VINTR_CHAR: u8 = 0x07;
const OUT_DATA: &[u8] = b"from the slave\n";
const OUT_SEEN: &[u8] = b"from the slave\r\n";
const IN_DATA: &[u8] = b"line one\npartial";
const PING_SEEN: &[u8] = b"ping\r\n";

fn ioctl_int(fd: i32, request: libc::Ioctl) -> Result<i32, i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int.
    if unsafe { libc::ioctl(fd, request, &mut v) } != 0 {
        return Err(errno());
    }
    Ok(v)
}

fn termios2(fd: i32) -> Result<libc::termios2, i32> {
    let mut t = libc::termios2 {
        c_iflag: 0,
        c_oflag: 0,
        c_cflag: 0,
        c_lflag: 0,
        c_line: 0,
        c_cc: [0; 19],
        c_ispeed: 0,
        c_ospeed: 0,
    };
    // SAFETY: TCGETS2 writes one termios2.
    if unsafe { libc::ioctl(fd, libc::TCGETS2, &mut t) } != 0 {
        return Err(errno());
    }
    Ok(t)
}

fn set_termios2(fd: i32, t: &libc::termios2) -> Result<(), i32> {
    // SAFETY: TCSETS2 reads one termios2.
    if unsafe { libc::ioctl(fd, libc::TCSETS2, t) } != 0 {
        return Err(errno());
    }
    Ok(())
}

fn winsize(fd: i32) -> Result<[u16; 4], i32> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } != 0 {
        return Err(errno());
    }
    Ok([w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel])
}

fn fcntl(fd: i32, cmd: i32) -> i32 {
    // SAFETY: an fcntl query has no memory effects.
    unsafe { libc::fcntl(fd, cmd) }
}

/// poll for POLLIN with a timeout: Ok(true) if readable.
fn readable_within(fd: i32, ms: i32) -> Result<bool, i32> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        return Err(errno());
    }
    Ok(r > 0 && p.revents & libc::POLLIN != 0)
}

fn read_once(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: read writes at most buf.len() bytes into buf.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

/// open("/dev/tty") works and is the same terminal as `fd` (same session, same size).
fn check_dev_tty(fd: i32, who: &str, chk: &mut Check) {
    // SAFETY: a NUL-terminated path.
    let t = unsafe {
        libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if t < 0 {
        fail!(
            chk,
            "{who}: open(/dev/tty): errno {} (no controlling terminal?)",
            errno()
        );
        return;
    }
    // /dev/tty is an inode of its own: compare what the two say about the terminal.
    // SAFETY: tcgetsid only queries.
    let (a, b) = unsafe { (libc::tcgetsid(t), libc::tcgetsid(fd)) };
    if a != b || a <= 0 || winsize(t) != winsize(fd) {
        fail!(
            chk,
            "{who}: /dev/tty (session {a}, size {:?}) is not the terminal of fd {fd} (session {b}, size {:?})",
            winsize(t),
            winsize(fd)
        );
    }
    sys::close(t);
}

/// Link and flags of an fd, kept from before ready.
struct Snap {
    fd: i32,
    link: [u8; 512],
    len: usize,
    flags: i32,
}

impl Snap {
    fn take(fd: i32) -> Snap {
        let mut link = [0u8; 512];
        let len = sys::fd_link(fd, &mut link).len();
        Snap {
            fd,
            link,
            len,
            // O_LARGEFILE depends on how the fd was opened (a 64-bit open(2) adds it).
            // (The kernel's O_LARGEFILE: libc's is 0 on x86_64.)
            flags: fcntl(fd, libc::F_GETFL) & !0o100000,
        }
    }

    /// Same flags; link as before, or `expected` when given.
    fn verify(&self, expected: Option<&[u8]>, who: &str, chk: &mut Check) {
        let now = Snap::take(self.fd);
        let want = expected.unwrap_or(&self.link[..self.len]);
        if &now.link[..now.len] != want {
            fail!(
                chk,
                "{who}: fd {} is `{}`, expected `{}`",
                self.fd,
                Shown(&now.link[..now.len]),
                Shown(want)
            );
        }
        if now.flags != self.flags {
            fail!(
                chk,
                "{who}: fd {} F_GETFL {:#o}, expected {:#o} (O_LARGEFILE ignored)",
                self.fd,
                now.flags,
                self.flags
            );
        }
    }
}

/// Reads from the master (packet mode: each read starts with a status byte, 0 for data)
/// until `total` payload bytes are in `got`, or `deadline`.
fn read_master(
    got: &mut [u8],
    mut have: usize,
    total: usize,
    deadline: Instant,
    chk: &mut Check,
) -> usize {
    let mut buf = [0u8; 256];
    while have < total {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i32;
        match readable_within(MASTER, left.max(0)) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                fail!(chk, "P: poll on the master: errno {e}");
                break;
            }
        }
        match read_once(MASTER, &mut buf) {
            Ok(0) => break,
            Ok(n) if buf[0] != 0 => {
                fail!(
                    chk,
                    "P: packet mode read gave status {:#x} ({} bytes), expected TIOCPKT_DATA",
                    buf[0],
                    n
                );
                break;
            }
            Ok(n) => {
                let take = (n - 1).min(got.len() - have);
                got[have..have + take].copy_from_slice(&buf[1..1 + take]);
                have += take;
            }
            Err(e) => {
                fail!(chk, "P: read on the master: errno {e}");
                break;
            }
        }
    }
    have
}

/// `ttys`: see the module documentation.
pub fn ttys(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let bound = sys::wait_bound();
    // SAFETY: a NUL-terminated path.
    let m = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if m < 0 {
        crate::die(format_args!("ttys: open /dev/ptmx: errno {}", errno()));
    }
    // SAFETY: dup2 onto a free fd number of ours.
    if unsafe { libc::dup2(m, MASTER) } != MASTER {
        crate::die(format_args!("ttys: dup2 master: errno {}", errno()));
    }
    sys::close(m);
    // SAFETY: unlockpt on our master.
    if unsafe { libc::unlockpt(MASTER) } != 0 {
        crate::die(format_args!("ttys: unlockpt: errno {}", errno()));
    }
    let index = match ioctl_int(MASTER, libc::TIOCGPTN) {
        Ok(n) => n,
        Err(e) => crate::die(format_args!("ttys: TIOCGPTN: errno {e}")),
    };
    let slave_path = CString::new(format!("/dev/pts/{index}")).unwrap();
    let input_done = ctx.path("g-input-done");
    let c = match sys::fork() {
        Ok(0) => ttys_c(ctx, bufs, &slave_path, &input_done, bound),
        Ok(pid) => pid,
        Err(e) => crate::die(format_args!("ttys: fork: errno {e}")),
    };
    if let Err(e) = wait_armed(ctx, "C", c) {
        abort_setup(&[c], &[], &format!("ttys: {e}"));
    }
    // Packet mode, then the input the slave side has not read.
    if let Err(e) = ioctl_set_int(MASTER, libc::TIOCPKT, 1) {
        abort_setup(&[c], &[], &format!("ttys: TIOCPKT: errno {e}"));
    }
    if let Err(e) = sys::write_all(MASTER, IN_DATA) {
        abort_setup(&[c], &[], &format!("ttys: write on the master: errno {e}"));
    }
    let child = Child::new(ctx, "C", c);
    let before = Snap::take(MASTER);
    let own = crate::procs::root_ready(ctx, bufs, &[c], &[]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    before.verify(None, "P (master)", &mut chk);
    match ioctl_int(MASTER, libc::TIOCGPTN) {
        Ok(n) if n == index => {}
        other => fail!(chk, "P: TIOCGPTN is {other:?}, expected {index}"),
    }
    match ioctl_int(MASTER, libc::TIOCGPKT) {
        Ok(1) => {}
        other => fail!(chk, "P: TIOCGPKT is {other:?}, expected packet mode on"),
    }
    match winsize(MASTER) {
        Ok(w) if w == [ROWS, COLS, XPIXEL, YPIXEL] => {}
        other => fail!(chk, "P: window size through the master is {other:?}"),
    }
    // The slave's output is there at once.
    let mut got = [0u8; 64];
    let total = OUT_SEEN.len() + PING_SEEN.len();
    let mut have = 0;
    match readable_within(MASTER, 0) {
        Ok(true) => have = read_master(&mut got, 0, OUT_SEEN.len(), Instant::now(), &mut chk),
        other => fail!(
            chk,
            "P: the master's queue is not readable right after go: {other:?}"
        ),
    }
    if have < OUT_SEEN.len() || &got[..OUT_SEEN.len()] != OUT_SEEN {
        fail!(
            chk,
            "P: the master's queue held `{}`, expected `{}`",
            Shown(&got[..have]),
            Shown(OUT_SEEN)
        );
    }
    // Then C's ping, answered with a pong for G.
    let have = read_master(&mut got, have, total, Instant::now() + bound, &mut chk);
    if have != total || &got[OUT_SEEN.len()..have] != PING_SEEN {
        fail!(
            chk,
            "P: the master read `{}`, expected `{}{}`",
            Shown(&got[..have]),
            Shown(OUT_SEEN),
            Shown(PING_SEEN)
        );
    }
    if let Err(e) = sys::write_all(MASTER, b"pong\n") {
        fail!(chk, "P: write pong on the master: errno {e}");
    }
    child.collect(Instant::now() + bound, &mut chk);
    chk.finish()
}

fn ioctl_set_int(fd: i32, request: libc::Ioctl, value: i32) -> Result<(), i32> {
    let v: libc::c_int = value;
    // SAFETY: the request reads one int.
    if unsafe { libc::ioctl(fd, request, &v) } != 0 {
        return Err(errno());
    }
    Ok(())
}

fn ttys_c(
    ctx: &Ctx,
    bufs: &mut MapsBufs,
    slave_path: &CString,
    input_done: &CString,
    bound: Duration,
) -> ! {
    let me = Member::new(ctx, "C");
    sys::close(MASTER);
    // SAFETY: setsid has no memory effects.
    if unsafe { libc::setsid() } < 0 {
        me.setup_failed(&format!("setsid: errno {}", errno()));
    }
    // Without O_NOCTTY: the terminal becomes this session's controlling terminal.
    // SAFETY: a NUL-terminated path.
    let s = unsafe { libc::open(slave_path.as_ptr(), libc::O_RDWR) };
    if s < 0 {
        me.setup_failed(&format!(
            "open {}: errno {}",
            slave_path.to_string_lossy(),
            errno()
        ));
    }
    // SAFETY: dup2 onto a free fd number of ours.
    if unsafe { libc::dup2(s, SLAVE) } != SLAVE {
        me.setup_failed(&format!("dup2 slave: errno {}", errno()));
    }
    sys::close(s);
    let mut t = match termios2(SLAVE) {
        Ok(t) => t,
        Err(e) => me.setup_failed(&format!("TCGETS2: errno {e}")),
    };
    t.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
    t.c_cc[libc::VINTR] = VINTR_CHAR;
    t.c_cc[libc::VQUIT] = 0;
    if let Err(e) = set_termios2(SLAVE, &t) {
        me.setup_failed(&format!("TCSETS2: errno {e}"));
    }
    let w = libc::winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: XPIXEL,
        ws_ypixel: YPIXEL,
    };
    // SAFETY: TIOCSWINSZ reads one winsize; TIOCEXCL takes no argument.
    if unsafe { libc::ioctl(SLAVE, libc::TIOCSWINSZ, &w) } != 0
        || unsafe { libc::ioctl(SLAVE, libc::TIOCEXCL) } != 0
    {
        me.setup_failed(&format!("TIOCSWINSZ/TIOCEXCL: errno {}", errno()));
    }
    let settings = match termios2(SLAVE) {
        Ok(t) => t,
        Err(e) => me.setup_failed(&format!("TCGETS2: errno {e}")),
    };
    let g = match sys::fork() {
        Ok(0) => ttys_g(ctx, bufs, input_done, bound),
        Ok(pid) => pid,
        Err(e) => me.setup_failed(&format!("fork: errno {e}")),
    };
    // SAFETY: setpgid and tcsetpgrp on our own child and terminal.
    unsafe { libc::setpgid(g, g) };
    // SAFETY: as above (C leads the foreground group until now).
    if unsafe { libc::tcsetpgrp(SLAVE, g) } != 0 {
        me.setup_failed(&format!("tcsetpgrp: errno {}", errno()));
    }
    if let Err(e) = wait_armed(ctx, "G", g) {
        // SAFETY: kill and reap our own child.
        unsafe {
            libc::kill(g, libc::SIGKILL);
            libc::waitpid(g, std::ptr::null_mut(), 0);
        }
        me.setup_failed(&e);
    }
    if let Err(e) = sys::write_all(SLAVE, OUT_DATA) {
        me.setup_failed(&format!("write on the slave: errno {e}"));
    }
    let grandchild = Child::new(ctx, "G", g);
    let before = Snap::take(SLAVE);
    let own = match Own::record(bufs) {
        Ok(o) => o,
        Err(e) => me.setup_failed(&e),
    };
    me.arm();
    sys::wait_for_every(&ctx.go, 20);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    let deadline = Instant::now() + bound;
    while !sys::exists(input_done) && Instant::now() < deadline {
        sys::sleep_ms(10);
    }
    before.verify(None, "C (slave)", &mut chk);
    match termios2(SLAVE) {
        Ok(now) => {
            let same = (
                now.c_iflag,
                now.c_oflag,
                now.c_cflag,
                now.c_lflag,
                now.c_line,
            ) == (
                settings.c_iflag,
                settings.c_oflag,
                settings.c_cflag,
                settings.c_lflag,
                settings.c_line,
            ) && now.c_cc == settings.c_cc
                && (now.c_ispeed, now.c_ospeed) == (settings.c_ispeed, settings.c_ospeed);
            if !same {
                fail!(
                    chk,
                    "C: terminal settings iflag {:#o} oflag {:#o} cflag {:#o} lflag {:#o} cc {:?}, expected {:#o} {:#o} {:#o} {:#o} {:?}",
                    now.c_iflag,
                    now.c_oflag,
                    now.c_cflag,
                    now.c_lflag,
                    now.c_cc,
                    settings.c_iflag,
                    settings.c_oflag,
                    settings.c_cflag,
                    settings.c_lflag,
                    settings.c_cc
                );
            }
        }
        Err(e) => fail!(chk, "C: TCGETS2: errno {e}"),
    }
    match winsize(SLAVE) {
        Ok(w) if w == [ROWS, COLS, XPIXEL, YPIXEL] => {}
        other => fail!(chk, "C: window size is {other:?}"),
    }
    match ioctl_int(SLAVE, libc::TIOCGEXCL) {
        Ok(1) => {}
        other => fail!(chk, "C: TIOCGEXCL is {other:?}, expected exclusive mode"),
    }
    let me_pid = sys::getpid();
    // SAFETY: tcgetsid and tcgetpgrp only query the terminal.
    let (sid, fg) = unsafe { (libc::tcgetsid(SLAVE), libc::tcgetpgrp(SLAVE)) };
    if sid != me_pid {
        fail!(
            chk,
            "C: the terminal's session is {sid} (errno {}), expected {me_pid}",
            errno()
        );
    }
    if fg != g {
        fail!(chk, "C: the foreground group is {fg}, expected G's {g}");
    }
    check_dev_tty(SLAVE, "C", &mut chk);
    if let Err(e) = sys::write_all(SLAVE, b"ping\n") {
        fail!(chk, "C: write ping: errno {e}");
    }
    grandchild.collect(Instant::now() + bound, &mut chk);
    me.report(&chk)
}

fn ttys_g(ctx: &Ctx, bufs: &mut MapsBufs, input_done: &CString, bound: Duration) -> ! {
    let me = Member::new(ctx, "G");
    // SAFETY: setpgid on ourselves.
    unsafe { libc::setpgid(0, 0) };
    let deadline = Instant::now() + Duration::from_secs(30);
    // SAFETY: getpgrp and tcgetpgrp are queries.
    while unsafe { libc::tcgetpgrp(SLAVE) != libc::getpgrp() } {
        if Instant::now() > deadline {
            me.setup_failed("not made the foreground group within 30 s");
        }
        sys::sleep_ms(5);
    }
    let settings = match termios2(SLAVE) {
        Ok(t) => t,
        Err(e) => me.setup_failed(&format!("TCGETS2: errno {e}")),
    };
    let own = match Own::record(bufs) {
        Ok(o) => o,
        Err(e) => me.setup_failed(&e),
    };
    me.arm();
    sys::wait_for_every(&ctx.go, 20);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    // SAFETY: queries.
    let (pgrp, fg, sid, tsid) = unsafe {
        (
            libc::getpgrp(),
            libc::tcgetpgrp(SLAVE),
            libc::getsid(0),
            libc::tcgetsid(SLAVE),
        )
    };
    if fg != pgrp {
        fail!(
            chk,
            "G: the foreground group is {fg}, expected G's group {pgrp}"
        );
    }
    if tsid != sid {
        fail!(chk, "G: the terminal's session is {tsid}, G's is {sid}");
    }
    check_dev_tty(SLAVE, "G", &mut chk);
    // The complete line, and only it, in canonical mode.
    match ioctl_int(SLAVE, libc::FIONREAD) {
        Ok(9) => {}
        other => fail!(chk, "G: FIONREAD is {other:?}, expected 9 (`line one\\n`)"),
    }
    let mut buf = [0u8; 64];
    match readable_within(SLAVE, 0) {
        Ok(true) => match read_once(SLAVE, &mut buf) {
            Ok(n) if &buf[..n] == b"line one\n" => {}
            Ok(n) => fail!(
                chk,
                "G: read `{}`, expected `line one\\n`",
                Shown(&buf[..n])
            ),
            Err(e) => fail!(chk, "G: read: errno {e}"),
        },
        other => fail!(
            chk,
            "G: the slave is not readable right after go: {other:?}"
        ),
    }
    if readable_within(SLAVE, 0) != Ok(false) {
        fail!(chk, "G: the partial line is readable in canonical mode");
    }
    let mut raw = settings;
    raw.c_lflag &= !libc::ICANON;
    raw.c_cc[libc::VMIN] = 0;
    raw.c_cc[libc::VTIME] = 0;
    match set_termios2(SLAVE, &raw).and_then(|()| read_once(SLAVE, &mut buf)) {
        Ok(n) if &buf[..n] == b"partial" => {}
        Ok(n) => fail!(
            chk,
            "G: the partial line is `{}`, expected `partial`",
            Shown(&buf[..n])
        ),
        Err(e) => fail!(chk, "G: reading the partial line: errno {e}"),
    }
    if let Err(e) = set_termios2(SLAVE, &settings) {
        fail!(chk, "G: TCSETS2 back: errno {e}");
    }
    if let Err(e) = sys::write_file(input_done, b"") {
        fail!(chk, "G: {e}");
    }
    // The pong P writes once it saw C's ping.
    match readable_within(SLAVE, bound.as_millis() as i32) {
        Ok(true) => match read_once(SLAVE, &mut buf) {
            Ok(n) if &buf[..n] == b"pong\n" => {}
            Ok(n) => fail!(chk, "G: read `{}`, expected `pong\\n`", Shown(&buf[..n])),
            Err(e) => fail!(chk, "G: read pong: errno {e}"),
        },
        other => fail!(chk, "G: no pong from the master: {other:?}"),
    }
    me.report(&chk)
}

// ---------------------------------------------------------------------------------------------

/// `ttyshell`: forks the job and returns in it (the caller goes on with the `ttyjob`
/// scenario); the shell itself waits for the job and exits with its status.
pub fn shell() {
    match sys::fork() {
        Ok(0) => {
            // SAFETY: setpgid on ourselves.
            unsafe { libc::setpgid(0, 0) };
        }
        Ok(job) => {
            // SAFETY: the job's group and the foreground of our own terminal.
            unsafe {
                libc::setpgid(job, job);
                libc::tcsetpgrp(0, job);
            }
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(job, &mut status, 0) };
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            sys::exit_now(code)
        }
        Err(e) => crate::die(format_args!("ttyshell: fork: errno {e}")),
    }
}

/// The job of `ttyshell`.
pub struct TtyJob {
    snaps: [Snap; 3],
    newtty: CString,
}

impl TtyJob {
    pub fn new(ctx: &Ctx) -> Result<TtyJob, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        // SAFETY: queries.
        while unsafe { libc::tcgetpgrp(0) != libc::getpgrp() } {
            if Instant::now() > deadline {
                return Err(format!(
                    "not the foreground group of fd 0 within 30 s (errno {})",
                    errno()
                ));
            }
            sys::sleep_ms(5);
        }
        Ok(TtyJob {
            snaps: [Snap::take(0), Snap::take(1), Snap::take(2)],
            newtty: ctx.path("newtty"),
        })
    }
}

impl crate::parts::Part for TtyJob {
    fn verify(&mut self, chk: &mut Check) {
        let mut name = [0u8; 512];
        let n = match sys::read_file_into(&self.newtty, &mut name) {
            Ok(n) => n,
            Err(e) => {
                fail!(chk, "ttyjob: DIR/newtty: errno {e}");
                return;
            }
        };
        let name = name[..n].strip_suffix(b"\n").unwrap_or(&name[..n]);
        for snap in &self.snaps {
            snap.verify(Some(name), "ttyjob", chk);
        }
        // SAFETY: queries.
        let (fg, pgrp) = unsafe { (libc::tcgetpgrp(0), libc::getpgrp()) };
        if fg != pgrp {
            fail!(
                chk,
                "ttyjob: the foreground group of fd 0 is {fg} (errno {}), expected {pgrp}",
                errno()
            );
        }
        check_dev_tty(0, "ttyjob", chk);
        if let Err(e) = sys::write_all(1, b"job-output\n") {
            fail!(chk, "ttyjob: write on fd 1: errno {e}");
        }
        let mut line = [0u8; 64];
        match readable_within(0, 30_000) {
            Ok(true) => match read_once(0, &mut line) {
                Ok(n) if &line[..n] == b"typed-line\n" => {}
                Ok(n) => fail!(
                    chk,
                    "ttyjob: read `{}` from fd 0, expected `typed-line\\n`",
                    Shown(&line[..n])
                ),
                Err(e) => fail!(chk, "ttyjob: read fd 0: errno {e}"),
            },
            other => fail!(
                chk,
                "ttyjob: nothing to read on fd 0 within 30 s: {other:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `PtyPair`, a part of `files-all`: a pty held by one process, master at fd 80 and slave at
// fd 81 (O_NOCTTY: not its controlling terminal). The slave has ECHO off, VINTR ^G and a
// 24x132 window; "out\n" was written on the slave (the master's queue holds "out\r\n") and
// "in-line\n" on the master (the slave's queue holds that line). After go: the same pty
// number, settings and window, both queues deliver, and the pair still talks.

const PAIR_MASTER: i32 = 80;
const PAIR_SLAVE: i32 = 81;

pub struct PtyPair {
    index: i32,
}

impl PtyPair {
    pub fn new() -> Result<PtyPair, String> {
        let fail = |what: &str| format!("pty pair: {what}: errno {}", errno());
        // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on the fd opened here.
        let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        if master < 0
            || unsafe { libc::grantpt(master) } != 0
            || unsafe { libc::unlockpt(master) } != 0
        {
            return Err(fail("posix_openpt"));
        }
        let index = ioctl_int(master, libc::TIOCGPTN).map_err(|_| fail("TIOCGPTN"))?;
        let path = CString::new(format!("/dev/pts/{index}")).expect("no NUL");
        // SAFETY: a NUL-terminated path.
        let slave = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if slave < 0 {
            return Err(fail("open the slave"));
        }
        crate::files::place(master, PAIR_MASTER, false)?;
        crate::files::place(slave, PAIR_SLAVE, false)?;
        let mut t = termios2(PAIR_SLAVE).map_err(|_| fail("TCGETS2"))?;
        t.c_lflag &= !libc::ECHO;
        t.c_cc[libc::VINTR] = VINTR_CHAR;
        set_termios2(PAIR_SLAVE, &t).map_err(|_| fail("TCSETS2"))?;
        let size = libc::winsize {
            ws_row: 24,
            ws_col: 132,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize.
        if unsafe { libc::ioctl(PAIR_SLAVE, libc::TIOCSWINSZ, &size) } != 0 {
            return Err(fail("TIOCSWINSZ"));
        }
        sys::write_all(PAIR_SLAVE, b"out\n").map_err(|_| fail("write the slave"))?;
        sys::write_all(PAIR_MASTER, b"in-line\n").map_err(|_| fail("write the master"))?;
        // Let the line discipline take both in before ready.
        std::thread::sleep(Duration::from_millis(20));
        Ok(PtyPair { index })
    }
}

/// Reads `want` from `fd` within 2 s (it may come in pieces).
fn expect_read(what: &str, fd: i32, want: &[u8], chk: &mut Check) {
    let mut buf = [0u8; 64];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while got < want.len() && Instant::now() < deadline {
        if !readable_within(fd, 100).unwrap_or(false) {
            continue;
        }
        match read_once(fd, &mut buf[got..want.len()]) {
            Ok(n) => got += n,
            Err(e) => {
                fail!(chk, "{what}: read errno {e}");
                return;
            }
        }
    }
    if &buf[..got] != want {
        fail!(
            chk,
            "{what}: read `{}`, expected `{}`",
            Shown(&buf[..got]),
            Shown(want)
        );
    }
}

impl crate::parts::Part for PtyPair {
    fn verify(&mut self, chk: &mut Check) {
        match ioctl_int(PAIR_MASTER, libc::TIOCGPTN) {
            Ok(n) if n == self.index => {}
            got => fail!(chk, "pty pair: TIOCGPTN {got:?}, expected {}", self.index),
        }
        match termios2(PAIR_SLAVE) {
            Ok(t) if t.c_lflag & libc::ECHO == 0 && t.c_cc[libc::VINTR] == VINTR_CHAR => {}
            Ok(t) => fail!(
                chk,
                "pty pair: lflag {:#o} VINTR {:#x}, expected ECHO off and ^G",
                t.c_lflag,
                t.c_cc[libc::VINTR]
            ),
            Err(e) => fail!(chk, "pty pair: TCGETS2 errno {e}"),
        }
        match winsize(PAIR_SLAVE) {
            Ok([24, 132, _, _]) => {}
            got => fail!(chk, "pty pair: window {got:?}, expected 24x132"),
        }
        expect_read("pty pair master", PAIR_MASTER, b"out\r\n", chk);
        expect_read("pty pair slave", PAIR_SLAVE, b"in-line\n", chk);
        if sys::write_all(PAIR_MASTER, b"again\n").is_err() {
            fail!(chk, "pty pair: write the master: errno {}", errno());
        }
        expect_read("pty pair slave", PAIR_SLAVE, b"again\n", chk);
    }
}
