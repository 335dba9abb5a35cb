//! `rcr dump && rcr restore` back to back, and the races around it: a dump that returns only
//! once the killed tree is dead (its files released), a restore that waits (bounded) for
//! pids still held by zombies, a stale socket file whose inode number a live socket on
//! another filesystem shares, children that exit while the tree is being seized, and the
//! init of a `--pidns` restore that must outlive `--detach` and leave no fd of rcr's behind.

mod common;

use common::{
    Ended, Harness, RCR, Workload, long_timeout, names_workload, own_children, proc_info,
    proc_state,
};
use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every pid and tid of the tree is a zombie or gone: what `rcr dump` (killing the tree)
/// must have reached when it returns.
fn assert_tree_dead(w: &Workload, when: &str) {
    let alive: Vec<(i32, char)> = w
        .tids()
        .into_iter()
        .filter_map(|t| proc_state(t).map(|s| (t, s)))
        .filter(|&(_, s)| s != 'Z')
        .collect();
    assert!(
        alive.is_empty(),
        "{when}: processes of the dumped tree still alive (pid, state): {alive:?}"
    );
}

/// Reaps the dumped tree's zombies, which are all ours (we are the subreaper and the root's
/// parent): what a slow parent does, late.
fn reap_tree(w: &Workload) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in w.pids() {
        loop {
            match waitpid(
                Pid::from_raw(pid),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => break,
                Ok(WaitStatus::StillAlive) => {
                    panic!("pid {pid} of the dumped tree is alive after the dump")
                }
                Ok(_) => {}
                // Not our child: reaped already (a zombie child of a process of the tree
                // that its parent reaped), or not reparented to us yet.
                Err(Errno::ECHILD) if proc_state(pid).is_none() => break,
                Err(Errno::ECHILD) => {}
                Err(e) => panic!("waitpid({pid}): {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} of the dumped tree not reaped within 10 s: {:?}",
                proc_info(pid)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Waits until rcr's log (`-o FILE`) holds `needle`; fails if rcr ends first.
fn wait_for_log(h: &mut Harness, rcr: i32, log: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        if let Some(ended) = h.wait_helper(rcr, Duration::ZERO) {
            panic!("rcr ended with {ended:?} before its log said `{needle}`:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "rcr's log does not say `{needle}` after 30 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `rounds` times: dump (killing the tree), at once restore --detach in the background
/// while the dumped tree is still unreaped (its root's parent, this test, reaps it only once
/// the restore says it waits for it), then the restored tree must look as at ready. At the
/// end the tree verifies itself: PASS.
fn back_to_back(name: &str, scenario: &str, rounds: usize) {
    let mut h = Harness::new(name);
    let w = h.spawn(scenario);
    h.track(&w);
    for round in 0..rounds {
        let img = h.path(&format!("img-{round}"));
        h.dump(&w, &img, &[]).assert_ok_for(&w);
        assert_tree_dead(&w, &format!("round {round}, right after the dump"));
        let log = h.path(&format!("restore-{round}.log"));
        let pidfile = h.path(&format!("restore-{round}.pid"));
        let args = [
            "-o",
            log.to_str().unwrap(),
            "restore",
            "-D",
            img.to_str().unwrap(),
            "--detach",
            "--pidfile",
            pidfile.to_str().unwrap(),
        ];
        let rcr = h.spawn_helper(RCR, &args).expect("start rcr restore");
        // The tree's pids are held by our zombies: the restore waits for them, and says so.
        wait_for_log(&mut h, rcr, &log, "for it to be reaped");
        reap_tree(&w);
        let ended = h
            .wait_helper(rcr, long_timeout())
            .expect("rcr restore did not finish");
        assert_eq!(
            ended,
            Ended::Code(0),
            "round {round}: restore failed:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        let pid: i32 = fs::read_to_string(&pidfile)
            .expect("pidfile")
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, w.pid, "pidfile vs the original root pid");
        h.assert_tree_as_at_ready(&w);
    }
    w.go();
    assert_eq!(h.wait_exit(&w), Ended::Code(0), "root exit status");
    w.assert_pass();
}

/// Two processes, a listener with an accepted and a waiting connection between them.
#[test]
fn back_to_back_unix_tree() {
    back_to_back("back_to_back_unix_tree", "unixtree", 5);
}

/// Every single-process file kind at once, unix listeners and waiting connections included.
#[test]
fn back_to_back_all_file_kinds() {
    back_to_back("back_to_back_all_file_kinds", "files-all", 5);
}

/// Six processes: groups, a session, a zombie and a stopped child.
#[test]
fn back_to_back_tree() {
    back_to_back("back_to_back_tree", "tree", 3);
}

/// `rcr dump` returns only once every process of the killed tree has exited (their files
/// are released then): checked at once (no poll, no sleep) after it returns, on 100
/// processes, 8 times (before the fix, SIGKILL's asynchronous end left some alive in most
/// rounds).
#[test]
fn dump_returns_once_the_tree_is_dead() {
    let mut h = Harness::new("dump_returns_once_the_tree_is_dead");
    for round in 0..8 {
        let w = h.spawn_args("manyprocs", &["100"]);
        let img = h.path(&format!("img-{round}"));
        let status = std::process::Command::new(RCR)
            .args([
                "dump",
                "-t",
                &w.pid.to_string(),
                "-D",
                img.to_str().unwrap(),
            ])
            .status()
            .expect("run rcr dump");
        assert_tree_dead(&w, &format!("round {round}, when rcr dump returned"));
        assert!(status.success(), "rcr dump: {status}");
        h.reap_dumped_tree(&w);
    }
}

/// A pid held by a zombie: `--pid-wait 0` refuses at once, naming it; a short wait ends in
/// the same refusal, naming the option; once the zombie is reaped the restore succeeds.
#[test]
fn pid_held_by_a_zombie() {
    let mut h = Harness::new("pid_held_by_a_zombie");
    let w = h.spawn("files-all");
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    assert_eq!(
        proc_state(w.pid),
        Some('Z'),
        "the dumped root is our zombie"
    );
    let line = h
        .restore(&w, &img, &["--pid-wait", "0"])
        .assert_refused()
        .to_string();
    assert!(
        line.contains(&format!("pid {} ", w.pid)) && line.contains("zombie"),
        "names the pid and the zombie: {line}"
    );
    let t = Instant::now();
    let line = h
        .restore(&w, &img, &["--pid-wait", "0.3"])
        .assert_refused()
        .to_string();
    assert!(
        t.elapsed() >= Duration::from_millis(300) && line.contains("--pid-wait"),
        "waited 0.3 s ({:?}) and names the option: {line}",
        t.elapsed()
    );
    h.reap_dumped(&w);
    w.go();
    h.restore(&w, &img, &[]).assert_ok_for(&w);
    w.assert_pass();
}

/// A tmpfs of the test's own, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf) -> Tmpfs {
        fs::create_dir_all(&path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=4m"),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", path.display()));
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The stale socket file of a dumped listener has the inode number of a live socket on
/// another filesystem (each new tmpfs numbers its inodes from 1): the restore must see that
/// the file is not that socket's (device and inode), remove it and bind again.
#[test]
fn stale_socket_file_on_another_filesystem() {
    let mut h = Harness::new("stale_socket_file_on_another_filesystem");
    let fs_b = Tmpfs::mount(h.path("fs-b"));
    let w = h.spawn_in(&fs_b.0.join("wl"), "unix", &[], &[]);
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);
    let stale = w.dir.join("listen.sock");
    let target = fs::symlink_metadata(&stale)
        .expect("stale listen.sock")
        .ino();
    // A live socket with that inode number on a fresh tmpfs.
    let fs_a = Tmpfs::mount(h.path("fs-a"));
    let mut n = 0;
    let live = loop {
        let path = fs_a.0.join(format!("f{n}"));
        fs::write(&path, b"").unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        assert!(ino < target, "tmpfs inode numbers passed {target} ({ino})");
        n += 1;
        if ino + 1 == target {
            let path = fs_a.0.join("live.sock");
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let got = fs::metadata(&path).unwrap().ino();
            assert_eq!(got, target, "the live socket's inode number");
            break listener;
        }
    };
    w.go();
    h.restore(&w, &img, &[]).assert_ok_for(&w);
    w.assert_pass();
    drop(live);
    drop(fs_a);
    drop(fs_b);
}

/// Reaps our zombie children that are workload processes (children of a churning root,
/// reparented to us when the dump killed it), the root (our own child) excepted.
fn reap_workload_zombies(root: i32) {
    for pid in own_children() {
        if pid != root && proc_state(pid) == Some('Z') && names_workload(pid) {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL));
        }
    }
}

/// A root that keeps replacing short-lived children is dumped 20 times (left running):
/// children that exit while the tree is seized are recorded as zombies, no dump fails.
/// Then dumped (killed) and restored: every child, zombies included, gives back exit status
/// 42 and the root PASSes.
#[test]
fn children_exiting_during_the_dump() {
    let mut h = Harness::new("children_exiting_during_the_dump");
    let w = h.spawn("churn");
    for round in 0..20 {
        let img = h.path(&format!("img-{round}"));
        h.dump(&w, &img, &["--leave-running"]).assert_ok_for(&w);
    }
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);
    reap_workload_zombies(w.pid);
    w.go();
    h.restore(&w, &img, &[]).assert_ok_for(&w);
    w.assert_pass();
}

/// `restore --pidns --detach`: rcr exits 0, and the namespace's init and the tree go on
/// without it; told go, the tree verifies itself and PASSes, and the init exits 0.
#[test]
fn pidns_detach_leaves_the_tree_running() {
    let mut h = Harness::new("pidns_detach_leaves_the_tree_running");
    let w = h.spawn("tree");
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped_tree(&w);
    let r = h.restore(&w, &img, &["--pidns", "--detach"]);
    r.assert_ok_for(&w);
    let root = r.pid.expect("pidfile written");
    let init = proc_info(root)
        .unwrap_or_else(|| panic!("the restored root (pid {root} outside) is gone"))
        .ppid;
    assert!(
        own_children().contains(&init),
        "the init {init} (the root's parent) came to us when rcr exited"
    );
    w.go();
    let deadline = Instant::now() + long_timeout();
    let ended = loop {
        match waitpid(Pid::from_raw(init), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => break Ended::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Ended::Signal(sig as i32),
            Ok(_) => {}
            Err(e) => panic!("waitpid(init {init}): {e}"),
        }
        assert!(Instant::now() < deadline, "the init did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        ended,
        Ended::Code(0),
        "the init ends with the root's status\n--- root stdout ---\n{}",
        w.stdout()
    );
    w.assert_pass();
}

/// No restored process keeps an fd of rcr's (the pipe it reported on) when it resumes:
/// every process of the tree compares its fds with the ones it had. The test hook makes
/// each new process close that pipe only 1 s after its report, so rcr seizes it before:
/// the fd must go all the same. Under --pidns (twice) and without.
#[test]
fn restored_processes_keep_no_fd_of_rcr() {
    let mut h = Harness::new("restored_processes_keep_no_fd_of_rcr");
    for (round, extra) in [["--pidns"].as_slice(), &["--pidns"], &[]]
        .into_iter()
        .enumerate()
    {
        let w = h.spawn("tree");
        let img = h.path(&format!("img-{round}"));
        h.dump(&w, &img, &[]).assert_ok_for(&w);
        h.reap_dumped_tree(&w);
        w.go();
        h.restore_env(
            &w,
            &img,
            extra,
            &[("RCR_TEST_REPORT_CLOSE_DELAY_MS", "1000")],
        )
        .assert_ok_for(&w);
        w.assert_pass();
    }
}
