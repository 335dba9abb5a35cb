//! `rcr show`: every image of a directory decoded, as text or JSON.

use std::path::Path;

use anyhow::Result;

pub fn show(_dir: &Path, _json: bool) -> Result<()> {
    anyhow::bail!("rcr show is not written yet")
}
