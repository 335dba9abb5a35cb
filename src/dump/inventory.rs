//! The inventory: format version, rcr version, and the dump host's kernel and CPU.

use anyhow::Result;

use crate::image::proto::{CpuInfo, Inventory, XstateComponent};
use crate::image::{FORMAT_MAJOR, FORMAT_MINOR};
use crate::sys::cpu;

pub fn host_cpu() -> CpuInfo {
    let xcr0 = cpu::xcr0();
    let xstate_layout = (2..64)
        .filter(|i| xcr0 & (1 << i) != 0)
        .map(|i| {
            let leaf = cpu::cpuid(0xd, i);
            XstateComponent {
                index: i,
                offset: leaf.ebx,
                size: leaf.eax,
            }
        })
        .collect();
    CpuInfo {
        vendor: cpu::vendor(),
        xcr0,
        // The XSAVE size for the features this kernel enabled: the regset size it reports.
        xstate_size: cpu::cpuid(0xd, 0).ebx,
        xstate_layout,
    }
}

pub fn collect(root_pid: i32) -> Result<Inventory> {
    let uname = nix::sys::utsname::uname()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(Inventory {
        format_major: FORMAT_MAJOR.into(),
        format_minor: FORMAT_MINOR.into(),
        rcr_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: uname.release().to_string_lossy().into_owned(),
        root_pid: root_pid as u32,
        dump_time_unix_ns: now.as_nanos() as u64,
        cpu: Some(host_cpu()),
    })
}
