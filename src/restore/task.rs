//! The task's kernel state, set from inside (signal dispositions, sigaltstack, tid address,
//! robust list, rseq, name, personality, umask...) and its registers, set from outside last.

use anyhow::{Context, Result};

use super::steps::Steps;
use crate::image::proto::{TaskCore, ThreadCore, UserRegs};
use crate::ptrace::Regs;
use crate::sys;

const PR_SET_THP_DISABLE: u64 = 41;
const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
const XFEATURE_XTILEDATA: u64 = 18;
const SS_ONSTACK: i32 = 1;
const ROBUST_LIST_HEAD_SIZE: u64 = 24;

pub fn regs_from_proto(r: &UserRegs, base: &Regs) -> Regs {
    let mut out = *base;
    out.r15 = r.r15;
    out.r14 = r.r14;
    out.r13 = r.r13;
    out.r12 = r.r12;
    out.rbp = r.rbp;
    out.rbx = r.rbx;
    out.r11 = r.r11;
    out.r10 = r.r10;
    out.r9 = r.r9;
    out.r8 = r.r8;
    out.rax = r.rax;
    out.rcx = r.rcx;
    out.rdx = r.rdx;
    out.rsi = r.rsi;
    out.rdi = r.rdi;
    out.orig_rax = u64::MAX;
    out.rip = r.rip;
    out.cs = r.cs;
    out.eflags = r.eflags;
    out.rsp = r.rsp;
    out.ss = r.ss;
    out.fs_base = r.fs_base;
    out.gs_base = r.gs_base;
    out.ds = r.ds;
    out.es = r.es;
    out.fs = r.fs;
    out.gs = r.gs;
    out
}

/// Everything of the task set from inside, after its memory is in place.
pub fn restore_in_task(steps: &mut Steps, core: &TaskCore, thread: &ThreadCore) -> Result<()> {
    for action in &core.sigactions {
        steps.room(1, 32)?;
        let act = steps.put_u64s(&[action.handler, action.flags, action.restorer, action.mask]);
        steps.add(
            format!("rt_sigaction({})", action.signal),
            libc::SYS_rt_sigaction,
            &[action.signal.into(), act, 0, 8],
        );
    }
    steps.room(8, 64)?;
    if let Some(alt) = &thread.sigaltstack {
        let flags = (alt.flags & !SS_ONSTACK) as u32 as u64;
        let ss = steps.put_u64s(&[alt.sp, flags, alt.size]);
        steps.add("sigaltstack", libc::SYS_sigaltstack, &[ss, 0]);
    }
    steps.add(
        "set_tid_address",
        libc::SYS_set_tid_address,
        &[thread.clear_child_tid],
    );
    if thread.robust_list != 0 {
        steps.add(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[
                thread.robust_list,
                thread.robust_list_len.max(ROBUST_LIST_HEAD_SIZE),
            ],
        );
    }
    if let Some(rseq) = &thread.rseq {
        steps.add(
            "rseq registration",
            libc::SYS_rseq,
            &[rseq.address, rseq.length.into(), 0, rseq.signature.into()],
        );
    }
    let comm = steps.put_cstr(&core.comm);
    steps.add(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, comm],
    );
    steps.add(
        "personality",
        libc::SYS_personality,
        &[core.personality.into()],
    );
    steps.add("umask", libc::SYS_umask, &[core.umask.into()]);
    steps.add(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, core.pdeathsig as u64],
    );
    steps.room(2, 0)?;
    if core.thp_disable != 0 {
        steps.add(
            "prctl(PR_SET_THP_DISABLE)",
            libc::SYS_prctl,
            &[PR_SET_THP_DISABLE, 1, 0, 0, 0],
        );
    }
    if core.xcomp_perm & (1 << XFEATURE_XTILEDATA) != 0 {
        steps.add(
            "arch_prctl(ARCH_REQ_XCOMP_PERM)",
            libc::SYS_arch_prctl,
            &[ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA],
        );
    }
    Ok(())
}

/// Registers, xstate and signal mask, set from outside once the parasite is gone.
pub fn restore_cpu(pid: i32, thread: &ThreadCore) -> Result<()> {
    if !thread.xstate.is_empty() {
        sys::ptrace::set_xstate(pid, &thread.xstate)
            .with_context(|| format!("pid {pid}: cannot set xstate"))?;
    }
    sys::ptrace::set_sigmask(pid, thread.sigmask)
        .with_context(|| format!("pid {pid}: cannot set the signal mask"))?;
    Ok(())
}
