//! The character devices that are the same on every machine: /dev/null, /dev/zero,
//! /dev/random, /dev/urandom.

use std::os::unix::fs::MetadataExt;

use anyhow::Result;

use super::OneFd;
use crate::image::proto::CharDevice;

/// Character devices that are the same on every machine: (major, minor).
pub const PORTABLE_CHAR_DEVICES: [(u32, u32, &str); 4] = [
    (1, 3, "/dev/null"),
    (1, 5, "/dev/zero"),
    (1, 8, "/dev/random"),
    (1, 9, "/dev/urandom"),
];

/// The device, or None when it is not one of [`PORTABLE_CHAR_DEVICES`].
pub(super) fn dump(one: &OneFd) -> Result<Option<CharDevice>> {
    let (major, minor) = (libc::major(one.meta.rdev()), libc::minor(one.meta.rdev()));
    let Some(&(_, _, path)) = PORTABLE_CHAR_DEVICES
        .iter()
        .find(|(ma, mi, _)| *ma == major && *mi == minor)
    else {
        return Ok(None);
    };
    Ok(Some(CharDevice {
        path: path.to_owned(),
        flags: one.flags,
        rdev_major: major,
        rdev_minor: minor,
        pos: one.info.pos,
    }))
}
