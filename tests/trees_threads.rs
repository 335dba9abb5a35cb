//! Process trees and multi-threaded processes: dump and restore whole trees; every process
//! and thread of the workload checks its own state after the restore and the root prints
//! PASS only if all of them passed.

mod common;

use common::{Ended, Harness, Workload, pid_exists, proc_info, tracer_pid};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

/// Checks the dump wrote pstree.img, and core-PID.img and mm-PID.img for every process of
/// the tree that is not a zombie (a zombie may live in pstree.img alone).
fn assert_tree_images(w: &Workload, img: &Path) {
    assert!(
        img.join("pstree.img").exists(),
        "pstree.img missing in {}",
        img.display()
    );
    for p in w.tree.iter().filter(|p| p.state != 'Z') {
        for kind in ["core", "mm"] {
            let f = Workload::image_of(img, kind, p.pid);
            assert!(f.exists(), "{} missing", f.display());
        }
    }
}

/// Spawn (the tree must have `procs` processes and `tids` threads in all), dump (killing
/// the tree), reap the whole tree, go, restore without --detach: rcr exits with the root's
/// status, which must be 0, and the root printed PASS.
fn roundtrip(name: &str, scenario: &str, args: &[&str], procs: usize, tids: usize) {
    let mut h = Harness::new(name);
    let w = h.spawn_args(scenario, args);
    assert_eq!(w.tree.len(), procs, "processes at ready: {:#?}", w.tree);
    assert_eq!(w.tids().len(), tids, "threads at ready: {:?}", w.tids());
    let img = h.path("img");
    let t = Instant::now();
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    let dumped = t.elapsed();
    assert_tree_images(&w, &img);
    h.reap_dumped_tree(&w);
    w.go();
    let t = Instant::now();
    let r = h.restore(&w, &img, &[]);
    let restored = t.elapsed();
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original root pid");
    w.assert_pass();
    eprintln!(
        "{name}: {} processes, {} threads: dump {dumped:?}, restore and verification \
         {restored:?}",
        w.tree.len(),
        w.tids().len()
    );
}

/// Root, children A and B, grandchild A1 (own process group), B a session leader, a zombie
/// child (exit 7) and a stopped child.
#[test]
fn tree() {
    roundtrip("tree", "tree", &[], 6, 6);
}

/// One process, eight threads in eight different states.
#[test]
fn threads() {
    roundtrip("threads", "threads", &[], 1, 9);
}

/// A MAP_SHARED anonymous region shared by parent and child.
#[test]
fn shared() {
    roundtrip("shared", "shared", &[], 2, 2);
}

#[test]
fn two_hundred_processes() {
    roundtrip("two_hundred_processes", "manyprocs", &["200"], 200, 200);
}

#[test]
fn five_hundred_threads() {
    roundtrip("five_hundred_threads", "manythreads", &["500"], 1, 501);
}

/// Dump the tree, restore it detached (the tree must look exactly as before: pids, parents,
/// groups, sessions, stopped and zombie states), dump the restored tree, restore again,
/// then PASS.
#[test]
fn tree_restored_twice() {
    let mut h = Harness::new("tree_restored_twice");
    let w = h.spawn("tree");
    let img1 = h.path("img1");
    h.dump(&w, &img1, &[]).assert_ok_for(&w);
    h.reap_dumped_tree(&w);

    let r = h.restore(&w, &img1, &["--detach"]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original root pid");
    // rcr has exited: the restored root is our child now (we are its subreaper), as the
    // original was.
    h.assert_tree_as_at_ready(&w);

    let img2 = h.path("img2");
    h.dump(&w, &img2, &[]).assert_ok_for(&w);
    assert_tree_images(&w, &img2);
    h.reap_dumped_tree(&w);

    w.go();
    let r = h.restore(&w, &img2, &[]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original root pid");
    w.assert_pass();
}

/// A tree where one process (the grandchild A1) is traced by strace: the dump is refused
/// with one `rcr: ` line naming that pid, and the tree is left exactly as it was; once
/// strace is gone it PASSes on go.
#[test]
fn traced_task_is_refused() {
    let mut h = Harness::new("traced_task_is_refused");
    let w = h.spawn("tree");
    let a1 = w.role_pid("A1");
    let a1s = a1.to_string();
    let strace = match h.spawn_helper("strace", &["-p", &a1s, "-o", "/dev/null"]) {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("SKIPPED traced_task_is_refused: cannot run strace: {e}");
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while tracer_pid(a1) != Some(strace) {
        if let Some(ended) = h.wait_helper(strace, Duration::ZERO) {
            panic!("strace -p {a1} ended with {ended:?} before attaching");
        }
        assert!(
            Instant::now() < deadline,
            "strace did not attach to {a1} within 30 s (TracerPid {:?})",
            tracer_pid(a1)
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let img = h.path("img");
    let r = h.dump(&w, &img, &[]);
    let line = r.assert_refused();
    assert!(line.contains(&a1s), "the message names pid {a1}: {line}");

    // Nothing was touched: every process is there, in its state, and only A1 is traced
    // (still by strace).
    for p in &w.tree {
        let now = proc_info(p.pid)
            .unwrap_or_else(|| panic!("pid {} is gone after the refused dump", p.pid));
        let want_tracer = if p.pid == a1 { strace } else { 0 };
        assert_eq!(
            tracer_pid(p.pid),
            Some(want_tracer),
            "TracerPid of {} after the refused dump",
            p.pid
        );
        let state_ok = now.state == p.state || (p.pid == a1 && now.state == 't');
        assert!(
            state_ok && now.ppid == p.ppid && now.pgrp == p.pgrp && now.sid == p.sid,
            "pid {} after the refused dump: {now:?}, at ready {p:?}",
            p.pid
        );
    }

    h.signal_helper(strace, Signal::SIGTERM);
    if h.wait_helper(strace, Duration::from_secs(10)).is_none() {
        h.signal_helper(strace, Signal::SIGKILL);
        h.wait_helper(strace, Duration::from_secs(10))
            .expect("strace did not die on SIGKILL");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while tracer_pid(a1) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "TracerPid of {a1} still {:?} after strace exited",
            tracer_pid(a1)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    h.assert_tree_as_at_ready(&w);
    assert!(
        w.pids().iter().all(|&p| pid_exists(p)),
        "a process of the tree is gone"
    );

    w.go();
    assert_eq!(h.wait_exit(&w), Ended::Code(0), "root exit status");
    w.assert_pass();
}

/// `--pidns`: the tree comes back inside a new PID namespace under rcr's init, with its
/// original pids inside: each process checks getpid/getppid/getpgrp/getsid itself, the
/// zombie and the stopped child included; rcr exits with the root's status.
#[test]
fn tree_in_new_pid_namespace() {
    let mut h = Harness::new("tree_in_new_pid_namespace");
    let w = h.spawn_args("tree", &[]);
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped_tree(&w);
    w.go();
    let r = h.restore(&w, &img, &["--pidns"]);
    r.assert_ok_for(&w);
    assert!(r.pid.is_some(), "pidfile written");
    w.assert_pass();
}
