//! Pipes and FIFOs: each created once by rcr with its size and unread data; every end of
//! the tree gets its description from it. A pipe whose other end was outside the tree
//! (external) becomes what the caller says: a pipe or file it hands in (`--inherit-fd
//! fd[N]:pipe:[INODE]`, CRIU's form) or /dev/null (`--external-pipe pipe:[INODE]=null`).

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use anyhow::{Context, Result, bail};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::{OpenedFiles, hold_above, reopen};
use crate::image::proto::{Fds, Pipe, fd};

/// The status flags an end of a pipe takes back after it is opened.
fn pipe_status_flags(flags: u32) -> OFlag {
    OFlag::from_bits_truncate(flags as i32) & (OFlag::O_NONBLOCK | OFlag::O_DIRECT | OFlag::O_ASYNC)
}

/// What an end of the pipe `pipe:[INODE]` of the images becomes when its other end was
/// outside the tree: `--external-pipe pipe:[INODE]=CHOICE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalPipeChoice {
    /// /dev/null: writes vanish; a read end reads the data saved at the dump, then EOF.
    Null,
}

/// The pipe inode of a `pipe:[INODE]` resource.
fn pipe_resource(text: &str) -> Option<u64> {
    text.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// `--inherit-fd fd[N]:pipe:[INODE]` (CRIU's form): rcr restore is given fd N open, and the
/// tree's ends of pipe INODE become it.
pub fn parse_inherit_fd(spec: &str) -> Result<(i32, u64)> {
    let usage = || format!("--inherit-fd {spec}: expected fd[N]:pipe:[INODE]");
    let (fd, resource) = spec.split_once(':').with_context(usage)?;
    let fd: i32 = fd
        .strip_prefix("fd[")
        .and_then(|f| f.strip_suffix(']'))
        .and_then(|f| f.parse().ok())
        .filter(|&f| f >= 0)
        .with_context(usage)?;
    let Some(inode) = pipe_resource(resource) else {
        bail!("--inherit-fd {spec}: only pipes (pipe:[INODE]) can be inherited");
    };
    Ok((fd, inode))
}

/// `--external-pipe pipe:[INODE]=null`.
pub fn parse_external_pipe(spec: &str) -> Result<(u64, ExternalPipeChoice)> {
    let usage = || format!("--external-pipe {spec}: expected pipe:[INODE]=null");
    let (resource, choice) = spec.split_once('=').with_context(usage)?;
    let inode = pipe_resource(resource).with_context(usage)?;
    match choice {
        "null" => Ok((inode, ExternalPipeChoice::Null)),
        _ => Err(anyhow::anyhow!(usage())),
    }
}

/// What the tree's ends of one external pipe become.
pub enum ExternalPipe {
    /// An fd rcr restore was given (--inherit-fd), and its number there.
    Inherited(i32, OwnedFd),
    /// /dev/null; for a read end, a pipe holding the saved data whose write end is closed
    /// (made in create_pipes).
    Null(Option<OwnedFd>),
}

/// Checks, before anything is created, that the caller said what every external pipe of the
/// images becomes, and that every option names one; takes the inherited fds (`inherit`: fd
/// number, pipe inode; checked open by the caller of rcr). One error names every pipe left
/// without a choice.
pub fn resolve_external_pipes(
    all: &[(u32, &Fds)],
    inherit: &[(i32, u64)],
    choices: &[(u64, ExternalPipeChoice)],
) -> Result<HashMap<u64, ExternalPipe>> {
    // Every external pipe, with the tree's fds on it.
    let mut external: BTreeMap<u64, Vec<(u32, i32, bool)>> = BTreeMap::new();
    for (pid, fds) in all {
        for entry in &fds.fds {
            if let Some(fd::File::Pipe(p)) = &entry.file
                && p.external
            {
                external
                    .entry(p.inode)
                    .or_default()
                    .push((*pid, entry.fd, p.write_end));
            }
        }
    }
    for &(number, inode) in inherit {
        if !external.contains_key(&inode) {
            bail!(
                "--inherit-fd fd[{number}]:pipe:[{inode}]: no pipe of the images with that inode had an end outside the tree"
            );
        }
        if choices.iter().any(|&(i, _)| i == inode)
            || inherit.iter().filter(|&&(_, i)| i == inode).count() > 1
        {
            bail!("pipe:[{inode}] is given more than one --inherit-fd or --external-pipe");
        }
    }
    for &(inode, _) in choices {
        if !external.contains_key(&inode) {
            bail!(
                "--external-pipe pipe:[{inode}]: no pipe of the images with that inode had an end outside the tree"
            );
        }
        if choices.iter().filter(|&&(i, _)| i == inode).count() > 1 {
            bail!("pipe:[{inode}] is given more than one --external-pipe");
        }
    }
    let missing: Vec<String> = external
        .iter()
        .filter(|(inode, _)| {
            !inherit.iter().any(|(_, i)| i == *inode) && !choices.iter().any(|(i, _)| i == *inode)
        })
        .map(|(inode, fds)| {
            let places: Vec<String> = fds
                .iter()
                .map(|(pid, fd, _)| format!("pid {pid} fd {fd}"))
                .collect();
            let (end, other) = if fds[0].2 {
                ("write", "read")
            } else {
                ("read", "write")
            };
            format!(
                "{}: pipe:[{inode}] ({end} end) had its {other} end outside the dumped tree",
                places.join(", ")
            )
        })
        .collect();
    if !missing.is_empty() {
        crate::refuse!(
            "{}; say what each becomes: --inherit-fd fd[N]:pipe:[INODE] (an fd given to rcr restore) or --external-pipe pipe:[INODE]=null",
            missing.join("; ")
        );
    }
    let mut resolved = HashMap::new();
    for &(number, inode) in inherit {
        let fd = crate::sys::fd::take_inherited(number)
            .with_context(|| format!("--inherit-fd fd[{number}]: fd {number} is not open"))?;
        resolved.insert(inode, ExternalPipe::Inherited(number, fd));
    }
    for &(inode, ExternalPipeChoice::Null) in choices {
        resolved.insert(inode, ExternalPipe::Null(None));
    }
    for (inode, how) in &resolved {
        let what = match how {
            ExternalPipe::Inherited(number, _) => format!("the fd {number} rcr was given"),
            ExternalPipe::Null(_) => "/dev/null".to_owned(),
        };
        crate::log::info(&format!("pipe:[{inode}] (an end outside the tree): {what}"));
    }
    Ok(resolved)
}

/// Whether `fd` is a pipe or FIFO, and its inode.
fn fifo_inode(fd: &OwnedFd) -> Result<Option<u64>> {
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(meta.file_type().is_fifo().then_some(meta.ino()))
}

impl OpenedFiles {
    /// What the external pipes of the tree become (resolve_external_pipes).
    pub fn set_external_pipes(&mut self, external: HashMap<u64, ExternalPipe>) {
        self.external_pipes = external;
    }

    /// Puts the data saved at the dump for the tree's read end of an external pipe where the
    /// reader will find it: into the pipe the caller handed in (unless it is the dumped pipe
    /// itself, which still holds it), or a pipe of its own for /dev/null.
    fn prepare_external_pipe(&mut self, pipe: &Pipe) -> Result<()> {
        let what = || format!("pipe:[{}]", pipe.inode);
        match self.external_pipes.get_mut(&pipe.inode) {
            None => bail!("{}: its end outside the tree was given nothing", what()),
            Some(ExternalPipe::Null(reader)) if !pipe.write_end => {
                let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                if pipe.pipe_size > 0 {
                    let _ = fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(pipe.pipe_size as i32));
                }
                std::fs::File::from(write)
                    .write_all(&pipe.data)
                    .with_context(|| format!("{}: refilling it", what()))?;
                *reader = Some(hold_above(read, self.floor)?);
            }
            Some(ExternalPipe::Inherited(number, fd))
                if !pipe.write_end && !pipe.data.is_empty() =>
            {
                let number = *number;
                match fifo_inode(fd)? {
                    // The very pipe of the dump: its unread data is still in it.
                    Some(inode) if inode == pipe.inode => {}
                    Some(_) => {
                        // A reader meanwhile: the caller may have handed in a write end only
                        // (a pipe without readers takes no data); the data stays in the pipe.
                        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                        let _reader = reopen(&proc_path, libc::O_NONBLOCK as u32, 0, &what())?;
                        let writer = reopen(
                            &proc_path,
                            (libc::O_WRONLY | libc::O_NONBLOCK) as u32,
                            0,
                            &what(),
                        )?;
                        std::fs::File::from(writer)
                            .write_all(&pipe.data)
                            .with_context(|| {
                                format!(
                                    "{}: putting its {} unread bytes into the pipe of fd {number}",
                                    what(),
                                    pipe.data.len()
                                )
                            })?;
                    }
                    None => bail!(
                        "{}: {} bytes were unread in it, which fd {number} (not a pipe) cannot hold",
                        what(),
                        pipe.data.len()
                    ),
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The description of one end of an external pipe.
    fn open_external_pipe(&mut self, p: &Pipe, what: &str) -> Result<OwnedFd> {
        // Non-blocking to open (a named FIFO without a reader would block a writer), then
        // the dumped status flags.
        let flags = p.flags | libc::O_NONBLOCK as u32;
        let end = match self.external_pipes.get(&p.inode) {
            Some(ExternalPipe::Inherited(number, fd)) => {
                if fifo_inode(fd)?.is_none() {
                    // Not a pipe (a log file, say): that description itself, as it is.
                    let given = fcntl(fd.as_fd(), FcntlArg::F_GETFL)? & libc::O_ACCMODE;
                    let wanted = (p.flags & libc::O_ACCMODE as u32) as i32;
                    if given != libc::O_RDWR && given != wanted {
                        bail!(
                            "{what}: fd {number} given for pipe:[{}] is not open for {}",
                            p.inode,
                            if p.write_end { "writing" } else { "reading" }
                        );
                    }
                    return Ok(fd.try_clone()?);
                }
                // A description of its own on the pipe handed in, with the dumped flags.
                reopen(&format!("/proc/self/fd/{}", fd.as_raw_fd()), flags, 0, what)?
            }
            Some(ExternalPipe::Null(Some(reader))) => reopen(
                &format!("/proc/self/fd/{}", reader.as_raw_fd()),
                flags,
                0,
                what,
            )?,
            Some(ExternalPipe::Null(None)) => reopen("/dev/null", flags, 0, what)?,
            None => bail!("{what}: pipe:[{}] had an end outside the tree", p.inode),
        };
        fcntl(end.as_fd(), FcntlArg::F_SETFL(pipe_status_flags(p.flags)))?;
        Ok(end)
    }

    /// Creates every pipe of the tree with its size and unread data.
    pub fn create_pipes(&mut self, all: &[&Fds]) -> Result<()> {
        for entry in all.iter().flat_map(|fds| &fds.fds) {
            let Some(fd::File::Pipe(pipe)) = &entry.file else {
                continue;
            };
            if !pipe.has_data {
                continue;
            }
            if pipe.external {
                self.prepare_external_pipe(pipe)?;
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
        if p.external {
            return self.open_external_pipe(p, what);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherit_fd_takes_criu_form_only() {
        assert_eq!(parse_inherit_fd("fd[3]:pipe:[12345]").unwrap(), (3, 12345));
        assert_eq!(parse_inherit_fd("fd[0]:pipe:[7]").unwrap(), (0, 7));
        for bad in [
            "3:pipe:[1]",
            "fd[-1]:pipe:[1]",
            "fd[x]:pipe:[1]",
            "fd[3]:pipe:[]",
            "fd[3]pipe:[1]",
        ] {
            assert!(parse_inherit_fd(bad).is_err(), "{bad} accepted");
        }
        let other = parse_inherit_fd("fd[3]:tty:[136:0]")
            .unwrap_err()
            .to_string();
        assert!(other.contains("only pipes"), "{other}");
    }

    #[test]
    fn external_pipe_choice() {
        assert_eq!(
            parse_external_pipe("pipe:[99]=null").unwrap(),
            (99, ExternalPipeChoice::Null)
        );
        for bad in ["pipe:[99]", "pipe:[99]=zero", "99=null", "pipe:[x]=null"] {
            assert!(parse_external_pipe(bad).is_err(), "{bad} accepted");
        }
    }
}
