//! rcr-workload: the test program rcr's integration tests dump and restore.
//!
//! Usage: `rcr-workload SCENARIO DIR [N]`
//!
//! The workload sets up the scenario's state, reads /proc/self/maps, writes DIR/ready
//! (atomically, containing its pid), waits until DIR/go exists, then verifies its state and
//! prints exactly `PASS` or `FAIL: <reason>` on stdout, exiting 0 or 1. Between ready and the
//! verification it allocates nothing and maps nothing, so the maps can be compared. Every
//! scenario also checks its pid and that its set of open fds did not change. It does not use
//! the rcr library.
//!
//! Single-process, single-threaded scenarios: memory sparse prot filemap brk tls vector
//! nanosleep futex stdio counter all, and locked memory (see mlock.rs): mlock mlockall
//! mlockall-onfault; `amx` (see amx.rs: AMX tiles in three threads, where the CPU has AMX).
//!
//! Scenarios with more processes or threads (see procs.rs and threads.rs for their protocol;
//! only the root process writes ready and prints PASS/FAIL, after every process or thread
//! checked itself; their maps comparison tolerates VMA merging, see maps.rs): `tree`,
//! `shared`, `manyprocs N` (N processes in all), `threads`, `manythreads N` (N threads
//! besides the main one), `churn` (children that keep exiting and being replaced, see
//! churn.rs). RCR_WORKLOAD_TIMEOUT_SECS (default 60) bounds how long a root
//! waits after go for its children's results or its threads.
//!
//! `taskstate` (see taskstate.rs; must start as root): one process, two threads, with
//! pending signals, itimers and POSIX timers, dropped credentials, seccomp filters, rlimits,
//! scheduling, prctl state and (with RCR_WORKLOAD_CGROUP) its own cgroup.
//!
//! Open files (see files.rs, which lists every fd number and value): `pipes` and
//! `sharedfd` (a root and one child, the protocol of procs.rs), `memfd` (one process, its
//! own flow: its maps comparison allows a memfd mapping a new inode number), `eventfd`,
//! `fifo`, `locks`, `locks-mapped` (POSIX locks on files also mapped), `pipe-outside` (pipes whose other end the test holds), `unlinked`, `fdowner`, `files-all` (every single-process kind at once),
//! `unsupported` (a unix socketpair), `unsupported-signalfd`, `unsupported-timerfd`,
//! `unsupported-epoll` (all restored now; the names are historical), and for dumps that must
//! be refused `unsupported-listen` (a TCP listener) and `unsupported-fanotify`.
//!
//! Refusal messages (see refused.rs): `refused-tcp` (a connected TCP pair on loopback),
//! `refused-udp` (a bound UDP socket), `refused-sysvshm` (a SysV shared memory attachment).
//!
//! `epollshared` (see epoll.rs): an epoll instance with registrations, shared by dup and
//! fork (root and one child, the protocol of procs.rs).
//!
//! Unix sockets (see unix.rs): `unix` (listeners, accepted and waiting connections,
//! datagrams, a peer gone), `unix-renamed` (socket files renamed after bind), `unix-outside` (connected to the test's listener) and
//! `unix-fds-in-flight` (an fd sent with SCM_RIGHTS and unread: refused); `unixtree` (a
//! connection and a waiting connection between two processes, the protocol of procs.rs).
//!
//! inotify (see inotify.rs): `inotify` (two instances, watches with gaps between their wds),
//! `inotify-pending` (the same with events queued at the dump) and `inotify-unlinked` (a
//! watch on a file without a name, for a dump that must be refused).
//!
//! Terminals (see tty.rs): `ttys` (root, child and grandchild around a pty pair, the child's
//! session having it as controlling terminal), `ttyshell` (a tiny shell on the terminal it
//! was started on, whose job runs the single-process `ttyjob` part).
//!
//! At start the workload closes every fd above 2 it inherited, and calls setsid() so it is
//! the leader of its own session and process group (set RCR_WORKLOAD_NO_SETSID=1 to keep the caller's session, e.g. for a shell job).

// The modules live in src/bin/rcr-workload/ (a crate root file takes its modules from its
// own directory, and files directly in src/bin/ would become binaries).
#[path = "rcr-workload/amx.rs"]
mod amx;
#[path = "rcr-workload/blocking.rs"]
mod blocking;
#[path = "rcr-workload/churn.rs"]
mod churn;
#[path = "rcr-workload/epoll.rs"]
mod epoll;
#[path = "rcr-workload/files.rs"]
mod files;
#[path = "rcr-workload/inotify.rs"]
mod inotify;
#[path = "rcr-workload/maps.rs"]
mod maps;
#[path = "rcr-workload/mlock.rs"]
mod mlock;
#[path = "rcr-workload/parts.rs"]
mod parts;
#[path = "rcr-workload/procs.rs"]
mod procs;
#[path = "rcr-workload/refused.rs"]
mod refused;
#[path = "rcr-workload/sys.rs"]
mod sys;
#[path = "rcr-workload/taskstate.rs"]
mod taskstate;
#[path = "rcr-workload/threads.rs"]
mod threads;
#[path = "rcr-workload/tty.rs"]
mod tty;
#[path = "rcr-workload/unix.rs"]
mod unix;
#[path = "rcr-workload/vector.rs"]
mod vector;

use parts::Part;
use std::ffi::CString;
use std::fmt;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use sys::{Msg, Shown, out};

/// Records a failure (only the first message is kept) without allocating.
#[macro_export]
macro_rules! fail {
    ($chk:expr, $($arg:tt)*) => {
        $chk.fail(format_args!($($arg)*))
    };
}

/// The outcome of the verification.
pub struct Check {
    first: Msg,
    failures: u32,
}

impl Check {
    fn new() -> Check {
        Check {
            first: Msg::new(),
            failures: 0,
        }
    }

    pub fn fail(&mut self, args: fmt::Arguments<'_>) {
        if self.failures == 0 {
            let _ = self.first.write_fmt(args);
        }
        self.failures += 1;
    }

    /// Prints PASS or FAIL and exits.
    fn finish(self) -> ! {
        if self.failures == 0 {
            out(b"PASS\n");
            std::process::exit(0);
        }
        let mut m = Msg::new();
        let _ = write!(m, "FAIL: {}", Shown(self.first.as_bytes()));
        if self.failures > 1 {
            let _ = write!(m, " (and {} more failures)", self.failures - 1);
        }
        let _ = writeln!(m);
        out(m.as_bytes());
        std::process::exit(1);
    }
}

/// Paths and identity, all prepared before ready.
pub struct Ctx {
    dir: PathBuf,
    pub go: CString,
    ready: CString,
    ready_tmp: CString,
    pub pid: i32,
}

impl Ctx {
    fn new(dir: &Path) -> Ctx {
        Ctx {
            dir: dir.to_path_buf(),
            go: sys::cstring(&dir.join("go")),
            ready: sys::cstring(&dir.join("ready")),
            ready_tmp: sys::cstring(&dir.join("ready.tmp")),
            pid: sys::getpid(),
        }
    }

    /// DIR/name as a C string (setup only: allocates).
    pub fn path(&self, name: &str) -> CString {
        sys::cstring(&self.dir.join(name))
    }
}

/// Writes DIR/ready.tmp with the pid, then renames it to DIR/ready.
pub fn write_ready(ctx: &Ctx, pid: i32) -> Result<(), i32> {
    let mut m = Msg::new();
    let _ = writeln!(m, "{pid}");
    let fd = sys::open(
        &ctx.ready_tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
        0o644,
    )?;
    let r = sys::write_all(fd, m.as_bytes());
    sys::close(fd);
    r?;
    // SAFETY: both paths are NUL-terminated.
    if unsafe { libc::rename(ctx.ready_tmp.as_ptr(), ctx.ready.as_ptr()) } != 0 {
        return Err(sys::errno());
    }
    Ok(())
}

/// How the scenario waits for go.
enum Wait {
    /// access(go) every 20 ms.
    Poll,
    Nanosleep(blocking::Nanosleep),
    Futex(blocking::Futex),
    /// Inside the vector registers' asm block (which sleeps with clock_nanosleep).
    Vector(Box<vector::Vector>),
}

impl Wait {
    fn run(&mut self, ctx: &Ctx) {
        match self {
            Wait::Poll => sys::wait_for(&ctx.go),
            Wait::Nanosleep(n) => n.run(ctx),
            Wait::Futex(f) => f.run(ctx),
            Wait::Vector(v) => v.run(),
        }
    }

    fn verify(&self, chk: &mut Check) {
        match self {
            Wait::Poll => {}
            Wait::Nanosleep(n) => n.verify(chk),
            Wait::Futex(f) => f.verify(chk),
            Wait::Vector(v) => v.verify(chk),
        }
    }
}

type Setup = (Vec<Box<dyn Part>>, Wait);

fn setup(scenario: &str, ctx: &Ctx) -> Result<Setup, String> {
    let mut parts: Vec<Box<dyn Part>> = Vec::with_capacity(16);
    let wait = match scenario {
        "memory" => {
            parts.push(Box::new(parts::Memory::new(256 << 20)?));
            Wait::Poll
        }
        "sparse" => {
            parts.push(Box::new(parts::Sparse::new()?));
            Wait::Poll
        }
        "prot" => {
            parts.push(Box::new(parts::Prot::new()?));
            Wait::Poll
        }
        "filemap" => {
            parts.push(Box::new(parts::FileMap::new(ctx)?));
            Wait::Poll
        }
        "brk" => {
            parts.push(Box::new(parts::Brk::new()?));
            Wait::Poll
        }
        "tls" => {
            parts.push(Box::new(parts::Tls::new(ctx.pid)?));
            Wait::Poll
        }
        "stdio" => {
            parts.push(Box::new(parts::Stdio::new(ctx)?));
            Wait::Poll
        }
        "amx" => {
            parts.push(Box::new(amx::Amx::new(&ctx.go)?));
            Wait::Poll
        }
        "vector" => Wait::Vector(Box::new(vector::Vector::new(&ctx.go, 20_000_000))),
        "nanosleep" => Wait::Nanosleep(blocking::Nanosleep::new()),
        "futex" => Wait::Futex(blocking::Futex::new()),
        "eventfd" => {
            parts.push(Box::new(files::EventFds::new()?));
            Wait::Poll
        }
        "files-all" => {
            // Every single-process file kind at once (their fd numbers do not overlap).
            parts.push(Box::new(files::EventFds::new()?));
            parts.push(Box::new(files::Unlinked::new(ctx)?));
            parts.push(Box::new(files::Fifo::new(ctx)?));
            parts.push(Box::new(files::Locks::new(ctx)?));
            parts.push(Box::new(files::FdOwner::new()?));
            parts.push(Box::new(unix::UnixSockets::new(ctx)?));
            parts.push(Box::new(inotify::Inotify::new(inotify::Mode::Plain, ctx)?));
            parts.push(Box::new(tty::PtyPair::new()?));
            parts.push(Box::new(files::MoreKinds::new(ctx)?));
            parts.push(Box::new(parts::Stdio::new(ctx)?));
            Wait::Poll
        }
        "unix" => {
            parts.push(Box::new(unix::UnixSockets::new(ctx)?));
            Wait::Poll
        }
        "unix-fds-in-flight" => {
            parts.push(Box::new(unix::FdsInFlight::new()?));
            Wait::Poll
        }
        "unix-renamed" => {
            parts.push(Box::new(unix::Renamed::new(ctx)?));
            Wait::Poll
        }
        "unix-outside" => {
            parts.push(Box::new(unix::Outside::new(ctx)?));
            Wait::Poll
        }
        "ttyjob" => {
            parts.push(Box::new(tty::TtyJob::new(ctx)?));
            Wait::Poll
        }
        "fdowner" => {
            parts.push(Box::new(files::FdOwner::new()?));
            Wait::Poll
        }
        "fifo" => {
            parts.push(Box::new(files::Fifo::new(ctx)?));
            Wait::Poll
        }
        "locks" => {
            parts.push(Box::new(files::Locks::new(ctx)?));
            Wait::Poll
        }
        "pipe-outside" => {
            parts.push(Box::new(files::PipeOutside::new(ctx)?));
            Wait::Poll
        }
        "locks-mapped" => {
            parts.push(Box::new(files::LocksMapped::new(ctx)?));
            Wait::Poll
        }
        "unlinked" => {
            parts.push(Box::new(files::Unlinked::new(ctx)?));
            Wait::Poll
        }
        s if mlock::Mode::from_scenario(s).is_some() => {
            let mode = mlock::Mode::from_scenario(s).expect("checked in the guard");
            parts.push(Box::new(mlock::Locked::new(mode)?));
            Wait::Poll
        }
        s if inotify::Mode::from_scenario(s).is_some() => {
            let mode = inotify::Mode::from_scenario(s).expect("checked in the guard");
            parts.push(Box::new(inotify::Inotify::new(mode, ctx)?));
            Wait::Poll
        }
        s if refused::Kind::from_scenario(s).is_some() => {
            let kind = refused::Kind::from_scenario(s).expect("checked in the guard");
            parts.push(Box::new(refused::Refused::new(kind)?));
            Wait::Poll
        }
        s if files::Kind::from_scenario(s).is_some() => {
            let kind = files::Kind::from_scenario(s).expect("checked in the guard");
            parts.push(Box::new(files::Unsupported::new(kind, ctx)?));
            Wait::Poll
        }
        "all" => {
            let wait = Wait::Vector(Box::new(vector::Vector::new(&ctx.go, 5_000_000_000)));
            parts.push(Box::new(parts::Memory::new(32 << 20)?));
            parts.push(Box::new(parts::Sparse::new()?));
            parts.push(Box::new(parts::Prot::new()?));
            parts.push(Box::new(parts::FileMap::new(ctx)?));
            parts.push(Box::new(parts::Tls::new(ctx.pid)?));
            parts.push(Box::new(parts::Stdio::new(ctx)?));
            // Last: any heap allocation after it could move the program break.
            parts.push(Box::new(parts::Brk::new()?));
            wait
        }
        _ => return Err(format!("unknown scenario `{scenario}`")),
    };
    Ok((parts, wait))
}

/// Grows the stack now, so the verification never extends the [stack] mapping.
#[inline(never)]
fn touch_stack() {
    let mut buf = [0u8; 256 * 1024];
    std::hint::black_box(&mut buf);
}

/// Names the first line where two /proc/self/maps snapshots differ.
fn compare_maps(before: &[u8], after: &[u8], chk: &mut Check) {
    if before == after {
        return;
    }
    let mut a = before.split(|&b| b == b'\n');
    let mut b = after.split(|&b| b == b'\n');
    let mut line = 1;
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            (x, y) => {
                fail!(
                    chk,
                    "/proc/self/maps differs at line {line}: before `{}`, after `{}`",
                    Shown(x.unwrap_or(b"<none>")),
                    Shown(y.unwrap_or(b"<none>"))
                );
                return;
            }
        }
    }
}

/// Names the first fd that appeared or disappeared.
fn compare_fds(before: &[i32], after: &[i32], chk: &mut Check) {
    let mut link = [0u8; 512];
    if let Some(&fd) = after.iter().find(|fd| !before.contains(fd)) {
        fail!(
            chk,
            "fd {fd} (`{}`) appeared (fds before: {:?}, after: {:?})",
            Shown(sys::fd_link(fd, &mut link)),
            before,
            after
        );
    } else if let Some(&fd) = before.iter().find(|fd| !after.contains(fd)) {
        fail!(
            chk,
            "fd {fd} disappeared (fds before: {:?}, after: {:?})",
            before,
            after
        );
    }
}

/// The scenarios with more than one process or thread, and `memfd`: their own flows (they
/// never return).
type MultiRun = fn(&Ctx, &mut procs::MapsBufs, usize) -> !;

fn multi_scenario(name: &str) -> Option<MultiRun> {
    Some(match name {
        "tree" => |ctx, bufs, _| procs::tree(ctx, bufs),
        "shared" => |ctx, bufs, _| procs::shared(ctx, bufs),
        "manyprocs" => procs::manyprocs,
        "threads" => |ctx, bufs, _| threads::threads(ctx, bufs),
        "manythreads" => threads::manythreads,
        "taskstate" => |ctx, bufs, _| taskstate::taskstate(ctx, bufs),
        "pipes" => |ctx, bufs, _| files::pipes(ctx, bufs),
        "sharedfd" => |ctx, bufs, _| files::sharedfd(ctx, bufs),
        "memfd" => |ctx, bufs, _| files::memfd(ctx, bufs),
        "epollshared" => |ctx, bufs, _| epoll::epollshared(ctx, bufs),
        "unixtree" => |ctx, bufs, _| unix::unixtree(ctx, bufs),
        "churn" => |ctx, bufs, _| churn::churn(ctx, bufs),
        "ttys" => |ctx, bufs, _| tty::ttys(ctx, bufs),
        _ => return None,
    })
}

pub fn die(what: fmt::Arguments<'_>) -> ! {
    let mut m = Msg::new();
    let _ = writeln!(m, "FAIL: {what}");
    out(m.as_bytes());
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: Option<usize> = args.get(3).and_then(|n| n.parse().ok());
    let takes_count = matches!(
        args.get(1).map(String::as_str),
        Some("manyprocs" | "manythreads")
    );
    if args.len() != 3 + takes_count as usize || (takes_count && count.is_none()) {
        eprintln!("usage: rcr-workload SCENARIO DIR, or rcr-workload manyprocs|manythreads DIR N");
        std::process::exit(2);
    }
    if std::env::var_os("RCR_WORKLOAD_NO_SETSID").is_none() {
        // SAFETY: setsid has no memory effects; it fails harmlessly if already a leader.
        unsafe { libc::setsid() };
    }
    // Start from a known fd table: 0, 1, 2 only (callers can leak fds without O_CLOEXEC,
    // e.g. a job server's pipe, that the scenarios know nothing about).
    // SAFETY: close_range closes fds; no Rust object owns any fd above 2 at this point.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut scenario = args[1].as_str();
    if scenario == "ttyshell" {
        // The shell waits for its job and exits; the job goes on as `ttyjob`.
        tty::shell();
        scenario = "ttyjob";
    }
    let ctx = Ctx::new(Path::new(&args[2]));
    if scenario == "counter" {
        blocking::counter(&ctx);
    }
    if let Some(run) = multi_scenario(scenario) {
        let mut bufs = procs::MapsBufs::new();
        touch_stack();
        run(&ctx, &mut bufs, count.unwrap_or(0));
    }

    // Everything the verification needs is allocated before the setup (brk comes last).
    let mut maps_before = vec![0u8; 4 << 20];
    let mut maps_after = vec![0u8; 4 << 20];
    let maps_path = c"/proc/self/maps";

    let (mut parts, mut wait) = match setup(scenario, &ctx) {
        Ok(s) => s,
        Err(e) => die(format_args!("setup of {scenario}: {e}")),
    };
    for p in parts.iter_mut() {
        p.before_ready();
    }
    touch_stack();

    let mut fds_before = sys::FdSet::new();
    let mut fds_after = sys::FdSet::new();
    if let Err(e) = fds_before.read() {
        die(format_args!("listing /proc/self/fd: errno {e}"));
    }
    let pid = sys::getpid();
    let n_before = match sys::read_file_into(maps_path, &mut maps_before) {
        Ok(n) => n,
        Err(e) => die(format_args!("reading /proc/self/maps: errno {e}")),
    };
    if let Err(e) = write_ready(&ctx, pid) {
        die(format_args!("writing ready: errno {e}"));
    }

    wait.run(&ctx);

    let n_after = sys::read_file_into(maps_path, &mut maps_after);
    let pid_after = sys::getpid();
    let mut chk = Check::new();
    match n_after {
        // A forked job's mappings may merge once restored (see maps.rs).
        Ok(n) if scenario == "ttyjob" => {
            maps::compare_merged(&maps_before[..n_before], &maps_after[..n], &mut chk)
        }
        Ok(n) => compare_maps(&maps_before[..n_before], &maps_after[..n], &mut chk),
        Err(e) => fail!(chk, "reading /proc/self/maps after go: errno {e}"),
    }
    match fds_after.read() {
        Ok(()) => compare_fds(fds_before.as_slice(), fds_after.as_slice(), &mut chk),
        Err(e) => fail!(chk, "listing /proc/self/fd after go: errno {e}"),
    }
    if pid_after != pid {
        fail!(chk, "getpid() is {pid_after}, expected {pid}");
    }
    for p in parts.iter_mut() {
        p.verify(&mut chk);
    }
    wait.verify(&mut chk);
    chk.finish();
}
