//! The image directory: typed readers and writers of every image file.
//!
//! A metadata image is `header | payload | crc32`:
//! - header (20 bytes): magic `RCRI`, kind (u32 LE), format major (u16 LE), minor (u16 LE),
//!   payload length (u64 LE);
//! - payload: one length-delimited protobuf message;
//! - trailer: CRC32 (IEEE) of header and payload, u32 LE.
//!
//! Page data lives in raw, page-aligned `pages-PID.img` files described by `pagemap-PID.img`.

pub mod pages;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost::Message;

/// Generated protobuf types (proto/*.proto).
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/rcr.rs"));
}

pub const MAGIC: &[u8; 4] = b"RCRI";
pub const FORMAT_MAJOR: u16 = 1;
/// 1.1: fds-PID.img Fd.dup_of. 1.2: core-PID.img signals, timers, creds, seccomp, limits,
/// cgroups, dumpable, child_subreaper.
/// 1.3: fds pipes, eventfd, memfd (memfd-INODE.img), signalfd, timerfd, epoll, unlinked
/// files (unlinked-INODE.img), FIFOs, file locks, unix socketpairs, file_id, fd owner/
/// signal; mm memfd mappings.
/// 1.4: unix sockets, inotify, ttys. 1.5: mm mlockall_flags and page checksums,
/// unix socket renamed_to, pipe external.
pub const FORMAT_MINOR: u16 = 5;
const HEADER_LEN: usize = 20;
const TRAILER_LEN: usize = 4;

/// Every kind of metadata image, with its on-disk kind number and file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Inventory,
    PsTree,
    Core,
    Mm,
    PageMap,
    Fds,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Inventory,
        Kind::PsTree,
        Kind::Core,
        Kind::Mm,
        Kind::PageMap,
        Kind::Fds,
    ];

    pub fn code(self) -> u32 {
        match self {
            Kind::Inventory => 1,
            Kind::PsTree => 2,
            Kind::Core => 3,
            Kind::Mm => 4,
            Kind::PageMap => 5,
            Kind::Fds => 6,
        }
    }

    /// File name stem: `inventory.img`, `core-PID.img`...
    pub fn stem(self) -> &'static str {
        match self {
            Kind::Inventory => "inventory",
            Kind::PsTree => "pstree",
            Kind::Core => "core",
            Kind::Mm => "mm",
            Kind::PageMap => "pagemap",
            Kind::Fds => "fds",
        }
    }

    pub fn per_process(self) -> bool {
        !matches!(self, Kind::Inventory | Kind::PsTree)
    }

    pub fn file_name(self, pid: Option<u32>) -> String {
        match (self.per_process(), pid) {
            (true, Some(pid)) => format!("{}-{pid}.img", self.stem()),
            _ => format!("{}.img", self.stem()),
        }
    }

    /// The kind and pid of an image file name, if it names one.
    pub fn parse_file_name(name: &str) -> Option<(Kind, Option<u32>)> {
        let stem = name.strip_suffix(".img")?;
        Kind::ALL.into_iter().find_map(|kind| {
            if kind.per_process() {
                let pid = stem.strip_prefix(kind.stem())?.strip_prefix('-')?;
                Some((kind, Some(pid.parse().ok()?)))
            } else {
                (stem == kind.stem()).then_some((kind, None))
            }
        })
    }
}

/// Whether `name` is a file rcr writes into an image directory: a metadata image, or raw
/// content (`pages-PID.img`, `memfd-INODE.img`, `unlinked-INODE.img`).
pub fn is_image_file_name(name: &str) -> bool {
    Kind::parse_file_name(name).is_some()
        || ["pages-", "memfd-", "unlinked-"].iter().any(|prefix| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(".img"))
                .is_some_and(|n| n.parse::<u64>().is_ok())
        })
}

/// Frames a message as a metadata image.
pub fn encode_image(kind: Kind, message: &impl Message) -> Vec<u8> {
    let payload = message.encode_length_delimited_to_vec();
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&kind.code().to_le_bytes());
    bytes.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    bytes.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Checks the framing of a metadata image and decodes its message. `what` names the file in
/// errors.
pub fn decode_image<M: Message + Default>(kind: Kind, bytes: &[u8], what: &str) -> Result<M> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        bail!("{what}: truncated image ({} bytes)", bytes.len());
    }
    if &bytes[0..4] != MAGIC {
        bail!("{what}: not an rcr image (bad magic)");
    }
    let code = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    if code != kind.code() {
        bail!(
            "{what}: image kind {code}, expected {} ({:?})",
            kind.code(),
            kind
        );
    }
    let major = u16::from_le_bytes(bytes[8..10].try_into().unwrap());
    let minor = u16::from_le_bytes(bytes[10..12].try_into().unwrap());
    if major != FORMAT_MAJOR {
        bail!("{what}: image format version {major}.{minor}, this rcr reads {FORMAT_MAJOR}.x");
    }
    if minor > FORMAT_MINOR {
        bail!(
            "{what}: image format version {major}.{minor} is newer than this rcr reads ({FORMAT_MAJOR}.{FORMAT_MINOR})"
        );
    }
    let payload_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
    let expected_len = (HEADER_LEN + TRAILER_LEN) as u64 + payload_len;
    if bytes.len() as u64 != expected_len {
        bail!(
            "{what}: truncated or padded image ({} bytes, header says {expected_len})",
            bytes.len()
        );
    }
    let body_end = bytes.len() - TRAILER_LEN;
    let stored_crc = u32::from_le_bytes(bytes[body_end..].try_into().unwrap());
    if crc32fast::hash(&bytes[..body_end]) != stored_crc {
        bail!("{what}: checksum mismatch (corrupted image)");
    }
    M::decode_length_delimited(&bytes[HEADER_LEN..body_end])
        .with_context(|| format!("{what}: undecodable message"))
}

/// An image directory being written or read.
pub struct ImageDir {
    path: PathBuf,
    /// The outermost directory a dump created for it (the directory itself or an ancestor):
    /// removed again by [`ImageDir::discard`].
    created: Option<PathBuf>,
}

impl ImageDir {
    /// Creates (0700) or opens the directory for a dump and checks it is writable. A
    /// directory that already holds rcr images is refused: a second dump would mix its images
    /// with the first one's.
    pub fn create(path: &Path) -> Result<ImageDir> {
        let mut created = None;
        if path.is_dir() {
            if let Some(name) = first_image_file(path)? {
                crate::refuse!(
                    "image directory {} already holds rcr images ({name}): use an empty or new directory",
                    path.display()
                );
            }
        } else if path.symlink_metadata().is_ok() {
            bail!("{} is not a directory", path.display());
        } else {
            let mut top = path;
            while let Some(parent) = top.parent() {
                if parent.as_os_str().is_empty() || parent.symlink_metadata().is_ok() {
                    break;
                }
                top = parent;
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .with_context(|| format!("cannot create image directory {}", path.display()))?;
            created = Some(top.to_owned());
        }
        let images = ImageDir {
            path: path.to_owned(),
            created,
        };
        let probe = path.join(".rcr-write-test");
        if let Err(err) = File::create(&probe) {
            images.discard();
            return Err(err)
                .with_context(|| format!("image directory {} is not writable", path.display()));
        }
        let _ = fs::remove_file(&probe);
        Ok(images)
    }

    /// After a failed dump: removes the images written so far (the directory held none before)
    /// and the directories the dump created, so that the failed dump leaves nothing behind.
    pub fn discard(&self) {
        if let Ok(entries) = fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                if entry.file_name().to_str().is_some_and(is_image_file_name) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        if let Some(top) = &self.created {
            // From the image directory up to the outermost one created; remove_dir leaves a
            // directory that holds anything else.
            for dir in self.path.ancestors() {
                if fs::remove_dir(dir).is_err() || dir == top {
                    break;
                }
            }
        }
    }

    pub fn open(path: &Path) -> Result<ImageDir> {
        if path.symlink_metadata().is_err() {
            bail!("image directory {} does not exist", path.display());
        }
        if !path.is_dir() {
            bail!("{} is not a directory", path.display());
        }
        Ok(ImageDir {
            path: path.to_owned(),
            created: None,
        })
    }

    /// Fails unless the directory holds an image set: with one line that tells an empty (or
    /// foreign) directory from an incomplete dump.
    pub fn check_inventory(&self) -> Result<()> {
        if self.file_path(Kind::Inventory, None).exists() {
            return Ok(());
        }
        match first_image_file(&self.path)? {
            None => bail!("{} holds no rcr images", self.path.display()),
            Some(_) => bail!(
                "{}: no inventory.img (an incomplete dump?)",
                self.path.display()
            ),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_path(&self, kind: Kind, pid: Option<u32>) -> PathBuf {
        self.path.join(kind.file_name(pid))
    }

    pub fn pages_path(&self, pid: u32) -> PathBuf {
        self.path.join(format!("pages-{pid}.img"))
    }

    /// Raw content of a memfd, by the inode it had.
    pub fn memfd_path(&self, inode: u64) -> PathBuf {
        self.path.join(format!("memfd-{inode}.img"))
    }

    /// Writes an image file (0600), replacing an older one.
    pub fn write<M: Message>(&self, kind: Kind, pid: Option<u32>, message: &M) -> Result<()> {
        let path = self.file_path(kind, pid);
        let mut file = create_private(&path)?;
        file.write_all(&encode_image(kind, message))
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn read<M: Message + Default>(&self, kind: Kind, pid: Option<u32>) -> Result<M> {
        let path = self.file_path(kind, pid);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        decode_image(kind, &bytes, &kind.file_name(pid))
    }
}

/// The name of a file of `dir` that rcr writes into image directories, if there is one.
fn first_image_file(dir: &Path) -> Result<Option<String>> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_image_file_name(name))
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

/// Creates a file readable by its owner only: images hold a process' whole memory.
pub fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let tree = proto::PsTree {
            processes: vec![proto::PsTreeEntry {
                pid: 42,
                ppid: 0,
                pgid: 42,
                sid: 42,
                threads: vec![42],
                ..Default::default()
            }],
        };
        encode_image(Kind::PsTree, &tree)
    }

    #[test]
    fn round_trip() {
        let tree: proto::PsTree = decode_image(Kind::PsTree, &sample(), "t").unwrap();
        assert_eq!(tree.processes[0].pid, 42);
    }

    #[test]
    fn short_file_is_refused() {
        let bytes = sample();
        let err = decode_image::<proto::PsTree>(Kind::PsTree, &bytes[..bytes.len() - 1], "t");
        assert!(err.unwrap_err().to_string().contains("truncated"));
        let err = decode_image::<proto::PsTree>(Kind::PsTree, &bytes[..10], "t");
        assert!(err.unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut bytes = sample();
        bytes[0] = b'X';
        let err = decode_image::<proto::PsTree>(Kind::PsTree, &bytes, "t").unwrap_err();
        assert!(err.to_string().contains("magic"));
    }

    #[test]
    fn flipped_byte_is_refused() {
        let mut bytes = sample();
        let middle = bytes.len() / 2 + 2;
        bytes[middle] ^= 0x10;
        let err = decode_image::<proto::PsTree>(Kind::PsTree, &bytes, "t").unwrap_err();
        assert!(err.to_string().contains("checksum"));
    }

    #[test]
    fn newer_major_version_is_refused() {
        let mut bytes = sample();
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        let err = decode_image::<proto::PsTree>(Kind::PsTree, &bytes, "t").unwrap_err();
        assert!(err.to_string().contains("version"));
    }

    #[test]
    fn newer_minor_version_is_refused_older_accepted() {
        let mut bytes = sample();
        bytes[10..12].copy_from_slice(&(FORMAT_MINOR + 1).to_le_bytes());
        let err = decode_image::<proto::PsTree>(Kind::PsTree, &bytes, "t").unwrap_err();
        assert!(err.to_string().contains("newer"));
        let mut bytes = sample();
        bytes[10..12].copy_from_slice(&0u16.to_le_bytes());
        let crc_at = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..crc_at]);
        bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_image::<proto::PsTree>(Kind::PsTree, &bytes, "t").is_ok());
    }

    #[test]
    fn wrong_kind_is_refused() {
        let err = decode_image::<proto::Mm>(Kind::Mm, &sample(), "t").unwrap_err();
        assert!(err.to_string().contains("kind"));
    }

    #[test]
    fn file_names_parse_back() {
        assert_eq!(
            Kind::parse_file_name("core-77.img"),
            Some((Kind::Core, Some(77)))
        );
        assert_eq!(
            Kind::parse_file_name("inventory.img"),
            Some((Kind::Inventory, None))
        );
        assert_eq!(Kind::parse_file_name("pages-77.img"), None);
        assert!(is_image_file_name("pages-77.img"));
        assert!(is_image_file_name("memfd-12345.img"));
        assert!(is_image_file_name("unlinked-9.img"));
        assert!(is_image_file_name("inventory.img"));
        assert!(!is_image_file_name("pages-x.img"));
        assert!(!is_image_file_name("dump.log"));
    }
}
