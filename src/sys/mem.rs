//! Anonymous memory for measuring what the machine can do (benchmarks' limits).

use std::io;
use std::ptr::NonNull;

/// A fresh read-write anonymous mapping (MAP_PRIVATE or MAP_SHARED) that nothing references.
fn map_anonymous(len: usize, sharing: i32) -> io::Result<NonNull<u8>> {
    // SAFETY: a new mapping at an address the kernel picks; nothing else references it.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            sharing | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(NonNull::new(ptr.cast()).expect("mmap returned null"))
}

/// An anonymous private mapping, unmapped on drop.
pub struct AnonMapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl AnonMapping {
    pub fn new(len: usize) -> io::Result<AnonMapping> {
        Ok(AnonMapping {
            ptr: map_anonymous(len, libc::MAP_PRIVATE)?,
            len,
        })
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is len bytes, readable and writable, and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the region this value owns.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A new shared anonymous memory object (what mmap(MAP_SHARED|MAP_ANONYMOUS) creates, shown
/// as "/dev/zero (deleted)"), as a file descriptor that other processes can map.
pub fn shared_anon_object(len: usize) -> io::Result<std::os::fd::OwnedFd> {
    let ptr = map_anonymous(len, libc::MAP_SHARED)?
        .as_ptr()
        .cast::<libc::c_void>();
    let start = ptr as usize;
    let path = format!("/proc/self/map_files/{:x}-{:x}", start, start + len);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path);
    // SAFETY: unmapping the region mapped above; the object lives on through the fd.
    unsafe { libc::munmap(ptr, len) };
    Ok(file?.into())
}
