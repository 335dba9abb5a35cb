//! `taskstate`: one process with two threads whose signal, timer, credential, seccomp,
//! limit, scheduling, prctl and cgroup state must survive a dump and restore.
//!
//! It must start as root (it drops to uid 1000 during setup). Exact values, set before ready
//! (M = main thread, H = helper thread, P = process-wide; RT = SIGRTMIN, 34 with glibc):
//!
//! Signals
//! - sigactions (P): SIGUSR1 SA_SIGINFO|SA_RESTART mask {SIGWINCH}; SIGUSR2
//!   SA_SIGINFO|SA_RESTART|SA_NODEFER; SIGALRM, SIGVTALRM, SIGPROF, RT+5, RT+6, RT+8
//!   SA_SIGINFO|SA_RESTART; RT+3 SA_SIGINFO mask {RT+9}; RT+4 SA_SIGINFO|SA_ONSTACK (runs on
//!   H's sigaltstack); RT+7 SA_SIGINFO|SA_RESETHAND;
//!   SIGPIPE and SIGXFSZ ignored. All 64 dispositions are compared raw (rt_sigaction).
//! - blocked: M {SIGUSR1, RT+3, RT+7}; H {SIGUSR1, SIGUSR2, RT+3, RT+4}.
//! - pending, all SI_QUEUE with si_pid = pid and si_uid = 1000: shared SIGUSR1 (value 111),
//!   shared RT+3 x3 (values 1, 2, 3 in this order); M private RT+7 (77); H private SIGUSR2
//!   (222) and RT+4 x2 (41, 42).
//! - sigaltstack: M keeps the one Rust installed; H has its own 64 KiB one (flags 0).
//! - After go: M unblocks and checks each delivery (one at a time), then H does.
//!   PR_SET_PDEATHSIG is SIGUSR2, not blocked in M: a SIGUSR2 with si_code other than
//!   SI_QUEUE arriving in M (its parent rcr exited after `restore --detach`) is tolerated.
//!
//! Timers (P)
//! - ITIMER_REAL 3600 s / interval 1800 s; ITIMER_VIRTUAL 1000 s / 100 s; ITIMER_PROF
//!   2000 s / 200 s.
//! - POSIX timers created in this order, the `d` ones deleted afterwards (so the live ids have
//!   gaps: 1, 3, 5 on a fresh process): d, A, d, B, d, C.
//!   A: CLOCK_MONOTONIC, SIGEV_SIGNAL RT+5 value 0x5555, 1000 s / interval 500 s.
//!   B: CLOCK_REALTIME, SIGEV_SIGNAL RT+6 value 0x6666, disarmed.
//!   C: CLOCK_BOOTTIME, SIGEV_THREAD_ID to H, RT+8 value 0x8888, 2000 s, no interval.
//!   After go: same ids, remaining times sane, intervals exact, /proc/self/timers has the
//!   same entries (order ignored), PR_TIMER_CREATE_RESTORE_IDS is off, and a new
//!   timer_create gets an id distinct from A, B and C.
//!
//! Credentials (per thread, same in both)
//! - bounding set: the original minus CAP_SYS_BOOT and CAP_MKNOD.
//! - securebits SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS (0x13).
//! - groups [1001, 1002]; gid r/e/s 1000/1001/1002, fsgid 1004; uid r/e/s 1000/1001/1002,
//!   fsuid 1003.
//! - permitted {CAP_KILL, CAP_NET_BIND_SERVICE, CAP_NET_RAW}, effective
//!   {CAP_NET_BIND_SERVICE}, inheritable {CAP_KILL, CAP_NET_RAW}, ambient {CAP_KILL}.
//! - no_new_privs 1; two seccomp filters (in this order): (1) uname -> EPERM, getcpu ->
//!   EXDEV, setgroups -> ENOTBLK; (2) uname -> EACCES (all else allowed). The newest filter
//!   wins among equal actions, so uname fails with EACCES only if both are there in the
//!   original order. setgroups is denied too: the restorer's own setgroups must not be
//!   subject to the filters (installed last, or suspended while restoring).
//!
//! Limits, scheduling (per thread unless P)
//! - rlimits (P): NOFILE 512/4096, CORE 0/0, STACK soft 16 MiB (hard unchanged), CPU soft
//!   86400 s (hard unchanged), MEMLOCK 64 KiB / 4 MiB (if the hard limit allows); all 16
//!   compared with the values before ready.
//! - umask (P) 027; nice M 5, H 7; SCHED_BATCH priority 0; affinity {lowest allowed CPU};
//!   personality ADDR_NO_RANDOMIZE; ioprio BE/6.
//!
//! prctl
//! - comm M `rcr-taskst8`, H `rcr-tshelper`; timer slack M 123456 ns, H 654321 ns;
//!   pdeathsig M SIGUSR2, H 0; dumpable (P) 0; child subreaper (P) 1; THP disable (P) 1.
//!
//! Cgroup (P): /proc/self/cgroup must read the same. If RCR_WORKLOAD_CGROUP names a cgroup
//! directory, the workload first moves itself there (writing its pid to cgroup.procs).
//!
//! The workload's DIR is chowned to fsuid/fsgid 1003/1004 (so it can write ready once it is
//! no longer root). Both threads also compare a snapshot of their /proc/thread-self/status
//! lines (ids, capabilities, signal sets, seccomp, affinity...), taken right before ready.
//! The main thread polls for go (20 ms clock_nanosleep); the helper waits in FUTEX_WAIT.
//! Nothing is allocated or mapped between the snapshots and the checks (maps compared
//! exactly). Every failure is also printed on stderr (`taskstate: FAILED: ...`); stdout has
//! the usual single PASS or FAIL line.

use crate::procs::MapsBufs;
use crate::sys::{self, FdSet, Mapping, Msg, Shown, errno};
use crate::{Check, Ctx};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records a failure like the crate's `fail!`, and also prints it on stderr (only the first
/// one is shown on stdout), without allocating.
macro_rules! fail {
    ($chk:expr, $($arg:tt)*) => {{
        $crate::taskstate::note(format_args!($($arg)*));
        $chk.fail(format_args!($($arg)*))
    }};
}

/// Prints `taskstate: FAILED: <what>` on stderr.
pub fn note(what: std::fmt::Arguments<'_>) {
    let mut m = Msg::new();
    let _ = writeln!(m, "taskstate: FAILED: {what}");
    let _ = sys::write_all(2, m.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// The values.

const RUID: u32 = 1000;
const EUID: u32 = 1001;
const SUID: u32 = 1002;
const FSUID: u32 = 1003;
const RGID: u32 = 1000;
const EGID: u32 = 1001;
const SGID: u32 = 1002;
const FSGID: u32 = 1004;
const GROUPS: [u32; 2] = [1001, 1002];

const CAP_KILL: u32 = 5;
const CAP_SETUID: u32 = 7;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_BOOT: u32 = 22;
const CAP_MKNOD: u32 = 27;
const fn bit(cap: u32) -> u64 {
    1u64 << cap
}
const CAP_PRM: u64 = bit(CAP_KILL) | bit(CAP_NET_BIND_SERVICE) | bit(CAP_NET_RAW);
const CAP_EFF: u64 = bit(CAP_NET_BIND_SERVICE);
const CAP_INH: u64 = bit(CAP_KILL) | bit(CAP_NET_RAW);
const CAP_AMB: u64 = bit(CAP_KILL);
const BND_DROPPED: u64 = bit(CAP_SYS_BOOT) | bit(CAP_MKNOD);

const SECBIT_NOROOT: i64 = 1 << 0;
const SECBIT_NOROOT_LOCKED: i64 = 1 << 1;
const SECBIT_KEEP_CAPS: i64 = 1 << 4;
const SECUREBITS: i64 = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS;

const NICE_MAIN: i32 = 5;
const NICE_HELPER: i32 = 7;
const IOPRIO_CLASS_BE: i64 = 2;
const IOPRIO: i64 = (IOPRIO_CLASS_BE << 13) | 6;
const IOPRIO_WHO_PROCESS: i64 = 1;
const ADDR_NO_RANDOMIZE: i32 = 0x0040000;
const UMASK: libc::mode_t = 0o027;
const COMM_MAIN: &[u8] = b"rcr-taskst8";
const COMM_HELPER: &[u8] = b"rcr-tshelper";
const SLACK_MAIN: i64 = 123_456;
const SLACK_HELPER: i64 = 654_321;

const NOFILE: (u64, u64) = (512, 4096);
const STACK_SOFT: u64 = 16 << 20;
const CPU_SOFT: u64 = 86_400;
const MEMLOCK: (u64, u64) = (64 << 10, 4 << 20);

const ITIMERS: [(i32, i64, i64); 3] = [
    (libc::ITIMER_REAL, 3600, 1800),
    (libc::ITIMER_VIRTUAL, 1000, 100),
    (libc::ITIMER_PROF, 2000, 200),
];
/// How much an itimer or POSIX timer may have run down between setup and the checks.
const TIMER_SLACK_SECS: i64 = 100;
const ITIMER_CPU_SLACK_SECS: i64 = 10;
/// How far above its value a CPU itimer may read: setitimer adds a tick (up to 10 ms), and
/// each restore that sets it again may add one more.
const ITIMER_CPU_TICKS_US: i64 = 50_000;

const TIMER_A: (i64, i64) = (1000, 500);
const TIMER_C: (i64, i64) = (2000, 0);

const VAL_USR1: u64 = 111;
const VAL_RT3: [u64; 3] = [1, 2, 3];
const VAL_RT7: u64 = 77;
const VAL_USR2: u64 = 222;
const VAL_RT4: [u64; 2] = [41, 42];

const SI_QUEUE: i32 = -1;
const SI_TIMER: i32 = -2;

const SA_RESTORER: u64 = 0x0400_0000;

// prctl options (linux/prctl.h).
const PR_SET_PDEATHSIG: i32 = 1;
const PR_GET_PDEATHSIG: i32 = 2;
const PR_GET_DUMPABLE: i32 = 3;
const PR_SET_DUMPABLE: i32 = 4;
const PR_SET_NAME: i32 = 15;
const PR_GET_NAME: i32 = 16;
const PR_GET_SECCOMP: i32 = 21;
const PR_SET_SECCOMP: i32 = 22;
const PR_CAPBSET_DROP: i32 = 24;
const PR_GET_SECUREBITS: i32 = 27;
const PR_SET_SECUREBITS: i32 = 28;
const PR_SET_TIMERSLACK: i32 = 29;
const PR_GET_TIMERSLACK: i32 = 30;
const PR_SET_CHILD_SUBREAPER: i32 = 36;
const PR_GET_CHILD_SUBREAPER: i32 = 37;
const PR_SET_NO_NEW_PRIVS: i32 = 38;
const PR_GET_NO_NEW_PRIVS: i32 = 39;
const PR_SET_THP_DISABLE: i32 = 41;
const PR_GET_THP_DISABLE: i32 = 42;
const PR_CAP_AMBIENT: i32 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_GET: u64 = 2;

const SECCOMP_MODE_FILTER: u64 = 2;

fn rt(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

fn sigbit(sig: i32) -> u64 {
    sys::sigbit(sig)
}

fn main_mask() -> u64 {
    sigbit(libc::SIGUSR1) | sigbit(rt(3)) | sigbit(rt(7))
}

fn helper_mask() -> u64 {
    sigbit(libc::SIGUSR1) | sigbit(libc::SIGUSR2) | sigbit(rt(3)) | sigbit(rt(4))
}

/// What a thread's own state must be.
struct Want {
    who: &'static str,
    nice: i32,
    comm: &'static [u8],
    slack: i64,
    pdeathsig: i32,
    mask: u64,
}

fn want_main() -> Want {
    Want {
        who: "main thread",
        nice: NICE_MAIN,
        comm: COMM_MAIN,
        slack: SLACK_MAIN,
        pdeathsig: libc::SIGUSR2,
        mask: main_mask(),
    }
}

fn want_helper() -> Want {
    Want {
        who: "helper thread",
        nice: NICE_HELPER,
        comm: COMM_HELPER,
        slack: SLACK_HELPER,
        pdeathsig: 0,
        mask: helper_mask(),
    }
}

// ---------------------------------------------------------------------------------------------
// Small syscall wrappers (no allocation).

fn prctl(op: i32, a: u64, b: u64, c: u64, d: u64) -> i64 {
    // SAFETY: prctl with integer arguments or pointers the callers own; the options used
    // here write at most 16 bytes (PR_GET_NAME) or one int.
    let r = unsafe { libc::syscall(libc::SYS_prctl, op, a, b, c, d) };
    if r < 0 { -(errno() as i64) } else { r }
}

/// A prctl that stores an int through its argument (PR_GET_PDEATHSIG, PR_GET_CHILD_SUBREAPER).
fn prctl_get_int(op: i32) -> i64 {
    let mut v: i32 = -1;
    let r = prctl(op, &mut v as *mut i32 as u64, 0, 0, 0);
    if r < 0 { r } else { v as i64 }
}

fn check_prctl(what: &str, r: i64) -> Result<(), String> {
    if r < 0 {
        Err(format!("{what}: errno {}", -r))
    } else {
        Ok(())
    }
}

fn sys_ok(what: &str, r: i64) -> Result<(), String> {
    if r < 0 {
        Err(format!("{what}: errno {}", errno()))
    } else {
        Ok(())
    }
}

/// rt_sigprocmask(SIG_UNBLOCK): pending signals among `mask` are delivered before it returns.
fn unblock(mask: u64) -> Result<(), i32> {
    // SAFETY: rt_sigprocmask reads 8 bytes from `mask`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_UNBLOCK,
            &mask as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    if r != 0 { Err(errno()) } else { Ok(()) }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's (effective, permitted, inheritable) sets.
fn capget() -> Result<[u64; 3], i32> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a v3 header and two data structs, as the kernel expects.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r != 0 {
        return Err(errno());
    }
    let join = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
    Ok([
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ])
}

fn capset(eff: u64, prm: u64, inh: u64) -> Result<(), String> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: eff as u32,
            permitted: prm as u32,
            inheritable: inh as u32,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (prm >> 32) as u32,
            inheritable: (inh >> 32) as u32,
        },
    ];
    // SAFETY: a v3 header and two data structs, as the kernel expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if r != 0 {
        return Err(format!(
            "capset(eff {eff:#x}, prm {prm:#x}, inh {inh:#x}): errno {}",
            errno()
        ));
    }
    Ok(())
}

/// The kernel's struct sigaction (x86_64).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct KSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

fn ksigaction(sig: i32) -> Result<KSigaction, i32> {
    let mut old = KSigaction::default();
    // SAFETY: a null new action only queries; the kernel writes one struct of 32 bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<KSigaction>(),
            &mut old as *mut KSigaction,
            8usize,
        )
    };
    if r != 0 { Err(errno()) } else { Ok(old) }
}

/// Installs `record` (SA_SIGINFO | flags, sa_mask = mask) through glibc (which adds the
/// SA_RESTORER trampoline).
fn install(sig: i32, flags: i32, mask: &[i32]) -> Result<(), String> {
    // SAFETY: an all-zero sigaction is valid; the fields are set below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = record as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | flags;
    // SAFETY: sa_mask is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        for &m in mask {
            libc::sigaddset(&mut sa.sa_mask, m);
        }
    }
    // SAFETY: a valid sigaction; `record` is async-signal-safe.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaction({sig}): errno {}", errno()));
    }
    Ok(())
}

fn ignore(sig: i32) -> Result<(), String> {
    // SAFETY: SIG_IGN is a valid disposition for these signals.
    if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(format!("signal({sig}, SIG_IGN): errno {}", errno()));
    }
    Ok(())
}

/// A kernel siginfo for rt_sigqueueinfo / rt_tgsigqueueinfo: SI_QUEUE from this process.
fn queue_info(sig: i32, value: u64) -> [u64; 16] {
    let mut info = [0u64; 16];
    // si_signo, si_errno
    info[0] = sig as u32 as u64;
    // si_code (the pad after it stays 0)
    info[1] = SI_QUEUE as u32 as u64;
    // si_pid, si_uid
    // SAFETY: getpid/getuid only query.
    let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
    info[2] = pid as u32 as u64 | (uid as u64) << 32;
    // si_value
    info[3] = value;
    info
}

/// sigqueue to the whole process (shared pending queue).
fn queue_process(sig: i32, value: u64) -> Result<(), String> {
    let info = queue_info(sig, value);
    // SAFETY: the kernel reads a 128-byte siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigqueueinfo,
            libc::getpid(),
            sig,
            info.as_ptr(),
        )
    };
    sys_ok(&format!("rt_sigqueueinfo({sig}, {value})"), r)
}

/// Queues a signal to one thread (its private pending queue).
fn queue_thread(tid: i32, sig: i32, value: u64) -> Result<(), String> {
    let info = queue_info(sig, value);
    // SAFETY: the kernel reads a 128-byte siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            tid,
            sig,
            info.as_ptr(),
        )
    };
    sys_ok(&format!("rt_tgsigqueueinfo({tid}, {sig}, {value})"), r)
}

/// The kernel's struct sigevent (64 bytes).
#[repr(C)]
struct KSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    pad: [i32; 11],
}

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

fn timer_create(clock: i32, notify: i32, signo: i32, value: u64, tid: i32) -> Result<i32, i32> {
    let ev = KSigevent {
        value,
        signo,
        notify,
        tid,
        pad: [0; 11],
    };
    let mut id: i32 = -1;
    // SAFETY: a valid sigevent; the kernel writes one int (the kernel's timer_t).
    let r = unsafe { libc::syscall(libc::SYS_timer_create, clock, &ev, &mut id as *mut i32) };
    if r != 0 { Err(errno()) } else { Ok(id) }
}

fn timer_delete(id: i32) -> Result<(), i32> {
    // SAFETY: deletes one of our timers.
    let r = unsafe { libc::syscall(libc::SYS_timer_delete, id) };
    if r != 0 { Err(errno()) } else { Ok(()) }
}

fn timer_settime(id: i32, value_s: i64, interval_s: i64) -> Result<(), i32> {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: interval_s,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: value_s,
            tv_nsec: 0,
        },
    };
    // SAFETY: a valid itimerspec; the old value is not asked for.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            &spec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    };
    if r != 0 { Err(errno()) } else { Ok(()) }
}

/// (remaining, interval) in nanoseconds.
fn timer_gettime(id: i32) -> Result<(i64, i64), i32> {
    // SAFETY: all-zero is a valid itimerspec.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one itimerspec.
    let r = unsafe { libc::syscall(libc::SYS_timer_gettime, id, &mut spec) };
    if r != 0 {
        return Err(errno());
    }
    Ok((ts_ns(&spec.it_value), ts_ns(&spec.it_interval)))
}

fn ts_ns(t: &libc::timespec) -> i64 {
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// (remaining, interval) of an itimer in microseconds.
fn getitimer(which: i32) -> Result<(i64, i64), i32> {
    // SAFETY: all-zero is a valid itimerval.
    let mut v: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one itimerval.
    let r = unsafe { libc::syscall(libc::SYS_getitimer, which, &mut v) };
    if r != 0 {
        return Err(errno());
    }
    let us = |t: &libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    Ok((us(&v.it_value), us(&v.it_interval)))
}

fn setitimer(which: i32, value_s: i64, interval_s: i64) -> Result<(), String> {
    let v = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: interval_s,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: value_s,
            tv_usec: 0,
        },
    };
    // SAFETY: a valid itimerval; no old value asked for.
    let r = unsafe {
        libc::syscall(
            libc::SYS_setitimer,
            which,
            &v,
            std::ptr::null_mut::<libc::itimerval>(),
        )
    };
    sys_ok(&format!("setitimer({which})"), r)
}

fn getrlimit(res: u32) -> (u64, u64) {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 on ourselves, query only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            res,
            std::ptr::null::<libc::rlimit64>(),
            &mut old,
        )
    };
    if r != 0 {
        let e = errno() as u64;
        return (u64::MAX - e, u64::MAX - e);
    }
    (old.rlim_cur, old.rlim_max)
}

fn setrlimit(res: u32, soft: u64, hard: u64) -> Result<(), String> {
    let new = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit64 on ourselves with a valid new limit.
    let r = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            res,
            &new,
            std::ptr::null_mut::<libc::rlimit64>(),
        )
    };
    sys_ok(&format!("setrlimit({res}, {soft}, {hard})"), r)
}

/// The raw result of a syscall the seccomp filters answer: -errno or the return value.
fn raw_uname() -> i64 {
    let mut buf = [0u8; 6 * 65];
    // SAFETY: struct new_utsname is 6 * 65 bytes.
    let r = unsafe { libc::syscall(libc::SYS_uname, buf.as_mut_ptr()) };
    if r < 0 { -(errno() as i64) } else { r }
}

fn raw_setgroups() -> i64 {
    // SAFETY: an empty list; a null pointer is never read.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()) };
    if r < 0 { -(errno() as i64) } else { r }
}

fn raw_getcpu() -> i64 {
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: getcpu writes two u32s; the cache argument may be null.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu,
            &mut node,
            std::ptr::null_mut::<u8>(),
        )
    };
    if r < 0 { -(errno() as i64) } else { r }
}

// ---------------------------------------------------------------------------------------------
// The signal recorder (async-signal-safe: atomics only).

const NREC: usize = 64;
static REC_N: AtomicUsize = AtomicUsize::new(0);
static REC_SIG: [AtomicI32; NREC] = [const { AtomicI32::new(0) }; NREC];
static REC_CODE: [AtomicI32; NREC] = [const { AtomicI32::new(0) }; NREC];
static REC_PID: [AtomicI32; NREC] = [const { AtomicI32::new(0) }; NREC];
static REC_UID: [AtomicU32; NREC] = [const { AtomicU32::new(0) }; NREC];
static REC_TID: [AtomicI32; NREC] = [const { AtomicI32::new(0) }; NREC];
static REC_VALUE: [AtomicU64; NREC] = [const { AtomicU64::new(0) }; NREC];

extern "C" fn record(sig: i32, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    let i = REC_N.fetch_add(1, Ordering::SeqCst);
    if i >= NREC {
        return;
    }
    let p = info as *const u8;
    // SAFETY: the kernel passes a complete 128-byte siginfo; the fields read are si_code
    // (offset 8), si_pid or si_tid (16), si_uid or si_overrun (20), si_value (24).
    let (code, pid, uid, value) = unsafe {
        (
            p.add(8).cast::<i32>().read_unaligned(),
            p.add(16).cast::<i32>().read_unaligned(),
            p.add(20).cast::<u32>().read_unaligned(),
            p.add(24).cast::<u64>().read_unaligned(),
        )
    };
    REC_CODE[i].store(code, Ordering::SeqCst);
    REC_PID[i].store(pid, Ordering::SeqCst);
    REC_UID[i].store(uid, Ordering::SeqCst);
    REC_TID[i].store(sys::gettid(), Ordering::SeqCst);
    REC_VALUE[i].store(value, Ordering::SeqCst);
    REC_SIG[i].store(sig, Ordering::SeqCst);
}

#[derive(Clone, Copy, Debug, Default)]
struct Rec {
    sig: i32,
    code: i32,
    pid: i32,
    uid: u32,
    tid: i32,
    value: u64,
}

fn rec(i: usize) -> Rec {
    Rec {
        sig: REC_SIG[i].load(Ordering::SeqCst),
        code: REC_CODE[i].load(Ordering::SeqCst),
        pid: REC_PID[i].load(Ordering::SeqCst),
        uid: REC_UID[i].load(Ordering::SeqCst),
        tid: REC_TID[i].load(Ordering::SeqCst),
        value: REC_VALUE[i].load(Ordering::SeqCst),
    }
}

fn rec_count() -> usize {
    REC_N.load(Ordering::SeqCst).min(NREC)
}

/// A SIGUSR2 that is not ours: PR_SET_PDEATHSIG fired (the parent exited).
fn is_pdeathsig(r: &Rec) -> bool {
    r.sig == libc::SIGUSR2 && r.code != SI_QUEUE
}

/// Unblocks `sig` in the calling thread and checks it is delivered (before the unblocking
/// call returns) exactly `values.len()` times, with these values in this order, as
/// SI_QUEUE from this process and uid 1000, in this thread. PR_SET_PDEATHSIG deliveries are
/// skipped.
fn unblock_and_expect(sig: i32, name: &str, values: &[u64], chk: &mut Check) {
    let from = rec_count();
    if let Err(e) = unblock(sigbit(sig)) {
        fail!(chk, "unblocking {name}: errno {e}");
        return;
    }
    let to = rec_count();
    let tid = sys::gettid();
    let pid = sys::getpid();
    let mut n = 0;
    for i in from..to {
        let r = rec(i);
        if is_pdeathsig(&r) {
            continue;
        }
        if r.sig != sig {
            fail!(
                chk,
                "unblocking {name} delivered signal {} (si_code {}, value {}) instead",
                r.sig,
                r.code,
                r.value
            );
            continue;
        }
        let want = values.get(n).copied();
        if want != Some(r.value)
            || r.code != SI_QUEUE
            || r.pid != pid
            || r.uid != RUID
            || r.tid != tid
        {
            fail!(
                chk,
                "{name} delivery {} of {}: value {}, si_code {}, si_pid {}, si_uid {}, in tid \
                 {}; expected value {want:?}, si_code SI_QUEUE (-1), si_pid {pid}, si_uid \
                 {RUID}, tid {tid}",
                n + 1,
                values.len(),
                r.value,
                r.code,
                r.pid,
                r.uid,
                r.tid
            );
        }
        n += 1;
    }
    if n != values.len() {
        fail!(
            chk,
            "{name}: delivered {n} times when unblocked in tid {tid}, expected {} (values \
             {values:?}): the pending signal was lost or duplicated",
            values.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots (taken right before ready, compared after go).

/// A fixed-size text buffer.
struct Text {
    buf: [u8; 4096],
    len: usize,
}

impl Text {
    const fn new() -> Text {
        Text {
            buf: [0; 4096],
            len: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn read(&mut self, path: &std::ffi::CStr) -> Result<(), i32> {
        self.len = sys::read_file_into(path, &mut self.buf)?;
        Ok(())
    }

    /// The lines of `src` that start with one of `prefixes`.
    fn filter(&mut self, src: &[u8], prefixes: &[&str]) {
        self.len = 0;
        for line in src.split_inclusive(|&b| b == b'\n') {
            if prefixes.iter().any(|p| line.starts_with(p.as_bytes())) {
                let n = line.len().min(self.buf.len() - self.len);
                self.buf[self.len..self.len + n].copy_from_slice(&line[..n]);
                self.len += n;
            }
        }
    }

    /// The value after `name:` (and whitespace) on its line.
    fn field<'a>(&'a self, name: &str) -> Option<&'a [u8]> {
        self.bytes()
            .split(|&b| b == b'\n')
            .find_map(|l| l.strip_prefix(name.as_bytes())?.strip_prefix(b":"))
            .map(|v| v.trim_ascii())
    }

    fn hex_field(&self, name: &str) -> Option<u64> {
        let v = std::str::from_utf8(self.field(name)?).ok()?;
        u64::from_str_radix(v, 16).ok()
    }
}

/// Names the first line that differs between two texts.
fn compare_lines(what: &str, before: &[u8], after: &[u8], chk: &mut Check) {
    if before == after {
        return;
    }
    let mut a = before.split(|&b| b == b'\n');
    let mut b = after.split(|&b| b == b'\n');
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                fail!(
                    chk,
                    "{what} differs: before `{}`, after `{}`",
                    Shown(x.unwrap_or(b"<none>")),
                    Shown(y.unwrap_or(b"<none>"))
                );
                return;
            }
        }
    }
}

/// Lines of /proc/thread-self/status about the thread itself.
const THREAD_LINES: [&str; 17] = [
    "Name:",
    "Umask:",
    "Uid:",
    "Gid:",
    "Groups:",
    "SigPnd:",
    "SigBlk:",
    "CapInh:",
    "CapPrm:",
    "CapEff:",
    "CapBnd:",
    "CapAmb:",
    "NoNewPrivs:",
    "Seccomp:",
    "Seccomp_filters:",
    "Cpus_allowed_list:",
    "THP_enabled:",
];
/// Process-wide signal lines, compared by the main thread only (before it unblocks).
const PROCESS_LINES: [&str; 3] = ["ShdPnd:", "SigIgn:", "SigCgt:"];

/// What one thread reads about itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Thread {
    resuid: [u32; 3],
    fsuid: i64,
    resgid: [u32; 3],
    fsgid: i64,
    groups: [u32; 8],
    ngroups: i32,
    /// effective, permitted, inheritable
    caps: [u64; 3],
    securebits: i64,
    no_new_privs: i64,
    seccomp_mode: i64,
    uname: i64,
    getcpu: i64,
    /// setgroups(0, NULL): the thread has no CAP_SETGID, so it changes nothing even
    /// without the filter (it would fail with EPERM).
    setgroups: i64,
    nice: i32,
    policy: i32,
    priority: i32,
    affinity: [u64; 4],
    ioprio: i64,
    personality: i32,
    comm: [u8; 16],
    timer_slack: i64,
    pdeathsig: i64,
    sigmask: u64,
    altstack: (usize, usize, i32),
}

impl Thread {
    /// A placeholder: every field at a value no read gives.
    fn unread() -> Thread {
        Thread {
            resuid: [u32::MAX; 3],
            fsuid: -1,
            resgid: [u32::MAX; 3],
            fsgid: -1,
            groups: [0; 8],
            ngroups: -1,
            caps: [u64::MAX; 3],
            securebits: -1,
            no_new_privs: -1,
            seccomp_mode: -1,
            uname: 1,
            getcpu: 1,
            setgroups: 1,
            nice: i32::MIN,
            policy: -1,
            priority: -1,
            affinity: [0; 4],
            ioprio: -1,
            personality: -1,
            comm: [0; 16],
            timer_slack: -1,
            pdeathsig: -1,
            sigmask: u64::MAX,
            altstack: (0, 0, -1),
        }
    }

    /// Reads the calling thread's state (only once the seccomp filters are installed: the
    /// setgroups probe would otherwise succeed as root).
    fn read() -> Thread {
        let mut t = Thread {
            resuid: [u32::MAX; 3],
            fsuid: -1,
            resgid: [u32::MAX; 3],
            fsgid: -1,
            groups: [0; 8],
            ngroups: -1,
            caps: [u64::MAX; 3],
            securebits: prctl(PR_GET_SECUREBITS, 0, 0, 0, 0),
            no_new_privs: prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
            seccomp_mode: prctl(PR_GET_SECCOMP, 0, 0, 0, 0),
            uname: raw_uname(),
            getcpu: raw_getcpu(),
            setgroups: raw_setgroups(),
            nice: i32::MIN,
            policy: -1,
            priority: -1,
            affinity: [0; 4],
            ioprio: -1,
            // SAFETY: 0xffffffff only queries the persona.
            personality: unsafe { libc::personality(0xffff_ffff) },
            comm: [0; 16],
            timer_slack: prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0),
            pdeathsig: prctl_get_int(PR_GET_PDEATHSIG),
            sigmask: sys::sigmask().unwrap_or(u64::MAX),
            altstack: sys::altstack().unwrap_or((0, 0, -1)),
        };
        let (a, b, c) = (
            &mut t.resuid[0] as *mut u32,
            &mut t.resuid[1] as *mut u32,
            &mut t.resuid[2] as *mut u32,
        );
        // SAFETY: three valid out pointers.
        unsafe { libc::syscall(libc::SYS_getresuid, a, b, c) };
        let (a, b, c) = (
            &mut t.resgid[0] as *mut u32,
            &mut t.resgid[1] as *mut u32,
            &mut t.resgid[2] as *mut u32,
        );
        // SAFETY: three valid out pointers.
        unsafe { libc::syscall(libc::SYS_getresgid, a, b, c) };
        // SAFETY: an invalid id (-1) only returns the current fsuid/fsgid.
        unsafe {
            t.fsuid = libc::syscall(libc::SYS_setfsuid, u32::MAX);
            t.fsgid = libc::syscall(libc::SYS_setfsgid, u32::MAX);
        }
        // SAFETY: room for 8 gids.
        t.ngroups = unsafe {
            libc::syscall(
                libc::SYS_getgroups,
                t.groups.len() as i32,
                t.groups.as_mut_ptr(),
            )
        } as i32;
        if let Ok(c) = capget() {
            t.caps = c;
        }
        // SAFETY: getpriority only queries; errno is cleared first since -1 is a valid nice.
        unsafe {
            *libc::__errno_location() = 0;
            let n = libc::getpriority(libc::PRIO_PROCESS, 0);
            t.nice = if n == -1 && errno() != 0 { i32::MIN } else { n };
            t.policy = libc::sched_getscheduler(0);
            let mut p: libc::sched_param = std::mem::zeroed();
            if libc::sched_getparam(0, &mut p) == 0 {
                t.priority = p.sched_priority;
            }
            libc::syscall(
                libc::SYS_sched_getaffinity,
                0,
                std::mem::size_of_val(&t.affinity),
                t.affinity.as_mut_ptr(),
            );
            t.ioprio = libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
        }
        prctl(PR_GET_NAME, t.comm.as_mut_ptr() as u64, 0, 0, 0);
        t
    }

    fn comm(&self) -> &[u8] {
        let n = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        &self.comm[..n]
    }
}

/// Compares two snapshots field by field, naming the first fields that differ.
fn compare_thread(who: &str, before: &Thread, after: &Thread, chk: &mut Check) {
    macro_rules! same {
        ($($f:ident),*) => {$(
            if before.$f != after.$f {
                fail!(
                    chk,
                    "{who}: {} is {:?}, was {:?} before the dump",
                    stringify!($f),
                    after.$f,
                    before.$f
                );
            }
        )*};
    }
    same!(
        resuid,
        fsuid,
        resgid,
        fsgid,
        groups,
        ngroups,
        caps,
        securebits,
        no_new_privs,
        seccomp_mode,
        uname,
        getcpu,
        setgroups,
        nice,
        policy,
        priority,
        affinity,
        ioprio,
        personality,
        comm,
        timer_slack,
        pdeathsig,
        sigmask,
        altstack
    );
}

/// Checks a thread's state against the values the scenario set.
fn expect_thread(t: &Thread, status: &Text, w: &Want, bnd: u64, cpu: usize, chk: &mut Check) {
    let who = w.who;
    let groups = &t.groups[..t.ngroups.clamp(0, 8) as usize];
    if t.resuid != [RUID, EUID, SUID] || t.fsuid != FSUID as i64 {
        fail!(
            chk,
            "{who}: uids r/e/s {:?} fs {}, expected [{RUID}, {EUID}, {SUID}] fs {FSUID}",
            t.resuid,
            t.fsuid
        );
    }
    if t.resgid != [RGID, EGID, SGID] || t.fsgid != FSGID as i64 {
        fail!(
            chk,
            "{who}: gids r/e/s {:?} fs {}, expected [{RGID}, {EGID}, {SGID}] fs {FSGID}",
            t.resgid,
            t.fsgid
        );
    }
    if groups != GROUPS {
        fail!(chk, "{who}: groups {groups:?}, expected {GROUPS:?}");
    }
    if t.caps != [CAP_EFF, CAP_PRM, CAP_INH] {
        fail!(
            chk,
            "{who}: capabilities eff/prm/inh {:#x}/{:#x}/{:#x}, expected {CAP_EFF:#x}/\
             {CAP_PRM:#x}/{CAP_INH:#x}",
            t.caps[0],
            t.caps[1],
            t.caps[2]
        );
    }
    let amb = status.hex_field("CapAmb");
    if amb != Some(CAP_AMB) {
        fail!(chk, "{who}: CapAmb {amb:x?}, expected {CAP_AMB:#x}");
    }
    let got_bnd = status.hex_field("CapBnd");
    if got_bnd != Some(bnd) {
        fail!(chk, "{who}: CapBnd {got_bnd:x?}, expected {bnd:#x}");
    }
    if t.securebits != SECUREBITS {
        fail!(
            chk,
            "{who}: securebits {:#x}, expected {SECUREBITS:#x}",
            t.securebits
        );
    }
    if t.no_new_privs != 1 {
        fail!(chk, "{who}: no_new_privs {}, expected 1", t.no_new_privs);
    }
    if t.seccomp_mode != 2 {
        fail!(
            chk,
            "{who}: seccomp mode {}, expected 2 (filter)",
            t.seccomp_mode
        );
    }
    let filters = status.field("Seccomp_filters");
    if filters != Some(b"2") {
        fail!(
            chk,
            "{who}: Seccomp_filters `{}`, expected 2",
            Shown(filters.unwrap_or(b"<missing>"))
        );
    }
    if t.uname != -(libc::EACCES as i64) {
        fail!(
            chk,
            "{who}: uname returned {}, expected -EACCES (from the second seccomp filter, \
             which must be the newer one; -EPERM means the filters are in the wrong order)",
            t.uname
        );
    }
    if t.getcpu != -(libc::EXDEV as i64) {
        fail!(
            chk,
            "{who}: getcpu returned {}, expected -EXDEV (from the first seccomp filter)",
            t.getcpu
        );
    }
    if t.setgroups != -(libc::ENOTBLK as i64) {
        fail!(
            chk,
            "{who}: setgroups returned {}, expected -ENOTBLK (from the first seccomp filter)",
            t.setgroups
        );
    }
    if t.nice != w.nice {
        fail!(chk, "{who}: nice {}, expected {}", t.nice, w.nice);
    }
    if t.policy != libc::SCHED_BATCH || t.priority != 0 {
        fail!(
            chk,
            "{who}: scheduler policy {} priority {}, expected SCHED_BATCH ({}) priority 0",
            t.policy,
            t.priority,
            libc::SCHED_BATCH
        );
    }
    let mut aff = [0u64; 4];
    aff[cpu / 64] = 1 << (cpu % 64);
    if t.affinity != aff {
        fail!(
            chk,
            "{who}: CPU affinity {:x?}, expected only CPU {cpu}",
            t.affinity
        );
    }
    if t.ioprio != IOPRIO {
        fail!(
            chk,
            "{who}: ioprio {:#x}, expected {IOPRIO:#x} (BE level 6)",
            t.ioprio
        );
    }
    if t.personality != ADDR_NO_RANDOMIZE {
        fail!(
            chk,
            "{who}: personality {:#x}, expected {ADDR_NO_RANDOMIZE:#x}",
            t.personality
        );
    }
    if t.comm() != w.comm {
        fail!(
            chk,
            "{who}: comm `{}`, expected `{}`",
            Shown(t.comm()),
            Shown(w.comm)
        );
    }
    if t.timer_slack != w.slack {
        fail!(
            chk,
            "{who}: timer slack {} ns, expected {}",
            t.timer_slack,
            w.slack
        );
    }
    if t.pdeathsig != w.pdeathsig as i64 {
        fail!(
            chk,
            "{who}: pdeathsig {}, expected {}",
            t.pdeathsig,
            w.pdeathsig
        );
    }
    if t.sigmask != w.mask {
        fail!(
            chk,
            "{who}: signal mask {:#x}, expected {:#x}",
            t.sigmask,
            w.mask
        );
    }
}

/// The process-wide state the main thread checks.
struct Process {
    dumpable: i64,
    subreaper: i64,
    thp_disable: i64,
    restore_ids: i64,
    rlimits: [(u64, u64); 16],
    actions: [KSigaction; 64],
    cgroup: Text,
    timers: Text,
}

impl Process {
    fn new() -> Process {
        Process {
            dumpable: -1,
            subreaper: -1,
            thp_disable: -1,
            restore_ids: -1,
            rlimits: [(0, 0); 16],
            actions: [KSigaction::default(); 64],
            cgroup: Text::new(),
            timers: Text::new(),
        }
    }

    fn read(&mut self) {
        self.dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
        self.subreaper = prctl_get_int(PR_GET_CHILD_SUBREAPER);
        self.thp_disable = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
        self.restore_ids = prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_GET,
            0,
            0,
            0,
        );
        for (i, l) in self.rlimits.iter_mut().enumerate() {
            *l = getrlimit(i as u32);
        }
        for (i, a) in self.actions.iter_mut().enumerate() {
            *a = ksigaction(i as i32 + 1).unwrap_or(KSigaction {
                handler: usize::MAX,
                ..KSigaction::default()
            });
        }
        if let Err(e) = self.cgroup.read(c"/proc/self/cgroup") {
            self.cgroup.len = 0;
            let _ = write!(TextW(&mut self.cgroup), "<errno {e}>");
        }
        if let Err(e) = self.timers.read(c"/proc/self/timers") {
            self.timers.len = 0;
            let _ = write!(TextW(&mut self.timers), "<errno {e}>");
        }
    }

    fn compare(&self, after: &Process, chk: &mut Check) {
        macro_rules! same {
            ($($f:ident),*) => {$(
                if self.$f != after.$f {
                    fail!(
                        chk,
                        "{} is {:?}, was {:?} before the dump",
                        stringify!($f),
                        after.$f,
                        self.$f
                    );
                }
            )*};
        }
        same!(dumpable, subreaper, thp_disable, restore_ids);
        for (i, (b, a)) in self.rlimits.iter().zip(after.rlimits.iter()).enumerate() {
            if b != a {
                fail!(
                    chk,
                    "rlimit {i} ({}) is {a:?}, was {b:?} before the dump",
                    rlimit_name(i)
                );
            }
        }
        for (i, (b, a)) in self.actions.iter().zip(after.actions.iter()).enumerate() {
            if b != a {
                fail!(
                    chk,
                    "sigaction of signal {} is {a:x?}, was {b:x?} before the dump",
                    i + 1
                );
            }
        }
        compare_lines(
            "/proc/self/cgroup",
            self.cgroup.bytes(),
            after.cgroup.bytes(),
            chk,
        );
        compare_timer_entries(self.timers.bytes(), after.timers.bytes(), chk);
    }
}

/// fmt::Write into a Text.
struct TextW<'a>(&'a mut Text);

impl std::fmt::Write for TextW<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let t = &mut *self.0;
        let n = s.len().min(t.buf.len() - t.len);
        t.buf[t.len..t.len + n].copy_from_slice(&s.as_bytes()[..n]);
        t.len += n;
        Ok(())
    }
}

fn rlimit_name(i: usize) -> &'static str {
    const NAMES: [&str; 16] = [
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    ];
    NAMES.get(i).copied().unwrap_or("?")
}

/// The entries of /proc/self/timers (each starts with an `ID:` line), sorted.
fn timer_entries(text: &[u8]) -> ([&[u8]; 16], usize) {
    let mut out: [&[u8]; 16] = [&[]; 16];
    let mut n = 0;
    let mut start = None;
    let mut pos = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"ID:") {
            if let Some(s) = start
                && n < out.len()
            {
                out[n] = &text[s..pos];
                n += 1;
            }
            start = Some(pos);
        }
        pos += line.len();
    }
    if let Some(s) = start
        && n < out.len()
    {
        out[n] = &text[s..pos];
        n += 1;
    }
    out[..n].sort_unstable();
    (out, n)
}

fn compare_timer_entries(before: &[u8], after: &[u8], chk: &mut Check) {
    let (a, na) = timer_entries(before);
    let (b, nb) = timer_entries(after);
    if a[..na] == b[..nb] {
        return;
    }
    fail!(
        chk,
        "/proc/self/timers has other entries: before `{}`, after `{}`",
        Shown(before),
        Shown(after)
    );
}

// ---------------------------------------------------------------------------------------------
// The helper thread.

/// Main -> helper: 1 = take your snapshot, 2 = go (verify).
static PHASE: AtomicU32 = AtomicU32::new(0);
/// Helper -> main: 1 = set up, 2 = snapshot taken, 3 = about to wait for go, 4 = done.
static HELPER: AtomicU32 = AtomicU32::new(0);
static HELPER_TID: AtomicI32 = AtomicI32::new(0);
static HELPER_ERR: Mutex<Option<String>> = Mutex::new(None);

fn helper_failed(e: String) {
    *HELPER_ERR.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
}

fn wait_phase(p: u32) {
    loop {
        let now = PHASE.load(Ordering::SeqCst);
        if now >= p {
            return;
        }
        sys::futex_wait(&PHASE, now, None);
    }
}

fn set_phase(p: u32) {
    PHASE.store(p, Ordering::SeqCst);
    sys::futex_wake_all(&PHASE);
}

fn helper_setup(alt: &Mapping) -> Result<(), String> {
    sys::set_sigmask(helper_mask()).map_err(|e| format!("rt_sigprocmask: errno {e}"))?;
    // SAFETY: setpriority on the calling thread (raising its nice value needs no privilege).
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE_HELPER) };
    sys_ok("setpriority(helper)", r as i64)?;
    let mut name = [0u8; 16];
    name[..COMM_HELPER.len()].copy_from_slice(COMM_HELPER);
    check_prctl(
        "PR_SET_NAME(helper)",
        prctl(PR_SET_NAME, name.as_ptr() as u64, 0, 0, 0),
    )?;
    check_prctl(
        "PR_SET_TIMERSLACK(helper)",
        prctl(PR_SET_TIMERSLACK, SLACK_HELPER as u64, 0, 0, 0),
    )?;
    sys::set_altstack(alt.addr(), alt.bytes().len(), 0)
        .map_err(|e| format!("sigaltstack(helper): errno {e}"))?;
    Ok(())
}

/// The helper: sets up its own state, snapshots it when told, waits in FUTEX_WAIT for go,
/// then checks its state and its pending signals.
fn helper_main(bnd: u64, cpu: usize) -> Check {
    let mut chk = Check::new();
    HELPER_TID.store(sys::gettid(), Ordering::SeqCst);
    let alt = match Mapping::anon(64 << 10, libc::PROT_READ | libc::PROT_WRITE, 0) {
        Ok(m) => m,
        Err(e) => {
            helper_failed(e);
            HELPER.store(1, Ordering::SeqCst);
            return chk;
        }
    };
    if let Err(e) = helper_setup(&alt) {
        helper_failed(e);
    }
    let status_path = c"/proc/thread-self/status";
    let mut raw = Text::new();
    let mut status_before = Text::new();
    let mut status_after = Text::new();
    HELPER.store(1, Ordering::SeqCst);

    wait_phase(1);
    let before = Thread::read();
    match raw.read(status_path) {
        Ok(()) => status_before.filter(raw.bytes(), &THREAD_LINES),
        Err(e) => helper_failed(format!("reading /proc/thread-self/status: errno {e}")),
    }
    let mut setup_chk = Check::new();
    expect_thread(
        &before,
        &status_before,
        &want_helper(),
        bnd,
        cpu,
        &mut setup_chk,
    );
    if setup_chk.failures > 0 {
        helper_failed(format!(
            "state right after setup: {}",
            Shown(setup_chk.first.as_bytes())
        ));
    }
    HELPER.store(2, Ordering::SeqCst);

    HELPER.store(3, Ordering::SeqCst);
    wait_phase(2);

    let after = Thread::read();
    if after != before {
        compare_thread("helper thread", &before, &after, &mut chk);
    }
    match raw.read(status_path) {
        Ok(()) => {
            status_after.filter(raw.bytes(), &THREAD_LINES);
            compare_lines(
                "helper thread: /proc/thread-self/status",
                status_before.bytes(),
                status_after.bytes(),
                &mut chk,
            );
        }
        Err(e) => fail!(
            chk,
            "helper thread: reading /proc/thread-self/status: errno {e}"
        ),
    }
    expect_thread(&after, &status_after, &want_helper(), bnd, cpu, &mut chk);
    match sys::altstack() {
        Ok(a) if a == (alt.addr(), alt.bytes().len(), 0) => {}
        a => fail!(
            chk,
            "helper thread: sigaltstack {a:x?}, expected ({:#x}, {}, 0)",
            alt.addr(),
            alt.bytes().len()
        ),
    }
    unblock_and_expect(
        libc::SIGUSR2,
        "SIGUSR2 (helper's own)",
        &[VAL_USR2],
        &mut chk,
    );
    unblock_and_expect(rt(4), "SIGRTMIN+4 (helper's own)", &VAL_RT4, &mut chk);
    HELPER.store(4, Ordering::SeqCst);
    chk
}

// ---------------------------------------------------------------------------------------------
// Setup of the main thread (and the process).

fn helper_err() -> Option<String> {
    HELPER_ERR.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn wait_helper(state: u32, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while HELPER.load(Ordering::SeqCst) < state {
        if Instant::now() > deadline {
            return Err(format!("the helper thread did not {what} within 30 s"));
        }
        sys::sleep_ms(1);
    }
    match helper_err() {
        Some(e) => Err(format!("helper thread: {e}")),
        None => Ok(()),
    }
}

fn setup_signals() -> Result<(), String> {
    let rs = libc::SA_RESTART;
    install(libc::SIGUSR1, rs, &[libc::SIGWINCH])?;
    install(libc::SIGUSR2, rs | libc::SA_NODEFER, &[])?;
    install(libc::SIGALRM, rs, &[])?;
    install(libc::SIGVTALRM, rs, &[])?;
    install(libc::SIGPROF, rs, &[])?;
    install(rt(3), 0, &[rt(9)])?;
    install(rt(4), libc::SA_ONSTACK, &[])?;
    install(rt(5), rs, &[])?;
    install(rt(6), rs, &[])?;
    install(rt(7), libc::SA_RESETHAND, &[])?;
    install(rt(8), rs, &[])?;
    ignore(libc::SIGPIPE)?;
    ignore(libc::SIGXFSZ)?;
    sys::set_sigmask(main_mask()).map_err(|e| format!("rt_sigprocmask: errno {e}"))
}

fn setup_limits() -> Result<(), String> {
    setrlimit(libc::RLIMIT_NOFILE, NOFILE.0, NOFILE.1)?;
    setrlimit(libc::RLIMIT_CORE, 0, 0)?;
    let stack = getrlimit(libc::RLIMIT_STACK);
    setrlimit(libc::RLIMIT_STACK, STACK_SOFT.min(stack.1), stack.1)?;
    let cpu = getrlimit(libc::RLIMIT_CPU);
    setrlimit(libc::RLIMIT_CPU, CPU_SOFT.min(cpu.1), cpu.1)?;
    let memlock = getrlimit(libc::RLIMIT_MEMLOCK);
    setrlimit(
        libc::RLIMIT_MEMLOCK,
        MEMLOCK.0.min(memlock.1),
        MEMLOCK.1.min(memlock.1),
    )
}

/// Returns the CPU the process is bound to.
fn setup_sched() -> Result<usize, String> {
    // SAFETY: setpriority/sched_setscheduler/sched_*affinity/personality/umask act on the
    // calling thread (or process) with valid arguments.
    unsafe {
        let r = libc::setpriority(libc::PRIO_PROCESS, 0, NICE_MAIN);
        sys_ok("setpriority", r as i64)?;
        let p: libc::sched_param = std::mem::zeroed();
        let r = libc::sched_setscheduler(0, libc::SCHED_BATCH, &p);
        sys_ok("sched_setscheduler(SCHED_BATCH)", r as i64)?;
        let mut set = [0u64; 4];
        let r = libc::syscall(
            libc::SYS_sched_getaffinity,
            0,
            std::mem::size_of_val(&set),
            set.as_mut_ptr(),
        );
        sys_ok("sched_getaffinity", r)?;
        let cpu = (0..256)
            .find(|&c| set[c / 64] & (1 << (c % 64)) != 0)
            .ok_or("no CPU in the affinity mask")?;
        let mut one = [0u64; 4];
        one[cpu / 64] = 1 << (cpu % 64);
        let r = libc::syscall(
            libc::SYS_sched_setaffinity,
            0,
            std::mem::size_of_val(&one),
            one.as_ptr(),
        );
        sys_ok("sched_setaffinity", r)?;
        let r = libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO);
        sys_ok("ioprio_set", r)?;
        let r = libc::personality(ADDR_NO_RANDOMIZE as libc::c_ulong);
        sys_ok("personality", r as i64)?;
        libc::umask(UMASK);
        Ok(cpu)
    }
}

fn setup_prctl() -> Result<(), String> {
    let mut name = [0u8; 16];
    name[..COMM_MAIN.len()].copy_from_slice(COMM_MAIN);
    check_prctl(
        "PR_SET_NAME",
        prctl(PR_SET_NAME, name.as_ptr() as u64, 0, 0, 0),
    )?;
    check_prctl(
        "PR_SET_CHILD_SUBREAPER",
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0),
    )?;
    check_prctl("PR_SET_THP_DISABLE", prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0))?;
    check_prctl(
        "PR_SET_TIMERSLACK",
        prctl(PR_SET_TIMERSLACK, SLACK_MAIN as u64, 0, 0, 0),
    )
}

/// Drops from root to the scenario's credentials (the process is single-threaded here, so
/// the raw per-thread calls cover it all).
fn setup_creds() -> Result<(), String> {
    for cap in [CAP_SYS_BOOT, CAP_MKNOD] {
        check_prctl(
            &format!("PR_CAPBSET_DROP({cap})"),
            prctl(PR_CAPBSET_DROP, cap as u64, 0, 0, 0),
        )?;
    }
    check_prctl(
        "PR_SET_SECUREBITS",
        prctl(PR_SET_SECUREBITS, SECUREBITS as u64, 0, 0, 0),
    )?;
    // SAFETY: credential syscalls with valid arguments.
    unsafe {
        let r = libc::syscall(libc::SYS_setgroups, GROUPS.len(), GROUPS.as_ptr());
        sys_ok("setgroups", r)?;
        let r = libc::syscall(libc::SYS_setresgid, RGID, EGID, SGID);
        sys_ok("setresgid", r)?;
        libc::syscall(libc::SYS_setfsgid, FSGID);
        let r = libc::syscall(libc::SYS_setresuid, RUID, EUID, SUID);
        sys_ok("setresuid", r)?;
    }
    // SECBIT_KEEP_CAPS kept the permitted set; raise CAP_SETUID to set the fsuid.
    let [_, prm, _] = capget().map_err(|e| format!("capget: errno {e}"))?;
    capset(bit(CAP_SETUID), prm, 0)?;
    // SAFETY: setfsuid with CAP_SETUID.
    unsafe { libc::syscall(libc::SYS_setfsuid, FSUID) };
    capset(CAP_EFF, CAP_PRM, CAP_INH)?;
    check_prctl(
        "PR_CAP_AMBIENT_RAISE",
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_KILL as u64, 0, 0),
    )?;
    check_prctl(
        "PR_SET_NO_NEW_PRIVS",
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
    )
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

/// BPF_LD | BPF_W | BPF_ABS.
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K.
const BPF_JEQ_K: u16 = 0x05 | 0x10;
/// BPF_RET | BPF_K.
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

const fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jeq(k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

fn install_filter(prog: &[SockFilter]) -> Result<(), String> {
    let fprog = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    check_prctl(
        "PR_SET_SECCOMP",
        prctl(
            PR_SET_SECCOMP,
            SECCOMP_MODE_FILTER,
            &fprog as *const SockFprog as u64,
            0,
            0,
        ),
    )
}

fn setup_seccomp() -> Result<(), String> {
    let uname = libc::SYS_uname as u32;
    let getcpu = libc::SYS_getcpu as u32;
    let setgroups = libc::SYS_setgroups as u32;
    // Offsets in struct seccomp_data: nr 0, arch 4.
    let first = [
        stmt(BPF_LD_W_ABS, 4),
        jeq(AUDIT_ARCH_X86_64, 0, 7),
        stmt(BPF_LD_W_ABS, 0),
        jeq(uname, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        jeq(getcpu, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EXDEV as u32),
        jeq(setgroups, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOTBLK as u32),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ];
    let second = [
        stmt(BPF_LD_W_ABS, 4),
        jeq(AUDIT_ARCH_X86_64, 0, 3),
        stmt(BPF_LD_W_ABS, 0),
        jeq(uname, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EACCES as u32),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ];
    install_filter(&first)?;
    install_filter(&second)
}

/// The POSIX timers: (A, B, C) ids.
fn setup_timers(helper_tid: i32) -> Result<[i32; 3], String> {
    let create = |clock, notify, signo, value, tid| {
        timer_create(clock, notify, signo, value, tid)
            .map_err(|e| format!("timer_create(clock {clock}, signal {signo}): errno {e}"))
    };
    let none = |clock| create(clock, SIGEV_NONE, 0, 0, 0);
    let d0 = none(libc::CLOCK_MONOTONIC)?;
    let a = create(libc::CLOCK_MONOTONIC, SIGEV_SIGNAL, rt(5), 0x5555, 0)?;
    let d1 = none(libc::CLOCK_REALTIME)?;
    let b = create(libc::CLOCK_REALTIME, SIGEV_SIGNAL, rt(6), 0x6666, 0)?;
    let d2 = none(libc::CLOCK_MONOTONIC)?;
    let c = create(
        libc::CLOCK_BOOTTIME,
        SIGEV_THREAD_ID,
        rt(8),
        0x8888,
        helper_tid,
    )?;
    for d in [d0, d1, d2] {
        timer_delete(d).map_err(|e| format!("timer_delete({d}): errno {e}"))?;
    }
    timer_settime(a, TIMER_A.0, TIMER_A.1).map_err(|e| format!("timer_settime(A): errno {e}"))?;
    timer_settime(c, TIMER_C.0, TIMER_C.1).map_err(|e| format!("timer_settime(C): errno {e}"))?;
    for (which, value, interval) in ITIMERS {
        setitimer(which, value, interval)?;
    }
    Ok([a, b, c])
}

/// The /proc/self/timers entries the three timers must have, sorted.
fn expected_timer_text(ids: [i32; 3], pid: i32, helper_tid: i32) -> String {
    format!(
        "ID: {}\nsignal: {}/{:016x}\nnotify: signal/pid.{pid}\nClockID: {}\n\
         ID: {}\nsignal: {}/{:016x}\nnotify: signal/pid.{pid}\nClockID: {}\n\
         ID: {}\nsignal: {}/{:016x}\nnotify: signal/tid.{helper_tid}\nClockID: {}\n",
        ids[0],
        rt(5),
        0x5555,
        libc::CLOCK_MONOTONIC,
        ids[1],
        rt(6),
        0x6666,
        libc::CLOCK_REALTIME,
        ids[2],
        rt(8),
        0x8888,
        libc::CLOCK_BOOTTIME
    )
}

fn setup_signals_pending(helper_tid: i32) -> Result<(), String> {
    queue_process(libc::SIGUSR1, VAL_USR1)?;
    for v in VAL_RT3 {
        queue_process(rt(3), v)?;
    }
    queue_thread(sys::gettid(), rt(7), VAL_RT7)?;
    queue_thread(helper_tid, libc::SIGUSR2, VAL_USR2)?;
    for v in VAL_RT4 {
        queue_thread(helper_tid, rt(4), v)?;
    }
    Ok(())
}

/// Moves the process into the cgroup named by RCR_WORKLOAD_CGROUP, if set.
fn setup_cgroup() -> Result<(), String> {
    let Some(dir) = std::env::var_os("RCR_WORKLOAD_CGROUP") else {
        return Ok(());
    };
    let procs = std::path::Path::new(&dir).join("cgroup.procs");
    std::fs::write(&procs, format!("{}\n", sys::getpid()))
        .map_err(|e| format!("writing {}: {e}", procs.display()))
}

/// Checks the itimers and POSIX timers.
fn check_timers(ids: [i32; 3], chk: &mut Check) {
    for (which, value, interval) in ITIMERS {
        // setitimer adds one tick to a CPU itimer's value (and a restore sets it again).
        let (slack, over_us) = if which == libc::ITIMER_REAL {
            (TIMER_SLACK_SECS, 0)
        } else {
            (ITIMER_CPU_SLACK_SECS, ITIMER_CPU_TICKS_US)
        };
        match getitimer(which) {
            Ok((rem, int)) => {
                if rem > value * 1_000_000 + over_us || rem <= (value - slack) * 1_000_000 {
                    fail!(
                        chk,
                        "itimer {which}: {rem} us remaining, expected at most {value} s (+ \
                         {over_us} us) and more than {} s",
                        value - slack
                    );
                }
                if int != interval * 1_000_000 {
                    fail!(
                        chk,
                        "itimer {which}: interval {int} us, expected {interval} s"
                    );
                }
            }
            Err(e) => fail!(chk, "getitimer({which}): errno {e}"),
        }
    }
    let names = ["A", "B", "C"];
    let want = [TIMER_A, (0, 0), TIMER_C];
    for i in 0..3 {
        let (value, interval) = want[i];
        match timer_gettime(ids[i]) {
            Ok((rem, int)) => {
                let ok = if value == 0 {
                    rem == 0
                } else {
                    rem <= value * 1_000_000_000 && rem > (value - TIMER_SLACK_SECS) * 1_000_000_000
                };
                if !ok || int != interval * 1_000_000_000 {
                    fail!(
                        chk,
                        "POSIX timer {} (id {}): {rem} ns remaining, interval {int} ns; \
                         expected {value} s (minus at most {TIMER_SLACK_SECS} s), interval \
                         {interval} s",
                        names[i],
                        ids[i]
                    );
                }
            }
            Err(e) => fail!(
                chk,
                "timer_gettime of POSIX timer {} (id {}): errno {e}",
                names[i],
                ids[i]
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Everything the main thread records before ready.
struct Main {
    ctx_pid: i32,
    cpu: usize,
    bnd: u64,
    ids: [i32; 3],
    thread: Thread,
    process: Process,
    process_after: Process,
    raw: Text,
    status_before: Text,
    status_after: Text,
    fds_before: FdSet,
    fds_after: FdSet,
    helper: Option<JoinHandle<Check>>,
    timeout: Duration,
}

fn status_lines() -> [&'static str; 20] {
    let mut all = [""; 20];
    all[..17].copy_from_slice(&THREAD_LINES);
    all[17..].copy_from_slice(&PROCESS_LINES);
    all
}

fn setup(ctx: &Ctx, m: &mut Main) -> Result<(), String> {
    // SAFETY: geteuid only queries.
    if unsafe { libc::geteuid() } != 0 {
        return Err("taskstate must start as root".into());
    }
    let mut raw = Text::new();
    raw.read(c"/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: errno {e}"))?;
    let bnd = raw
        .hex_field("CapBnd")
        .ok_or("no CapBnd in /proc/self/status")?;
    m.bnd = bnd & !BND_DROPPED;

    // The workload writes DIR/ready as fsuid 1003 later.
    let dir = ctx.path(".");
    // SAFETY: chown of our own directory.
    if unsafe { libc::chown(dir.as_ptr(), FSUID, FSGID) } != 0 {
        return Err(format!(
            "chown of the workload directory: errno {}",
            errno()
        ));
    }
    setup_cgroup()?;
    setup_limits()?;
    setup_signals()?;
    m.cpu = setup_sched()?;
    setup_prctl()?;
    setup_creds()?;
    setup_seccomp()?;

    let (bnd, cpu) = (m.bnd, m.cpu);
    let handle = std::thread::Builder::new()
        .spawn(move || helper_main(bnd, cpu))
        .map_err(|e| format!("spawning the helper thread: {e}"))?;
    m.helper = Some(handle);
    wait_helper(1, "set up")?;
    let htid = HELPER_TID.load(Ordering::SeqCst);

    m.ids = setup_timers(htid)?;
    setup_signals_pending(htid)?;
    // After every credential change (which resets both).
    check_prctl(
        "PR_SET_PDEATHSIG",
        prctl(PR_SET_PDEATHSIG, libc::SIGUSR2 as u64, 0, 0, 0),
    )?;
    check_prctl("PR_SET_DUMPABLE", prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))?;

    set_phase(1);
    wait_helper(2, "take its snapshot")?;

    // The main thread's own snapshot, checked against the values set.
    m.thread = Thread::read();
    m.raw
        .read(c"/proc/thread-self/status")
        .map_err(|e| format!("reading /proc/thread-self/status: errno {e}"))?;
    m.status_before.filter(m.raw.bytes(), &status_lines());
    m.process.read();
    let mut chk = Check::new();
    expect_thread(
        &m.thread,
        &m.status_before,
        &want_main(),
        m.bnd,
        m.cpu,
        &mut chk,
    );
    expect_process(&m.process, &m.status_before, &mut chk);
    if chk.failures > 0 {
        return Err(format!(
            "state right after setup: {}",
            Shown(chk.first.as_bytes())
        ));
    }
    let want = expected_timer_text(m.ids, m.ctx_pid, htid);
    let (w, nw) = timer_entries(want.as_bytes());
    let (g, ng) = timer_entries(m.process.timers.bytes());
    if w[..nw] != g[..ng] {
        return Err(format!(
            "/proc/self/timers is `{}`, expected the entries `{want}`",
            String::from_utf8_lossy(m.process.timers.bytes())
        ));
    }
    if rec_count() != 0 {
        return Err(format!(
            "{} signals delivered during setup (first: {:?})",
            rec_count(),
            rec(0)
        ));
    }
    m.timeout = sys::wait_bound();
    Ok(())
}

/// Process-wide values the scenario set.
fn expect_process(p: &Process, status: &Text, chk: &mut Check) {
    if p.dumpable != 0 {
        fail!(chk, "dumpable {}, expected 0", p.dumpable);
    }
    if p.subreaper != 1 {
        fail!(chk, "child subreaper {}, expected 1", p.subreaper);
    }
    if p.thp_disable != 1 {
        fail!(chk, "THP disable {}, expected 1", p.thp_disable);
    }
    if p.restore_ids > 0 {
        fail!(
            chk,
            "PR_TIMER_CREATE_RESTORE_IDS is {} (on), expected off",
            p.restore_ids
        );
    }
    let umask = status.field("Umask");
    if umask != Some(b"0027") {
        fail!(
            chk,
            "umask `{}`, expected 0027",
            Shown(umask.unwrap_or(b"<missing>"))
        );
    }
    let nofile = p.rlimits[libc::RLIMIT_NOFILE as usize];
    if nofile != NOFILE {
        fail!(chk, "RLIMIT_NOFILE {nofile:?}, expected {NOFILE:?}");
    }
    let core = p.rlimits[libc::RLIMIT_CORE as usize];
    if core != (0, 0) {
        fail!(chk, "RLIMIT_CORE {core:?}, expected (0, 0)");
    }
    let stack = p.rlimits[libc::RLIMIT_STACK as usize];
    if stack.0 != STACK_SOFT.min(stack.1) {
        fail!(chk, "RLIMIT_STACK {stack:?}, expected soft {STACK_SOFT}");
    }
    let want = |flags: i32, mask: u64| KSigaction {
        handler: record as *const () as usize,
        flags: (libc::SA_SIGINFO | flags) as u32 as u64 | SA_RESTORER,
        restorer: 0,
        mask,
    };
    let rs = libc::SA_RESTART;
    let expected = [
        (libc::SIGUSR1, want(rs, sigbit(libc::SIGWINCH))),
        (libc::SIGUSR2, want(rs | libc::SA_NODEFER, 0)),
        (rt(3), want(0, sigbit(rt(9)))),
        (rt(4), want(libc::SA_ONSTACK, 0)),
        (rt(5), want(rs, 0)),
        (rt(6), want(rs, 0)),
        (rt(7), want(libc::SA_RESETHAND, 0)),
        (rt(8), want(rs, 0)),
        (libc::SIGALRM, want(rs, 0)),
    ];
    for (sig, w) in expected {
        let a = p.actions[sig as usize - 1];
        if (a.handler, a.flags, a.mask) != (w.handler, w.flags, w.mask) {
            fail!(
                chk,
                "sigaction of signal {sig}: handler {:#x} flags {:#x} mask {:#x}, expected \
                 {:#x} {:#x} {:#x}",
                a.handler,
                a.flags,
                a.mask,
                w.handler,
                w.flags,
                w.mask
            );
        }
    }
    for sig in [libc::SIGPIPE, libc::SIGXFSZ] {
        let h = p.actions[sig as usize - 1].handler;
        if h != libc::SIG_IGN {
            fail!(chk, "signal {sig}: handler {h:#x}, expected SIG_IGN");
        }
    }
}

/// After go: everything, in an order that keeps the pending signals pending until their own
/// checks.
fn verify(m: &mut Main, maps: &mut MapsBufs, n_maps: usize, chk: &mut Check) {
    let n_at_go = rec_count();
    match sys::read_file_into(c"/proc/self/maps", &mut maps.after) {
        Ok(n) => crate::compare_maps(&maps.before[..n_maps], &maps.after[..n], chk),
        Err(e) => fail!(chk, "reading /proc/self/maps after go: errno {e}"),
    }
    match m.fds_after.read() {
        Ok(()) => crate::compare_fds(m.fds_before.as_slice(), m.fds_after.as_slice(), chk),
        Err(e) => fail!(chk, "listing /proc/self/fd after go: errno {e}"),
    }
    let pid = sys::getpid();
    if pid != m.ctx_pid {
        fail!(chk, "getpid() is {pid}, expected {}", m.ctx_pid);
    }

    // Nothing delivered before go but PR_SET_PDEATHSIG's SIGUSR2.
    for i in 0..n_at_go {
        let r = rec(i);
        if !is_pdeathsig(&r) {
            fail!(
                chk,
                "signal {} (si_code {}, value {}) was delivered in tid {} before go",
                r.sig,
                r.code,
                r.value,
                r.tid
            );
        }
    }

    // The main thread's state, before anything is unblocked.
    let after = Thread::read();
    if after != m.thread {
        compare_thread("main thread", &m.thread, &after, chk);
    }
    match m.raw.read(c"/proc/thread-self/status") {
        Ok(()) => {
            m.status_after.filter(m.raw.bytes(), &status_lines());
            compare_lines(
                "main thread: /proc/thread-self/status",
                m.status_before.bytes(),
                m.status_after.bytes(),
                chk,
            );
        }
        Err(e) => fail!(chk, "reading /proc/thread-self/status: errno {e}"),
    }
    expect_thread(&after, &m.status_after, &want_main(), m.bnd, m.cpu, chk);
    m.process_after.read();
    m.process.compare(&m.process_after, chk);
    expect_process(&m.process_after, &m.status_after, chk);
    check_timers(m.ids, chk);

    // A new timer must not take the id of a restored one.
    match timer_create(libc::CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0) {
        Ok(id) => {
            if m.ids.contains(&id) {
                fail!(
                    chk,
                    "timer_create after the restore returned id {id}, which is a live timer \
                     (ids {:?})",
                    m.ids
                );
            }
            let _ = timer_delete(id);
        }
        Err(e) => fail!(chk, "timer_create after go: errno {e}"),
    }

    // The pending signals, one kind at a time.
    unblock_and_expect(libc::SIGUSR1, "SIGUSR1 (shared)", &[VAL_USR1], chk);
    unblock_and_expect(rt(3), "SIGRTMIN+3 (shared)", &VAL_RT3, chk);
    unblock_and_expect(rt(7), "SIGRTMIN+7 (main thread's own)", &[VAL_RT7], chk);
    match ksigaction(rt(7)) {
        Ok(a) if a.handler == libc::SIG_DFL => {}
        Ok(a) => fail!(
            chk,
            "SIGRTMIN+7 (SA_RESETHAND) handler is {:#x} after its delivery, expected SIG_DFL",
            a.handler
        ),
        Err(e) => fail!(chk, "rt_sigaction(SIGRTMIN+7): errno {e}"),
    }
    // The timer signals and the itimers' never fired.
    for i in n_at_go..rec_count() {
        let r = rec(i);
        if r.code == SI_TIMER || [libc::SIGALRM, libc::SIGVTALRM, libc::SIGPROF].contains(&r.sig) {
            fail!(
                chk,
                "signal {} (si_code {}, value {:#x}) of a timer was delivered",
                r.sig,
                r.code,
                r.value
            );
        }
    }

    // Now the helper.
    set_phase(2);
    let deadline = Instant::now() + m.timeout;
    while HELPER.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
        sys::sleep_ms(5);
    }
    if HELPER.load(Ordering::SeqCst) < 4 {
        fail!(
            chk,
            "the helper thread did not finish its checks within {:?}",
            m.timeout
        );
        return;
    }
    match m.helper.take().map(JoinHandle::join) {
        Some(Ok(h)) => {
            if h.failures > 0 {
                // Already printed on stderr by the helper.
                chk.fail(format_args!("{}", Shown(h.first.as_bytes())));
                chk.failures += h.failures - 1;
            }
        }
        Some(Err(_)) => fail!(chk, "the helper thread panicked"),
        None => fail!(chk, "no helper thread"),
    }
}

pub fn taskstate(ctx: &Ctx, maps: &mut MapsBufs) -> ! {
    let mut m = Box::new(Main {
        ctx_pid: ctx.pid,
        cpu: 0,
        bnd: 0,
        ids: [-1; 3],
        // Read for real in setup (not here: as root, setgroups(0, NULL) would succeed).
        thread: Thread::unread(),
        process: Process::new(),
        process_after: Process::new(),
        raw: Text::new(),
        status_before: Text::new(),
        status_after: Text::new(),
        fds_before: FdSet::new(),
        fds_after: FdSet::new(),
        helper: None,
        timeout: Duration::from_secs(60),
    });
    if let Err(e) = setup(ctx, &mut m) {
        crate::die(format_args!("setup of taskstate: {e}"));
    }
    // The helper is in (or about to enter) FUTEX_WAIT; /proc/self/task/TID is not readable
    // for it once the uids changed, so give it a moment instead of checking.
    let deadline = Instant::now() + Duration::from_secs(30);
    while HELPER.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        sys::sleep_ms(1);
    }
    sys::sleep_ms(20);
    crate::touch_stack();
    if let Err(e) = m.fds_before.read() {
        crate::die(format_args!("listing /proc/self/fd: errno {e}"));
    }
    let n_maps = match sys::read_file_into(c"/proc/self/maps", &mut maps.before) {
        Ok(n) => n,
        Err(e) => crate::die(format_args!("reading /proc/self/maps: errno {e}")),
    };
    if let Err(e) = crate::write_ready(ctx, ctx.pid) {
        crate::die(format_args!("writing ready: errno {e}"));
    }

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    verify(&mut m, maps, n_maps, &mut chk);
    chk.finish()
}
