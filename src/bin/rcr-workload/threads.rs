//! Scenarios with more than one thread: `threads` and `manythreads N`.
//!
//! The main thread starts the threads, waits until each one is armed and sits in its
//! blocking call (/proc/self/task/TID/syscall), takes the process snapshot (ids, fds, maps,
//! the list of tasks) and writes ready. After go it checks the snapshot first, then wakes
//! every thread; each thread verifies its own state (tid, TLS, fs base, signal mask,
//! sigaltstack, name, what its blocking call returned) and the main thread joins them all
//! (after a bounded wait, RCR_WORKLOAD_TIMEOUT_SECS) and prints one PASS or FAIL line.
//! Nothing is allocated or mapped between the snapshot and the main thread's checks.

use crate::procs::MapsBufs;
use crate::sys::{self, Mapping, Shown, errno};
use crate::{Check, Ctx, fail};
use std::cell::Cell;
use std::ffi::CString;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

thread_local! {
    static TLS_VALUE: Cell<u64> = const { Cell::new(0) };
}

/// How long the main thread waits for its threads to be armed and blocked.
const ARM_BOUND: Duration = Duration::from_secs(30);

const SYS_FUTEX: i64 = libc::SYS_futex;
const SYS_CLOCK_NANOSLEEP: i64 = libc::SYS_clock_nanosleep;
const SYS_RT_SIGTIMEDWAIT: i64 = libc::SYS_rt_sigtimedwait;
/// sigaltstack flag (linux/signal.h); the libc crate does not export it.
const SS_AUTODISARM: i32 = i32::MIN;

static GO: AtomicBool = AtomicBool::new(false);
static ARMED: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);
static DONE_MASK: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------------------
// `threads`

/// The threads of the `threads` scenario, by index.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// FUTEX_WAIT with a 5 s timeout.
    FutexTimed,
    /// FUTEX_WAIT without timeout (the thread `Join` joins).
    Futex,
    /// std::sync::Condvar::wait.
    Condvar,
    /// clock_nanosleep 1 s in a loop; its sigaltstack has SS_AUTODISARM.
    Nanosleep,
    /// A counting loop that never blocks.
    Busy,
    /// sched_yield in a loop.
    Yield,
    /// pthread_join (std JoinHandle::join) of the `Futex` thread.
    Join,
    /// sigwaitinfo on a blocked real-time signal the main thread sends after go.
    Sigwait,
}

const KINDS: [Kind; 8] = [
    Kind::FutexTimed,
    Kind::Futex,
    Kind::Condvar,
    Kind::Nanosleep,
    Kind::Busy,
    Kind::Yield,
    Kind::Join,
    Kind::Sigwait,
];
const NTHREADS: usize = KINDS.len();
/// Index used for the main thread's mask and sigaltstack.
const MAIN_IDX: usize = NTHREADS;

impl Kind {
    fn idx(self) -> usize {
        KINDS.iter().position(|&k| k == self).unwrap()
    }

    fn name(self) -> &'static str {
        match self {
            Kind::FutexTimed => "t-futex-timed",
            Kind::Futex => "t-futex",
            Kind::Condvar => "t-condvar",
            Kind::Nanosleep => "t-nanosleep",
            Kind::Busy => "t-busy",
            Kind::Yield => "t-yield",
            Kind::Join => "t-join",
            Kind::Sigwait => "t-sigwait",
        }
    }

    /// Whether /proc/self/task/TID/syscall shows the thread in its waiting state.
    fn in_wait_state(self, syscall: i64) -> bool {
        match self {
            Kind::FutexTimed | Kind::Futex | Kind::Condvar | Kind::Join => syscall == SYS_FUTEX,
            Kind::Nanosleep => syscall == SYS_CLOCK_NANOSLEEP,
            Kind::Sigwait => syscall == SYS_RT_SIGTIMEDWAIT,
            Kind::Busy => syscall == -1,
            Kind::Yield => syscall != -2,
        }
    }
}

static TIDS: [AtomicI32; NTHREADS] = [const { AtomicI32::new(0) }; NTHREADS];
static FUTEX_TIMED: AtomicU32 = AtomicU32::new(0);
static FUTEX_FOREVER: AtomicU32 = AtomicU32::new(0);
static COND: Mutex<bool> = Mutex::new(false);
static CV: Condvar = Condvar::new();
static BUSY_PUBLISHED: AtomicU64 = AtomicU64::new(0);
static BUSY_AT_READY: AtomicU64 = AtomicU64::new(0);
const BUSY_STEP: u64 = 0x9e37_79b9_7f4a_7c15;

/// The signal the Sigwait thread waits for.
fn sigwait_signal() -> i32 {
    libc::SIGRTMIN() + 25
}

/// A distinct signal mask per thread (index MAIN_IDX is the main thread).
fn mask_for(idx: usize) -> u64 {
    let rt = libc::SIGRTMIN();
    let i = idx as i32;
    let mut m = sys::sigbit(rt + i) | sys::sigbit(rt + 10 + (i * 2) % 13);
    if idx % 2 == 1 {
        m |= sys::sigbit(libc::SIGUSR1);
    }
    if idx.is_multiple_of(3) {
        m |= sys::sigbit(libc::SIGUSR2);
    }
    if idx % 4 == 1 {
        m |= sys::sigbit(libc::SIGWINCH);
    }
    if idx == Kind::Sigwait.idx() {
        m |= sys::sigbit(sigwait_signal());
    }
    m
}

/// A thread's own state, recorded before it is armed and checked after go.
struct Me {
    tid: i32,
    tls_value: u64,
    tls_addr: usize,
    fsbase: u64,
    mask: u64,
    alt: (usize, usize, i32),
    /// /proc/self/task/TID/comm and the expected contents (the name and a newline).
    comm_path: CString,
    comm: Vec<u8>,
    _alt_stack: Mapping,
}

fn tls_addr() -> usize {
    TLS_VALUE.with(|c| c as *const Cell<u64> as usize)
}

impl Me {
    /// Sets this thread's TLS value, signal mask and sigaltstack (`alt_size` bytes, flags).
    fn setup(idx: usize, tls_value: u64, alt_size: usize, alt_flags: i32) -> Result<Me, String> {
        let tid = sys::gettid();
        TLS_VALUE.set(tls_value);
        let fsbase = sys::fs_base().map_err(|e| format!("arch_prctl(ARCH_GET_FS): errno {e}"))?;
        let want = mask_for(idx);
        sys::set_sigmask(want).map_err(|e| format!("rt_sigprocmask: errno {e}"))?;
        let mask = sys::sigmask().map_err(|e| format!("rt_sigprocmask: errno {e}"))?;
        if mask != want {
            return Err(format!("signal mask {mask:#x} after setting {want:#x}"));
        }
        let alt_stack = Mapping::anon(alt_size, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        sys::set_altstack(alt_stack.addr(), alt_size, alt_flags)
            .map_err(|e| format!("sigaltstack: errno {e}"))?;
        let alt = sys::altstack().map_err(|e| format!("sigaltstack query: errno {e}"))?;
        if alt != (alt_stack.addr(), alt_size, alt_flags) {
            return Err(format!(
                "sigaltstack reads back as {alt:?}, set {:?}",
                (alt_stack.addr(), alt_size, alt_flags)
            ));
        }
        let comm_path = CString::new(format!("/proc/self/task/{tid}/comm")).unwrap();
        let mut comm = vec![0u8; 64];
        let n = sys::read_file_into(&comm_path, &mut comm)
            .map_err(|e| format!("reading {}: errno {e}", comm_path.to_string_lossy()))?;
        comm.truncate(n);
        Ok(Me {
            tid,
            tls_value,
            tls_addr: tls_addr(),
            fsbase,
            mask,
            alt,
            comm_path,
            comm,
            _alt_stack: alt_stack,
        })
    }

    fn verify(&self, chk: &mut Check) {
        let tid = sys::gettid();
        if tid != self.tid {
            fail!(chk, "gettid() is {tid}, expected {}", self.tid);
        }
        let v = TLS_VALUE.get();
        if v != self.tls_value {
            fail!(
                chk,
                "thread-local value {v:#x}, expected {:#x}",
                self.tls_value
            );
        }
        let addr = tls_addr();
        if addr != self.tls_addr {
            fail!(
                chk,
                "thread-local at {addr:#x}, expected {:#x}",
                self.tls_addr
            );
        }
        match sys::fs_base() {
            Ok(b) if b == self.fsbase => {}
            Ok(b) => fail!(chk, "fs base {b:#x}, expected {:#x}", self.fsbase),
            Err(e) => fail!(chk, "arch_prctl(ARCH_GET_FS): errno {e}"),
        }
        match sys::sigmask() {
            Ok(m) if m == self.mask => {}
            Ok(m) => fail!(chk, "signal mask {m:#x}, expected {:#x}", self.mask),
            Err(e) => fail!(chk, "rt_sigprocmask: errno {e}"),
        }
        match sys::altstack() {
            Ok(a) if a == self.alt => {}
            Ok(a) => fail!(
                chk,
                "sigaltstack (sp, size, flags) is ({:#x}, {}, {:#x}), expected ({:#x}, {}, {:#x})",
                a.0,
                a.1,
                a.2,
                self.alt.0,
                self.alt.1,
                self.alt.2
            ),
            Err(e) => fail!(chk, "sigaltstack: errno {e}"),
        }
        let mut buf = [0u8; 64];
        match sys::read_file_into(&self.comm_path, &mut buf) {
            Ok(n) if buf[..n] == self.comm[..] => {}
            Ok(n) => fail!(
                chk,
                "name (comm) is `{}`, expected `{}`",
                Shown(&buf[..n]),
                Shown(&self.comm)
            ),
            Err(e) => fail!(chk, "reading comm: errno {e}"),
        }
    }
}

/// What a thread hands back to the main thread.
struct Report {
    name: &'static str,
    tid: i32,
    chk: Check,
}

/// The body of every thread of `threads`: set up, arm, block, verify, report.
fn thread_main(kind: Kind, joined: Option<JoinHandle<Reports>>) -> Reports {
    let idx = kind.idx();
    let mut chk = Check::new();
    let tid = sys::gettid();
    let tls = 0x71e5_0000_0000_0000 | ((idx as u64) << 32) | tid as u32 as u64;
    let alt_flags = if kind == Kind::Nanosleep {
        SS_AUTODISARM
    } else {
        0
    };
    let me = match Me::setup(idx, tls, (64 << 10) + idx * 4096, alt_flags) {
        Ok(me) => Some(me),
        Err(e) => {
            fail!(chk, "setup: {e}");
            None
        }
    };
    TIDS[idx].store(tid, Ordering::SeqCst);
    ARMED.fetch_add(1, Ordering::SeqCst);
    let mut other = None;
    match kind {
        Kind::FutexTimed => futex_loop(&FUTEX_TIMED, true, &mut chk),
        Kind::Futex => futex_loop(&FUTEX_FOREVER, false, &mut chk),
        Kind::Condvar => condvar_wait(&mut chk),
        Kind::Nanosleep => nanosleep_loop(&mut chk),
        Kind::Busy => busy_loop(&mut chk),
        Kind::Yield => yield_loop(&mut chk),
        Kind::Join => {
            match joined.map(JoinHandle::join) {
                Some(Ok(r)) => other = Some(r.0),
                Some(Err(_)) => fail!(chk, "the joined thread panicked"),
                None => fail!(chk, "no thread to join"),
            }
            if !GO.load(Ordering::SeqCst) {
                fail!(chk, "join returned before go");
            }
        }
        Kind::Sigwait => sigwait_loop(&mut chk),
    }
    if let Some(me) = &me {
        me.verify(&mut chk);
    }
    DONE_MASK.fetch_or(1 << idx, Ordering::SeqCst);
    DONE.fetch_add(1, Ordering::SeqCst);
    Reports(
        Report {
            name: kind.name(),
            tid,
            chk,
        },
        other,
    )
}

/// A thread's report, and the joined thread's for the Join thread.
struct Reports(Report, Option<Report>);

/// Counts what the blocking calls returned; any return the kernel may not give is a failure.
fn futex_loop(word: &AtomicU32, timed: bool, chk: &mut Check) {
    let ts = libc::timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    let (mut woken, mut timeouts, mut eintr, mut eagain, mut bad) = (0u64, 0u64, 0u64, 0u64, 0);
    while word.load(Ordering::SeqCst) == 0 {
        match sys::futex_wait(word, 0, timed.then_some(&ts)) {
            0 => woken += 1,
            libc::ETIMEDOUT if timed => timeouts += 1,
            libc::EINTR => eintr += 1,
            libc::EAGAIN => eagain += 1,
            e => {
                bad += 1;
                if bad == 1 {
                    fail!(
                        chk,
                        "FUTEX_WAIT ({}) failed with errno {e}",
                        if timed { "5 s timeout" } else { "no timeout" }
                    );
                }
                sys::sleep_ms(20);
            }
        }
    }
    if !GO.load(Ordering::SeqCst) {
        fail!(chk, "futex word set before go");
    }
    black_box((woken, timeouts, eintr, eagain));
}

fn condvar_wait(chk: &mut Check) {
    let mut wakeups = 0u64;
    let mut g = COND.lock().unwrap_or_else(|e| e.into_inner());
    while !*g {
        g = CV.wait(g).unwrap_or_else(|e| e.into_inner());
        wakeups += 1;
    }
    drop(g);
    if wakeups == 0 {
        fail!(chk, "condvar: the predicate was true without waiting");
    }
    if !GO.load(Ordering::SeqCst) {
        fail!(chk, "condvar: predicate set before go");
    }
}

fn nanosleep_loop(chk: &mut Check) {
    let mut bad = 0;
    while !GO.load(Ordering::SeqCst) {
        let ts = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        let mut rem = libc::timespec {
            tv_sec: -1,
            tv_nsec: -1,
        };
        // SAFETY: valid timespec pointers.
        let rc = unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, &mut rem) };
        let rem_ok = (0..=1).contains(&rem.tv_sec)
            && (0..1_000_000_000).contains(&rem.tv_nsec)
            && (rem.tv_sec == 0 || rem.tv_nsec == 0);
        match rc {
            0 => {}
            libc::EINTR if rem_ok => {}
            _ => {
                bad += 1;
                if bad == 1 {
                    fail!(
                        chk,
                        "clock_nanosleep returned {rc} with rem {}.{:09}",
                        rem.tv_sec,
                        rem.tv_nsec
                    );
                }
                sys::sleep_ms(20);
            }
        }
    }
}

fn busy_loop(chk: &mut Check) {
    let mut a: u64 = 0;
    let mut b: u64 = 0;
    loop {
        a = black_box(a + 1);
        b = black_box(b.wrapping_add(BUSY_STEP));
        if a & 0xf_ffff == 0 {
            BUSY_PUBLISHED.store(a, Ordering::SeqCst);
            if GO.load(Ordering::SeqCst) {
                break;
            }
        }
    }
    if b != a.wrapping_mul(BUSY_STEP) {
        fail!(
            chk,
            "busy loop: sum {b:#x} after {a} steps, expected {:#x}",
            a.wrapping_mul(BUSY_STEP)
        );
    }
    let at_ready = BUSY_AT_READY.load(Ordering::SeqCst);
    if a <= at_ready {
        fail!(
            chk,
            "busy loop: count {a} at the end, but {at_ready} was published before ready"
        );
    }
}

fn yield_loop(chk: &mut Check) {
    let mut n = 0u64;
    let mut bad = 0;
    while !GO.load(Ordering::SeqCst) {
        // SAFETY: sched_yield has no memory effects.
        let r = unsafe { libc::sched_yield() };
        if r != 0 {
            bad += 1;
            if bad == 1 {
                fail!(chk, "sched_yield returned {r}, errno {}", errno());
            }
        }
        n += 1;
    }
    black_box(n);
}

fn sigwait_loop(chk: &mut Check) {
    let sig = sigwait_signal();
    // SAFETY: an all-zero sigset_t is valid; sigemptyset/sigaddset initialize it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    let mut eintr = 0u64;
    let mut bad = 0;
    loop {
        // SAFETY: an all-zero siginfo_t is valid; sigwaitinfo fills it in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers.
        let r = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if r == sig {
            // SAFETY: si_pid is valid for SI_TKILL.
            let pid = unsafe { info.si_pid() };
            // tgkill gives SI_TKILL on older kernels, SI_USER on this one.
            let code_ok = info.si_code == libc::SI_TKILL || info.si_code == libc::SI_USER;
            if !code_ok || pid != sys::getpid() {
                fail!(
                    chk,
                    "sigwaitinfo: si_code {} si_pid {pid}, expected SI_TKILL or SI_USER from \
                     pid {}",
                    info.si_code,
                    sys::getpid()
                );
            }
            break;
        }
        let e = errno();
        if r == -1 && e == libc::EINTR {
            eintr += 1;
            continue;
        }
        bad += 1;
        if bad == 1 {
            fail!(chk, "sigwaitinfo returned {r}, errno {e}");
        }
        if bad > 100 {
            return;
        }
        sys::sleep_ms(20);
    }
    black_box(eintr);
    if !GO.load(Ordering::SeqCst) {
        fail!(chk, "sigwaitinfo: the signal came before go");
    }
}

/// /proc/self/task/TID/syscall
fn syscall_path(tid: i32) -> CString {
    CString::new(format!("/proc/self/task/{tid}/syscall")).unwrap()
}

/// Waits until `n` threads are armed and each passes `ok` (given its index and its
/// /proc/self/task/TID/syscall first field).
fn wait_armed_and_blocked(n: usize, tids: &[AtomicI32], ok: impl Fn(usize, i64) -> bool) {
    let deadline = Instant::now() + ARM_BOUND;
    while ARMED.load(Ordering::SeqCst) < n {
        if Instant::now() > deadline {
            crate::die(format_args!(
                "only {} of {n} threads armed after {ARM_BOUND:?}",
                ARMED.load(Ordering::SeqCst)
            ));
        }
        sys::sleep_ms(5);
    }
    for (i, t) in tids.iter().enumerate() {
        let tid = t.load(Ordering::SeqCst);
        let path = syscall_path(tid);
        loop {
            let nr = sys::current_syscall(&path);
            if ok(i, nr) {
                break;
            }
            if Instant::now() > deadline {
                crate::die(format_args!(
                    "thread {i} (tid {tid}) not in its waiting state after {ARM_BOUND:?}: \
                     syscall {nr}"
                ));
            }
            sys::sleep_ms(5);
        }
    }
}

/// Compares the tids of /proc/self/task before and after.
fn compare_tasks(before: &[i32], after: &[i32], chk: &mut Check) {
    if before != after {
        let gone = before.iter().find(|t| !after.contains(t));
        let new = after.iter().find(|t| !before.contains(t));
        fail!(
            chk,
            "/proc/self/task has {} tasks, {} before (first missing {gone:?}, first new \
             {new:?})",
            after.len(),
            before.len()
        );
    }
}

/// Waits (bounded) until `n` threads reported done.
fn wait_done(n: usize, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while DONE.load(Ordering::SeqCst) < n {
        if Instant::now() > deadline {
            return false;
        }
        sys::sleep_ms(5);
    }
    true
}

fn spawn<T: Send + 'static>(
    name: Option<&str>,
    stack: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let mut b = thread::Builder::new().stack_size(stack);
    if let Some(name) = name {
        b = b.name(name.to_string());
    }
    match b.spawn(f) {
        Ok(h) => h,
        Err(e) => crate::die(format_args!("spawning a thread: {e}")),
    }
}

fn merge(r: &Report, chk: &mut Check) {
    if r.chk.failures > 0 {
        fail!(
            chk,
            "thread {} (tid {}): {}{}",
            r.name,
            r.tid,
            Shown(r.chk.first.as_bytes()),
            if r.chk.failures > 1 {
                " (and more)"
            } else {
                ""
            }
        );
    }
}

/// `threads`: the main thread and eight threads, each in a different blocking state.
pub fn threads(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let bound = sys::wait_bound();
    let main_tls = 0x3a14_0000_0000_0000 | sys::getpid() as u32 as u64;
    let main_me = match Me::setup(MAIN_IDX, main_tls, 96 << 10, 0) {
        Ok(m) => m,
        Err(e) => crate::die(format_args!("main thread setup: {e}")),
    };
    const STACK: usize = 256 << 10;
    let k = spawn(Some(Kind::Futex.name()), STACK, || {
        thread_main(Kind::Futex, None)
    });
    let mut handles = Vec::with_capacity(NTHREADS);
    handles.push(spawn(Some(Kind::Join.name()), STACK, move || {
        thread_main(Kind::Join, Some(k))
    }));
    for kind in KINDS {
        if kind != Kind::Futex && kind != Kind::Join {
            handles.push(spawn(Some(kind.name()), STACK, move || {
                thread_main(kind, None)
            }));
        }
    }
    wait_armed_and_blocked(NTHREADS, &TIDS, |i, nr| KINDS[i].in_wait_state(nr));
    BUSY_AT_READY.store(BUSY_PUBLISHED.load(Ordering::SeqCst), Ordering::SeqCst);
    let mut tasks_before = Vec::with_capacity(64);
    let mut tasks_after = Vec::with_capacity(64);
    if let Err(e) = sys::read_numbers(c"/proc/self/task", &mut tasks_before) {
        crate::die(format_args!("listing /proc/self/task: errno {e}"));
    }
    if tasks_before.len() != NTHREADS + 1 {
        crate::die(format_args!(
            "{} tasks before ready, expected {}",
            tasks_before.len(),
            NTHREADS + 1
        ));
    }
    let own = crate::procs::root_ready(ctx, bufs, &[], &[]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    match sys::read_numbers(c"/proc/self/task", &mut tasks_after) {
        Ok(()) => compare_tasks(&tasks_before, &tasks_after, &mut chk),
        Err(e) => fail!(chk, "listing /proc/self/task after go: errno {e}"),
    }
    main_me.verify(&mut chk);

    // Wake everyone.
    GO.store(true, Ordering::SeqCst);
    FUTEX_TIMED.store(1, Ordering::SeqCst);
    sys::futex_wake_all(&FUTEX_TIMED);
    FUTEX_FOREVER.store(1, Ordering::SeqCst);
    sys::futex_wake_all(&FUTEX_FOREVER);
    *COND.lock().unwrap_or_else(|e| e.into_inner()) = true;
    CV.notify_all();
    let sigwait_tid = TIDS[Kind::Sigwait.idx()].load(Ordering::SeqCst);
    // SAFETY: tgkill sends a signal to one of our own threads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            sys::getpid(),
            sigwait_tid,
            sigwait_signal(),
        )
    };
    if r != 0 {
        fail!(
            chk,
            "tgkill(sigwait thread {sigwait_tid}): errno {}",
            errno()
        );
    }

    if !wait_done(NTHREADS, bound) {
        let done = DONE_MASK.load(Ordering::SeqCst);
        for (i, kind) in KINDS.iter().enumerate() {
            if done & (1 << i) == 0 {
                let tid = TIDS[i].load(Ordering::SeqCst);
                fail!(
                    chk,
                    "thread {} (tid {tid}) did not finish within {bound:?} after go (syscall \
                     {})",
                    kind.name(),
                    sys::current_syscall(&syscall_path(tid))
                );
            }
        }
        chk.finish();
    }
    for h in handles {
        match h.join() {
            Ok(Reports(r, other)) => {
                merge(&r, &mut chk);
                if let Some(o) = other {
                    merge(&o, &mut chk);
                }
            }
            Err(_) => fail!(chk, "a thread panicked"),
        }
    }
    chk.finish()
}

// ---------------------------------------------------------------------------------------------
// `manythreads N`

static MANY_WORD: AtomicU32 = AtomicU32::new(0);

/// One of the N threads: even ones wait in FUTEX_WAIT, odd ones sleep 1 s at a time.
fn many_main(i: usize, tids: &'static [AtomicI32]) -> (i32, Check) {
    let mut chk = Check::new();
    let tid = sys::gettid();
    let tls = 0x3a3a_0000_0000_0000 | ((i as u64) << 24) | tid as u32 as u64;
    TLS_VALUE.set(tls);
    let addr = tls_addr();
    let fsbase = sys::fs_base();
    tids[i].store(tid, Ordering::SeqCst);
    ARMED.fetch_add(1, Ordering::SeqCst);
    if i.is_multiple_of(2) {
        while MANY_WORD.load(Ordering::SeqCst) == 0 {
            match sys::futex_wait(&MANY_WORD, 0, None) {
                0 | libc::EINTR | libc::EAGAIN => {}
                e => {
                    fail!(chk, "FUTEX_WAIT failed with errno {e}");
                    sys::sleep_ms(20);
                }
            }
        }
    } else {
        while !GO.load(Ordering::SeqCst) {
            let ts = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            // SAFETY: valid timespec pointer; rem may be null.
            let rc = unsafe {
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut())
            };
            if rc != 0 && rc != libc::EINTR {
                fail!(chk, "clock_nanosleep returned {rc}");
                sys::sleep_ms(20);
            }
        }
    }
    if !GO.load(Ordering::SeqCst) {
        fail!(chk, "woken before go");
    }
    let now = sys::gettid();
    if now != tid {
        fail!(chk, "gettid() is {now}, expected {tid}");
    }
    if TLS_VALUE.get() != tls || tls_addr() != addr {
        fail!(
            chk,
            "thread-local {:#x} at {:#x}, expected {tls:#x} at {addr:#x}",
            TLS_VALUE.get(),
            tls_addr()
        );
    }
    let fs_now = sys::fs_base();
    if fs_now != fsbase {
        fail!(chk, "fs base {fs_now:?}, expected {fsbase:?}");
    }
    DONE.fetch_add(1, Ordering::SeqCst);
    (tid, chk)
}

/// `manythreads N`: the main thread and N threads blocked in FUTEX_WAIT or clock_nanosleep.
pub fn manythreads(ctx: &Ctx, bufs: &mut MapsBufs, n: usize) -> ! {
    let bound = sys::wait_bound();
    let tids: &'static [AtomicI32] = Vec::from_iter((0..n).map(|_| AtomicI32::new(0))).leak();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        handles.push(spawn(None, 64 << 10, move || many_main(i, tids)));
    }
    wait_armed_and_blocked(n, tids, |i, nr| {
        nr == if i.is_multiple_of(2) {
            SYS_FUTEX
        } else {
            SYS_CLOCK_NANOSLEEP
        }
    });
    let mut tasks_before = Vec::with_capacity(n + 16);
    let mut tasks_after = Vec::with_capacity(n + 16);
    if let Err(e) = sys::read_numbers(c"/proc/self/task", &mut tasks_before) {
        crate::die(format_args!("listing /proc/self/task: errno {e}"));
    }
    if tasks_before.len() != n + 1 {
        crate::die(format_args!(
            "{} tasks before ready, expected {}",
            tasks_before.len(),
            n + 1
        ));
    }
    let own = crate::procs::root_ready(ctx, bufs, &[], &[]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    match sys::read_numbers(c"/proc/self/task", &mut tasks_after) {
        Ok(()) => compare_tasks(&tasks_before, &tasks_after, &mut chk),
        Err(e) => fail!(chk, "listing /proc/self/task after go: errno {e}"),
    }
    GO.store(true, Ordering::SeqCst);
    MANY_WORD.store(1, Ordering::SeqCst);
    sys::futex_wake_all(&MANY_WORD);
    if !wait_done(n, bound) {
        fail!(
            chk,
            "only {} of {n} threads finished within {bound:?} after go",
            DONE.load(Ordering::SeqCst)
        );
        chk.finish();
    }
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok((tid, c)) if c.failures > 0 => {
                fail!(chk, "thread {i} (tid {tid}): {}", Shown(c.first.as_bytes()))
            }
            Ok(_) => {}
            Err(_) => fail!(chk, "thread {i} panicked"),
        }
    }
    chk.finish()
}
