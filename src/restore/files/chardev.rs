//! The portable character devices, opened again through their path.

use std::os::fd::OwnedFd;

use anyhow::Result;

use super::reopen;
use crate::image::proto::CharDevice;

pub(super) fn open(c: &CharDevice, what: &str) -> Result<OwnedFd> {
    reopen(&c.path, c.flags, c.pos, what)
}
