//! Scenarios with more than one process: `tree`, `shared` and `manyprocs N`.
//!
//! Protocol. The root forks its children; each child sets itself up, records its own state
//! (ids, fds, /proc/self/maps) and writes DIR/armed-NAME (atomically, holding its pid, or
//! `FAIL: ...` if its setup failed), then waits for DIR/go polling with clock_nanosleep. The
//! root writes DIR/ready only when every child is armed (and, in `tree`, the zombie is a
//! zombie and the stopped child is stopped). After go each child verifies its own state,
//! writes DIR/result-PID (`PASS` or `FAIL: ...`, atomically) and exits 0; the root verifies
//! its own state, waits (bounded, RCR_WORKLOAD_TIMEOUT_SECS) for every result file, reaps its
//! children checking their exit statuses and prints one PASS or FAIL line.
//!
//! Like the single-process scenarios, no process allocates or maps anything between its
//! snapshot and its verification.

use crate::maps;
use crate::parts::{Memory, Part};
use crate::sys::{self, FdSet, Mapping, Msg, Shown, WaitStatus};
use crate::{Check, Ctx, fail};
use std::convert::Infallible;
use std::ffi::CString;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// How long the root waits for its children to be armed (and for states like Z and T).
const ARM_BOUND: Duration = Duration::from_secs(30);

/// Buffers for the /proc/self/maps snapshots, allocated once before any fork (each child
/// uses its own copy-on-write copy).
pub struct MapsBufs {
    pub before: Vec<u8>,
    pub after: Vec<u8>,
}

impl MapsBufs {
    pub fn new() -> MapsBufs {
        MapsBufs {
            before: vec![0u8; 4 << 20],
            after: vec![0u8; 4 << 20],
        }
    }
}

/// The ids of the calling process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    sid: i32,
}

impl Ids {
    pub fn now() -> Ids {
        // SAFETY: these calls only query the calling process.
        unsafe {
            Ids {
                pid: libc::getpid(),
                ppid: libc::getppid(),
                pgrp: libc::getpgrp(),
                sid: libc::getsid(0),
            }
        }
    }

    /// `root`: the parent is not compared (a restored root's parent is rcr, or the
    /// subreaper after `restore --detach`).
    fn compare(&self, now: &Ids, root: bool, chk: &mut Check) {
        let ppid_ok = root || now.ppid == self.ppid;
        if !ppid_ok || (now.pid, now.pgrp, now.sid) != (self.pid, self.pgrp, self.sid) {
            fail!(
                chk,
                "ids (pid ppid pgrp sid) are {} {} {} {}, expected {} {} {} {}",
                now.pid,
                now.ppid,
                now.pgrp,
                now.sid,
                self.pid,
                self.ppid,
                self.pgrp,
                self.sid
            );
        }
    }
}

/// What every process records about itself right before it is armed (or, for the root,
/// before ready), and checks after go: ids (the root's parent excepted), open fds,
/// /proc/self/maps (see maps.rs).
pub struct Own {
    ids: Ids,
    root: bool,
    n_maps: usize,
    fds: FdSet,
}

impl Own {
    /// Takes the snapshot of the root process of a scenario.
    pub fn record_root(bufs: &mut MapsBufs) -> Result<Own, String> {
        let mut own = Self::record(bufs)?;
        own.root = true;
        Ok(own)
    }

    /// Takes the snapshot. Nothing may be allocated or mapped after this until `verify`.
    pub fn record(bufs: &mut MapsBufs) -> Result<Own, String> {
        crate::touch_stack();
        let mut fds = FdSet::new();
        fds.read()
            .map_err(|e| format!("listing /proc/self/fd: errno {e}"))?;
        let n_maps = sys::read_file_into(c"/proc/self/maps", &mut bufs.before)
            .map_err(|e| format!("reading /proc/self/maps: errno {e}"))?;
        Ok(Own {
            ids: Ids::now(),
            root: false,
            n_maps,
            fds,
        })
    }

    pub fn verify(&self, bufs: &mut MapsBufs, chk: &mut Check) {
        match sys::read_file_into(c"/proc/self/maps", &mut bufs.after) {
            Ok(n) => maps::compare_merged(&bufs.before[..self.n_maps], &bufs.after[..n], chk),
            Err(e) => fail!(chk, "reading /proc/self/maps after go: errno {e}"),
        }
        let mut fds = FdSet::new();
        match fds.read() {
            Ok(()) => crate::compare_fds(self.fds.as_slice(), fds.as_slice(), chk),
            Err(e) => fail!(chk, "listing /proc/self/fd after go: errno {e}"),
        }
        self.ids.compare(&Ids::now(), self.root, chk);
    }
}

/// DIR/NAME and DIR/NAME.tmp, for files written atomically.
pub struct AtomicFile {
    path: CString,
    tmp: CString,
}

impl AtomicFile {
    pub fn new(ctx: &Ctx, name: &str) -> AtomicFile {
        AtomicFile {
            path: ctx.path(name),
            tmp: ctx.path(&format!("{name}.tmp")),
        }
    }

    pub fn write(&self, data: &[u8]) -> Result<(), i32> {
        sys::write_atomic(&self.tmp, &self.path, data)
    }

    pub fn exists(&self) -> bool {
        sys::exists(&self.path)
    }
}

/// A check's outcome as one line: `PASS` or `FAIL: ...`, with a newline.
fn summary(chk: &Check, m: &mut Msg) {
    if chk.failures == 0 {
        let _ = writeln!(m, "PASS");
    } else {
        let _ = write!(m, "FAIL: {}", Shown(chk.first.as_bytes()));
        if chk.failures > 1 {
            let _ = write!(m, " (and {} more failures)", chk.failures - 1);
        }
        let _ = writeln!(m);
    }
}

/// A non-root process's files: DIR/armed-NAME and DIR/result-PID.
pub struct Member {
    armed: AtomicFile,
    result: AtomicFile,
}

impl Member {
    pub fn new(ctx: &Ctx, armed_name: &str) -> Member {
        Member {
            armed: AtomicFile::new(ctx, &format!("armed-{armed_name}")),
            result: AtomicFile::new(ctx, &format!("result-{}", sys::getpid())),
        }
    }

    /// Tells the root this process is set up (the armed file holds the pid).
    pub fn arm(&self) {
        let mut m = Msg::new();
        let _ = writeln!(m, "{}", sys::getpid());
        if self.armed.write(m.as_bytes()).is_err() {
            sys::exit_now(1);
        }
    }

    /// A setup failure: the armed file holds the message instead of a pid.
    pub fn setup_failed(&self, what: &str) -> ! {
        let mut m = Msg::new();
        let _ = writeln!(m, "FAIL: setup of pid {}: {what}", sys::getpid());
        let _ = self.armed.write(m.as_bytes());
        sys::exit_now(1);
    }

    /// Writes the result file and exits 0 (1 if the file cannot be written).
    pub fn report(&self, chk: &Check) -> ! {
        let mut m = Msg::new();
        summary(chk, &mut m);
        match self.result.write(m.as_bytes()) {
            Ok(()) => sys::exit_now(0),
            Err(_) => sys::exit_now(1),
        }
    }
}

/// How a member waits for go.
#[derive(Clone, Copy)]
pub enum MemberWait {
    /// access(go) every so many milliseconds, sleeping in clock_nanosleep.
    Poll(u64),
    /// raise(SIGSTOP); the root sends SIGCONT after go, having created DIR/cont first.
    Stop,
}

/// The life of a typical non-root process: private memory of `mem_size` bytes from `seed`,
/// snapshot, armed, wait, verify, `after` (e.g. reap its own child), result, exit.
pub fn member(
    ctx: &Ctx,
    bufs: &mut MapsBufs,
    armed_name: &str,
    mem_size: usize,
    seed: u64,
    wait: MemberWait,
    after: impl FnOnce(&mut Check),
) -> ! {
    let me = Member::new(ctx, armed_name);
    let cont = ctx.path("cont");
    let mut mem = match Memory::with_seed(mem_size, seed) {
        Ok(m) => m,
        Err(e) => me.setup_failed(&e),
    };
    let own = match Own::record(bufs) {
        Ok(o) => o,
        Err(e) => me.setup_failed(&e),
    };
    me.arm();
    let mut chk = Check::new();
    match wait {
        MemberWait::Poll(ms) => sys::wait_for_every(&ctx.go, ms),
        MemberWait::Stop => {
            // SAFETY: raise only sends a signal to the calling thread.
            let r = unsafe { libc::raise(libc::SIGSTOP) };
            if r != 0 {
                fail!(chk, "raise(SIGSTOP) returned {r}, errno {}", sys::errno());
            }
            // Only the root's SIGCONT, sent after go and after creating `cont`, may end the
            // stop: a restore that lost the stopped state shows here.
            if !sys::exists(&cont) {
                fail!(
                    chk,
                    "resumed from SIGSTOP before the root sent SIGCONT (no DIR/cont; go {})",
                    if sys::exists(&ctx.go) {
                        "exists"
                    } else {
                        "missing"
                    }
                );
                sys::wait_for(&ctx.go);
            }
        }
    }
    own.verify(bufs, &mut chk);
    mem.verify(&mut chk);
    after(&mut chk);
    me.report(&chk)
}

/// Forks; the child runs `f`, which never returns (`!` is not usable in closure bounds).
fn fork_child(f: impl FnOnce() -> Infallible) -> Result<i32, String> {
    match sys::fork() {
        // The match on the uninhabited result is what lets this arm have any type.
        #[allow(unreachable_code)]
        Ok(0) => match f() {},
        Ok(pid) => Ok(pid),
        Err(e) => Err(format!("fork: errno {e}")),
    }
}

/// Forks a child running `f`; on failure kills what was forked so far and fails.
fn spawn_or_abort(forked: &mut Vec<i32>, f: impl FnOnce() -> Infallible) {
    match fork_child(f) {
        Ok(pid) => forked.push(pid),
        Err(e) => abort_setup(forked, &[], &e),
    }
}

/// A child the root expects a result file from (and reaps if it is the root's own child).
pub struct Expect {
    label: String,
    pid: i32,
    result: CString,
    reap: bool,
}

impl Expect {
    pub fn new(ctx: &Ctx, label: &str, pid: i32, reap: bool) -> Expect {
        Expect {
            label: label.to_string(),
            pid,
            result: ctx.path(&format!("result-{pid}")),
            reap,
        }
    }
}

/// Waits until DIR/armed-NAME exists for every name and returns the pids they hold.
fn wait_armed(ctx: &Ctx, names: &[String]) -> Result<Vec<i32>, String> {
    let deadline = Instant::now() + ARM_BOUND;
    let mut pids = Vec::with_capacity(names.len());
    for name in names {
        let path = ctx.path(&format!("armed-{name}"));
        let mut buf = [0u8; 2200];
        loop {
            if let Ok(n) = sys::read_file_into(&path, &mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                match text.trim().parse::<i32>() {
                    Ok(pid) => {
                        pids.push(pid);
                        break;
                    }
                    Err(_) => return Err(format!("{name}: {}", text.trim())),
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{name} not armed within {ARM_BOUND:?}"));
            }
            sys::sleep_ms(10);
        }
    }
    Ok(pids)
}

/// Waits until /proc/PID/stat shows `state`.
fn wait_state(pid: i32, state: u8) -> Result<sys::Stat, String> {
    let path = CString::new(format!("/proc/{pid}/stat")).unwrap();
    let deadline = Instant::now() + ARM_BOUND;
    loop {
        let st = sys::read_stat(&path).map_err(|e| format!("/proc/{pid}/stat: errno {e}"))?;
        if st.state == state {
            return Ok(st);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "pid {pid} is in state {}, not {} after {ARM_BOUND:?}",
                st.state as char, state as char
            ));
        }
        sys::sleep_ms(10);
    }
}

/// Ends a failed setup of the root: kills and reaps the children it forked (and, by pid,
/// descendants it learned of), prints FAIL, exits 1.
/// The root's last step before ready: records its own state (ids, fds, maps) and writes
/// DIR/ready; on failure kills (and reaps) what it forked, kills `others`, and dies.
pub fn root_ready(ctx: &Ctx, bufs: &mut MapsBufs, forked: &[i32], others: &[i32]) -> Own {
    let own = match Own::record_root(bufs) {
        Ok(o) => o,
        Err(e) => abort_setup(forked, others, &e),
    };
    if let Err(e) = crate::write_ready(ctx, own.ids.pid) {
        abort_setup(forked, others, &format!("writing ready: errno {e}"));
    }
    own
}

/// Kills (and reaps) what the root forked, kills `others` (created by its children), and
/// dies with `what`.
pub(crate) fn abort_setup(forked: &[i32], others: &[i32], what: &str) -> ! {
    for &pid in forked.iter().chain(others) {
        // SAFETY: kill sends a signal to a process this root created (or its child created).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in forked {
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    crate::die(format_args!("{what}"))
}

/// After go: waits for every expected result file, reads it, and reaps the root's own
/// children checking they exited 0. Children still alive at the deadline are killed.
fn collect(expect: &[Expect], deadline: Instant, chk: &mut Check) {
    let mut buf = [0u8; 2200];
    for e in expect {
        while !sys::exists(&e.result) && Instant::now() < deadline {
            sys::sleep_ms(10);
        }
        match sys::read_file_into(&e.result, &mut buf) {
            Ok(n) if buf[..n].starts_with(b"PASS") => {}
            Ok(n) => {
                let text = buf[..n].strip_suffix(b"\n").unwrap_or(&buf[..n]);
                fail!(chk, "{} (pid {}): {}", e.label, e.pid, Shown(text));
            }
            Err(err) => fail!(
                chk,
                "{} (pid {}): no result file (errno {err}) within the wait bound",
                e.label,
                e.pid
            ),
        }
    }
    for e in expect.iter().filter(|e| e.reap) {
        match sys::wait_until(e.pid, deadline) {
            Ok(Some(st)) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
            Ok(Some(st)) => fail!(
                chk,
                "{} (pid {}) ended with {}, expected exit 0",
                e.label,
                e.pid,
                WaitStatus(st)
            ),
            Ok(None) => {
                fail!(chk, "{} (pid {}) did not exit in time", e.label, e.pid);
                // SAFETY: our own child; killed and reaped.
                unsafe {
                    libc::kill(e.pid, libc::SIGKILL);
                    libc::waitpid(e.pid, std::ptr::null_mut(), 0);
                }
            }
            Err(err) => fail!(chk, "waitpid({}) for {}: errno {err}", e.pid, e.label),
        }
    }
}

/// A distinct, non-zero seed per role.
fn seed(role: u64) -> u64 {
    0x243f_6a88_85a3_08d3 ^ role.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

const TREE_MEM: usize = 4 << 20;

// ---------------------------------------------------------------------------------------------

/// `tree`: root R (session and group leader) with children A, B, Z, S; A has child A1.
/// B is a session leader (setsid), A1 a group leader (setpgid), Z a zombie that exited 7,
/// S stopped by SIGSTOP. Every live process has 4 MiB of private memory of its own pattern.
/// The children's armed files are armed-A, armed-A1, armed-B, armed-S (holding their pids).
pub fn tree(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let bound = sys::wait_bound();
    let mut forked = Vec::with_capacity(4);
    spawn_or_abort(&mut forked, || sys::exit_now(7));
    let z = forked[0];
    spawn_or_abort(&mut forked, || {
        member(ctx, bufs, "S", TREE_MEM, seed(5), MemberWait::Stop, |_| {})
    });
    let s = forked[1];
    spawn_or_abort(&mut forked, || child_a(ctx, bufs));
    let a = forked[2];
    spawn_or_abort(&mut forked, || {
        // SAFETY: setsid only changes this process's session.
        if unsafe { libc::setsid() } < 0 {
            Member::new(ctx, "B").setup_failed(&format!("setsid: errno {}", sys::errno()));
        }
        member(
            ctx,
            bufs,
            "B",
            TREE_MEM,
            seed(3),
            MemberWait::Poll(20),
            |_| {},
        )
    });
    let b = forked[3];

    let mut mem = match Memory::with_seed(TREE_MEM, seed(1)) {
        Ok(m) => m,
        Err(e) => abort_setup(&forked, &[], &e),
    };
    let names: Vec<String> = ["A", "A1", "B", "S"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let pids = match wait_armed(ctx, &names) {
        Ok(p) => p,
        Err(e) => abort_setup(&forked, &[], &e),
    };
    let a1 = pids[1];
    if pids != [a, a1, b, s] {
        abort_setup(
            &forked,
            &[a1],
            &format!("armed pids {pids:?} vs forked A {a} B {b} S {s}"),
        );
    }
    let z_stat_path = CString::new(format!("/proc/{z}/stat")).unwrap();
    let s_stat_path = CString::new(format!("/proc/{s}/stat")).unwrap();
    let z_before = match wait_state(z, b'Z') {
        Ok(st) => st,
        Err(e) => abort_setup(&forked, &[a1], &e),
    };
    if let Err(e) = wait_state(s, b'T') {
        abort_setup(&forked, &[a1], &e);
    }
    let expect = [
        Expect::new(ctx, "A", a, true),
        Expect::new(ctx, "A1", a1, false),
        Expect::new(ctx, "B", b, true),
        Expect::new(ctx, "S", s, true),
    ];
    let cont = AtomicFile::new(ctx, "cont");
    let own = root_ready(ctx, bufs, &forked, &[a1]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    mem.verify(&mut chk);
    // Z: still a zombie with the same links and exit status, reaped here with status 7.
    match sys::read_stat(&z_stat_path) {
        Ok(st) if st == z_before => {}
        Ok(st) => fail!(
            chk,
            "Z (pid {z}): /proc stat state/ppid/pgrp/session/exit_code {} {} {} {} {:#x}, \
             expected {} {} {} {} {:#x}",
            st.state as char,
            st.ppid,
            st.pgrp,
            st.session,
            st.exit_code,
            z_before.state as char,
            z_before.ppid,
            z_before.pgrp,
            z_before.session,
            z_before.exit_code
        ),
        Err(e) => fail!(chk, "Z (pid {z}): reading /proc/{z}/stat: errno {e}"),
    }
    match sys::try_wait(z) {
        Ok(Some(st)) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7 => {}
        Ok(Some(st)) => fail!(
            chk,
            "Z (pid {z}) reaped with {}, expected exit 7",
            WaitStatus(st)
        ),
        Ok(None) => fail!(chk, "Z (pid {z}) is not a zombie: waitpid(WNOHANG) gave 0"),
        Err(e) => fail!(chk, "waitpid(Z, pid {z}): errno {e}"),
    }
    // S: still stopped (allow a restore a moment to settle); then continue it.
    let stop_deadline = Instant::now() + Duration::from_secs(5);
    let s_state = loop {
        match sys::read_stat(&s_stat_path) {
            Ok(st) if st.state == b'T' => break Ok(b'T'),
            Ok(st) if Instant::now() > stop_deadline => break Ok(st.state),
            Ok(_) => sys::sleep_ms(10),
            Err(e) => break Err(e),
        }
    };
    match s_state {
        Ok(b'T') => {}
        Ok(st) => fail!(
            chk,
            "S (pid {s}) is in state {}, expected T (stopped)",
            st as char
        ),
        Err(e) => fail!(chk, "S (pid {s}): reading /proc/{s}/stat: errno {e}"),
    }
    if let Err(e) = cont.write(b"") {
        fail!(chk, "writing DIR/cont: errno {e}");
    }
    // SAFETY: SIGCONT to our own child.
    if unsafe { libc::kill(s, libc::SIGCONT) } != 0 {
        fail!(chk, "kill(S {s}, SIGCONT): errno {}", sys::errno());
    }
    collect(&expect, Instant::now() + bound, &mut chk);
    chk.finish()
}

/// A: forks A1 (its own process group), then lives as a member and reaps A1 after go.
fn child_a(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let a1 = match sys::fork() {
        Ok(0) => {
            // SAFETY: setpgid(0, 0) only changes this process's group.
            if unsafe { libc::setpgid(0, 0) } != 0 {
                Member::new(ctx, "A1").setup_failed(&format!("setpgid: errno {}", sys::errno()));
            }
            member(
                ctx,
                bufs,
                "A1",
                TREE_MEM,
                seed(4),
                MemberWait::Poll(20),
                |_| {},
            )
        }
        Ok(pid) => pid,
        Err(e) => Member::new(ctx, "A").setup_failed(&format!("fork A1: errno {e}")),
    };
    let bound = sys::wait_bound();
    member(
        ctx,
        bufs,
        "A",
        TREE_MEM,
        seed(2),
        MemberWait::Poll(20),
        |chk| match sys::wait_until(a1, Instant::now() + bound) {
            Ok(Some(st)) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
            Ok(Some(st)) => fail!(chk, "A1 (pid {a1}) ended with {}", WaitStatus(st)),
            Ok(None) => fail!(chk, "A1 (pid {a1}) did not exit in time"),
            Err(e) => fail!(chk, "waitpid(A1 {a1}): errno {e}"),
        },
    )
}

// ---------------------------------------------------------------------------------------------

const SHARED_SIZE: usize = 1 << 20;
const SHARED_HALF: usize = SHARED_SIZE / 2;
/// The last page holds the control words written after go.
const SHARED_CTRL: usize = SHARED_SIZE - 4096;
const CTRL_PARENT: usize = SHARED_CTRL;
const CTRL_CHILD: usize = SHARED_CTRL + 2048;
const PARENT_VALUE: u64 = 0x9a7e_0000_1111_2222;
const CHILD_VALUE: u64 = 0xc41d_0000_3333_4444;
const PRIVATE_SIZE: usize = 1 << 20;

fn fill(words: &mut [u64], seed: u64) {
    let mut rng = sys::XorShift(seed);
    for w in words {
        // SAFETY: a volatile store to memory we own (it may be shared with another process).
        unsafe { std::ptr::write_volatile(w, rng.next()) };
    }
}

/// The index of the first word that does not follow the pattern, with its value.
fn mismatch(words: &[u64], seed: u64) -> Option<(usize, u64, u64)> {
    let mut rng = sys::XorShift(seed);
    for (i, w) in words.iter().enumerate() {
        let e = rng.next();
        // SAFETY: a volatile load from memory we own.
        let v = unsafe { std::ptr::read_volatile(w) };
        if v != e {
            return Some((i, v, e));
        }
    }
    None
}

fn check_pattern(what: &str, words: &[u64], seed: u64, chk: &mut Check) {
    if let Some((i, v, e)) = mismatch(words, seed) {
        fail!(
            chk,
            "{what}: word {i} (offset {:#x}) is {v:#018x}, expected {e:#018x}",
            i * 8
        );
    }
}

fn word_at(map: &Mapping, offset: usize) -> *mut u64 {
    (map.addr() + offset) as *mut u64
}

fn read_word(map: &Mapping, offset: usize) -> u64 {
    // SAFETY: `offset` is inside the mapping and 8-aligned.
    unsafe { std::ptr::read_volatile(word_at(map, offset)) }
}

fn write_word(map: &Mapping, offset: usize, v: u64) {
    // SAFETY: `offset` is inside the mapping and 8-aligned.
    unsafe { std::ptr::write_volatile(word_at(map, offset), v) }
}

/// `shared`: a 1 MiB MAP_SHARED|MAP_ANONYMOUS region and a 1 MiB private region, both made
/// before the fork. The parent writes the first half of the shared region, the child (armed
/// name `C`) the second half, before ready; the private region is written before the fork
/// only. After go the parent writes a word in the shared region and creates
/// DIR/parent-wrote; the child checks everything, waits for that file, checks the parent's
/// word, writes its own word and its result file; the parent then checks the child's word.
pub fn shared(ctx: &Ctx, bufs: &mut MapsBufs) -> ! {
    let bound = sys::wait_bound();
    let mut shm = match Mapping::shared_anon(SHARED_SIZE) {
        Ok(m) => m,
        Err(e) => crate::die(format_args!("{e}")),
    };
    let mut private = match Mapping::anon(PRIVATE_SIZE, libc::PROT_READ | libc::PROT_WRITE, 0) {
        Ok(m) => m,
        Err(e) => crate::die(format_args!("{e}")),
    };
    fill(private.words_mut(), seed(10));
    let parent_wrote = AtomicFile::new(ctx, "parent-wrote");
    let c = match fork_child(|| {
        let me = Member::new(ctx, "C");
        fill(
            &mut shm.words_mut()[SHARED_HALF / 8..SHARED_CTRL / 8],
            seed(12),
        );
        let own = match Own::record(bufs) {
            Ok(o) => o,
            Err(e) => me.setup_failed(&e),
        };
        me.arm();
        sys::wait_for(&ctx.go);
        let mut chk = Check::new();
        own.verify(bufs, &mut chk);
        check_pattern("private region", private.words(), seed(10), &mut chk);
        check_pattern(
            "shared region, parent's half",
            &shm.words()[..SHARED_HALF / 8],
            seed(11),
            &mut chk,
        );
        check_pattern(
            "shared region, own half",
            &shm.words()[SHARED_HALF / 8..SHARED_CTRL / 8],
            seed(12),
            &mut chk,
        );
        let deadline = Instant::now() + bound;
        while !parent_wrote.exists() && Instant::now() < deadline {
            sys::sleep_ms(10);
        }
        if !parent_wrote.exists() {
            fail!(chk, "no DIR/parent-wrote within the wait bound");
        } else {
            let v = read_word(&shm, CTRL_PARENT);
            if v != PARENT_VALUE {
                fail!(
                    chk,
                    "the parent's word written after go is {v:#018x}, expected \
                     {PARENT_VALUE:#018x}: not the same shared region"
                );
            }
        }
        write_word(&shm, CTRL_CHILD, CHILD_VALUE);
        me.report(&chk)
    }) {
        Ok(pid) => pid,
        Err(e) => crate::die(format_args!("{e}")),
    };
    fill(&mut shm.words_mut()[..SHARED_HALF / 8], seed(11));
    let pids = match wait_armed(ctx, &["C".to_string()]) {
        Ok(p) => p,
        Err(e) => abort_setup(&[c], &[], &e),
    };
    if pids[0] != c {
        abort_setup(&[c], &[], &format!("armed pid {} vs forked {c}", pids[0]));
    }
    if let Some((i, v, e)) = mismatch(&shm.words()[SHARED_HALF / 8..SHARED_CTRL / 8], seed(12)) {
        abort_setup(
            &[c],
            &[],
            &format!("before ready: the child's half differs at word {i}: {v:#x} vs {e:#x}"),
        );
    }
    let expect = [Expect::new(ctx, "C", c, true)];
    let own = root_ready(ctx, bufs, &[c], &[]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    check_pattern("private region", private.words(), seed(10), &mut chk);
    check_pattern(
        "shared region, own half",
        &shm.words()[..SHARED_HALF / 8],
        seed(11),
        &mut chk,
    );
    check_pattern(
        "shared region, child's half",
        &shm.words()[SHARED_HALF / 8..SHARED_CTRL / 8],
        seed(12),
        &mut chk,
    );
    write_word(&shm, CTRL_PARENT, PARENT_VALUE);
    if let Err(e) = parent_wrote.write(b"") {
        fail!(chk, "writing DIR/parent-wrote: errno {e}");
    }
    collect(&expect, Instant::now() + bound, &mut chk);
    let v = read_word(&shm, CTRL_CHILD);
    if v != CHILD_VALUE {
        fail!(
            chk,
            "the child's word written after go is {v:#018x}, expected {CHILD_VALUE:#018x}: \
             not the same shared region"
        );
    }
    chk.finish()
}

// ---------------------------------------------------------------------------------------------

const MANY_MEM: usize = 64 << 10;

/// `manyprocs N`: the root and N-1 children (flat), each with 64 KiB of its own pattern;
/// children poll for go every 100 ms in clock_nanosleep. Armed files are armed-PID.
pub fn manyprocs(ctx: &Ctx, bufs: &mut MapsBufs, n: usize) -> ! {
    if n == 0 {
        crate::die(format_args!("manyprocs needs N >= 1"));
    }
    let bound = sys::wait_bound();
    let mut forked = Vec::with_capacity(n);
    for i in 1..n {
        let child = fork_child(|| {
            let name = sys::getpid().to_string();
            member(
                ctx,
                bufs,
                &name,
                MANY_MEM,
                seed(100 + i as u64),
                MemberWait::Poll(100),
                |_| {},
            )
        });
        match child {
            Ok(pid) => forked.push(pid),
            Err(e) => abort_setup(&forked, &[], &format!("child {i}: {e}")),
        }
    }
    let mut mem = match Memory::with_seed(MANY_MEM, seed(100)) {
        Ok(m) => m,
        Err(e) => abort_setup(&forked, &[], &e),
    };
    let names: Vec<String> = forked.iter().map(|p| p.to_string()).collect();
    if let Err(e) = wait_armed(ctx, &names) {
        abort_setup(&forked, &[], &e);
    }
    let expect: Vec<Expect> = forked
        .iter()
        .enumerate()
        .map(|(i, &pid)| Expect::new(ctx, &format!("child {}", i + 1), pid, true))
        .collect();
    let own = root_ready(ctx, bufs, &forked, &[]);

    sys::wait_for(&ctx.go);

    let mut chk = Check::new();
    own.verify(bufs, &mut chk);
    mem.verify(&mut chk);
    collect(&expect, Instant::now() + bound, &mut chk);
    chk.finish()
}
