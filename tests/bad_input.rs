//! rcr refuses bad requests and bad images with one `rcr: ` line and a non-zero exit, and
//! nothing is lost: a workload it failed to dump keeps running untouched, a failed dump
//! leaves no image and no directory it created, and a refused restore creates no process.
//! The exit code tells a refusal (3: rcr will not do it as asked) from a failure (1).

mod common;

use common::{Ended, Harness, RCR, Workload, pid_exists, proc_maps};
use std::fs;
use std::path::Path;

/// Exit code of a failure.
const FAILED: i32 = 1;
/// Exit code of a refusal.
const REFUSED: i32 = 3;

/// A pid no process can have: above /proc/sys/kernel/pid_max.
fn impossible_pid() -> i32 {
    let max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("read pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    max + 1000
}

/// After a refused dump: the workload is alive, not stopped, not traced, its maps unchanged,
/// and it PASSes on go.
fn assert_nothing_lost(h: &mut Harness, w: &Workload, maps_before: &str) {
    h.assert_untouched_and_running(w);
    assert_eq!(
        proc_maps(w.pid),
        maps_before,
        "/proc/PID/maps after the refused dump"
    );
    w.go();
    assert_eq!(h.wait_exit(w), Ended::Code(0), "workload exit status");
    w.assert_pass();
}

#[test]
fn dump_missing_pid() {
    let mut h = Harness::new("dump_missing_pid");
    let pid = impossible_pid();
    let img = h.path("img");
    // --leave-running as a second guard: there is nothing to kill anyway.
    let r = h.rcr(
        &[
            "dump",
            "-t",
            &pid.to_string(),
            "-D",
            &img.to_string_lossy(),
            "--leave-running",
        ],
        &[],
    );
    let line = r.assert_refused();
    assert!(
        line.contains(&pid.to_string()),
        "the message names the pid: {line}"
    );
    assert_eq!(
        r.ended,
        Ended::Code(FAILED),
        "no such process is a failure: {line}"
    );
}

/// rcr must refuse pid 1 without touching it. So that a broken rcr could never touch the
/// real init, this runs rcr inside a new pid namespace (with its own /proc) whose pid 1 is a
/// shell we started: rcr sees `-t 1` exactly as it would on the host.
#[test]
fn dump_pid_1() {
    let mut h = Harness::new("dump_pid_1");
    let img = h.path("img");
    let script = r#""$0" dump -t 1 -D "$1" --leave-running; exit $?"#;
    let args = [
        "--pid",
        "--fork",
        "--mount-proc",
        "--",
        "sh",
        "-c",
        script,
        RCR,
        &img.to_string_lossy(),
    ];
    let r = h.run("unshare", &args, &[]);
    if r.stderr.starts_with("unshare:") {
        eprintln!(
            "SKIPPED dump_pid_1: cannot create a pid namespace: {}",
            r.stderr
        );
        return;
    }
    let line = r.assert_refused();
    assert!(line.contains('1'), "the message names pid 1: {line}");
    assert_eq!(r.ended, Ended::Code(REFUSED), "exit code: {line}");
}

/// rcr must refuse to dump its own ancestors: here the test process (its parent).
#[test]
fn dump_own_ancestor() {
    let mut h = Harness::new("dump_own_ancestor");
    let img = h.path("img");
    let me = std::process::id().to_string();
    let r = h.rcr(
        &[
            "dump",
            "-t",
            &me,
            "-D",
            &img.to_string_lossy(),
            "--leave-running",
        ],
        &[],
    );
    let line = r.assert_refused();
    assert_eq!(r.ended, Ended::Code(REFUSED), "exit code: {line}");
}

/// rcr must refuse to dump itself.
#[test]
fn dump_self() {
    let mut h = Harness::new("dump_self");
    let img = h.path("img");
    let script = r#"exec "$0" dump -t $$ -D "$1" --leave-running"#;
    let r = h.run("sh", &["-c", script, RCR, &img.to_string_lossy()], &[]);
    let line = r.assert_refused();
    assert_eq!(r.ended, Ended::Code(REFUSED), "exit code: {line}");
}

/// A dump into `img` (not a writable directory) fails and the workload is untouched.
fn dump_into_bad_dir(name: &str, make_img: impl FnOnce(&Harness) -> std::path::PathBuf) {
    let mut h = Harness::new(name);
    let w = h.spawn("prot");
    let img = make_img(&h);
    let maps = proc_maps(w.pid);
    h.dump(&w, &img, &[]).assert_refused();
    assert_nothing_lost(&mut h, &w, &maps);
}

#[test]
fn dump_into_regular_file() {
    dump_into_bad_dir("dump_into_regular_file", |h| {
        let f = h.path("not-a-dir");
        fs::write(&f, b"a regular file\n").unwrap();
        f
    });
}

#[test]
fn dump_under_regular_file() {
    dump_into_bad_dir("dump_under_regular_file", |h| {
        let f = h.path("not-a-dir");
        fs::write(&f, b"a regular file\n").unwrap();
        f.join("img")
    });
}

/// Restore while the pid is in use (the original still runs after --leave-running): refused,
/// naming the pid; the original is untouched and no other copy appears.
#[test]
fn restore_pid_taken() {
    let mut h = Harness::new("restore_pid_taken");
    let w = h.spawn("prot");
    let img = h.path("img");
    h.dump(&w, &img, &["--leave-running"]).assert_ok_for(&w);
    h.assert_untouched_and_running(&w);
    let maps = proc_maps(w.pid);
    let r = h.restore(&w, &img, &[]);
    let line = r.assert_refused();
    assert!(
        line.contains(&w.pid.to_string()),
        "the message names pid {}: {line}",
        w.pid
    );
    assert_eq!(
        h.workload_children(),
        vec![w.pid],
        "no second copy of the workload may appear"
    );
    assert_nothing_lost(&mut h, &w, &maps);
}

/// Dump a workload (killing it), damage one image file, and check the restore is refused
/// before any process exists; then put the file back and check the restore works (the failed
/// attempt left nothing behind, e.g. the pid is free).
fn restore_damaged(name: &str, damage: impl FnOnce(&Workload, &Path)) {
    let mut h = Harness::new(name);
    let w = h.spawn("prot");
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);
    let backup = h.path("img-backup");
    fs::create_dir_all(&backup).unwrap();
    for e in fs::read_dir(&img).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), backup.join(e.file_name())).unwrap();
    }
    damage(&w, &img);
    // go exists, so a restore that wrongly succeeded would finish (and be noticed) at once.
    w.go();
    let r = h.restore(&w, &img, &[]);
    r.assert_refused();
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
    for e in fs::read_dir(&backup).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), img.join(e.file_name())).unwrap();
    }
    let r = h.restore(&w, &img, &[]);
    r.assert_ok_for(&w);
    assert_eq!(r.pid, Some(w.pid), "pidfile vs the original pid");
    w.assert_pass();
}

#[test]
fn restore_truncated_image() {
    restore_damaged("restore_truncated_image", |w, img| {
        let f = w.image(img, "mm");
        let data = fs::read(&f).unwrap();
        assert!(
            data.len() > 24,
            "mm image too small to truncate: {} bytes",
            data.len()
        );
        fs::write(&f, &data[..data.len() - 5]).unwrap();
    });
}

#[test]
fn restore_corrupted_image() {
    restore_damaged("restore_corrupted_image", |w, img| {
        let f = w.image(img, "core");
        let mut data = fs::read(&f).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x40;
        fs::write(&f, &data).unwrap();
    });
}

#[test]
fn restore_wrong_version() {
    restore_damaged("restore_wrong_version", |_w, img| {
        let f = img.join("inventory.img");
        let mut data = fs::read(&f).unwrap();
        assert_eq!(&data[..4], b"RCRI", "inventory.img magic");
        // Major version (bytes 8..10, LE) = 99; the CRC is left as it is.
        data[8..10].copy_from_slice(&99u16.to_le_bytes());
        fs::write(&f, &data).unwrap();
    });
}

/// A dump that fails half-way (fault injection) leaves the workload running exactly as
/// before: not stopped, not traced, same maps (parasite gone), and it PASSes on go.
fn dump_fault(name: &str, point: &str) {
    let mut h = Harness::new(name);
    let w = h.spawn("all");
    h.wait_blocked(&w);
    let maps = proc_maps(w.pid);
    let img = h.path("img");
    let r = h.dump_env(&w, &img, &[], &[("RCR_FAULT_INJECT", point)]);
    let line = r.assert_refused();
    assert_eq!(r.ended, Ended::Code(FAILED), "a fault is a failure: {line}");
    assert!(!img.exists(), "the failed dump left {}", img.display());
    assert_nothing_lost(&mut h, &w, &maps);
}

#[test]
fn dump_fault_after_seize() {
    dump_fault("dump_fault_after_seize", "after-seize");
}

#[test]
fn dump_fault_after_infect() {
    dump_fault("dump_fault_after_infect", "after-infect");
}

#[test]
fn dump_fault_after_pages() {
    dump_fault("dump_fault_after_pages", "after-pages");
}

/// A second dump into a directory that already holds images is refused (they would mix: `rcr
/// show` and `rcr restore` would then read one tree's images with another's), naming the
/// directory; the images there are as they were and the second workload runs on untouched.
#[test]
fn dump_into_a_directory_holding_images() {
    let mut h = Harness::new("dump_into_a_directory_holding_images");
    let first = h.spawn("prot");
    let img = h.path("img");
    h.dump(&first, &img, &["--leave-running"])
        .assert_ok_for(&first);
    let listing = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let before = listing(&img);
    let second = h.spawn("prot");
    let maps = proc_maps(second.pid);
    let r = h.dump(&second, &img, &[]);
    let line = r.assert_refused();
    assert_eq!(r.ended, Ended::Code(REFUSED), "exit code: {line}");
    assert!(
        line.contains(&img.display().to_string()) && line.contains("already holds rcr images"),
        "the message names the directory and why: {line}"
    );
    assert!(
        listing(&img) == before,
        "the first dump's images changed: {:?}",
        listing(&img).iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_nothing_lost(&mut h, &second, &maps);
    first.go();
    assert_eq!(
        h.wait_exit(&first),
        Ended::Code(0),
        "first workload exit status"
    );
    first.assert_pass();
}

/// A failed dump leaves the place as it found it: the directories it created (here two
/// levels) are gone, and a directory that existed (empty, or with a file of the user's) is
/// still there with nothing added.
#[test]
fn failed_dump_leaves_no_image_directory() {
    let mut h = Harness::new("failed_dump_leaves_no_image_directory");
    let w = h.spawn("prot");
    let maps = proc_maps(w.pid);
    let fault = [("RCR_FAULT_INJECT", "after-pages")];
    let created = h.path("new");
    let img = created.join("img");
    h.dump_env(&w, &img, &[], &fault).assert_refused();
    assert!(
        !created.exists(),
        "the failed dump left {}",
        created.display()
    );
    let empty = h.path("empty");
    fs::create_dir(&empty).unwrap();
    h.dump_env(&w, &empty, &[], &fault).assert_refused();
    let left: Vec<_> = fs::read_dir(&empty).unwrap().collect();
    assert!(
        left.is_empty(),
        "the failed dump left {left:?} in {}",
        empty.display()
    );
    let mine = h.path("mine");
    fs::create_dir(&mine).unwrap();
    fs::write(mine.join("notes.txt"), "the user's").unwrap();
    h.dump_env(&w, &mine, &[], &fault).assert_refused();
    let left: Vec<String> = fs::read_dir(&mine)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["notes.txt".to_string()], "in {}", mine.display());
    assert_nothing_lost(&mut h, &w, &maps);
}

/// `rcr show` on a directory without images (empty, or with other files only) is an error
/// of one line, not an empty listing with exit 0.
#[test]
fn show_without_images() {
    let mut h = Harness::new("show_without_images");
    let dir = h.path("nothing");
    fs::create_dir(&dir).unwrap();
    for extra in [None, Some("notes.txt")] {
        if let Some(name) = extra {
            fs::write(dir.join(name), "not an image").unwrap();
        }
        let r = h.rcr(&["show", &dir.to_string_lossy()], &[]);
        let line = r.assert_refused();
        assert_eq!(r.ended, Ended::Code(FAILED), "exit code: {line}");
        assert!(
            line.contains("holds no rcr images"),
            "the message says the directory holds no images: {line}"
        );
        assert!(r.stdout.is_empty(), "nothing on stdout: {}", r.stdout);
    }
}

/// `restore -D` on a regular file says it is not a directory, and on an empty directory that
/// it holds no images.
#[test]
fn restore_from_what_is_not_an_image_directory() {
    let mut h = Harness::new("restore_not_an_image_directory");
    let file = h.path("a-file");
    fs::write(&file, "a regular file\n").unwrap();
    let r = h.rcr(&["restore", "-D", &file.to_string_lossy()], &[]);
    let line = r.assert_refused();
    assert!(
        line.contains("is not a directory"),
        "the message says what is wrong: {line}"
    );
    let empty = h.path("empty");
    fs::create_dir(&empty).unwrap();
    let r = h.rcr(&["restore", "-D", &empty.to_string_lossy()], &[]);
    let line = r.assert_refused();
    assert!(
        line.contains("holds no rcr images"),
        "the message says what is wrong: {line}"
    );
}
