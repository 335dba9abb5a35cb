//! Pipes and FIFOs: each created once by rcr with its size and unread data; every end of
//! the tree gets its description from it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::{OpenedFiles, hold_above, reopen};
use crate::image::proto::{Fds, Pipe, fd};

/// The status flags an end of a pipe takes back after it is opened.
fn pipe_status_flags(flags: u32) -> OFlag {
    OFlag::from_bits_truncate(flags as i32) & (OFlag::O_NONBLOCK | OFlag::O_DIRECT | OFlag::O_ASYNC)
}

impl OpenedFiles {
    /// Creates every pipe of the tree with its size and unread data.
    pub fn create_pipes(&mut self, all: &[&Fds]) -> Result<()> {
        for entry in all.iter().flat_map(|fds| &fds.fds) {
            let Some(fd::File::Pipe(pipe)) = &entry.file else {
                continue;
            };
            if !pipe.has_data {
                continue;
            }
            if !pipe.fifo_path.is_empty() {
                self.create_fifo(pipe)?;
                continue;
            }
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            if pipe.pipe_size > 0 {
                fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(pipe.pipe_size as i32))
                    .with_context(|| format!("pipe:[{}]: size {}", pipe.inode, pipe.pipe_size))?;
            }
            if !pipe.data.is_empty() {
                let mut writer = std::fs::File::from(write.try_clone()?);
                writer
                    .write_all(&pipe.data)
                    .with_context(|| format!("pipe:[{}]: refilling it", pipe.inode))?;
            }
            let read = hold_above(read, self.floor)?;
            let write = hold_above(write, self.floor)?;
            self.pipes.insert(pipe.inode, (Some(read), Some(write)));
        }
        Ok(())
    }

    /// A FIFO: rcr keeps it open read-write (so it exists, and opening either end cannot
    /// block), refills it, and opens each end's description through its path.
    fn create_fifo(&mut self, pipe: &Pipe) -> Result<()> {
        let what = || format!("FIFO {}", pipe.fifo_path);
        let keeper: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pipe.fifo_path)
            .with_context(what)?
            .into();
        if pipe.pipe_size > 0 {
            fcntl(
                keeper.as_fd(),
                FcntlArg::F_SETPIPE_SZ(pipe.pipe_size as i32),
            )
            .with_context(what)?;
        }
        if !pipe.data.is_empty() {
            std::fs::File::from(keeper.try_clone()?)
                .write_all(&pipe.data)
                .with_context(what)?;
        }
        let keeper = hold_above(keeper, self.floor)?;
        self.fifos.insert(pipe.inode, keeper);
        Ok(())
    }

    /// The description of one end of a pipe or FIFO.
    pub(super) fn open_pipe(&mut self, p: &Pipe, what: &str) -> Result<OwnedFd> {
        let end = if !p.fifo_path.is_empty() {
            if !self.fifos.contains_key(&p.inode) {
                self.create_fifo(p)?;
            }
            // Non-blocking to open (rcr's keeper is both a reader and a writer), then the
            // dumped flags.
            reopen(&p.fifo_path, p.flags | libc::O_NONBLOCK as u32, 0, what)?
        } else {
            let Some((read, write)) = self.pipes.get_mut(&p.inode) else {
                bail!("{what}: pipe:[{}] has no saved state", p.inode);
            };
            // The first description of each end takes rcr's own; a second description of
            // the same end (opened again through /proc) is not supported.
            let end = if p.write_end { write } else { read };
            match end.take() {
                Some(end) => end,
                None => bail!(
                    "{what}: a second description of one end of pipe:[{}] is not supported",
                    p.inode
                ),
            }
        };
        fcntl(end.as_fd(), FcntlArg::F_SETFL(pipe_status_flags(p.flags)))?;
        Ok(end)
    }
}
