//! Terminals: a pty pair inside the tree (settings, window size, packet mode, exclusive
//! mode, data in flight both ways, the controlling terminal of a session and its foreground
//! group), and a shell job dumped with --shell-job and restored on another terminal. The
//! workload checks itself after the restore (src/bin/rcr-workload/tty.rs).
//!
//! Only ptys this test creates are used; every process it starts, and every restored one,
//! is killed and reaped at the end (Harness cleanup), also on failure.

mod common;

use common::{Ended, Harness, RCR, WORKLOAD, Workload, pid_exists, tree_shape};
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, poll};
use nix::pty::{PtyMaster, openpty, posix_openpt, ptsname_r};
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `ttys` tree: root, child (session leader with the pty as controlling terminal),
/// grandchild (the foreground group).
const TTYS_PROCS: usize = 3;

/// Starts the `ttys` tree and checks it has its three processes.
fn spawn_ttys(h: &mut Harness) -> Workload {
    let w = h.spawn("ttys");
    assert_eq!(
        w.tree.len(),
        TTYS_PROCS,
        "processes at ready: {:#?}",
        w.tree
    );
    w
}

/// The index N of the workload root's pty (its master is fd 10), from fdinfo.
fn pty_index_of(w: &Workload) -> u32 {
    let info = fs::read_to_string(format!("/proc/{}/fdinfo/10", w.pid)).expect("fdinfo of fd 10");
    info.lines()
        .find_map(|l| l.strip_prefix("tty-index:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tty-index in fdinfo of fd 10: {info}"))
}

/// Opens /dev/ptmx until this test holds pty `index` (the others it got on the way too);
/// None if a pty beyond it came first (someone else holds it).
fn hold_pty(index: u32) -> Option<Vec<PtyMaster>> {
    let mut held = Vec::new();
    loop {
        let ptmx = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .expect("open /dev/ptmx");
        let n: u32 = ptsname_r(&ptmx)
            .expect("ptsname")
            .strip_prefix("/dev/pts/")
            .and_then(|n| n.parse().ok())
            .expect("a /dev/pts/N name");
        held.push(ptmx);
        if n == index {
            return Some(held);
        }
        if n > index {
            return None;
        }
    }
}

/// Dump, then restore while this test holds the pty's index (refused, naming it, nothing
/// created), then restore for real: the workload PASSes.
#[test]
fn pty_pair_in_tree() {
    let mut h = Harness::new("pty_pair_in_tree");
    let w = spawn_ttys(&mut h);
    let index = pty_index_of(&w);
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped_tree(&w);
    w.go();
    match hold_pty(index) {
        Some(held) => {
            let refused = h.restore(&w, &img, &[]);
            let line = refused.assert_refused();
            assert!(
                line.contains(&format!("/dev/pts/{index}")) && line.contains("in use"),
                "the refusal names the pty: {line}"
            );
            assert!(
                !pid_exists(w.pid),
                "a refused restore created pid {}",
                w.pid
            );
            drop(held);
        }
        None => eprintln!("pty {index} was taken by someone else: refusal not checked"),
    }
    let r = h.restore(&w, &img, &[]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original root pid");
    w.assert_pass();
}

/// The same tree restored into a new PID namespace: the session leader takes its terminal
/// and sets the foreground group with the pids it knows.
#[test]
fn pty_pair_pidns() {
    let mut h = Harness::new("pty_pair_pidns");
    let w = spawn_ttys(&mut h);
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped_tree(&w);
    w.go();
    let r = h.restore(&w, &img, &["--pidns"]);
    r.assert_ok_for(&w);
    assert!(r.pid.is_some(), "pidfile written");
    w.assert_pass();
}

/// --leave-running: the original must still PASS (the dump consumed none of the data in
/// flight and left the settings as they were); then the image restores and PASSes too.
#[test]
fn pty_pair_leave_running() {
    let mut h = Harness::new("pty_pair_leave_running");
    let w = spawn_ttys(&mut h);
    let img = h.path("img");
    h.dump(&w, &img, &["--leave-running"]).assert_ok_for(&w);
    h.assert_tree_as_at_ready(&w);
    w.go();
    assert_eq!(
        h.wait_exit(&w),
        Ended::Code(0),
        "the original's exit status"
    );
    w.assert_pass();

    for e in fs::read_dir(&w.dir).expect("read the workload directory") {
        let e = e.expect("directory entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("result-") || name == "g-input-done" || name == "go" {
            fs::remove_file(e.path()).expect("remove a file of the first run");
        }
    }
    // The original's PASS grew its stdout: one byte, overwritten by the restored PASS.
    fs::write(w.dir.join("stdout"), b"x").expect("rewrite the workload's stdout");
    w.go();
    let r = h.restore(&w, &img, &["--ignore-file-size"]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original root pid");
    w.assert_pass();
}

/// A dump that fails after the pty's data in flight was read (fault injected once the
/// root, whose fd 10 names the pty first, is infected) leaves the tree running as it was:
/// it PASSes on go with every byte still there.
#[test]
fn pty_pair_failed_dump() {
    let mut h = Harness::new("pty_pair_failed_dump");
    let w = spawn_ttys(&mut h);
    let img = h.path("img");
    let failed = h.dump_env(&w, &img, &[], &[("RCR_FAULT_INJECT", "after-infect")]);
    let line = failed.assert_refused();
    assert!(line.contains("injected fault"), "the failure: {line}");
    h.assert_tree_as_at_ready(&w);
    w.go();
    assert_eq!(
        h.wait_exit(&w),
        Ended::Code(0),
        "the original's exit status"
    );
    w.assert_pass();
}

/// A new pty of this test: (master, slave, /dev/pts/N), both close-on-exec.
fn new_pty() -> (OwnedFd, OwnedFd, String) {
    let pty = openpty(None, None).expect("openpty");
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("FD_CLOEXEC");
    }
    let name = fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .expect("readlink of the pty slave")
        .to_string_lossy()
        .into_owned();
    (pty.master, pty.slave, name)
}

/// A command running `program` on the terminal `slave` (fds 0, 1, 2), leading a session of
/// its own with that terminal as its controlling terminal (util-linux `setsid --ctty`, which
/// execs the program in place: the pid is the program's).
fn on_terminal(program: &str, slave: &OwnedFd) -> Command {
    let io = || Stdio::from(slave.try_clone().expect("dup the pty slave"));
    let mut cmd = Command::new("setsid");
    cmd.arg("--ctty").arg(program);
    cmd.stdin(io()).stdout(io()).stderr(io());
    cmd
}

/// Reads what the master has for up to `ms` milliseconds into `out`.
fn read_master(master: &OwnedFd, out: &mut Vec<u8>, ms: u16) {
    let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
    if !matches!(poll(&mut fds, ms), Ok(n) if n > 0) {
        return;
    }
    let mut buf = [0u8; 4096];
    if let Ok(n) = nix::unistd::read(master, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
}

fn wait_file(path: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} not written within 30 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A job of a tiny shell on a pty of this test is refused without --shell-job (naming the
/// fd and the terminal), dumped with it, and restored by `rcr restore --shell-job` running
/// on another pty: the job finds itself on the new terminal, in the foreground, reads a line
/// typed there and writes there.
#[test]
fn shell_job() {
    let mut h = Harness::new("shell_job");
    let dir = h.path("wl");
    fs::create_dir_all(&dir).expect("workload directory");
    let (master1, slave1, tty1) = new_pty();
    let mut shell = on_terminal(WORKLOAD, &slave1);
    shell
        .arg("ttyshell")
        .arg(&dir)
        .env("RCR_WORKLOAD_NO_SETSID", "1");
    let shell_pid = h.adopt(shell.spawn().expect("spawn the shell"));
    drop(slave1);
    let job: i32 = wait_file(&dir.join("ready"), "the job")
        .trim()
        .parse()
        .expect("ready holds a pid");
    let w = Workload {
        scenario: "ttyjob".into(),
        pid: job,
        dir: dir.clone(),
        tree: tree_shape(job),
    };
    h.track(&w);
    assert_eq!(w.tree.len(), 1, "the job alone: {:#?}", w.tree);

    let refused = h.dump(&w, &h.path("img-refused"), &[]);
    let line = refused.assert_refused();
    assert!(
        line.contains(&format!("pid {job} fd 0"))
            && line.contains(&tty1)
            && line.contains("--shell-job"),
        "the refusal names the pid, the fd, the terminal and the option: {line}"
    );
    h.assert_tree_as_at_ready(&w);

    let img = h.path("img");
    h.dump(&w, &img, &["--shell-job"]).assert_ok_for(&w);
    // The shell reaps its killed job and exits.
    let shell_end = h.wait_helper(shell_pid, Duration::from_secs(10));
    assert_eq!(
        shell_end,
        Some(Ended::Code(128 + libc::SIGKILL)),
        "the shell's end"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_exists(job) {
        assert!(
            Instant::now() < deadline,
            "pid {job} still exists after the dump"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(master1);

    // Without --shell-job (and without a terminal) the restore is refused before anything
    // is created.
    let refused = h.restore(&w, &img, &[]);
    let line = refused.assert_refused();
    assert!(
        line.contains("--shell-job"),
        "the refusal names the option: {line}"
    );
    assert!(!pid_exists(job), "a refused restore created pid {job}");

    let (master2, slave2, tty2) = new_pty();
    fs::write(dir.join("newtty"), format!("{tty2}\n")).expect("write newtty");
    let pidfile = h.path("restore.pid");
    let mut restore = on_terminal(RCR, &slave2);
    restore
        .arg("restore")
        .arg("-D")
        .arg(&img)
        .arg("--shell-job")
        .arg("--pidfile")
        .arg(&pidfile);
    let rcr_pid = h.adopt(restore.spawn().expect("spawn rcr restore"));
    drop(slave2);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pidfile.exists() {
        read_master(&master2, &mut seen, 10);
        if let Some(end) = h.wait_helper(rcr_pid, Duration::ZERO) {
            panic!(
                "rcr restore ended with {end:?} before the job ran; its terminal showed:\n{}",
                String::from_utf8_lossy(&seen)
            );
        }
        assert!(Instant::now() < deadline, "no pidfile within 60 s");
    }
    assert_eq!(
        wait_file(&pidfile, "rcr restore").trim(),
        job.to_string(),
        "pidfile vs the job's pid"
    );
    w.go();
    let mut typing = fs::File::from(master2.try_clone().expect("dup the master"));
    typing.write_all(b"typed-line\n").expect("type a line");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        read_master(&master2, &mut seen, 50);
        let text = String::from_utf8_lossy(&seen);
        if text.contains("PASS") || text.contains("FAIL") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no PASS/FAIL on the new terminal within 60 s; it showed:\n{text}"
        );
    }
    let end = h.wait_helper(rcr_pid, Duration::from_secs(30));
    read_master(&master2, &mut seen, 10);
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        text.contains("job-output\r\n") && text.contains("PASS\r\n") && !text.contains("FAIL"),
        "the job's output on the new terminal:\n{text}"
    );
    assert_eq!(
        end,
        Some(Ended::Code(0)),
        "rcr restore's exit (the job's status)"
    );
}
