//! The golden image set images/golden/v1 (a real dump of `sleep 1000`, made by rcr 0.1.0)
//! must stay readable by every later rcr: decode every file with the library, check values
//! known from the dump, and run `rcr show` on it as text and JSON.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcr::image::proto::{Fds, Inventory, Mm, PageMap, PsTree, TaskCore, VmaKind};
use rcr::image::{ImageDir, Kind};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("images/golden/v1")
}

fn pages_pid(name: &str) -> Option<u32> {
    name.strip_prefix("pages-")?
        .strip_suffix(".img")?
        .parse()
        .ok()
}

/// The one pid the file names of the set carry.
fn golden_pid() -> u32 {
    let mut pids = BTreeSet::new();
    for entry in fs::read_dir(golden_dir()).expect("images/golden/v1 exists") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some((_, Some(pid))) = Kind::parse_file_name(&name) {
            pids.insert(pid);
        } else if let Some(pid) = pages_pid(&name) {
            pids.insert(pid);
        }
    }
    assert_eq!(pids.len(), 1, "one process in the golden set: {pids:?}");
    pids.into_iter().next().unwrap()
}

#[test]
fn every_file_decodes() {
    let images = ImageDir::open(&golden_dir()).unwrap();
    let mut seen = BTreeSet::new();
    for entry in fs::read_dir(golden_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        match Kind::parse_file_name(&name) {
            Some((kind, pid)) => {
                match kind {
                    Kind::Inventory => drop(images.read::<Inventory>(kind, pid).unwrap()),
                    Kind::PsTree => drop(images.read::<PsTree>(kind, pid).unwrap()),
                    Kind::Core => drop(images.read::<TaskCore>(kind, pid).unwrap()),
                    Kind::Mm => drop(images.read::<Mm>(kind, pid).unwrap()),
                    Kind::PageMap => drop(images.read::<PageMap>(kind, pid).unwrap()),
                    Kind::Fds => drop(images.read::<Fds>(kind, pid).unwrap()),
                }
                seen.insert(kind.stem());
            }
            None if pages_pid(&name).is_some() => {
                seen.insert("pages");
            }
            None => assert_eq!(name, "README.md", "unexpected file in the golden set"),
        }
    }
    let all: BTreeSet<_> = [
        "inventory",
        "pstree",
        "core",
        "mm",
        "pagemap",
        "fds",
        "pages",
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, all);
}

/// The framing itself, read without the library: magic, kind, version 1.0, length, CRC32.
#[test]
fn framing_is_v1() {
    let pid = golden_pid();
    for kind in Kind::ALL {
        let name = kind.file_name(Some(pid));
        let bytes = fs::read(golden_dir().join(&name)).unwrap();
        assert_eq!(&bytes[0..4], b"RCRI", "{name}");
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(bytes[i..i + 2].try_into().unwrap());
        assert_eq!(u32_at(4), kind.code(), "{name}");
        assert_eq!((u16_at(8), u16_at(10)), (1, 0), "{name}");
        let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
        assert_eq!(bytes.len() as u64, 20 + len + 4, "{name}");
        let body = bytes.len() - 4;
        assert_eq!(crc32fast::hash(&bytes[..body]), u32_at(body), "{name}");
    }
}

#[test]
fn known_values() {
    let pid = golden_pid();
    let images = ImageDir::open(&golden_dir()).unwrap();

    let inventory: Inventory = images.read(Kind::Inventory, None).unwrap();
    assert_eq!(inventory.format_major, 1);
    assert_eq!(inventory.format_minor, 0);
    assert_eq!(inventory.rcr_version, "0.1.0");
    assert_eq!(inventory.root_pid, pid);
    let xcr0 = inventory.cpu.as_ref().expect("cpu info").xcr0;
    assert_eq!(xcr0 & 0b11, 0b11, "x87 and SSE are always enabled");

    let tree: PsTree = images.read(Kind::PsTree, None).unwrap();
    assert_eq!(tree.processes.len(), 1);
    assert_eq!(tree.processes[0].pid, pid);
    assert_eq!(tree.processes[0].threads, vec![pid]);

    let core: TaskCore = images.read(Kind::Core, Some(pid)).unwrap();
    assert_eq!(core.pid, pid);
    assert_eq!(core.comm, "sleep");
    assert_eq!(core.threads.len(), 1);
    let thread = &core.threads[0];
    assert_eq!(thread.tid, pid);
    assert!(thread.regs.is_some());
    // XSAVE legacy area + header at least, and XSTATE_BV inside XCR0's bits.
    assert!(
        thread.xstate.len() >= 576,
        "xstate {} bytes",
        thread.xstate.len()
    );
    let xstate_bv = u64::from_le_bytes(thread.xstate[512..520].try_into().unwrap());
    assert_eq!(
        xstate_bv & !xcr0,
        0,
        "xstate_bv {xstate_bv:#x} xcr0 {xcr0:#x}"
    );

    let mm: Mm = images.read(Kind::Mm, Some(pid)).unwrap();
    assert!(mm.exe_path.ends_with("/sleep"), "{}", mm.exe_path);
    let stack = mm
        .vmas
        .iter()
        .find(|v| v.path == "[stack]")
        .expect("a [stack] VMA");
    assert_eq!(stack.kind, VmaKind::Stack as i32);
    assert!(stack.has_pages);
    assert!(stack.start <= mm.start_stack && mm.start_stack < stack.end);

    let pagemap: PageMap = images.read(Kind::PageMap, Some(pid)).unwrap();
    assert_eq!(pagemap.page_size, 4096);
    let pages_size = fs::metadata(images.pages_path(pid)).unwrap().len();
    assert_eq!(pagemap.pages_total * 4096, pages_size);
    assert_eq!(
        pagemap.runs.iter().map(|r| r.nr_pages).sum::<u64>(),
        pagemap.pages_total
    );
    // Every run lies inside one VMA whose pages are in the image; runs ascend.
    for run in &pagemap.runs {
        let end = run.vaddr + run.nr_pages * 4096;
        assert!(
            mm.vmas
                .iter()
                .any(|v| v.has_pages && v.start <= run.vaddr && end <= v.end),
            "run {:#x} outside the VMAs with pages",
            run.vaddr
        );
    }
    assert!(pagemap.runs.windows(2).all(|w| w[0].vaddr < w[1].vaddr));

    let fds: Fds = images.read(Kind::Fds, Some(pid)).unwrap();
    let numbers: Vec<i32> = fds.fds.iter().map(|f| f.fd).collect();
    assert_eq!(numbers, vec![0, 1, 2]);
}

#[test]
fn rcr_show_text() {
    let pid = golden_pid();
    let out = Command::new(env!("CARGO_BIN_EXE_rcr"))
        .arg("show")
        .arg(golden_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rcr show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for heading in [
        "inventory.img",
        "pstree.img",
        "core-",
        "mm-",
        "pagemap-",
        "fds-",
        "pages-",
    ] {
        let heading = if heading.ends_with('-') {
            format!("== {heading}{pid}.img")
        } else {
            format!("== {heading}")
        };
        assert!(stdout.contains(&heading), "{heading} missing:\n{stdout}");
    }
    assert!(stdout.contains("[stack]"), "{stdout}");
    assert!(
        stdout.contains("== skipped (not rcr images)\nREADME.md\n"),
        "{stdout}"
    );
}

#[test]
fn rcr_show_json() {
    let pid = golden_pid();
    let out = Command::new(env!("CARGO_BIN_EXE_rcr"))
        .args(["show", "--json"])
        .arg(golden_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rcr show --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(value["inventory"]["format_major"], 1);
    assert_eq!(value["pstree"]["processes"][0]["pid"], pid);
    let process = &value["processes"][pid.to_string()];
    assert!(process.is_object(), "processes has {pid}: {value}");
    assert_eq!(process["core"]["comm"], "sleep");
    assert!(process["core"]["threads"][0]["xstate"].is_string());
    assert!(
        process["mm"]["vmas"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    );
    let bytes = process["pages"]["bytes"].as_u64().unwrap();
    assert_eq!(
        bytes,
        process["pagemap"]["pages_total"].as_u64().unwrap() * 4096
    );
}

#[test]
fn rcr_show_refuses_a_corrupt_copy() {
    let pid = golden_pid();
    let copy = std::env::temp_dir().join(format!("rcr-golden-corrupt-{}", std::process::id()));
    let _ = fs::remove_dir_all(&copy);
    fs::create_dir_all(&copy).unwrap();
    for entry in fs::read_dir(golden_dir()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let core = copy.join(format!("core-{pid}.img"));
    let mut bytes = fs::read(&core).unwrap();
    bytes[30] ^= 0xff;
    fs::write(&core, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rcr"))
        .arg("show")
        .arg(&copy)
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&copy);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("core-{pid}.img")), "{stderr}");
}
