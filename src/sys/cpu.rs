//! CPUID and XGETBV: the CPU features the dumped register state depends on.

use std::arch::asm;
use std::arch::x86_64::{__cpuid_count, CpuidResult};

pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    // SAFETY: CPUID exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    unsafe {
        __cpuid_count(leaf, subleaf)
    }
}

/// XCR0, the XSAVE features the kernel enabled, or 0 when the OS does not use XSAVE.
pub fn xcr0() -> u64 {
    const OSXSAVE: u32 = 1 << 27;
    if cpuid(1, 0).ecx & OSXSAVE == 0 {
        return 0;
    }
    let (low, high): (u32, u32);
    // SAFETY: OSXSAVE is set, so XGETBV with ECX=0 is allowed in user mode.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") low, out("edx") high, options(nomem, nostack));
    }
    (u64::from(high) << 32) | u64::from(low)
}

pub fn vendor() -> String {
    let leaf = cpuid(0, 0);
    let mut bytes = Vec::with_capacity(12);
    for reg in [leaf.ebx, leaf.edx, leaf.ecx] {
        bytes.extend_from_slice(&reg.to_le_bytes());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
