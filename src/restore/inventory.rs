//! Checks that the images were made by a compatible rcr on a CPU whose register state this
//! one can take.

use anyhow::{Result, bail};

use crate::dump::inventory::host_cpu;
use crate::image::proto::Inventory;

pub fn check(inventory: &Inventory) -> Result<()> {
    let Some(dumped) = &inventory.cpu else {
        bail!("inventory.img: no CPU description");
    };
    let here = host_cpu();
    let missing = dumped.xcr0 & !here.xcr0;
    if missing != 0 {
        bail!(
            "the dump host's CPU has XSAVE features {missing:#x} that this CPU lacks (xcr0 {:#x} vs {:#x})",
            dumped.xcr0,
            here.xcr0
        );
    }
    for component in &dumped.xstate_layout {
        if let Some(local) = here
            .xstate_layout
            .iter()
            .find(|c| c.index == component.index)
            && (local.offset, local.size) != (component.offset, component.size)
        {
            bail!(
                "XSAVE component {} is laid out differently on this CPU",
                component.index
            );
        }
    }
    Ok(())
}
