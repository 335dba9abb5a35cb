//! `rcr dump`: freeze a task, collect its state from outside and (through the parasite) from
//! inside, write the images, then kill it or let it go. Any failure after the freeze puts the
//! task back exactly as it was and lets it run on.

pub mod cgroups;
pub mod creds;
pub mod files;
pub mod inventory;
pub mod limits;
pub mod mm;
pub mod pages;
pub mod seccomp;
pub mod signals;
pub mod task;
pub mod timers;
pub mod tree;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::image::{self, ImageDir, Kind};
use crate::log;
use crate::parasite::Parasite;

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
    /// What to do with unix sockets whose peer is outside the tree.
    pub external_unix: image::proto::ExternalUnix,
    /// The tree is a job of the shell it runs under: its fds on the shell's terminal (and
    /// that controlling terminal) are saved as "the external terminal".
    pub shell_job: bool,
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

pub fn dump(options: &DumpOptions) -> Result<DumpStats> {
    let started = Instant::now();
    let pid = options.pid;
    let stat = tree::check_target(pid)?;
    let images = ImageDir::create(&options.dir)?;
    // A failed dump leaves the directory as it found it: no image, no directory it created.
    let mut frozen = match tree::seize_tree(pid, stat) {
        Ok(frozen) => frozen,
        Err(err) => {
            images.discard();
            return Err(err);
        }
    };
    let frozen_at = Instant::now();
    let outcome = dump_frozen(&mut frozen, &images, options);
    let mut stats = match outcome {
        Ok(stats) => {
            // The images are complete: now the tree may go.
            frozen.release(match options.after {
                AfterDump::Kill => tree::Release::Kill,
                AfterDump::LeaveRunning => tree::Release::AsBefore,
                AfterDump::LeaveStopped => tree::Release::Stopped,
            });
            stats
        }
        Err(err) => {
            frozen.release(tree::Release::AsBefore);
            images.discard();
            return Err(err);
        }
    };
    stats.frozen_ms = frozen_at.elapsed().as_secs_f64() * 1e3;
    stats.total_ms = started.elapsed().as_secs_f64() * 1e3;
    log::info(&format!(
        "pid {pid}: dumped {} processes, {} MiB of pages, frozen {:.1} ms, total {:.1} ms",
        frozen.processes.len(),
        stats.pages_bytes >> 20,
        stats.frozen_ms,
        stats.total_ms
    ));
    Ok(stats)
}

/// Everything done while the tree is frozen.
fn dump_frozen(
    frozen: &mut tree::Frozen,
    images: &ImageDir,
    options: &DumpOptions,
) -> Result<DumpStats> {
    frozen.mask_signals(crate::parasite::PARASITE_SIGMASK)?;
    fault_point("after-seize")?;
    let mut stats = DumpStats::default();
    let mut file_ids = files::FileIds::new(options.external_unix);
    let live: Vec<i32> = frozen
        .processes
        .iter()
        .filter(|p| p.zombie.is_none())
        .map(|p| p.pid)
        .collect();
    file_ids.scan_ttys(&live, options.shell_job);
    let sessions: Vec<(i32, i32, i32)> = frozen
        .processes
        .iter()
        .map(|p| (p.pid, p.stat.field(5) as i32, p.stat.field(6) as i32))
        .collect();
    let mut xstate_check = task::XstateCheck::default();
    for process in frozen.processes.iter().filter(|p| p.zombie.is_none()) {
        stats.pages_bytes +=
            dump_process(process, images, &mut file_ids, &sessions, &mut xstate_check)?;
    }
    file_ids.check_whole_tree()?;
    images.write(
        Kind::Inventory,
        None,
        &inventory::collect(frozen.processes[0].pid)?,
    )?;
    images.write(Kind::PsTree, None, &frozen.pstree())?;
    for warning in file_ids.take_warnings() {
        log::warn(&warning);
    }
    Ok(stats)
}

/// One process: its threads, memory and files. Returns the bytes of pages written.
fn dump_process(
    process: &tree::FrozenProcess,
    images: &ImageDir,
    file_ids: &mut files::FileIds,
    sessions: &[(i32, i32, i32)],
    xstate_check: &mut task::XstateCheck,
) -> Result<u64> {
    let pid = process.pid;
    let phase = Instant::now();
    let threads = process
        .threads
        .iter()
        .map(|t| task::collect_thread(t.tid, &t.regs, t.sigmask.unwrap_or(0)))
        .collect::<Result<Vec<_>>>()?;
    let mut core = task::collect_process(pid, &process.stat, threads)?;
    let tids: Vec<i32> = process.threads.iter().map(|t| t.tid).collect();
    core.signals = Some(signals::collect(pid, &tids)?);
    core.creds = Some(creds::collect(pid)?);
    core.seccomp = Some(seccomp::collect(pid)?);
    core.cgroups = Some(cgroups::collect(pid)?);
    let mut mm = mm::collect(pid, &process.stat)?;
    let mut fds = files::collect(pid, images, file_ids)?;
    // Read again: the foreground group may have changed until the process was frozen.
    fds.ctty = file_ids.controlling_tty(pid, &mm::Stat::read(pid)?, sessions)?;
    for vma in mm.vmas.iter().filter(|v| {
        matches!(
            v.kind(),
            image::proto::VmaKind::MemfdShared | image::proto::VmaKind::MemfdPrivate
        )
    }) {
        let mapped = format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start, vma.end);
        files::save_memfd(&mapped, vma.inode, images, file_ids)?;
    }
    let runs = pages::collect_runs(pid, &mut mm.vmas)?;
    let mut page_map = pages::page_map(runs);
    log::debug(&format!(
        "pid {pid}: state and pagemap read in {:?}",
        phase.elapsed()
    ));

    let leader = &process.threads[0];
    // Locked memory before the parasite's mapping: see mm::future_lock_flags.
    let locked_kb = mm::locked_kb(pid)?;
    let mut parasite = Parasite::infect(pid, &leader.regs, None)?;
    let inside = collect_with_parasite(
        &mut parasite,
        process,
        &mut core,
        &mut mm,
        images,
        &mut page_map,
        locked_kb,
    );
    let cured = parasite.cure(&leader.regs);
    log::debug(&format!(
        "pid {pid}: parasite done in {:?}",
        phase.elapsed()
    ));
    let pages_bytes = inside?;
    cured?;
    // Its restore sets each thread's xstate: find out now whether the kernel takes it.
    let checking = Instant::now();
    xstate_check.check(&core)?;
    log::debug(&format!(
        "pid {pid}: xstate checked in {:.2} ms",
        checking.elapsed().as_secs_f64() * 1e3
    ));

    images.write(Kind::Core, Some(pid as u32), &core)?;
    images.write(Kind::Mm, Some(pid as u32), &mm)?;
    images.write(Kind::PageMap, Some(pid as u32), &page_map)?;
    images.write(Kind::Fds, Some(pid as u32), &fds)?;
    Ok(pages_bytes)
}

fn collect_with_parasite(
    parasite: &mut Parasite,
    process: &tree::FrozenProcess,
    core: &mut image::proto::TaskCore,
    mm: &mut image::proto::Mm,
    images: &ImageDir,
    page_map: &mut image::proto::PageMap,
    locked_kb: u64,
) -> Result<u64> {
    fault_point("after-infect")?;
    mm.mlockall_flags = mm::future_lock_flags(core.pid as i32, parasite.base, locked_kb)?;
    mm.brk = task::collect_in_task(parasite, core)?;
    core.timers = Some(timers::collect(parasite, core.pid as i32)?);
    let tids: Vec<i32> = process.threads.iter().map(|t| t.tid).collect();

    mm.thp_disabled = core.thp_disable != 0;
    let mut limits = limits::collect(parasite, core.pid as i32, &tids)?;
    for ((thread, frozen), sched) in core
        .threads
        .iter_mut()
        .zip(&process.threads)
        .zip(&mut limits.threads)
    {
        sched.timer_slack_ns = task::collect_thread_in_task(parasite, &frozen.regs, thread)?;
    }
    core.limits = Some(limits);
    let pages_path = std::path::absolute(images.pages_path(core.pid))?;
    let out = image::create_private(&pages_path)?;
    let drain_start = Instant::now();
    let checksums = pages::Checksummer::start(&pages_path)?;
    let written = pages::drain(parasite, &mm.vmas, &page_map.runs, &out, &pages_path)?;
    page_map.chunk_crc32 = checksums.finish(core.pid as i32, written)?;
    page_map.checksum_chunk = pages::CHECKSUM_CHUNK as u32;
    log::debug(&format!(
        "pid {}: {written} bytes drained in {:?}",
        core.pid,
        drain_start.elapsed()
    ));
    fault_point("after-pages")?;
    Ok(written)
}
