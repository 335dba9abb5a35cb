//! `rcr restore`: validate every image, create the task with its original PID, rebuild it from
//! inside with the parasite, put its registers back and let it run. On failure the task is
//! killed and the cause named.

pub mod files;
pub mod inventory;
pub mod mm;
pub mod pages;
pub mod steps;
pub mod task;
pub mod tree;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};

use crate::dump::mm::read_maps;
use crate::image::proto::{Fds, Inventory, Mm, PageMap, PsTree, PsTreeEntry, TaskCore, VmaKind};
use crate::image::{ImageDir, Kind};
use crate::log;
use crate::parasite::{self, Parasite};
use crate::ptrace as pt;
use steps::Steps;

pub struct RestoreOptions {
    pub dir: PathBuf,
    pub detach: bool,
    pub pidfile: Option<PathBuf>,
}

/// Every image of one process, read and checked.
pub struct ProcessImages {
    pub entry: PsTreeEntry,
    pub core: TaskCore,
    pub mm: Mm,
    pub page_map: PageMap,
    pub fds: Fds,
    pub pages: File,
}

/// Reads and validates the whole image set; nothing is created before this succeeds.
pub fn read_images(images: &ImageDir) -> Result<(Inventory, Vec<ProcessImages>)> {
    let inventory: Inventory = images.read(Kind::Inventory, None)?;
    inventory::check(&inventory)?;
    let tree: PsTree = images.read(Kind::PsTree, None)?;
    if tree.processes.len() != 1 {
        bail!(
            "pstree.img: {} processes; only single processes are supported yet",
            tree.processes.len()
        );
    }
    let mut processes = Vec::new();
    for entry in tree.processes {
        let pid = Some(entry.pid);
        let core: TaskCore = images.read(Kind::Core, pid)?;
        let mm: Mm = images.read(Kind::Mm, pid)?;
        let page_map: PageMap = images.read(Kind::PageMap, pid)?;
        let fds: Fds = images.read(Kind::Fds, pid)?;
        if core.threads.len() != 1 || core.threads[0].regs.is_none() {
            bail!("core-{}.img: expected one thread with registers", entry.pid);
        }
        let pages_path = images.pages_path(entry.pid);
        let pages = File::open(&pages_path)
            .with_context(|| format!("cannot open {}", pages_path.display()))?;
        let expected = page_map.pages_total * u64::from(page_map.page_size);
        let actual = pages.metadata()?.len();
        if actual != expected {
            bail!(
                "pages-{}.img: {actual} bytes, pagemap-{}.img describes {expected}: truncated or corrupted",
                entry.pid,
                entry.pid
            );
        }
        let runs_total: u64 = page_map.runs.iter().map(|r| r.nr_pages).sum();
        if runs_total != page_map.pages_total || page_map.page_size != 4096 {
            bail!("pagemap-{}.img: inconsistent page counts", entry.pid);
        }
        processes.push(ProcessImages {
            entry,
            core,
            mm,
            page_map,
            fds,
            pages,
        });
    }
    Ok((inventory, processes))
}

pub fn restore(options: &RestoreOptions) -> Result<i32> {
    let started = Instant::now();
    let images = ImageDir::open(&options.dir)?;
    let (_inventory, processes) = read_images(&images)?;
    let process = &processes[0];
    let pid = restore_process(process)?;
    log::info(&format!(
        "pid {pid}: restored in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    if let Some(pidfile) = &options.pidfile {
        std::fs::write(pidfile, format!("{pid}\n"))
            .with_context(|| format!("cannot write {}", pidfile.display()))?;
    }
    if options.detach {
        return Ok(0);
    }
    loop {
        match waitpid(pt::pid(pid), None)? {
            WaitStatus::Exited(_, code) => return Ok(code),
            WaitStatus::Signaled(_, sig, _) => return Ok(128 + sig as i32),
            _ => continue,
        }
    }
}

/// fds the restorer gives the task for its own use, numbered above the task's own fds.
struct Services {
    pages: i32,
    exe: i32,
    mapped_files: BTreeMap<String, i32>,
    first: i32,
    last: i32,
}

fn open_ro(path: &str, what: &str) -> Result<OwnedFd> {
    Ok(File::open(path)
        .with_context(|| format!("{what}: cannot open {path}"))?
        .into())
}

/// Creates the task and rebuilds it; kills it if anything fails.
fn restore_process(process: &ProcessImages) -> Result<i32> {
    let pid = process.entry.pid;
    let current_layout = read_maps(std::process::id() as i32)?;
    mm::check_specials(pid, &process.mm.vmas, &current_layout)?;

    // Decide every fd number first: the task's own, then the restorer's services, then where
    // rcr holds what it opened.
    let max_task_fd = process
        .fds
        .fds
        .iter()
        .map(|f| f.fd)
        .max()
        .unwrap_or(2)
        .max(2);
    let mut next_service = max_task_fd + 1;
    let mut take = || {
        next_service += 1;
        next_service - 1
    };
    let mut services = Services {
        pages: take(),
        exe: take(),
        mapped_files: BTreeMap::new(),
        first: max_task_fd + 1,
        last: 0,
    };
    let mut mapped_paths: Vec<(String, bool)> = Vec::new();
    for vma in &process.mm.vmas {
        if matches!(vma.kind(), VmaKind::FilePrivate | VmaKind::FileShared)
            && !services.mapped_files.contains_key(&vma.path)
        {
            services.mapped_files.insert(vma.path.clone(), take());
            let writable = process.mm.vmas.iter().any(|v| {
                v.path == vma.path
                    && v.kind() == VmaKind::FileShared
                    && v.vm_flags.iter().any(|f| f == "mw")
            });
            mapped_paths.push((vma.path.clone(), writable));
        }
    }
    services.last = next_service - 1;
    let floor = next_service + 16;

    let what = format!("pid {pid}");
    let (mut held, mut moves) = files::open_all(pid, &process.fds, floor)?;
    let mut hold = |fd: OwnedFd, dst: i32| -> Result<()> {
        let fd = files::hold_above(fd, floor)?;
        moves.push(files::Move {
            src: fd.as_raw_fd(),
            dst,
            cloexec: true,
        });
        held.push(fd);
        Ok(())
    };
    hold(process.pages.try_clone()?.into(), services.pages)?;
    hold(open_ro(&process.mm.exe_path, &what)?, services.exe)?;
    for (path, writable) in &mapped_paths {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(*writable)
            .open(path)
            .with_context(|| format!("{what}: mapped file {path}"))?;
        hold(file.into(), services.mapped_files[path])?;
    }
    let cwd = files::hold_above(
        open_ro(&process.fds.cwd, &what).with_context(|| format!("{what}: cwd"))?,
        floor,
    )?;
    let mut keep: Vec<i32> = moves.iter().map(|m| m.dst).collect();
    keep.sort_unstable();
    let plan = tree::ChildPlan {
        moves,
        cwd: Some(cwd),
        keep,
        new_session: process.core.sid == pid,
        new_group: process.core.pgid == pid,
        floor,
    };
    let child = tree::create(&process.entry, &plan)?;
    drop(plan);
    drop(held);
    if child != pid as i32 {
        let _ = kill(pt::pid(child), Signal::SIGKILL);
        bail!("pid {pid}: the new task got pid {child}");
    }
    match rebuild(child, process, &services) {
        Ok(()) => Ok(child),
        Err(err) => {
            let _ = kill(pt::pid(child), Signal::SIGKILL);
            let _ = waitpid(pt::pid(child), None);
            Err(err)
        }
    }
}

fn rebuild(pid: i32, process: &ProcessImages, services: &Services) -> Result<()> {
    pt::seize(pid)?;
    nix::sys::ptrace::setoptions(
        pt::pid(pid),
        nix::sys::ptrace::Options::PTRACE_O_TRACESYSGOOD
            | nix::sys::ptrace::Options::PTRACE_O_EXITKILL,
    )?;
    let regs = pt::get_regs(pid)?;
    let inherited_rseq = crate::sys::ptrace::get_rseq_config(pid)?;
    let current = read_maps(pid)?;
    let mm = &process.mm;
    let temp_size = mm::specials_size(&mm.vmas);
    let place = mm::find_free_place(&mm.vmas, &current, parasite::REGION_SIZE + temp_size)?;
    let mut parasite = Parasite::infect(pid, &regs, Some(place))?;
    let region = (parasite.base, parasite.end());
    let thread = &process.core.threads[0];
    {
        let mut steps = Steps::new(&mut parasite);
        if let Some(rseq) = inherited_rseq {
            // rcr's own rseq area is about to disappear: the kernel must stop writing to it.
            steps.add(
                "rseq unregistration",
                libc::SYS_rseq,
                &[
                    rseq.rseq_abi_pointer,
                    rseq.rseq_abi_size.into(),
                    1,
                    rseq.signature.into(),
                ],
            );
        }
        mm::unmap_inherited(&mut steps, &current, region)?;
        mm::move_specials(&mut steps, &mm.vmas, &current, region.1)?;
        mm::map_vmas(&mut steps, mm, &services.mapped_files)?;
        pages::fill(&mut steps, &process.page_map, services.pages)?;
        mm::seal_protections(&mut steps, mm)?;
        mm::set_mm_fields(&mut steps, mm, services.exe)?;
        task::restore_in_task(&mut steps, &process.core, thread)?;
        steps.room(1, 0)?;
        steps.add(
            "close the restorer's fds",
            libc::SYS_close_range,
            &[services.first as u64, services.last as u64, 0],
        );
        steps.flush()?;
        log::debug(&format!(
            "pid {pid}: rebuilt in {} batches",
            steps.batches_run
        ));
    }
    let final_regs = task::regs_from_proto(thread.regs.as_ref().unwrap(), &regs);
    parasite.cure(&final_regs)?;
    task::restore_cpu(pid, thread)?;
    let stopped = process.core.state == "T";
    pt::detach(pid, stopped)
}
