//! memfd: created once per dumped inode with its name, content and seals.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::memfd::MFdFlags;

use super::{OpenedFiles, hold_above};
use crate::image::proto::MemFd;

impl OpenedFiles {
    /// The memfd of `inode`, created with its name, content and seals on first use.
    pub fn memfd(&mut self, inode: u64, name: &str, size: u64, seals: u32) -> Result<&OwnedFd> {
        if !self.memfds.contains_key(&inode) {
            let cname = CString::new(name)?;
            let memfd = nix::sys::memfd::memfd_create(
                cname.as_c_str(),
                MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
            )
            .with_context(|| format!("memfd:{name}: cannot create it"))?;
            let mut file = std::fs::File::from(memfd);
            let content = self.images.join(format!("memfd-{inode}.img"));
            let mut source = std::fs::File::open(&content)
                .with_context(|| format!("cannot open {}", content.display()))?;
            std::io::copy(&mut source, &mut file)?;
            file.set_len(size)?;
            let memfd: OwnedFd = file.into();
            if seals != 0 {
                let seals = nix::fcntl::SealFlag::from_bits_truncate(seals as i32);
                fcntl(memfd.as_fd(), FcntlArg::F_ADD_SEALS(seals))
                    .with_context(|| format!("memfd:{name}: cannot seal it"))?;
            }
            let memfd = hold_above(memfd, self.floor)?;
            self.memfds.insert(inode, memfd);
        }
        Ok(&self.memfds[&inode])
    }

    /// A description of the memfd, with its flags and offset.
    pub(super) fn open_memfd(&mut self, m: &MemFd, what: &str) -> Result<OwnedFd> {
        let memfd = self.memfd(m.inode, &m.name, m.size, m.seals)?;
        Self::reopen_fd(memfd, m.flags, m.pos, what)
    }
}
