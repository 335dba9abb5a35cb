//! The /proc/self/maps comparison of the multi-process and multi-threaded scenarios.
//!
//! The single-process scenarios compare the maps text exactly. With fork in the picture the
//! kernel's merging of adjacent VMAs depends on their anon_vma history (a mapping made after
//! a fork does not merge with one inherited across it), which a restore cannot always
//! reproduce; so here adjacent entries that the kernel could have merged (same permissions,
//! file, and contiguous file offsets) are merged before comparing. And shared memory
//! (`/dev/zero (deleted)`, `/SYSV...`) lives in a new shmem file after a restore, whose
//! device and inode numbers cannot be chosen: those two fields are not compared for it
//! (the path still is). No allocation.

use crate::sys::Shown;
use crate::{Check, fail};
use std::fmt;

/// One maps entry (or several adjacent ones merged).
#[derive(Clone, Copy)]
struct Entry<'a> {
    start: u64,
    end: u64,
    perms: &'a [u8],
    offset: u64,
    dev: &'a [u8],
    inode: &'a [u8],
    path: &'a [u8],
}

fn hex(f: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(f).ok()?;
    u64::from_str_radix(s, 16).ok()
}

impl<'a> Entry<'a> {
    fn parse(line: &'a [u8]) -> Option<Entry<'a>> {
        let mut rest = line;
        let mut next = || {
            while rest.first() == Some(&b' ') {
                rest = &rest[1..];
            }
            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            let (f, r) = rest.split_at(end);
            rest = r;
            f
        };
        let range = next();
        let perms = next();
        let offset = hex(next())?;
        let dev = next();
        let inode = next();
        let dash = range.iter().position(|&b| b == b'-')?;
        let (start, end) = (hex(&range[..dash])?, hex(&range[dash + 1..])?);
        let path = rest.trim_ascii();
        Some(Entry {
            start,
            end,
            perms,
            offset,
            dev,
            inode,
            path,
        })
    }

    fn is_shm(&self) -> bool {
        self.path == b"/dev/zero (deleted)" || self.path.starts_with(b"/SYSV")
    }

    fn same_object(&self, o: &Entry<'_>) -> bool {
        self.perms == o.perms
            && self.path == o.path
            && (self.is_shm() || (self.dev == o.dev && self.inode == o.inode))
    }

    /// Whether `next` continues this entry (what the kernel may or may not have merged).
    fn continued_by(&self, next: &Entry<'_>) -> bool {
        self.end == next.start
            && self.same_object(next)
            && (self.inode == b"0" || self.offset + (self.end - self.start) == next.offset)
    }

    fn equals(&self, o: &Entry<'_>) -> bool {
        self.start == o.start && self.end == o.end && self.offset == o.offset && self.same_object(o)
    }
}

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {:08x} {} {} {}",
            self.start,
            self.end,
            Shown(self.perms),
            self.offset,
            Shown(self.dev),
            Shown(self.inode),
            Shown(self.path)
        )
    }
}

/// The entries of a maps text with mergeable neighbours merged; a line that does not parse
/// ends the iteration with Err(line).
struct Merged<'a> {
    lines: std::slice::Split<'a, u8, fn(&u8) -> bool>,
    pending: Option<Entry<'a>>,
}

fn is_newline(b: &u8) -> bool {
    *b == b'\n'
}

impl<'a> Merged<'a> {
    fn new(text: &'a [u8]) -> Merged<'a> {
        Merged {
            lines: text.split(is_newline as fn(&u8) -> bool),
            pending: None,
        }
    }

    fn next_line(&mut self) -> Option<Result<Entry<'a>, &'a [u8]>> {
        loop {
            let line = self.lines.next()?;
            if line.is_empty() {
                continue;
            }
            return Some(Entry::parse(line).ok_or(line));
        }
    }
}

impl<'a> Iterator for Merged<'a> {
    type Item = Result<Entry<'a>, &'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut cur = match self.pending.take() {
            Some(e) => e,
            None => match self.next_line()? {
                Ok(e) => e,
                Err(l) => return Some(Err(l)),
            },
        };
        loop {
            match self.next_line() {
                None => return Some(Ok(cur)),
                Some(Err(l)) => return Some(Err(l)),
                Some(Ok(n)) if cur.continued_by(&n) => cur.end = n.end,
                Some(Ok(n)) => {
                    self.pending = Some(n);
                    return Some(Ok(cur));
                }
            }
        }
    }
}

/// Compares two /proc/self/maps snapshots modulo VMA merging and shmem inode numbers.
pub fn compare_merged(before: &[u8], after: &[u8], chk: &mut Check) {
    if before == after {
        return;
    }
    let mut a = Merged::new(before);
    let mut b = Merged::new(after);
    let mut n = 1;
    loop {
        match (a.next(), b.next()) {
            (None, None) => return,
            (Some(Ok(x)), Some(Ok(y))) if x.equals(&y) => n += 1,
            (Some(Err(l)), _) | (_, Some(Err(l))) => {
                fail!(chk, "/proc/self/maps: cannot parse `{}`", Shown(l));
                return;
            }
            (x, y) => {
                let show = |e: Option<Result<Entry<'_>, &[u8]>>, m: &mut crate::sys::Msg| {
                    let _ = match e {
                        Some(Ok(e)) => fmt::Write::write_fmt(m, format_args!("{e}")),
                        _ => fmt::Write::write_str(m, "<none>"),
                    };
                };
                let (mut mx, mut my) = (crate::sys::Msg::new(), crate::sys::Msg::new());
                show(x, &mut mx);
                show(y, &mut my);
                fail!(
                    chk,
                    "/proc/self/maps (adjacent entries merged) differs at entry {n}: before \
                     `{}`, after `{}`",
                    Shown(mx.as_bytes()),
                    Shown(my.as_bytes())
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(before: &str, after: &str) -> u32 {
        let mut chk = Check::new();
        compare_merged(before.as_bytes(), after.as_bytes(), &mut chk);
        chk.failures
    }

    const FILE: &str = "55d0e0a00000-55d0e0a02000 r--p 00000000 fd:01 1234 /usr/bin/x\n\
                        55d0e0a02000-55d0e0a05000 r-xp 00002000 fd:01 1234 /usr/bin/x\n";

    #[test]
    fn merged_anonymous_neighbours_are_equal() {
        let split = format!(
            "{FILE}7f0000000000-7f0000010000 rw-p 00000000 00:00 0 \n\
             7f0000010000-7f0000800000 rw-p 00000000 00:00 0 \n"
        );
        let merged = format!("{FILE}7f0000000000-7f0000800000 rw-p 00000000 00:00 0 \n");
        assert_eq!(failures(&split, &merged), 0);
        assert_eq!(failures(&merged, &split), 0);
    }

    #[test]
    fn different_extent_or_perms_differ() {
        let a = format!("{FILE}7f0000000000-7f0000010000 rw-p 00000000 00:00 0 \n");
        let b = format!("{FILE}7f0000000000-7f0000020000 rw-p 00000000 00:00 0 \n");
        let c = format!("{FILE}7f0000000000-7f0000010000 r--p 00000000 00:00 0 \n");
        assert_eq!(failures(&a, &b), 1);
        assert_eq!(failures(&a, &c), 1);
        assert_eq!(failures(&a, FILE), 1);
    }

    #[test]
    fn file_pieces_merge_only_with_contiguous_offsets() {
        let whole = "1000-5000 r--p 00000000 fd:01 7 /f\n";
        let pieces = "1000-2000 r--p 00000000 fd:01 7 /f\n2000-5000 r--p 00001000 fd:01 7 /f\n";
        let gap = "1000-2000 r--p 00000000 fd:01 7 /f\n2000-5000 r--p 00005000 fd:01 7 /f\n";
        assert_eq!(failures(whole, pieces), 0);
        assert_eq!(failures(whole, gap), 1);
    }

    #[test]
    fn shared_memory_inode_is_not_compared() {
        let a = "1000-2000 rw-s 00000000 00:01 4242 /dev/zero (deleted)\n";
        let b = "1000-2000 rw-s 00000000 00:01 9999 /dev/zero (deleted)\n";
        let memfd = "1000-2000 rw-s 00000000 00:01 9999 /memfd:x (deleted)\n";
        let file = "1000-2000 rw-s 00000000 00:01 9999 /tmp/f\n";
        let file2 = "1000-2000 rw-s 00000000 00:01 4242 /tmp/f\n";
        assert_eq!(failures(a, b), 0);
        assert_eq!(failures(a, memfd), 1);
        assert_eq!(failures(file, file2), 1);
    }
}
