//! Memory and CPU state that needs more than contents: locked memory (mlock, mlockall and
//! the mm's MCL_FUTURE default) and AMX tile registers.

mod common;

use common::{Ended, Harness, proc_maps};

/// Start `scenario`, dump it (killing it), restore it: the workload checks itself.
fn roundtrip(name: &str, scenario: &str) {
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
}

/// mlock() and mlock2(MLOCK_ONFAULT) regions come back locked as they were (VmFlags lo, lf),
/// no more; a new mapping is not locked.
#[test]
fn mlock() {
    roundtrip("mlock", "mlock");
}

/// mlockall(MCL_CURRENT | MCL_FUTURE): every mapping locked, and a mapping made after the
/// restore too (the mm's default flags).
#[test]
fn mlockall() {
    roundtrip("mlockall", "mlockall");
}

/// mlockall(MCL_FUTURE | MCL_ONFAULT) alone: existing mappings as they were, a new one
/// locked on fault.
#[test]
fn mlockall_onfault() {
    roundtrip("mlockall_onfault", "mlockall-onfault");
}

/// Whether this machine has AMX tiles the kernel manages (as rcr check shows AMX-TILEDATA).
fn cpu_has_amx() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    flags.split_whitespace().any(|f| f == "amx_tile")
}

/// AMX: the tile data permission and the tiles of three threads, each its own, come back
/// (before: the restore failed with "cannot set xstate: Invalid argument" and the process
/// was lost). Skipped where the CPU has no AMX.
#[test]
fn amx_tiles() {
    if !cpu_has_amx() {
        eprintln!("amx_tiles: SKIPPED: this CPU has no AMX (no amx_tile in /proc/cpuinfo)");
        return;
    }
    roundtrip("amx_tiles", "amx");
}

/// The dump tries each thread's xstate on a scratch process prepared as the restore will
/// prepare the thread: an xstate the kernel would refuse (here, through a test hook, one
/// with a bit set in XCOMP_BV) fails the dump with a line naming the thread, and the tree
/// runs on untouched instead of being killed for a restore that cannot work.
#[test]
fn xstate_refused_at_dump() {
    let mut h = Harness::new("xstate_refused_at_dump");
    let w = h.spawn("vector");
    h.wait_blocked(&w);
    let maps = proc_maps(w.pid);
    let img = h.path("img");
    let r = h.dump_env(&w, &img, &[], &[("RCR_FAULT_INJECT", "xstate-refused")]);
    let line = r.assert_refused();
    assert!(
        line.contains(&format!("tid {}", w.pid)) && line.contains("xstate"),
        "the message names the thread and its xstate: {line}"
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
