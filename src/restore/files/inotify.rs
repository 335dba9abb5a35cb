//! inotify: rcr creates the instance and adds every watch through its dumped path, in
//! ascending wd order. The kernel hands out wds cyclically (idr_alloc_cyclic from 1), so a
//! gap below a dumped wd is burnt by adding and removing a watch on a throwaway inode; the
//! IN_IGNORED events that leaves are read away before the process gets the instance.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::image::proto::Inotify;
use crate::sys::inotify as sys;

/// The most wds burnt to reach one dumped wd: beyond, the restore is refused rather than
/// spending minutes adding and removing watches.
const MAX_GAP: i64 = 1 << 20;

/// An inode to burn wds on: one that no dumped watch of the instance is on.
fn throwaway(i: &Inotify, what: &str) -> Result<&'static Path> {
    let watched: HashSet<(u64, u64)> = i.watches.iter().map(|w| (w.dev, w.inode)).collect();
    ["/", "/proc", "/dev", "/tmp"]
        .into_iter()
        .map(Path::new)
        .find(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| !watched.contains(&(m.dev(), m.ino())))
        })
        .with_context(|| format!("{what}: inotify: no unwatched inode to burn wds on"))
}

pub(super) fn open(i: &Inotify, what: &str) -> Result<OwnedFd> {
    // Non-blocking while rcr drains it; the dumped flags are set at the end.
    let instance = sys::init(libc::IN_CLOEXEC | libc::IN_NONBLOCK)
        .with_context(|| format!("{what}: inotify_init1"))?;
    let mut watches: Vec<_> = i.watches.iter().collect();
    watches.sort_by_key(|w| w.wd);
    // The next wd the kernel gives (a new instance starts at 1).
    let mut next: i64 = 1;
    let mut burn_on = None;
    for watch in watches {
        let wd = i64::from(watch.wd);
        if wd < next {
            bail!("{what}: inotify wd {} repeated in the image", watch.wd);
        }
        if wd - next > MAX_GAP {
            bail!(
                "{what}: inotify wd {} is too far above the next free one ({next}): \
                 more than {MAX_GAP} wds to burn",
                watch.wd
            );
        }
        while next < wd {
            let path = match burn_on {
                Some(path) => path,
                None => *burn_on.insert(throwaway(i, what)?),
            };
            let burnt = sys::add_watch(&instance, path, libc::IN_ACCESS | libc::IN_DONT_FOLLOW)
                .with_context(|| {
                    format!("{what}: inotify: burning wd {next} on {}", path.display())
                })?;
            sys::rm_watch(&instance, burnt)
                .with_context(|| format!("{what}: inotify: removing burnt wd {burnt}"))?;
            if i64::from(burnt) != next {
                bail!(
                    "{what}: inotify: burnt wd {burnt} where {next} was expected, cannot reach wd {wd}"
                );
            }
            next += 1;
        }
        // IN_DONT_FOLLOW: the dumped path names the watched inode itself, a symlink included
        // (the kernel keeps no IN_DONT_FOLLOW or IN_ONLYDIR of the original call).
        let got = sys::add_watch(
            &instance,
            Path::new(&watch.path),
            watch.mask | libc::IN_DONT_FOLLOW,
        )
        .with_context(|| {
            format!(
                "{what}: inotify wd {}: cannot watch {}",
                watch.wd, watch.path
            )
        })?;
        if got != watch.wd {
            bail!(
                "{what}: inotify: watching {} gave wd {got}, not its dumped wd {} (another \
                 watch of the instance is on the same inode now?)",
                watch.path,
                watch.wd
            );
        }
        next = wd + 1;
    }
    if burn_on.is_some() {
        drain(&instance, what)?;
    }
    if i.flags & libc::O_NONBLOCK as u32 == 0 {
        let flags = fcntl(instance.as_fd(), FcntlArg::F_GETFL)
            .with_context(|| format!("{what}: inotify F_GETFL"))?;
        let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
        fcntl(instance.as_fd(), FcntlArg::F_SETFL(flags))
            .with_context(|| format!("{what}: inotify F_SETFL"))?;
    }
    Ok(instance)
}

/// Reads away the IN_IGNORED events burning queued (and anything the throwaway watches saw).
/// Events of the real watches that came meanwhile go too: they happened during the restore,
/// like the ones between the dump and the restore that no instance saw.
fn drain(instance: &OwnedFd, what: &str) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match nix::unistd::read(instance, &mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err).with_context(|| format!("{what}: inotify: draining")),
        }
    }
    Ok(())
}
