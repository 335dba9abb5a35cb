//! Open file descriptors: regular files, directories and the common character devices, plus
//! cwd and root. Any other kind fails the dump with the pid, fd and kind named.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::{Context, Result, bail};

use crate::image::proto::{CharDevice, Fd, Fds, RegularFile, fd};
use crate::sys::pidfd;

/// Character devices that are the same on every machine: (major, minor).
pub const PORTABLE_CHAR_DEVICES: [(u32, u32, &str); 4] = [
    (1, 3, "/dev/null"),
    (1, 5, "/dev/zero"),
    (1, 8, "/dev/random"),
    (1, 9, "/dev/urandom"),
];

struct FdInfo {
    pos: u64,
    flags: u32,
}

fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .with_context(|| format!("pid {pid} fd {fd}: cannot read fdinfo"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("pid {pid} fd {fd}: no {name} in fdinfo"))
    };
    Ok(FdInfo {
        pos: field("pos:")?.parse()?,
        flags: u32::from_str_radix(field("flags:")?, 8)?,
    })
}

pub fn collect(pid: i32) -> Result<Fds> {
    let mut numbers: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("pid {pid}: cannot list fds"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut fds = Vec::with_capacity(numbers.len());
    let mut seen: Vec<(i32, (u64, u64))> = Vec::new();
    for fd in numbers {
        let proc_path = format!("/proc/{pid}/fd/{fd}");
        let link = fs::read_link(&proc_path)
            .with_context(|| format!("pid {pid} fd {fd}: cannot read link"))?
            .to_string_lossy()
            .into_owned();
        let info = read_fdinfo(pid, fd)?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let meta = fs::metadata(&proc_path)
            .with_context(|| format!("pid {pid} fd {fd}: cannot stat {link}"))?;
        let file_type = meta.file_type();
        let file = if (file_type.is_file() || file_type.is_dir()) && link.starts_with('/') {
            if link.ends_with(" (deleted)") {
                bail!("pid {pid} fd {fd}: unlinked file {link} is not supported yet");
            }
            fd::File::Regular(RegularFile {
                path: link,
                flags,
                pos: info.pos,
                size: meta.size(),
                mode: meta.mode(),
            })
        } else if file_type.is_char_device() {
            let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            let Some(&(_, _, path)) = PORTABLE_CHAR_DEVICES
                .iter()
                .find(|(ma, mi, _)| *ma == major && *mi == minor)
            else {
                bail!("pid {pid} fd {fd}: unsupported character device {link} ({major}:{minor})");
            };
            fd::File::Chardev(CharDevice {
                path: path.to_owned(),
                flags,
                rdev_major: major,
                rdev_minor: minor,
                pos: info.pos,
            })
        } else {
            bail!("pid {pid} fd {fd}: unsupported file kind {link}");
        };
        // An earlier fd on the same file may be the very same open file description.
        let key = (meta.dev(), meta.ino());
        let mut dup_of = None;
        for &(earlier, earlier_key) in &seen {
            if earlier_key == key && pidfd::same_open_file(pid, earlier, pid, fd)? {
                dup_of = Some(earlier);
                break;
            }
        }
        seen.push((fd, key));
        fds.push(Fd {
            fd,
            cloexec,
            file: Some(file),
            dup_of,
        });
    }
    let link = |name: &str| -> Result<String> {
        Ok(fs::read_link(format!("/proc/{pid}/{name}"))
            .with_context(|| format!("pid {pid}: cannot read {name}"))?
            .to_string_lossy()
            .into_owned())
    };
    Ok(Fds {
        fds,
        cwd: link("cwd")?,
        root: link("root")?,
    })
}
