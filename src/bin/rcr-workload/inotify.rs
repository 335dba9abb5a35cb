//! inotify scenarios: `inotify`, `inotify-pending` and `inotify-unlinked`.
//!
//! Files in DIR/inotify-w/: directory `dir`, files `a`, `b`, `c`, `t1`, `t2`, `t3`, and the
//! symlink `link` -> `a`.
//!
//! - fd 90 = inotify_init1(0) (blocking, no FD_CLOEXEC). Watches added in this order: `dir`
//!   (IN_CREATE|IN_DELETE|IN_ONLYDIR) wd 1, `t1` wd 2, `t2` wd 3 (IN_MODIFY), `a`
//!   (IN_MODIFY|IN_CLOSE_WRITE) wd 4, then wds 2 and 3 removed; `b` (IN_ATTRIB) wd 5, `t3`
//!   wd 6, `c` (IN_OPEN|IN_EXCL_UNLINK) wd 7, then wd 6 removed. Live: 1, 4, 5, 7.
//! - fd 91 = inotify_init1(IN_NONBLOCK|IN_CLOEXEC): `t1` (IN_MODIFY) wd 1, `b`
//!   (IN_MODIFY|IN_ATTRIB) wd 2, wd 1 removed, `link` itself (IN_ATTRIB|IN_DONT_FOLLOW) wd 3.
//!   Live: 2, 3 (the first live wd is not 1).
//!
//! Every wd is checked at setup, and the IN_IGNORED events the removals queued are read
//! before ready. `inotify-pending` then chmods `b`, leaving an IN_ATTRIB event queued in both
//! instances at the dump: rcr does not restore queued events (it warns), so the restored
//! process must find both queues empty (only for a dump that kills: the original still has
//! them). `inotify-unlinked` (a dump that must be refused) only has fd 90 watching
//! DIR/inotify-w/gone (IN_ATTRIB), which stays open at fd 92 after its name is removed: the
//! watched inode has no path.
//!
//! After go (`inotify`, `inotify-pending`): fds 90 and 91 have the same link, F_GETFL,
//! F_GETFD and /proc/self/fdinfo text (every watch: wd, inode, device, mask, file handle) as
//! before, and empty queues; then `t1` is written (no event: its wds are gone), `dir/new`
//! created and removed, `a` written, `b` chmodded, `c` opened and `link`'s times set: fd 90
//! must read exactly (1 IN_CREATE new) (1 IN_DELETE new) (4 IN_MODIFY) (4 IN_CLOSE_WRITE)
//! (5 IN_ATTRIB) (7 IN_OPEN), fd 91 exactly (2 IN_ATTRIB) (3 IN_ATTRIB). inotify_rm_watch of
//! a removed wd fails with EINVAL; of each live wd succeeds (and an IN_IGNORED event follows
//! for each); a new watch gets the wd after the highest dumped one (8 and 4).
//! `inotify-unlinked` checks its fds and fdinfo are as before (the dump was refused).

use crate::files::{FdSnap, fionread, place, poll_in, read_once};
use crate::sys::{self, Shown, errno};
use crate::{Check, Ctx, fail};
use std::ffi::CString;

const A: i32 = 90;
const B: i32 = 91;
const GONE_FD: i32 = 92;
const PROMPT_MS: i32 = 5000;

const A_LIVE: [i32; 4] = [1, 4, 5, 7];
const A_REMOVED: [i32; 3] = [2, 3, 6];
const B_LIVE: [i32; 2] = [2, 3];
const B_REMOVED: [i32; 1] = [1];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Pending,
    Unlinked,
}

impl Mode {
    pub fn from_scenario(name: &str) -> Option<Mode> {
        Some(match name {
            "inotify" => Mode::Plain,
            "inotify-pending" => Mode::Pending,
            "inotify-unlinked" => Mode::Unlinked,
            _ => return None,
        })
    }
}

/// The paths of the scenario, prepared at setup.
struct Paths {
    dir: CString,
    new: CString,
    a: CString,
    b: CString,
    c: CString,
    t1: CString,
    link: CString,
}

pub struct Inotify {
    mode: Mode,
    paths: Paths,
    before: [FdSnap; 2],
    info_paths: [CString; 2],
    info_before: [Vec<u8>; 2],
    info_len: [usize; 2],
    info_after: Vec<u8>,
    events: Vec<u8>,
}

fn add(fd: i32, path: &CString, mask: u32, want: i32) -> Result<(), String> {
    // SAFETY: `path` is NUL-terminated.
    let wd = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) };
    if wd != want {
        return Err(format!(
            "inotify_add_watch({fd}, {path:?}, {mask:#x}) gave {wd} (errno {}), expected wd {want}",
            errno()
        ));
    }
    Ok(())
}

fn rm(fd: i32, wd: i32) -> Result<(), i32> {
    // SAFETY: inotify_rm_watch takes integers only.
    if unsafe { libc::inotify_rm_watch(fd, wd) } != 0 {
        return Err(errno());
    }
    Ok(())
}

fn make_file(path: &CString) -> Result<(), String> {
    let fd = sys::open(
        path,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
        0o644,
    )
    .map_err(|e| format!("create {path:?}: errno {e}"))?;
    sys::close(fd);
    Ok(())
}

/// Reads every queued event of `fd` into `buf` (FIONREAD first, so a blocking instance never
/// blocks); returns the bytes read.
fn read_all(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    let mut len = 0;
    while fionread(fd)? > 0 {
        if len == buf.len() {
            return Err(libc::EFBIG);
        }
        len += read_once(fd, &mut buf[len..])?;
    }
    Ok(len)
}

/// One event: (wd, mask, name without its NUL padding).
fn events(buf: &[u8]) -> impl Iterator<Item = (i32, u32, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        // struct inotify_event { int wd; u32 mask, cookie, len; char name[len]; }
        let ev = buf.get(off..off + 16)?;
        let wd = i32::from_ne_bytes([ev[0], ev[1], ev[2], ev[3]]);
        let mask = u32::from_ne_bytes([ev[4], ev[5], ev[6], ev[7]]);
        let len = u32::from_ne_bytes([ev[12], ev[13], ev[14], ev[15]]) as usize;
        let name = buf.get(off + 16..off + 16 + len).unwrap_or(&[]);
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        off += 16 + len;
        Some((wd, mask, name))
    })
}

impl Inotify {
    pub fn new(mode: Mode, ctx: &Ctx) -> Result<Inotify, String> {
        let base = ctx.path("inotify-w");
        let sub = |name: &str| {
            let mut bytes = base.as_bytes().to_vec();
            bytes.push(b'/');
            bytes.extend_from_slice(name.as_bytes());
            CString::new(bytes).expect("no NUL in the path")
        };
        let paths = Paths {
            dir: sub("dir"),
            new: sub("dir/new"),
            a: sub("a"),
            b: sub("b"),
            c: sub("c"),
            t1: sub("t1"),
            link: sub("link"),
        };
        let (t2, t3, gone) = (sub("t2"), sub("t3"), sub("gone"));
        // SAFETY: NUL-terminated paths.
        unsafe {
            if libc::mkdir(base.as_ptr(), 0o755) != 0 || libc::mkdir(paths.dir.as_ptr(), 0o755) != 0
            {
                return Err(format!("mkdir: errno {}", errno()));
            }
        }
        let init = |flags: i32, at: i32, cloexec: bool| -> Result<(), String> {
            // SAFETY: inotify_init1 has no memory effects.
            let fd = unsafe { libc::inotify_init1(flags) };
            if fd < 0 {
                return Err(format!("inotify_init1({flags:#x}): errno {}", errno()));
            }
            place(fd, at, cloexec)
        };
        let mut n = 2;
        if mode == Mode::Unlinked {
            make_file(&gone)?;
            let fd = sys::open(&gone, libc::O_RDONLY, 0)
                .map_err(|e| format!("open {gone:?}: errno {e}"))?;
            place(fd, GONE_FD, false)?;
            init(0, A, false)?;
            add(A, &gone, libc::IN_ATTRIB, 1)?;
            // SAFETY: NUL-terminated path.
            if unsafe { libc::unlink(gone.as_ptr()) } != 0 {
                return Err(format!("unlink {gone:?}: errno {}", errno()));
            }
            n = 1;
        } else {
            for f in [&paths.a, &paths.b, &paths.c, &paths.t1, &t2, &t3] {
                make_file(f)?;
            }
            // SAFETY: NUL-terminated paths.
            if unsafe { libc::symlink(c"a".as_ptr(), paths.link.as_ptr()) } != 0 {
                return Err(format!("symlink: errno {}", errno()));
            }
            init(0, A, false)?;
            add(
                A,
                &paths.dir,
                libc::IN_CREATE | libc::IN_DELETE | libc::IN_ONLYDIR,
                1,
            )?;
            add(A, &paths.t1, libc::IN_MODIFY, 2)?;
            add(A, &t2, libc::IN_MODIFY, 3)?;
            add(A, &paths.a, libc::IN_MODIFY | libc::IN_CLOSE_WRITE, 4)?;
            for wd in [2, 3] {
                rm(A, wd).map_err(|e| format!("inotify_rm_watch({A}, {wd}): errno {e}"))?;
            }
            add(A, &paths.b, libc::IN_ATTRIB, 5)?;
            add(A, &t3, libc::IN_MODIFY, 6)?;
            add(A, &paths.c, libc::IN_OPEN | libc::IN_EXCL_UNLINK, 7)?;
            rm(A, 6).map_err(|e| format!("inotify_rm_watch({A}, 6): errno {e}"))?;

            init(libc::IN_NONBLOCK | libc::IN_CLOEXEC, B, true)?;
            add(B, &paths.t1, libc::IN_MODIFY, 1)?;
            add(B, &paths.b, libc::IN_MODIFY | libc::IN_ATTRIB, 2)?;
            rm(B, 1).map_err(|e| format!("inotify_rm_watch({B}, 1): errno {e}"))?;
            add(B, &paths.link, libc::IN_ATTRIB | libc::IN_DONT_FOLLOW, 3)?;
        }
        let info_paths =
            [A, B].map(|fd| CString::new(format!("/proc/self/fdinfo/{fd}")).expect("no NUL"));
        let mut me = Inotify {
            mode,
            paths,
            before: [FdSnap::EMPTY; 2],
            info_paths,
            info_before: [vec![0u8; 8192], vec![0u8; 8192]],
            info_len: [0; 2],
            info_after: vec![0u8; 8192],
            events: vec![0u8; 64 * 1024],
        };
        // The IN_IGNORED (and, for `gone`, IN_ATTRIB) events of the setup: read away.
        for &fd in &[A, B][..n] {
            read_all(fd, &mut me.events).map_err(|e| format!("draining fd {fd}: errno {e}"))?;
        }
        if mode == Mode::Pending {
            // SAFETY: NUL-terminated path.
            if unsafe { libc::chmod(me.paths.b.as_ptr(), 0o640) } != 0 {
                return Err(format!("chmod b: errno {}", errno()));
            }
            for fd in [A, B] {
                match fionread(fd) {
                    Ok(16) => {}
                    got => return Err(format!("fd {fd}: FIONREAD {got:?} after chmod, not 16")),
                }
            }
        }
        Ok(me)
    }

    fn fds(&self) -> &[i32] {
        if self.mode == Mode::Unlinked {
            &[A]
        } else {
            &[A, B]
        }
    }

    /// Reads the events of `fd` and compares them with `want`, exactly and in order.
    fn expect_events(&mut self, fd: i32, want: &[(i32, u32, &[u8])], chk: &mut Check) {
        let _ = poll_in(fd, PROMPT_MS);
        let n = match read_all(fd, &mut self.events) {
            Ok(n) => n,
            Err(e) => {
                fail!(chk, "inotify fd {fd}: reading events: errno {e}");
                return;
            }
        };
        let mut got = events(&self.events[..n]);
        for (i, &(wd, mask, name)) in want.iter().enumerate() {
            match got.next() {
                Some(ev) if ev == (wd, mask, name) => {}
                Some((gwd, gmask, gname)) => {
                    fail!(
                        chk,
                        "inotify fd {fd}: event {i} is wd {gwd} mask {gmask:#x} `{}`, \
                         expected wd {wd} mask {mask:#x} `{}`",
                        Shown(gname),
                        Shown(name)
                    );
                    return;
                }
                None => {
                    fail!(
                        chk,
                        "inotify fd {fd}: {i} events, expected wd {wd} mask {mask:#x} `{}` next",
                        Shown(name)
                    );
                    return;
                }
            }
        }
        if let Some((wd, mask, name)) = got.next() {
            fail!(
                chk,
                "inotify fd {fd}: unexpected event wd {wd} mask {mask:#x} `{}`",
                Shown(name)
            );
        }
    }

    /// Causes one event on each watch (and none on the removed ones), in the order
    /// `verify` expects them.
    fn trigger(&self, chk: &mut Check) {
        let p = &self.paths;
        let write_to = |path: &CString, chk: &mut Check| match sys::open(
            path,
            libc::O_WRONLY | libc::O_CLOEXEC,
            0,
        ) {
            Ok(fd) => {
                if let Err(e) = sys::write_all(fd, b"x") {
                    fail!(chk, "write {path:?}: errno {e}");
                }
                sys::close(fd);
            }
            Err(e) => fail!(chk, "open {path:?}: errno {e}"),
        };
        write_to(&p.t1, chk);
        if let Err(e) = make_file(&p.new) {
            fail!(chk, "{e}");
        }
        // SAFETY: NUL-terminated path.
        if unsafe { libc::unlink(p.new.as_ptr()) } != 0 {
            fail!(chk, "unlink dir/new: errno {}", errno());
        }
        write_to(&p.a, chk);
        // SAFETY: NUL-terminated path.
        if unsafe { libc::chmod(p.b.as_ptr(), 0o600) } != 0 {
            fail!(chk, "chmod b: errno {}", errno());
        }
        match sys::open(&p.c, libc::O_RDONLY | libc::O_CLOEXEC, 0) {
            Ok(fd) => sys::close(fd),
            Err(e) => fail!(chk, "open c: errno {e}"),
        }
        // SAFETY: NUL-terminated path; null times mean now.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                p.link.as_ptr(),
                std::ptr::null(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            fail!(chk, "utimensat link: errno {}", errno());
        }
    }
}

impl crate::parts::Part for Inotify {
    fn before_ready(&mut self) {
        for i in 0..self.fds().len() {
            let fd = self.fds()[i];
            self.before[i] = FdSnap::take(fd);
            self.info_len[i] =
                sys::read_file_into(&self.info_paths[i], &mut self.info_before[i]).unwrap_or(0);
        }
    }

    fn verify(&mut self, chk: &mut Check) {
        let n = self.fds().len();
        for i in 0..n {
            self.before[i].verify("inotify", chk);
            let fd = self.fds()[i];
            let before = &self.info_before[i][..self.info_len[i]];
            crate::files::compare_fdinfo(
                fd,
                &self.info_paths[i],
                before,
                &mut self.info_after,
                chk,
            );
            // Nothing happened to the watched files since ready; queued events (the
            // `inotify-pending` ones) are not restored.
            match fionread(fd) {
                Ok(0) => {}
                got => fail!(
                    chk,
                    "inotify fd {fd}: FIONREAD {got:?} at go, expected an empty queue"
                ),
            }
        }
        if self.mode == Mode::Unlinked {
            return;
        }
        self.trigger(chk);
        self.expect_events(
            A,
            &[
                (1, libc::IN_CREATE, b"new"),
                (1, libc::IN_DELETE, b"new"),
                (4, libc::IN_MODIFY, b""),
                (4, libc::IN_CLOSE_WRITE, b""),
                (5, libc::IN_ATTRIB, b""),
                (7, libc::IN_OPEN, b""),
            ],
            chk,
        );
        self.expect_events(
            B,
            &[(2, libc::IN_ATTRIB, b""), (3, libc::IN_ATTRIB, b"")],
            chk,
        );
        for (fd, removed) in [(A, &A_REMOVED[..]), (B, &B_REMOVED[..])] {
            for &wd in removed {
                match rm(fd, wd) {
                    Err(libc::EINVAL) => {}
                    got => fail!(
                        chk,
                        "inotify_rm_watch({fd}, {wd}) of a removed wd gave {got:?}, expected \
                         EINVAL ({})",
                        libc::EINVAL
                    ),
                }
            }
        }
        for (fd, live, next) in [(A, &A_LIVE[..], 8), (B, &B_LIVE[..], 4)] {
            for &wd in live {
                if let Err(e) = rm(fd, wd) {
                    fail!(chk, "inotify_rm_watch({fd}, {wd}): errno {e}");
                }
            }
            let mut ignored = [(0, libc::IN_IGNORED, &b""[..]); 4];
            for (slot, &wd) in ignored.iter_mut().zip(live) {
                slot.0 = wd;
            }
            self.expect_events(fd, &ignored[..live.len()], chk);
            // SAFETY: NUL-terminated path.
            let wd =
                unsafe { libc::inotify_add_watch(fd, self.paths.t1.as_ptr(), libc::IN_MODIFY) };
            if wd != next {
                fail!(
                    chk,
                    "inotify fd {fd}: a new watch got wd {wd} (errno {}), expected {next}",
                    errno()
                );
            }
        }
    }
}
