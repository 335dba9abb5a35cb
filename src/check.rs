//! `rcr check`: which kernel features rcr uses are available here.
//!
//! Every probe is real and runs only on processes rcr creates for the purpose: a `sleep` child
//! that is seized, inspected and killed, and a clone3 child with a chosen pid. Both are killed
//! and reaped on every path.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use caps::{CapSet, Capability};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use anyhow::Result;

use crate::sys::probe::{self, UFFD_FEATURE_MOVE, UFFD_FEATURE_NAMES, UFFD_FEATURE_WP_ASYNC};
use crate::sys::{clone3, cpu, pidfd};

/// The oldest kernel rcr supports (clone3 set_tid 5.5, pidfd_getfd 5.6, rcr's floor 5.10).
const MIN_KERNEL: (u32, u32) = (5, 10);
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// rcr cannot work without it.
    Required,
    /// Some features or speedups depend on it.
    Optional,
    /// A fact about this machine, nothing to pass or fail.
    Info,
}

#[derive(Debug, Clone)]
struct Row {
    feature: String,
    need: Need,
    ok: bool,
    detail: String,
}

impl Row {
    fn new(feature: &str, need: Need, ok: bool, detail: impl Into<String>) -> Row {
        Row {
            feature: feature.to_owned(),
            need,
            ok,
            detail: detail.into(),
        }
    }

    fn info(feature: &str, detail: impl Into<String>) -> Row {
        Row::new(feature, Need::Info, true, detail)
    }

    fn status(&self) -> &'static str {
        match (self.need, self.ok) {
            (Need::Info, _) => "info",
            (_, true) => "ok",
            (Need::Required, false) => "MISSING",
            (Need::Optional, false) => "absent",
        }
    }
}

/// Prints the table; returns whether everything required is available.
pub fn check() -> Result<bool> {
    let rows = probe_all();
    print!("{}", render(&rows));
    let missing: Vec<&str> = rows
        .iter()
        .filter(|r| r.need == Need::Required && !r.ok)
        .map(|r| r.feature.as_str())
        .collect();
    if missing.is_empty() {
        println!("\nall required features are available");
    } else {
        println!("\nmissing required features: {}", missing.join(", "));
    }
    Ok(missing.is_empty())
}

fn probe_all() -> Vec<Row> {
    let mut rows = vec![kernel_row(), cpu_row()];
    rows.extend(capability_rows());
    let scan_works = probe_traced_child(&mut rows);
    let uffd_features = userfaultfd_row(&mut rows);
    rows.push(dirty_tracking_row(uffd_features, scan_works));
    rows.push(clone3_row());
    rows.push(mm_map_row());
    rows.push(sock_diag_row());
    rows.push(timerfd_ticks_row());
    rows.push(vdso_row());
    rows
}

/// Unix sockets are described by sock_diag over netlink (the dump needs it for them).
fn sock_diag_row() -> Row {
    let feature = "unix sock_diag (netlink)";
    let pair = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    );
    match (pair, crate::sys::socket::unix_sockets()) {
        (Ok((a, _b)), Ok(all)) => {
            use std::os::unix::fs::MetadataExt;
            let inode = std::fs::metadata(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&a)
            ))
            .map(|m| m.ino() as u32)
            .unwrap_or(0);
            let seen = all.get(&inode).is_some_and(|i| i.peer != 0);
            Row::new(
                feature,
                Need::Optional,
                seen,
                if seen {
                    format!(
                        "{} unix sockets listed; a new pair seen with its peer",
                        all.len()
                    )
                } else {
                    "a new socket pair is not listed with its peer: processes with unix sockets cannot be dumped".to_owned()
                },
            )
        }
        (_, Err(err)) => Row::new(
            feature,
            Need::Optional,
            false,
            format!(
                "{}: processes with unix sockets cannot be dumped",
                errno_text(&err)
            ),
        ),
        (Err(err), _) => Row::new(feature, Need::Optional, false, format!("socketpair: {err}")),
    }
}

/// TFD_IOC_SET_TICKS (CONFIG_CHECKPOINT_RESTORE): a timerfd's unread expirations come back.
fn timerfd_ticks_row() -> Row {
    let feature = "timerfd TFD_IOC_SET_TICKS";
    match crate::sys::fd::timerfd(libc::CLOCK_MONOTONIC, libc::O_NONBLOCK, 0, 0, 3) {
        Ok(fd) => {
            let mut ticks = [0u8; 8];
            let read = nix::unistd::read(&fd, &mut ticks);
            let ok = read == Ok(8) && u64::from_ne_bytes(ticks) == 3;
            Row::new(
                feature,
                Need::Optional,
                ok,
                if ok {
                    "a new timerfd given 3 ticks reads 3".to_owned()
                } else {
                    format!("read gave {read:?}: unread timerfd expirations are lost")
                },
            )
        }
        Err(err) => Row::new(
            feature,
            Need::Optional,
            false,
            format!(
                "{}: timerfds with unread expirations cannot be restored",
                errno_text(&err)
            ),
        ),
    }
}

/// The table with aligned columns.
fn render(rows: &[Row]) -> String {
    let header = ("feature", "status", "detail");
    let w0 = rows
        .iter()
        .map(|r| r.feature.len())
        .chain([header.0.len()])
        .max()
        .unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r.status().len())
        .chain([header.1.len()])
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "{:<w0$} | {:<w1$} | {}", header.0, header.1, header.2);
    let _ = writeln!(
        out,
        "{}-+-{}-+-{}",
        "-".repeat(w0),
        "-".repeat(w1),
        "-".repeat(40)
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<w0$} | {:<w1$} | {}",
            r.feature,
            r.status(),
            r.detail
        );
    }
    out
}

fn errno_text(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => format!("{} ({err})", Errno::from_raw(code)),
        None => err.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The machine

fn kernel_row() -> Row {
    let release = match nix::sys::utsname::uname() {
        Ok(u) => u.release().to_string_lossy().into_owned(),
        Err(err) => return Row::new("kernel", Need::Required, false, format!("uname: {err}")),
    };
    match parse_release(&release) {
        Some(version) if version >= MIN_KERNEL => Row::new("kernel", Need::Required, true, release),
        Some(_) => Row::new(
            "kernel",
            Need::Required,
            false,
            format!(
                "{release}: rcr needs {}.{} or newer",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        None => Row::new(
            "kernel",
            Need::Required,
            false,
            format!("{release}: unparsable"),
        ),
    }
}

/// (major, minor) of a kernel release such as `6.18.44-fc-v669`.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn cpu_row() -> Row {
    let xcr0 = cpu::xcr0();
    let leaf = cpu::cpuid(0xd, 0);
    Row::info(
        "CPU, XCR0",
        format!(
            "{}, XCR0 {xcr0:#x} ({}); XSAVE area {} bytes for XCR0, {} max (CPUID 0xD)",
            cpu::vendor(),
            xcr0_names(xcr0),
            leaf.ebx,
            leaf.ecx
        ),
    )
}

fn xcr0_names(xcr0: u64) -> String {
    const NAMES: [(u64, &str); 8] = [
        (1 << 0, "x87"),
        (1 << 1, "SSE"),
        (1 << 2, "AVX"),
        ((1 << 3) | (1 << 4), "MPX"),
        ((1 << 5) | (1 << 6) | (1 << 7), "AVX-512"),
        (1 << 9, "PKRU"),
        (1 << 17, "AMX-TILECFG"),
        (1 << 18, "AMX-TILEDATA"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bits, _)| xcr0 & bits == *bits)
        .map(|(_, name)| *name)
        .collect();
    names.join(" ")
}

fn capability_rows() -> Vec<Row> {
    let has = |set, cap| caps::has_cap(None, set, cap).unwrap_or(false);
    let effective = |cap| has(CapSet::Effective, cap);
    let admin = effective(Capability::CAP_SYS_ADMIN);
    let cr = effective(Capability::CAP_CHECKPOINT_RESTORE);
    let held: Vec<&str> = [(admin, "CAP_SYS_ADMIN"), (cr, "CAP_CHECKPOINT_RESTORE")]
        .iter()
        .filter(|(yes, _)| *yes)
        .map(|(_, name)| *name)
        .collect();
    let admin_row = Row::new(
        "CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE",
        Need::Required,
        admin || cr,
        if held.is_empty() {
            "neither in the effective set: clone3 set_tid and PR_SET_MM_MAP are refused".to_owned()
        } else {
            format!("effective: {}", held.join(", "))
        },
    );
    let ptrace = effective(Capability::CAP_SYS_PTRACE);
    let ptrace_row = Row::new(
        "CAP_SYS_PTRACE",
        Need::Optional,
        ptrace,
        if ptrace {
            "effective: processes of any user can be dumped"
        } else {
            "not effective: only processes of this user can be dumped"
        },
    );
    let resource = effective(Capability::CAP_SYS_RESOURCE);
    let bounded = has(CapSet::Bounding, Capability::CAP_SYS_RESOURCE);
    let resource_row = Row::new(
        "CAP_SYS_RESOURCE",
        Need::Optional,
        resource,
        match (resource, bounded) {
            (true, _) => "effective",
            (false, true) => "not effective: rlimits are read from /proc/PID/limits, not prlimit",
            (false, false) => {
                "not even in the bounding set: rlimits are read from /proc/PID/limits, not prlimit"
            }
        },
    );
    vec![admin_row, ptrace_row, resource_row]
}

// ---------------------------------------------------------------------------------------------
// A traced child

/// A `sleep` child of our own, killed and reaped when dropped (also when it is traced).
struct ProbeChild {
    pid: i32,
    _child: std::process::Child,
}

impl ProbeChild {
    fn spawn() -> std::io::Result<ProbeChild> {
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(ProbeChild {
            pid: child.id() as i32,
            _child: child,
        })
    }

    /// Waits (at most `limit`) until the child sleeps in (clock_)nanosleep, past its startup,
    /// so that glibc has registered rseq and the stack holds more than the loader's frames.
    fn wait_asleep(&self, limit: std::time::Duration) -> bool {
        let path = format!("/proc/{}/syscall", self.pid);
        let started = Instant::now();
        loop {
            let nr = fs::read_to_string(&path).ok().and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<i64>().ok())
            });
            if matches!(nr, Some(n) if n == libc::SYS_clock_nanosleep || n == libc::SYS_nanosleep) {
                return true;
            }
            if started.elapsed() > limit {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for ProbeChild {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGKILL);
        // A ptrace stop reported before the kill may come first: wait until it is gone.
        loop {
            match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
    }
}

const CHILD_FEATURES: [(&str, Need); 9] = [
    ("PTRACE_SEIZE + PTRACE_INTERRUPT", Need::Required),
    ("PTRACE_GETREGSET NT_X86_XSTATE", Need::Required),
    ("PTRACE_GETSIGMASK", Need::Required),
    ("PTRACE_GET_RSEQ_CONFIGURATION", Need::Required),
    ("pidfd_open + pidfd_getfd", Need::Required),
    ("process_vm_readv", Need::Optional),
    ("/proc/PID/pagemap", Need::Required),
    ("PAGEMAP_SCAN ioctl", Need::Optional),
    ("soft-dirty bit", Need::Optional),
];

/// Everything probed on a seized `sleep` child. Returns whether PAGEMAP_SCAN works.
fn probe_traced_child(rows: &mut Vec<Row>) -> bool {
    let child = match ProbeChild::spawn() {
        Ok(child) => child,
        Err(err) => {
            for (feature, need) in CHILD_FEATURES {
                rows.push(Row::new(
                    feature,
                    need,
                    false,
                    format!("not probed: cannot start a `sleep` child: {err}"),
                ));
            }
            return false;
        }
    };
    let pid = child.pid;
    let asleep = child.wait_asleep(std::time::Duration::from_secs(5));
    let mut push = |i: usize, ok: bool, detail: String| {
        let (feature, need) = CHILD_FEATURES[i];
        rows.push(Row::new(feature, need, ok, detail));
    };

    // Seize and interrupt; everything ptrace below needs the stop.
    let started = Instant::now();
    let seized = crate::ptrace::seize(pid);
    let stop_us = started.elapsed().as_micros();
    let regs = seized.as_ref().ok().map(|_| crate::ptrace::get_regs(pid));
    match (&seized, &regs) {
        (Ok(_), Some(Ok(_))) => push(
            0,
            true,
            format!(
                "interrupt stop in {stop_us} µs; registers readable{}",
                if asleep {
                    ""
                } else {
                    " (the child never reached its sleep)"
                }
            ),
        ),
        (Ok(_), Some(Err(err))) => push(0, false, format!("stopped, but PTRACE_GETREGS: {err:#}")),
        (Err(err), _) => push(0, false, format!("{err:#}{}", yama_hint())),
        (Ok(_), None) => unreachable!("registers are read after a seize"),
    }
    let stopped = seized.is_ok();
    let not_stopped = || "not probed: the child could not be seized".to_owned();

    // XSAVE area.
    if stopped {
        let max = crate::dump::task::xstate_max_size();
        match crate::sys::ptrace::get_xstate(pid, max) {
            Ok(x) => {
                let bv = x
                    .get(512..520)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                push(1, true, format!("{} bytes, xstate_bv {bv:#x}", x.len()));
            }
            Err(err) => push(1, false, errno_text(&err)),
        }
        match crate::sys::ptrace::get_sigmask(pid) {
            Ok(mask) => push(2, true, format!("mask {mask:#x}")),
            Err(err) => push(2, false, errno_text(&err)),
        }
        match crate::sys::ptrace::get_rseq_config(pid) {
            Ok(Some(c)) => push(
                3,
                true,
                format!(
                    "rseq at {:#x}, size {}, signature {:#x}",
                    c.rseq_abi_pointer, c.rseq_abi_size, c.signature
                ),
            ),
            Ok(None) => push(3, true, "works (the child registered no rseq)".to_owned()),
            Err(err) => push(3, false, errno_text(&err)),
        }
    } else {
        for i in 1..=3 {
            push(i, false, not_stopped());
        }
    }

    // pidfd_getfd of the child's stdin, which is /dev/null.
    let getfd = pidfd::pidfd_open(pid)
        .map_err(|e| format!("pidfd_open: {}", errno_text(&e)))
        .and_then(|pidfd| {
            pidfd::pidfd_getfd(&pidfd, 0).map_err(|e| format!("pidfd_getfd: {}", errno_text(&e)))
        })
        .and_then(|fd| {
            use std::os::fd::AsRawFd;
            fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map_err(|e| format!("readlink of the copy: {e}"))
        });
    match getfd {
        Ok(path) if path == Path::new("/dev/null") => push(
            4,
            true,
            "copied fd 0 of the stopped child: /dev/null".to_owned(),
        ),
        Ok(path) => push(
            4,
            false,
            format!("copied fd 0 is {}, expected /dev/null", path.display()),
        ),
        Err(err) => push(4, false, err),
    }

    // Memory: the stack page at rsp.
    let rsp = match &regs {
        Some(Ok(r)) => Some(r.rsp),
        _ => None,
    };
    match rsp {
        Some(rsp) => {
            let mut buf = [0u8; 64];
            let remote = [RemoteIoVec {
                base: rsp as usize,
                len: buf.len(),
            }];
            match process_vm_readv(
                Pid::from_raw(pid),
                &mut [std::io::IoSliceMut::new(&mut buf)],
                &remote,
            ) {
                Ok(n) => push(
                    5,
                    n == buf.len(),
                    format!("read {n} bytes at the child's rsp"),
                ),
                Err(err) => push(5, false, format!("{err}")),
            }
        }
        None => push(5, false, not_stopped()),
    }
    let pagemap = File::open(format!("/proc/{pid}/pagemap"));
    let entry = match (&pagemap, rsp) {
        (Ok(file), Some(rsp)) => {
            let mut bytes = [0u8; 8];
            file.read_exact_at(&mut bytes, rsp / PAGE_SIZE * 8)
                .map(|()| u64::from_le_bytes(bytes))
                .map_err(|e| errno_text(&e))
        }
        (Err(err), _) => Err(format!("open: {}", errno_text(err))),
        (Ok(_), None) => Err(not_stopped()),
    };
    match &entry {
        Ok(e) => {
            let present = e & (1 << 63) != 0;
            let pfn = e & ((1 << 55) - 1);
            let detail = match (present, pfn) {
                (true, 0) => "readable; stack page present, PFNs hidden (no CAP_SYS_ADMIN)",
                (true, _) => "readable; stack page present, PFNs visible",
                (false, _) => "readable, but the stack page at rsp is not present",
            };
            push(6, present, detail.to_owned());
        }
        Err(err) => push(6, false, err.clone()),
    }

    // PAGEMAP_SCAN over the child's [stack] VMA.
    let stack = stack_vma(pid);
    let scan = match (&pagemap, stack) {
        (Ok(file), Some((start, end))) => probe::pagemap_scan(
            file,
            start,
            end,
            probe::PAGE_IS_PRESENT,
            probe::PAGE_IS_PRESENT | probe::PAGE_IS_WRITTEN | probe::PAGE_IS_SOFT_DIRTY,
            64,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTTY) => "ENOTTY: no PAGEMAP_SCAN before Linux 6.7".to_owned(),
            _ => errno_text(&e),
        }),
        (Err(_), _) => Err("not probed: pagemap unreadable".to_owned()),
        (Ok(_), None) => Err("not probed: no [stack] in the child's maps".to_owned()),
    };
    let scan_works = match &scan {
        Ok(s) if !s.regions.is_empty() => {
            let pages: u64 = s
                .regions
                .iter()
                .map(|r| (r.end - r.start) / PAGE_SIZE)
                .sum();
            push(
                7,
                true,
                format!(
                    "{} present region(s), {pages} page(s) in the child's [stack]",
                    s.regions.len()
                ),
            );
            true
        }
        Ok(_) => {
            push(
                7,
                false,
                "returned no present page in the child's [stack]".to_owned(),
            );
            false
        }
        Err(err) => {
            push(7, false, err.clone());
            false
        }
    };

    // Soft-dirty: a fresh process' written pages all carry bit 55 when the kernel has it.
    match entry {
        Ok(e) if e & (1 << 63) != 0 => {
            if e & (1 << 55) != 0 {
                push(8, true, "bit 55 set on a freshly written page".to_owned());
            } else {
                push(
                    8,
                    false,
                    "bit 55 clear on a freshly written page: CONFIG_MEM_SOFT_DIRTY is off"
                        .to_owned(),
                );
            }
        }
        _ => push(
            8,
            false,
            "not probed: no present page to look at".to_owned(),
        ),
    }
    drop(child);
    scan_works
}

/// The [stack] VMA of `pid`.
fn stack_vma(pid: i32) -> Option<(u64, u64)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        if !line.ends_with("[stack]") {
            return None;
        }
        let (start, end) = line.split_whitespace().next()?.split_once('-')?;
        Some((
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        ))
    })
}

/// Why ptrace may be refused, when Yama restricts it.
fn yama_hint() -> String {
    match fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        Ok(scope) if scope.trim() != "0" => {
            format!(" (kernel.yama.ptrace_scope = {})", scope.trim())
        }
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Probes on this process and on a clone3 child

/// Returns the supported UFFD_FEATURE_* bits, if userfaultfd works at all.
fn userfaultfd_row(rows: &mut Vec<Row>) -> Option<u64> {
    let via_syscall = probe::userfaultfd().and_then(|fd| probe::uffd_api(&fd));
    let via_dev = probe::userfaultfd_dev().and_then(|fd| probe::uffd_api(&fd));
    let describe = |r: &std::io::Result<probe::UffdApi>| match r {
        Ok(_) => "ok".to_owned(),
        Err(err) => errno_text(err),
    };
    let api = via_syscall.as_ref().or(via_dev.as_ref()).ok().copied();
    let mut detail = format!(
        "syscall: {}; /dev/userfaultfd: {}",
        describe(&via_syscall),
        describe(&via_dev)
    );
    if let Some(api) = api {
        let known = (1u64 << UFFD_FEATURE_NAMES.len()) - 1;
        let missing: Vec<&str> = UFFD_FEATURE_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| api.features & (1 << i) == 0)
            .map(|(_, name)| *name)
            .collect();
        let _ = write!(detail, "; features {:#x}", api.features);
        if missing.is_empty() {
            let _ = write!(detail, " (all {} known", UFFD_FEATURE_NAMES.len());
        } else {
            let _ = write!(detail, " (missing {}", missing.join(", "));
        }
        if api.features & !known != 0 {
            let _ = write!(detail, ", and newer ones");
        }
        detail.push(')');
    }
    rows.push(Row::new(
        "userfaultfd",
        Need::Optional,
        api.is_some(),
        detail,
    ));
    api.map(|a| a.features)
}

fn dirty_tracking_row(uffd_features: Option<u64>, scan_works: bool) -> Row {
    let wp_async = uffd_features.is_some_and(|f| f & UFFD_FEATURE_WP_ASYNC != 0);
    let ok = wp_async && scan_works;
    let detail = match (wp_async, scan_works) {
        (true, true) => {
            let mv = uffd_features.is_some_and(|f| f & UFFD_FEATURE_MOVE != 0);
            format!(
                "userfaultfd WP_ASYNC + PAGEMAP_SCAN (incremental dumps){}",
                if mv {
                    "; UFFDIO_MOVE for lazy restore"
                } else {
                    ""
                }
            )
        }
        (false, _) => "no userfaultfd WP_ASYNC: incremental dumps unavailable".to_owned(),
        (true, false) => "no PAGEMAP_SCAN: incremental dumps unavailable".to_owned(),
    };
    Row::new("dirty page tracking", Need::Optional, ok, detail)
}

/// Creates a child with a chosen free pid through clone3 set_tid, and reaps it.
fn clone3_row() -> Row {
    const FEATURE: &str = "clone3 with set_tid";
    let fail = |detail: String| Row::new(FEATURE, Need::Required, false, detail);
    let read_int =
        |path: &str| -> Option<i32> { fs::read_to_string(path).ok()?.trim().parse().ok() };
    let pid_max = read_int("/proc/sys/kernel/pid_max").unwrap_or(32768);
    let last = read_int("/proc/sys/kernel/ns_last_pid").unwrap_or(300);
    let mut last_err = None;
    // Far enough ahead of the last pid handed out that a concurrent fork is unlikely to take
    // it first; EEXIST (taken meanwhile) means try another.
    for attempt in 0..8 {
        let Some(wanted) = free_pid(last + 1000 + attempt * 97, pid_max) else {
            return fail(format!("no free pid below pid_max {pid_max}"));
        };
        match clone3::clone_with_pid(wanted, move || {
            if std::process::id() as i32 == wanted {
                0
            } else {
                1
            }
        }) {
            Ok(pid) => {
                let status = loop {
                    match waitpid(Pid::from_raw(pid), None) {
                        Err(Errno::EINTR) => continue,
                        other => break other,
                    }
                };
                return match status {
                    Ok(WaitStatus::Exited(_, 0)) if pid == wanted => Row::new(
                        FEATURE,
                        Need::Required,
                        true,
                        format!("created and reaped a child with the chosen pid {wanted}"),
                    ),
                    other => fail(format!("asked for pid {wanted}, got {pid}: {other:?}")),
                };
            }
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => last_err = Some(err),
            Err(err) => return fail(format!("pid {wanted}: {}", errno_text(&err))),
        }
    }
    fail(format!(
        "every chosen pid was taken meanwhile: {}",
        last_err.map(|e| errno_text(&e)).unwrap_or_default()
    ))
}

/// The first pid from `from` (wrapping within 300..pid_max) that no process or thread uses.
fn free_pid(from: i32, pid_max: i32) -> Option<i32> {
    const RESERVED: i32 = 300;
    let span = pid_max - RESERVED;
    if span <= 0 {
        return None;
    }
    (0..span)
        .map(|i| RESERVED + (from - RESERVED + i).rem_euclid(span))
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

fn mm_map_row() -> Row {
    let map_files = Path::new("/proc/self/map_files").is_dir();
    let size = probe::prctl_mm_map_size();
    let detail = format!(
        "/proc/self/map_files {}; PR_SET_MM_MAP_SIZE {}",
        if map_files { "present" } else { "absent" },
        match &size {
            Ok(size) => format!("= {size}"),
            Err(err) => errno_text(err),
        }
    );
    Row::new(
        "PR_SET_MM_MAP (CONFIG_CHECKPOINT_RESTORE)",
        Need::Required,
        size.is_ok(),
        detail,
    )
}

fn vdso_row() -> Row {
    match fs::read_to_string("/proc/self/maps") {
        Ok(maps) => Row::info("vDSO layout", vdso_layout(&maps)),
        Err(err) => Row::info("vDSO layout", format!("/proc/self/maps: {err}")),
    }
}

/// The special mappings of a maps file and their sizes: `[vvar] 16 KiB, [vdso] 8 KiB`.
fn vdso_layout(maps: &str) -> String {
    let parts: Vec<String> = maps
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().nth(5)?;
            if !matches!(name, "[vvar]" | "[vvar_vclock]" | "[vdso]" | "[vsyscall]") {
                return None;
            }
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            let size = u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?;
            Some(format!("{name} {} KiB", size / 1024))
        })
        .collect();
    if parts.is_empty() {
        "no [vdso] mapping".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0"), Some((5, 10)));
        assert_eq!(parse_release("6.1"), Some((6, 1)));
        assert_eq!(parse_release("x"), None);
        assert!(parse_release("5.9.1").unwrap() < MIN_KERNEL);
        assert!(parse_release("6.0.1").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn vdso_layout_from_maps() {
        let maps = "\
7f5bb1445000-7f5bb1452000 rw-p 00000000 00:00 0
7f5bb145d000-7f5bb1461000 r--p 00000000 00:00 0                          [vvar]
7f5bb1461000-7f5bb1463000 r--p 00000000 00:00 0                          [vvar_vclock]
7f5bb1463000-7f5bb1465000 r-xp 00000000 00:00 0                          [vdso]
7fff5229e000-7fff522bf000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
        assert_eq!(
            vdso_layout(maps),
            "[vvar] 16 KiB, [vvar_vclock] 8 KiB, [vdso] 8 KiB, [vsyscall] 4 KiB"
        );
        assert_eq!(vdso_layout(""), "no [vdso] mapping");
    }

    #[test]
    fn xcr0_is_named() {
        assert_eq!(xcr0_names(0xe7), "x87 SSE AVX AVX-512");
        assert_eq!(
            xcr0_names(0x602e7),
            "x87 SSE AVX AVX-512 PKRU AMX-TILECFG AMX-TILEDATA"
        );
    }

    #[test]
    fn free_pid_wraps_and_skips_used() {
        let own = std::process::id() as i32;
        let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max")
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(32768);
        let free = free_pid(own, pid_max).unwrap();
        assert_ne!(free, own);
        assert!((300..pid_max).contains(&free));
        assert!((300..pid_max).contains(&free_pid(pid_max + 5, pid_max).unwrap()));
    }

    #[test]
    fn table_is_aligned_and_statuses_follow_need() {
        let rows = vec![
            Row::new("a", Need::Required, false, "x"),
            Row::new("longer feature", Need::Optional, false, "y"),
            Row::new("b", Need::Optional, true, "z"),
            Row::info("c", "w"),
        ];
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "feature        | status  | detail");
        assert_eq!(lines[2], "a              | MISSING | x");
        assert_eq!(lines[3], "longer feature | absent  | y");
        assert_eq!(lines[4], "b              | ok      | z");
        assert_eq!(lines[5], "c              | info    | w");
    }
}
