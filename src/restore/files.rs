//! Open files: opened by rcr before the task exists (so that a missing file is an error before
//! anything is created), then placed at their numbers by the new task itself.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, bail};
use nix::unistd::{Whence, lseek};

use crate::image::proto::{Fds, fd};

/// One fd to place in the child: `src` (held by rcr, inherited) goes to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct Move {
    pub src: i32,
    pub dst: i32,
    pub cloexec: bool,
}

/// Opens a dumped file description again, with its flags and offset.
fn reopen(path: &str, flags: u32, pos: u64, what: &str) -> Result<OwnedFd> {
    let creation =
        (libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC) as u32;
    let accmode = flags & libc::O_ACCMODE as u32;
    let file = OpenOptions::new()
        .read(accmode == libc::O_RDONLY as u32 || accmode == libc::O_RDWR as u32)
        .write(accmode == libc::O_WRONLY as u32 || accmode == libc::O_RDWR as u32)
        .custom_flags((flags & !creation & !(libc::O_ACCMODE as u32)) as i32)
        .open(path)
        .with_context(|| format!("{what}: cannot open {path}"))?;
    let fd: OwnedFd = file.into();
    if pos != 0 {
        lseek(fd.as_fd(), pos as i64, Whence::SeekSet).with_context(|| format!("{what}: seek"))?;
    }
    Ok(fd)
}

/// Moves an fd rcr holds above `floor`, so that placing the task's fds cannot clobber it.
pub fn hold_above(fd: OwnedFd, floor: i32) -> Result<OwnedFd> {
    Ok(crate::sys::fd::dup_above(&fd, floor)?)
}

/// Opens every file of `fds`; returns the held descriptors and where each goes.
pub fn open_all(pid: u32, fds: &Fds, floor: i32) -> Result<(Vec<OwnedFd>, Vec<Move>)> {
    let mut held = Vec::new();
    let mut moves = Vec::new();
    for entry in &fds.fds {
        if let Some(original) = entry.dup_of {
            // One open file description, several numbers: place the same one again.
            let Some(source) = moves.iter().find(|m: &&Move| m.dst == original).copied() else {
                bail!(
                    "pid {pid} fd {}: duplicate of unknown fd {original}",
                    entry.fd
                );
            };
            moves.push(Move {
                src: source.src,
                dst: entry.fd,
                cloexec: entry.cloexec,
            });
            continue;
        }
        let what = format!("pid {pid} fd {}", entry.fd);
        let opened = match &entry.file {
            Some(fd::File::Regular(f)) => reopen(&f.path, f.flags, f.pos, &what)?,
            Some(fd::File::Chardev(c)) => reopen(&c.path, c.flags, c.pos, &what)?,
            None => bail!("{what}: empty fd entry"),
        };
        let opened = hold_above(opened, floor)?;
        moves.push(Move {
            src: opened.as_raw_fd(),
            dst: entry.fd,
            cloexec: entry.cloexec,
        });
        held.push(opened);
    }
    Ok((held, moves))
}
