//! The address space: VMAs from /proc/PID/smaps, mm_struct fields from /proc/PID/stat, auxv and
//! the exe link.

use std::fs;

use anyhow::{Context, Result, bail};

use crate::image::proto::{Mm, Vma, VmaKind};

/// /proc/PID/stat fields after the comm, indexed from field 3 (state).
pub struct Stat {
    fields: Vec<String>,
}

impl Stat {
    pub fn read(pid: i32) -> Result<Stat> {
        Stat::parse(&format!("/proc/{pid}/stat"), &format!("pid {pid}"))
    }

    /// /proc/PID/task/TID/stat: the per-thread values (nice, policy...).
    pub fn read_task(pid: i32, tid: i32) -> Result<Stat> {
        Stat::parse(
            &format!("/proc/{pid}/task/{tid}/stat"),
            &format!("tid {tid}"),
        )
    }

    /// The fields after the comm (which may hold spaces and parentheses: cut at the last ')').
    fn parse(path: &str, what: &str) -> Result<Stat> {
        let text = fs::read_to_string(path).with_context(|| format!("{what} does not exist"))?;
        let after_comm = text
            .rfind(')')
            .map(|i| &text[i + 1..])
            .with_context(|| format!("{what}: unreadable {path}"))?;
        Ok(Stat {
            fields: after_comm.split_whitespace().map(str::to_owned).collect(),
        })
    }

    /// Field number `n` as man proc(5) counts them (1 = pid, 3 = state...).
    pub fn field(&self, n: usize) -> u64 {
        self.fields
            .get(n - 3)
            .and_then(|f| f.parse::<i64>().ok())
            .unwrap_or(0) as u64
    }

    pub fn state(&self) -> char {
        self.fields
            .first()
            .and_then(|f| f.chars().next())
            .unwrap_or('?')
    }
}

/// One line of /proc/PID/maps (or an smaps header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub dev: u64,
    pub inode: u64,
    pub path: String,
}

pub fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut rest = line;
    let mut next = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (word, tail) = trimmed.split_at(end);
        rest = tail;
        word
    };
    let range = next();
    let perms = next().to_owned();
    let offset = u64::from_str_radix(next(), 16).ok()?;
    let dev = next();
    let inode = next().parse().ok()?;
    let path = rest.trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let dev = libc::makedev(
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    if perms.len() != 4 {
        return None;
    }
    Some(MapsLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

pub fn read_maps(pid: i32) -> Result<Vec<MapsLine>> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("pid {pid}: cannot read maps"))?;
    text.lines()
        .map(|line| {
            parse_maps_line(line).with_context(|| format!("pid {pid}: bad maps line {line:?}"))
        })
        .collect()
}

/// VMAs with their VmFlags, from /proc/PID/smaps.
pub fn read_smaps(pid: i32) -> Result<Vec<(MapsLine, Vec<String>)>> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("pid {pid}: cannot read smaps"))?;
    let mut vmas: Vec<(MapsLine, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = vmas.last_mut() {
                last.1 = flags.split_whitespace().map(str::to_owned).collect();
            }
        } else if !line
            .split_whitespace()
            .next()
            .is_some_and(|word| word.ends_with(':'))
            && let Some(header) = parse_maps_line(line)
        {
            vmas.push((header, Vec::new()));
        }
    }
    Ok(vmas)
}

fn prot_of(perms: &str) -> u32 {
    let b = perms.as_bytes();
    let mut prot = 0;
    if b[0] == b'r' {
        prot |= libc::PROT_READ;
    }
    if b[1] == b'w' {
        prot |= libc::PROT_WRITE;
    }
    if b[2] == b'x' {
        prot |= libc::PROT_EXEC;
    }
    prot as u32
}

fn classify(pid: i32, line: &MapsLine) -> Result<VmaKind> {
    let shared = line.perms.as_bytes()[3] == b's';
    if let Some(key) = sysv_shm_key(&line.path) {
        let key = match key {
            0 => "IPC_PRIVATE".to_owned(),
            key => format!("{key:#010x}"),
        };
        crate::refuse!(
            "pid {pid}: SysV shared memory segment key {key} shmid {} attached at {:#x}: not supported yet",
            line.inode,
            line.start
        );
    }
    let kind = match line.path.as_str() {
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => VmaKind::Vsyscall,
        "[heap]" => VmaKind::Heap,
        "[stack]" => VmaKind::Stack,
        "" if shared => VmaKind::AnonShared,
        "" => VmaKind::AnonPrivate,
        p if p.starts_with("[anon:") => VmaKind::AnonPrivate,
        "/dev/zero (deleted)" if shared => VmaKind::AnonShared,
        p if p.starts_with("/memfd:") && p.ends_with(" (deleted)") => {
            if shared {
                VmaKind::MemfdShared
            } else {
                VmaKind::MemfdPrivate
            }
        }
        p if p.starts_with('[') => {
            crate::refuse!(
                "pid {pid}: unsupported special mapping {p} at {:#x}",
                line.start
            )
        }
        p if p.ends_with(" (deleted)") => crate::refuse!(
            "pid {pid}: mapping {:#x} of a deleted file {p} is not supported yet",
            line.start
        ),
        _ if shared => VmaKind::FileShared,
        _ => VmaKind::FilePrivate,
    };
    Ok(kind)
}

/// The key of a SysV shared memory attachment, from its maps path "/SYSV%08x (deleted)" (its
/// inode number is the shmid).
fn sysv_shm_key(path: &str) -> Option<u32> {
    let hex = path.strip_prefix("/SYSV")?.strip_suffix(" (deleted)")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Translates smaps VmFlags into the mmap flags restore needs.
fn map_flags(kind: VmaKind, vm_flags: &[String]) -> u32 {
    let mut flags = match kind {
        VmaKind::AnonShared | VmaKind::FileShared | VmaKind::MemfdShared => libc::MAP_SHARED,
        _ => libc::MAP_PRIVATE,
    };
    if matches!(
        kind,
        VmaKind::AnonPrivate | VmaKind::AnonShared | VmaKind::Heap | VmaKind::Stack
    ) {
        flags |= libc::MAP_ANONYMOUS;
    }
    for flag in vm_flags {
        match flag.as_str() {
            "gd" => flags |= libc::MAP_GROWSDOWN,
            "nr" => flags |= libc::MAP_NORESERVE,
            _ => {}
        }
    }
    flags as u32
}

pub fn collect(pid: i32, stat: &Stat) -> Result<Mm> {
    let mut vmas = Vec::new();
    for (line, vm_flags) in read_smaps(pid)? {
        let kind = classify(pid, &line)?;
        let mut vma = Vma {
            start: line.start,
            end: line.end,
            prot: prot_of(&line.perms),
            flags: map_flags(kind, &vm_flags),
            pgoff: line.offset,
            kind: kind as i32,
            path: line.path.clone(),
            dev: line.dev,
            inode: line.inode,
            vm_flags,
            has_pages: false,
            file_size: 0,
            file_mtime_ns: 0,
        };
        if matches!(kind, VmaKind::MemfdShared | VmaKind::MemfdPrivate) {
            // The memfd's size; its content is saved with the fds (files::save_memfd).
            let mapped = format!("/proc/{pid}/map_files/{:x}-{:x}", line.start, line.end);
            vma.file_size = fs::metadata(&mapped)
                .with_context(|| format!("pid {pid}: memfd mapping {}", line.path))?
                .len();
        }
        if matches!(kind, VmaKind::FilePrivate | VmaKind::FileShared) {
            let meta = fs::metadata(&line.path)
                .with_context(|| format!("pid {pid}: mapped file {}", line.path))?;
            use std::os::unix::fs::MetadataExt;
            vma.file_size = meta.size();
            vma.file_mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        }
        vmas.push(vma);
    }
    let auxv_bytes =
        fs::read(format!("/proc/{pid}/auxv")).with_context(|| format!("pid {pid}: auxv"))?;
    let auxv = auxv_bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("pid {pid}: exe link"))?;
    let exe_path = exe.to_string_lossy().into_owned();
    if exe_path.ends_with(" (deleted)") {
        crate::refuse!("pid {pid}: its executable {exe_path} was deleted: not supported yet");
    }
    Ok(Mm {
        start_code: stat.field(26),
        end_code: stat.field(27),
        start_stack: stat.field(28),
        start_data: stat.field(45),
        end_data: stat.field(46),
        start_brk: stat.field(47),
        brk: 0, // read in the task's context (brk(0)) by the parasite
        arg_start: stat.field(48),
        arg_end: stat.field(49),
        env_start: stat.field(50),
        env_end: stat.field(51),
        auxv,
        exe_path,
        vmas,
        thp_disabled: false,
        mlockall_flags: 0,
    })
}

/// VmLck of /proc/PID/status: the process' locked memory, in kB.
pub fn locked_kb(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("pid {pid}: cannot read status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}

/// The lock flags the process gives new mappings (mlockall MCL_FUTURE, MCL_ONFAULT): the
/// kernel keeps them in mm->def_flags, which no interface shows, so they are read off a
/// mapping made since: the parasite's region at `probe`. `locked_before_kb` is VmLck from
/// before that mapping; when it did not grow, the mapping is not locked and smaps is not read.
pub fn future_lock_flags(pid: i32, probe: u64, locked_before_kb: u64) -> Result<u32> {
    if locked_kb(pid)? == locked_before_kb {
        return Ok(0);
    }
    let vmas = read_smaps(pid)?;
    let Some((_, flags)) = vmas.iter().find(|(l, _)| l.start <= probe && probe < l.end) else {
        bail!("pid {pid}: the parasite's mapping at {probe:#x} is not in smaps");
    };
    let has = |name: &str| flags.iter().any(|f| f == name);
    Ok(match (has("lo"), has("lf")) {
        (false, _) => 0,
        (true, false) => libc::MCL_FUTURE as u32,
        (true, true) => (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let line =
            parse_maps_line("7f0000001000-7f0000003000 r-xp 00002000 fd:01 1234   /usr/lib/a b.so")
                .unwrap();
        assert_eq!(line.start, 0x7f0000001000);
        assert_eq!(line.end, 0x7f0000003000);
        assert_eq!(line.offset, 0x2000);
        assert_eq!(line.dev, libc::makedev(0xfd, 0x01));
        assert_eq!(line.inode, 1234);
        assert_eq!(line.path, "/usr/lib/a b.so");
        let anon = parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.path, "");
    }

    #[test]
    fn reads_own_smaps() {
        let vmas = read_smaps(std::process::id() as i32).unwrap();
        assert!(
            vmas.iter()
                .any(|(l, f)| l.path == "[stack]" && f.contains(&"gd".into()))
        );
    }
}
