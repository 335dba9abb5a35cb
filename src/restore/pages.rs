//! Memory contents: the task reads its own pages from pages-PID.img straight into place
//! (pread64 from a file descriptor it holds), one call per run of pages.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Result, bail};

use super::steps::Steps;
use crate::image::proto::PageMap;

const MADV_POPULATE_WRITE: u64 = 23;
/// pread64 moves at most this much per call.
const MAX_READ: u64 = 1 << 30;

pub fn fill(steps: &mut Steps, page_map: &PageMap, pages_fd: i32) -> Result<()> {
    let page_size = u64::from(page_map.page_size);
    let mut offset = 0u64;
    for run in &page_map.runs {
        let mut addr = run.vaddr;
        let mut left = run.nr_pages * page_size;
        while left > 0 {
            let len = left.min(MAX_READ);
            steps.room(2, 0)?;
            // Allocating the pages in one call is much cheaper than one fault per page.
            steps.add_may_fail(
                format!("populate {addr:#x}+{len:#x}"),
                libc::SYS_madvise,
                &[addr, len, MADV_POPULATE_WRITE],
            );
            steps.add_expect(
                format!("read pages {addr:#x}+{len:#x}"),
                libc::SYS_pread64,
                &[pages_fd as u64, addr, len, offset],
                len as i64,
            );
            addr += len;
            offset += len;
            left -= len;
        }
    }
    Ok(())
}

/// Checks that a pagemap's checksums cover its pages image (an image from before format 1.5
/// has none, and is not checked).
pub fn check_checksums(pid: u32, page_map: &PageMap) -> Result<()> {
    if page_map.chunk_crc32.is_empty() {
        return Ok(());
    }
    let bytes = page_map.pages_total * u64::from(page_map.page_size);
    let chunk = u64::from(page_map.checksum_chunk);
    if chunk == 0 || bytes.div_ceil(chunk) != page_map.chunk_crc32.len() as u64 {
        bail!(
            "pagemap-{pid}.img: {} page checksums of {chunk} bytes for {bytes} bytes of pages",
            page_map.chunk_crc32.len()
        );
    }
    Ok(())
}

/// One pages image to verify: its file (read with pread, so sharing it is harmless), chunk
/// size and checksums.
struct Job {
    pid: u32,
    file: File,
    chunk: u64,
    sums: Vec<u32>,
}

/// Verifies the pages images against their checksums in a thread of its own, on the other
/// core, while the restore builds the tree from the same files. The restore waits for it
/// ([`Verifier::finish`]) before it lets any restored task run: a corrupted image then kills
/// the tree before it ran a single instruction of its own.
pub struct Verifier {
    thread: Option<JoinHandle<(Result<()>, std::time::Duration)>>,
    stop: Arc<AtomicBool>,
}

impl Verifier {
    /// `images`: (pid, page map, pages file) of every process.
    pub fn start<'a>(
        images: impl Iterator<Item = (u32, &'a PageMap, &'a File)>,
    ) -> Result<Verifier> {
        let mut jobs = Vec::new();
        for (pid, page_map, file) in images {
            if page_map.chunk_crc32.is_empty() {
                continue;
            }
            jobs.push(Job {
                pid,
                file: file.try_clone()?,
                chunk: u64::from(page_map.checksum_chunk),
                sums: page_map.chunk_crc32.clone(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = if jobs.is_empty() {
            None
        } else {
            Some(
                std::thread::Builder::new()
                    .name("rcr-verify".into())
                    .spawn(move || {
                        let started = std::time::Instant::now();
                        (verify(&jobs, &thread_stop), started.elapsed())
                    })?,
            )
        };
        Ok(Verifier { thread, stop })
    }

    /// Waits for the verification; an error names the pid, the image and the chunk.
    pub fn finish(mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let waiting = std::time::Instant::now();
        let (result, took) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the page verification thread panicked"))?;
        crate::log::debug(&format!(
            "page checksums verified in {:.1} ms; the restore waited {:.1} ms for it",
            took.as_secs_f64() * 1e3,
            waiting.elapsed().as_secs_f64() * 1e3
        ));
        result
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// Chunks read per call (one: see dump::pages::CHECKSUM_READ_CHUNKS).
const VERIFY_READ_CHUNKS: usize = 1;

fn verify(jobs: &[Job], stop: &AtomicBool) -> Result<()> {
    for job in jobs {
        let mut buf = vec![0u8; job.chunk as usize * VERIFY_READ_CHUNKS];
        let size = job.file.metadata()?.len();
        let mut index = 0usize;
        while index < job.sums.len() {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let offset = index as u64 * job.chunk;
            let len = (size - offset).min(buf.len() as u64) as usize;
            job.file
                .read_exact_at(&mut buf[..len], offset)
                .map_err(|err| {
                    anyhow::anyhow!(
                        "pid {}: pages-{}.img: reading at {offset:#x}: {err}",
                        job.pid,
                        job.pid
                    )
                })?;
            for piece in buf[..len].chunks(job.chunk as usize) {
                if crc32fast::hash(piece) != job.sums[index] {
                    let start = index as u64 * job.chunk;
                    bail!(
                        "pid {}: pages-{}.img is corrupted: chunk {index} (bytes {start:#x}-{:#x}) does not match its checksum",
                        job.pid,
                        job.pid,
                        start + piece.len() as u64
                    );
                }
                index += 1;
            }
        }
    }
    Ok(())
}
