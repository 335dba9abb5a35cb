//! ptrace requests that nix does not wrap: the XSAVE regset, signal masks, rseq configuration.

use std::io;
use std::mem::size_of;

use super::check;

pub type Regs = libc::user_regs_struct;

const NT_X86_XSTATE: usize = 0x202;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;

/// Reads the thread's XSAVE area (NT_X86_XSTATE). `max_size` must be at least the size the
/// kernel uses (CPUID 0xD); the result is trimmed to what the kernel returned.
pub fn get_xstate(tid: i32, max_size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max_size];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the kernel writes at most iov_len bytes into buf, which lives across the call.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid,
            NT_X86_XSTATE as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    })?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(tid: i32, xstate: &[u8]) -> io::Result<()> {
    let mut copy = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: copy.as_mut_ptr().cast(),
        iov_len: copy.len(),
    };
    // SAFETY: the kernel reads iov_len bytes from a live buffer.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            tid,
            NT_X86_XSTATE as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    })?;
    Ok(())
}

pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: the kernel writes 8 bytes (the size passed) into `mask`.
    check(unsafe {
        libc::ptrace(
            PTRACE_GETSIGMASK,
            tid,
            size_of::<u64>() as *mut libc::c_void,
            &mut mask as *mut u64,
        )
    })?;
    Ok(mask)
}

pub fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    // SAFETY: the kernel reads 8 bytes from `mask`.
    check(unsafe {
        libc::ptrace(
            PTRACE_SETSIGMASK,
            tid,
            size_of::<u64>() as *mut libc::c_void,
            &mask as *const u64,
        )
    })?;
    Ok(())
}

/// struct ptrace_rseq_configuration.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// The thread's registered rseq area, or None when it has none.
pub fn get_rseq_config(tid: i32) -> io::Result<Option<RseqConfig>> {
    let mut config = RseqConfig::default();
    // SAFETY: the kernel writes at most size_of::<RseqConfig>() bytes into `config`.
    check(unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            size_of::<RseqConfig>() as *mut libc::c_void,
            &mut config as *mut RseqConfig,
        )
    })?;
    Ok((config.rseq_abi_pointer != 0).then_some(config))
}

const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
pub const SIGINFO_SIZE: usize = 128;

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// The signals queued for thread `tid` (or, with `shared`, for its whole process), in order,
/// each as the kernel's 128-byte siginfo. The queue is left as it is.
pub fn peek_siginfo(tid: i32, shared: bool) -> io::Result<Vec<[u8; SIGINFO_SIZE]>> {
    const BATCH: usize = 32;
    let mut all = Vec::new();
    loop {
        let mut buf = [[0u8; SIGINFO_SIZE]; BATCH];
        let mut args = PeekSiginfoArgs {
            off: all.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        // SAFETY: the kernel reads `args` and writes at most `nr` siginfos into `buf`.
        let n = check(unsafe {
            libc::ptrace(
                PTRACE_PEEKSIGINFO,
                tid,
                &mut args as *mut PeekSiginfoArgs,
                buf.as_mut_ptr(),
            )
        })? as usize;
        all.extend_from_slice(&buf[..n]);
        if n < BATCH {
            return Ok(all);
        }
    }
}

/// The classic BPF program of seccomp filter number `index` (0 = the oldest) of `tid`, as
/// raw `struct sock_filter` bytes; None past the last filter.
pub fn seccomp_filter(tid: i32, index: usize) -> io::Result<Option<Vec<u8>>> {
    // SAFETY: with a null buffer the kernel only returns the instruction count.
    let count = match check(unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as *mut libc::c_void,
            std::ptr::null_mut::<libc::c_void>(),
        )
    }) {
        Ok(count) => count as usize,
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut program = vec![0u8; count * 8];
    // SAFETY: the kernel writes `count` 8-byte instructions into `program`.
    check(unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as *mut libc::c_void,
            program.as_mut_ptr(),
        )
    })?;
    Ok(Some(program))
}

const IOPRIO_WHO_PROCESS: i32 = 1;

/// The I/O priority of thread `tid` (ioprio_get).
pub fn ioprio(tid: i32) -> io::Result<i32> {
    // SAFETY: integer arguments only.
    Ok(check(unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) })? as i32)
}
