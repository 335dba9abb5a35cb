//! Small wrappers around the libc calls the workload needs. Everything here is usable between
//! "ready" and the verification: no heap allocation, no new mappings (except `Mapping::*`,
//! which is only called during setup).

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A fixed-capacity text buffer: formatting into it never allocates. Text beyond the capacity
/// is dropped.
pub struct Msg {
    buf: [u8; 2048],
    len: usize,
}

impl Msg {
    pub const fn new() -> Self {
        Msg {
            buf: [0; 2048],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for Msg {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Shows bytes as text, escaping what is not printable ASCII (for FAIL messages).
pub struct Shown<'a>(pub &'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) {
                fmt::Write::write_char(f, b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid cannot fail and touches no memory.
    unsafe { libc::getpid() }
}

/// Writes all of `data` to `fd` (retrying short writes and EINTR).
pub fn write_all(fd: i32, mut data: &[u8]) -> Result<(), i32> {
    while !data.is_empty() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Writes to stdout (fd 1) directly, unbuffered.
pub fn out(data: &[u8]) {
    let _ = write_all(1, data);
}

/// Reads the whole file `path` into `buf`; returns the length, or an errno. Fails with EFBIG
/// when the buffer is too small.
pub fn read_file_into(path: &CStr, buf: &mut [u8]) -> Result<usize, i32> {
    let fd = open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0)?;
    let mut len = 0;
    let result = loop {
        if len == buf.len() {
            break Err(libc::EFBIG);
        }
        // SAFETY: reading into the unused tail of `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            break Err(e);
        }
        if n == 0 {
            break Ok(len);
        }
        len += n as usize;
    };
    close(fd);
    result
}

pub fn open(path: &CStr, flags: i32, mode: libc::mode_t) -> Result<i32, i32> {
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

pub fn close(fd: i32) {
    // SAFETY: closing an fd this program opened itself.
    unsafe { libc::close(fd) };
}

/// pread that fills `buf` completely or fails.
pub fn pread_exact(fd: i32, buf: &mut [u8], offset: i64) -> Result<(), i32> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: reading into the unused tail of `buf`.
        let n = unsafe {
            libc::pread(
                fd,
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                offset + done as i64,
            )
        };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(libc::ENODATA);
        }
        done += n as usize;
    }
    Ok(())
}

pub fn exists(path: &CStr) -> bool {
    // SAFETY: `path` is NUL-terminated; access only reads it.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
}

/// Sleeps about `ms` milliseconds (an EINTR just ends the sleep early).
pub fn sleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec; rem may be null.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// Polls for `go` every 20 ms.
pub fn wait_for(go: &CStr) {
    while !exists(go) {
        sleep_ms(20);
    }
}

/// Writes `content` to `path` with create+truncate (setup only).
pub fn write_file(path: &CStr, content: &[u8]) -> Result<(), String> {
    let fd = open(
        path,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
        0o644,
    )
    .map_err(|e| format!("open {}: errno {e}", path.to_string_lossy()))?;
    let r = write_all(fd, content);
    close(fd);
    r.map_err(|e| format!("write {}: errno {e}", path.to_string_lossy()))
}

/// xorshift64: fast deterministic pseudo-random numbers.
#[derive(Clone, Copy)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A 64-bit FNV-1a-like hash over words.
pub fn checksum(words: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    h
}

/// A memory mapping created with mmap. It is never unmapped (the workload exits instead).
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// A private anonymous mapping of `len` bytes.
    pub fn anon(len: usize, prot: i32, extra_flags: i32) -> Result<Mapping, String> {
        Self::map(
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
        )
    }

    /// A shared anonymous mapping of `len` bytes (shared with children forked later).
    pub fn shared_anon(len: usize) -> Result<Mapping, String> {
        Self::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
        )
    }

    /// A mapping of `fd` from offset 0.
    pub fn file(fd: i32, len: usize, prot: i32, flags: i32) -> Result<Mapping, String> {
        Self::map(len, prot, flags, fd)
    }

    fn map(len: usize, prot: i32, flags: i32, fd: i32) -> Result<Mapping, String> {
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED) cannot alias anything.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap {len} bytes: errno {}", errno()));
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// The contents. Only call while the mapping is readable.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is live for the life of self, and the workload only calls this
        // while it is readable; only this object hands out references into it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The contents, writable. Only call while the mapping is writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in bytes(); &mut self makes the reference unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The contents as u64 words (mmap returns page-aligned memory).
    pub fn words(&self) -> &[u64] {
        // SAFETY: page-aligned and live, see bytes(); every bit pattern is a valid u64.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u64>(), self.len / 8) }
    }

    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: see words() and bytes_mut().
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u64>(), self.len / 8) }
    }

    pub fn protect(&self, prot: i32) -> Result<(), i32> {
        // SAFETY: changes the protection of our own mapping; no reference into it is held
        // across the call by callers (bytes()/words() borrows end before).
        let r = unsafe { libc::mprotect(self.ptr.cast(), self.len, prot) };
        if r != 0 { Err(errno()) } else { Ok(()) }
    }

    pub fn advise(&self, advice: i32) -> Result<(), i32> {
        // SAFETY: advice on our own mapping; MADV_NOHUGEPAGE does not change contents.
        let r = unsafe { libc::madvise(self.ptr.cast(), self.len, advice) };
        if r != 0 { Err(errno()) } else { Ok(()) }
    }
}

/// The open fd numbers of this process, sorted (a fixed-size set: no allocation).
pub struct FdSet {
    fds: [i32; 256],
    n: usize,
}

impl FdSet {
    pub const fn new() -> FdSet {
        FdSet {
            fds: [0; 256],
            n: 0,
        }
    }

    pub fn as_slice(&self) -> &[i32] {
        &self.fds[..self.n]
    }

    /// Reads /proc/self/fd with getdents64 (opendir would malloc).
    pub fn read(&mut self) -> Result<(), i32> {
        self.n = 0;
        let dfd = open(
            c"/proc/self/fd",
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )?;
        let mut buf = [0u8; 4096];
        let result = loop {
            // SAFETY: getdents64 writes at most buf.len() bytes into buf.
            let n =
                unsafe { libc::syscall(libc::SYS_getdents64, dfd, buf.as_mut_ptr(), buf.len()) };
            if n < 0 {
                break Err(errno());
            }
            if n == 0 {
                break Ok(());
            }
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; name }
            let mut off = 0;
            while off < n as usize {
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                let name = &buf[off + 19..off + reclen];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                if let Some(fd) = parse_fd(name)
                    && fd != dfd
                    && self.n < self.fds.len()
                {
                    self.fds[self.n] = fd;
                    self.n += 1;
                }
                off += reclen;
            }
        };
        close(dfd);
        self.fds[..self.n].sort_unstable();
        result
    }
}

fn parse_fd(name: &[u8]) -> Option<i32> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    name.iter().try_fold(0i32, |v, &d| {
        v.checked_mul(10)?.checked_add((d - b'0') as i32)
    })
}

/// readlink /proc/self/fd/N into `buf`; returns the link text (empty if unreadable).
pub fn fd_link(fd: i32, buf: &mut [u8; 512]) -> &[u8] {
    let mut path = Msg::new();
    let _ = fmt::Write::write_fmt(&mut path, format_args!("/proc/self/fd/{fd}\0"));
    let Ok(path) = CStr::from_bytes_with_nul(path.as_bytes()) else {
        return &[];
    };
    // SAFETY: readlink writes at most buf.len() bytes into buf.
    let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    &buf[..n.max(0) as usize]
}

// ---------------------------------------------------------------------------------------------
// Helpers of the multi-process and multi-threaded scenarios.

pub fn gettid() -> i32 {
    // SAFETY: gettid cannot fail and touches no memory.
    unsafe { libc::gettid() }
}

/// Writes `data` to `tmp`, then renames `tmp` to `path`: readers see all of it or nothing.
pub fn write_atomic(tmp: &CStr, path: &CStr, data: &[u8]) -> Result<(), i32> {
    let fd = open(
        tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
        0o644,
    )?;
    let r = write_all(fd, data);
    close(fd);
    r?;
    // SAFETY: both paths are NUL-terminated.
    if unsafe { libc::rename(tmp.as_ptr(), path.as_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Sleeps about `ms` milliseconds in clock_nanosleep between checks for `path`.
pub fn wait_for_every(path: &CStr, ms: u64) {
    while !exists(path) {
        sleep_ms(ms);
    }
}

/// The fields of /proc/PID/stat the scenarios look at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stat {
    pub state: u8,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Field 52: the wait status of a zombie (0 while it lives).
    pub exit_code: i32,
}

/// Reads /proc/PID/stat (the path prepared by the caller) without allocating.
pub fn read_stat(path: &CStr) -> Result<Stat, i32> {
    let mut buf = [0u8; 2048];
    let n = read_file_into(path, &mut buf)?;
    let text = &buf[..n];
    // The comm field may contain anything: the fields after it start at the last ')'.
    let close = text.iter().rposition(|&b| b == b')').ok_or(libc::EINVAL)?;
    let mut fields = text[close + 1..]
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty());
    // Field 3 is the state; fields are numbered from 1 (pid) and 2 (comm).
    let state = *fields.next().and_then(|f| f.first()).ok_or(libc::EINVAL)?;
    let mut nums = [0i64; 50];
    for slot in nums.iter_mut() {
        match fields.next() {
            Some(f) => *slot = parse_i64(f).ok_or(libc::EINVAL)?,
            None => break,
        }
    }
    // nums[0] is field 4 (ppid), nums[k] is field k + 4.
    Ok(Stat {
        state,
        ppid: nums[0] as i32,
        pgrp: nums[1] as i32,
        session: nums[2] as i32,
        exit_code: nums[48] as i32,
    })
}

fn parse_i64(f: &[u8]) -> Option<i64> {
    let (neg, digits) = match f.first() {
        Some(b'-') => (true, &f[1..]),
        _ => (false, f),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Wrapping: some stat fields are u64 (rsslim), and only small ones are looked at.
    let v = digits.iter().fold(0i64, |v, &d| {
        v.wrapping_mul(10).wrapping_add((d - b'0') as i64)
    });
    Some(if neg { v.wrapping_neg() } else { v })
}

/// The first field of /proc/.../syscall: the syscall number, or -1 for "running" (or -2 if
/// unreadable or unexpected).
pub fn current_syscall(path: &CStr) -> i64 {
    let mut buf = [0u8; 512];
    let Ok(n) = read_file_into(path, &mut buf) else {
        return -2;
    };
    let first = buf[..n]
        .split(|&b| b == b' ' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    if first == b"running" {
        return -1;
    }
    parse_i64(first).unwrap_or(-2)
}

/// The numeric entries of a /proc directory (e.g. /proc/self/task), sorted, into `out`
/// without growing it: fails with ENOSPC when its capacity is too small.
pub fn read_numbers(dir: &CStr, out: &mut Vec<i32>) -> Result<(), i32> {
    out.clear();
    let dfd = open(dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
    let mut buf = [0u8; 4096];
    let result = loop {
        // SAFETY: getdents64 writes at most buf.len() bytes into buf.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dfd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            break Err(errno());
        }
        if n == 0 {
            break Ok(());
        }
        let mut off = 0;
        while off < n as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(v) = parse_fd(name) {
                if out.len() == out.capacity() {
                    close(dfd);
                    return Err(libc::ENOSPC);
                }
                out.push(v);
            }
            off += reclen;
        }
    };
    close(dfd);
    out.sort_unstable();
    result
}

/// fork(); Ok(0) in the child.
pub fn fork() -> Result<i32, i32> {
    // SAFETY: the workload forks only while it is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 { Err(errno()) } else { Ok(pid) }
}

/// Ends the process at once (no atexit handlers, no stdio flush: a forked child must not
/// flush buffers it inherited).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// waitpid(pid, WNOHANG): Ok(None) while it runs, Ok(Some(wait status)) once it ended.
pub fn try_wait(pid: i32) -> Result<Option<i32>, i32> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match r {
        0 => Ok(None),
        r if r == pid => Ok(Some(status)),
        _ => Err(errno()),
    }
}

/// Waits (polling every 10 ms) until `pid` ends or `deadline` passes.
pub fn wait_until(pid: i32, deadline: std::time::Instant) -> Result<Option<i32>, i32> {
    loop {
        if let Some(st) = try_wait(pid)? {
            return Ok(Some(st));
        }
        if std::time::Instant::now() > deadline {
            return Ok(None);
        }
        sleep_ms(10);
    }
}

/// A wait status in words: "exit 3" or "signal 9".
pub struct WaitStatus(pub i32);

impl fmt::Display for WaitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if libc::WIFEXITED(s) {
            write!(f, "exit {}", libc::WEXITSTATUS(s))
        } else if libc::WIFSIGNALED(s) {
            write!(f, "signal {}", libc::WTERMSIG(s))
        } else {
            write!(f, "wait status {s:#x}")
        }
    }
}

/// FUTEX_WAIT_PRIVATE; returns 0 or an errno.
pub fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    val: u32,
    timeout: Option<&libc::timespec>,
) -> i32 {
    let ts = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the futex word is a live AtomicU32; ts is null or a valid timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            val,
            ts,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 { errno() } else { 0 }
}

/// FUTEX_WAKE_PRIVATE for every waiter.
pub fn futex_wake_all(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: the futex word is a live AtomicU32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// The calling thread's signal mask as the kernel keeps it (64 bits).
pub fn sigmask() -> Result<u64, i32> {
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask writes 8 bytes to `old`; a null set only queries.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<u64>(),
            &mut old as *mut u64,
            8usize,
        )
    };
    if r != 0 { Err(errno()) } else { Ok(old) }
}

/// Sets the calling thread's signal mask (64 bits, kernel layout).
pub fn set_sigmask(mask: u64) -> Result<(), i32> {
    // SAFETY: rt_sigprocmask reads 8 bytes from `mask`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    if r != 0 { Err(errno()) } else { Ok(()) }
}

/// The bit of signal `sig` in a kernel signal mask.
pub fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// The calling thread's alternate signal stack: (ss_sp, ss_size, ss_flags).
pub fn altstack() -> Result<(usize, usize, i32), i32> {
    // SAFETY: an all-zero stack_t is valid; sigaltstack fills it in.
    let mut old: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries.
    let r = unsafe { libc::sigaltstack(std::ptr::null(), &mut old) };
    if r != 0 {
        return Err(errno());
    }
    Ok((old.ss_sp as usize, old.ss_size, old.ss_flags))
}

/// Installs an alternate signal stack for the calling thread.
pub fn set_altstack(sp: usize, size: usize, flags: i32) -> Result<(), i32> {
    let st = libc::stack_t {
        ss_sp: sp as *mut libc::c_void,
        ss_flags: flags,
        ss_size: size,
    };
    // SAFETY: the caller passes memory that stays mapped for the life of the thread.
    let r = unsafe { libc::sigaltstack(&st, std::ptr::null_mut()) };
    if r != 0 { Err(errno()) } else { Ok(()) }
}

/// arch_prctl(ARCH_GET_FS): the calling thread's fs base.
pub fn fs_base() -> Result<u64, i32> {
    const ARCH_GET_FS: libc::c_int = 0x1003;
    let mut base: u64 = 0;
    // SAFETY: ARCH_GET_FS writes one u64 to the given address.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_FS, &mut base as *mut u64) };
    if r != 0 { Err(errno()) } else { Ok(base) }
}

/// The workload's bound on its own waits (children's results, threads finishing):
/// RCR_WORKLOAD_TIMEOUT_SECS, default 60. Read during setup.
pub fn wait_bound() -> std::time::Duration {
    let secs = std::env::var("RCR_WORKLOAD_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    std::time::Duration::from_secs(secs)
}
