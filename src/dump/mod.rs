//! `rcr dump`: freeze a task, collect its state from outside and (through the parasite) from
//! inside, write the images, then kill it or let it go. Any failure after the freeze puts the
//! task back exactly as it was and lets it run on.

pub mod files;
pub mod inventory;
pub mod mm;
pub mod pages;
pub mod task;
pub mod tree;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use nix::sys::signal::{Signal, kill};

use crate::image::{self, ImageDir, Kind};
use crate::log;
use crate::parasite::Parasite;
use crate::ptrace::{self as pt, Regs};
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDump {
    Kill,
    LeaveRunning,
    LeaveStopped,
}

pub struct DumpOptions {
    pub pid: i32,
    pub dir: PathBuf,
    pub after: AfterDump,
}

/// Figures of one dump, for -v and the benchmarks.
#[derive(Debug, Default)]
pub struct DumpStats {
    pub pages_bytes: u64,
    pub frozen_ms: f64,
    pub total_ms: f64,
}

/// Test hook: `RCR_FAULT_INJECT=<point>` makes the dump fail at that point.
fn fault_point(point: &str) -> Result<()> {
    if std::env::var("RCR_FAULT_INJECT").is_ok_and(|p| p == point) {
        bail!("injected fault at {point}");
    }
    Ok(())
}

/// Every signal blocked but SIGTRAP (the parasite's own trap must not be blocked: the kernel
/// would reset its disposition), so nothing the task receives runs while the parasite does.
const PARASITE_SIGMASK: u64 = !(1u64 << (libc::SIGTRAP - 1));

pub fn dump(options: &DumpOptions) -> Result<DumpStats> {
    let started = Instant::now();
    let pid = options.pid;
    let stat = tree::check_target(pid)?;
    let images = ImageDir::create(&options.dir)?;
    let seized = pt::seize(pid)?;
    let frozen = Instant::now();
    let regs = match pt::get_regs(pid) {
        Ok(regs) => regs,
        Err(err) => {
            let _ = pt::detach(pid, seized.was_stopped);
            return Err(err);
        }
    };
    let outcome = dump_frozen(pid, &stat, &images, &regs);
    let resume = task::resume_regs(&regs, true);
    let mut stats = match outcome {
        Ok((stats, sigmask)) => {
            // The images are complete: now the task may go.
            let _ = sys::ptrace::set_sigmask(pid, sigmask);
            pt::set_regs(pid, &resume)?;
            match options.after {
                AfterDump::Kill => {
                    kill(pt::pid(pid), Signal::SIGKILL)?;
                    let _ = pt::detach(pid, false);
                }
                AfterDump::LeaveRunning => pt::detach(pid, seized.was_stopped)?,
                AfterDump::LeaveStopped => pt::detach(pid, true)?,
            }
            stats
        }
        Err((err, sigmask)) => {
            if let Some(mask) = sigmask {
                let _ = sys::ptrace::set_sigmask(pid, mask);
            }
            let _ = pt::set_regs(pid, &resume);
            let _ = pt::detach(pid, seized.was_stopped);
            return Err(err);
        }
    };
    stats.frozen_ms = frozen.elapsed().as_secs_f64() * 1e3;
    stats.total_ms = started.elapsed().as_secs_f64() * 1e3;
    log::info(&format!(
        "pid {pid}: dumped {} MiB of pages, frozen {:.1} ms, total {:.1} ms",
        stats.pages_bytes >> 20,
        stats.frozen_ms,
        stats.total_ms
    ));
    Ok(stats)
}

type FrozenOutcome = std::result::Result<(DumpStats, u64), (anyhow::Error, Option<u64>)>;

/// Everything done while the task is frozen. Returns the task's signal mask for the caller to
/// put back, also on failure (when it was read).
fn dump_frozen(pid: i32, stat: &mm::Stat, images: &ImageDir, regs: &Regs) -> FrozenOutcome {
    let sigmask = sys::ptrace::get_sigmask(pid).map_err(|e| (e.into(), None))?;
    let in_mask = |r: Result<DumpStats>| r.map(|s| (s, sigmask)).map_err(|e| (e, Some(sigmask)));
    if let Err(err) = sys::ptrace::set_sigmask(pid, PARASITE_SIGMASK) {
        return Err((err.into(), Some(sigmask)));
    }
    in_mask(dump_masked(pid, stat, images, regs, sigmask))
}

fn dump_masked(
    pid: i32,
    stat: &mm::Stat,
    images: &ImageDir,
    regs: &Regs,
    sigmask: u64,
) -> Result<DumpStats> {
    fault_point("after-seize")?;
    let phase = Instant::now();
    let thread = task::collect_thread(pid, regs, sigmask)?;
    let mut core = task::collect_process(pid, stat, thread)?;
    let mut mm = mm::collect(pid, stat)?;
    let fds = files::collect(pid)?;
    let runs = pages::collect_runs(pid, &mut mm.vmas)?;
    let page_map = pages::page_map(runs);
    log::debug(&format!(
        "pid {pid}: state and pagemap read in {:?}",
        phase.elapsed()
    ));

    let mut parasite = Parasite::infect(pid, regs, None)?;
    let inside = collect_with_parasite(&mut parasite, &mut core, &mut mm, images, &page_map);
    let cured = parasite.cure(regs);
    log::debug(&format!(
        "pid {pid}: parasite done in {:?}",
        phase.elapsed()
    ));
    let pages_bytes = inside?;
    cured?;

    images.write(Kind::Inventory, None, &inventory::collect(pid)?)?;
    images.write(Kind::PsTree, None, &tree::collect(pid, stat))?;
    images.write(Kind::Core, Some(pid as u32), &core)?;
    images.write(Kind::Mm, Some(pid as u32), &mm)?;
    images.write(Kind::PageMap, Some(pid as u32), &page_map)?;
    images.write(Kind::Fds, Some(pid as u32), &fds)?;
    Ok(DumpStats {
        pages_bytes,
        ..Default::default()
    })
}

fn collect_with_parasite(
    parasite: &mut Parasite,
    core: &mut image::proto::TaskCore,
    mm: &mut image::proto::Mm,
    images: &ImageDir,
    page_map: &image::proto::PageMap,
) -> Result<u64> {
    fault_point("after-infect")?;
    mm.brk = task::collect_in_task(parasite, core)?;
    mm.thp_disabled = core.thp_disable != 0;
    let pages_path = std::path::absolute(images.pages_path(core.pid))?;
    let out = image::create_private(&pages_path)?;
    let drain_start = Instant::now();
    let written = pages::drain(parasite, &mm.vmas, &page_map.runs, &out, &pages_path)?;
    log::debug(&format!(
        "pid {}: {written} bytes drained in {:?}",
        core.pid,
        drain_start.elapsed()
    ));
    fault_point("after-pages")?;
    Ok(written)
}
