//! Dump and restore real workloads; the workload itself checks its state after the restore.

mod common;

use common::{Ended, Harness, Workload, file_size, proc_state, tracer_pid};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Start `scenario`, dump it (killing it), reap it, create go, restore it without --detach:
/// rcr exits with the workload's status, which must be 0 (PASS), with the original pid.
fn roundtrip(name: &str, scenario: &str) -> (Harness, Workload, PathBuf) {
    let mut h = Harness::new(name);
    let w = h.spawn(scenario);
    h.wait_blocked(&w);
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);
    w.go();
    let r = h.restore(&w, &img, &[]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original pid");
    w.assert_pass();
    (h, w, img)
}

#[test]
fn memory() {
    roundtrip("memory", "memory");
}

/// The fallback page path (vmsplice into a pipe rcr splices from), used when the task cannot
/// open the image file itself; memory with read-only and PROT_NONE regions.
#[test]
fn pages_through_pipe() {
    for scenario in ["memory", "prot"] {
        let name = format!("pages_through_pipe_{scenario}");
        let mut h = Harness::new(&name);
        let w = h.spawn(scenario);
        h.wait_blocked(&w);
        let img = h.path("img");
        h.dump_env(&w, &img, &[], &[("RCR_PAGES_VIA_PIPE", "1")])
            .assert_ok_for(&w);
        h.reap_dumped(&w);
        w.go();
        let r = h.restore(&w, &img, &[]);
        r.assert_ok_for(&w);
        w.assert_pass();
    }
}

#[test]
fn sparse() {
    let (_h, w, img) = roundtrip("sparse", "sparse");
    let pages = file_size(&w.image(&img, "pages"));
    assert!(
        pages < 1 << 20,
        "pages image of a 64 MiB mapping with 5 pages written is {pages} bytes (>= 1 MiB)"
    );
}

#[test]
fn prot() {
    roundtrip("prot", "prot");
}

#[test]
fn filemap() {
    roundtrip("filemap", "filemap");
}

#[test]
fn brk() {
    roundtrip("brk", "brk");
}

#[test]
fn tls() {
    roundtrip("tls", "tls");
}

#[test]
fn vector() {
    roundtrip("vector", "vector");
}

#[test]
fn nanosleep() {
    roundtrip("nanosleep", "nanosleep");
}

#[test]
fn futex() {
    roundtrip("futex", "futex");
}

#[test]
fn stdio() {
    let (_h, w, _img) = roundtrip("stdio", "stdio");
    // fd 1 kept its offset: PASS follows the earlier output, nothing overwritten.
    assert_eq!(
        w.stdout(),
        format!("stdio: pid {} before dump\nPASS\n", w.pid),
        "stdout of the restored workload"
    );
}

#[test]
fn all() {
    let (_h, w, _img) = roundtrip("all", "all");
    assert!(
        w.stdout()
            .starts_with(&format!("stdio: pid {} before dump\n", w.pid)),
        "stdout of the restored workload: {}",
        w.stdout()
    );
}

/// Dump, restore detached, dump the restored task again, restore again, then PASS.
#[test]
fn dump_restore_twice() {
    let mut h = Harness::new("dump_restore_twice");
    let w = h.spawn("all");
    h.wait_blocked(&w);
    let img1 = h.path("img1");
    h.dump(&w, &img1, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);

    let r = h.restore(&w, &img1, &["--detach"]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original pid");
    // The restored task runs on its own (its rcr has exited) and waits for go again.
    h.wait_blocked(&w);

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

/// --leave-running: the original keeps running untouched and PASSes on go.
#[test]
fn leave_running() {
    let mut h = Harness::new("leave_running");
    let w = h.spawn("all");
    h.wait_blocked(&w);
    let img = h.path("img");
    h.dump(&w, &img, &["--leave-running"]).assert_ok_for(&w);
    assert!(img.join("inventory.img").exists(), "inventory.img written");
    h.assert_untouched_and_running(&w);
    w.go();
    assert_eq!(h.wait_exit(&w), Ended::Code(0), "workload exit status");
    w.assert_pass();
}

/// --leave-stopped: the task is stopped (state T, not traced) after the dump; SIGCONT and go
/// make it PASS.
#[test]
fn leave_stopped() {
    let mut h = Harness::new("leave_stopped");
    let w = h.spawn("all");
    h.wait_blocked(&w);
    let img = h.path("img");
    h.dump(&w, &img, &["--leave-stopped"]).assert_ok_for(&w);
    assert!(h.still_running(&w), "the workload must still exist");
    // rcr has exited: the stop must be in place (allow the state a moment to show).
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_state(w.pid) != Some('T') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(proc_state(w.pid), Some('T'), "state after --leave-stopped");
    assert_eq!(
        tracer_pid(w.pid),
        Some(0),
        "TracerPid after --leave-stopped"
    );
    h.sigcont(&w);
    w.go();
    assert_eq!(h.wait_exit(&w), Ended::Code(0), "workload exit status");
    w.assert_pass();
}
