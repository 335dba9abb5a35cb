//! The task's CPU and kernel state: registers, xstate, syscall restart, signal dispositions and
//! the per-thread values only the task itself can read (through the parasite).

use std::fs;

use anyhow::{Context, Result};

use crate::image::proto::{
    Rseq, SigAction, SigAltStack, SyscallRestart, TaskCore, ThreadCore, UserRegs,
};
use crate::parasite::Parasite;
use crate::ptrace::{self as pt, Regs};
use crate::sys;

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const SYSCALL_INSN_LEN: u64 = 2;

/// Where the thread stood with respect to a system call when it was stopped.
pub fn restart_kind(regs: &Regs) -> SyscallRestart {
    if regs.orig_rax as i64 >= 0 {
        match -(regs.rax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => SyscallRestart::Restarted,
            ERESTART_RESTARTBLOCK => SyscallRestart::Interrupted,
            _ => SyscallRestart::Completed,
        }
    } else {
        SyscallRestart::NotInSyscall
    }
}

/// The registers to resume with, doing what the kernel would have done on return to user
/// space: restartable calls are re-executed. A call interrupted with -ERESTART_RESTARTBLOCK
/// continues through restart_syscall when the same task resumes (its restart block is still in
/// the kernel), and returns -EINTR in a restored task, which has no restart block.
pub fn resume_regs(regs: &Regs, same_task: bool) -> Regs {
    let mut out = *regs;
    match restart_kind(regs) {
        SyscallRestart::Restarted => {
            out.rax = regs.orig_rax;
            out.rip -= SYSCALL_INSN_LEN;
        }
        SyscallRestart::Interrupted if same_task => {
            out.rax = libc::SYS_restart_syscall as u64;
            out.rip -= SYSCALL_INSN_LEN;
        }
        SyscallRestart::Interrupted => out.rax = (-libc::EINTR) as i64 as u64,
        _ => {}
    }
    out.orig_rax = u64::MAX;
    out
}

pub fn regs_to_proto(r: &Regs) -> UserRegs {
    UserRegs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

/// The largest XSAVE area this CPU can need (CPUID 0xD, sub-leaf 0, ECX).
pub fn xstate_max_size() -> usize {
    (sys::cpu::cpuid(0xd, 0).ecx as usize).max(4096)
}

/// What is read from outside, before the parasite runs.
pub fn collect_thread(tid: i32, regs: &Regs, sigmask: u64) -> Result<ThreadCore> {
    let xstate = sys::ptrace::get_xstate(tid, xstate_max_size())
        .with_context(|| format!("pid {tid}: cannot read xstate"))?;
    let rseq = sys::ptrace::get_rseq_config(tid)
        .with_context(|| format!("pid {tid}: cannot read the rseq configuration"))?
        .map(|c| Rseq {
            address: c.rseq_abi_pointer,
            length: c.rseq_abi_size,
            signature: c.signature,
        });
    let comm = fs::read_to_string(format!("/proc/{tid}/task/{tid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_owned();
    Ok(ThreadCore {
        pdeathsig: 0,
        comm,
        tid: tid as u32,
        regs: Some(regs_to_proto(&resume_regs(regs, false))),
        xstate,
        restart: restart_kind(regs) as i32,
        sigmask,
        sigaltstack: None,
        clear_child_tid: 0,
        robust_list: 0,
        robust_list_len: 0,
        rseq,
    })
}

pub fn collect_process(
    pid: i32,
    stat: &super::mm::Stat,
    threads: Vec<ThreadCore>,
) -> Result<TaskCore> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))?
        .trim_end()
        .to_owned();
    let personality = u32::from_str_radix(
        fs::read_to_string(format!("/proc/{pid}/personality"))?.trim(),
        16,
    )?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o022);
    Ok(TaskCore {
        pid: pid as u32,
        comm,
        state: stat.state().to_string(),
        personality,
        threads,
        pdeathsig: 0,
        umask,
        sigactions: Vec::new(),
        pgid: stat.field(5) as u32,
        sid: stat.field(6) as u32,
        xcomp_perm: 0,
        thp_disable: 0,
        ..Default::default()
    })
}

const KERNEL_SIGACTION_SIZE: usize = 32;
const PR_GET_TID_ADDRESS: u64 = 40;
const PR_GET_SECUREBITS: u64 = 27;
const PR_GET_TIMERSLACK: u64 = 30;
const PR_GET_THP_DISABLE: u64 = 42;
const ARCH_GET_XCOMP_PERM: u64 = 0x1022;

/// Reads, in the process' own context, what no outside interface shows: signal
/// dispositions, pdeathsig, brk, THP setting, AMX permission. Returns brk.
pub fn collect_in_task(parasite: &mut Parasite, core: &mut TaskCore) -> Result<u64> {
    let mut batch = parasite.batch();
    let signals: Vec<u32> = (1..=64).filter(|&s| s != 9 && s != 19).collect();
    let actions = batch.reserve(KERNEL_SIGACTION_SIZE * signals.len());
    for (i, &sig) in signals.iter().enumerate() {
        batch.syscall(
            libc::SYS_rt_sigaction,
            &[
                sig as u64,
                0,
                actions + (i * KERNEL_SIGACTION_SIZE) as u64,
                8,
            ],
        );
    }
    let pdeathsig = batch.reserve(8);
    batch.syscall(libc::SYS_prctl, &[libc::PR_GET_PDEATHSIG as u64, pdeathsig]);
    let brk_index = batch.syscall(libc::SYS_brk, &[0]);
    let thp_index = batch.syscall(libc::SYS_prctl, &[PR_GET_THP_DISABLE, 0, 0, 0, 0]);
    let xcomp = batch.reserve(8);
    let xcomp_index = batch.syscall_may_fail(libc::SYS_arch_prctl, &[ARCH_GET_XCOMP_PERM, xcomp]);
    let securebits_index = batch.syscall(libc::SYS_prctl, &[PR_GET_SECUREBITS, 0, 0, 0, 0]);
    let dumpable_index =
        batch.syscall(libc::SYS_prctl, &[libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0]);
    let subreaper = batch.reserve(8);
    batch.syscall(
        libc::SYS_prctl,
        &[libc::PR_GET_CHILD_SUBREAPER as u64, subreaper, 0, 0, 0],
    );
    let result = parasite.run(&batch)?;
    if let Some((index, errno)) = result.failure() {
        anyhow::bail!(
            "pid {}: reading task state failed at step {index}: {}",
            core.pid,
            std::io::Error::from_raw_os_error(errno)
        );
    }
    let raw = parasite.read(actions, KERNEL_SIGACTION_SIZE * signals.len())?;
    core.sigactions = signals
        .iter()
        .zip(raw.chunks_exact(KERNEL_SIGACTION_SIZE))
        .map(|(&signal, c)| {
            let word = |i: usize| u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap());
            SigAction {
                signal,
                handler: word(0),
                flags: word(1),
                restorer: word(2),
                mask: word(3),
            }
        })
        .collect();
    core.pdeathsig = parasite.read_u64(pdeathsig)? as i32;
    if let Some(creds) = core.creds.as_mut() {
        creds.securebits = result.results[securebits_index] as u32;
    }
    core.dumpable = result.results[dumpable_index] != 0;
    core.child_subreaper = parasite.read_u64(subreaper)? as u32 != 0;
    core.thp_disable = result.results[thp_index] as i32;
    if pt::syscall_error(result.results[xcomp_index]).is_none() {
        core.xcomp_perm = parasite.read_u64(xcomp)?;
    }
    Ok(result.results[brk_index] as u64)
}

/// Reads one thread's own state in its context: sigaltstack, clear_child_tid, robust list;
/// returns its timer slack (only the thread itself can read it).
pub fn collect_thread_in_task(
    parasite: &mut Parasite,
    regs: &Regs,
    thread: &mut ThreadCore,
) -> Result<u64> {
    let tid = thread.tid as i32;
    let mut batch = parasite.batch();
    let altstack = batch.reserve(24);
    batch.syscall(libc::SYS_sigaltstack, &[0, altstack]);
    let tid_address = batch.reserve(8);
    batch.syscall(libc::SYS_prctl, &[PR_GET_TID_ADDRESS, tid_address]);
    let robust = batch.reserve(16);
    batch.syscall(libc::SYS_get_robust_list, &[0, robust, robust + 8]);
    let slack_index = batch.syscall(libc::SYS_prctl, &[PR_GET_TIMERSLACK, 0, 0, 0, 0]);
    let pdeathsig = batch.reserve(8);
    batch.syscall(libc::SYS_prctl, &[libc::PR_GET_PDEATHSIG as u64, pdeathsig]);
    let result = if tid == parasite.tid {
        parasite.run(&batch)?
    } else {
        parasite.run_in_thread(tid, regs, &batch)?
    };
    if let Some((index, errno)) = result.failure() {
        anyhow::bail!(
            "tid {tid}: reading thread state failed at step {index}: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
    let alt = parasite.read(altstack, 24)?;
    thread.sigaltstack = Some(SigAltStack {
        sp: u64::from_le_bytes(alt[0..8].try_into().unwrap()),
        flags: i32::from_le_bytes(alt[8..12].try_into().unwrap()),
        size: u64::from_le_bytes(alt[16..24].try_into().unwrap()),
    });
    thread.clear_child_tid = parasite.read_u64(tid_address)?;
    thread.robust_list = parasite.read_u64(robust)?;
    thread.robust_list_len = parasite.read_u64(robust + 8)?;
    thread.pdeathsig = parasite.read_u64(pdeathsig)? as i32;
    Ok(result.results[slack_index] as u64)
}

/// Tries every thread's xstate on scratch processes prepared the way restore prepares a
/// thread (tile permission, a tile instruction where the state has tiles: the questions of
/// restore::task), so that an xstate the kernel would refuse at restore fails the dump now,
/// while the tree still runs. At most one probe process per kind of preparation per dump.
#[derive(Default)]
pub struct XstateCheck {
    probes: std::collections::BTreeMap<(bool, bool), sys::xstate::XstateProbe>,
}

impl XstateCheck {
    pub fn check(&mut self, core: &TaskCore) -> Result<()> {
        use crate::restore::task::{needs_tile_permission, needs_tile_room};
        for thread in &core.threads {
            if thread.xstate.is_empty() {
                continue;
            }
            let kind = (needs_tile_permission(core), needs_tile_room(thread));
            let probe = match self.probes.entry(kind) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(
                    sys::xstate::XstateProbe::start(kind.0, kind.1)
                        .with_context(|| format!("tid {}: cannot check its xstate", thread.tid))?,
                ),
            };
            let mut xstate = std::borrow::Cow::Borrowed(&thread.xstate[..]);
            if std::env::var("RCR_FAULT_INJECT").is_ok_and(|p| p == "xstate-refused") {
                // Test hook: XCOMP_BV (offset 520) must be 0 in this format.
                xstate.to_mut()[527] |= 0x80;
            }
            if let Err(err) = probe.try_set(&xstate) {
                let bv = crate::show::xstate_bv(&thread.xstate).unwrap_or(0);
                anyhow::bail!(
                    "tid {}: its xstate ({} bytes, xstate_bv {bv:#x}) would be refused at restore on this machine: {err}",
                    thread.tid,
                    thread.xstate.len()
                );
            }
        }
        Ok(())
    }
}
