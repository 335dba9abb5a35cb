//! Regular files and directories opened through a path; a file whose name is gone (unlinked)
//! has its content saved in unlinked-INODE.img.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result};

use super::{FileIds, OneFd};
use crate::image::proto::RegularFile;

pub(super) fn dump(one: &OneFd, ids: &mut FileIds) -> Result<RegularFile> {
    let OneFd {
        pid,
        fd,
        link,
        meta,
        ..
    } = *one;
    let unlinked = link.ends_with(" (deleted)") && meta.nlink() == 0;
    if unlinked {
        if meta.is_dir() {
            crate::refuse!("pid {pid} fd {fd}: removed directory {link} is not supported");
        }
        if ids.saved.insert(meta.ino()) {
            let mut source = File::open(one.proc_path)
                .with_context(|| format!("pid {pid} fd {fd}: reading {link}"))?;
            let mut out = crate::image::create_private(
                &one.images
                    .path()
                    .join(format!("unlinked-{}.img", meta.ino())),
            )?;
            std::io::copy(&mut source, &mut out)?;
        }
    }
    Ok(RegularFile {
        path: link.trim_end_matches(" (deleted)").to_owned(),
        flags: one.flags,
        pos: one.info.pos,
        size: meta.size(),
        mode: meta.mode(),
        unlinked,
        inode: meta.ino(),
    })
}
