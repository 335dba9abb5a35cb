//! Scenarios that wait for go inside a blocking system call, and the `counter` demo.

use crate::sys::{self, Msg, errno};
use crate::{Check, Ctx, fail};
use std::fmt::Write;
use std::sync::atomic::{AtomicU32, Ordering};

const SLEEP_SECS: i64 = 5;

/// `nanosleep`: clock_nanosleep(CLOCK_MONOTONIC, relative 5 s) in a loop.
pub struct Nanosleep {
    full: u64,
    eintr: u64,
    bad_count: u64,
    bad_rc: i32,
    bad_rem: (i64, i64),
}

impl Nanosleep {
    pub fn new() -> Nanosleep {
        Nanosleep {
            full: 0,
            eintr: 0,
            bad_count: 0,
            bad_rc: 0,
            bad_rem: (0, 0),
        }
    }

    pub fn run(&mut self, ctx: &Ctx) {
        loop {
            let ts = libc::timespec {
                tv_sec: SLEEP_SECS,
                tv_nsec: 0,
            };
            // A value the kernel never writes: an EINTR that leaves it there is a failure.
            let mut rem = libc::timespec {
                tv_sec: -1,
                tv_nsec: -1,
            };
            // SAFETY: valid timespec pointers.
            let rc = unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, &mut rem) };
            let rem_ok = rem.tv_sec >= 0
                && (0..1_000_000_000).contains(&rem.tv_nsec)
                && (rem.tv_sec < SLEEP_SECS || (rem.tv_sec == SLEEP_SECS && rem.tv_nsec == 0));
            match rc {
                0 => self.full += 1,
                libc::EINTR if rem_ok => self.eintr += 1,
                _ => {
                    self.bad_count += 1;
                    if self.bad_count == 1 {
                        self.bad_rc = rc;
                        self.bad_rem = (rem.tv_sec, rem.tv_nsec);
                    }
                    sys::sleep_ms(20); // no busy loop if it keeps failing
                }
            }
            if sys::exists(&ctx.go) {
                return;
            }
        }
    }

    pub fn verify(&self, chk: &mut Check) {
        if self.bad_count > 0 {
            fail!(
                chk,
                "nanosleep: clock_nanosleep returned {} with rem {}.{:09} ({} bad returns, {} \
                 full sleeps, {} EINTR)",
                self.bad_rc,
                self.bad_rem.0,
                self.bad_rem.1,
                self.bad_count,
                self.full,
                self.eintr
            );
        }
    }
}

/// `futex`: FUTEX_WAIT_PRIVATE with a 5 s timeout on a word nobody changes.
pub struct Futex {
    word: AtomicU32,
    timeouts: u64,
    eintr: u64,
    bad_count: u64,
    bad_ret: i64,
    bad_errno: i32,
}

const FUTEX_VALUE: u32 = 0x5eed_f00d;

impl Futex {
    pub fn new() -> Futex {
        Futex {
            word: AtomicU32::new(FUTEX_VALUE),
            timeouts: 0,
            eintr: 0,
            bad_count: 0,
            bad_ret: 0,
            bad_errno: 0,
        }
    }

    pub fn run(&mut self, ctx: &Ctx) {
        loop {
            let ts = libc::timespec {
                tv_sec: SLEEP_SECS,
                tv_nsec: 0,
            };
            // SAFETY: the futex word is a live AtomicU32, ts a valid timespec.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.word.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    FUTEX_VALUE,
                    &ts as *const libc::timespec,
                    std::ptr::null::<u32>(),
                    0u32,
                )
            };
            let e = if r == -1 { errno() } else { 0 };
            match (r, e) {
                (-1, libc::ETIMEDOUT) => self.timeouts += 1,
                (-1, libc::EINTR) => self.eintr += 1,
                _ => {
                    self.bad_count += 1;
                    if self.bad_count == 1 {
                        self.bad_ret = r;
                        self.bad_errno = e;
                    }
                    sys::sleep_ms(20);
                }
            }
            if sys::exists(&ctx.go) {
                return;
            }
        }
    }

    pub fn verify(&self, chk: &mut Check) {
        if self.bad_count > 0 {
            fail!(
                chk,
                "futex: FUTEX_WAIT returned {} errno {} ({} bad returns, {} timeouts, {} EINTR)",
                self.bad_ret,
                self.bad_errno,
                self.bad_count,
                self.timeouts,
                self.eintr
            );
        }
        let v = self.word.load(Ordering::SeqCst);
        if v != FUTEX_VALUE {
            fail!(chk, "futex: word is {v:#x}, expected {FUTEX_VALUE:#x}");
        }
    }
}

/// `counter`: prints `pid <pid> count <n>` every 200 ms forever; ready after the first line.
pub fn counter(ctx: &Ctx) -> ! {
    let mut n: u64 = 0;
    loop {
        let mut m = Msg::new();
        let _ = writeln!(m, "pid {} count {n}", sys::getpid());
        sys::out(m.as_bytes());
        if n == 0
            && let Err(e) = crate::write_ready(ctx, sys::getpid())
        {
            let mut m = Msg::new();
            let _ = writeln!(m, "FAIL: writing ready: errno {e}");
            sys::out(m.as_bytes());
            std::process::exit(1);
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        loop {
            let mut rem = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid timespec pointers.
            let r = unsafe { libc::nanosleep(&ts, &mut rem) };
            if r == 0 || errno() != libc::EINTR {
                break;
            }
            ts = rem;
        }
        n += 1;
    }
}
