//! Raw interfaces `rcr check` probes that nothing else wraps yet: the PAGEMAP_SCAN ioctl,
//! userfaultfd (system call and /dev/userfaultfd) with its API handshake, and the
//! PR_SET_MM_MAP_SIZE prctl.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::check;

/// Linux _IOC encoding for x86_64.
const fn ioc(dir: u64, kind: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (kind << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// struct pm_scan_arg (include/uapi/linux/fs.h, Linux 6.7).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// struct page_region: one run of pages with the same categories.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

const PAGEMAP_SCAN: u64 = ioc(
    IOC_READ | IOC_WRITE,
    b'f' as u64,
    16,
    size_of::<PmScanArg>(),
);

/// PAGEMAP_SCAN categories.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;

/// The result of one PAGEMAP_SCAN call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageScan {
    pub regions: Vec<PageRegion>,
    /// Where the walk stopped (`end` when it covered the whole range).
    pub walk_end: u64,
}

/// PAGEMAP_SCAN over `start..end` of the process whose /proc/PID/pagemap is `pagemap`: the
/// regions whose pages have every category of `required`, reported with the categories of
/// `report`; at most `max_regions` regions.
pub fn pagemap_scan(
    pagemap: &File,
    start: u64,
    end: u64,
    required: u64,
    report: u64,
    max_regions: usize,
) -> io::Result<PageScan> {
    pagemap_scan_filtered(
        pagemap,
        start..end,
        PageFilter {
            required,
            inverted: 0,
            any_of: 0,
        },
        report,
        max_regions,
    )
}

/// Which pages PAGEMAP_SCAN reports: those with every category of `required` (categories in
/// `inverted` count when absent) and, unless `any_of` is 0, at least one of `any_of`.
#[derive(Debug, Clone, Copy)]
pub struct PageFilter {
    pub required: u64,
    pub inverted: u64,
    pub any_of: u64,
}

/// PAGEMAP_SCAN with a full filter; see [`pagemap_scan`].
pub fn pagemap_scan_filtered(
    pagemap: &File,
    range: std::ops::Range<u64>,
    filter: PageFilter,
    report: u64,
    max_regions: usize,
) -> io::Result<PageScan> {
    let mut regions = vec![PageRegion::default(); max_regions];
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        start: range.start,
        end: range.end,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        category_mask: filter.required,
        category_inverted: filter.inverted,
        category_anyof_mask: filter.any_of,
        return_mask: report,
        ..Default::default()
    };
    // SAFETY: the kernel reads `arg` and writes at most vec_len page_region structs into
    // `regions`, both alive across the call; it updates arg.walk_end.
    let n = check(unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN as _,
            &mut arg as *mut PmScanArg,
        )
    } as libc::c_long)?;
    regions.truncate(n as usize);
    Ok(PageScan {
        regions,
        walk_end: arg.walk_end,
    })
}

/// struct uffdio_api.
#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

const UFFD_API: u64 = 0xaa;
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0xaa, 0x3f, size_of::<UffdioApi>());
const USERFAULTFD_IOC_NEW: u64 = ioc(0, 0xaa, 0x00, 0);

/// What a userfaultfd offers after the UFFDIO_API handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdApi {
    /// UFFD_FEATURE_* bits this kernel supports.
    pub features: u64,
    /// Bit i set: ioctl number i is available (_UFFDIO_REGISTER...).
    pub ioctls: u64,
}

/// UFFD_FEATURE_* names by bit number.
pub const UFFD_FEATURE_NAMES: [&str; 17] = [
    "PAGEFAULT_FLAG_WP",
    "EVENT_FORK",
    "EVENT_REMAP",
    "EVENT_REMOVE",
    "MISSING_HUGETLBFS",
    "MISSING_SHMEM",
    "EVENT_UNMAP",
    "SIGBUS",
    "THREAD_ID",
    "MINOR_HUGETLBFS",
    "MINOR_SHMEM",
    "EXACT_ADDRESS",
    "WP_HUGETLBFS_SHMEM",
    "WP_UNPOPULATED",
    "POISON",
    "WP_ASYNC",
    "MOVE",
];
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

/// A userfaultfd from the userfaultfd(2) system call (close-on-exec, non-blocking).
pub fn userfaultfd() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: plain syscall with integer arguments; the returned fd is ours to own.
    let fd = check(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A userfaultfd from /dev/userfaultfd (Linux 6.1+), which does not depend on
/// vm.unprivileged_userfaultfd.
pub fn userfaultfd_dev() -> io::Result<OwnedFd> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/userfaultfd")?;
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value; the returned fd is ours to own.
    let fd = check(
        unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) } as libc::c_long,
    )?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The UFFDIO_API handshake asking for no feature: the kernel answers with all it supports.
/// A userfaultfd takes one handshake only, so this consumes its first.
pub fn uffd_api(uffd: &OwnedFd) -> io::Result<UffdApi> {
    let mut api = UffdioApi {
        api: UFFD_API,
        ..Default::default()
    };
    // SAFETY: the kernel reads and writes one struct uffdio_api, alive across the call.
    check(unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_API as _,
            &mut api as *mut UffdioApi,
        )
    } as libc::c_long)?;
    Ok(UffdApi {
        features: api.features,
        ioctls: api.ioctls,
    })
}

/// prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): the size of struct prctl_mm_map this kernel expects.
/// Fails with EINVAL without CONFIG_CHECKPOINT_RESTORE.
pub fn prctl_mm_map_size() -> io::Result<u32> {
    let mut size: libc::c_uint = 0;
    // SAFETY: the kernel writes one unsigned int to the address passed, alive across the call.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP_SIZE as libc::c_ulong,
            &mut size as *mut libc::c_uint,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } as libc::c_long)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_headers() {
        assert_eq!(size_of::<PmScanArg>(), 96);
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
    }

    #[test]
    fn mm_map_size_is_the_struct_size() {
        // struct prctl_mm_map: 13 u64, auxv pointer, two u32 (auxv_size, exe_fd).
        assert_eq!(prctl_mm_map_size().unwrap(), 104);
    }

    #[test]
    fn scan_of_own_stack_finds_present_pages() {
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let local = [1u8; 64];
        let addr = std::hint::black_box(&local) as *const _ as u64 & !4095;
        let scan = match pagemap_scan(
            &pagemap,
            addr,
            addr + 4096,
            PAGE_IS_PRESENT,
            PAGE_IS_PRESENT,
            4,
        ) {
            Ok(scan) => scan,
            // A kernel older than 6.7 has no PAGEMAP_SCAN: nothing to test.
            Err(err) if err.raw_os_error() == Some(libc::ENOTTY) => return,
            Err(err) => panic!("PAGEMAP_SCAN: {err}"),
        };
        assert_eq!(scan.regions.len(), 1);
        assert_eq!(scan.regions[0].start, addr);
        assert_eq!(
            scan.regions[0].categories & PAGE_IS_PRESENT,
            PAGE_IS_PRESENT
        );
    }
}
