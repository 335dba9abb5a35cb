//! The pieces of state a scenario sets up before "ready" and verifies after "go".
//!
//! Constructors run before ready and may allocate. `before_ready` and `verify` must not
//! allocate or map anything (verify runs after the /proc/self/maps comparison, but the brk
//! check needs a malloc-free process).

use crate::sys::{self, Mapping, Msg, Shown, XorShift, checksum, errno};
use crate::{Check, Ctx, fail};
use std::cell::Cell;
use std::ffi::CString;
use std::fmt::Write;

pub trait Part {
    /// Called after every part is set up, right before the maps snapshot and ready.
    fn before_ready(&mut self) {}
    /// Checks the state after go.
    fn verify(&mut self, chk: &mut Check);
}

// ---------------------------------------------------------------------------------------------

/// `memory`: a large private anonymous mapping full of pseudo-random data.
pub struct Memory {
    map: Mapping,
    seed: u64,
    sum: u64,
}

impl Memory {
    pub fn new(size: usize) -> Result<Memory, String> {
        Self::with_seed(size, 0x9e37_79b9_7f4a_7c15)
    }

    /// A mapping of `size` bytes filled from `seed` (distinct seeds give distinct contents).
    pub fn with_seed(size: usize, seed: u64) -> Result<Memory, String> {
        let mut map = Mapping::anon(size, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let mut rng = XorShift(seed);
        for w in map.words_mut() {
            *w = rng.next();
        }
        let sum = checksum(map.words());
        Ok(Memory { map, seed, sum })
    }
}

impl Part for Memory {
    fn verify(&mut self, chk: &mut Check) {
        let sum = checksum(self.map.words());
        if sum == self.sum {
            return;
        }
        let mut rng = XorShift(self.seed);
        let mut bad = 0usize;
        let mut first = None;
        for (i, &w) in self.map.words().iter().enumerate() {
            let e = rng.next();
            if w != e {
                bad += 1;
                if first.is_none() {
                    first = Some((i, w, e));
                }
            }
        }
        match first {
            Some((i, w, e)) => fail!(
                chk,
                "memory: checksum {sum:#x} != {:#x}; {bad} words differ, first at {:#x} \
                 (offset {:#x}): {w:#018x}, expected {e:#018x}",
                self.sum,
                self.map.addr() + i * 8,
                i * 8
            ),
            None => fail!(chk, "memory: checksum changed but contents equal (?)"),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// `sparse`: a 64 MiB anonymous reservation with only a few pages written.
pub struct Sparse {
    map: Mapping,
    page: usize,
    touched: [usize; 5],
}

pub const SPARSE_SIZE: usize = 64 << 20;

fn sparse_seed(page_index: usize) -> u64 {
    0x5a5a_0000_0000_0001 ^ ((page_index as u64) << 20)
}

impl Sparse {
    pub fn new() -> Result<Sparse, String> {
        let page = sys::page_size();
        let mut map = Mapping::anon(
            SPARSE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_NORESERVE,
        )?;
        // No transparent huge pages: one write must populate one small page.
        map.advise(libc::MADV_NOHUGEPAGE)
            .map_err(|e| format!("madvise(MADV_NOHUGEPAGE): errno {e}"))?;
        let npages = SPARSE_SIZE / page;
        let touched = [0, 777, 4097, 9000, npages - 1];
        let wpp = page / 8;
        let words = map.words_mut();
        for &p in &touched {
            let mut rng = XorShift(sparse_seed(p));
            for w in &mut words[p * wpp..(p + 1) * wpp] {
                *w = rng.next();
            }
        }
        Ok(Sparse { map, page, touched })
    }
}

impl Part for Sparse {
    fn verify(&mut self, chk: &mut Check) {
        let wpp = self.page / 8;
        for (p, words) in self.map.words().chunks(wpp).enumerate() {
            if self.touched.contains(&p) {
                let mut rng = XorShift(sparse_seed(p));
                if let Some(i) = words.iter().position(|&w| w != rng.next()) {
                    fail!(
                        chk,
                        "sparse: written page {p} differs at word {i}: {:#018x}",
                        words[i]
                    );
                    return;
                }
            } else if let Some(i) = words.iter().position(|&w| w != 0) {
                fail!(
                    chk,
                    "sparse: untouched page {p} is not zero at word {i}: {:#018x}",
                    words[i]
                );
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// `prot`: a read-only region and a PROT_NONE region, both with contents.
pub struct Prot {
    ro: Mapping,
    none: Mapping,
}

fn fill_pattern(bytes: &mut [u8], seed: u64) {
    let mut rng = XorShift(seed);
    for b in bytes {
        *b = rng.next() as u8;
    }
}

fn first_pattern_mismatch(bytes: &[u8], seed: u64) -> Option<(usize, u8, u8)> {
    let mut rng = XorShift(seed);
    for (i, &b) in bytes.iter().enumerate() {
        let e = rng.next() as u8;
        if b != e {
            return Some((i, b, e));
        }
    }
    None
}

const PROT_RO_SEED: u64 = 0x0123_4567_89ab_cdef;
const PROT_NONE_SEED: u64 = 0x0fed_cba9_8765_4321;

impl Prot {
    pub fn new() -> Result<Prot, String> {
        let page = sys::page_size();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let mut ro = Mapping::anon(3 * page, rw, 0)?;
        fill_pattern(ro.bytes_mut(), PROT_RO_SEED);
        ro.protect(libc::PROT_READ)
            .map_err(|e| format!("mprotect(PROT_READ): errno {e}"))?;
        let mut none = Mapping::anon(2 * page, rw, 0)?;
        fill_pattern(none.bytes_mut(), PROT_NONE_SEED);
        none.protect(libc::PROT_NONE)
            .map_err(|e| format!("mprotect(PROT_NONE): errno {e}"))?;
        Ok(Prot { ro, none })
    }
}

impl Part for Prot {
    fn verify(&mut self, chk: &mut Check) {
        if let Some((i, b, e)) = first_pattern_mismatch(self.ro.bytes(), PROT_RO_SEED) {
            fail!(
                chk,
                "prot: read-only region byte {i} is {b:#x}, expected {e:#x}"
            );
        }
        if let Err(e) = self.none.protect(libc::PROT_READ) {
            fail!(
                chk,
                "prot: mprotect(PROT_NONE region, PROT_READ): errno {e}"
            );
            return;
        }
        if let Some((i, b, e)) = first_pattern_mismatch(self.none.bytes(), PROT_NONE_SEED) {
            fail!(
                chk,
                "prot: PROT_NONE region byte {i} is {b:#x}, expected {e:#x}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// `filemap`: a private writable mapping of a 4-page file, one page modified (copy-on-write),
/// one page only read, two pages never touched.
pub struct FileMap {
    map: Mapping,
    path: CString,
    page: usize,
    content: Vec<u8>,
    modified: Vec<u8>,
    disk: Vec<u8>,
}

pub const FILEMAP_PAGES: usize = 4;

impl FileMap {
    pub fn new(ctx: &Ctx) -> Result<FileMap, String> {
        let page = sys::page_size();
        let len = FILEMAP_PAGES * page;
        let path = ctx.path("mapped.dat");
        let mut content = vec![0u8; len];
        fill_pattern(&mut content, 0xf11e_0000_0000_0042);
        sys::write_file(&path, &content)?;
        let fd = sys::open(&path, libc::O_RDONLY | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("open mapped.dat: errno {e}"))?;
        let map = Mapping::file(
            fd,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
        );
        sys::close(fd);
        let mut map = map?;
        // Page 0: read only (page cache page mapped); page 1: written (anonymous COW copy).
        let first = map.bytes()[0];
        if first != content[0] {
            return Err("mapped.dat: page 0 does not read back".into());
        }
        let mut modified = vec![0u8; page];
        fill_pattern(&mut modified, 0xc0c0_0000_0000_0017);
        map.bytes_mut()[page..2 * page].copy_from_slice(&modified);
        Ok(FileMap {
            map,
            path,
            page,
            content,
            modified,
            disk: vec![0u8; len],
        })
    }
}

impl Part for FileMap {
    fn verify(&mut self, chk: &mut Check) {
        let page = self.page;
        let mem = self.map.bytes();
        for p in 0..FILEMAP_PAGES {
            let got = &mem[p * page..(p + 1) * page];
            let want = if p == 1 {
                &self.modified[..]
            } else {
                &self.content[p * page..(p + 1) * page]
            };
            if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
                let what = if p == 1 { "modified" } else { "file" };
                fail!(
                    chk,
                    "filemap: page {p} byte {i} is {:#x}, expected {:#x} ({what} content)",
                    got[i],
                    want[i]
                );
            }
        }
        let fd = match sys::open(&self.path, libc::O_RDONLY | libc::O_CLOEXEC, 0) {
            Ok(fd) => fd,
            Err(e) => {
                fail!(chk, "filemap: open mapped.dat after restore: errno {e}");
                return;
            }
        };
        // SAFETY: an all-zero stat is a valid value; fstat fills it in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open, st is writable.
        let r = unsafe { libc::fstat(fd, &mut st) };
        if r != 0 || st.st_size as usize != self.content.len() {
            fail!(
                chk,
                "filemap: mapped.dat size is {} (fstat {r}), expected {}",
                st.st_size,
                self.content.len()
            );
        } else if let Err(e) = sys::pread_exact(fd, &mut self.disk, 0) {
            fail!(chk, "filemap: read mapped.dat: errno {e}");
        } else if self.disk != self.content {
            fail!(chk, "filemap: mapped.dat on disk changed");
        }
        sys::close(fd);
    }
}

// ---------------------------------------------------------------------------------------------

/// `brk`: the heap grown with sbrk by an unaligned amount and filled.
pub struct Brk {
    start: usize,
    len: usize,
    end_libc: usize,
    end_kernel: usize,
}

pub const BRK_GROW: usize = (1 << 20) + 123;

fn kernel_brk() -> usize {
    // SAFETY: brk(0) only queries the current break.
    unsafe { libc::syscall(libc::SYS_brk, 0usize) as usize }
}

fn brk_byte(i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 12)) as u8
}

impl Brk {
    /// Must be the last part set up: later heap allocations could move the break.
    pub fn new() -> Result<Brk, String> {
        // SAFETY: sbrk only moves the program break; the memory it returns is ours.
        let old = unsafe { libc::sbrk(BRK_GROW as libc::intptr_t) };
        if old as isize == -1 {
            return Err(format!("sbrk({BRK_GROW}): errno {}", errno()));
        }
        let start = old as usize;
        // SAFETY: [start, start+BRK_GROW) was just added to the heap by sbrk and nothing
        // else refers to it.
        let heap = unsafe { std::slice::from_raw_parts_mut(old.cast::<u8>(), BRK_GROW) };
        for (i, b) in heap.iter_mut().enumerate() {
            *b = brk_byte(i);
        }
        // SAFETY: sbrk(0) only queries.
        let end_libc = unsafe { libc::sbrk(0) } as usize;
        let end_kernel = kernel_brk();
        if end_libc != start + BRK_GROW || end_kernel != end_libc {
            return Err(format!(
                "sbrk: start {start:#x} + {BRK_GROW} != end {end_libc:#x} / kernel {end_kernel:#x}"
            ));
        }
        Ok(Brk {
            start,
            len: BRK_GROW,
            end_libc,
            end_kernel,
        })
    }
}

impl Part for Brk {
    fn verify(&mut self, chk: &mut Check) {
        // SAFETY: sbrk(0) only queries.
        let end_libc = unsafe { libc::sbrk(0) } as usize;
        let end_kernel = kernel_brk();
        if end_libc != self.end_libc {
            fail!(
                chk,
                "brk: sbrk(0) is {end_libc:#x}, expected {:#x}",
                self.end_libc
            );
        }
        if end_kernel != self.end_kernel {
            fail!(
                chk,
                "brk: brk(0) syscall is {end_kernel:#x}, expected {:#x}",
                self.end_kernel
            );
            return;
        }
        // SAFETY: the region is still part of our heap (the break did not move).
        let heap = unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) };
        if let Some(i) = heap.iter().enumerate().position(|(i, &b)| b != brk_byte(i)) {
            fail!(
                chk,
                "brk: heap byte at {:#x} is {:#x}, expected {:#x}",
                self.start + i,
                heap[i],
                brk_byte(i)
            );
            return;
        }
        // The heap must still be able to grow and shrink (mm start_brk/brk restored).
        // SAFETY: grows the break by two pages; the new memory is ours.
        let grown = unsafe { libc::sbrk(8192) };
        if grown as isize == -1 {
            fail!(chk, "brk: sbrk(8192) after restore: errno {}", errno());
            return;
        }
        // SAFETY: the two pages just added by sbrk.
        let extra = unsafe { std::slice::from_raw_parts_mut(grown.cast::<u8>(), 8192) };
        extra.fill(0xa5);
        if extra.iter().any(|&b| b != 0xa5) {
            fail!(chk, "brk: memory from sbrk after restore is not writable");
        }
        // SAFETY: gives the two pages back; `extra` is not used after this.
        let back = unsafe { libc::sbrk(-8192) };
        if back as isize == -1 || kernel_brk() != self.end_kernel {
            fail!(
                chk,
                "brk: shrinking the heap back failed: errno {}",
                errno()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------

thread_local! {
    static TLS_WORD: Cell<u64> = const { Cell::new(0) };
}

/// `tls`: a thread-local value and the fs base.
pub struct Tls {
    value: u64,
    addr: usize,
    fsbase: u64,
}

/// arch_prctl code (asm/prctl.h); libc does not export it.
const ARCH_GET_FS: libc::c_int = 0x1003;

fn fs_base() -> Result<u64, i32> {
    let mut base: u64 = 0;
    // SAFETY: ARCH_GET_FS writes one u64 to the given address.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_FS, &mut base as *mut u64) };
    if r != 0 { Err(errno()) } else { Ok(base) }
}

impl Tls {
    pub fn new(pid: i32) -> Result<Tls, String> {
        let value = 0x7e57_ab1e_0000_0000 | pid as u32 as u64;
        TLS_WORD.set(value);
        let addr = TLS_WORD.with(|c| c as *const Cell<u64> as usize);
        let fsbase = fs_base().map_err(|e| format!("arch_prctl(ARCH_GET_FS): errno {e}"))?;
        Ok(Tls {
            value,
            addr,
            fsbase,
        })
    }
}

impl Part for Tls {
    fn verify(&mut self, chk: &mut Check) {
        match fs_base() {
            Ok(b) if b == self.fsbase => {}
            Ok(b) => fail!(chk, "tls: fs base is {b:#x}, expected {:#x}", self.fsbase),
            Err(e) => fail!(chk, "tls: arch_prctl(ARCH_GET_FS): errno {e}"),
        }
        let addr = TLS_WORD.with(|c| c as *const Cell<u64> as usize);
        if addr != self.addr {
            fail!(
                chk,
                "tls: thread-local at {addr:#x}, expected {:#x}",
                self.addr
            );
        }
        let v = TLS_WORD.get();
        if v != self.value {
            fail!(
                chk,
                "tls: thread-local value {v:#x}, expected {:#x}",
                self.value
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// What one fd looks like from inside.
#[derive(Clone, Copy)]
struct FdState {
    fd: i32,
    link: [u8; 512],
    link_len: usize,
    offset: i64,
    flags: i32,
    fd_flags: i32,
}

impl FdState {
    const EMPTY: FdState = FdState {
        fd: -1,
        link: [0; 512],
        link_len: 0,
        offset: 0,
        flags: 0,
        fd_flags: 0,
    };

    fn read(fd: i32, proc_path: &CString) -> FdState {
        let mut s = FdState::EMPTY;
        s.fd = fd;
        // SAFETY: readlink writes at most link.len() bytes into link.
        let n =
            unsafe { libc::readlink(proc_path.as_ptr(), s.link.as_mut_ptr().cast(), s.link.len()) };
        s.link_len = n.max(0) as usize;
        // SAFETY: lseek and fcntl on an fd number have no memory effects.
        unsafe {
            s.offset = libc::lseek(fd, 0, libc::SEEK_CUR);
            s.flags = libc::fcntl(fd, libc::F_GETFL);
            s.fd_flags = libc::fcntl(fd, libc::F_GETFD);
        }
        s
    }

    fn link(&self) -> &[u8] {
        &self.link[..self.link_len]
    }
}

/// `stdio`: fds 0-2 as the harness set them up, an O_APPEND file with an offset, a read-only
/// file at offset 3 with FD_CLOEXEC, and a dup of the first sharing its file offset.
pub struct Stdio {
    proc_paths: Vec<CString>,
    before: [FdState; 6],
    data_fd: i32,
    ro_fd: i32,
    dup_fd: i32,
    data_content: Vec<u8>,
    readback: Vec<u8>,
}

const DATA_CONTENT: &[u8] = b"0123456789abcdefghij\n";
const DATA_OFFSET: i64 = 7;
const RO_CONTENT: &[u8] = b"abcdefghij";
const RO_OFFSET: i64 = 3;

impl Stdio {
    pub fn new(ctx: &Ctx) -> Result<Stdio, String> {
        let mut m = Msg::new();
        let _ = writeln!(m, "stdio: pid {} before dump", ctx.pid);
        sys::write_all(1, m.as_bytes()).map_err(|e| format!("write stdout: errno {e}"))?;

        let data_path = ctx.path("data.txt");
        let data_fd = sys::open(
            &data_path,
            libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )
        .map_err(|e| format!("open data.txt: errno {e}"))?;
        sys::write_all(data_fd, DATA_CONTENT).map_err(|e| format!("write data.txt: {e}"))?;
        // SAFETY: lseek on our fd.
        if unsafe { libc::lseek(data_fd, DATA_OFFSET, libc::SEEK_SET) } != DATA_OFFSET {
            return Err(format!("lseek data.txt: errno {}", errno()));
        }

        let ro_path = ctx.path("ro.txt");
        sys::write_file(&ro_path, RO_CONTENT)?;
        let ro_fd = sys::open(&ro_path, libc::O_RDONLY | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("open ro.txt: errno {e}"))?;
        // SAFETY: lseek on our fd.
        if unsafe { libc::lseek(ro_fd, RO_OFFSET, libc::SEEK_SET) } != RO_OFFSET {
            return Err(format!("lseek ro.txt: errno {}", errno()));
        }

        // SAFETY: F_DUPFD on our fd returns a new fd number >= 9.
        let dup_fd = unsafe { libc::fcntl(data_fd, libc::F_DUPFD, 9) };
        if dup_fd < 0 {
            return Err(format!("dup data.txt: errno {}", errno()));
        }

        let fds = [0, 1, 2, data_fd, ro_fd, dup_fd];
        let proc_paths = fds
            .iter()
            .map(|fd| CString::new(format!("/proc/self/fd/{fd}")).unwrap())
            .collect();
        let mut data_content = DATA_CONTENT.to_vec();
        data_content.push(b'X');
        Ok(Stdio {
            proc_paths,
            before: [FdState::EMPTY; 6],
            data_fd,
            ro_fd,
            dup_fd,
            readback: vec![0u8; data_content.len()],
            data_content,
        })
    }
}

impl Part for Stdio {
    fn before_ready(&mut self) {
        for (i, s) in self.before.iter_mut().enumerate() {
            let fd = [0, 1, 2, self.data_fd, self.ro_fd, self.dup_fd][i];
            *s = FdState::read(fd, &self.proc_paths[i]);
        }
    }

    fn verify(&mut self, chk: &mut Check) {
        for (i, b) in self.before.iter().enumerate() {
            let a = FdState::read(b.fd, &self.proc_paths[i]);
            let fd = b.fd;
            if a.link() != b.link() {
                fail!(
                    chk,
                    "stdio: fd {fd} is `{}`, expected `{}`",
                    Shown(a.link()),
                    Shown(b.link())
                );
            }
            if a.offset != b.offset {
                fail!(
                    chk,
                    "stdio: fd {fd} offset {}, expected {}",
                    a.offset,
                    b.offset
                );
            }
            if a.flags != b.flags {
                fail!(
                    chk,
                    "stdio: fd {fd} F_GETFL {:#o}, expected {:#o}",
                    a.flags,
                    b.flags
                );
            }
            if a.fd_flags != b.fd_flags {
                fail!(
                    chk,
                    "stdio: fd {fd} F_GETFD {:#x}, expected {:#x}",
                    a.fd_flags,
                    b.fd_flags
                );
            }
        }
        let ro = &self.before[4];
        if ro.fd_flags & libc::FD_CLOEXEC == 0 || ro.offset != RO_OFFSET {
            fail!(chk, "stdio: ro.txt state was wrong before the dump (?)");
        }
        // The read-only file continues at offset 3.
        let mut buf = [0u8; 3];
        // SAFETY: read into a local array.
        let n = unsafe { libc::read(self.ro_fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n != 3 || &buf != b"def" {
            fail!(
                chk,
                "stdio: read(ro.txt) gave {n} bytes `{}`, expected `def`",
                Shown(&buf)
            );
        }
        // The dup shares the file description: moving one moves the other.
        // SAFETY: lseek on our fds.
        let (moved, seen) = unsafe {
            (
                libc::lseek(self.dup_fd, 2, libc::SEEK_SET),
                libc::lseek(self.data_fd, 0, libc::SEEK_CUR),
            )
        };
        if moved != 2 || seen != 2 {
            fail!(
                chk,
                "stdio: fd {} and its dup fd {} do not share the file offset ({seen} after \
                 seeking the dup to {moved})",
                self.data_fd,
                self.dup_fd
            );
        }
        // O_APPEND: a write goes to the end whatever the offset.
        if let Err(e) = sys::write_all(self.data_fd, b"X") {
            fail!(chk, "stdio: write(data.txt): errno {e}");
        }
        match sys::pread_exact(self.data_fd, &mut self.readback, 0) {
            Ok(()) if self.readback == self.data_content => {}
            Ok(()) => fail!(
                chk,
                "stdio: data.txt is `{}`, expected `{}`",
                Shown(&self.readback),
                Shown(&self.data_content)
            ),
            Err(e) => fail!(chk, "stdio: pread(data.txt): errno {e}"),
        }
    }
}
