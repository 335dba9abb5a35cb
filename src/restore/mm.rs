//! Rebuilding the address space inside the new task: unmap what it inherited from rcr, move
//! the vDSO to its dumped place, map every VMA with its protections and flags, and set the mm
//! fields (PR_SET_MM_MAP).

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use super::steps::Steps;
use crate::dump::mm::MapsLine;
use crate::image::proto::{Mm, Vma, VmaKind};

const PAGE: u64 = 4096;
const LOWEST_PLACE: u64 = 0x1000_0000;
const HIGHEST_PLACE: u64 = 0x7fff_0000_0000;

fn is_special(kind: VmaKind) -> bool {
    matches!(
        kind,
        VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
    )
}

fn special_name(path: &str) -> bool {
    matches!(path, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]")
}

/// A place for `size` bytes that is free both in the task's current layout and in the one it
/// is going to get, so the parasite survives the switch.
pub fn find_free_place(target: &[Vma], current: &[MapsLine], size: u64) -> Result<u64> {
    let mut busy: Vec<(u64, u64)> = target
        .iter()
        .map(|v| (v.start, v.end))
        .chain(current.iter().map(|l| (l.start, l.end)))
        .collect();
    busy.sort_unstable();
    let guard = 16 * PAGE;
    let mut candidate = LOWEST_PLACE;
    for (start, end) in busy {
        if start >= candidate + size + guard {
            break;
        }
        candidate = candidate.max(end + guard);
    }
    if candidate + size > HIGHEST_PLACE {
        bail!("no free address range of {size} bytes for the restorer");
    }
    Ok(candidate)
}

/// The size of the temporary area used while moving the vDSO VMAs.
pub fn specials_size(target: &[Vma]) -> u64 {
    target
        .iter()
        .filter(|v| is_special(v.kind()) && v.kind() != VmaKind::Vsyscall)
        .map(|v| v.end - v.start)
        .sum()
}

/// Checks that this kernel's vDSO VMAs have the sizes the dumped ones had.
pub fn check_specials(pid: u32, target: &[Vma], current: &[MapsLine]) -> Result<()> {
    for vma in target
        .iter()
        .filter(|v| is_special(v.kind()) && v.kind() != VmaKind::Vsyscall)
    {
        match current.iter().find(|l| l.path == vma.path) {
            Some(line) if line.end - line.start == vma.end - vma.start => {}
            Some(line) => bail!(
                "pid {pid}: {} is {} bytes here and was {} bytes at dump: this kernel's vDSO differs",
                vma.path,
                line.end - line.start,
                vma.end - vma.start
            ),
            None => bail!("pid {pid}: this kernel has no {} mapping", vma.path),
        }
    }
    Ok(())
}

/// Unmaps everything the task inherited from rcr except the parasite and the vDSO VMAs.
pub fn unmap_inherited(steps: &mut Steps, current: &[MapsLine], keep: (u64, u64)) -> Result<()> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for line in current.iter().filter(|l| !special_name(&l.path)) {
        if line.start >= keep.0 && line.end <= keep.1 {
            continue;
        }
        match ranges.last_mut() {
            Some(last) if last.1 == line.start => last.1 = line.end,
            _ => ranges.push((line.start, line.end)),
        }
    }
    for (start, end) in ranges {
        steps.room(1, 0)?;
        steps.add(
            format!("munmap {start:#x}-{end:#x}"),
            libc::SYS_munmap,
            &[start, end - start],
        );
    }
    Ok(())
}

/// Moves [vvar], [vvar_vclock] and [vdso] to their dumped addresses, through a temporary area
/// so that a move never lands on another special VMA that has not moved yet.
pub fn move_specials(
    steps: &mut Steps,
    target: &[Vma],
    current: &[MapsLine],
    temp: u64,
) -> Result<()> {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let mut moves = Vec::new();
    let mut temp_at = temp;
    for line in current
        .iter()
        .filter(|l| special_name(&l.path) && l.path != "[vsyscall]")
    {
        let size = line.end - line.start;
        match target.iter().find(|v| v.path == line.path) {
            Some(vma) if vma.start == line.start => {}
            Some(vma) => {
                steps.room(1, 0)?;
                steps.add(
                    format!("mremap {} to a temporary place", line.path),
                    libc::SYS_mremap,
                    &[line.start, size, size, flags, temp_at],
                );
                moves.push((temp_at, size, vma.start, line.path.clone()));
                temp_at += size;
            }
            None => {
                steps.room(1, 0)?;
                steps.add(
                    format!("munmap {}", line.path),
                    libc::SYS_munmap,
                    &[line.start, size],
                );
            }
        }
    }
    for (from, size, to, name) in moves {
        steps.room(1, 0)?;
        steps.add(
            format!("mremap {name} to {to:#x}"),
            libc::SYS_mremap,
            &[from, size, size, flags, to],
        );
    }
    Ok(())
}

const MADVICE_OF_FLAG: [(&str, i32); 5] = [
    ("dd", libc::MADV_DONTDUMP),
    ("dc", libc::MADV_DONTFORK),
    ("hg", libc::MADV_HUGEPAGE),
    ("nh", libc::MADV_NOHUGEPAGE),
    ("wf", libc::MADV_WIPEONFORK),
];

/// Maps every dumped VMA at its address; those that get contents stay writable until
/// [`seal_protections`]. `file_fds` gives the task-side fd of each mapped file.
pub fn map_vmas(
    steps: &mut Steps,
    mm: &Mm,
    file_fds: &BTreeMap<String, i32>,
    shared_anon_fds: &BTreeMap<u64, i32>,
    memfd_fds: &BTreeMap<u64, i32>,
) -> Result<()> {
    for vma in mm.vmas.iter().filter(|v| !is_special(v.kind())) {
        let len = vma.end - vma.start;
        let mut prot = vma.prot as u64;
        if vma.has_pages {
            prot |= libc::PROT_WRITE as u64;
        }
        let mut flags = vma.flags as u64 | libc::MAP_FIXED as u64;
        let fd = match vma.kind() {
            VmaKind::FilePrivate | VmaKind::FileShared => file_fds[&vma.path] as u64,
            VmaKind::MemfdShared | VmaKind::MemfdPrivate => memfd_fds[&vma.inode] as u64,
            VmaKind::AnonShared => {
                // The tree's one object for this region, mapped like a file.
                flags &= !(libc::MAP_ANONYMOUS as u64);
                shared_anon_fds[&vma.inode] as u64
            }
            _ => u64::MAX,
        };
        let pgoff = if fd == u64::MAX { 0 } else { vma.pgoff };
        steps.room(1 + MADVICE_OF_FLAG.len(), 0)?;
        steps.add_expect(
            format!("mmap {:#x}-{:#x} {}", vma.start, vma.end, vma.path),
            libc::SYS_mmap,
            &[vma.start, len, prot, flags, fd, pgoff],
            vma.start as i64,
        );
        for (flag, advice) in MADVICE_OF_FLAG {
            if vma.vm_flags.iter().any(|f| f == flag) {
                steps.add(
                    format!("madvise {flag} {:#x}", vma.start),
                    libc::SYS_madvise,
                    &[vma.start, len, advice as u64],
                );
            }
        }
    }
    Ok(())
}

/// Drops the write permission that filling the pages needed.
pub fn seal_protections(steps: &mut Steps, mm: &Mm) -> Result<()> {
    for vma in mm
        .vmas
        .iter()
        .filter(|v| v.has_pages && v.prot & libc::PROT_WRITE as u32 == 0)
    {
        steps.room(1, 0)?;
        steps.add(
            format!("mprotect {:#x}-{:#x}", vma.start, vma.end),
            libc::SYS_mprotect,
            &[vma.start, vma.end - vma.start, vma.prot.into()],
        );
    }
    Ok(())
}

/// Locks what was locked: each VMA with VmFlags `lo` (on fault with `lf`), after its pages
/// are in place, then the mm's default for new mappings (mlockall MCL_FUTURE, without
/// MCL_CURRENT so the other VMAs stay as they are). The task still has rcr's privileges here
/// (credentials come last), so RLIMIT_MEMLOCK does not refuse what the original had.
pub fn lock(steps: &mut Steps, mm: &Mm) -> Result<()> {
    const MLOCK_ONFAULT: u64 = 1;
    for vma in mm.vmas.iter().filter(|v| !is_special(v.kind())) {
        let flag = |name: &str| vma.vm_flags.iter().any(|f| f == name);
        if !flag("lo") {
            continue;
        }
        steps.room(1, 0)?;
        let label = format!("mlock2 {:#x}-{:#x}", vma.start, vma.end);
        let args = [
            vma.start,
            vma.end - vma.start,
            if flag("lf") { MLOCK_ONFAULT } else { 0 },
        ];
        if vma.prot == 0 {
            // The VMA is marked locked, then faulting its pages in fails with ENOMEM (no
            // access): mlockall(MCL_CURRENT), which locked it in the original, ignores that.
            steps.add_may_fail(label, libc::SYS_mlock2, &args);
        } else {
            steps.add(label, libc::SYS_mlock2, &args);
        }
    }
    if mm.mlockall_flags != 0 {
        steps.room(1, 0)?;
        steps.add(
            format!("mlockall({:#x})", mm.mlockall_flags),
            libc::SYS_mlockall,
            &[mm.mlockall_flags.into()],
        );
    }
    Ok(())
}

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

/// PR_SET_MM_MAP: code, data, brk, stack, args, env, auxv and the exe link in one call.
pub fn set_mm_fields(steps: &mut Steps, mm: &Mm, exe_fd: i32) -> Result<()> {
    let auxv: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
    steps.room(1, auxv.len() + 128)?;
    let auxv_addr = steps.put(&auxv);
    let mut map: Vec<u8> = [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_addr,
    ]
    .iter()
    .flat_map(|w| w.to_le_bytes())
    .collect();
    map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
    map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    let map_len = map.len() as u64;
    let map_addr = steps.put(&map);
    steps.add(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        &[PR_SET_MM, PR_SET_MM_MAP, map_addr, map_len, 0],
    );
    Ok(())
}
