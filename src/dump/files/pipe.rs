//! Pipes and FIFOs: each end, and the pipe's unread data and size (saved with the first end
//! of the tree that names the pipe).

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};

use super::{FileIds, OneFd};
use crate::image::proto::Pipe;

pub(super) fn dump(one: &OneFd, ids: &mut FileIds) -> Result<Pipe> {
    let OneFd {
        pid,
        fd,
        link,
        meta,
        ..
    } = *one;
    let fifo_path = if link.starts_with('/') {
        if link.ends_with(" (deleted)") {
            crate::refuse!("pid {pid} fd {fd}: removed FIFO {link} is not supported");
        }
        link.to_owned()
    } else {
        String::new()
    };
    let inode = meta.ino();
    let write_end = one.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
    let first = ids.saved.insert(inode);
    let (pipe_size, data) = if first {
        pipe_data(pid, fd)?
    } else {
        (0, Vec::new())
    };
    Ok(Pipe {
        inode,
        write_end,
        flags: one.flags,
        pipe_size,
        has_data: first,
        data,
        fifo_path,
    })
}

/// A pipe's unread data, read without consuming it: a new read end opened through /proc is
/// tee()d into a pipe of rcr's own.
fn pipe_data(pid: i32, fd: i32) -> Result<(u32, Vec<u8>)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("pid {pid} fd {fd}: pipe");
    let reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .with_context(what)?;
    let size = fcntl(reader.as_fd(), FcntlArg::F_GETPIPE_SZ).with_context(what)? as u32;
    let (copy_read, copy_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let _ = fcntl(copy_write.as_fd(), FcntlArg::F_SETPIPE_SZ(size as i32));
    let copied = match nix::fcntl::tee(
        reader.as_fd(),
        copy_write.as_fd(),
        size as usize,
        SpliceFFlags::SPLICE_F_NONBLOCK,
    ) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(err) => return Err(err).with_context(what),
    };
    drop(copy_write);
    let mut data = Vec::with_capacity(copied);
    File::from(copy_read).read_to_end(&mut data).or_else(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Ok(0)
        } else {
            Err(e)
        }
    })?;
    Ok((size, data))
}
