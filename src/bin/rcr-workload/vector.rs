//! The `vector` state: SIMD, mask and x87 registers, MXCSR and the x87 control word.
//!
//! One inline asm block loads known values into the registers, then waits for the go file
//! with raw syscalls only (access + clock_nanosleep, which preserve every one of these
//! registers), then stores the registers to memory. Rust code never runs in between, so any
//! difference after a dump and restore comes from the checkpoint, not from the compiler.

use crate::Check;
use crate::sys::{Msg, XorShift, out};
use std::arch::asm;
use std::ffi::{CStr, CString, c_char};
use std::fmt::Write;
use std::mem::offset_of;

/// How many values are pushed on the x87 stack.
const NX87: usize = 6;
/// MXCSR: all exceptions masked, round toward zero, flush-to-zero (default is 0x1f80).
const MXCSR: u32 = 0xff80;
/// x87 control word: all exceptions masked, double precision, round toward zero
/// (default is 0x037f).
const FCW: u16 = 0x0e7f;

/// Register contents, as loaded (expected) or as found after the wait.
#[repr(C, align(64))]
struct Regs {
    /// zmm0..zmm31, 8 u64 lanes each; the AVX and SSE variants use the low 4 or 2 lanes of
    /// the first 16.
    zmm: [[u64; 8]; 32],
    /// k0..k7 (k0 is not used).
    k: [u64; 8],
    /// x87 80-bit values (low 10 bytes of each slot), st[NX87-1] ends up in st(0).
    st: [[u8; 16]; 8],
    mxcsr: u32,
    fcw: u16,
}

impl Regs {
    fn zeroed() -> Box<Regs> {
        Box::new(Regs {
            zmm: [[0; 8]; 32],
            k: [0; 8],
            st: [[0; 16]; 8],
            mxcsr: 0,
            fcw: 0,
        })
    }
}

/// Shared with the asm block: the go path, the sleep, and what the sleeps returned.
#[repr(C)]
struct Ctl {
    go: *const c_char,
    ts: libc::timespec,
    rem: libc::timespec,
    bad_rax: i64,
    bad_count: u64,
    eintr: u64,
    full: u64,
    saved_mxcsr: u32,
    saved_fcw: u16,
}

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Avx512,
    Avx,
    Sse,
}

pub struct Vector {
    level: Level,
    expect: Box<Regs>,
    got: Box<Regs>,
    ctl: Box<Ctl>,
    _go: CString,
}

impl Vector {
    /// Prepares the expected values; each sleep of the wait loop lasts `sleep_ns`.
    pub fn new(go: &CStr, sleep_ns: u64) -> Vector {
        let level = if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
        {
            Level::Avx512
        } else if std::is_x86_feature_detected!("avx") {
            out(b"NOTICE: CPU lacks avx512f/avx512bw: zmm and k registers not checked, ymm only\n");
            Level::Avx
        } else {
            out(b"NOTICE: CPU lacks avx: only xmm0-15 checked\n");
            Level::Sse
        };
        let mut expect = Regs::zeroed();
        let mut rng = XorShift(0x0c0f_fee0_1234_5678);
        let (nregs, lanes) = level.shape();
        for reg in expect.zmm.iter_mut().take(nregs) {
            for lane in reg.iter_mut().take(lanes) {
                *lane = rng.next();
            }
        }
        if level == Level::Avx512 {
            for k in expect.k.iter_mut().skip(1) {
                *k = rng.next();
            }
        }
        for (i, slot) in expect.st.iter_mut().take(NX87).enumerate() {
            // Normal numbers with all 64 mantissa bits used (not representable as f64).
            let mantissa = rng.next() | (1 << 63) | 1;
            let sign = if i % 2 == 1 { 0x8000 } else { 0 };
            let exponent: u16 = (0x3fff - 20 + 7 * i as u16) | sign;
            slot[..8].copy_from_slice(&mantissa.to_le_bytes());
            slot[8..10].copy_from_slice(&exponent.to_le_bytes());
        }
        expect.mxcsr = MXCSR;
        expect.fcw = FCW;
        let go = go.to_owned();
        let ctl = Box::new(Ctl {
            go: go.as_ptr(),
            ts: libc::timespec {
                tv_sec: (sleep_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (sleep_ns % 1_000_000_000) as libc::c_long,
            },
            rem: libc::timespec {
                tv_sec: -1,
                tv_nsec: -1,
            },
            bad_rax: 0,
            bad_count: 0,
            eintr: 0,
            full: 0,
            saved_mxcsr: 0,
            saved_fcw: 0,
        });
        Vector {
            level,
            expect,
            got: Regs::zeroed(),
            ctl,
            _go: go,
        }
    }

    /// Loads the registers, waits for go, stores the registers.
    pub fn run(&mut self) {
        let expect: *const Regs = &*self.expect;
        let got: *mut Regs = &mut *self.got;
        let ctl: *mut Ctl = &mut *self.ctl;
        // SAFETY: the CPU features each variant needs were detected in new(); the pointers
        // are to live boxed structs that nothing else uses during the call.
        unsafe {
            match self.level {
                Level::Avx512 => run_avx512(expect, got, ctl),
                Level::Avx => run_avx(expect, got, ctl),
                Level::Sse => run_sse(expect, got, ctl),
            }
        }
    }

    pub fn verify(&self, chk: &mut Check) {
        let ctl = &self.ctl;
        if ctl.bad_count > 0 {
            crate::fail!(
                chk,
                "vector: clock_nanosleep returned {} ({} unexpected returns)",
                ctl.bad_rax,
                ctl.bad_count
            );
        }
        if ctl.eintr > 0 {
            let rem_ns = ctl.rem.tv_sec as i128 * 1_000_000_000 + ctl.rem.tv_nsec as i128;
            let ts_ns = ctl.ts.tv_sec as i128 * 1_000_000_000 + ctl.ts.tv_nsec as i128;
            if ctl.rem.tv_sec < 0
                || !(0..1_000_000_000).contains(&ctl.rem.tv_nsec)
                || rem_ns > ts_ns
            {
                crate::fail!(
                    chk,
                    "vector: clock_nanosleep EINTR with bad remaining time {}.{:09}",
                    ctl.rem.tv_sec,
                    ctl.rem.tv_nsec
                );
            }
        }
        let (nregs, lanes) = self.level.shape();
        let name = match self.level {
            Level::Avx512 => "zmm",
            Level::Avx => "ymm",
            Level::Sse => "xmm",
        };
        for r in 0..nregs {
            for l in 0..lanes {
                let (e, g) = (self.expect.zmm[r][l], self.got.zmm[r][l]);
                if e != g {
                    crate::fail!(
                        chk,
                        "vector: {name}{r} lane {l} (64-bit) is {g:#018x}, expected {e:#018x}"
                    );
                }
            }
        }
        if self.level == Level::Avx512 {
            for k in 1..8 {
                let (e, g) = (self.expect.k[k], self.got.k[k]);
                if e != g {
                    crate::fail!(chk, "vector: k{k} is {g:#018x}, expected {e:#018x}");
                }
            }
        }
        for i in 0..NX87 {
            let (e, g) = (&self.expect.st[i][..10], &self.got.st[i][..10]);
            if e != g {
                let mut em = Msg::new();
                let mut gm = Msg::new();
                for b in e.iter().rev() {
                    let _ = write!(em, "{b:02x}");
                }
                for b in g.iter().rev() {
                    let _ = write!(gm, "{b:02x}");
                }
                crate::fail!(
                    chk,
                    "vector: x87 st({}) is {}, expected {}",
                    NX87 - 1 - i,
                    crate::sys::Shown(gm.as_bytes()),
                    crate::sys::Shown(em.as_bytes())
                );
            }
        }
        if self.got.mxcsr != self.expect.mxcsr {
            crate::fail!(
                chk,
                "vector: MXCSR is {:#x}, expected {:#x}",
                self.got.mxcsr,
                self.expect.mxcsr
            );
        }
        if self.got.fcw != self.expect.fcw {
            crate::fail!(
                chk,
                "vector: x87 control word is {:#x}, expected {:#x}",
                self.got.fcw,
                self.expect.fcw
            );
        }
    }
}

impl Level {
    /// (number of vector registers, u64 lanes per register) checked at this level.
    fn shape(self) -> (usize, usize) {
        match self {
            Level::Avx512 => (32, 8),
            Level::Avx => (16, 4),
            Level::Sse => (16, 2),
        }
    }
}

// Pieces of the asm blocks. r12 = expected Regs, r13 = Regs to store into, r14 = Ctl.

/// Saves the caller's MXCSR and control word, pushes the x87 values, sets MXCSR and FCW.
macro_rules! load_x87 {
    () => {
        concat!(
            "stmxcsr dword ptr [r14 + {c_smx}]\n",
            "fnstcw word ptr [r14 + {c_sfcw}]\n",
            ".irp n,0,1,2,3,4,5\n",
            "fld tbyte ptr [r12 + {r_st} + \\n*16]\n",
            ".endr\n",
            "ldmxcsr dword ptr [r12 + {r_mx}]\n",
            "fldcw word ptr [r12 + {r_fcw}]\n",
        )
    };
}

/// Loops until access(go, F_OK) succeeds, sleeping with clock_nanosleep(CLOCK_MONOTONIC,
/// relative ts, &rem) and counting what it returns.
macro_rules! wait_loop {
    () => {
        concat!(
            "2:\n",
            "mov eax, 21\n", // SYS_access
            "mov rdi, qword ptr [r14 + {c_go}]\n",
            "xor esi, esi\n", // F_OK
            "syscall\n",
            "test rax, rax\n",
            "jz 5f\n",
            "mov eax, 230\n", // SYS_clock_nanosleep
            "mov edi, 1\n",   // CLOCK_MONOTONIC
            "xor esi, esi\n", // relative
            "lea rdx, [r14 + {c_ts}]\n",
            "lea r10, [r14 + {c_rem}]\n",
            "syscall\n",
            "test rax, rax\n",
            "jnz 3f\n",
            "inc qword ptr [r14 + {c_full}]\n",
            "jmp 2b\n",
            "3:\n",
            "cmp rax, -4\n", // -EINTR
            "jne 4f\n",
            "inc qword ptr [r14 + {c_eintr}]\n",
            "jmp 2b\n",
            "4:\n",
            "mov qword ptr [r14 + {c_bad}], rax\n",
            "inc qword ptr [r14 + {c_badn}]\n",
            "jmp 2b\n",
            "5:\n",
        )
    };
}

/// Stores MXCSR, FCW and pops the x87 values, then puts the caller's MXCSR and FCW back.
macro_rules! store_x87 {
    () => {
        concat!(
            "stmxcsr dword ptr [r13 + {r_mx}]\n",
            "fnstcw word ptr [r13 + {r_fcw}]\n",
            ".irp n,5,4,3,2,1,0\n",
            "fstp tbyte ptr [r13 + {r_st} + \\n*16]\n",
            ".endr\n",
            "ldmxcsr dword ptr [r14 + {c_smx}]\n",
            "fldcw word ptr [r14 + {c_sfcw}]\n",
        )
    };
}

/// The operands shared by every variant (as a macro because asm! needs them inline).
macro_rules! vector_asm {
    ($expect:expr, $got:expr, $ctl:expr, [$($k:expr)?], $($tmpl:expr),+) => {
        asm!(
            $($tmpl),+,
            $(r_k = const $k,)?
            r_st = const offset_of!(Regs, st),
            r_mx = const offset_of!(Regs, mxcsr),
            r_fcw = const offset_of!(Regs, fcw),
            c_go = const offset_of!(Ctl, go),
            c_ts = const offset_of!(Ctl, ts),
            c_rem = const offset_of!(Ctl, rem),
            c_bad = const offset_of!(Ctl, bad_rax),
            c_badn = const offset_of!(Ctl, bad_count),
            c_eintr = const offset_of!(Ctl, eintr),
            c_full = const offset_of!(Ctl, full),
            c_smx = const offset_of!(Ctl, saved_mxcsr),
            c_sfcw = const offset_of!(Ctl, saved_fcw),
            in("r12") $expect,
            in("r13") $got,
            in("r14") $ctl,
            // Every vector, mask, x87 and caller-saved general register (syscall clobbers
            // rax, rcx, r11; the loop uses rdi, rsi, rdx, r10).
            clobber_abi("C"),
            options(nostack),
        )
    };
}

/// zmm0-31 (incl. the AVX-512-only zmm16-31 and the upper halves), k1-k7, x87, MXCSR.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn run_avx512(expect: *const Regs, got: *mut Regs, ctl: *mut Ctl) {
    // SAFETY: see Vector::run; the x87 stack is empty on entry (all st registers are
    // clobbered) and empty again on exit; MXCSR and FCW are put back.
    unsafe {
        vector_asm!(
            expect,
            got,
            ctl,
            [offset_of!(Regs, k)],
            ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
            "vmovdqu64 zmm\\n, zmmword ptr [r12 + \\n*64]",
            ".endr",
            ".irp n,1,2,3,4,5,6,7",
            "kmovq k\\n, qword ptr [r12 + {r_k} + \\n*8]",
            ".endr",
            load_x87!(),
            wait_loop!(),
            ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
            "vmovdqu64 zmmword ptr [r13 + \\n*64], zmm\\n",
            ".endr",
            ".irp n,1,2,3,4,5,6,7",
            "kmovq qword ptr [r13 + {r_k} + \\n*8], k\\n",
            ".endr",
            store_x87!(),
            "vzeroupper"
        );
    }
}

/// ymm0-15, x87, MXCSR.
#[target_feature(enable = "avx")]
unsafe fn run_avx(expect: *const Regs, got: *mut Regs, ctl: *mut Ctl) {
    // SAFETY: as run_avx512.
    unsafe {
        vector_asm!(
            expect,
            got,
            ctl,
            [],
            ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "vmovdqu ymm\\n, ymmword ptr [r12 + \\n*64]",
            ".endr",
            load_x87!(),
            wait_loop!(),
            ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "vmovdqu ymmword ptr [r13 + \\n*64], ymm\\n",
            ".endr",
            store_x87!(),
            "vzeroupper"
        );
    }
}

/// xmm0-15, x87, MXCSR.
unsafe fn run_sse(expect: *const Regs, got: *mut Regs, ctl: *mut Ctl) {
    // SAFETY: as run_avx512; SSE2 is part of x86_64.
    unsafe {
        vector_asm!(
            expect,
            got,
            ctl,
            [],
            ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "movdqu xmm\\n, xmmword ptr [r12 + \\n*64]",
            ".endr",
            load_x87!(),
            wait_loop!(),
            ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "movdqu xmmword ptr [r13 + \\n*64], xmm\\n",
            ".endr",
            store_x87!()
        );
    }
}
