//! Shared harness of the integration tests: start rcr-workload scenarios, run `rcr dump` and
//! `rcr restore` with deadlines, and clean up every process a test started or restored, also
//! when the test fails.
//!
//! Safety rules kept here: only processes this test binary started (or that rcr restored from
//! their images) are ever signalled or waited for; before a pid is killed by number, its
//! /proc/PID/cmdline (or comm) must still name rcr-workload.
//!
//! Tests of one binary run one at a time (a global lock): they are memory- and CPU-heavy, and
//! a restore needs its PID to stay free between the dump and the restore.
//!
//! Environment: RCR_TEST_TIMEOUT_SECS (default 120) is the deadline of each rcr run and of
//! each wait for a workload to finish; the wait for a workload's ready file is 30 s. The
//! deadlines only turn a hang into a failure: no test depends on timing to pass.
//!
//! Process trees: when a workload is ready, the harness records its whole tree (every
//! process and thread, from /proc/PID/task/*/children) in `Workload::tree`. Cleanup kills
//! (after the cmdline check) every recorded pid, the descendants of every child still
//! alive, and any orphan that came to this (subreaper) process whose cmdline names this
//! test's directory, and reaps them all.

// Each test binary uses only some of the helpers.
#![allow(dead_code)]
// Children are kept in Harness::children and waited for there (or in cleanup), which this
// lint cannot see.
#![allow(clippy::zombie_processes)]

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

pub const RCR: &str = env!("CARGO_BIN_EXE_rcr");
pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_rcr-workload");

/// clock_nanosleep and futex on x86_64.
pub const SYS_CLOCK_NANOSLEEP: u32 = 230;
pub const SYS_FUTEX: u32 = 202;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

static SERIAL: Mutex<()> = Mutex::new(());
static SUBREAPER: Once = Once::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The deadline of an rcr run or of a workload's exit.
pub fn long_timeout() -> Duration {
    let secs = std::env::var("RCR_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl From<ExitStatus> for Ended {
    fn from(s: ExitStatus) -> Ended {
        match (s.code(), s.signal()) {
            (Some(c), _) => Ended::Code(c),
            (None, Some(sig)) => Ended::Signal(sig),
            _ => Ended::Code(-1),
        }
    }
}

/// One run of the rcr binary (or of another command run through the harness).
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub ended: Ended,
    pub stdout: String,
    pub stderr: String,
    /// The pid in the --pidfile, if one was asked for and written.
    pub pid: Option<i32>,
}

impl Run {
    pub fn success(&self) -> bool {
        self.ended == Ended::Code(0)
    }

    fn describe(&self) -> String {
        format!(
            "`{}` ended with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.ended,
            self.stdout,
            self.stderr
        )
    }

    /// Asserts exit status 0.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.success(), "expected success: {}", self.describe());
        self
    }

    /// Asserts exit status 0; on failure also shows the workload's output (a restore
    /// without --detach exits with the restored workload's status).
    pub fn assert_ok_for(&self, w: &Workload) -> &Self {
        assert!(
            self.success(),
            "expected success: {}\n--- workload {} stdout ---\n{}\n--- workload stderr ---\n{}",
            self.describe(),
            w.scenario,
            w.stdout(),
            w.stderr()
        );
        self
    }

    /// Asserts a non-zero exit and exactly one line on stderr starting with `rcr: `;
    /// returns that line.
    pub fn assert_refused(&self) -> &str {
        assert!(
            !self.success(),
            "expected a failure, got success: {}",
            self.describe()
        );
        assert!(
            matches!(self.ended, Ended::Code(c) if c != 0),
            "expected a non-zero exit (not a crash): {}",
            self.describe()
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("rcr: "),
            "expected exactly one stderr line starting with `rcr: `: {}",
            self.describe()
        );
        eprintln!("refused as expected: {}", lines[0]);
        lines[0]
    }
}

/// One process of a workload's tree as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub sid: i32,
    /// 'S' for running or sleeping (R, S, D, I), else the state letter: 'T' stopped,
    /// 't' traced, 'Z' zombie.
    pub state: char,
    /// Its threads, sorted.
    pub tids: Vec<i32>,
}

/// /proc/PID/stat and /proc/PID/task of one process, or None if it is gone.
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let state = match rest.first()?.chars().next()? {
        'R' | 'S' | 'D' | 'I' => 'S',
        c => c,
    };
    let num = |i: usize| rest.get(i).and_then(|v| v.parse::<i32>().ok());
    let mut tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Some(ProcInfo {
        pid,
        ppid: num(1)?,
        pgrp: num(2)?,
        sid: num(3)?,
        state,
        tids,
    })
}

/// The children of `pid` (of all its threads), sorted.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                kids.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    kids.sort_unstable();
    kids.dedup();
    kids
}

/// `root` and all its descendants, parents before children.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let kids = children_of(all[i]);
        all.extend(
            kids.into_iter()
                .filter(|k| !all.contains(k))
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    all
}

/// The tree under `root` as /proc shows it now (parents before children).
pub fn tree_shape(root: i32) -> Vec<ProcInfo> {
    descendants(root)
        .into_iter()
        .filter_map(proc_info)
        .collect()
}

/// A workload started by the harness.
#[derive(Debug, Clone)]
pub struct Workload {
    pub scenario: String,
    pub pid: i32,
    /// The workload's DIR: ready, go, stdout, stderr and its own files.
    pub dir: PathBuf,
    /// Its process tree when it wrote ready: the root first, parents before children.
    pub tree: Vec<ProcInfo>,
}

impl Workload {
    /// Every process of the tree (as recorded at ready), the root first.
    pub fn pids(&self) -> Vec<i32> {
        self.tree.iter().map(|p| p.pid).collect()
    }

    /// Every thread of every process of the tree.
    pub fn tids(&self) -> Vec<i32> {
        self.tree
            .iter()
            .flat_map(|p| p.tids.iter().copied())
            .collect()
    }

    /// The pid a child of a multi-process scenario wrote to DIR/armed-ROLE (e.g. "A1").
    pub fn role_pid(&self, role: &str) -> i32 {
        let path = self.dir.join(format!("armed-{role}"));
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Creates DIR/go: the workload verifies its state and exits.
    pub fn go(&self) {
        fs::write(self.dir.join("go"), b"").expect("create go file");
    }

    /// The name of one of this workload's image files in an image directory.
    pub fn image(&self, img: &Path, kind: &str) -> PathBuf {
        img.join(format!("{kind}-{}.img", self.pid))
    }

    /// The name of the image file of kind `kind` of process `pid` of the tree.
    pub fn image_of(img: &Path, kind: &str, pid: i32) -> PathBuf {
        img.join(format!("{kind}-{pid}.img"))
    }

    /// The syscall a blocking scenario waits in (before a dump, the harness waits until the
    /// workload is inside it).
    pub fn blocking_syscall(&self) -> Option<u32> {
        match self.scenario.as_str() {
            "nanosleep" | "vector" | "all" => Some(SYS_CLOCK_NANOSLEEP),
            "futex" => Some(SYS_FUTEX),
            _ => None,
        }
    }

    /// Asserts the workload printed PASS as its last line.
    pub fn assert_pass(&self) {
        let out = self.stdout();
        assert!(
            out.ends_with("PASS\n"),
            "workload {} (pid {}) did not PASS\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.scenario,
            self.pid,
            out,
            self.stderr()
        );
    }
}

/// The per-test environment: a temporary directory and every process to clean up.
pub struct Harness {
    pub name: String,
    pub dir: PathBuf,
    /// Processes this test spawned directly (workloads, rcr, helpers), not yet reaped.
    children: Vec<Child>,
    /// Pids a restore may have created (they are not our std Child handles).
    restored: Vec<i32>,
    /// Every process of every workload tree this test started (killed and reaped in cleanup
    /// if they still name rcr-workload).
    tracked: Vec<i32>,
    _serial: MutexGuard<'static, ()>,
}

impl Harness {
    pub fn new(name: &str) -> Harness {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        SUBREAPER.call_once(|| {
            // Orphans (a restored task whose rcr exited, a dumped task) come to us, so we can
            // reap them and free their pids at once (PID 1 here reaps slowly).
            nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        });
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("rcr-test-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test directory");
        Harness {
            name: name.to_string(),
            dir,
            children: Vec::new(),
            restored: Vec::new(),
            tracked: Vec::new(),
            _serial: serial,
        }
    }

    /// A path inside the test directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts `rcr-workload SCENARIO DIR` (stdin /dev/null, stdout and stderr to DIR/stdout
    /// and DIR/stderr) and waits for its ready file.
    pub fn spawn(&mut self, scenario: &str) -> Workload {
        self.spawn_args(scenario, &[])
    }

    /// Starts `rcr-workload SCENARIO DIR ARGS...` (e.g. `manyprocs DIR 200`), waits for its
    /// ready file and records its process tree.
    pub fn spawn_args(&mut self, scenario: &str, args: &[&str]) -> Workload {
        self.spawn_env(scenario, args, &[])
    }

    fn child_index(&self, pid: i32) -> Option<usize> {
        self.children.iter().position(|c| c.id() as i32 == pid)
    }

    fn wait_ready(&mut self, w: &Workload) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = w.dir.join("ready");
        loop {
            if let Ok(s) = fs::read_to_string(&ready) {
                let got: i32 = s.trim().parse().expect("ready file holds a pid");
                assert_eq!(got, w.pid, "ready file pid vs spawned pid");
                return;
            }
            let idx = self.child_index(w.pid).expect("workload is our child");
            if let Ok(Some(st)) = self.children[idx].try_wait() {
                self.children.remove(idx);
                panic!(
                    "workload {} exited with {st} before ready\n--- stdout ---\n{}\n--- \
                     stderr ---\n{}",
                    w.scenario,
                    w.stdout(),
                    w.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "workload {} not ready after {READY_TIMEOUT:?}\n--- stdout ---\n{}\n--- \
                     stderr ---\n{}",
                    w.scenario,
                    w.stdout(),
                    w.stderr()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (deadline 30 s) until the workload sits in its blocking syscall, if its scenario
    /// has one, so the dump catches it there.
    pub fn wait_blocked(&self, w: &Workload) {
        if let Some(nr) = w.blocking_syscall() {
            wait_in_syscall(w.pid, nr);
        }
    }

    /// Runs a command with a deadline; stdout and stderr go to files in the test directory.
    /// On timeout the command is killed and the test fails.
    pub fn run<S: AsRef<OsStr>>(&mut self, program: &str, args: &[S], env: &[(&str, &str)]) -> Run {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = Path::new(program)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out_path = self.dir.join(format!("{base}-{n}.out"));
        let err_path = self.dir.join(format!("{base}-{n}.err"));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).expect("create .out"))
            .stderr(fs::File::create(&err_path).expect("create .err"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut shown = vec![base];
        shown.extend(
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned()),
        );
        if !env.is_empty() {
            let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            shown.insert(0, vars.join(" "));
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let pid = child.id() as i32;
        self.children.push(child);
        let deadline = Instant::now() + long_timeout();
        let ended = loop {
            let idx = self.child_index(pid).expect("command is our child");
            if let Some(st) = self.children[idx].try_wait().expect("try_wait") {
                self.children.remove(idx);
                break Ended::from(st);
            }
            if Instant::now() > deadline {
                let mut c = self.children.remove(idx);
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "`{}` did not finish within {:?} (killed)\n--- stderr ---\n{}",
                    shown.join(" "),
                    long_timeout(),
                    fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(POLL);
        };
        Run {
            args: shown,
            ended,
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
            pid: None,
        }
    }

    /// `rcr ARGS...` with extra environment variables.
    pub fn rcr<S: AsRef<OsStr>>(&mut self, args: &[S], env: &[(&str, &str)]) -> Run {
        self.run(RCR, args, env)
    }

    /// `rcr dump -t PID -D IMG EXTRA...`
    pub fn dump(&mut self, w: &Workload, img: &Path, extra: &[&str]) -> Run {
        self.dump_env(w, img, extra, &[])
    }

    /// `rcr dump` with extra environment variables (e.g. RCR_FAULT_INJECT).
    pub fn dump_env(
        &mut self,
        w: &Workload,
        img: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        let mut args = vec![
            "dump".to_string(),
            "-t".to_string(),
            w.pid.to_string(),
            "-D".to_string(),
            img.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.rcr(&args, env)
    }

    /// `rcr restore -D IMG --pidfile FILE EXTRA...` for workload `w` (whose pid the restore
    /// may bring back: it is cleaned up at the end). Run.pid holds the pidfile's pid.
    pub fn restore(&mut self, w: &Workload, img: &Path, extra: &[&str]) -> Run {
        self.restore_env(w, img, extra, &[])
    }

    /// `restore` with extra environment variables for rcr (e.g. a test hook).
    pub fn restore_env(
        &mut self,
        w: &Workload,
        img: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pidfile = self.dir.join(format!("restore-{n}.pid"));
        if !self.restored.contains(&w.pid) {
            self.restored.push(w.pid);
        }
        let mut args = vec![
            "restore".to_string(),
            "-D".to_string(),
            img.to_string_lossy().into_owned(),
            "--pidfile".to_string(),
            pidfile.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut run = self.rcr(&args, env);
        run.pid = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        run
    }

    /// After a dump that killed the workload: reaps the original process (so its pid is free
    /// for the restore) and checks it was killed by a signal.
    pub fn reap_dumped(&mut self, w: &Workload) {
        let idx = self
            .child_index(w.pid)
            .expect("the original workload is still our unreaped child");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.children[idx].try_wait().expect("try_wait") {
                self.children.remove(idx);
                let ended = Ended::from(st);
                assert!(
                    matches!(ended, Ended::Signal(_)),
                    "the dumped workload should have been killed, it ended with {ended:?}\n\
                     --- stdout ---\n{}",
                    w.stdout()
                );
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "workload pid {} still alive 10 s after a dump without --leave-running \
                     (state {:?})",
                    w.pid,
                    proc_state(w.pid)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the workload (the original child or a restored task reparented to us)
    /// exits, and reaps it.
    pub fn wait_exit(&mut self, w: &Workload) -> Ended {
        let deadline = Instant::now() + long_timeout();
        if let Some(idx) = self.child_index(w.pid) {
            loop {
                if let Some(st) = self.children[idx].try_wait().expect("try_wait") {
                    self.children.remove(idx);
                    return Ended::from(st);
                }
                assert!(
                    Instant::now() < deadline,
                    "workload pid {} did not exit within {:?}\n--- stdout ---\n{}",
                    w.pid,
                    long_timeout(),
                    w.stdout()
                );
                std::thread::sleep(POLL);
            }
        }
        let pid = Pid::from_raw(w.pid);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(_, code)) => return Ended::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ended::Signal(sig as i32),
                Ok(_) => {}
                Err(Errno::ECHILD) => {
                    // Not (yet) our child: its parent (rcr) may still be on its way out.
                    assert!(
                        pid_exists(w.pid),
                        "restored pid {} is gone but was not reaped by the test",
                        w.pid
                    );
                }
                Err(e) => panic!("waitpid({}): {e}", w.pid),
            }
            assert!(
                Instant::now() < deadline,
                "restored pid {} did not exit within {:?}\n--- stdout ---\n{}",
                w.pid,
                long_timeout(),
                w.stdout()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Whether the original workload process is still running (our child, not exited).
    pub fn still_running(&mut self, w: &Workload) -> bool {
        match self.child_index(w.pid) {
            Some(idx) => matches!(self.children[idx].try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Asserts the workload process is alive, running or sleeping (not stopped), not traced.
    pub fn assert_untouched_and_running(&mut self, w: &Workload) {
        assert!(
            self.still_running(w),
            "workload pid {} is no longer running\n--- stdout ---\n{}",
            w.pid,
            w.stdout()
        );
        // rcr has exited, so nothing should hold the task; allow it a moment to be scheduled.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = proc_state(w.pid);
            let tracer = tracer_pid(w.pid);
            if matches!(state, Some('S' | 'R')) && tracer == Some(0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "workload pid {} is in state {state:?} with TracerPid {tracer:?}, expected \
                 S or R and 0",
                w.pid
            );
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGCONT to our workload (after checking its cmdline).
    pub fn sigcont(&self, w: &Workload) {
        assert!(names_workload(w.pid), "pid {} is not our workload", w.pid);
        kill(Pid::from_raw(w.pid), Signal::SIGCONT).expect("SIGCONT");
    }

    /// Our children that run rcr-workload in this test's directory (the set a restore must
    /// not grow behind our back).
    pub fn workload_children(&self) -> Vec<i32> {
        let needle = self.dir.to_string_lossy().into_owned();
        own_children()
            .into_iter()
            .filter(|&pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// After a dump that killed a whole tree: reaps every process of it (the root is our
    /// child, or was reparented to us after a restore --detach; the others come to us as
    /// orphans), checks each was killed by a signal (a process that was a zombie at ready
    /// may have any status), and waits until none of its pids and tids is in /proc, so the
    /// restore finds them free. Deadline 10 s.
    pub fn reap_dumped_tree(&mut self, w: &Workload) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ended: Vec<(i32, Ended)> = Vec::new();
        if let Some(idx) = self.child_index(w.pid) {
            loop {
                if let Some(st) = self.children[idx].try_wait().expect("try_wait") {
                    self.children.remove(idx);
                    ended.push((w.pid, Ended::from(st)));
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "workload root {} still alive 10 s after a dump without --leave-running \
                     (state {:?})",
                    w.pid,
                    proc_state(w.pid)
                );
                std::thread::sleep(POLL);
            }
        }
        let mut left: Vec<i32> = w
            .pids()
            .into_iter()
            .filter(|p| !ended.iter().any(|(q, _)| q == p))
            .collect();
        while !left.is_empty() {
            left.retain(|&pid| {
                match waitpid(
                    Pid::from_raw(pid),
                    Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
                ) {
                    Ok(WaitStatus::Exited(_, code)) => {
                        ended.push((pid, Ended::Code(code)));
                        false
                    }
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        ended.push((pid, Ended::Signal(sig as i32)));
                        false
                    }
                    // Not (yet) our child (its parent is still exiting), or gone already
                    // (reaped by its own parent before that died).
                    Err(Errno::ECHILD) => pid_exists(pid),
                    _ => true,
                }
            });
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes of the dumped tree still there 10 s after the dump: {:?}",
                left.iter().map(|&p| (p, proc_info(p))).collect::<Vec<_>>()
            );
            std::thread::sleep(POLL);
        }
        for (pid, how) in &ended {
            let was_zombie = w.tree.iter().any(|p| p.pid == *pid && p.state == 'Z');
            assert!(
                was_zombie || matches!(how, Ended::Signal(_)),
                "process {pid} of the dumped tree should have been killed, it ended with \
                 {how:?}\n--- root stdout ---\n{}",
                w.stdout()
            );
        }
        let tids = w.tids();
        loop {
            let present: Vec<i32> = tids.iter().copied().filter(|&t| pid_exists(t)).collect();
            if present.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pids/tids of the dumped tree still in /proc 10 s after the dump: {present:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits (deadline 5 s) until the tree under the workload's root looks as it did at
    /// ready (same pids, parents, groups, sessions, threads, and states: running or
    /// sleeping, stopped, zombie), and fails naming the differences otherwise.
    pub fn assert_tree_as_at_ready(&self, w: &Workload) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = tree_shape(w.pid);
            if now == w.tree {
                return;
            }
            if Instant::now() > deadline {
                let mut diff = String::new();
                for p in &w.tree {
                    match now.iter().find(|q| q.pid == p.pid) {
                        Some(q) if q == p => {}
                        Some(q) => diff += &format!("\n  was {p:?}\n  now {q:?}"),
                        None => diff += &format!("\n  was {p:?}\n  now missing"),
                    }
                }
                for q in now
                    .iter()
                    .filter(|q| !w.tree.iter().any(|p| p.pid == q.pid))
                {
                    diff += &format!("\n  new {q:?}");
                }
                panic!(
                    "the tree of workload {} (root {}) differs from the one at ready:{diff}",
                    w.scenario, w.pid
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts a helper command in the background (stdin /dev/null, stdout and stderr to
    /// files in the test directory); it is killed in cleanup if still running. Err if the
    /// program cannot be started (e.g. not installed).
    pub fn spawn_helper(&mut self, program: &str, args: &[&str]) -> std::io::Result<i32> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = Path::new(program)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.dir.join(format!("{base}-{n}.out")))?)
            .stderr(fs::File::create(self.dir.join(format!("{base}-{n}.err")))?)
            .spawn()?;
        let pid = child.id() as i32;
        self.children.push(child);
        Ok(pid)
    }

    /// Registers a process the test spawned itself (e.g. on a terminal of its own): it is
    /// killed (if still running) and reaped in cleanup, and wait_helper can wait for it.
    pub fn adopt(&mut self, child: Child) -> i32 {
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }

    /// Records the tree of a workload the test started itself (cleanup kills what still
    /// names this test's rcr-workload) and notes that a restore may bring its root back.
    pub fn track(&mut self, w: &Workload) {
        self.note_pids(w);
        if !self.restored.contains(&w.pid) {
            self.restored.push(w.pid);
        }
    }

    /// Notes the pids of `w`'s tree for the cleanup.
    fn note_pids(&mut self, w: &Workload) {
        for p in w.pids() {
            if !self.tracked.contains(&p) {
                self.tracked.push(p);
            }
        }
    }

    /// Sends `sig` to a helper started by spawn_helper (still our unreaped child).
    pub fn signal_helper(&mut self, pid: i32, sig: Signal) {
        let idx = self.child_index(pid).expect("the helper is our child");
        if let Ok(None) = self.children[idx].try_wait() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// Waits up to `timeout` for a helper to end and reaps it; None if it still runs.
    pub fn wait_helper(&mut self, pid: i32, timeout: Duration) -> Option<Ended> {
        let deadline = Instant::now() + timeout;
        loop {
            let idx = self.child_index(pid)?;
            if let Some(st) = self.children[idx].try_wait().expect("try_wait") {
                self.children.remove(idx);
                return Some(Ended::from(st));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether `pid` is a workload process of this test: its cmdline names rcr-workload and
    /// this test's directory, or (a zombie, whose cmdline is empty) its comm is rcr-workload.
    fn names_our_workload(&self, pid: i32) -> bool {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.is_empty() {
            return is_zombie(pid) && names_workload(pid);
        }
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("rcr-workload") && cmdline.contains(&*self.dir.to_string_lossy())
    }

    /// Orphans that came to us whose cmdline names this test's directory (workload
    /// processes, rcr's helpers).
    fn our_orphans(&self) -> Vec<i32> {
        let needle = self.dir.to_string_lossy().into_owned();
        own_children()
            .into_iter()
            .filter(|&pid| self.child_index(pid).is_none())
            .filter(|&pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .collect()
    }

    fn cleanup(&mut self) {
        // Every process of the workload trees, and whatever lives below our children now.
        let mut doomed: Vec<i32> = self.tracked.clone();
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                for p in descendants(c.id() as i32).into_iter().skip(1) {
                    if !doomed.contains(&p) {
                        doomed.push(p);
                    }
                }
            }
        }
        for &pid in &doomed {
            if self.names_our_workload(pid) && self.child_index(pid).is_none() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        // Restored tasks first (only if the pid still names our workload), then our children.
        for &pid in &self.restored {
            if names_workload(pid) && self.child_index(pid).is_none() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        self.children.clear();
        for &pid in &self.restored {
            reap_foreign(pid);
        }
        doomed.retain(|p| !self.restored.contains(p));
        reap_all(&doomed);
        // Orphans of ours that no list knew (e.g. children of a restored process).
        let orphans = self.our_orphans();
        for &pid in &orphans {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        reap_all(&orphans);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cleanup();
        if std::thread::panicking() {
            eprintln!(
                "test {} failed: its files are kept in {}",
                self.name,
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Reaps the processes of `pids` that are (or become, within 10 s in all) our children,
/// killing those that still name rcr-workload (callers pass only pids of this test); gives up on the ones that are gone or are no
/// workload of ours.
fn reap_all(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = pids.to_vec();
    while !left.is_empty() {
        left.retain(|&pid| {
            match waitpid(
                Pid::from_raw(pid),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::StillAlive) => {
                    if names_workload(pid) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    true
                }
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => false,
                Ok(_) => true,
                // Not our child: keep waiting only while it is a workload (or a zombie)
                // that may still be reparented to us.
                Err(_) => pid_exists(pid) && names_workload(pid),
            }
        });
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("warning: could not reap pids {left:?}");
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// Reaps `pid` if it is (or becomes, within 5 s) our child and dies; gives up if it is gone
/// or is no workload of ours.
fn reap_foreign(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match waitpid(
            Pid::from_raw(pid),
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::StillAlive) => {
                if names_workload(pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return,
            Ok(_) => {}
            Err(_) => {
                // Not our child: done if it is gone or not ours to care about.
                if !pid_exists(pid) || (!names_workload(pid) && !is_zombie(pid)) {
                    return;
                }
            }
        }
        if Instant::now() > deadline {
            eprintln!("warning: could not reap pid {pid}");
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// Whether /proc/PID exists.
pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the process's cmdline (or, if rcr did not restore the argument area, its comm)
/// names rcr-workload.
pub fn names_workload(pid: i32) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains("rcr-workload") || comm.trim() == "rcr-workload"
}

fn is_zombie(pid: i32) -> bool {
    proc_state(pid) == Some('Z')
}

/// The state letter of /proc/PID/stat (R, S, D, T, t, Z...).
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses: the state follows the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// TracerPid from /proc/PID/status.
pub fn tracer_pid(pid: i32) -> Option<i32> {
    status_field(pid, "TracerPid")
}

/// A numeric field of /proc/PID/status.
pub fn status_field(pid: i32, name: &str) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// /proc/PID/maps as text.
pub fn proc_maps(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/maps")).expect("read /proc/PID/maps")
}

/// The pids of this test process's children (all threads).
pub fn own_children() -> Vec<i32> {
    let mut pids = Vec::new();
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                pids.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    pids
}

/// Waits (deadline 30 s) until /proc/PID/syscall shows the task blocked in syscall `nr`.
pub fn wait_in_syscall(pid: i32, nr: u32) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    loop {
        if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/syscall")) {
            if s.split_whitespace().next() == Some(&nr.to_string()) {
                return;
            }
            last = s;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} not blocked in syscall {nr} after {READY_TIMEOUT:?}: /proc/{pid}/syscall \
             is `{}`",
            last.trim()
        );
        std::thread::sleep(POLL);
    }
}

/// The size of a file, panicking with its name if it is missing.
pub fn file_size(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

// ---------------------------------------------------------------------------------------------
// Helpers of tests/task_state.rs.

impl Harness {
    /// Like `spawn_args`, with extra environment variables for the workload (e.g.
    /// RCR_WORKLOAD_CGROUP).
    pub fn spawn_env(&mut self, scenario: &str, args: &[&str], env: &[(&str, &str)]) -> Workload {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = self.dir.join(format!("wl-{scenario}-{n}"));
        self.spawn_in(&dir, scenario, args, env)
    }

    /// Like `spawn_env`, with the workload's DIR at `dir` (e.g. on a filesystem of the
    /// test's own), created if missing.
    pub fn spawn_in(
        &mut self,
        dir: &Path,
        scenario: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Workload {
        let dir = dir.to_path_buf();
        fs::create_dir_all(&dir).expect("create workload directory");
        let stdout = fs::File::create(dir.join("stdout")).expect("create stdout file");
        let stderr = fs::File::create(dir.join("stderr")).expect("create stderr file");
        let mut cmd = Command::new(WORKLOAD);
        cmd.arg(scenario)
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn rcr-workload");
        let pid = child.id() as i32;
        self.children.push(child);
        let mut w = Workload {
            scenario: scenario.to_string(),
            pid,
            dir,
            tree: Vec::new(),
        };
        self.wait_ready(&w);
        w.tree = tree_shape(pid);
        self.note_pids(&w);
        w
    }

    /// `WRAPPER... RCR restore -D IMG --pidfile FILE EXTRA...`: rcr run through another
    /// command (e.g. `prlimit --nofile=64:64 --`), for workload `w` (cleaned up at the end
    /// like after `restore`). Run.pid holds the pidfile's pid.
    pub fn restore_wrapped(
        &mut self,
        w: &Workload,
        img: &Path,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Run {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper command");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pidfile = self.dir.join(format!("restore-{n}.pid"));
        if !self.restored.contains(&w.pid) {
            self.restored.push(w.pid);
        }
        let mut args: Vec<String> = wrapper_args.iter().map(|s| s.to_string()).collect();
        args.extend([
            RCR.to_string(),
            "restore".to_string(),
            "-D".to_string(),
            img.to_string_lossy().into_owned(),
            "--pidfile".to_string(),
            pidfile.to_string_lossy().into_owned(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut run = self.run(program, &args, &[]);
        run.pid = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        run
    }
}

/// The lines of /proc/PID/status whose names are in `names`, in file order.
pub fn status_lines(pid: i32, names: &[&str]) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(name, _)| names.contains(&name))
        })
        .map(str::to_string)
        .collect()
}

/// The hard limit on open files of a process, from /proc/PID/limits.
pub fn hard_nofile(pid: i32) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}
