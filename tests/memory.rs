//! Memory and CPU state that needs more than contents: locked memory (mlock, mlockall and
//! the mm's MCL_FUTURE default) and AMX tile registers.

mod common;

use common::Harness;

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
