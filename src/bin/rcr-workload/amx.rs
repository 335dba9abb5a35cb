//! `amx`: AMX tile registers (Intel Sapphire Rapids and later), in the main thread and in
//! two more threads, each with contents of its own.
//!
//! The process asks for the tile data permission (arch_prctl ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA), each thread loads a tile configuration (palette 1, eight tiles of 16
//! rows x 64 bytes) and all eight tiles from its own pattern, waits for go, then stores the
//! tiles and the configuration back (tilestored, sttilecfg) and compares. Between the load and
//! the store only ordinary code runs (system calls and code that no compiler turns into AMX
//! instructions: they exist only as explicit assembly), so the tiles hold until the store
//! unless the checkpoint loses them.
//!
//! The test runs this scenario only where the CPU has AMX (amx_tile in /proc/cpuinfo);
//! elsewhere the setup fails with a message saying so.

use crate::parts::Part;
use crate::sys::{self, XorShift};
use crate::{Check, fail};
use std::arch::asm;
use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

const ARCH_GET_XCOMP_PERM: i32 = 0x1022;
const ARCH_REQ_XCOMP_PERM: i32 = 0x1023;
const XFEATURE_XTILEDATA: u64 = 18;
const TILES: usize = 8;
const ROWS: usize = 16;
const COLSB: usize = 64;
const TILE_BYTES: usize = ROWS * COLSB;
/// Threads besides the main one.
const THREADS: usize = 2;

/// The 64-byte tile configuration of palette 1.
#[repr(C, align(64))]
#[derive(Clone, Copy, PartialEq)]
struct TileCfg {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileCfg {
    fn full() -> TileCfg {
        let mut cfg = TileCfg {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..TILES {
            cfg.colsb[t] = COLSB as u16;
            cfg.rows[t] = ROWS as u8;
        }
        cfg
    }
}

#[repr(C, align(64))]
struct Tiles([[u8; TILE_BYTES]; TILES]);

/// One thread's tile state: what it loaded and what it found after go.
struct TileState {
    name: &'static str,
    cfg: TileCfg,
    expect: Box<Tiles>,
    got: Box<Tiles>,
    got_cfg: TileCfg,
}

impl TileState {
    fn new(name: &'static str, seed: u64) -> TileState {
        let mut expect = Box::new(Tiles([[0; TILE_BYTES]; TILES]));
        let mut rng = XorShift(seed);
        for tile in expect.0.iter_mut() {
            for chunk in tile.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
        }
        TileState {
            name,
            cfg: TileCfg::full(),
            expect,
            got: Box::new(Tiles([[0; TILE_BYTES]; TILES])),
            got_cfg: TileCfg {
                palette: 0,
                start_row: 0,
                reserved: [0; 14],
                colsb: [0; 16],
                rows: [0; 16],
            },
        }
    }

    /// Loads the configuration and the eight tiles.
    fn load(&self) {
        let cfg: *const TileCfg = &self.cfg;
        let data: *const Tiles = &*self.expect;
        // SAFETY: the CPU has AMX and the permission was granted (checked in Amx::new); the
        // configuration is valid for palette 1 and every tile reads TILE_BYTES bytes of
        // `expect` (ROWS rows of COLSB bytes, stride COLSB).
        unsafe {
            asm!(
                "ldtilecfg [{cfg}]",
                ".irp n,0,1,2,3,4,5,6,7",
                "tileloadd tmm\\n, [{data} + {stride}*1 + \\n*{tile}]",
                ".endr",
                cfg = in(reg) cfg,
                data = in(reg) data,
                stride = in(reg) COLSB,
                tile = const TILE_BYTES,
                options(nostack, readonly),
            );
        }
    }

    /// Stores the eight tiles and the configuration, then releases the tiles.
    fn store(&mut self) {
        let cfg: *mut TileCfg = &mut self.got_cfg;
        let data: *mut Tiles = &mut *self.got;
        // SAFETY: as in load(); the stores write TILE_BYTES bytes per tile into `got` and 64
        // bytes into `got_cfg`.
        unsafe {
            asm!(
                ".irp n,0,1,2,3,4,5,6,7",
                "tilestored [{data} + {stride}*1 + \\n*{tile}], tmm\\n",
                ".endr",
                "sttilecfg [{cfg}]",
                "tilerelease",
                cfg = in(reg) cfg,
                data = in(reg) data,
                stride = in(reg) COLSB,
                tile = const TILE_BYTES,
                options(nostack),
            );
        }
    }

    fn verify(&self, chk: &mut Check) {
        if self.got_cfg != self.cfg {
            fail!(
                chk,
                "amx: {} tile configuration after restore: palette {} rows {:?} colsb {:?}",
                self.name,
                self.got_cfg.palette,
                self.got_cfg.rows,
                self.got_cfg.colsb
            );
            return;
        }
        for t in 0..TILES {
            let (e, g) = (&self.expect.0[t], &self.got.0[t]);
            if let Some(i) = e.iter().zip(g.iter()).position(|(a, b)| a != b) {
                fail!(
                    chk,
                    "amx: {} tmm{t} byte {i} is {:#04x}, expected {:#04x}",
                    self.name,
                    g[i],
                    e[i]
                );
                return;
            }
        }
    }
}

/// Whether this CPU and kernel offer AMX tiles: CPUID.7.0:EDX[24] (AMX-TILE) and XCR0 bits
/// 17 and 18 (the OS manages TILECFG and TILEDATA).
pub fn available() -> bool {
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    let leaf1 = std::arch::x86_64::__cpuid_count(1, 0);
    if leaf1.ecx & (1 << 27) == 0 {
        return false; // no OSXSAVE: XGETBV would fault
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so XGETBV with ECX=0 is allowed.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    let xcr0 = (u64::from(hi) << 32) | u64::from(lo);
    xcr0 & (3 << 17) == 3 << 17
}

/// The threads' shared counters: how many loaded their tiles, how many stored them, and
/// whether the main thread lets them end (a Rust thread unmaps its signal stack when it ends,
/// which must not happen before the main thread compared /proc/self/maps).
struct Sync {
    loaded: AtomicU32,
    done: AtomicU32,
    release: AtomicU32,
}

pub struct Amx {
    main: TileState,
    threads: Vec<std::thread::JoinHandle<TileState>>,
    sync: Arc<Sync>,
}

impl Amx {
    pub fn new(go: &CString) -> Result<Amx, String> {
        if !available() {
            return Err("this CPU has no AMX tiles (CPUID AMX-TILE, XCR0 bits 17-18)".into());
        }
        // SAFETY: arch_prctl with integer arguments.
        if unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        } != 0
        {
            return Err(format!(
                "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA): errno {}",
                sys::errno()
            ));
        }
        let mut perm = 0u64;
        // SAFETY: the kernel writes a u64 into `perm`.
        if unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut perm) } != 0
            || perm & (1 << XFEATURE_XTILEDATA) == 0
        {
            return Err(format!("ARCH_GET_XCOMP_PERM gives {perm:#x}"));
        }
        let sync = Arc::new(Sync {
            loaded: AtomicU32::new(0),
            done: AtomicU32::new(0),
            release: AtomicU32::new(0),
        });
        let names = ["thread 1", "thread 2"];
        let mut threads = Vec::with_capacity(THREADS);
        for (i, name) in names.into_iter().enumerate() {
            let mut state = TileState::new(name, 0xa3c5_0000_0000_0001 + i as u64 * 0x1000);
            let sync = Arc::clone(&sync);
            let go = go.clone();
            threads.push(std::thread::spawn(move || {
                state.load();
                sync.loaded.fetch_add(1, Ordering::SeqCst);
                sys::wait_for(&go);
                state.store();
                sync.done.fetch_add(1, Ordering::SeqCst);
                while sync.release.load(Ordering::SeqCst) == 0 {
                    sys::sleep_ms(1);
                }
                state
            }));
        }
        while sync.loaded.load(Ordering::SeqCst) < THREADS as u32 {
            sys::sleep_ms(1);
        }
        Ok(Amx {
            main: TileState::new("main thread", 0x7e57_0000_0000_00a1),
            threads,
            sync,
        })
    }
}

impl Part for Amx {
    /// The main thread's tiles, right before the maps snapshot and ready.
    fn before_ready(&mut self) {
        self.main.load();
    }

    fn verify(&mut self, chk: &mut Check) {
        self.main.store();
        self.main.verify(chk);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.sync.done.load(Ordering::SeqCst) < THREADS as u32 {
            if std::time::Instant::now() > deadline {
                fail!(chk, "amx: the threads did not finish after go");
                return;
            }
            sys::sleep_ms(1);
        }
        self.sync.release.store(1, Ordering::SeqCst);
        for handle in self.threads.drain(..) {
            match handle.join() {
                Ok(state) => state.verify(chk),
                Err(_) => fail!(chk, "amx: a thread panicked"),
            }
        }
    }
}
