//! `rcr restore`: validate every image, create the task with its original PID, rebuild it from
//! inside with the parasite, put its registers back and let it run. On failure the task is
//! killed and the cause named.

pub mod cgroups;
pub mod creds;
pub mod files;
pub mod inventory;
pub mod limits;
pub mod mm;
pub mod pages;
pub mod seccomp;
pub mod signals;
pub mod steps;
pub mod task;
pub mod timers;
pub mod tree;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
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
    /// Restore inside a new PID namespace (original pids inside it).
    pub pidns: bool,
    /// Restore even if regular files changed size since the dump.
    pub ignore_file_size: bool,
    /// A job dumped with --shell-job: its fds on the external terminal become rcr's
    /// terminal (stdin), it joins rcr's session and gets the foreground if it had it.
    pub shell_job: bool,
    /// How long to wait for pids of the tree held by zombies (not yet reaped by their
    /// parent) to be freed.
    pub pid_wait: std::time::Duration,
    /// --inherit-fd fd[N]:pipe:[INODE]: (N, INODE), fd N open in rcr (checked before rcr
    /// opened anything): the tree's ends of that pipe, whose other end was outside the
    /// tree, become it.
    pub inherit_fds: Vec<(i32, u64)>,
    /// --external-pipe pipe:[INODE]=CHOICE.
    pub external_pipes: Vec<(u64, files::ExternalPipeChoice)>,
}

/// How the tree's pids (as the images have them) are seen from rcr: the same numbers, or,
/// with --pidns, other numbers outside the new namespace (read from NSpid in /proc).
pub struct PidMap {
    init: Option<i32>,
    outer: std::cell::RefCell<BTreeMap<u32, i32>>,
}

impl PidMap {
    fn identity() -> PidMap {
        PidMap {
            init: None,
            outer: Default::default(),
        }
    }

    /// The pid or tid `inner` as rcr sees it.
    pub fn outer(&self, inner: u32) -> Result<i32> {
        let Some(init) = self.init else {
            return Ok(inner as i32);
        };
        if let Some(&outer) = self.outer.borrow().get(&inner) {
            return Ok(outer);
        }
        self.scan(init);
        self.outer
            .borrow()
            .get(&inner)
            .copied()
            .with_context(|| format!("pid {inner}: not found in the new pid namespace"))
    }

    /// Reads NSpid of every task below the namespace's init.
    fn scan(&self, init: i32) {
        let mut queue = vec![init];
        while let Some(pid) = queue.pop() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                    continue;
                };
                let ids: Vec<i64> = status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .map(|v| {
                        v.split_whitespace()
                            .filter_map(|n| n.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                if let (Some(&outer), Some(&inner)) = (ids.first(), ids.last()) {
                    self.outer.borrow_mut().insert(inner as u32, outer as i32);
                }
            }
            queue.extend(
                crate::dump::tree::children(pid)
                    .into_iter()
                    .map(|c| c as i32),
            );
        }
    }
}

/// Every image of one process, read and checked (zombies have only their pstree entry).
pub struct ProcessImages {
    pub entry: PsTreeEntry,
    pub images: Option<LiveImages>,
}

pub struct LiveImages {
    pub core: TaskCore,
    pub mm: Mm,
    pub page_map: PageMap,
    pub fds: Fds,
    pub pages: File,
}

/// Reads and validates the whole image set; nothing is created before this succeeds.
pub fn read_images(images: &ImageDir) -> Result<(Inventory, Vec<ProcessImages>)> {
    images.check_inventory()?;
    let inventory: Inventory = images.read(Kind::Inventory, None)?;
    inventory::check(&inventory)?;
    let tree: PsTree = images.read(Kind::PsTree, None)?;
    if tree.processes.is_empty() {
        bail!("pstree.img: no processes");
    }
    let mut processes = Vec::new();
    for (index, entry) in tree.processes.into_iter().enumerate() {
        if index > 0
            && !processes
                .iter()
                .any(|p: &ProcessImages| p.entry.pid == entry.ppid)
        {
            bail!(
                "pstree.img: pid {} comes before its parent {}",
                entry.pid,
                entry.ppid
            );
        }
        if entry.zombie {
            processes.push(ProcessImages {
                entry,
                images: None,
            });
            continue;
        }
        let pid = Some(entry.pid);
        let core: TaskCore = images.read(Kind::Core, pid)?;
        let mm: Mm = images.read(Kind::Mm, pid)?;
        let page_map: PageMap = images.read(Kind::PageMap, pid)?;
        let fds: Fds = images.read(Kind::Fds, pid)?;
        let tids: Vec<u32> = core.threads.iter().map(|t| t.tid).collect();
        if tids != entry.threads || core.threads.iter().any(|t| t.regs.is_none()) {
            bail!("core-{}.img: threads do not match pstree.img", entry.pid);
        }
        if tids.first() != Some(&entry.pid) {
            bail!("core-{}.img: the first thread is not the leader", entry.pid);
        }
        if let Some(creds) = &core.creds {
            creds::check(entry.pid, creds)?;
        }
        if let Some(limits) = &core.limits {
            limits::check(entry.pid, limits)?;
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
        pages::check_checksums(entry.pid, &page_map)?;
        processes.push(ProcessImages {
            entry,
            images: Some(LiveImages {
                core,
                mm,
                page_map,
                fds,
                pages,
            }),
        });
    }
    Ok((inventory, processes))
}

pub fn restore(options: &RestoreOptions) -> Result<i32> {
    let started = Instant::now();
    let images = ImageDir::open(&options.dir)?;
    let (_inventory, processes) = read_images(&images)?;
    if !options.ignore_file_size {
        for process in &processes {
            if let Some(live) = &process.images {
                files::check_sizes(process.entry.pid, &live.fds)?;
            }
        }
    }
    files::tty::check(&processes, options.shell_job)?;
    let all_fds: Vec<(u32, &Fds)> = processes
        .iter()
        .filter_map(|p| Some((p.entry.pid, &p.images.as_ref()?.fds)))
        .collect();
    let external_pipes =
        files::resolve_external_pipes(&all_fds, &options.inherit_fds, &options.external_pipes)?;
    let (pid, waited) = restore_tree(&images, &processes, options, external_pipes)?;
    log::info(&format!(
        "pid {pid}: restored {} processes in {:.1} ms",
        processes.len(),
        started.elapsed().as_secs_f64() * 1e3
    ));
    if let Some(pidfile) = &options.pidfile {
        std::fs::write(pidfile, format!("{pid}\n"))
            .with_context(|| format!("cannot write {}", pidfile.display()))?;
    }
    if options.detach {
        return Ok(0);
    }
    let code = loop {
        match waitpid(pt::pid(waited), None)? {
            WaitStatus::Exited(_, code) => break code,
            WaitStatus::Signaled(_, sig, _) => break 128 + sig as i32,
            _ => continue,
        }
    };
    if options.shell_job {
        // The job is over: the terminal's foreground is rcr's group again, as a shell does.
        let _ = give_terminal(nix::unistd::getpgrp().as_raw());
    }
    Ok(code)
}

/// Makes `pgid` the foreground group of rcr's terminal (stdin), SIGTTOU blocked meanwhile
/// (rcr may be in the background itself).
fn give_terminal(pgid: i32) -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old))?;
    let given = crate::sys::tty::set_foreground_raw(0, pgid);
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    given.with_context(|| format!("cannot make group {pgid} the foreground of rcr's terminal"))
}

/// --shell-job: the process group of the tree that had the external terminal's foreground
/// at dump time (a group the tree leads), if any.
fn shell_job_foreground(processes: &[ProcessImages]) -> Option<u32> {
    processes.iter().find_map(|p| {
        let ctty = p.images.as_ref()?.fds.ctty.as_ref()?;
        let fg = u32::try_from(ctty.foreground_pgid).ok()?;
        (ctty.external && fg != 0 && processes.iter().any(|q| q.entry.pid == fg)).then_some(fg)
    })
}

/// fds the restorer gives a process for its own use, numbered above the process' own fds.
struct Services {
    pages: i32,
    exe: i32,
    mapped_files: BTreeMap<String, i32>,
    /// memfds mapped into memory (by dumped inode).
    memfds: BTreeMap<u64, i32>,
    /// Shared anonymous memory objects (by dumped inode): one object for every process
    /// that maps it, as it was after fork.
    shared_anon: BTreeMap<u64, i32>,
    first: i32,
    last: i32,
}

fn open_ro(path: &str, what: &str) -> Result<OwnedFd> {
    Ok(File::open(path)
        .with_context(|| format!("{what}: cannot open {path}"))?
        .into())
}

/// Decides the service fd numbers of one process; returns them and the files to map.
fn plan_services(live: &LiveImages) -> (Services, Vec<(String, bool)>) {
    let max_task_fd = live.fds.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2);
    let mut next_service = max_task_fd + 1;
    let mut take = || {
        next_service += 1;
        next_service - 1
    };
    let mut services = Services {
        pages: take(),
        exe: take(),
        mapped_files: BTreeMap::new(),
        memfds: BTreeMap::new(),
        shared_anon: BTreeMap::new(),
        first: max_task_fd + 1,
        last: 0,
    };
    let mut mapped_paths: Vec<(String, bool)> = Vec::new();
    for vma in &live.mm.vmas {
        if matches!(vma.kind(), VmaKind::FilePrivate | VmaKind::FileShared)
            && !services.mapped_files.contains_key(&vma.path)
        {
            services.mapped_files.insert(vma.path.clone(), take());
            let writable = live.mm.vmas.iter().any(|v| {
                v.path == vma.path
                    && v.kind() == VmaKind::FileShared
                    && v.vm_flags.iter().any(|f| f == "mw")
            });
            mapped_paths.push((vma.path.clone(), writable));
        }
    }
    for vma in &live.mm.vmas {
        if vma.kind() == VmaKind::AnonShared && !services.shared_anon.contains_key(&vma.inode) {
            services.shared_anon.insert(vma.inode, take());
        }
    }
    for vma in &live.mm.vmas {
        if is_memfd(vma.kind()) && !services.memfds.contains_key(&vma.inode) {
            services.memfds.insert(vma.inode, take());
        }
    }
    services.last = next_service - 1;
    (services, mapped_paths)
}

/// Opens everything one process needs, held at or above `floor`.
fn open_process_files(
    live: &LiveImages,
    pid: u32,
    services: &Services,
    mapped_paths: &[(String, bool)],
    shared_objects: &BTreeMap<u64, OwnedFd>,
    opened: &mut files::OpenedFiles,
) -> Result<(Vec<files::Move>, OwnedFd, Option<OwnedFd>)> {
    let what = format!("pid {pid}");
    let mut moves = opened.plan(pid, &live.fds)?;
    let mut hold = |opened: &mut files::OpenedFiles, fd: OwnedFd, dst: i32| -> Result<()> {
        let src = opened.hold(fd)?;
        moves.push(files::Move {
            src,
            dst,
            cloexec: true,
        });
        Ok(())
    };
    hold(opened, live.pages.try_clone()?.into(), services.pages)?;
    hold(opened, open_ro(&live.mm.exe_path, &what)?, services.exe)?;
    for (path, writable) in mapped_paths {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(*writable)
            .open(path)
            .with_context(|| format!("{what}: mapped file {path}"))?;
        hold(opened, file.into(), services.mapped_files[path])?;
    }
    for (inode, &dst) in &services.shared_anon {
        hold(opened, shared_objects[inode].try_clone()?, dst)?;
    }
    for (inode, &dst) in &services.memfds {
        let vma = live
            .mm
            .vmas
            .iter()
            .find(|v| v.inode == *inode && is_memfd(v.kind()))
            .expect("planned from these vmas");
        let name = vma
            .path
            .strip_prefix("/memfd:")
            .and_then(|p| p.strip_suffix(" (deleted)"))
            .unwrap_or("");
        let memfd = opened.memfd(*inode, name, vma.file_size, 0)?.try_clone()?;
        hold(opened, memfd, dst)?;
    }
    let cwd = open_ro(&live.fds.cwd, &what).with_context(|| format!("{what}: cwd"))?;
    // A root other than rcr's (a chroot): the process enters it before its cwd.
    let root = match live.fds.root.as_str() {
        "" | "/" => None,
        path => {
            let root = open_ro(path, &what).with_context(|| format!("{what}: root"))?;
            Some(files::hold_above(root, opened.floor())?)
        }
    };
    Ok((moves, files::hold_above(cwd, opened.floor())?, root))
}

fn is_memfd(kind: VmaKind) -> bool {
    matches!(kind, VmaKind::MemfdShared | VmaKind::MemfdPrivate)
}

/// Raises the soft limit on open files to the hard one: rcr holds every file of the tree.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Creates the tree and rebuilds every process; kills all of it if anything fails. Returns the
/// root's pid and the pid of rcr's child (the root, or the init of the new pid namespace).
fn restore_tree(
    images: &ImageDir,
    processes: &[ProcessImages],
    options: &RestoreOptions,
    external_pipes: std::collections::HashMap<u64, files::ExternalPipe>,
) -> Result<(i32, i32)> {
    let (pidns, shell_job) = (options.pidns, options.shell_job);
    raise_nofile_limit();
    let current_layout = read_maps(std::process::id() as i32)?;
    let mut all_services = Vec::new();
    let mut floor = 3;
    for process in processes {
        if let Some(live) = &process.images {
            mm::check_specials(process.entry.pid, &live.mm.vmas, &current_layout)?;
            let (services, mapped) = plan_services(live);
            // rcr holds every description of the tree above this: no slack to waste, a
            // process with N fds needs about 2N under the open-file limit.
            floor = floor.max(services.last + 1);
            all_services.push(Some((services, mapped)));
        } else {
            all_services.push(None);
        }
    }

    // One object per shared anonymous region of the tree, as large as its largest use.
    let mut shared_sizes: BTreeMap<u64, u64> = BTreeMap::new();
    for live in processes.iter().filter_map(|p| p.images.as_ref()) {
        for vma in live
            .mm
            .vmas
            .iter()
            .filter(|v| v.kind() == VmaKind::AnonShared)
        {
            let size = shared_sizes.entry(vma.inode).or_default();
            *size = (*size).max(vma.pgoff + vma.end - vma.start);
        }
    }
    let mut shared_objects = BTreeMap::new();
    for (&inode, &size) in &shared_sizes {
        let object = crate::sys::mem::shared_anon_object(size as usize)
            .with_context(|| format!("cannot create a shared memory object of {size} bytes"))?;
        shared_objects.insert(inode, object);
    }

    let all_fds: Vec<&Fds> = processes
        .iter()
        .filter_map(|p| p.images.as_ref())
        .map(|l| &l.fds)
        .collect();
    let mut opened = files::OpenedFiles::new(images, floor);
    opened.count_users(&all_fds);
    opened.set_external_pipes(external_pipes);
    opened.create_pipes(&all_fds)?;
    opened.create_unix_sockets(&all_fds)?;
    opened.set_shell_job(shell_job);
    opened.create_ttys(&all_fds)?;
    let mut plans = Vec::new();
    for (index, process) in processes.iter().enumerate() {
        let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let report_read = files::hold_above(report_read, floor)?;
        let report_write = files::hold_above(report_write, floor)?;
        let mut plan = tree::ChildPlan {
            entry: process.entry.clone(),
            moves: Vec::new(),
            cwd: None,
            keep: Vec::new(),
            children: Vec::new(),
            report_read: Some(report_read),
            report_write: Some(report_write),
            ctty: None,
            root: None,
        };
        if let (Some(live), Some((services, mapped))) = (&process.images, &all_services[index]) {
            let (moves, cwd, root) = open_process_files(
                live,
                process.entry.pid,
                services,
                mapped,
                &shared_objects,
                &mut opened,
            )?;
            plan.keep = moves.iter().map(|m| m.dst).collect();
            plan.keep.sort_unstable();
            plan.moves = moves;
            plan.cwd = Some(cwd);
            plan.root = root;
            let leader = process.entry.sid == process.entry.pid;
            if let Some(ctty) = live.fds.ctty.as_ref().filter(|c| !c.external && leader) {
                let Some(fd) = opened.tty_helper(ctty.index) else {
                    bail!(
                        "pid {}: its controlling terminal /dev/pts/{} was not restored",
                        process.entry.pid,
                        ctty.index
                    );
                };
                plan.ctty = Some((fd, ctty.foreground_pgid));
            }
        }
        plans.push(plan);
    }
    opened.finish_ttys()?;
    for index in 1..processes.len() {
        let parent = processes
            .iter()
            .position(|p| p.entry.pid == processes[index].entry.ppid)
            .expect("checked when reading");
        plans[parent].children.push(index);
    }
    let (init_read, init_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (restored_read, restored_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (ack_read, ack_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let init_pipes = tree::InitPipes {
        report: files::hold_above(init_write, floor)?,
        restored_read: files::hold_above(restored_read, floor)?,
        restored_write: files::hold_above(restored_write, floor)?,
        ack_read: files::hold_above(ack_read, floor)?,
        ack_write: files::hold_above(ack_write, floor)?,
    };
    let init_read = files::hold_above(init_read, floor)?;
    let (child, pids) = if pidns {
        let init = tree::create_in_new_namespace(&plans, &init_pipes)?;
        let pids = PidMap {
            init: Some(init),
            outer: Default::default(),
        };
        (init, pids)
    } else {
        (tree::create(&plans, options.pid_wait)?, PidMap::identity())
    };
    // Only the new processes hold the write ends now: a dead one shows as end of file.
    let tree::InitPipes {
        report: init_write,
        restored_write,
        ack_read,
        ack_write,
        ..
    } = init_pipes;
    drop(init_write);
    drop(ack_write);
    for plan in &mut plans {
        plan.report_write = None;
    }
    drop(opened);
    drop(shared_objects);
    let created: Vec<u32> = processes.iter().map(|p| p.entry.pid).collect();
    let kill_all = || {
        if pidns {
            // The namespace dies with its init.
            let _ = kill(pt::pid(child), Signal::SIGKILL);
        } else {
            for &pid in created.iter().rev() {
                let _ = kill(pt::pid(pid as i32), Signal::SIGKILL);
            }
        }
        reap_until(child);
    };
    let report = if pidns {
        init_read
    } else {
        plans[0].report_read.take().expect("root report pipe")
    };
    if let Err(err) = tree::wait_ready(&plans[0], &report, child) {
        kill_all();
        return Err(err);
    }
    drop(plans);
    let root = pids.outer(processes[0].entry.pid)?;
    if !pidns && root != child {
        kill_all();
        bail!(
            "pid {}: the new process got pid {child}",
            processes[0].entry.pid
        );
    }
    // The page checksums are verified on the other core while the processes are rebuilt
    // (not earlier: rcr forks the tree's root only while it has one thread).
    let verifier = match pages::Verifier::start(processes.iter().filter_map(|p| {
        let live = p.images.as_ref()?;
        Some((p.entry.pid, &live.page_map, &live.pages))
    })) {
        Ok(verifier) => verifier,
        Err(err) => {
            kill_all();
            return Err(err);
        }
    };
    let mut seized = Vec::new();
    let outcome = (|| -> Result<()> {
        for process in processes {
            if let Some(cgroups) = process
                .images
                .as_ref()
                .and_then(|l| l.core.cgroups.as_ref())
            {
                cgroups::restore(pids.outer(process.entry.pid)?, cgroups)?;
            }
        }
        for (process, services) in processes.iter().zip(&all_services) {
            let (Some(live), Some((services, _))) = (&process.images, services) else {
                continue;
            };
            let pid = pids.outer(process.entry.pid)?;
            pt::seize(pid)?;
            seized.push(pid);
            rebuild(pid, live, services, &pids)?;
        }
        if shell_job && let Some(pgid) = shell_job_foreground(processes) {
            give_terminal(pids.outer(pgid)?)?;
        }
        Ok(())
    })();
    // Nothing of the tree's own has run yet: a corrupted pages image stops it here.
    let outcome = outcome.and_then(|()| verifier.finish());
    match outcome {
        Ok(()) => {
            for (process, live) in processes
                .iter()
                .filter_map(|p| Some((p, p.images.as_ref()?)))
            {
                for thread in &live.core.threads {
                    let stop = process.entry.stopped && thread.tid == process.entry.pid;
                    pt::detach(pids.outer(thread.tid)?, stop)?;
                }
            }
            if pidns {
                // The init stays from now on, also when rcr is gone (--detach): once it says
                // so, rcr may exit.
                let mut ack = [0u8; 1];
                let told = nix::unistd::write(&restored_write, &[1])
                    .and_then(|_| nix::unistd::read(&ack_read, &mut ack));
                if told != Ok(1) {
                    kill_all();
                    bail!("the init of the new pid namespace is gone ({told:?})");
                }
            }
            Ok((root, child))
        }
        Err(err) => {
            kill_all();
            Err(err)
        }
    }
}

/// Reaps rcr's child `child` once it is dead. The threads rcr traces are reported to rcr
/// as well, and a killed thread group leader is not reported before its other threads are
/// reaped: waiting for the leader alone would wait forever. Every task rcr waits for here is
/// one it created (the tree, or the namespace's init) or traces.
fn reap_until(child: i32) {
    use nix::sys::wait::WaitPidFlag;
    loop {
        match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _))
                if pid.as_raw() == child =>
            {
                return;
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

fn rebuild(pid: i32, live: &LiveImages, services: &Services, pids: &PidMap) -> Result<()> {
    use nix::sys::ptrace::Options;
    nix::sys::ptrace::setoptions(
        pt::pid(pid),
        Options::PTRACE_O_TRACESYSGOOD
            | Options::PTRACE_O_EXITKILL
            | Options::PTRACE_O_TRACECLONE
            | pt::SUSPEND_SECCOMP,
    )?;
    // Nothing the task is sent, nor the signals queued back into it, runs before it resumes.
    crate::sys::ptrace::set_sigmask(pid, parasite::PARASITE_SIGMASK)?;
    let regs = pt::get_regs(pid)?;
    let inherited_rseq = crate::sys::ptrace::get_rseq_config(pid)?;
    let current = read_maps(pid)?;
    let mm = &live.mm;
    let temp_size = mm::specials_size(&mm.vmas);
    let place = mm::find_free_place(&mm.vmas, &current, parasite::REGION_SIZE + temp_size)?;
    let mut parasite = Parasite::infect(pid, &regs, Some(place))?;
    let region = (parasite.base, parasite.end());
    let leader = &live.core.threads[0];
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
        mm::map_vmas(
            &mut steps,
            mm,
            &services.mapped_files,
            &services.shared_anon,
            &services.memfds,
        )?;
        pages::fill(&mut steps, &live.page_map, services.pages)?;
        mm::seal_protections(&mut steps, mm)?;
        mm::lock(&mut steps, mm)?;
        mm::set_mm_fields(&mut steps, mm, services.exe)?;
        task::restore_in_task(&mut steps, &live.core, &live.fds)?;
        task::restore_thread_in_task(&mut steps, &live.core, leader)?;
        steps.room(1, 0)?;
        // Everything above the process' own fds: the services, and the pipe it reported
        // on, which it may not have closed yet when it was seized.
        steps.add(
            "close the restorer's fds",
            libc::SYS_close_range,
            &[services.first as u64, u64::from(u32::MAX), 0],
        );
        // File locks after the last close: closing any fd of a file (the restorer's fds of
        // mapped files included) drops every POSIX lock the process holds on that file.
        files::restore_locks(&mut steps, &live.fds)?;
        task::create_threads(&mut steps, &live.core)?;
        steps.flush()?;
        log::debug(&format!(
            "pid {pid}: rebuilt in {} batches",
            steps.batches_run
        ));
    }
    for thread in &live.core.threads[1..] {
        task::finish_thread(&mut parasite, &live.core, thread, pids.outer(thread.tid)?)?;
    }
    {
        // Last, in the leader: timers (their target threads exist now), then what takes
        // privileges away.
        let mut steps = Steps::new(&mut parasite);
        if let Some(timers) = &live.core.timers {
            timers::restore(&mut steps, timers)?;
        }
        task::restore_final(&mut steps, &live.core)?;
        steps.flush()?;
    }
    if task::needs_tile_room(leader) {
        // While the blob is still there: the leader's xstate is set after the cure.
        parasite.touch_tiles(pid, &regs)?;
    }
    let final_regs = task::regs_from_proto(leader.regs.as_ref().unwrap(), &regs);
    parasite.cure(&final_regs)?;
    task::restore_cpu(pid, leader)
}
