//! memfd: name, size, seals, and its content in memfd-INODE.img (once per inode; a memfd
//! mapped MAP_SHARED is saved through the same function from the mappings).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, fcntl};

use super::{FileIds, OneFd};
use crate::image::ImageDir;
use crate::image::proto::MemFd;

/// The memfd an fd is on, or None when its link does not name one.
pub(super) fn dump(one: &OneFd, ids: &mut FileIds) -> Result<Option<MemFd>> {
    let Some(name) = memfd_name(one.link) else {
        return Ok(None);
    };
    let inode = one.meta.ino();
    let (size, seals) = save_memfd(one.proc_path, inode, one.images, ids)?;
    Ok(Some(MemFd {
        inode,
        name: name.to_owned(),
        flags: one.flags,
        pos: one.info.pos,
        size,
        seals,
    }))
}

/// A memfd's name from its link ("/memfd:NAME (deleted)").
fn memfd_name(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")?.strip_suffix(" (deleted)")
}

/// Saves a memfd's content to memfd-INODE.img once; returns (size, seals).
pub fn save_memfd(
    path: &str,
    inode: u64,
    images: &ImageDir,
    ids: &mut FileIds,
) -> Result<(u64, u32)> {
    let file = File::open(path).with_context(|| format!("{path}: cannot open the memfd"))?;
    let size = file.metadata()?.len();
    let seals = fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).unwrap_or(0) as u32;
    if ids.saved.insert(inode) {
        let mut out = crate::image::create_private(&images.memfd_path(inode))?;
        std::io::copy(&mut std::io::Read::take(&file, size), &mut out)?;
    }
    Ok((size, seals))
}
