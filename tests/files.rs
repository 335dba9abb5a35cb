//! Open files beyond regular ones: pipes (with their data, sizes and flags, split between
//! processes), file descriptions shared by dup and by fork, eventfds, memfds (also mapped
//! MAP_SHARED). The workload checks every fd itself after the restore (see
//! src/bin/rcr-workload/files.rs for the fd numbers and values). Kinds rcr does not support
//! make the dump fail with one `rcr: ` line, leaving the task untouched.

mod common;

use common::{Ended, Harness, proc_maps};
use std::fs;

/// Spawn (the tree must have `procs` processes), dump (killing the tree), reap the whole
/// tree, go, restore without --detach: rcr exits with the root's status, which must be 0,
/// and the root printed PASS.
fn roundtrip(name: &str, scenario: &str, procs: usize) {
    let mut h = Harness::new(name);
    let w = h.spawn(scenario);
    assert_eq!(w.tree.len(), procs, "processes at ready: {:#?}", w.tree);
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped_tree(&w);
    w.go();
    let r = h.restore(&w, &img, &[]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original root pid");
    w.assert_pass();
}

/// Dump with --leave-running: the tree goes on untouched and PASSes on go (so the dump
/// consumed nothing: pipe data, eventfd counters, offsets). Then, with the originals gone,
/// restore that image (a second run of the verification, from the state at the dump) and
/// PASS again.
fn leave_running_then_restore(name: &str, scenario: &str, procs: usize) {
    let mut h = Harness::new(name);
    let w = h.spawn(scenario);
    assert_eq!(w.tree.len(), procs, "processes at ready: {:#?}", w.tree);
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

    // The root reaped its children before exiting; the restored run must write new result
    // files and a new PASS.
    for e in fs::read_dir(&w.dir).expect("read the workload directory") {
        let e = e.expect("directory entry");
        if e.file_name().to_string_lossy().starts_with("result-") {
            fs::remove_file(e.path()).expect("remove a result file");
        }
    }
    // The original's PASS made its stdout larger than at the dump: the restore is refused,
    // naming the file, unless the user says it is fine.
    let refused = h.restore(&w, &img, &[]);
    let line = refused.assert_refused();
    assert!(
        line.contains("stdout") && line.contains("--ignore-file-size"),
        "the refusal names the file and the way out: {line}"
    );
    // One byte, which the restored run's PASS (written at the dumped offset 0) overwrites.
    fs::write(w.dir.join("stdout"), b"x").expect("rewrite the workload's stdout");
    let r = h.restore(&w, &img, &["--ignore-file-size"]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original root pid");
    w.assert_pass();
}

/// Pipe A (fds 10/11, in one process, data unread, 256 KiB, write end O_NONBLOCK), pipe B
/// (write end fd 12 in the root, read end fd 13 in the child, 100 KiB unread, 1 MiB), pipe D
/// (read end fd 14 only, "bye" then EOF).
#[test]
fn pipes() {
    roundtrip("pipes", "pipes", 2);
}

/// One description at fds 10 and 20 in the root and in its child, moved by the child's read
/// and seen moved by the root; another description of the same file (fd 21) stays apart.
#[test]
fn shared_file_description() {
    roundtrip("shared_file_description", "sharedfd", 2);
}

/// Counter 42 (O_NONBLOCK), a semaphore with counter 3, a blocking one with counter 0.
#[test]
fn eventfd() {
    roundtrip("eventfd", "eventfd", 1);
}

/// A sealed memfd (name, size, content, offset, seals) mapped MAP_SHARED, and a plain one.
#[test]
fn memfd() {
    roundtrip("memfd", "memfd", 1);
}

#[test]
fn pipes_leave_running() {
    leave_running_then_restore("pipes_leave_running", "pipes", 2);
}

#[test]
fn shared_file_description_leave_running() {
    leave_running_then_restore("shared_file_description_leave_running", "sharedfd", 2);
}

#[test]
fn eventfd_leave_running() {
    leave_running_then_restore("eventfd_leave_running", "eventfd", 1);
}

#[test]
fn memfd_leave_running() {
    leave_running_then_restore("memfd_leave_running", "memfd", 1);
}

/// A dump of `scenario` (an fd rcr does not support at one of `fds`) is refused with one
/// `rcr: ` line naming the pid, one of `fds` and one of `words` (case-insensitive); the
/// rest as in [`refused_with`].
fn refused(name: &str, scenario: &str, fds: &[i32], words: &[&str]) {
    refused_with(name, scenario, |_w, line| {
        let tokens: Vec<&str> = line
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|t| !t.is_empty())
            .collect();
        assert!(
            fds.iter()
                .any(|fd| tokens.contains(&fd.to_string().as_str())),
            "the message names fd {fds:?}: {line}"
        );
        let lower = line.to_ascii_lowercase();
        assert!(
            words.iter().any(|word| lower.contains(word)),
            "the message names the kind ({words:?}): {line}"
        );
    });
}

/// A dump of `scenario` (something rcr does not support) is refused: one `rcr: ` line naming
/// the pid, which `check` checks further (given the workload, before its go), and the exit
/// code of a refusal (3); no image is left and the image directory the dump created is gone;
/// the workload runs on untouched (not stopped, not traced, same maps, the fds as before:
/// checked by the workload) and PASSes on go.
fn refused_with(name: &str, scenario: &str, check: impl FnOnce(&common::Workload, &str)) {
    let mut h = Harness::new(name);
    let w = h.spawn(scenario);
    let maps = proc_maps(w.pid);
    let img = h.path("img");
    let r = h.dump(&w, &img, &[]);
    let line = r.assert_refused().to_string();
    assert_eq!(
        r.ended,
        Ended::Code(3),
        "the exit code of a refusal: {line}"
    );
    let tokens: Vec<&str> = line
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    assert!(
        tokens.contains(&w.pid.to_string().as_str()),
        "the message names pid {}: {line}",
        w.pid
    );
    check(&w, &line);
    assert!(
        !img.exists(),
        "a refused dump left its image directory {}",
        img.display()
    );
    h.assert_untouched_and_running(&w);
    assert_eq!(
        proc_maps(w.pid),
        maps,
        "/proc/PID/maps after the refused dump"
    );
    w.go();
    assert_eq!(h.wait_exit(&w), Ended::Code(0), "workload exit status");
    w.assert_pass();
}

/// An inet socket as the kernel lists it in /proc/PID/net/TABLE (tcp, udp): local and remote
/// address, and state (hex as in the file: 0A listening, 01 established).
struct InetSocket {
    local: String,
    remote: String,
    state: String,
}

/// The socket at `pid`'s `fd`, found by its inode in /proc/PID/net/`table`.
fn inet_socket(pid: i32, fd: i32, table: &str) -> InetSocket {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("read the fd link");
    let inode = link
        .to_string_lossy()
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("pid {pid} fd {fd} is {link:?}, not a socket"))
        .to_owned();
    // "0100007F:1F90" -> "127.0.0.1:8080" (the address is a u32 in host order).
    let address = |hex: &str| {
        let (ip, port) = hex.split_once(':').expect("ADDR:PORT");
        let ip = u32::from_str_radix(ip, 16).expect("hex address");
        let port = u16::from_str_radix(port, 16).expect("hex port");
        format!("{}:{port}", std::net::Ipv4Addr::from(ip.to_le_bytes()))
    };
    let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).expect("read net table");
    text.lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.get(9) == Some(&inode.as_str()))
        .map(|words| InetSocket {
            local: address(words[1]),
            remote: address(words[2]),
            state: words[3].to_owned(),
        })
        .unwrap_or_else(|| panic!("socket:[{inode}] not in /proc/{pid}/net/{table}"))
}

/// A TCP listener on 127.0.0.1 (a socket family rcr does not restore) at fd 10: the message
/// says what it is as a user names it, "TCP 127.0.0.1:PORT listening".
#[test]
fn unsupported_kind_is_refused() {
    refused_with(
        "unsupported_kind_is_refused",
        "unsupported-listen",
        |w, line| {
            let socket = inet_socket(w.pid, 10, "tcp");
            assert_eq!(socket.state, "0A", "fd 10 listens");
            let what = format!("fd 10: TCP {} listening", socket.local);
            assert!(line.contains(&what), "the message says `{what}`: {line}");
        },
    );
}

/// A connected TCP pair on loopback (the client at fd 10): "TCP LOCAL -> REMOTE established".
#[test]
fn tcp_connection_is_refused_naming_it() {
    refused_with("tcp_connection_is_refused", "refused-tcp", |w, line| {
        let socket = inet_socket(w.pid, 10, "tcp");
        assert_eq!(socket.state, "01", "fd 10 is established");
        let what = format!(
            "fd 10: TCP {} -> {} established",
            socket.local, socket.remote
        );
        assert!(line.contains(&what), "the message says `{what}`: {line}");
    });
}

/// A UDP socket bound on loopback at fd 10: "UDP 127.0.0.1:PORT".
#[test]
fn udp_socket_is_refused_naming_it() {
    refused_with("udp_socket_is_refused", "refused-udp", |w, line| {
        let socket = inet_socket(w.pid, 10, "udp");
        let what = format!("fd 10: UDP {} (", socket.local);
        assert!(line.contains(&what), "the message says `{what}`: {line}");
    });
}

/// A SysV shared memory attachment: the message names the segment by its shmid (from
/// /proc/sysvipc/shm, the line whose creator is the workload), not as a deleted file.
#[test]
fn sysv_shm_is_refused_naming_it() {
    refused_with("sysv_shm_is_refused", "refused-sysvshm", |w, line| {
        let table = fs::read_to_string("/proc/sysvipc/shm").expect("read /proc/sysvipc/shm");
        // key shmid perms size cpid lpid ...
        let shmid = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|words| words.get(4) == Some(&w.pid.to_string().as_str()))
            .map(|words| words[1].to_owned())
            .expect("the workload's segment in /proc/sysvipc/shm");
        let what = format!("SysV shared memory segment key IPC_PRIVATE shmid {shmid} ");
        assert!(line.contains(&what), "the message says `{what}`: {line}");
        assert!(!line.contains("deleted"), "not a deleted file: {line}");
    });
}

/// A unix socketpair with "ping" unread: both ends and the data come back (the workload
/// once used to check the refusal, now a round trip).
#[test]
fn unix_socketpair() {
    roundtrip("unix_socketpair", "unsupported", 1);
}

/// One process holding eventfds, an unlinked file, a FIFO with data, three kinds of file
/// locks, an fd owner and signal, every kind of unix socket of the `unix` scenario, two
/// inotify instances, a pty pair with data in flight both ways, an anonymous pipe with data,
/// a signalfd, an armed timerfd, an epoll with registrations, a memfd, /dev/zero, a
/// directory and regular files at once.
#[test]
fn all_file_kinds_at_once() {
    roundtrip("all_file_kinds_at_once", "files-all", 1);
}

/// F_SETOWN and F_SETSIG of a description come back.
#[test]
fn fd_owner_and_signal() {
    roundtrip("fd_owner_and_signal", "fdowner", 1);
}

/// A named pipe with unread data: both ends and the data come back.
#[test]
fn fifo() {
    roundtrip("fifo", "fifo", 1);
}

/// flock, POSIX and OFD locks are held again after the restore.
#[test]
fn file_locks() {
    roundtrip("file_locks", "locks", 1);
}

/// A new pipe of the test (close-on-exec ends).
fn test_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

fn inode_of(fd: &std::os::fd::OwnedFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(fd)
    ))
    .expect("stat a pipe")
    .ino()
}

/// Everything readable from `fd` until end of file (10 s at most).
fn read_to_eof(fd: std::os::fd::OwnedFd) -> Vec<u8> {
    use std::io::Read;
    let mut file = fs::File::from(fd);
    let (done, waiter) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = file.read_to_end(&mut all);
        let _ = done.send(all);
    });
    waiter
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("end of file within 10 s")
}

/// `rcr restore` of `w` from `img` with `fds` of the test inherited (their FD_CLOEXEC cleared
/// for this one run: the tests of this binary run one at a time, nothing else is spawned
/// meanwhile).
fn restore_inheriting(
    h: &mut Harness,
    w: &common::Workload,
    img: &std::path::Path,
    fds: &[std::os::fd::BorrowedFd],
    extra: &[&str],
) -> common::Run {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    for fd in fds {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear FD_CLOEXEC");
    }
    let run = h.restore(w, img, extra);
    for fd in fds {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("set FD_CLOEXEC");
    }
    run
}

/// `workload | cat > log` and `producer | workload`: the workload (the dumped tree) writes
/// into a pipe whose read end the test holds and reads a pipe the test writes into. The dump
/// says so (pid, fd, pipe:[INODE]) and leaves the data in the pipe the test reads ("before",
/// written by the workload before the dump, is the test's, whole and once). A restore that
/// is not told what those ends become is refused before any process exists, naming both;
/// with `--inherit-fd fd[N]:pipe:[INODE]` the restored fds are on the pipes of the dump
/// again, then (a second restore) on new pipes of the test: the workload reads what was
/// queued for it at the dump ("queued", once) then what the test writes after, and what it
/// writes reaches the test, without SIGPIPE; with
/// `--external-pipe pipe:[INODE]=null` its input is "queued" then end of file and its output
/// goes to /dev/null.
#[test]
fn pipe_ends_outside_the_tree() {
    use std::io::Write;
    use std::os::fd::{AsFd, AsRawFd};
    let mut h = Harness::new("pipe_ends_outside_the_tree");
    let (out_read, out_write) = test_pipe();
    let (in_read, in_write) = test_pipe();
    let (out_inode, in_inode) = (inode_of(&out_read), inode_of(&in_read));
    let numbers = format!("{} {}", out_write.as_raw_fd(), in_read.as_raw_fd());
    let w = h.spawn_env("pipe-outside", &[], &[("RCR_WORKLOAD_PIPE_FDS", &numbers)]);
    // The workload has its own descriptions now: the test keeps only the other ends.
    drop(out_write);
    drop(in_read);
    let mut in_write = fs::File::from(in_write);
    in_write.write_all(b"queued").expect("queue input");
    let img = h.path("img");
    let dump = h.dump(&w, &img, &[]);
    dump.assert_ok_for(&w);
    for (fd, inode) in [(120, out_inode), (121, in_inode)] {
        let line = dump
            .stderr
            .lines()
            .find(|l| l.contains(&format!("pipe:[{inode}]")))
            .unwrap_or_else(|| panic!("the dump names pipe:[{inode}]: {}", dump.stderr));
        for word in [
            w.pid.to_string(),
            format!("fd {fd}"),
            "outside".into(),
            "--inherit-fd".into(),
        ] {
            assert!(line.contains(&word), "the dump's note names {word}: {line}");
        }
    }
    h.reap_dumped(&w);
    // The workload's output before the dump is the test's, whole, and nobody writes any more.
    assert_eq!(
        read_to_eof(out_read.try_clone().expect("dup")),
        b"before",
        "what the test reads of the first pipe"
    );
    w.go();

    // Not told what the ends become: refused, naming both, before any process exists.
    let refused = h.restore(&w, &img, &[]);
    let line = refused.assert_refused().to_string();
    for word in [
        w.pid.to_string(),
        "fd 120".into(),
        "fd 121".into(),
        format!("pipe:[{out_inode}]"),
        format!("pipe:[{in_inode}]"),
        "--inherit-fd".into(),
        "--external-pipe".into(),
    ] {
        assert!(line.contains(&word), "the refusal names {word}: {line}");
    }
    assert!(
        !common::pid_exists(w.pid),
        "a refused restore left pid {} behind",
        w.pid
    );
    // Options that name no external pipe of the images, or an fd rcr was not given.
    let line = h
        .restore(&w, &img, &["--external-pipe", "pipe:[1]=null"])
        .assert_refused()
        .to_string();
    assert!(
        line.contains("pipe:[1]"),
        "the refusal names the option: {line}"
    );
    let missing_fd = format!("fd[1000]:pipe:[{out_inode}]");
    let line = h
        .restore(&w, &img, &["--inherit-fd", &missing_fd])
        .assert_refused()
        .to_string();
    assert!(
        line.contains("fd 1000 is not open"),
        "the refusal names fd 1000: {line}"
    );
    assert!(
        !common::pid_exists(w.pid),
        "a refused restore left pid {}",
        w.pid
    );

    // The very pipes of the dump handed back (a shell resuming `job | cat > log` with the
    // same cat), by whichever end the test holds: the restored fds are new descriptions of
    // them; "queued" is still in the input pipe and is not put in twice.
    fs::write(w.dir.join("mode"), "inherit").expect("write mode");
    let out_spec = format!("fd[{}]:pipe:[{out_inode}]", out_read.as_raw_fd());
    let in_spec = format!("fd[{}]:pipe:[{in_inode}]", in_write.as_raw_fd());
    let r = restore_inheriting(
        &mut h,
        &w,
        &img,
        &[out_read.as_fd(), in_write.as_fd()],
        &[
            "--detach",
            "--inherit-fd",
            &out_spec,
            "--inherit-fd",
            &in_spec,
        ],
    );
    r.assert_ok_for(&w);
    in_write.write_all(b"more").expect("write more input");
    drop(in_write);
    assert_eq!(
        read_to_eof(out_read),
        b"after",
        "what the restored workload wrote into the pipe of the dump"
    );
    assert_eq!(
        h.wait_exit(&w),
        Ended::Code(0),
        "the restored workload's exit"
    );
    w.assert_pass();

    // New pipes handed in: the workload's output reaches the test, its input is what was
    // queued at the dump (put into the new pipe by rcr), then what the test writes after.
    let (new_out_read, new_out_write) = test_pipe();
    let (new_in_read, new_in_write) = test_pipe();
    // Nobody reads it but the restored workload.
    drop(new_in_read);
    let out_spec = format!("fd[{}]:pipe:[{out_inode}]", new_out_write.as_raw_fd());
    // The input pipe by its write end (the test's end): rcr takes a read end of it.
    let in_spec = format!("fd[{}]:pipe:[{in_inode}]", new_in_write.as_raw_fd());
    let r = restore_inheriting(
        &mut h,
        &w,
        &img,
        &[new_out_write.as_fd(), new_in_write.as_fd()],
        &[
            "--detach",
            "--inherit-fd",
            &out_spec,
            "--inherit-fd",
            &in_spec,
            // The first restored run wrote its PASS into the workload's stdout.
            "--ignore-file-size",
        ],
    );
    r.assert_ok_for(&w);
    drop(new_out_write);
    let mut new_in_write = fs::File::from(new_in_write);
    new_in_write.write_all(b"more").expect("write more input");
    drop(new_in_write);
    assert_eq!(
        read_to_eof(new_out_read),
        b"after",
        "what the restored workload wrote into the pipe it was given"
    );
    assert_eq!(
        h.wait_exit(&w),
        Ended::Code(0),
        "the restored workload's exit"
    );
    w.assert_pass();

    // /dev/null: its input is what was queued, then end of file; its output vanishes.
    fs::write(w.dir.join("mode"), "null").expect("write mode");
    let out_null = format!("pipe:[{out_inode}]=null");
    let in_null = format!("pipe:[{in_inode}]=null");
    let r = h.restore(
        &w,
        &img,
        &[
            "--external-pipe",
            &out_null,
            "--external-pipe",
            &in_null,
            "--ignore-file-size",
        ],
    );
    r.assert_ok_for(&w);
    w.assert_pass();
}

/// The POSIX locks of `pid` in /proc/locks: (type, device:inode, start, end), sorted.
fn posix_locks_of(pid: i32) -> Vec<String> {
    let mut locks: Vec<String> = fs::read_to_string("/proc/locks")
        .expect("read /proc/locks")
        .lines()
        .filter_map(|line| {
            let w: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
            (w.len() >= 8 && w[1] == "POSIX" && w[4] == pid.to_string())
                .then(|| format!("{} {} {} {}", w[3], w[5], w[6], w[7]))
        })
        .collect();
    locks.sort();
    locks
}

/// POSIX record locks on files the process also maps (shared and private), opens twice or
/// only holds open: every one is back after the restore, as /proc/locks lists it (checked
/// here while the restored workload waits for go) and as F_OFD_GETLK shows it to the
/// workload itself.
#[test]
fn posix_locks_on_mapped_files() {
    let mut h = Harness::new("posix_locks_on_mapped_files");
    let w = h.spawn("locks-mapped");
    let before = posix_locks_of(w.pid);
    assert_eq!(
        before.len(),
        6,
        "the workload's locks at ready: {before:#?}"
    );
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped_tree(&w);
    let r = h.restore(&w, &img, &["--detach"]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original pid");
    assert_eq!(
        posix_locks_of(w.pid),
        before,
        "the POSIX locks of the restored process"
    );
    w.go();
    assert_eq!(
        h.wait_exit(&w),
        Ended::Code(0),
        "the restored workload's exit"
    );
    w.assert_pass();
}

/// A file whose name was removed: content, mode, no name, one offset for two fds.
#[test]
fn unlinked_file() {
    roundtrip("unlinked_file", "unlinked", 1);
}

/// signalfd, timerfd and epoll: the workloads that once had to be refused check after the
/// restore that each fd is as before (link, flags, fdinfo, except the timerfd's time left)
/// and still works (the timer is still armed; an expired one has its tick pending).
#[test]
fn signalfd() {
    roundtrip("signalfd", "unsupported-signalfd", 1);
}

#[test]
fn timerfd() {
    roundtrip("timerfd", "unsupported-timerfd", 1);
}

#[test]
fn epoll() {
    roundtrip("epoll", "unsupported-epoll", 1);
}

/// An epoll instance with three registrations (events and data), at two fds in each of two
/// processes (dup, fork): registered once at restore, it reports the ready targets with
/// their data in both processes, its state is one (what the child drains, the parent no
/// longer sees), and its registrations can be deleted once.
#[test]
fn epoll_shared() {
    roundtrip("epoll_shared", "epollshared", 2);
}

#[test]
fn epoll_shared_leave_running() {
    leave_running_then_restore("epoll_shared_leave_running", "epollshared", 2);
}

/// fanotify is not supported: refused, the instance and its mark untouched (inotify, the
/// kind this test used before, is restored now: see below).
#[test]
fn unsupported_fanotify_is_refused() {
    refused(
        "unsupported_fanotify_is_refused",
        "unsupported-fanotify",
        &[10],
        &["fanotify"],
    );
}

/// Two inotify instances (blocking at fd 90, IN_NONBLOCK|IN_CLOEXEC at fd 91) with watches on
/// a directory, files and a symlink itself, and removed wds between and below the live ones:
/// the same flags, fdinfo and wds after the restore, each watch delivering its events,
/// removed wds staying removed (see src/bin/rcr-workload/inotify.rs).
#[test]
fn inotify() {
    roundtrip("inotify", "inotify", 1);
}

#[test]
fn inotify_leave_running() {
    leave_running_then_restore("inotify_leave_running", "inotify", 1);
}

/// Events queued at the dump are not restored: rcr dump says so on stderr (one warning per
/// instance, naming pid, fd and the bytes lost) and still succeeds; the restored process
/// finds both queues empty and everything else as in `inotify`.
#[test]
fn inotify_pending_events_are_lost_with_a_warning() {
    let mut h = Harness::new("inotify_pending_events");
    let w = h.spawn("inotify-pending");
    let img = h.path("img");
    let dump = h.dump(&w, &img, &[]);
    dump.assert_ok_for(&w);
    let warnings: Vec<&str> = dump.stderr.lines().collect();
    assert_eq!(warnings.len(), 2, "one warning per instance: {warnings:?}");
    for (line, fd) in warnings.iter().zip([90, 91]) {
        assert!(
            line.starts_with("rcr: warning: ")
                && line.contains(&format!("pid {} fd {fd}:", w.pid))
                && line.contains("16 bytes")
                && line.contains("lost"),
            "the warning names pid, fd, size and the loss: {line}"
        );
    }
    h.reap_dumped_tree(&w);
    w.go();
    let r = h.restore(&w, &img, &[]);
    r.assert_ok_for(&w);
    w.assert_pass();
}

/// A watch on a file that has no name any more (unlinked, kept open) cannot be restored:
/// the dump is refused naming the pid, the fd and the wd, and the task runs on untouched.
#[test]
fn inotify_watch_without_a_path_is_refused() {
    refused(
        "inotify_watch_without_a_path_is_refused",
        "inotify-unlinked",
        &[90],
        &["inotify watch wd 1"],
    );
}

/// A watched file removed between the dump and the restore: the restore is refused before
/// any process exists, with one line naming the pid, the fd and the path.
#[test]
fn inotify_watched_file_removed_before_restore() {
    let mut h = Harness::new("inotify_watched_file_removed");
    let w = h.spawn("inotify");
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped_tree(&w);
    let gone = w.dir.join("inotify-w").join("c");
    fs::remove_file(&gone).expect("remove the watched file c");
    // go exists, so a restore that wrongly succeeded would finish (and be noticed) at once.
    w.go();
    let r = h.restore(&w, &img, &[]);
    let line = r.assert_refused();
    assert!(
        line.contains(&format!("pid {} fd 90:", w.pid)) && line.contains(&*gone.to_string_lossy()),
        "the refusal names pid, fd and path: {line}"
    );
    assert!(
        !common::pid_exists(w.pid),
        "pid {} exists after a refused restore",
        w.pid
    );
    assert!(
        h.workload_children().is_empty(),
        "a refused restore left workload processes: {:?}",
        h.workload_children()
    );
}

/// Unix sockets beyond pairs, in one process (see src/bin/rcr-workload/unix.rs): listeners
/// at a path and an abstract address with connections waiting to be accepted (in order),
/// accepted connections with data queued both ways, seqpacket boundaries and a shutdown,
/// datagrams with their senders' addresses, a connected datagram socket, a socket whose peer
/// has gone (data, then EOF), a listener whose file was removed; addresses and socket file
/// modes as before.
#[test]
fn unix_sockets() {
    roundtrip("unix_sockets", "unix", 1);
}

/// Sockets whose file was renamed after bind (a JVM's attach listener binds
/// `.java_pidN.tmp`, then renames it): they come back reachable at the file's new name, with
/// the name bind got (getsockname), a waiting connection and the file's mode; new clients
/// connect to the new name.
#[test]
fn unix_socket_file_renamed() {
    roundtrip("unix_socket_file_renamed", "unix-renamed", 1);
}

/// A listener in the root, a client in its child with an accepted connection (data queued
/// both ways) and a connection still waiting: across processes, as within one.
#[test]
fn unix_sockets_between_processes() {
    roundtrip("unix_sockets_between_processes", "unixtree", 2);
}

/// The same with --leave-running: peeking the queues consumed nothing, the original goes on
/// (its socket files stay behind when it exits), then the image is restored over them.
#[test]
fn unix_sockets_leave_running() {
    leave_running_then_restore("unix_sockets_leave_running", "unix", 1);
}

/// A file descriptor in flight (sent with SCM_RIGHTS, unread) is refused, naming pid, fd
/// and what; the peek's copies of it are closed and the task receives it after all.
#[test]
fn unix_fds_in_flight_are_refused() {
    refused(
        "unix_fds_in_flight_are_refused",
        "unix-fds-in-flight",
        &[10],
        &["file descriptors in flight"],
    );
}

/// Accepts one connection on `listener` within 20 s.
fn accept_within(listener: &std::os::unix::net::UnixListener) -> std::os::unix::net::UnixStream {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).expect("blocking connection");
                conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                    .expect("read timeout");
                return conn;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no connection within 20 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A socket connected to a listener of the test, outside the tree: the dump is refused,
/// naming pid, fd and the option, and the tree runs on; with `--external-unix disconnect` it
/// comes back as closed by its peer, after the data that peer had sent.
#[test]
fn unix_peer_outside_refused_or_disconnected() {
    use std::io::Write;
    let mut h = Harness::new("unix_peer_outside_disconnect");
    let listener =
        std::os::unix::net::UnixListener::bind(h.path("outside.sock")).expect("bind listener");
    let _log = std::os::unix::net::UnixDatagram::bind(h.path("outside-dgram.sock"))
        .expect("bind the datagram socket");
    let w = h.spawn("unix-outside");
    let mut conn = accept_within(&listener);
    conn.write_all(b"queued")
        .expect("queue data for the workload");
    let img = h.path("img");
    let line = h.dump(&w, &img, &[]).assert_refused().to_string();
    for word in [
        w.pid.to_string(),
        "fd 10".into(),
        "outside".into(),
        "--external-unix".into(),
    ] {
        assert!(line.contains(&word), "the refusal names {word}: {line}");
    }
    h.assert_untouched_and_running(&w);
    h.dump(&w, &img, &["--external-unix", "disconnect"])
        .assert_ok_for(&w);
    h.reap_dumped(&w);
    drop(conn);
    fs::write(w.dir.join("mode"), "disconnect").expect("write mode");
    w.go();
    h.restore(&w, &img, &[]).assert_ok_for(&w);
    w.assert_pass();
}

/// With `--external-unix reconnect` the socket is connected again to the listener's address
/// at restore: the test accepts the new connection and they talk.
#[test]
fn unix_peer_outside_reconnected() {
    use std::io::{Read, Write};
    let mut h = Harness::new("unix_peer_outside_reconnect");
    let listener =
        std::os::unix::net::UnixListener::bind(h.path("outside.sock")).expect("bind listener");
    let log = std::os::unix::net::UnixDatagram::bind(h.path("outside-dgram.sock"))
        .expect("bind the datagram socket");
    let w = h.spawn("unix-outside");
    let first = accept_within(&listener);
    let img = h.path("img");
    h.dump(&w, &img, &["--external-unix", "reconnect"])
        .assert_ok_for(&w);
    h.reap_dumped(&w);
    drop(first);
    fs::write(w.dir.join("mode"), "reconnect").expect("write mode");
    w.go();
    let peer = std::thread::spawn(move || {
        let mut conn = accept_within(&listener);
        let mut ping = [0u8; 4];
        conn.read_exact(&mut ping).expect("read ping");
        assert_eq!(&ping, b"ping");
        conn.write_all(b"pong").expect("write pong");
        // Held until the workload has read it and exited.
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    });
    h.restore(&w, &img, &[]).assert_ok_for(&w);
    w.assert_pass();
    peer.join().expect("the test's side of the connection");
    // The datagram socket, connected again, sent its line to the test's socket.
    log.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("read timeout");
    let mut line = [0u8; 32];
    let n = log
        .recv(&mut line)
        .expect("the restored datagram socket's line");
    assert_eq!(&line[..n], b"log-line");
}

/// Kills the processes named in `pid_files` (if they still name the workload) when dropped:
/// the chroot test's processes are not the harness's children.
struct KillOnDrop(Vec<std::path::PathBuf>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for file in &self.0 {
            let Some(pid) = fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            else {
                continue;
            };
            if pid > 1 && common::names_workload(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A process whose root is a chroot comes back with the same root and cwd. In a mount
/// namespace of its own (nothing changes on the host), the test binds the whole filesystem
/// at DIR/jail, so that every path still resolves inside it, and starts the workload chrooted
/// there with its cwd in DIR; rcr dumps it and restores it (--detach); /proc/PID/root and
/// cwd name the jail and DIR/jail/DIR again, and the workload PASSes.
#[test]
fn chroot_root_and_cwd() {
    let h = Harness::new("chroot_root_and_cwd");
    let dir = h.path("");
    let dir = dir.to_string_lossy().trim_end_matches('/').to_string();
    let script = r#"
        set -e
        J="$DIR/jail"; W="$DIR/w"; mkdir -p "$J" "$W"
        mount --rbind / "$J"
        chroot "$J" sh -c 'cd "$1" && exec "$2" eventfd "$3"' sh "$DIR" "$WORKLOAD" "$W" \
            </dev/null >"$W/stdout" 2>"$W/stderr" &
        ORIG=$!
        for i in $(seq 300); do [ -f "$W/ready" ] && break; sleep 0.1; done
        cp "$W/ready" "$DIR/orig.pid"
        "$RCR" dump -t "$ORIG" -D "$DIR/img"
        wait "$ORIG" || true
        "$RCR" restore -D "$DIR/img" --detach --pidfile "$DIR/restored.pid" --ignore-file-size
        P=$(cat "$DIR/restored.pid")
        readlink "/proc/$P/root" > "$DIR/root-after"
        readlink "/proc/$P/cwd" > "$DIR/cwd-after"
        touch "$W/go"
        for i in $(seq 300); do [ -d "/proc/$P" ] && [ "$(cut -d' ' -f3 /proc/$P/stat)" != Z ] || break; sleep 0.1; done
        cat "$W/stdout"
    "#;
    let _guard = KillOnDrop(vec![
        format!("{dir}/orig.pid").into(),
        format!("{dir}/restored.pid").into(),
    ]);
    let out = std::process::Command::new("timeout")
        .args([
            "120",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ])
        .env("DIR", &dir)
        .env("RCR", common::RCR)
        .env("WORKLOAD", common::WORKLOAD)
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "script failed: {stdout}\n{stderr}");
    assert_eq!(
        fs::read_to_string(format!("{dir}/root-after"))
            .unwrap()
            .trim(),
        format!("{dir}/jail"),
        "the restored process' root"
    );
    assert_eq!(
        fs::read_to_string(format!("{dir}/cwd-after"))
            .unwrap()
            .trim(),
        format!("{dir}/jail{dir}"),
        "the restored process' cwd"
    );
    assert!(
        stdout.trim_end().ends_with("PASS"),
        "workload output: {stdout}\n{stderr}"
    );
}
