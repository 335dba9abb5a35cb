//! Memory and CPU state that needs more than contents: locked memory (mlock, mlockall and
//! the mm's MCL_FUTURE default), AMX tile registers, and the checksums of page data.

mod common;

use common::{Ended, Harness, pid_exists, proc_maps};
use rcr::image::{Kind, decode_image, encode_image, proto::PageMap};
use std::fs;

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

/// One flipped byte in pages-PID.img: the restore is refused with one line naming the pid and
/// the chunk (the page checksums of format 1.5, verified while the tree is built and before
/// any restored task runs), and no process is left. The same image with the byte put back
/// restores and PASSes.
#[test]
fn page_checksum_flipped_byte() {
    let mut h = Harness::new("page_checksum_flipped_byte");
    let w = h.spawn("memory");
    h.wait_blocked(&w);
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);
    let pages = w.image(&img, "pages");
    let mut data = fs::read(&pages).unwrap();
    assert!(data.len() > 64 << 20, "pages image of {} bytes", data.len());
    let at = data.len() / 2 + 12345;
    data[at] ^= 0x04;
    fs::write(&pages, &data).unwrap();
    w.go();
    let r = h.restore(&w, &img, &[]);
    let line = r.assert_refused().to_owned();
    let chunk = at >> 20;
    assert!(
        line.contains(&format!("pid {}", w.pid)) && line.contains(&format!("chunk {chunk} ")),
        "the message names the pid and chunk {chunk}: {line}"
    );
    assert!(
        !pid_exists(w.pid),
        "pid {} exists after a refused restore",
        w.pid
    );
    assert!(
        h.workload_children().is_empty(),
        "a refused restore left processes: {:?}",
        h.workload_children()
    );
    data[at] ^= 0x04;
    fs::write(&pages, &data).unwrap();
    let r = h.restore(&w, &img, &[]);
    r.assert_ok_for(&w);
    w.assert_pass();
}

/// An image written before format 1.5 has no page checksums: it restores unchecked. (The
/// pagemap is rewritten without them, as format 1.4.)
#[test]
fn pages_without_checksums_restore() {
    let mut h = Harness::new("pages_without_checksums_restore");
    let w = h.spawn("memory");
    h.wait_blocked(&w);
    let img = h.path("img");
    h.dump(&w, &img, &[]).assert_ok_for(&w);
    h.reap_dumped(&w);
    let path = w.image(&img, "pagemap");
    let mut pagemap: PageMap = decode_image(Kind::PageMap, &fs::read(&path).unwrap(), "p").unwrap();
    assert!(!pagemap.chunk_crc32.is_empty(), "a 1.5 dump has checksums");
    pagemap.chunk_crc32.clear();
    pagemap.checksum_chunk = 0;
    let mut bytes = encode_image(Kind::PageMap, &pagemap);
    bytes[10..12].copy_from_slice(&4u16.to_le_bytes());
    let crc_at = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..crc_at]);
    bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    w.go();
    let r = h.restore(&w, &img, &[]);
    r.assert_ok_for(&w);
    w.assert_pass();
}
