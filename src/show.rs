//! `rcr show`: every image of a directory decoded, as text or JSON.
//!
//! Files are shown in a fixed order: inventory, pstree, then for each pid (ascending) core, mm,
//! pagemap, fds and the page data (summarized: size and page count, never dumped). Files that
//! are not rcr images are listed as skipped. A corrupt image is an error naming the file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::image::proto::{
    Fds, Inventory, Mm, PageMap, PsTree, SyscallRestart, TaskCore, ThreadCore, UserRegs, Vma,
    VmaKind, fd,
};
use crate::image::{ImageDir, Kind};

const PAGE_SIZE: u64 = 4096;
/// Offset of the XSAVE header's XSTATE_BV in the XSAVE area.
const XSTATE_BV_OFFSET: usize = 512;

/// Every image of one directory, decoded.
#[derive(Debug, Default)]
pub struct ImageSet {
    pub inventory: Option<Inventory>,
    pub pstree: Option<PsTree>,
    pub processes: BTreeMap<u32, ProcessImages>,
    /// Names of the directory entries that are not rcr images, sorted.
    pub skipped: Vec<String>,
}

/// The images of one process; None where the file is absent.
#[derive(Debug, Default)]
pub struct ProcessImages {
    pub core: Option<TaskCore>,
    pub mm: Option<Mm>,
    pub pagemap: Option<PageMap>,
    pub fds: Option<Fds>,
    /// Size in bytes of pages-PID.img.
    pub pages_bytes: Option<u64>,
}

pub fn show(dir: &Path, json: bool) -> Result<()> {
    let set = load(dir)?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&to_json(&set)?)?;
        text.push('\n');
        text
    } else {
        render_text(&set)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `rcr show DIR | head` is not an error.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Reads and decodes every image of `dir`.
pub fn load(dir: &Path) -> Result<ImageSet> {
    let images = ImageDir::open(dir)?;
    let mut set = ImageSet::default();
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file {
            set.skipped.push(name);
            continue;
        }
        if let Some((kind, pid)) = Kind::parse_file_name(&name) {
            match (kind, pid) {
                (Kind::Inventory, _) => set.inventory = Some(images.read(kind, None)?),
                (Kind::PsTree, _) => set.pstree = Some(images.read(kind, None)?),
                (_, Some(pid)) => {
                    let process = set.processes.entry(pid).or_default();
                    match kind {
                        Kind::Core => process.core = Some(images.read(kind, Some(pid))?),
                        Kind::Mm => process.mm = Some(images.read(kind, Some(pid))?),
                        Kind::PageMap => process.pagemap = Some(images.read(kind, Some(pid))?),
                        Kind::Fds => process.fds = Some(images.read(kind, Some(pid))?),
                        Kind::Inventory | Kind::PsTree => unreachable!("handled above"),
                    }
                }
                (_, None) => set.skipped.push(name),
            }
        } else if let Some(pid) = pages_file_pid(&name) {
            let size = entry
                .metadata()
                .with_context(|| format!("{name}: cannot stat"))?
                .len();
            set.processes.entry(pid).or_default().pages_bytes = Some(size);
        } else if (name.starts_with("memfd-") || name.starts_with("unlinked-"))
            && name.ends_with(".img")
        {
            // Raw memfd or unlinked-file content, described by the fds and mm images that
            // name its inode.
        } else {
            set.skipped.push(name);
        }
    }
    if set.inventory.is_none() && set.pstree.is_none() && set.processes.is_empty() {
        bail!("{} holds no rcr images", dir.display());
    }
    set.skipped.sort();
    Ok(set)
}

/// The pid of a `pages-PID.img` file name.
fn pages_file_pid(name: &str) -> Option<u32> {
    name.strip_prefix("pages-")?
        .strip_suffix(".img")?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Text

/// The whole set as readable text.
pub fn render_text(set: &ImageSet) -> String {
    let mut out = String::new();
    if let Some(inventory) = &set.inventory {
        text_inventory(&mut out, inventory);
    }
    if let Some(tree) = &set.pstree {
        text_pstree(&mut out, tree);
    }
    for (&pid, process) in &set.processes {
        if let Some(core) = &process.core {
            text_core(&mut out, pid, core);
        }
        if let Some(mm) = &process.mm {
            text_mm(&mut out, pid, mm);
        }
        if let Some(pagemap) = &process.pagemap {
            text_pagemap(&mut out, pid, pagemap);
        }
        if let Some(fds) = &process.fds {
            text_fds(&mut out, pid, fds);
        }
        if let Some(bytes) = process.pages_bytes {
            text_pages(&mut out, pid, bytes, process.pagemap.as_ref());
        }
    }
    if !set.skipped.is_empty() {
        heading(&mut out, "skipped (not rcr images)");
        for name in &set.skipped {
            let _ = writeln!(out, "{name}");
        }
    }
    out
}

fn heading(out: &mut String, name: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "== {name}");
}

fn text_inventory(out: &mut String, inv: &Inventory) {
    heading(out, &Kind::Inventory.file_name(None));
    let _ = writeln!(
        out,
        "format        {}.{}",
        inv.format_major, inv.format_minor
    );
    let _ = writeln!(out, "rcr version   {}", inv.rcr_version);
    let _ = writeln!(out, "kernel        {}", inv.kernel_release);
    let _ = writeln!(out, "root pid      {}", inv.root_pid);
    let _ = writeln!(
        out,
        "dumped at     {} ({} ns since the epoch)",
        utc_time(inv.dump_time_unix_ns),
        inv.dump_time_unix_ns
    );
    if let Some(cpu) = &inv.cpu {
        let _ = writeln!(out, "cpu vendor    {}", cpu.vendor);
        let _ = writeln!(out, "xcr0          {:#x}", cpu.xcr0);
        let _ = writeln!(out, "xstate size   {} bytes", cpu.xstate_size);
        for c in &cpu.xstate_layout {
            let _ = writeln!(
                out,
                "  xstate component {:>2}: offset {:>5} size {:>5}",
                c.index, c.offset, c.size
            );
        }
    }
}

fn text_pstree(out: &mut String, tree: &PsTree) {
    heading(out, &Kind::PsTree.file_name(None));
    for p in &tree.processes {
        let threads: Vec<String> = p.threads.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "pid {} ppid {} pgid {} sid {} threads {}",
            p.pid,
            p.ppid,
            p.pgid,
            p.sid,
            threads.join(",")
        );
    }
}

fn text_core(out: &mut String, pid: u32, core: &TaskCore) {
    heading(out, &Kind::Core.file_name(Some(pid)));
    let _ = writeln!(
        out,
        "pid {} comm {:?} state {} pgid {} sid {}",
        core.pid, core.comm, core.state, core.pgid, core.sid
    );
    let _ = writeln!(
        out,
        "personality {:#x} umask {:04o} pdeathsig {} xcomp_perm {:#x} thp_disable {}",
        core.personality, core.umask, core.pdeathsig, core.xcomp_perm, core.thp_disable
    );
    let custom: Vec<_> = core
        .sigactions
        .iter()
        .filter(|a| a.handler != 0 || a.flags != 0 || a.mask != 0)
        .collect();
    let _ = writeln!(
        out,
        "sigactions: {} recorded, {} not default",
        core.sigactions.len(),
        custom.len()
    );
    for a in custom {
        let handler = match a.handler {
            0 => "SIG_DFL".to_owned(),
            1 => "SIG_IGN".to_owned(),
            h => format!("{h:#x}"),
        };
        let _ = writeln!(
            out,
            "  signal {:>2} handler {handler} flags {:#x} restorer {:#x} mask {:#x}",
            a.signal, a.flags, a.restorer, a.mask
        );
    }
    for thread in &core.threads {
        text_thread(out, thread);
    }
}

fn text_thread(out: &mut String, t: &ThreadCore) {
    let restart = SyscallRestart::try_from(t.restart)
        .map(|r| r.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("unknown ({})", t.restart));
    let _ = writeln!(out, "thread {}", t.tid);
    let _ = writeln!(out, "  restart {restart} sigmask {:#018x}", t.sigmask);
    if let Some(regs) = &t.regs {
        text_regs(out, regs);
    } else {
        let _ = writeln!(out, "  registers: none");
    }
    match xstate_bv(&t.xstate) {
        Some(bv) => {
            let _ = writeln!(out, "  xstate {} bytes, xstate_bv {bv:#x}", t.xstate.len());
        }
        None => {
            let _ = writeln!(out, "  xstate {} bytes (no XSAVE header)", t.xstate.len());
        }
    }
    if let Some(ss) = &t.sigaltstack {
        let _ = writeln!(
            out,
            "  sigaltstack sp {:#x} size {:#x} flags {:#x}",
            ss.sp, ss.size, ss.flags
        );
    }
    let _ = writeln!(
        out,
        "  clear_child_tid {:#x} robust_list {:#x} len {}",
        t.clear_child_tid, t.robust_list, t.robust_list_len
    );
    match &t.rseq {
        Some(r) => {
            let _ = writeln!(
                out,
                "  rseq {:#x} length {} signature {:#x}",
                r.address, r.length, r.signature
            );
        }
        None => {
            let _ = writeln!(out, "  rseq none");
        }
    }
}

fn text_regs(out: &mut String, r: &UserRegs) {
    let rows: [&[(&str, u64)]; 7] = [
        &[
            ("rax", r.rax),
            ("rbx", r.rbx),
            ("rcx", r.rcx),
            ("rdx", r.rdx),
        ],
        &[
            ("rsi", r.rsi),
            ("rdi", r.rdi),
            ("rbp", r.rbp),
            ("rsp", r.rsp),
        ],
        &[("r8", r.r8), ("r9", r.r9), ("r10", r.r10), ("r11", r.r11)],
        &[
            ("r12", r.r12),
            ("r13", r.r13),
            ("r14", r.r14),
            ("r15", r.r15),
        ],
        &[
            ("rip", r.rip),
            ("eflags", r.eflags),
            ("orig_rax", r.orig_rax),
        ],
        &[("cs", r.cs), ("ss", r.ss), ("ds", r.ds), ("es", r.es)],
        &[
            ("fs", r.fs),
            ("gs", r.gs),
            ("fs_base", r.fs_base),
            ("gs_base", r.gs_base),
        ],
    ];
    for row in rows {
        out.push(' ');
        for (name, value) in row {
            let _ = write!(out, " {name:>8} {value:#018x}");
        }
        out.push('\n');
    }
}

/// XSTATE_BV from the XSAVE header of an NT_X86_XSTATE regset.
pub fn xstate_bv(xstate: &[u8]) -> Option<u64> {
    let bytes = xstate.get(XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn text_mm(out: &mut String, pid: u32, mm: &Mm) {
    heading(out, &Kind::Mm.file_name(Some(pid)));
    let _ = writeln!(out, "exe {}", mm.exe_path);
    let _ = writeln!(out, "code  {:#x}-{:#x}", mm.start_code, mm.end_code);
    let _ = writeln!(out, "data  {:#x}-{:#x}", mm.start_data, mm.end_data);
    let _ = writeln!(out, "brk   {:#x}-{:#x}", mm.start_brk, mm.brk);
    let _ = writeln!(out, "stack {:#x}", mm.start_stack);
    let _ = writeln!(out, "args  {:#x}-{:#x}", mm.arg_start, mm.arg_end);
    let _ = writeln!(out, "env   {:#x}-{:#x}", mm.env_start, mm.env_end);
    let _ = writeln!(out, "thp_disabled {}", mm.thp_disabled);
    if mm.mlockall_flags != 0 {
        let _ = writeln!(out, "mlockall_flags {:#x}", mm.mlockall_flags);
    }
    let _ = writeln!(out, "auxv ({} entries)", mm.auxv.len() / 2);
    for pair in mm.auxv.chunks(2) {
        let (kind, value) = (pair[0], pair.get(1).copied().unwrap_or(0));
        let name = auxv_name(kind)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("AT_{kind}"));
        let _ = writeln!(out, "  {name:<20} {value:#x}");
    }
    let _ = writeln!(out, "vmas ({})", mm.vmas.len());
    for vma in &mm.vmas {
        let _ = writeln!(out, "  {}", vma_line(vma));
    }
}

/// A VMA as /proc/PID/maps shows it, with its kind and whether its pages are in the image.
pub fn vma_line(vma: &Vma) -> String {
    let kind = VmaKind::try_from(vma.kind)
        .map(|k| k.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("KIND_{}", vma.kind));
    // The dump stores the device as makedev(major, minor).
    let (major, minor) = (libc::major(vma.dev), libc::minor(vma.dev));
    let mut line = format!(
        "{:08x}-{:08x} {} {:08x} {major:02x}:{minor:02x} {:<8} {:<12} {:<5}",
        vma.start,
        vma.end,
        perms(vma),
        vma.pgoff,
        vma.inode,
        kind,
        if vma.has_pages { "pages" } else { "-" },
    );
    if !vma.path.is_empty() {
        line.push(' ');
        line.push_str(&vma.path);
    }
    line.trim_end().to_owned()
}

fn perms(vma: &Vma) -> String {
    let prot = vma.prot as i32;
    let flags = vma.flags as i32;
    let bit = |set: bool, c: char| if set { c } else { '-' };
    [
        bit(prot & libc::PROT_READ != 0, 'r'),
        bit(prot & libc::PROT_WRITE != 0, 'w'),
        bit(prot & libc::PROT_EXEC != 0, 'x'),
        if flags & libc::MAP_SHARED != 0 {
            's'
        } else {
            'p'
        },
    ]
    .into_iter()
    .collect()
}

fn auxv_name(kind: u64) -> Option<&'static str> {
    Some(match kind {
        0 => "AT_NULL",
        3 => "AT_PHDR",
        4 => "AT_PHENT",
        5 => "AT_PHNUM",
        6 => "AT_PAGESZ",
        7 => "AT_BASE",
        8 => "AT_FLAGS",
        9 => "AT_ENTRY",
        11 => "AT_UID",
        12 => "AT_EUID",
        13 => "AT_GID",
        14 => "AT_EGID",
        15 => "AT_PLATFORM",
        16 => "AT_HWCAP",
        17 => "AT_CLKTCK",
        23 => "AT_SECURE",
        24 => "AT_BASE_PLATFORM",
        25 => "AT_RANDOM",
        26 => "AT_HWCAP2",
        27 => "AT_RSEQ_FEATURE_SIZE",
        28 => "AT_RSEQ_ALIGN",
        29 => "AT_HWCAP3",
        30 => "AT_HWCAP4",
        31 => "AT_EXECFN",
        33 => "AT_SYSINFO_EHDR",
        51 => "AT_MINSIGSTKSZ",
        _ => return None,
    })
}

fn text_pagemap(out: &mut String, pid: u32, pm: &PageMap) {
    heading(out, &Kind::PageMap.file_name(Some(pid)));
    let page_size = u64::from(pm.page_size);
    let _ = writeln!(
        out,
        "page size {} bytes, {} pages in {} runs",
        pm.page_size,
        pm.pages_total,
        pm.runs.len()
    );
    let mut offset = 0u64;
    for run in &pm.runs {
        let len = run.nr_pages.saturating_mul(page_size);
        let _ = writeln!(
            out,
            "  {:08x}-{:08x} {:>6} pages at file offset {offset:#x}",
            run.vaddr,
            run.vaddr.saturating_add(len),
            run.nr_pages
        );
        offset = offset.saturating_add(len);
    }
    if pm.chunk_crc32.is_empty() {
        let _ = writeln!(out, "no page checksums (an image from before format 1.5)");
    } else {
        let _ = writeln!(
            out,
            "{} CRC32 checksums, one per {} bytes of pages",
            pm.chunk_crc32.len(),
            pm.checksum_chunk
        );
    }
    let listed: u64 = pm.runs.iter().map(|r| r.nr_pages).sum();
    if listed != pm.pages_total {
        let _ = writeln!(
            out,
            "  WARNING: the runs hold {listed} pages, pages_total says {}",
            pm.pages_total
        );
    }
}

fn text_fds(out: &mut String, pid: u32, fds: &Fds) {
    heading(out, &Kind::Fds.file_name(Some(pid)));
    let _ = writeln!(out, "cwd  {}", fds.cwd);
    let _ = writeln!(out, "root {}", fds.root);
    if let Some(ctty) = &fds.ctty {
        let _ = writeln!(
            out,
            "controlling terminal /dev/pts/{}{}{}",
            ctty.index,
            if ctty.external {
                " (outside the tree: shell job)"
            } else {
                ""
            },
            if ctty.foreground_pgid > 0 {
                format!(", foreground group {}", ctty.foreground_pgid)
            } else {
                String::new()
            }
        );
    }
    for f in &fds.fds {
        let cloexec = if f.cloexec { " cloexec" } else { "" };
        let dup = f
            .dup_of
            .map(|of| format!(" (dup of fd {of})"))
            .unwrap_or_default();
        let what = match &f.file {
            Some(fd::File::Regular(r)) => format!(
                "regular {} {} pos {} size {} mode {:o}",
                r.path,
                open_flags(r.flags),
                r.pos,
                r.size,
                r.mode
            ),
            Some(fd::File::Chardev(c)) => format!(
                "chardev {} {} rdev {}:{} pos {}",
                c.path,
                open_flags(c.flags),
                c.rdev_major,
                c.rdev_minor,
                c.pos
            ),
            Some(fd::File::Pipe(p)) => format!(
                "pipe:[{}] {} end {}{}{}",
                p.inode,
                if p.write_end { "write" } else { "read" },
                open_flags(p.flags),
                if p.has_data {
                    format!(" size {} holding {} bytes", p.pipe_size, p.data.len())
                } else {
                    String::new()
                },
                if p.external {
                    " (its other end outside the tree)"
                } else {
                    ""
                }
            ),
            Some(fd::File::Eventfd(e)) => format!(
                "eventfd count {}{} {}",
                e.count,
                if e.semaphore { " semaphore" } else { "" },
                open_flags(e.flags)
            ),
            Some(fd::File::Memfd(m)) => format!(
                "memfd:{} inode {} {} pos {} size {} seals {:#x}",
                m.name,
                m.inode,
                open_flags(m.flags),
                m.pos,
                m.size,
                m.seals
            ),
            Some(fd::File::Signalfd(sfd)) => format!("signalfd mask {:#x}", sfd.mask),
            Some(fd::File::Timerfd(t)) => format!(
                "timerfd clock {} left {} ns interval {} ns",
                t.clock, t.value_ns, t.interval_ns
            ),
            Some(fd::File::Epoll(e)) => format!("epoll with {} targets", e.targets.len()),
            Some(fd::File::Inotify(i)) => format!(
                "inotify {} {} watches{}{}",
                open_flags(i.flags),
                i.watches.len(),
                i.watches
                    .iter()
                    .map(|w| format!(
                        " [wd {} mask {:#x} {} inode {}]",
                        w.wd, w.mask, w.path, w.inode
                    ))
                    .collect::<String>(),
                if i.pending_bytes > 0 {
                    format!(" ({} bytes of queued events not restored)", i.pending_bytes)
                } else {
                    String::new()
                }
            ),
            Some(fd::File::Unix(u)) => {
                let kind = match u.sock_type as i32 {
                    libc::SOCK_STREAM => "stream",
                    libc::SOCK_DGRAM => "dgram",
                    libc::SOCK_SEQPACKET => "seqpacket",
                    _ => "type?",
                };
                let mut text = format!("unix {kind} socket:[{}]", u.inode);
                if !u.name.is_empty() {
                    let _ = write!(text, " at {}", crate::dump::files::printable(&u.name));
                }
                if !u.renamed_to.is_empty() {
                    let _ = write!(
                        text,
                        " (its file renamed to {})",
                        crate::dump::files::printable(&u.renamed_to)
                    );
                }
                if u.state == crate::dump::files::TCP_LISTEN {
                    let _ = write!(
                        text,
                        " listening (backlog {}, {} waiting)",
                        u.backlog,
                        u.pending.len()
                    );
                } else if u.peer != 0 {
                    let _ = write!(text, " peer socket:[{}]", u.peer);
                }
                if u.accepted {
                    text.push_str(" accepted");
                }
                if u.waiting {
                    text.push_str(" waiting to be accepted");
                }
                if u.has_queue {
                    let _ = write!(text, " {} queued messages", u.queue.len());
                }
                text
            }
            Some(fd::File::Tty(t)) => text_tty(t),
            None => "unknown file type".to_owned(),
        };
        let _ = writeln!(out, "  {:>4} {what}{cloexec}{dup} file {}", f.fd, f.file_id);
    }
}

fn text_tty(t: &crate::image::proto::Tty) -> String {
    let end = if t.external {
        format!("terminal /dev/pts/{} outside the tree (shell job)", t.index)
    } else if t.master {
        format!("pty master of /dev/pts/{}", t.index)
    } else {
        format!("pty slave /dev/pts/{}", t.index)
    };
    let state = t.state.as_ref().map_or(String::new(), |s| {
        let termios = s.termios.clone().unwrap_or_default();
        format!(
            " iflag {:#o} oflag {:#o} cflag {:#o} lflag {:#o} size {}x{}{}{}{} output {} bytes input {} bytes",
            termios.iflag,
            termios.oflag,
            termios.cflag,
            termios.lflag,
            s.cols,
            s.rows,
            if s.packet_mode { " packet" } else { "" },
            if s.locked { " locked" } else { "" },
            if s.exclusive { " exclusive" } else { "" },
            s.output.len(),
            s.input.len()
        )
    });
    format!("{end} {}{state}", open_flags(t.flags))
}

fn open_flags(flags: u32) -> String {
    let mode = match flags as i32 & libc::O_ACCMODE {
        libc::O_RDONLY => "rdonly",
        libc::O_WRONLY => "wronly",
        libc::O_RDWR => "rdwr",
        _ => "badmode",
    };
    format!("{mode} (flags {flags:o})")
}

fn text_pages(out: &mut String, pid: u32, bytes: u64, pagemap: Option<&PageMap>) {
    heading(out, &format!("pages-{pid}.img"));
    let _ = write!(out, "{bytes} bytes, {} pages", bytes / PAGE_SIZE);
    if !bytes.is_multiple_of(PAGE_SIZE) {
        let _ = write!(out, " (WARNING: not a whole number of pages)");
    }
    if let Some(pm) = pagemap {
        let expected = pm.pages_total.saturating_mul(u64::from(pm.page_size));
        if expected != bytes {
            let _ = write!(
                out,
                " (WARNING: pagemap-{pid}.img describes {} pages = {expected} bytes)",
                pm.pages_total
            );
        }
    }
    out.push('\n');
}

/// `YYYY-MM-DD HH:MM:SS UTC` of a time in nanoseconds since the epoch.
fn utc_time(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// JSON

/// The whole set as one JSON object:
/// `{"inventory", "pstree", "processes": {"PID": {"core", "mm", "pagemap", "fds", "pages"}},
/// "skipped"}`. Enum fields are shown by name; xstate as a hex string with its size and
/// XSTATE_BV next to it.
pub fn to_json(set: &ImageSet) -> Result<Value> {
    let mut root = Map::new();
    root.insert("inventory".into(), serde_json::to_value(&set.inventory)?);
    root.insert("pstree".into(), serde_json::to_value(&set.pstree)?);
    let mut processes = Map::new();
    for (&pid, process) in &set.processes {
        let mut entry = Map::new();
        if let Some(core) = &process.core {
            entry.insert("core".into(), core_json(core)?);
        }
        if let Some(mm) = &process.mm {
            entry.insert("mm".into(), mm_json(mm)?);
        }
        if let Some(pagemap) = &process.pagemap {
            entry.insert("pagemap".into(), serde_json::to_value(pagemap)?);
        }
        if let Some(fds) = &process.fds {
            entry.insert("fds".into(), serde_json::to_value(fds)?);
        }
        if let Some(bytes) = process.pages_bytes {
            entry.insert(
                "pages".into(),
                json!({"bytes": bytes, "pages": bytes / PAGE_SIZE}),
            );
        }
        processes.insert(pid.to_string(), Value::Object(entry));
    }
    root.insert("processes".into(), Value::Object(processes));
    root.insert("skipped".into(), json!(set.skipped));
    Ok(Value::Object(root))
}

fn core_json(core: &TaskCore) -> Result<Value> {
    let mut value = serde_json::to_value(core)?;
    if let Some(threads) = value.get_mut("threads").and_then(Value::as_array_mut) {
        for (json, thread) in threads.iter_mut().zip(&core.threads) {
            let Some(obj) = json.as_object_mut() else {
                continue;
            };
            obj.insert("xstate".into(), Value::String(hex(&thread.xstate)));
            obj.insert("xstate_size".into(), json!(thread.xstate.len()));
            obj.insert(
                "xstate_bv".into(),
                json!(xstate_bv(&thread.xstate).map(|bv| format!("{bv:#x}"))),
            );
            if let Ok(restart) = SyscallRestart::try_from(thread.restart) {
                obj.insert("restart".into(), json!(restart.as_str_name()));
            }
        }
    }
    Ok(value)
}

fn mm_json(mm: &Mm) -> Result<Value> {
    let mut value = serde_json::to_value(mm)?;
    if let Some(vmas) = value.get_mut("vmas").and_then(Value::as_array_mut) {
        for (json, vma) in vmas.iter_mut().zip(&mm.vmas) {
            if let (Some(obj), Ok(kind)) = (json.as_object_mut(), VmaKind::try_from(vma.kind)) {
                obj.insert("kind".into(), json!(kind.as_str_name()));
            }
        }
    }
    Ok(value)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::proto::{
        CharDevice, CpuInfo, Fd, PageRun, PsTreeEntry, RegularFile, Rseq, SigAction,
    };

    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "rcr-show-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const PID: u32 = 4242;

    fn xstate() -> Vec<u8> {
        let mut x = vec![0u8; 1088];
        x[512..520].copy_from_slice(&0x2e7u64.to_le_bytes());
        x
    }

    /// A small hand-built image set.
    fn write_set(dir: &Path) {
        let images = ImageDir::create(dir).unwrap();
        images
            .write(
                Kind::Inventory,
                None,
                &Inventory {
                    format_major: 1,
                    format_minor: 0,
                    rcr_version: "0.1.0".into(),
                    kernel_release: "6.18.0-test".into(),
                    root_pid: PID,
                    dump_time_unix_ns: 1_700_000_000_123_456_789,
                    cpu: Some(CpuInfo {
                        vendor: "GenuineIntel".into(),
                        xcr0: 0x2e7,
                        xstate_size: 1088,
                        xstate_layout: vec![],
                    }),
                },
            )
            .unwrap();
        images
            .write(
                Kind::PsTree,
                None,
                &PsTree {
                    processes: vec![PsTreeEntry {
                        pid: PID,
                        ppid: 0,
                        pgid: PID,
                        sid: 1,
                        threads: vec![PID],
                        ..Default::default()
                    }],
                },
            )
            .unwrap();
        images
            .write(
                Kind::Core,
                Some(PID),
                &TaskCore {
                    pid: PID,
                    comm: "tiny".into(),
                    state: "S".into(),
                    umask: 0o022,
                    pgid: PID,
                    sid: 1,
                    sigactions: vec![
                        SigAction {
                            signal: 1,
                            ..Default::default()
                        },
                        SigAction {
                            signal: 2,
                            handler: 0x401000,
                            flags: 0x0400_0000,
                            restorer: 0x402000,
                            mask: 0,
                        },
                    ],
                    threads: vec![ThreadCore {
                        tid: PID,
                        regs: Some(UserRegs {
                            rip: 0x7f00_dead_beef,
                            rsp: 0x7ffc_0000_1000,
                            orig_rax: u64::MAX,
                            ..Default::default()
                        }),
                        xstate: xstate(),
                        restart: SyscallRestart::Restarted as i32,
                        sigmask: 0x10000,
                        rseq: Some(Rseq {
                            address: 0x7f00_0000_0e20,
                            length: 32,
                            signature: 0x5305_3053,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
            .unwrap();
        images
            .write(
                Kind::Mm,
                Some(PID),
                &Mm {
                    exe_path: "/usr/bin/tiny".into(),
                    auxv: vec![6, 4096, 0, 0],
                    vmas: vec![
                        Vma {
                            start: 0x400000,
                            end: 0x401000,
                            prot: (libc::PROT_READ | libc::PROT_EXEC) as u32,
                            flags: libc::MAP_PRIVATE as u32,
                            pgoff: 0x1000,
                            kind: VmaKind::FilePrivate as i32,
                            path: "/usr/bin/tiny".into(),
                            dev: 0xfd01,
                            inode: 1234,
                            ..Default::default()
                        },
                        Vma {
                            start: 0x7ffc_0000_0000,
                            end: 0x7ffc_0000_2000,
                            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
                            kind: VmaKind::Stack as i32,
                            path: "[stack]".into(),
                            has_pages: true,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
            )
            .unwrap();
        images
            .write(
                Kind::PageMap,
                Some(PID),
                &PageMap {
                    page_size: 4096,
                    pages_total: 2,
                    runs: vec![PageRun {
                        vaddr: 0x7ffc_0000_0000,
                        nr_pages: 2,
                    }],
                    ..Default::default()
                },
            )
            .unwrap();
        images
            .write(
                Kind::Fds,
                Some(PID),
                &Fds {
                    locks: Vec::new(),
                    ctty: None,
                    cwd: "/".into(),
                    root: "/".into(),
                    fds: vec![
                        Fd {
                            fd: 0,
                            cloexec: false,
                            dup_of: None,
                            file_id: 1,
                            owner_kind: 0,
                            owner_pid: 0,
                            signal: 0,
                            file: Some(fd::File::Chardev(CharDevice {
                                path: "/dev/null".into(),
                                flags: 0o100000,
                                rdev_major: 1,
                                rdev_minor: 3,
                                pos: 0,
                            })),
                        },
                        Fd {
                            fd: 1,
                            cloexec: true,
                            dup_of: None,
                            file_id: 2,
                            owner_kind: 0,
                            owner_pid: 0,
                            signal: 0,
                            file: Some(fd::File::Regular(RegularFile {
                                path: "/tmp/out".into(),
                                flags: 0o102001,
                                pos: 12,
                                size: 12,
                                mode: 0o100644,
                                ..Default::default()
                            })),
                        },
                        Fd {
                            fd: 2,
                            cloexec: false,
                            dup_of: Some(1),
                            file_id: 2,
                            owner_kind: 0,
                            owner_pid: 0,
                            signal: 0,
                            file: Some(fd::File::Regular(RegularFile {
                                path: "/tmp/out".into(),
                                flags: 0o102001,
                                pos: 12,
                                size: 12,
                                mode: 0o100644,
                                ..Default::default()
                            })),
                        },
                    ],
                },
            )
            .unwrap();
        fs::write(images.pages_path(PID), vec![0u8; 8192]).unwrap();
        fs::write(dir.join("notes.txt"), "not an image").unwrap();
    }

    #[test]
    fn text_of_a_small_set() {
        let tmp = TempDir::new("text");
        write_set(&tmp.0);
        let text = render_text(&load(&tmp.0).unwrap());

        // Files in order: inventory, pstree, core, mm, pagemap, fds, pages, skipped.
        let order: Vec<usize> = [
            "== inventory.img",
            "== pstree.img",
            "== core-4242.img",
            "== mm-4242.img",
            "== pagemap-4242.img",
            "== fds-4242.img",
            "== pages-4242.img",
            "== skipped",
        ]
        .iter()
        .map(|h| {
            text.find(h)
                .unwrap_or_else(|| panic!("{h} missing in:\n{text}"))
        })
        .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "order wrong:\n{text}"
        );

        assert!(text.contains("format        1.0"), "{text}");
        assert!(text.contains("2023-11-14 22:13:20 UTC"), "{text}");
        assert!(text.contains("xcr0          0x2e7"), "{text}");
        assert!(
            text.contains("pid 4242 ppid 0 pgid 4242 sid 1 threads 4242"),
            "{text}"
        );
        assert!(text.contains("rip 0x00007f00deadbeef"), "{text}");
        assert!(text.contains("orig_rax 0xffffffffffffffff"), "{text}");
        assert!(
            text.contains("restart RESTARTED sigmask 0x0000000000010000"),
            "{text}"
        );
        assert!(
            text.contains("xstate 1088 bytes, xstate_bv 0x2e7"),
            "{text}"
        );
        assert!(
            text.contains("rseq 0x7f0000000e20 length 32 signature 0x53053053"),
            "{text}"
        );
        assert!(
            text.contains("sigactions: 2 recorded, 1 not default"),
            "{text}"
        );
        assert!(text.contains("signal  2 handler 0x401000"), "{text}");
        assert!(text.contains("AT_PAGESZ            0x1000"), "{text}");
        assert!(
            text.contains(
                "  00400000-00401000 r-xp 00001000 fd:01 1234     FILE_PRIVATE -     /usr/bin/tiny\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  7ffc00000000-7ffc00002000 rw-p 00000000 00:00 0        STACK        pages [stack]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("page size 4096 bytes, 2 pages in 1 runs"),
            "{text}"
        );
        assert!(
            text.contains("  7ffc00000000-7ffc00002000      2 pages at file offset 0x0\n"),
            "{text}"
        );
        assert!(text.contains("     0 chardev /dev/null rdonly"), "{text}");
        assert!(
            text.contains("     1 regular /tmp/out wronly (flags 102001) pos 12"),
            "{text}"
        );
        assert!(
            text.contains(" 12 mode 100644 (dup of fd 1) file 2\n"),
            "{text}"
        );
        assert!(text.contains("8192 bytes, 2 pages\n"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        assert!(
            text.ends_with("== skipped (not rcr images)\nnotes.txt\n"),
            "{text}"
        );
        // Raw bytes are never dumped.
        assert!(!text.contains("[0, 0, 0"), "{text}");
    }

    #[test]
    fn json_of_a_small_set() {
        let tmp = TempDir::new("json");
        write_set(&tmp.0);
        let value = to_json(&load(&tmp.0).unwrap()).unwrap();
        assert_eq!(value["inventory"]["root_pid"], 4242);
        assert_eq!(value["pstree"]["processes"][0]["pid"], 4242);
        let process = &value["processes"]["4242"];
        let thread = &process["core"]["threads"][0];
        assert_eq!(thread["xstate_size"], 1088);
        assert_eq!(thread["xstate_bv"], "0x2e7");
        assert_eq!(thread["restart"], "RESTARTED");
        assert_eq!(thread["xstate"].as_str().unwrap().len(), 2 * 1088);
        assert_eq!(process["mm"]["vmas"][1]["kind"], "STACK");
        assert_eq!(process["pagemap"]["pages_total"], 2);
        assert_eq!(
            process["fds"]["fds"][1]["file"]["Regular"]["path"],
            "/tmp/out"
        );
        assert_eq!(process["fds"]["fds"][2]["dup_of"], 1);
        assert!(process["fds"]["fds"][1]["dup_of"].is_null());
        assert_eq!(process["pages"]["bytes"], 8192);
        assert_eq!(value["skipped"][0], "notes.txt");
    }

    #[test]
    fn mismatched_pages_are_flagged() {
        let tmp = TempDir::new("mismatch");
        write_set(&tmp.0);
        fs::write(tmp.0.join("pages-4242.img"), vec![0u8; 4096 + 10]).unwrap();
        let text = render_text(&load(&tmp.0).unwrap());
        assert!(text.contains("not a whole number of pages"), "{text}");
        assert!(text.contains("describes 2 pages = 8192 bytes"), "{text}");
    }

    #[test]
    fn corrupt_image_is_an_error_naming_the_file() {
        let tmp = TempDir::new("corrupt");
        write_set(&tmp.0);
        let path = tmp.0.join("mm-4242.img");
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        let err = format!("{:#}", load(&tmp.0).unwrap_err());
        assert!(err.contains("mm-4242.img"), "{err}");
    }

    #[test]
    fn directory_without_images_is_an_error() {
        let tmp = TempDir::new("noimages");
        fs::create_dir_all(&tmp.0).unwrap();
        let err = format!("{:#}", load(&tmp.0).unwrap_err());
        assert!(err.contains("holds no rcr images"), "{err}");
        fs::write(tmp.0.join("notes.txt"), "not an image").unwrap();
        let err = format!("{:#}", load(&tmp.0).unwrap_err());
        assert!(err.contains("holds no rcr images"), "{err}");
    }

    #[test]
    fn missing_directory_is_an_error() {
        let tmp = TempDir::new("missing");
        assert!(load(&tmp.0).is_err());
    }

    #[test]
    fn pages_file_names() {
        assert_eq!(pages_file_pid("pages-12.img"), Some(12));
        assert_eq!(pages_file_pid("pages-x.img"), None);
        assert_eq!(pages_file_pid("pages-12.img.bak"), None);
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            utc_time(951_782_400 * 1_000_000_000),
            "2000-02-29 00:00:00 UTC"
        );
    }
}
