//! `epollshared`: an epoll instance with registrations, shared by dup and by fork.
//!
//! Root P: fd 10 eventfd (count 5, O_NONBLOCK), pipe read end fd 11 holding "x" and write
//! end fd 12, fd 13 = epoll_create1(0) with: fd 10 EPOLLIN data 0xE1, fd 11 EPOLLIN|EPOLLET
//! data 0x11, fd 12 EPOLLOUT data 0x12; fd 14 = dup(13). Then child C (armed `C`) is forked
//! and inherits them all: one epoll description in two processes, at two fds in each.
//! After go: C sees through fd 14 exactly the three events with their data, reads the
//! eventfd (5) and writes its result; P then sees through fd 13 only the pipe's two events
//! (the eventfd was drained through the shared description), deletes the eventfd's
//! registration (which must exist: ENOENT the second time) and sees a new write on the
//! pipe wake the edge-triggered read end.

use crate::files::{Child, place, snaps, verify_snaps, wait_armed};
use crate::procs::abort_setup;
use crate::procs::{MapsBufs, Member, Own};
use crate::sys::{self, errno};
use crate::{Check, Ctx, fail};
use std::time::Instant;

const EVENT: i32 = 10;
const PIPE_R: i32 = 11;
const PIPE_W: i32 = 12;
const EPOLL: i32 = 13;
const EPOLL_DUP: i32 = 14;
const ALL: [i32; 5] = [EVENT, PIPE_R, PIPE_W, EPOLL, EPOLL_DUP];

fn ctl(op: i32, fd: i32, events: u32, data: u64) -> Result<(), i32> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: epoll_ctl reads one epoll_event.
    if unsafe { libc::epoll_ctl(EPOLL, op, fd, &mut ev) } != 0 {
        return Err(errno());
    }
    Ok(())
}

fn setup() -> Result<(), String> {
    let fail = |what: &str| format!("epollshared: {what}: errno {}", errno());
    // SAFETY: eventfd, pipe, epoll_create1 and dup create fds this scenario owns.
    unsafe {
        let e = libc::eventfd(5, libc::EFD_NONBLOCK);
        if e < 0 {
            return Err(fail("eventfd"));
        }
        place(e, EVENT, false)?;
        let mut p = [0i32; 2];
        if libc::pipe(p.as_mut_ptr()) != 0 {
            return Err(fail("pipe"));
        }
        place(p[0], PIPE_R, false)?;
        place(p[1], PIPE_W, false)?;
        let ep = libc::epoll_create1(0);
        if ep < 0 {
            return Err(fail("epoll_create1"));
        }
        place(ep, EPOLL, false)?;
    }
    sys::write_all(PIPE_W, b"x").map_err(|_| fail("write the pipe"))?;
    ctl(libc::EPOLL_CTL_ADD, EVENT, libc::EPOLLIN as u32, 0xE1).map_err(|_| fail("add 10"))?;
    ctl(
        libc::EPOLL_CTL_ADD,
        PIPE_R,
        (libc::EPOLLIN | libc::EPOLLET) as u32,
        0x11,
    )
    .map_err(|_| fail("add 11"))?;
    ctl(libc::EPOLL_CTL_ADD, PIPE_W, libc::EPOLLOUT as u32, 0x12).map_err(|_| fail("add 12"))?;
    // SAFETY: dup2 onto an unused number.
    if unsafe { libc::dup2(EPOLL, EPOLL_DUP) } != EPOLL_DUP {
        return Err(fail("dup2"));
    }
    Ok(())
}

/// The ready events through `fd`, as (data, events) sorted by data.
fn ready(fd: i32) -> Result<([(u64, u32); 8], usize), i32> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: room for 8 events.
    let n = unsafe { libc::epoll_wait(fd, events.as_mut_ptr(), 8, 1000) };
    if n < 0 {
        return Err(errno());
    }
    let mut out = [(0u64, 0u32); 8];
    for (slot, ev) in out.iter_mut().zip(&events[..n as usize]) {
        *slot = (ev.u64, ev.events);
    }
    out[..n as usize].sort_unstable();
    Ok((out, n as usize))
}

fn expect_ready(what: &str, fd: i32, want: &[(u64, u32)], chk: &mut Check) {
    match ready(fd) {
        Ok((got, n)) if got[..n] == *want => {}
        Ok((got, n)) => fail!(
            chk,
            "{what}: epoll_wait on fd {fd} gave {:x?}, expected {:x?}",
            &got[..n],
            want
        ),
        Err(e) => fail!(chk, "{what}: epoll_wait on fd {fd}: errno {e}"),
    }
}

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;

pub fn epollshared(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let bound = sys::wait_bound();
    if let Err(e) = setup() {
        crate::die(format_args!("{e}"));
    }
    let c = match sys::fork() {
        Ok(0) => child(ctx, bufs),
        Ok(pid) => pid,
        Err(e) => crate::die(format_args!("epollshared: fork: errno {e}")),
    };
    if let Err(e) = wait_armed(ctx, "C", c) {
        abort_setup(&[c], &[], &e);
    }
    let child = Child::new(ctx, "C", c);
    let before = snaps(ALL);
    let own = crate::procs::root_ready(ctx, bufs, &[c], &[]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    verify_snaps("epollshared", &before, &mut chk);
    child.collect(Instant::now() + bound, &mut chk);
    // The eventfd was drained by C; the edge-triggered read end reported once already.
    expect_ready("epollshared (P)", EPOLL, &[(0x12, OUT)], &mut chk);
    match ctl(libc::EPOLL_CTL_DEL, EVENT, 0, 0) {
        Ok(()) => {}
        Err(e) => fail!(chk, "epollshared: EPOLL_CTL_DEL fd {EVENT}: errno {e}"),
    }
    match ctl(libc::EPOLL_CTL_DEL, EVENT, 0, 0) {
        Err(libc::ENOENT) => {}
        got => fail!(
            chk,
            "epollshared: second EPOLL_CTL_DEL gave {got:?}, expected ENOENT"
        ),
    }
    if sys::write_all(PIPE_W, b"y").is_err() {
        fail!(chk, "epollshared: write the pipe: errno {}", errno());
    }
    expect_ready(
        "epollshared (P) after a write",
        EPOLL_DUP,
        &[(0x11, IN), (0x12, OUT)],
        &mut chk,
    );
    chk.finish()
}

fn child(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let me = Member::new(ctx, "C");
    let before = snaps(ALL);
    let own = match Own::record(bufs) {
        Ok(o) => o,
        Err(e) => me.setup_failed(&e),
    };
    me.arm();
    sys::wait_for_every(&ctx.go, 20);
    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    verify_snaps("epollshared (C)", &before, &mut chk);
    expect_ready(
        "epollshared (C)",
        EPOLL_DUP,
        &[(0x11, IN), (0x12, OUT), (0xE1, IN)],
        &mut chk,
    );
    let mut count = [0u8; 8];
    match crate::files::read_once(EVENT, &mut count) {
        Ok(8) if u64::from_ne_bytes(count) == 5 => {}
        got => fail!(
            chk,
            "epollshared (C): eventfd read {got:?} {}",
            u64::from_ne_bytes(count)
        ),
    }
    me.report(&chk)
}
