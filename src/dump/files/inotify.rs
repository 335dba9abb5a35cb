//! inotify: the instance's flags and every watch (wd, mask, and the path of the watched
//! inode, found again from the file handle fdinfo shows). Events queued at the dump cannot be
//! put back: their size is recorded and rcr warns.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use anyhow::{Context, Result, bail};

use super::{FileIds, OneFd};
use crate::image::proto::{Inotify, InotifyWatch};

/// One "inotify wd:.. ino:.. sdev:.. mask:.. ignored_mask:.. fhandle-bytes:.. fhandle-type:..
/// f_handle:.." line of fdinfo (every value in hex).
#[derive(Debug, PartialEq)]
struct Mark {
    wd: i32,
    ino: u64,
    /// The kernel's dev_t of the filesystem (s_dev): major << 20 | minor.
    sdev: u32,
    mask: u32,
    ignored_mask: u32,
    /// (fhandle-type, f_handle bytes); None when the kernel could not encode one.
    handle: Option<(i32, Vec<u8>)>,
}

fn parse_mark(line: &str) -> Option<Mark> {
    let words: Vec<&str> = line.strip_prefix("inotify ")?.split_whitespace().collect();
    let value = |key: &str| words.iter().find_map(|w| w.strip_prefix(key));
    let hex32 = |key: &str| u32::from_str_radix(value(key)?, 16).ok();
    let handle = match (
        value("fhandle-bytes:"),
        value("fhandle-type:"),
        value("f_handle:"),
    ) {
        (Some(len), Some(kind), Some(bytes)) => {
            let len = usize::from_str_radix(len, 16).ok()?;
            let kind = u32::from_str_radix(kind, 16).ok()? as i32;
            let bytes = (0..bytes.len() / 2)
                .map(|i| u8::from_str_radix(bytes.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            if bytes.len() != len {
                return None;
            }
            Some((kind, bytes))
        }
        _ => None,
    };
    Some(Mark {
        wd: hex32("wd:")? as i32,
        ino: u64::from_str_radix(value("ino:")?, 16).ok()?,
        sdev: hex32("sdev:")?,
        mask: hex32("mask:")?,
        ignored_mask: hex32("ignored_mask:").unwrap_or(0),
        handle,
    })
}

/// Major and minor of a kernel-internal dev_t (include/linux/kdev_t.h: MINORBITS 20), which
/// is what fdinfo's sdev shows; st_dev and mountinfo use the userspace encoding instead.
fn kernel_dev(sdev: u32) -> (u32, u32) {
    (sdev >> 20, sdev & 0xf_ffff)
}

/// A mount point of mountinfo with its octal escapes (\040 for a space...) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points of rcr's mount namespace for the filesystem `major:minor`.
fn mount_points(mountinfo: &str, major: u32, minor: u32) -> Vec<String> {
    let wanted = format!("{major}:{minor}");
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(2) != Some(&wanted.as_str()) {
                return None;
            }
            Some(unescape(fields.get(4)?))
        })
        .collect()
}

/// The inode behind a file handle, opened O_PATH through the mount at `mount`: in a thread
/// of its own whose working directory (unshared from rcr's) is moved there, since
/// open_by_handle_at wants a mount fd that is not O_PATH and opening the mount point for real
/// would show as IN_OPEN / IN_CLOSE_NOWRITE to whoever watches it (the dumped task, say).
fn open_through(mount: &str, handle_type: i32, handle: &[u8]) -> Result<OwnedFd> {
    let mount_fd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(mount)?;
    use std::os::fd::AsFd;
    crate::sys::fd::in_directory(mount_fd.as_fd(), || {
        crate::sys::inotify::open_by_handle_at_cwd(
            handle_type,
            handle,
            libc::O_PATH | libc::O_CLOEXEC,
        )
    })
    .context("open_by_handle_at")
}

/// The path of the watched inode: open_by_handle_at through each mount of its filesystem,
/// then the name the kernel gives the result, which must still be that inode.
fn resolve(mark: &Mark, mountinfo: &str) -> Result<String> {
    let Some((handle_type, handle)) = &mark.handle else {
        crate::refuse!("fdinfo shows no file handle for it (its filesystem cannot encode one)");
    };
    let (major, minor) = kernel_dev(mark.sdev);
    let dev = libc::makedev(major, minor);
    let mounts = mount_points(mountinfo, major, minor);
    if mounts.is_empty() {
        crate::refuse!("its filesystem {major}:{minor} is not mounted in rcr's mount namespace");
    }
    let mut last_error = None;
    for mount in &mounts {
        let attempt = (|| -> Result<String> {
            let found = open_through(mount, *handle_type, handle)?;
            let path = fs::read_link(format!("/proc/self/fd/{}", found.as_raw_fd()))?
                .to_string_lossy()
                .into_owned();
            if path.ends_with(" (deleted)") || !path.starts_with('/') {
                crate::refuse!("it has no name ({path})");
            }
            let meta = fs::symlink_metadata(&path).with_context(|| format!("stat {path}"))?;
            if meta.ino() != mark.ino || meta.dev() != dev {
                bail!(
                    "{path} is inode {} on {}:{}, not the watched one",
                    meta.ino(),
                    libc::major(meta.dev()),
                    libc::minor(meta.dev())
                );
            }
            Ok(path)
        })();
        match attempt {
            Ok(path) => return Ok(path),
            Err(err) => last_error = Some(err.context(format!("through mount {mount}"))),
        }
    }
    Err(last_error.expect("at least one mount was tried"))
}

pub(super) fn dump(one: &OneFd, ids: &mut FileIds) -> Result<Inotify> {
    let (pid, fd) = (one.pid, one.fd);
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let mut watches = Vec::new();
    for line in one.info.text.lines().filter(|l| l.starts_with("inotify ")) {
        let mark = parse_mark(line)
            .with_context(|| format!("pid {pid} fd {fd}: inotify line {line:?}"))?;
        let path = resolve(&mark, &mountinfo).with_context(|| {
            let (major, minor) = kernel_dev(mark.sdev);
            format!(
                "pid {pid} fd {fd}: inotify watch wd {} (inode {} on {major}:{minor}) cannot be \
                 found by path",
                mark.wd, mark.ino
            )
        })?;
        let (major, minor) = kernel_dev(mark.sdev);
        watches.push(InotifyWatch {
            wd: mark.wd,
            mask: mark.mask,
            ignored_mask: mark.ignored_mask,
            path,
            inode: mark.ino,
            dev: libc::makedev(major, minor),
        });
    }
    watches.sort_by_key(|w| w.wd);
    // Queued events stay with the dumped instance: a new one cannot be given them.
    let pending_bytes = match one.copy {
        Some(copy) => crate::sys::inotify::queued_bytes(copy)
            .with_context(|| format!("pid {pid} fd {fd}: inotify FIONREAD"))?,
        None => 0,
    };
    if pending_bytes > 0 {
        // Said once the dump is complete (a failed dump has only its error line).
        ids.warnings.push(format!(
            "pid {pid} fd {fd}: inotify instance has {pending_bytes} bytes of unread events: a \
             restore starts with an empty queue (the events are lost)"
        ));
    }
    Ok(Inotify {
        flags: one.flags,
        watches,
        pending_bytes: u64::from(pending_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_mark_line() {
        let line = "inotify wd:1a ino:3e8 sdev:fe00001 mask:8000302 ignored_mask:0 \
                    fhandle-bytes:8 fhandle-type:1 f_handle:e803000012345678";
        assert_eq!(
            parse_mark(line),
            Some(Mark {
                wd: 0x1a,
                ino: 0x3e8,
                sdev: 0xfe0_0001,
                mask: 0x800_0302,
                ignored_mask: 0,
                handle: Some((1, vec![0xe8, 0x03, 0, 0, 0x12, 0x34, 0x56, 0x78])),
            })
        );
        assert_eq!(kernel_dev(0xfe0_0001), (254, 1));
        assert_eq!(kernel_dev(0x2a), (0, 42));
        // No handle (a filesystem that cannot encode one); a handle of the wrong length.
        let bare = "inotify wd:2 ino:10 sdev:2a mask:100 ignored_mask:0";
        assert_eq!(parse_mark(bare).map(|m| m.handle), Some(None));
        let short = "inotify wd:2 ino:10 sdev:2a mask:100 ignored_mask:0 fhandle-bytes:8 \
                     fhandle-type:1 f_handle:e803";
        assert_eq!(parse_mark(short), None);
    }

    #[test]
    fn finds_mount_points_by_device() {
        let mountinfo = "22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n\
                         30 22 0:42 / /tmp/with\\040space rw - tmpfs tmpfs rw\n\
                         31 22 254:1 /srv /mnt/srv rw - ext4 /dev/vda1 rw\n";
        assert_eq!(mount_points(mountinfo, 254, 1), vec!["/", "/mnt/srv"]);
        assert_eq!(mount_points(mountinfo, 0, 42), vec!["/tmp/with space"]);
        assert!(mount_points(mountinfo, 0, 43).is_empty());
    }
}
