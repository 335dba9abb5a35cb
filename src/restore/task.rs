//! The task's kernel state, set from inside (signal dispositions, sigaltstack, tid address,
//! robust list, rseq, name, personality, umask...) and its registers, set from outside last.

use anyhow::{Context, Result};

use super::steps::Steps;
use crate::image::proto::{TaskCore, ThreadCore, UserRegs};
use crate::parasite::Parasite;
use crate::ptrace::{self as pt, Regs};
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

/// The process-wide state, set from inside after its memory is in place.
pub fn restore_in_task(
    steps: &mut Steps,
    core: &TaskCore,
    fds: &crate::image::proto::Fds,
) -> Result<()> {
    for action in &core.sigactions {
        steps.room(1, 32)?;
        let act = steps.put_u64s(&[action.handler, action.flags, action.restorer, action.mask]);
        steps.add(
            format!("rt_sigaction({})", action.signal),
            libc::SYS_rt_sigaction,
            &[action.signal.into(), act, 0, 8],
        );
    }
    if let Some(limits) = &core.limits {
        super::limits::restore_process(steps, limits)?;
    }
    super::files::restore_epoll_targets(steps, fds)?;
    super::files::restore_owners(steps, fds)?;
    if let Some(signals) = &core.signals {
        super::signals::restore_shared(steps, signals, core.pid)?;
    }
    steps.room(7, 64)?;
    if core.child_subreaper {
        steps.add(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            &[libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0],
        );
    }
    steps.add(
        "personality",
        libc::SYS_personality,
        &[core.personality.into()],
    );
    steps.add("umask", libc::SYS_umask, &[core.umask.into()]);
    if core.thp_disable != 0 {
        steps.add(
            "prctl(PR_SET_THP_DISABLE)",
            libc::SYS_prctl,
            &[PR_SET_THP_DISABLE, 1, 0, 0, 0],
        );
    }
    if needs_tile_permission(core) {
        steps.add(
            "arch_prctl(ARCH_REQ_XCOMP_PERM)",
            libc::SYS_arch_prctl,
            &[ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA],
        );
    }
    Ok(())
}

/// One thread's own state, set in its context: sigaltstack, tid address, robust list, rseq,
/// name.
pub fn restore_thread_in_task(
    steps: &mut Steps,
    core: &TaskCore,
    thread: &ThreadCore,
) -> Result<()> {
    steps.room(6, 128)?;
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
    let name = if thread.comm.is_empty() {
        &core.comm
    } else {
        &thread.comm
    };
    let name = steps.put_cstr(name);
    steps.add(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, name],
    );
    if let Some(signals) = &core.signals {
        super::signals::restore_thread(steps, signals, core.pid, thread.tid)?;
    }
    if let Some(sched) = core
        .limits
        .as_ref()
        .and_then(|l| l.threads.iter().find(|t| t.tid == thread.tid))
    {
        super::limits::restore_thread(steps, sched)?;
    }
    Ok(())
}

/// The last steps of each thread: seccomp filters, then credentials (they take away what
/// the steps before needed).
pub fn restore_thread_final(steps: &mut Steps, core: &TaskCore, thread: &ThreadCore) -> Result<()> {
    if let Some(seccomp) = &core.seccomp {
        super::seccomp::restore(steps, seccomp)?;
    }
    if let Some(creds) = &core.creds {
        super::creds::restore(steps, creds)?;
    }
    // After the credentials: changing them clears the parent-death signal.
    steps.room(1, 0)?;
    steps.add(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, thread.pdeathsig as u64],
    );
    Ok(())
}

/// The leader's last steps: its own final steps, then dumpable (a uid change resets it).
pub fn restore_final(steps: &mut Steps, core: &TaskCore) -> Result<()> {
    restore_thread_final(steps, core, &core.threads[0])?;
    steps.room(1, 0)?;
    steps.add(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        &[
            libc::PR_SET_DUMPABLE as u64,
            u64::from(core.dumpable),
            0,
            0,
            0,
        ],
    );
    Ok(())
}

const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;
const THREAD_STACK: usize = 256;

/// clone3 of every thread but the leader, with its original TID. The new threads start
/// stopped (the leader is traced with PTRACE_O_TRACECLONE) and never run this code.
pub fn create_threads(steps: &mut Steps, core: &TaskCore) -> Result<()> {
    for thread in &core.threads[1..] {
        steps.room(1, 200 + THREAD_STACK)?;
        let set_tid = steps.put_u64s(&[u64::from(thread.tid)]);
        let stack = steps.put(&[0u8; THREAD_STACK]);
        // struct clone_args; set_tid is an array of pid_t, so the tid goes in the low half.
        let args = steps.put_u64s(&[
            THREAD_FLAGS,
            0,
            0,
            0,
            0,
            stack,
            THREAD_STACK as u64,
            0,
            set_tid,
            1,
            0,
        ]);
        steps.add_expect(
            format!("clone3 thread {}", thread.tid),
            libc::SYS_clone3,
            &[args, 88],
            i64::from(thread.tid),
        );
    }
    Ok(())
}

/// Whether the thread's saved xstate holds AMX tile data (XSTATE_BV bit 18 of the XSAVE
/// header at offset 512). The kernel accepts such a state (PTRACE_SETREGSET) only into a
/// thread whose register save area it has enlarged for tiles, which it does when the thread
/// first uses a tile instruction with the permission: see [`Parasite::touch_tiles`]. The dump
/// asks the same question to check that its restore would work (dump::task::XstateProbe).
pub fn needs_tile_room(thread: &ThreadCore) -> bool {
    thread
        .xstate
        .get(512..520)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .is_some_and(|bv| bv & (1 << XFEATURE_XTILEDATA) != 0)
}

/// Whether the process must ask for the AMX tile data permission (it had it at dump).
pub fn needs_tile_permission(core: &TaskCore) -> bool {
    core.xcomp_perm & (1 << XFEATURE_XTILEDATA) != 0
}

/// A new thread, stopped as it was born: its own state in its context, then its registers.
pub fn finish_thread(
    parasite: &mut Parasite,
    core: &TaskCore,
    thread: &ThreadCore,
    tid: i32,
) -> Result<()> {
    match pt::wait_stop(tid)? {
        pt::Stop::Event(_) => {}
        other => anyhow::bail!("tid {tid}: {other:?} instead of a new thread's first stop"),
    }
    let regs = pt::get_regs(tid)?;
    let mut steps = Steps::new_in_thread(parasite, tid, regs);
    restore_thread_in_task(&mut steps, core, thread)?;
    restore_thread_final(&mut steps, core, thread)?;
    steps.flush()?;
    drop(steps);
    if needs_tile_room(thread) {
        parasite.touch_tiles(tid, &regs)?;
    }
    pt::set_regs(tid, &regs_from_proto(thread.regs.as_ref().unwrap(), &regs))?;
    restore_cpu(tid, thread)
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
