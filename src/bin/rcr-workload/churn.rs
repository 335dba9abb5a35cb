//! `churn`: a root that keeps spawning short-lived children, so that a dump meets children
//! that exit while the tree is being seized (as under `make -j2`).
//!
//! The root keeps `LIVE` children at all times: each child sleeps 0, 1 or 2 ms and exits
//! with status 42; the root reaps each one (checking it exited 42) and forks another in its
//! place, until DIR/go exists. It writes ready once the first `LIVE` children run (and keeps
//! churning after ready: a dump meets live children, children exiting as they are seized
//! and zombies not reaped yet). After go it stops forking, reaps the children left (a
//! restored zombie must give back its exit status 42 too) and checks its own state (ids,
//! fds, maps). Nothing is allocated between ready and the verification.

use crate::procs::{MapsBufs, abort_setup, root_ready};
use crate::sys::{self, WaitStatus};
use crate::{Check, Ctx, fail};
use std::time::Instant;

const LIVE: usize = 12;
const CODE: i32 = 42;

fn spawn(round: u64) -> Result<i32, i32> {
    match sys::fork()? {
        0 => {
            sys::sleep_ms(round % 3);
            sys::exit_now(CODE)
        }
        pid => Ok(pid),
    }
}

/// 200 µs between two rounds of the root (it does not spin on a core).
fn pause() {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000,
    };
    // SAFETY: `ts` is a valid timespec; rem may be null.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// Records the first child that did not exit with CODE: (pid, wait status).
fn check_status(pid: i32, status: i32, bad: &mut Option<(i32, i32)>) {
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == CODE;
    if !ok && bad.is_none() {
        *bad = Some((pid, status));
    }
}

pub fn churn(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let bound = sys::wait_bound();
    let mut kids = [0i32; LIVE];
    let mut round: u64 = 0;
    for slot in 0..LIVE {
        match spawn(round) {
            Ok(pid) => kids[slot] = pid,
            Err(e) => abort_setup(&kids[..slot], &[], &format!("churn: fork: errno {e}")),
        }
        round += 1;
    }
    let own = root_ready(ctx, bufs, &kids, &[]);
    let mut bad = None;
    let mut wait_error = 0;
    while !sys::exists(&ctx.go) {
        for kid in kids.iter_mut() {
            match sys::try_wait(*kid) {
                Ok(None) => continue,
                Ok(Some(status)) => check_status(*kid, status, &mut bad),
                Err(e) => {
                    wait_error = e;
                    break;
                }
            }
            match spawn(round) {
                Ok(pid) => *kid = pid,
                Err(e) => {
                    wait_error = e;
                    break;
                }
            }
            round += 1;
        }
        if wait_error != 0 {
            break;
        }
        pause();
    }
    let mut chk = Check::new();
    let deadline = Instant::now() + bound;
    for &kid in &kids {
        match sys::wait_until(kid, deadline) {
            Ok(Some(status)) => check_status(kid, status, &mut bad),
            Ok(None) => fail!(chk, "churn: child {kid} still runs after the wait bound"),
            Err(e) => fail!(chk, "churn: waitpid({kid}): errno {e}"),
        }
    }
    if wait_error != 0 {
        fail!(chk, "churn: waitpid or fork failed: errno {wait_error}");
    }
    if let Some((pid, status)) = bad {
        fail!(
            chk,
            "churn: child {pid} ended with {}, expected exit {CODE}",
            WaitStatus(status)
        );
    }
    if round <= LIVE as u64 {
        fail!(chk, "churn: no child was replaced ({round} forks)");
    }
    own.verify(bufs, &mut chk);
    chk.finish()
}
