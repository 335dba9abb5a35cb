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
    match wait_stop_or_end(tid)? {
        Waited::Stop(stop) => Ok(stop),
        Waited::Ended(status) => bail!("pid {tid} {}", describe_end(status)),
    }
}

/// What waitpid reported of a tracee: a stop, or its end (the wait status, as a zombie
/// shows it in /proc/PID/stat: code << 8, or the signal | 0x80 with a core dump).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    Stop(Stop),
    Ended(i32),
}

fn describe_end(status: i32) -> String {
    if status & 0x7f == 0 {
        format!("exited with status {}", status >> 8)
    } else {
        match Signal::try_from(status & 0x7f) {
            Ok(sig) => format!("was killed by {sig}"),
            Err(_) => format!("was killed by signal {}", status & 0x7f),
        }
    }
}

/// Waits for the next stop of `tid`, or its end.
pub fn wait_stop_or_end(tid: i32) -> Result<Waited> {
    loop {
        let status = waitpid(pid(tid), Some(WaitPidFlag::__WALL))
            .with_context(|| format!("waitpid {tid}"))?;
        return Ok(match status {
            WaitStatus::PtraceEvent(_, sig, PTRACE_EVENT_STOP) => Waited::Stop(Stop::Event(sig)),
            WaitStatus::PtraceEvent(_, _, event) => {
                // Another ptrace event (none are enabled): let it go on.
                log::debug(&format!("pid {tid}: ignoring ptrace event {event}"));
                ptrace::cont(pid(tid), None)?;
                continue;
            }
            WaitStatus::PtraceSyscall(_) => Waited::Stop(Stop::Syscall),
            WaitStatus::Stopped(_, sig) => Waited::Stop(Stop::Signal(sig)),
            WaitStatus::Exited(_, code) => Waited::Ended((code & 0xff) << 8),
            WaitStatus::Signaled(_, sig, core) => {
                Waited::Ended(sig as i32 | if core { 0x80 } else { 0 })
            }
            other => bail!("pid {tid}: unexpected wait status {other:?}"),
        });
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
    match seize_or_end(tid)? {
        Seizing::Stopped(seized) => Ok(seized),
        Seizing::Ended(status) => bail!("pid {tid} {} while being seized", describe_end(status)),
    }
}

/// What came of seizing a task that may be exiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seizing {
    Stopped(Seized),
    /// It exited before it could stop: its wait status, collected by rcr as its tracer (it
    /// is now its parent's zombie, or gone if its parent does not wait for children).
    Ended(i32),
}

/// Like [`seize`], for a task that may exit meanwhile: its end is an outcome, not an error.
/// An error (e.g. the task is a zombie already, or gone) leaves it untraced.
pub fn seize_or_end(tid: i32) -> Result<Seizing> {
    ptrace::seize(pid(tid), ptrace::Options::PTRACE_O_TRACESYSGOOD)
        .with_context(|| format!("cannot seize pid {tid}"))?;
    if let Err(err) = ptrace::interrupt(pid(tid)) {
        // Only a task that is exiting cannot be interrupted once seized: its end comes next.
        if err != nix::errno::Errno::ESRCH {
            return Err(err).with_context(|| format!("cannot interrupt pid {tid}"));
        }
    }
    loop {
        match wait_stop_or_end(tid)? {
            Waited::Stop(Stop::Event(sig)) => {
                let was_stopped = matches!(
                    sig,
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
                );
                return Ok(Seizing::Stopped(Seized { was_stopped }));
            }
            Waited::Stop(Stop::Signal(sig)) => ptrace::cont(pid(tid), Some(sig))?,
            Waited::Stop(Stop::Syscall) => ptrace::cont(pid(tid), None)?,
            Waited::Ended(status) => return Ok(Seizing::Ended(status)),
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
