//! Memory contents: the task reads its own pages from pages-PID.img straight into place
//! (pread64 from a file descriptor it holds), one call per run of pages.

use anyhow::Result;

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
