//! Benchmark of rcr dump and restore by memory size, with the machine's limits measured in the
//! same run: writing the same bytes from memory into a file in the image directory (what a
//! dump can at best do) and reading them back into freshly mapped memory (what a restore can
//! at best do).
//!
//!     rcr-bench [--dir DIR] [SIZE_MIB...]        default: /dev/shm, 64 1024 4096
//!                                                 (RCR_BENCH_RUNS=N: medians of N runs, not 3)
//!     rcr-bench --procs N,N.. | --threads N,N.. | --fds N,N..
//!                                                 dump/restore time by processes, threads, fds
//!     rcr-bench hold SIZE_MIB READY_FILE [PROCS THREADS]   (internal) the workload

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rcr::sys::mem::AnonMapping;

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

/// The workload: SIZE MiB of pseudo-random private memory, PROCS-1 idle child processes and
/// THREADS-1 idle threads, then sleep until killed.
/// `count` open fds of mixed kinds, an eighth each: regular files, pipe ends (half pipes),
/// eventfds, /dev/null, unix socket pair ends, accepted unix connections (client and accepted
/// end, from one listener bound in `dir`), timerfds and signalfds.
fn open_fds(count: usize, dir: &Path) -> Result<Vec<std::os::fd::OwnedFd>> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::unix::net::{UnixListener, UnixStream};
    if count == 0 {
        return Ok(Vec::new());
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let me = std::env::current_exe()?;
    let listen_path = dir.join("bench.sock");
    let _ = fs::remove_file(&listen_path);
    let listener = UnixListener::bind(&listen_path)?;
    let mut fds: Vec<std::os::fd::OwnedFd> = vec![listener.into()];
    let mut turn = 0usize;
    while fds.len() < count {
        turn += 1;
        match turn % 8 {
            0 => fds.push(fs::File::open(&me)?.into()),
            1 => {
                let (read, write) = nix::unistd::pipe()?;
                fds.push(read);
                fds.push(write);
            }
            2 => fds.push(
                nix::sys::eventfd::EventFd::from_value_and_flags(
                    fds.len() as u32,
                    nix::sys::eventfd::EfdFlags::empty(),
                )?
                .into(),
            ),
            3 => fds.push(fs::File::open("/dev/null")?.into()),
            4 => {
                let (a, b) = socketpair(
                    AddressFamily::Unix,
                    SockType::Stream,
                    None,
                    SockFlag::empty(),
                )?;
                fds.push(a);
                fds.push(b);
            }
            5 => {
                let client = UnixStream::connect(&listen_path)?;
                let listener = fds[0].try_clone()?;
                let (accepted, _) = UnixListener::from(listener).accept()?;
                fds.push(client.into());
                fds.push(accepted.into());
            }
            6 => fds.push(rcr::sys::fd::timerfd(libc::CLOCK_MONOTONIC, 0, 0, 0, 0)?),
            _ => {
                let mask = nix::sys::signal::SigSet::empty();
                fds.push(nix::sys::signalfd::SignalFd::new(&mask)?.into());
            }
        }
    }
    Ok(fds)
}

fn hold(mib: usize, ready: &Path, procs: usize, threads: usize, fds: usize) -> Result<()> {
    rcr::sys::child::close_range(3, u32::MAX)?;
    let mut memory = AnonMapping::new(mib << 20)?;
    fill(memory.as_mut_slice(), 0x5eed);
    let me = std::env::current_exe()?;
    for _ in 1..procs {
        Command::new(&me)
            .arg("idle")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
    }
    for _ in 1..threads {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        });
    }
    let _fds = open_fds(fds, ready.parent().unwrap_or(Path::new("/tmp")))?;
    // Ready once every child is asleep (its own thread only, state S).
    let deadline = Instant::now() + Duration::from_secs(60);
    while rcr::dump::tree::children(std::process::id() as i32).len() + 1 < procs
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::write(ready, std::process::id().to_string())?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        std::hint::black_box(&memory);
    }
}

struct Run {
    wall_ms: f64,
    stderr: String,
}

fn run_rcr(rcr: &Path, args: &[&str]) -> Result<Run> {
    let started = Instant::now();
    let output = Command::new(rcr)
        .arg("-v")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!("rcr {args:?} failed: {stderr}");
    }
    Ok(Run { wall_ms, stderr })
}

/// A number that follows `key` in rcr's log.
fn logged(stderr: &str, key: &str) -> f64 {
    stderr
        .split(key)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

fn gbps(bytes: u64, ms: f64) -> f64 {
    bytes as f64 / ms / 1e6
}

/// Limits: write `bytes` from memory to a file in `dir`, read them back into fresh memory.
fn limits(dir: &Path, bytes: usize) -> Result<(f64, f64)> {
    let path = dir.join("limit.bin");
    let mut memory = AnonMapping::new(bytes)?;
    fill(memory.as_mut_slice(), 7);
    let started = Instant::now();
    fs::File::create(&path)?.write_all(memory.as_mut_slice())?;
    let write_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(memory);
    let mut fresh = AnonMapping::new(bytes)?;
    let started = Instant::now();
    fs::File::open(&path)?.read_exact(fresh.as_mut_slice())?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    fs::remove_file(&path)?;
    Ok((write_ms, read_ms))
}

/// One dump and restore of a fresh workload of `mib` MiB.
struct Sample {
    dump_ms: f64,
    frozen_ms: f64,
    restore_ms: f64,
    image_bytes: u64,
    dump_peak_kib: f64,
    restore_peak_kib: f64,
}

/// Every process below `root`, root included.
fn tree_pids(root: i32) -> Vec<i32> {
    let mut pids = vec![root];
    let mut next = 0;
    while next < pids.len() {
        let children = rcr::dump::tree::children(pids[next]);
        pids.extend(children.into_iter().map(|c| c as i32));
        next += 1;
    }
    pids
}

/// Kills a tree the benchmark made (or restored) and reaps all of it: we are a subreaper,
/// so its orphans are ours.
fn kill_tree(root: i32) {
    for pid in tree_pids(root) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    reap_all();
}

fn reap_all() {
    while nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(-1), None).is_ok() {}
}

fn sample(rcr: &Path, me: &Path, dir: &Path, mib: usize) -> Result<Sample> {
    sample_tree(rcr, me, dir, mib, (1, 1, 0))
}

fn sample_tree(
    rcr: &Path,
    me: &Path,
    dir: &Path,
    mib: usize,
    (procs, threads, fds): (usize, usize, usize),
) -> Result<Sample> {
    let ready = dir.join("ready");
    let _ = fs::remove_file(&ready);
    let mut child = Command::new(me)
        .args(["hold", &mib.to_string()])
        .arg(&ready)
        .args([procs.to_string(), threads.to_string(), fds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        if Instant::now() > deadline {
            kill_tree(child.id() as i32);
            bail!("workload of {mib} MiB not ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    let images = dir.join("images");
    let images_arg = images.to_str().context("path")?;
    let dump = run_rcr(rcr, &["dump", "-t", &pid, "-D", images_arg]);
    if dump.is_err() {
        kill_tree(child.id() as i32);
    }
    let _ = child.wait();
    reap_all();
    let dump = dump?;
    let pidfile = dir.join("pid");
    let restore = run_rcr(
        rcr,
        &[
            "restore",
            "-D",
            images_arg,
            "--detach",
            "--pidfile",
            pidfile.to_str().unwrap(),
        ],
    )?;
    // The restored tree is our orphan (we are a subreaper): kill and reap it.
    let restored: i32 = fs::read_to_string(&pidfile)?.trim().parse()?;
    kill_tree(restored);
    let image_bytes: u64 = fs::read_dir(&images)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    fs::remove_dir_all(&images)?;
    Ok(Sample {
        dump_ms: dump.wall_ms,
        frozen_ms: logged(&dump.stderr, "frozen"),
        restore_ms: restore.wall_ms,
        image_bytes,
        dump_peak_kib: logged(&dump.stderr, "peak memory"),
        restore_peak_kib: logged(&restore.stderr, "peak memory"),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs per figure (medians): 3, or RCR_BENCH_RUNS (more on a busy machine).
fn runs() -> usize {
    std::env::var("RCR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

fn bench(rcr: &Path, me: &Path, base: &Path, mib: usize) -> Result<()> {
    let dir = base.join(format!("rcr-bench-{mib}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let bytes = (mib as u64) << 20;
    // Runs and limits interleave, so that both meet the machine in the same state; medians.
    let mut samples = Vec::new();
    let mut limit_runs = Vec::new();
    for _ in 0..runs() {
        limit_runs.push(limits(&dir, bytes as usize)?);
        samples.push(sample(rcr, me, &dir, mib)?);
    }
    let _ = fs::remove_dir_all(&dir);
    let pick = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    let dump_ms = pick(|s| s.dump_ms);
    let restore_ms = pick(|s| s.restore_ms);
    let write_ms = median(limit_runs.iter().map(|l| l.0).collect());
    let read_ms = median(limit_runs.iter().map(|l| l.1).collect());
    println!(
        "{mib:>5} MiB | dump {dump_ms:7.1} ms {:4.2} GB/s = {:3.0}% of write {:4.2} GB/s | frozen {:7.1} ms | restore {restore_ms:7.1} ms {:4.2} GB/s = {:3.0}% of read {:4.2} GB/s | image {:6.1} MiB | rcr peak dump {:4.1} MiB, restore {:4.1} MiB",
        gbps(bytes, dump_ms),
        100.0 * write_ms / dump_ms,
        gbps(bytes, write_ms),
        pick(|s| s.frozen_ms),
        gbps(bytes, restore_ms),
        100.0 * read_ms / restore_ms,
        gbps(bytes, read_ms),
        pick(|s| s.image_bytes as f64) / (1 << 20) as f64,
        pick(|s| s.dump_peak_kib) / 1024.0,
        pick(|s| s.restore_peak_kib) / 1024.0,
    );
    Ok(())
}

/// Dump and restore time by number of processes or threads (1 MiB of memory in the root).
fn bench_counts(rcr: &Path, me: &Path, base: &Path, what: &str, counts: &[usize]) -> Result<()> {
    let dir = base.join("rcr-bench-counts");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut first: Option<(f64, f64)> = None;
    for &n in counts {
        let shape = match what {
            "procs" => (n, 1, 0),
            "threads" => (1, n, 0),
            _ => (1, 1, n),
        };
        let mut samples = Vec::new();
        for _ in 0..runs() {
            samples.push(sample_tree(rcr, me, &dir, 1, shape)?);
        }
        let dump_ms = median(samples.iter().map(|s| s.dump_ms).collect());
        let restore_ms = median(samples.iter().map(|s| s.restore_ms).collect());
        let (base_dump, base_restore) = *first.get_or_insert((dump_ms, restore_ms));
        let extra = (n.max(2) - 1) as f64;
        println!(
            "{n:>4} {what:<7} | dump {dump_ms:7.1} ms | restore {restore_ms:7.1} ms | per extra one: dump {:5.2} ms, restore {:5.2} ms",
            (dump_ms - base_dump) / extra,
            (restore_ms - base_restore) / extra,
        );
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("hold") => {
            let count = |i: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(1);
            let fds = args.get(6).and_then(|a| a.parse().ok()).unwrap_or(0);
            return hold(
                args[2].parse()?,
                Path::new(&args[3]),
                count(4),
                count(5),
                fds,
            );
        }
        Some("idle") => {
            rcr::sys::child::close_range(3, u32::MAX)?;
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => {}
    }
    nix::sys::prctl::set_child_subreaper(true)?;
    let me = std::env::current_exe()?;
    let rcr = me.with_file_name("rcr");
    let mut base = PathBuf::from("/dev/shm");
    let mut sizes = Vec::new();
    let mut counts: Vec<(String, Vec<usize>)> = Vec::new();
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--dir" {
            base = PathBuf::from(rest.next().context("--dir DIR")?);
        } else if arg == "--procs" || arg == "--threads" || arg == "--fds" {
            let list = rest.next().context("--procs/--threads/--fds N,N...")?;
            let numbers = list
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<usize>, _>>()?;
            counts.push((arg[2..].to_owned(), numbers));
        } else {
            sizes.push(arg.parse::<usize>()?);
        }
    }
    if sizes.is_empty() && counts.is_empty() {
        sizes = vec![64, 1024, 4096];
    }
    println!(
        "rcr-bench: images and limit files in {}; medians of {} runs; times are wall-clock of the rcr command",
        base.display(),
        runs()
    );
    for mib in sizes {
        bench(&rcr, &me, &base, mib)?;
    }
    for (what, numbers) in &counts {
        bench_counts(&rcr, &me, &base, what, numbers)?;
    }
    Ok(())
}
