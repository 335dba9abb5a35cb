//! A scratch process to try a saved xstate on: the kernel's checks of PTRACE_SETREGSET
//! NT_X86_XSTATE run on a thread prepared as restore prepares one, so that a dump finds out
//! on the spot that its restore would be refused (while the tree still runs).

use std::io;

use super::check;

const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
const XFEATURE_XTILEDATA: libc::c_long = 18;

/// A forked child of rcr, stopped and traced by rcr, killed when dropped.
pub struct XstateProbe {
    pid: i32,
}

/// The smallest valid tile configuration: palette 1, tile 0 of one row of 4 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl XstateProbe {
    /// Forks the probe. With `tile_permission` it asks for the AMX tile data permission; with
    /// `touch_tiles` it then runs one tile instruction, so that the kernel enlarges its
    /// register save area for tile data (what restore does in a thread whose state has
    /// tiles). It then stops itself under rcr's ptrace.
    pub fn start(tile_permission: bool, touch_tiles: bool) -> io::Result<XstateProbe> {
        let mut config = TileConfig([0; 64]);
        config.0[0] = 1;
        config.0[16] = 4;
        config.0[48] = 1;
        // SAFETY: getpid has no memory effects.
        let rcr = unsafe { libc::getpid() };
        // SAFETY: the child runs only raw system calls and the tile instructions below, all
        // async-signal-safe, then stops or exits with _exit; the parent only records its pid.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: in the child: integer system calls; the tile instructions read the
            // 64-byte `config`, and are reached only with the permission granted (so they
            // cannot fault for want of it).
            unsafe {
                // Never outlive rcr (a probe left stopped after a crash of rcr).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != rcr
                {
                    libc::_exit(14);
                }
                if tile_permission
                    && libc::syscall(
                        libc::SYS_arch_prctl,
                        ARCH_REQ_XCOMP_PERM,
                        XFEATURE_XTILEDATA,
                    ) != 0
                {
                    libc::_exit(10);
                }
                if touch_tiles {
                    if !tile_permission {
                        libc::_exit(11);
                    }
                    std::arch::asm!(
                        "ldtilecfg [{cfg}]",
                        "tilezero tmm0",
                        "tilerelease",
                        cfg = in(reg) &config,
                        options(nostack, readonly),
                    );
                }
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                    libc::_exit(12);
                }
                libc::kill(libc::getpid(), libc::SIGSTOP);
                libc::_exit(13);
            }
        }
        let probe = XstateProbe { pid };
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a live int.
        check(unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } as libc::c_long)?;
        if !libc::WIFSTOPPED(status) {
            let what = match libc::WEXITSTATUS(status) {
                10 => "the AMX tile data permission was refused",
                11 => "tile data without the permission",
                12 => "PTRACE_TRACEME failed",
                _ => "it ended early",
            };
            return Err(io::Error::other(format!("the xstate probe failed: {what}")));
        }
        Ok(probe)
    }

    /// Sets `xstate` into the probe as restore sets it into a thread.
    pub fn try_set(&self, xstate: &[u8]) -> io::Result<()> {
        super::ptrace::set_xstate(self.pid, xstate)
    }
}

impl Drop for XstateProbe {
    fn drop(&mut self) {
        // SAFETY: kills and reaps our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL);
        }
    }
}
