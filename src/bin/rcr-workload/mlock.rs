//! Locked memory: `mlock`, `mlockall` and `mlockall-onfault`.
//!
//! - `mlock`: one region locked with mlock() (VmFlags `lo`), one with mlock2(MLOCK_ONFAULT)
//!   (`lo lf`, only its first page touched), one region left unlocked; no mlockall, so a new
//!   mapping is not locked.
//! - `mlockall`: the same regions, then mlockall(MCL_CURRENT | MCL_FUTURE): every mapping is
//!   locked, and so is a new one.
//! - `mlockall-onfault`: the same regions, then mlockall(MCL_FUTURE | MCL_ONFAULT): the
//!   existing mappings keep their own state, a new mapping is locked on fault (`lo lf`).
//!
//! Before ready the lock flags of every VMA are recorded from /proc/self/smaps; after go they
//! must be the same, VMA by VMA; then a new mapping shows whether mm->def_flags came back,
//! and the untouched pages of the on-fault region must still be absent (mincore).

use crate::parts::Part;
use crate::sys::{self, Mapping, errno};
use crate::{Check, fail};

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Mlock,
    All,
    FutureOnFault,
}

impl Mode {
    pub fn from_scenario(name: &str) -> Option<Mode> {
        Some(match name {
            "mlock" => Mode::Mlock,
            "mlockall" => Mode::All,
            "mlockall-onfault" => Mode::FutureOnFault,
            _ => return None,
        })
    }
}

const LOCKED: u8 = 1;
const ON_FAULT: u8 = 2;
const MAX_VMAS: usize = 512;
const REGION_PAGES: usize = 8;

/// One VMA's range and lock flags.
#[derive(Clone, Copy, PartialEq)]
struct VmaLock {
    start: usize,
    end: usize,
    flags: u8,
}

struct Snapshot {
    vmas: [VmaLock; MAX_VMAS],
    len: usize,
}

impl Snapshot {
    fn new() -> Box<Snapshot> {
        Box::new(Snapshot {
            vmas: [VmaLock {
                start: 0,
                end: 0,
                flags: 0,
            }; MAX_VMAS],
            len: 0,
        })
    }

    /// The flags of the VMA that starts at `start`.
    fn at(&self, start: usize) -> Option<u8> {
        self.vmas[..self.len]
            .iter()
            .find(|v| v.start == start)
            .map(|v| v.flags)
    }

    /// The flags of the VMA that holds `addr` (mlockall may merge neighbours into one).
    fn holding(&self, addr: usize) -> Option<u8> {
        self.vmas[..self.len]
            .iter()
            .find(|v| v.start <= addr && addr < v.end)
            .map(|v| v.flags)
    }
}

/// Reads the lock flags of every VMA from /proc/self/smaps into `snap`, without allocating.
fn read_locks(buf: &mut [u8], snap: &mut Snapshot) -> Result<(), String> {
    let n = sys::read_file_into(c"/proc/self/smaps", buf)
        .map_err(|e| format!("reading /proc/self/smaps: errno {e}"))?;
    snap.len = 0;
    for line in buf[..n].split(|&b| b == b'\n') {
        if let Some(flags) = line.strip_prefix(b"VmFlags:") {
            if snap.len == 0 {
                return Err("smaps: VmFlags before any VMA".into());
            }
            let mut bits = 0;
            for word in flags.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
                match word {
                    b"lo" => bits |= LOCKED,
                    b"lf" => bits |= ON_FAULT,
                    _ => {}
                }
            }
            snap.vmas[snap.len - 1].flags = bits;
            continue;
        }
        // A VMA header starts with "start-end "; the other lines with "Name:".
        let first = line.split(|&b| b == b' ').next().unwrap_or(b"");
        if first.ends_with(b":") || first.is_empty() {
            continue;
        }
        let Some(dash) = first.iter().position(|&b| b == b'-') else {
            continue;
        };
        let hex = |digits: &[u8]| -> Result<usize, String> {
            let mut value = 0usize;
            for &c in digits {
                let digit = (c as char).to_digit(16).ok_or("smaps: bad VMA header")?;
                value = value * 16 + digit as usize;
            }
            Ok(value)
        };
        let (start, end) = (hex(&first[..dash])?, hex(&first[dash + 1..])?);
        if snap.len == MAX_VMAS {
            return Err(format!("more than {MAX_VMAS} VMAs"));
        }
        snap.vmas[snap.len] = VmaLock {
            start,
            end,
            flags: 0,
        };
        snap.len += 1;
    }
    Ok(())
}

fn flag_names(flags: u8) -> &'static str {
    match flags {
        0 => "unlocked",
        LOCKED => "lo",
        ON_FAULT => "lf without lo",
        _ => "lo lf",
    }
}

pub struct Locked {
    mode: Mode,
    locked: Mapping,
    on_fault: Mapping,
    plain: Mapping,
    smaps: Vec<u8>,
    before: Box<Snapshot>,
    after: Box<Snapshot>,
}

impl Locked {
    pub fn new(mode: Mode) -> Result<Locked, String> {
        let page = sys::page_size();
        let len = REGION_PAGES * page;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let mut locked = Mapping::anon(len, rw, 0)?;
        let mut on_fault = Mapping::anon(len, rw, 0)?;
        let mut plain = Mapping::anon(len, rw, 0)?;
        // Different protections keep the three from merging into one VMA.
        for (i, b) in locked.bytes_mut().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        on_fault.bytes_mut()[0] = 0x5a;
        plain.bytes_mut()[0] = 0xa5;
        plain
            .protect(libc::PROT_READ)
            .map_err(|e| format!("mprotect: errno {e}"))?;
        // SAFETY: locking our own mappings; no memory is changed.
        let r = unsafe { libc::mlock(locked.addr() as *const libc::c_void, len) };
        if r != 0 {
            return Err(format!("mlock: errno {}", errno()));
        }
        // SAFETY: as above.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mlock2,
                on_fault.addr(),
                len,
                libc::MLOCK_ONFAULT as libc::c_uint,
            )
        };
        if r != 0 {
            return Err(format!("mlock2(MLOCK_ONFAULT): errno {}", errno()));
        }
        // 4 MiB is far more than this program's smaps.
        let smaps = vec![0u8; 4 << 20];
        let flags = match mode {
            Mode::Mlock => 0,
            Mode::All => libc::MCL_CURRENT | libc::MCL_FUTURE,
            Mode::FutureOnFault => libc::MCL_FUTURE | libc::MCL_ONFAULT,
        };
        // SAFETY: mlockall changes no memory.
        if flags != 0 && unsafe { libc::mlockall(flags) } != 0 {
            return Err(format!("mlockall({flags:#x}): errno {}", errno()));
        }
        Ok(Locked {
            mode,
            locked,
            on_fault,
            plain,
            smaps,
            before: Snapshot::new(),
            after: Snapshot::new(),
        })
    }

    /// The lock flags a new mapping gets (mm->def_flags), from a mapping made and removed.
    fn new_mapping_flags(&mut self, chk: &mut Check) -> Option<u8> {
        let len = sys::page_size();
        // SAFETY: a fresh anonymous mapping, unmapped below; nothing refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            fail!(chk, "mlock: mmap of a new page: errno {}", errno());
            return None;
        }
        let read = read_locks(&mut self.smaps, &mut self.after);
        // SAFETY: unmapping the page mapped above.
        unsafe { libc::munmap(p, len) };
        if let Err(e) = read {
            fail!(chk, "mlock: {e}");
            return None;
        }
        let flags = self.after.at(p as usize);
        if flags.is_none() {
            fail!(chk, "mlock: the new mapping {p:?} is not in smaps");
        }
        flags
    }
}

impl Part for Locked {
    fn before_ready(&mut self) {
        if let Err(e) = read_locks(&mut self.smaps, &mut self.before) {
            crate::die(format_args!("mlock: before ready: {e}"));
        }
    }

    fn verify(&mut self, chk: &mut Check) {
        // The setup itself, as recorded before the dump.
        let expect_region = |snap: &Snapshot, addr: usize, want: u8, what: &str, c: &mut Check| {
            let got = snap.holding(addr);
            if got != Some(want) {
                fail!(
                    c,
                    "mlock: {what} region at {addr:#x} is {} before the dump, expected {}",
                    got.map_or("missing", flag_names),
                    flag_names(want)
                );
            }
        };
        let plain_flags = if self.mode == Mode::All { LOCKED } else { 0 };
        let on_fault_flags = if self.mode == Mode::All {
            // mlockall(MCL_CURRENT) without MCL_ONFAULT locks the region fully.
            LOCKED
        } else {
            LOCKED | ON_FAULT
        };
        expect_region(&self.before, self.locked.addr(), LOCKED, "mlock()ed", chk);
        expect_region(
            &self.before,
            self.on_fault.addr(),
            on_fault_flags,
            "on-fault",
            chk,
        );
        expect_region(&self.before, self.plain.addr(), plain_flags, "plain", chk);

        if let Err(e) = read_locks(&mut self.smaps, &mut self.after) {
            fail!(chk, "mlock: {e}");
            return;
        }
        // By the VMA holding each one's last page: [stack] may have grown down since.
        for v in &self.before.vmas[..self.before.len] {
            match self.after.holding(v.end - 1) {
                Some(flags) if flags == v.flags => {}
                got => fail!(
                    chk,
                    "mlock: VMA at {:#x} is {} after restore, was {}",
                    v.start,
                    got.map_or("missing", flag_names),
                    flag_names(v.flags)
                ),
            }
        }
        // Locked on fault: the untouched pages are still not there.
        if self.mode != Mode::All {
            let page = sys::page_size();
            let mut resident = [0u8; REGION_PAGES];
            // SAFETY: mincore fills one byte per page of our own mapping into `resident`.
            let r = unsafe {
                libc::mincore(
                    self.on_fault.addr() as *mut libc::c_void,
                    REGION_PAGES * page,
                    resident.as_mut_ptr(),
                )
            };
            if r != 0 {
                fail!(chk, "mlock: mincore: errno {}", errno());
            } else if let Some(i) = resident[1..].iter().position(|&b| b & 1 != 0) {
                fail!(
                    chk,
                    "mlock: page {} of the on-fault region is resident though never touched",
                    i + 1
                );
            }
        }
        if self.on_fault.bytes()[0] != 0x5a || self.plain.bytes()[0] != 0xa5 {
            fail!(chk, "mlock: region contents changed");
        }
        if let Some(i) = self
            .locked
            .bytes()
            .iter()
            .enumerate()
            .position(|(i, &b)| b != (i % 251) as u8)
        {
            fail!(chk, "mlock: locked region differs at byte {i}");
        }
        let want_new = match self.mode {
            Mode::Mlock => 0,
            Mode::All => LOCKED,
            Mode::FutureOnFault => LOCKED | ON_FAULT,
        };
        if let Some(got) = self.new_mapping_flags(chk)
            && got != want_new
        {
            fail!(
                chk,
                "mlock: a new mapping is {}, expected {} (mlockall MCL_FUTURE{})",
                flag_names(got),
                flag_names(want_new),
                if want_new == 0 { " not set" } else { "" }
            );
        }
    }
}
