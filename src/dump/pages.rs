//! Memory contents: which pages to save (pagemap), and draining them out of the task with the
//! parasite's vmsplice into a pipe that rcr splices into pages-PID.img. Only present or
//! swapped pages that the kernel could not get back from a file are written.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, SpliceFFlags, fcntl, splice};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::image::proto::{PageMap, PageRun, Vma, VmaKind};
use crate::parasite::Parasite;
use crate::sys::pidfd;

pub const PAGE_SIZE: u64 = 4096;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PAGEMAP_CHUNK: u64 = 64 * 1024;
/// vmsplice and splice move at most this much per call; larger runs are cut.
const MAX_RUN_BYTES: u64 = 1 << 30;
const PIPE_SIZE: i32 = 1 << 20;

/// Whether a page of this VMA, with this pagemap entry, must go into the image.
fn wanted(kind: VmaKind, entry: u64) -> bool {
    match kind {
        VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack | VmaKind::AnonShared => {
            entry & (PM_PRESENT | PM_SWAPPED) != 0
        }
        // Pages still shared with the page cache come back from the file itself.
        VmaKind::FilePrivate | VmaKind::MemfdPrivate => {
            entry & PM_SWAPPED != 0 || (entry & PM_PRESENT != 0 && entry & PM_FILE == 0)
        }
        _ => false,
    }
}

/// Adds a page range to the runs, merging with the last run of the same VMA.
fn push_range(runs: &mut Vec<PageRun>, first_run: usize, mut vaddr: u64, end: u64) {
    while vaddr < end {
        let in_this_vma = runs.len() > first_run;
        match runs.last_mut() {
            Some(run)
                if in_this_vma
                    && run.vaddr + run.nr_pages * PAGE_SIZE == vaddr
                    && run.nr_pages * PAGE_SIZE < MAX_RUN_BYTES =>
            {
                let room = MAX_RUN_BYTES - run.nr_pages * PAGE_SIZE;
                let take = (end - vaddr).min(room);
                run.nr_pages += take / PAGE_SIZE;
                vaddr += take;
            }
            _ => {
                let take = (end - vaddr).min(MAX_RUN_BYTES);
                runs.push(PageRun {
                    vaddr,
                    nr_pages: take / PAGE_SIZE,
                });
                vaddr += take;
            }
        }
    }
}

const SCAN_REGIONS: usize = 4096;

/// The pages to save of one VMA through PAGEMAP_SCAN (Linux 6.7+): present or swapped, not
/// the shared zero page, and for a private file mapping not a page-cache page.
fn scan_vma(pagemap: &File, vma: &Vma, runs: &mut Vec<PageRun>) -> std::io::Result<()> {
    use crate::sys::probe::{
        PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PageFilter,
        pagemap_scan_filtered,
    };
    let excluded = if matches!(vma.kind(), VmaKind::FilePrivate | VmaKind::MemfdPrivate) {
        PAGE_IS_FILE | PAGE_IS_PFNZERO
    } else {
        PAGE_IS_PFNZERO
    };
    let filter = PageFilter {
        required: excluded,
        inverted: excluded,
        any_of: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
    };
    let first_run = runs.len();
    let mut at = vma.start;
    while at < vma.end {
        let scan =
            pagemap_scan_filtered(pagemap, at..vma.end, filter, filter.any_of, SCAN_REGIONS)?;
        for region in &scan.regions {
            push_range(runs, first_run, region.start, region.end);
        }
        if scan.regions.len() < SCAN_REGIONS || scan.walk_end <= at {
            break;
        }
        at = scan.walk_end;
    }
    Ok(())
}

/// Scans pagemap and returns the runs of pages to save, marking the VMAs that have any.
pub fn collect_runs(pid: i32, vmas: &mut [Vma]) -> Result<Vec<PageRun>> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))
        .with_context(|| format!("pid {pid}: cannot open pagemap"))?;
    let mut runs: Vec<PageRun> = Vec::new();
    let mut scanned = Vec::with_capacity(vmas.len());
    for vma in vmas.iter() {
        if !dumps_pages(vma.kind()) {
            scanned.push(0);
            continue;
        }
        let before = runs.len();
        match scan_vma(&pagemap, vma, &mut runs) {
            Ok(()) => scanned.push(runs.len() - before),
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                // No PAGEMAP_SCAN on this kernel: read pagemap entries.
                return collect_runs_from_entries(&pagemap, pid, vmas);
            }
            Err(err) => return Err(err).with_context(|| format!("pid {pid}: PAGEMAP_SCAN")),
        }
    }
    for (vma, count) in vmas.iter_mut().zip(scanned) {
        vma.has_pages = count > 0;
    }
    Ok(runs)
}

fn dumps_pages(kind: VmaKind) -> bool {
    matches!(
        kind,
        VmaKind::AnonPrivate
            | VmaKind::Heap
            | VmaKind::Stack
            | VmaKind::AnonShared
            | VmaKind::FilePrivate
            | VmaKind::MemfdPrivate
    )
}

/// The same as [`collect_runs`] from raw pagemap entries, for kernels before 6.7.
fn collect_runs_from_entries(pagemap: &File, pid: i32, vmas: &mut [Vma]) -> Result<Vec<PageRun>> {
    let mut runs: Vec<PageRun> = Vec::new();
    let mut buf = vec![0u8; (PAGEMAP_CHUNK * 8) as usize];
    for vma in vmas.iter_mut() {
        let kind = vma.kind();
        if !dumps_pages(kind) {
            vma.has_pages = false;
            continue;
        }
        let first_run = runs.len();
        let mut page = vma.start / PAGE_SIZE;
        let end = vma.end / PAGE_SIZE;
        while page < end {
            let count = (end - page).min(PAGEMAP_CHUNK);
            let bytes = &mut buf[..(count * 8) as usize];
            pagemap
                .read_exact_at(bytes, page * 8)
                .with_context(|| format!("pid {pid}: reading pagemap"))?;
            for (i, entry) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_le_bytes(entry.try_into().unwrap());
                if !wanted(kind, entry) {
                    continue;
                }
                let vaddr = (page + i as u64) * PAGE_SIZE;
                let in_this_vma = runs.len() > first_run;
                match runs.last_mut() {
                    Some(run)
                        if in_this_vma
                            && run.vaddr + run.nr_pages * PAGE_SIZE == vaddr
                            && (run.nr_pages + 1) * PAGE_SIZE <= MAX_RUN_BYTES =>
                    {
                        run.nr_pages += 1
                    }
                    _ => runs.push(PageRun { vaddr, nr_pages: 1 }),
                }
            }
            page += count;
        }
        vma.has_pages = runs.len() > first_run;
    }
    Ok(runs)
}

/// Where the parasite sends the pages.
enum Sink {
    /// The image file, opened by the task itself: it writes its pages with writev(2) straight
    /// from its memory, one copy and no round trip through rcr.
    File { task_fd: i32 },
    /// A pipe in the task that it vmsplices its pages into and rcr splices out of, for a task
    /// whose credentials cannot open the image file.
    Pipe {
        task_read: i32,
        task_write: i32,
        pipe: OwnedFd,
    },
}

/// Moves the pages of `runs` out of the task into `out` (at `out_path`), in order.
pub fn drain(
    parasite: &mut Parasite,
    vmas: &[Vma],
    runs: &[PageRun],
    out: &File,
    out_path: &Path,
) -> Result<u64> {
    let sink = open_sink(parasite, out_path)?;
    let outcome = drain_into(parasite, vmas, runs, out, &sink);
    let mut close = parasite.batch();
    match &sink {
        Sink::File { task_fd } => {
            close.syscall_may_fail(libc::SYS_close, &[*task_fd as u64]);
        }
        Sink::Pipe {
            task_read,
            task_write,
            ..
        } => {
            close.syscall_may_fail(libc::SYS_close, &[*task_read as u64]);
            close.syscall_may_fail(libc::SYS_close, &[*task_write as u64]);
        }
    }
    let closed = parasite.run(&close);
    let written = outcome?;
    closed?;
    Ok(written)
}

fn open_sink(parasite: &mut Parasite, out_path: &Path) -> Result<Sink> {
    let pid = parasite.tid;
    let mut batch = parasite.batch();
    // RCR_PAGES_VIA_PIPE=1 takes the fallback path, so that tests cover it with any workload.
    let forced_pipe = std::env::var("RCR_PAGES_VIA_PIPE").is_ok_and(|v| v == "1");
    let path = if forced_pipe {
        batch.put_cstr("")
    } else {
        batch.put_cstr(&out_path.to_string_lossy())
    };
    let flags = (libc::O_WRONLY | libc::O_CLOEXEC) as u64;
    batch.syscall_may_fail(libc::SYS_openat, &[libc::AT_FDCWD as u64, path, flags, 0]);
    let fds_addr = batch.reserve(8);
    batch.syscall(libc::SYS_pipe2, &[fds_addr, libc::O_CLOEXEC as u64]);
    let result = parasite.run(&batch)?;
    let opened = result.results[0];
    let fds = parasite.read(fds_addr, 8)?;
    let task_read = i32::from_le_bytes(fds[0..4].try_into().unwrap());
    let task_write = i32::from_le_bytes(fds[4..8].try_into().unwrap());
    let pipe_made = result.failure().is_none();
    if opened >= 0 {
        if pipe_made {
            let mut close = parasite.batch();
            close.syscall_may_fail(libc::SYS_close, &[task_read as u64]);
            close.syscall_may_fail(libc::SYS_close, &[task_write as u64]);
            parasite.run(&close)?;
        }
        return Ok(Sink::File {
            task_fd: opened as i32,
        });
    }
    crate::log::debug(&format!(
        "pid {pid}: cannot open the image itself ({}): pages go through a pipe",
        std::io::Error::from_raw_os_error(-opened as i32)
    ));
    if let Some((_, errno)) = result.failure() {
        bail!(
            "pid {pid}: cannot create the page pipe: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
    let pidfd = pidfd::pidfd_open(pid)?;
    let pipe = pidfd::pidfd_getfd(&pidfd, task_read)
        .with_context(|| format!("pid {pid}: cannot take the page pipe"))?;
    // As large as an unprivileged pipe may be; a smaller pipe only means more round trips.
    match fcntl(pipe.as_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        Ok(size) => crate::log::debug(&format!("pid {pid}: page pipe of {size} bytes")),
        Err(err) => crate::log::info(&format!("pid {pid}: page pipe stays small: {err}")),
    }
    Ok(Sink::Pipe {
        task_read,
        task_write,
        pipe,
    })
}

fn drain_into(
    parasite: &mut Parasite,
    vmas: &[Vma],
    runs: &[PageRun],
    out: &File,
    sink: &Sink,
) -> Result<u64> {
    let pid = parasite.tid;
    // Regions the task cannot read are opened for reading while they are drained.
    let unreadable: Vec<&Vma> = vmas
        .iter()
        .filter(|v| v.has_pages && v.prot & libc::PROT_READ as u32 == 0)
        .collect();
    let unreadable_of = |addr: u64| unreadable.iter().find(|v| v.start <= addr && addr < v.end);

    let mut written = 0u64;
    let mut next = 0;
    let mut open_vma: Option<&Vma> = None;
    while next < runs.len() {
        let mut batch = parasite.batch();
        let mut batch_bytes = 0u64;
        while next < runs.len() && batch.has_room(3, 16) {
            let run = &runs[next];
            let vma = unreadable_of(run.vaddr).copied();
            if vma.map(|v| v.start) != open_vma.map(|v| v.start) {
                if let Some(prev) = open_vma.take() {
                    batch.syscall(
                        libc::SYS_mprotect,
                        &[prev.start, prev.end - prev.start, prev.prot.into()],
                    );
                }
                if let Some(v) = vma {
                    batch.syscall(
                        libc::SYS_mprotect,
                        &[v.start, v.end - v.start, libc::PROT_READ as u64],
                    );
                    open_vma = Some(v);
                }
            }
            let len = run.nr_pages * PAGE_SIZE;
            let mut iov = run.vaddr.to_le_bytes().to_vec();
            iov.extend_from_slice(&len.to_le_bytes());
            let iov_addr = batch.put(&iov);
            let (nr, args) = match sink {
                Sink::File { task_fd } => (libc::SYS_writev, [*task_fd as u64, iov_addr, 1, 0]),
                Sink::Pipe { task_write, .. } => {
                    (libc::SYS_vmsplice, [*task_write as u64, iov_addr, 1, 0])
                }
            };
            batch.syscall_flags(nr, &args, crate::parasite::blob::FLAG_REPEAT_IOVEC);
            batch_bytes += len;
            next += 1;
        }
        if next == runs.len()
            && let Some(prev) = open_vma.take()
        {
            batch.syscall(
                libc::SYS_mprotect,
                &[prev.start, prev.end - prev.start, prev.prot.into()],
            );
        }
        let (result, received) = match sink {
            Sink::File { .. } => (parasite.run(&batch)?, Ok(batch_bytes)),
            Sink::Pipe { pipe, .. } => {
                parasite.start(&batch)?;
                let received = splice_out(parasite, pipe, out, batch_bytes);
                (parasite.finish()?, received)
            }
        };
        if let Some((index, errno)) = result.failure() {
            restore_protections(parasite, &unreadable);
            bail!(
                "pid {pid}: draining memory failed at step {index}: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
        let received = received?;
        if received != batch_bytes {
            bail!("pid {pid}: {received} bytes of memory drained, {batch_bytes} expected");
        }
        written += received;
    }
    Ok(written)
}

/// Splices what the parasite pushes into the pipe until `expected` bytes arrived or the
/// parasite stopped.
fn splice_out(parasite: &Parasite, pipe: &impl AsFd, out: &File, expected: u64) -> Result<u64> {
    let mut received = 0u64;
    while received < expected {
        let chunk = (expected - received).min(PIPE_SIZE as u64 * 4) as usize;
        // Non-blocking first: while the parasite keeps the pipe full this is one syscall per
        // pipeful; poll only when it is empty, and then look whether the parasite stopped.
        match splice(
            pipe.as_fd(),
            None,
            out.as_fd(),
            None,
            chunk,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        ) {
            Ok(n) => received += n as u64,
            Err(nix::errno::Errno::EAGAIN) => {
                let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(50u16))? == 0 && parasite.poll_finished()? {
                    break;
                }
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("splicing pages to fd {}", out.as_raw_fd()));
            }
        }
    }
    Ok(received)
}

/// After a failure, puts back the protections of regions opened for reading.
fn restore_protections(parasite: &mut Parasite, vmas: &[&Vma]) {
    if vmas.is_empty() {
        return;
    }
    let mut batch = parasite.batch();
    for v in vmas {
        batch.syscall_may_fail(
            libc::SYS_mprotect,
            &[v.start, v.end - v.start, v.prot.into()],
        );
    }
    let _ = parasite.run(&batch);
}

pub fn page_map(runs: Vec<PageRun>) -> PageMap {
    PageMap {
        page_size: PAGE_SIZE as u32,
        pages_total: runs.iter().map(|r| r.nr_pages).sum(),
        runs,
        checksum_chunk: 0,
        chunk_crc32: Vec::new(),
    }
}

/// Bytes of pages-PID.img covered by one CRC32 of `PageMap.chunk_crc32`.
pub const CHECKSUM_CHUNK: u64 = 1 << 20;
/// How many chunks the checksum thread reads per call (one: 1 MiB stays in the cache
/// between the copy and the CRC, measured faster than 4 MiB).
const CHECKSUM_READ_CHUNKS: u64 = 1;

/// Checksums pages-PID.img while it is being written, in a thread of its own (another core
/// than the task writing it): each chunk is read from the file (the page cache) once the file
/// has grown past it, since what lies below the file's size is written for good.
pub struct Checksummer {
    thread: Option<std::thread::JoinHandle<std::io::Result<Vec<u32>>>>,
    /// The image's final length once the drain is over, u64::MAX until then.
    total: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Checksummer {
    /// Starts on the image at `path` (opened again for reading: the image's own fd is
    /// write-only).
    pub fn start(path: &Path) -> Result<Checksummer> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let file =
            File::open(path).with_context(|| format!("cannot read back {}", path.display()))?;
        let total = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_total, thread_stop) = (Arc::clone(&total), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("rcr-checksum".into())
            .spawn(move || {
                let mut sums = Vec::new();
                let mut buf = vec![0u8; (CHECKSUM_CHUNK * CHECKSUM_READ_CHUNKS) as usize];
                let mut offset = 0u64;
                loop {
                    if thread_stop.load(Ordering::Relaxed) {
                        return Ok(sums);
                    }
                    let total = thread_total.load(Ordering::Acquire);
                    let end = if total == u64::MAX {
                        // Whole chunks only while the file still grows.
                        let size = file.metadata()?.len();
                        size - size % CHECKSUM_CHUNK
                    } else {
                        total
                    };
                    if offset >= end {
                        if total != u64::MAX {
                            return Ok(sums);
                        }
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        continue;
                    }
                    let len = (end - offset).min(buf.len() as u64) as usize;
                    file.read_exact_at(&mut buf[..len], offset)?;
                    sums.extend(
                        buf[..len]
                            .chunks(CHECKSUM_CHUNK as usize)
                            .map(crc32fast::hash),
                    );
                    offset += len as u64;
                }
            })?;
        Ok(Checksummer {
            thread: Some(thread),
            total,
            stop,
        })
    }

    /// The checksums of the whole image, `total` bytes long now that the drain is over.
    pub fn finish(mut self, pid: i32, total: u64) -> Result<Vec<u32>> {
        self.total
            .store(total, std::sync::atomic::Ordering::Release);
        let waiting = std::time::Instant::now();
        let sums = self
            .thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| anyhow::anyhow!("pid {pid}: the checksum thread panicked"))?
            .with_context(|| format!("pid {pid}: reading the pages image back"))?;
        crate::log::debug(&format!(
            "pid {pid}: page checksums done {:.1} ms after the drain",
            waiting.elapsed().as_secs_f64() * 1e3
        ));
        let expected = total.div_ceil(CHECKSUM_CHUNK);
        if sums.len() as u64 != expected {
            bail!(
                "pid {pid}: {} page checksums for {expected} chunks",
                sums.len()
            );
        }
        Ok(sums)
    }
}

impl Drop for Checksummer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}
