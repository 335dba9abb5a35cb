//! Regular files and directories, opened again through their path; unlinked ones recreated
//! with their content and no name; a changed size refused.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result};

use super::{OpenedFiles, hold_above, reopen};
use crate::image::proto::{Fds, RegularFile, fd};

impl OpenedFiles {
    /// A file with the content an unlinked file had and no name, in the directory it was in
    /// (or, if that is gone, the image directory). One per dumped inode.
    fn unlinked(&mut self, f: &RegularFile) -> Result<&OwnedFd> {
        if !self.unlinked.contains_key(&f.inode) {
            let content = self.images.join(format!("unlinked-{}.img", f.inode));
            let mut source = std::fs::File::open(&content)
                .with_context(|| format!("cannot open {}", content.display()))?;
            let dir = std::path::Path::new(&f.path)
                .parent()
                .filter(|d| d.is_dir())
                .unwrap_or(&self.images)
                .to_owned();
            // Under its old name, removed at once, the fd shows what it showed at the dump
            // ("NAME (deleted)"); if that name is taken now, an O_TMPFILE in the same place.
            let mut file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(f.mode & 0o7777)
                .open(&f.path)
            {
                Ok(file) => {
                    std::fs::remove_file(&f.path)?;
                    file
                }
                Err(_) => OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_TMPFILE)
                    .mode(f.mode & 0o7777)
                    .open(&dir)
                    .with_context(|| {
                        format!("cannot create an unnamed file in {}", dir.display())
                    })?,
            };
            // The mode exactly, whatever rcr's umask took away.
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                f.mode & 0o7777,
            ))?;
            std::io::copy(&mut source, &mut file)?;
            let held = hold_above(file.into(), self.floor)?;
            self.unlinked.insert(f.inode, held);
        }
        Ok(&self.unlinked[&f.inode])
    }

    /// A description of the file, with its flags and offset.
    pub(super) fn open_regular(&mut self, f: &RegularFile, what: &str) -> Result<OwnedFd> {
        if !f.unlinked {
            return reopen(&f.path, f.flags, f.pos, what);
        }
        let file = self
            .unlinked(f)
            .with_context(|| format!("{what}: {} (deleted)", f.path))?;
        Self::reopen_fd(file, f.flags, f.pos, what)
    }
}

/// Refuses files that changed size since the dump: the process would find other data at the
/// offsets it remembers. `--ignore-file-size` restores anyway (a log that grew, say).
pub fn check_sizes(pid: u32, fds: &Fds) -> Result<()> {
    for entry in &fds.fds {
        let Some(fd::File::Regular(f)) = &entry.file else {
            continue;
        };
        if f.unlinked || f.mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        let now = std::fs::metadata(&f.path)
            .with_context(|| format!("pid {pid} fd {}: {}", entry.fd, f.path))?
            .len();
        if now != f.size {
            crate::refuse!(
                "pid {pid} fd {}: {} is {now} bytes, {} at the dump (--ignore-file-size restores anyway)",
                entry.fd,
                f.path,
                f.size
            );
        }
    }
    Ok(())
}
