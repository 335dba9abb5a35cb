//! Freezing tasks with ptrace and running system calls inside a stopped task: the verbs that
//! everything above uses (seize, wait, inject a syscall, resume).

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail};
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

pub use crate::sys::ptrace::Regs;

const PTRACE_EVENT_STOP: i32 = 128;
/// PTRACE_O_SUSPEND_SECCOMP (nix does not name it): the tracee's seccomp filters do not apply
/// while it is traced with it, so they cannot block the parasite.
pub const SUSPEND_SECCOMP: ptrace::Options = ptrace::Options::from_bits_retain(1 << 21);

/// What a tracee reported to waitpid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// PTRACE_INTERRUPT or group stop (PTRACE_EVENT_STOP); the signal says which.
    Event(Signal),
    /// Syscall entry or exit (PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// Signal-delivery-stop.
    Signal(Signal),
}

pub fn pid(tid: i32) -> Pid {
    Pid::from_raw(tid)
}

/// Waits for the next stop of `tid`; an exit is an error.
pub fn wait_stop(tid: i32) -> Result<Stop> {
    loop {
        let status = waitpid(pid(tid), Some(WaitPidFlag::__WALL))
            .with_context(|| format!("waitpid {tid}"))?;
        return match status {
            WaitStatus::PtraceEvent(_, sig, PTRACE_EVENT_STOP) => Ok(Stop::Event(sig)),
            WaitStatus::PtraceEvent(_, _, event) => {
                // Another ptrace event (none are enabled): let it go on.
                log::debug(&format!("pid {tid}: ignoring ptrace event {event}"));
                ptrace::cont(pid(tid), None)?;
                continue;
            }
            WaitStatus::PtraceSyscall(_) => Ok(Stop::Syscall),
            WaitStatus::Stopped(_, sig) => Ok(Stop::Signal(sig)),
            WaitStatus::Exited(_, code) => bail!("pid {tid} exited with status {code}"),
            WaitStatus::Signaled(_, sig, _) => bail!("pid {tid} was killed by {sig}"),
            other => bail!("pid {tid}: unexpected wait status {other:?}"),
        };
    }
}

/// The state a task was in when it was seized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seized {
    /// It was already in a group stop (SIGSTOP and the like) before we came.
    pub was_stopped: bool,
}

/// PTRACE_SEIZE + PTRACE_INTERRUPT, and wait until the task is in the interrupt stop.
/// Signals that arrive first are delivered as they would have been without us.
pub fn seize(tid: i32) -> Result<Seized> {
    ptrace::seize(pid(tid), ptrace::Options::PTRACE_O_TRACESYSGOOD)
        .with_context(|| format!("cannot seize pid {tid}"))?;
    ptrace::interrupt(pid(tid)).with_context(|| format!("cannot interrupt pid {tid}"))?;
    loop {
        match wait_stop(tid)? {
            Stop::Event(sig) => {
                let was_stopped = matches!(
                    sig,
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
                );
                return Ok(Seized { was_stopped });
            }
            Stop::Signal(sig) => ptrace::cont(pid(tid), Some(sig))?,
            Stop::Syscall => ptrace::cont(pid(tid), None)?,
        }
    }
}

/// Resumes the task and detaches; `stop` (for a process' leader) leaves the whole process in
/// a group stop instead. The SIGSTOP is queued before detaching rather than passed to
/// PTRACE_DETACH, which delivers it only from a signal-delivery or syscall stop.
pub fn detach(tid: i32, stop: bool) -> Result<()> {
    if stop {
        nix::sys::signal::kill(pid(tid), Signal::SIGSTOP)
            .with_context(|| format!("cannot stop pid {tid}"))?;
    }
    ptrace::detach(pid(tid), None).with_context(|| format!("cannot detach from pid {tid}"))
}

pub fn get_regs(tid: i32) -> Result<Regs> {
    ptrace::getregs(pid(tid)).with_context(|| format!("cannot read registers of pid {tid}"))
}

pub fn set_regs(tid: i32, regs: &Regs) -> Result<()> {
    ptrace::setregs(pid(tid), *regs).with_context(|| format!("cannot set registers of pid {tid}"))
}

/// Runs one system call in the stopped task `tid` with the instruction at `syscall_insn`
/// (which must be `syscall`), starting from `base` registers. Uses PTRACE_SYSCALL entry and
/// exit stops, so nothing has to follow the instruction. Leaves the task at the exit stop with
/// modified registers: the caller puts the real ones back.
pub fn run_syscall(tid: i32, base: &Regs, syscall_insn: u64, nr: i64, args: &[u64]) -> Result<i64> {
    let mut regs = *base;
    regs.rip = syscall_insn;
    regs.rax = nr as u64;
    regs.orig_rax = u64::MAX; // no syscall restart logic on resume
    let mut all = [0u64; 6];
    all[..args.len()].copy_from_slice(args);
    [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9] = all;
    set_regs(tid, &regs)?;
    for phase in ["entry", "exit"] {
        ptrace::syscall(pid(tid), None)?;
        match wait_stop(tid)? {
            Stop::Syscall => {}
            other => {
                let at = get_regs(tid).map(|r| (r.rip, r.rax, r.orig_rax)).ok();
                bail!(
                    "pid {tid}: {other:?} instead of the injected syscall's {phase} (rip, rax, orig_rax: {at:x?})"
                )
            }
        }
    }
    Ok(get_regs(tid)?.rax as i64)
}

/// Runs one system call by writing a `syscall` instruction over the bytes at the task's RIP
/// and putting them back afterwards: the way into a task that has no parasite yet.
pub fn inject_syscall_at_rip(
    tid: i32,
    mem: &File,
    base: &Regs,
    nr: i64,
    args: &[u64],
) -> Result<i64> {
    let mut saved = [0u8; 2];
    mem.read_exact_at(&mut saved, base.rip)
        .with_context(|| format!("pid {tid}: reading code at rip {:#x}", base.rip))?;
    mem.write_all_at(&[0x0f, 0x05], base.rip)
        .with_context(|| format!("pid {tid}: writing code at rip {:#x}", base.rip))?;
    let result = run_syscall(tid, base, base.rip, nr, args);
    mem.write_all_at(&saved, base.rip)
        .with_context(|| format!("pid {tid}: restoring code at rip {:#x}", base.rip))?;
    result
}

/// Opens /proc/PID/mem for reading and writing (writes ignore page protections).
pub fn open_mem(tid: i32) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{tid}/mem"))
        .with_context(|| format!("cannot open memory of pid {tid}"))
}

/// A kernel error code out of a raw syscall result, if it is one.
pub fn syscall_error(result: i64) -> Option<std::io::Error> {
    (-4095..0)
        .contains(&result)
        .then(|| std::io::Error::from_raw_os_error(-result as i32))
}

use crate::log;
