//! Restore of a task's own kernel state: signals (dispositions, masks, pending signals with
//! their siginfo, sigaltstack), itimers and POSIX timers, credentials and capabilities,
//! seccomp filters, rlimits, scheduling, prctl state and the cgroup. The `taskstate`
//! workload (see src/bin/rcr-workload/taskstate.rs for the exact values) sets all of it up
//! as root, drops to uid 1000, and checks it itself after go.
//!
//! When a cgroup v2 hierarchy is mounted and writable, each test puts the workload into a
//! cgroup of its own (created here, removed at the end), so the restore must move the
//! restored task there.

mod common;

use common::{Ended, Harness, Workload, hard_nofile, pid_exists, status_lines};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A cgroup v2 directory for one test: created under the cgroup of this test process,
/// removed (once its processes are gone) when dropped. Declare it before the Harness, so the
/// Harness (which kills and reaps every process) is dropped first.
struct TestCgroup {
    path: PathBuf,
    /// The path as /proc/PID/cgroup shows it (`0::/...`).
    shown: String,
}

impl TestCgroup {
    /// None (with a note) when no writable cgroup v2 hierarchy is mounted.
    fn create(name: &str) -> Option<TestCgroup> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        // Fields: id parent major:minor root mountpoint options... - fstype source super.
        let mount = mountinfo.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_string))?
        });
        let Some(mount) = mount else {
            eprintln!("note: no cgroup v2 hierarchy mounted: the cgroup is not tested");
            return None;
        };
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))?;
        let leaf = format!("rcr-test-{name}-{}", std::process::id());
        let rel = format!("{}/{leaf}", own.trim_end_matches('/'));
        let path = Path::new(&mount).join(rel.trim_start_matches('/'));
        if let Err(e) = fs::create_dir(&path) {
            eprintln!(
                "note: cannot create cgroup {}: {e}: the cgroup is not tested",
                path.display()
            );
            return None;
        }
        Some(TestCgroup {
            path,
            shown: format!("0::{rel}"),
        })
    }

    fn env(cg: &Option<TestCgroup>) -> Vec<(&'static str, String)> {
        cg.iter()
            .map(|c| ("RCR_WORKLOAD_CGROUP", c.path.to_string_lossy().into_owned()))
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup can be removed once no task is in it (a task that just died may still
        // count for a moment).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!(
                        "warning: could not remove cgroup {}: {e}",
                        self.path.display()
                    );
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Starts `taskstate` (in the test's cgroup, if any) and checks, from outside, the cgroup it
/// is in.
fn spawn_taskstate(h: &mut Harness, cg: &Option<TestCgroup>) -> Workload {
    let env = TestCgroup::env(cg);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let w = h.spawn_env("taskstate", &[], &env);
    assert_eq!(w.tree.len(), 1, "one process at ready: {:#?}", w.tree);
    assert_eq!(w.tids().len(), 2, "two threads at ready: {:?}", w.tids());
    assert_cgroup(&w, cg);
    w
}

fn assert_cgroup(w: &Workload, cg: &Option<TestCgroup>) {
    if let Some(cg) = cg {
        let now = fs::read_to_string(format!("/proc/{}/cgroup", w.pid)).unwrap_or_default();
        assert!(
            now.lines().any(|l| l == cg.shown),
            "pid {} is not in cgroup `{}`: /proc/PID/cgroup is\n{now}",
            w.pid,
            cg.shown
        );
    }
}

/// Lines of /proc/PID/status (the main thread) a restore must bring back as they were.
/// SigPnd and ShdPnd are left out: after `restore --detach` the exit of rcr sends the
/// workload its PR_SET_PDEATHSIG signal, which it handles.
const STATUS: [&str; 18] = [
    "Name",
    "Umask",
    "Uid",
    "Gid",
    "Groups",
    "SigBlk",
    "SigIgn",
    "SigCgt",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "Cpus_allowed_list",
    "THP_enabled",
];

/// Dump (killing it), reap, go, restore without --detach: rcr exits with the workload's
/// status, 0, and the workload printed PASS.
#[test]
fn task_state() {
    let cg = TestCgroup::create("task_state");
    let mut h = Harness::new("task_state");
    let w = spawn_taskstate(&mut h, &cg);
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);
    w.go();
    let r = h.restore(&w, &img, &[]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original pid");
    w.assert_pass();
}

/// A dump with --leave-running must not change the task's state (no pending signal
/// consumed, timers and credentials as they were): it PASSes on go.
#[test]
fn task_state_leave_running() {
    let cg = TestCgroup::create("task_state_leave_running");
    let mut h = Harness::new("task_state_leave_running");
    let w = spawn_taskstate(&mut h, &cg);
    let status = status_lines(w.pid, &STATUS);
    let img = h.path("img");
    h.dump(&w, &img, &["--leave-running"]).assert_ok_for(&w);
    h.assert_untouched_and_running(&w);
    assert_eq!(
        status_lines(w.pid, &STATUS),
        status,
        "/proc/PID/status after dump --leave-running"
    );
    w.go();
    assert_eq!(h.wait_exit(&w), Ended::Code(0), "workload exit status");
    w.assert_pass();
}

/// Dump, restore --detach (the restored task looks as at ready from outside: threads,
/// cgroup, ids, capabilities, signal sets), dump the restored task, restore again, PASS.
#[test]
fn task_state_twice() {
    let cg = TestCgroup::create("task_state_twice");
    let mut h = Harness::new("task_state_twice");
    let w = spawn_taskstate(&mut h, &cg);
    let status = status_lines(w.pid, &STATUS);
    let img1 = h.path("img1");
    h.dump(&w, &img1, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);

    let r = h.restore(&w, &img1, &["--detach"]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original pid");
    h.assert_tree_as_at_ready(&w);
    assert_cgroup(&w, &cg);
    assert_eq!(
        status_lines(w.pid, &STATUS),
        status,
        "/proc/PID/status of the restored task"
    );

    let img2 = h.path("img2");
    h.dump(&w, &img2, &[]).assert_ok_for(&w);
    // The restored task was reparented to us: reap it so its pid is free.
    let ended = h.wait_exit(&w);
    assert!(
        matches!(ended, Ended::Signal(_)),
        "the dumped (restored) task should have been killed, it ended with {ended:?}"
    );

    w.go();
    let r = h.restore(&w, &img2, &[]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original pid");
    w.assert_pass();
}

/// A task whose state the restoring rcr cannot give it is refused before any process is
/// created. CAP_SYS_RESOURCE is missing from every bounding set here, so an rcr whose own
/// hard RLIMIT_NOFILE is below the task's cannot raise it: run `rcr restore` under
/// `prlimit --nofile=64:64`. Expect one `rcr: ` line naming the pid and RLIMIT_NOFILE, no
/// process with that pid, and a normal restore afterwards that PASSes.
#[test]
fn refused_capability_not_available() {
    let mut h = Harness::new("refused_capability_not_available");
    let w = h.spawn("prot");
    let hard = hard_nofile(w.pid).expect("hard RLIMIT_NOFILE of the workload");
    assert!(
        hard > 64,
        "the workload's hard RLIMIT_NOFILE is {hard}: this test needs more than 64"
    );
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);
    // go exists, so a restore that wrongly succeeded would finish (and be noticed) at once.
    w.go();
    let r = h.restore_wrapped(&w, &img, &["prlimit", "--nofile=64:64", "--"], &[]);
    if r.stderr.starts_with("prlimit:") {
        eprintln!("SKIPPED: prlimit cannot run rcr: {}", r.stderr);
        return;
    }
    let line = r.assert_refused();
    assert!(
        line.contains(&w.pid.to_string()) && line.contains("RLIMIT_NOFILE"),
        "the message names pid {} and RLIMIT_NOFILE: {line}",
        w.pid
    );
    assert!(
        !pid_exists(w.pid),
        "pid {} exists after a refused restore (state {:?})",
        w.pid,
        common::proc_state(w.pid)
    );
    assert!(
        h.workload_children().is_empty(),
        "a refused restore left workload processes: {:?}",
        h.workload_children()
    );
    let r = h.restore(&w, &img, &[]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original pid");
    w.assert_pass();
}
