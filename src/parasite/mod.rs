//! The parasite: a small blob injected into a stopped task that runs batches of system calls in
//! the task's own context, one ptrace round trip per batch. Dump uses it to drain memory and
//! read state no outside API offers; restore uses the same blob to build a task's address
//! space. The vocabulary: [`Parasite::infect`], [`Batch`], [`Parasite::run`] (or
//! [`Parasite::start`] + [`Parasite::finish`] to overlap with work on the host), and
//! [`Parasite::cure`].

pub mod blob;

/// The signal mask of a task while rcr works in it: everything blocked but SIGTRAP (the
/// parasite's own trap must not be blocked: the kernel would reset its disposition), so no
/// handler of the task runs in the middle.
pub const PARASITE_SIGMASK: u64 = !(1u64 << (libc::SIGTRAP - 1));

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail};
use nix::sys::ptrace;
use nix::sys::signal::Signal;

use crate::ptrace::{self as pt, Regs, Stop};

const PAGE: u64 = 4096;
/// Code page, then the data area: counter, commands, arena.
pub const CODE_SIZE: u64 = PAGE;
pub const DATA_SIZE: u64 = 2 << 20;
pub const REGION_SIZE: u64 = CODE_SIZE + DATA_SIZE;
const COMMANDS_OFFSET: u64 = 64;
const COMMANDS_SIZE: u64 = DATA_SIZE / 2 - COMMANDS_OFFSET;
const ARENA_OFFSET: u64 = DATA_SIZE / 2;
/// The top of the arena is kept free as a stack, should the kernel need one.
const STACK_RESERVE: u64 = 4096;
const ARENA_SIZE: u64 = DATA_SIZE / 2 - STACK_RESERVE;

/// A batch of system calls with the data they point at, laid out for one parasite run.
pub struct Batch {
    data: u64,
    commands: Vec<[u64; blob::COMMAND_WORDS]>,
    arena: Vec<u8>,
}

impl Batch {
    fn new(data: u64) -> Batch {
        Batch {
            data,
            commands: Vec::new(),
            arena: Vec::new(),
        }
    }

    /// Room left for `commands` more commands and `bytes` more bytes of arena data?
    pub fn has_room(&self, commands: usize, bytes: usize) -> bool {
        let used = (self.commands.len() + commands + 1) as u64 * blob::COMMAND_BYTES;
        used <= COMMANDS_SIZE && (self.arena.len() + bytes + 16) as u64 <= ARENA_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Adds a system call; returns its index in the batch.
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> usize {
        self.syscall_flags(nr, args, 0)
    }

    /// Adds a system call whose failure is recorded but does not stop the batch.
    pub fn syscall_may_fail(&mut self, nr: i64, args: &[u64]) -> usize {
        self.syscall_flags(nr, args, blob::FLAG_IGNORE_ERROR)
    }

    pub fn syscall_flags(&mut self, nr: i64, args: &[u64], flags: u64) -> usize {
        assert!(args.len() <= 6 && (0..0xffff).contains(&nr));
        let mut command = [0u64; blob::COMMAND_WORDS];
        command[0] = nr as u64 | flags;
        command[1..1 + args.len()].copy_from_slice(args);
        self.commands.push(command);
        self.commands.len() - 1
    }

    /// Copies `bytes` into the arena; returns their address in the task.
    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        while !self.arena.len().is_multiple_of(16) {
            self.arena.push(0);
        }
        let address = self.data + ARENA_OFFSET + self.arena.len() as u64;
        self.arena.extend_from_slice(bytes);
        address
    }

    /// Reserves `len` zeroed bytes in the arena (an output buffer); returns their address.
    pub fn reserve(&mut self, len: usize) -> u64 {
        self.put(&vec![0u8; len])
    }

    pub fn put_u64s(&mut self, words: &[u64]) -> u64 {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.put(&bytes)
    }

    /// A NUL-terminated string in the arena.
    pub fn put_cstr(&mut self, text: &str) -> u64 {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        self.put(&bytes)
    }
}

/// What a batch returned: one result per command that ran.
pub struct BatchResult {
    pub results: Vec<i64>,
    /// Commands that completed (a failure stops the batch at that index).
    pub completed: usize,
    total: usize,
}

impl BatchResult {
    /// The first failure of the batch, as (index, errno).
    pub fn failure(&self) -> Option<(usize, i32)> {
        (self.completed < self.total).then(|| {
            let result = self.results[self.completed];
            (self.completed, (-result) as i32)
        })
    }
}

/// A parasite living in a stopped task.
pub struct Parasite {
    pub tid: i32,
    pub base: u64,
    mem: File,
    /// Registers the batches run with (the task's own, with rip/rsp/rbx/r12 replaced).
    regs: Regs,
    /// The thread running a batch, and the batch's number of commands.
    running: Option<(i32, usize)>,
    /// Whether the blob's code is in place and executable.
    stub_ready: bool,
}

impl Parasite {
    /// Maps the parasite region into the stopped task `tid` (at `at`, when given, with
    /// MAP_FIXED_NOREPLACE) and copies the blob in. `regs` are the task's current registers.
    pub fn infect(tid: i32, regs: &Regs, at: Option<u64>) -> Result<Parasite> {
        let mem = pt::open_mem(tid)?;
        let (addr, extra_flags) = match at {
            Some(addr) => (addr, libc::MAP_FIXED_NOREPLACE as u64),
            None => (0, 0),
        };
        let base = pt::inject_syscall_at_rip(
            tid,
            &mem,
            regs,
            libc::SYS_mmap,
            &[
                addr,
                REGION_SIZE,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | extra_flags,
                u64::MAX,
                0,
            ],
        )?;
        if let Some(err) = pt::syscall_error(base) {
            pt::set_regs(tid, regs)?;
            bail!("pid {tid}: cannot map the parasite: {err}");
        }
        let base = base as u64;
        let mut parasite = Parasite {
            tid,
            base,
            mem,
            regs: *regs,
            running: None,
            stub_ready: false,
        };
        if let Err(err) = parasite.install_code() {
            let _ = parasite.cure(regs);
            return Err(err);
        }
        Ok(parasite)
    }

    fn install_code(&mut self) -> Result<()> {
        let code = blob::assemble()?;
        self.mem
            .write_all_at(&code, self.base)
            .with_context(|| format!("pid {}: writing the parasite", self.tid))?;
        // The stub is not executable yet: this one still goes through the task's own code.
        let result = pt::inject_syscall_at_rip(
            self.tid,
            &self.mem,
            &self.regs,
            libc::SYS_mprotect,
            &[
                self.base,
                CODE_SIZE,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
            ],
        )?;
        if let Some(err) = pt::syscall_error(result) {
            bail!(
                "pid {}: cannot make the parasite executable: {err}",
                self.tid
            );
        }
        self.stub_ready = true;
        Ok(())
    }

    /// Runs one system call through the parasite's own `syscall` instruction.
    pub fn syscall(&self, nr: i64, args: &[u64]) -> Result<i64> {
        pt::run_syscall(
            self.tid,
            &self.regs,
            self.base + blob::SYSCALL_STUB,
            nr,
            args,
        )
    }

    pub fn data_base(&self) -> u64 {
        self.base + CODE_SIZE
    }

    pub fn end(&self) -> u64 {
        self.base + REGION_SIZE
    }

    pub fn batch(&self) -> Batch {
        Batch::new(self.data_base())
    }

    pub fn run(&mut self, batch: &Batch) -> Result<BatchResult> {
        self.start(batch)?;
        self.finish()
    }

    /// Runs a batch in another stopped thread `tid` of the same process (the code and data
    /// area are shared; batches run one at a time), starting from that thread's `regs`.
    pub fn run_in_thread(&mut self, tid: i32, regs: &Regs, batch: &Batch) -> Result<BatchResult> {
        self.start_in(tid, regs, batch)?;
        self.finish()
    }

    /// Writes the batch into the task and lets it run; [`Parasite::finish`] waits for it.
    pub fn start(&mut self, batch: &Batch) -> Result<()> {
        let regs = self.regs;
        self.start_in(self.tid, &regs, batch)
    }

    fn start_in(&mut self, tid: i32, base_regs: &Regs, batch: &Batch) -> Result<()> {
        assert!(self.running.is_none(), "a batch is already running");
        let data = self.data_base();
        let mut header = vec![0u8; COMMANDS_OFFSET as usize];
        for command in &batch.commands {
            for word in command {
                header.extend_from_slice(&word.to_le_bytes());
            }
        }
        let mut end = [0u64; blob::COMMAND_WORDS];
        end[0] = blob::END_OF_BATCH;
        for word in end {
            header.extend_from_slice(&word.to_le_bytes());
        }
        self.mem.write_all_at(&header, data)?;
        if !batch.arena.is_empty() {
            self.mem.write_all_at(&batch.arena, data + ARENA_OFFSET)?;
        }
        let mut regs = *base_regs;
        regs.rip = self.base + blob::BATCH_ENTRY;
        regs.rbx = data + COMMANDS_OFFSET;
        regs.r12 = data;
        regs.rsp = (self.end() - 256) & !15;
        regs.orig_rax = u64::MAX;
        pt::set_regs(tid, &regs)?;
        ptrace::cont(pt::pid(tid), None)?;
        self.running = Some((tid, batch.commands.len()));
        Ok(())
    }

    /// Whether the running batch has trapped, without blocking.
    pub fn poll_finished(&self) -> Result<bool> {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        // WNOWAIT leaves the stop to be collected by finish().
        let flags = WaitPidFlag::__WALL
            | WaitPidFlag::WNOHANG
            | WaitPidFlag::WNOWAIT
            | WaitPidFlag::WSTOPPED
            | WaitPidFlag::WEXITED;
        let tid = self.running.map_or(self.tid, |(tid, _)| tid);
        let status = waitid(Id::Pid(pt::pid(tid)), flags)?;
        Ok(!matches!(status, WaitStatus::StillAlive))
    }

    /// Waits for the running batch's int3 and reads its results.
    pub fn finish(&mut self) -> Result<BatchResult> {
        let (tid, total) = self.running.take().expect("no batch is running");
        let mut stop = pt::wait_stop(tid)?;
        // Job-control notifications (a SIGCONT queued back into the task, say) interrupt
        // the batch with an event stop: let it go on.
        while let Stop::Event(_) = stop {
            ptrace::cont(pt::pid(tid), None)?;
            stop = pt::wait_stop(tid)?;
        }
        match stop {
            Stop::Signal(Signal::SIGTRAP) => {}
            other => {
                let rip = pt::get_regs(tid).map(|r| r.rip).unwrap_or(0);
                bail!("tid {tid}: parasite stopped with {other:?} at {rip:#x} instead of its trap");
            }
        }
        let data = self.data_base();
        let mut counter = [0u8; 8];
        self.mem.read_exact_at(&mut counter, data)?;
        let completed = u64::from_le_bytes(counter) as usize;
        let ran = (completed + 1).min(total);
        let mut raw = vec![0u8; ran * blob::COMMAND_BYTES as usize];
        self.mem.read_exact_at(&mut raw, data + COMMANDS_OFFSET)?;
        let results = raw
            .chunks_exact(blob::COMMAND_BYTES as usize)
            .map(|c| i64::from_le_bytes(c[56..64].try_into().unwrap()))
            .collect();
        Ok(BatchResult {
            results,
            completed,
            total,
        })
    }

    /// Runs the blob's [`blob::TILE_TOUCH`] routine in stopped thread `tid` (of this
    /// process, with registers `regs`): one AMX tile instruction, so that the kernel enlarges
    /// the thread's register save area for the tile data. The process must have the AMX
    /// permission (ARCH_REQ_XCOMP_PERM), or the thread gets SIGILL.
    pub fn touch_tiles(&mut self, tid: i32, regs: &Regs) -> Result<()> {
        assert!(self.running.is_none(), "a batch is running");
        // Palette 1, tile 0 of one row of 4 bytes: the smallest valid configuration.
        let mut config = [0u8; 64];
        config[0] = 1;
        config[16..18].copy_from_slice(&4u16.to_le_bytes());
        config[48] = 1;
        let at = self.data_base() + ARENA_OFFSET;
        self.mem.write_all_at(&config, at)?;
        let mut run = *regs;
        run.rip = self.base + blob::TILE_TOUCH;
        run.rbx = at;
        run.rsp = (self.end() - 256) & !15;
        run.orig_rax = u64::MAX;
        pt::set_regs(tid, &run)?;
        ptrace::cont(pt::pid(tid), None)?;
        let mut stop = pt::wait_stop(tid)?;
        while let Stop::Event(_) = stop {
            ptrace::cont(pt::pid(tid), None)?;
            stop = pt::wait_stop(tid)?;
        }
        match stop {
            Stop::Signal(Signal::SIGTRAP) => Ok(()),
            other => {
                let rip = pt::get_regs(tid).map(|r| r.rip).unwrap_or(0);
                bail!("tid {tid}: AMX tile touch stopped with {other:?} at {rip:#x}")
            }
        }
    }

    /// Reads bytes the batch left in the arena (output buffers).
    pub fn read(&self, address: u64, len: usize) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        self.mem.read_exact_at(&mut bytes, address)?;
        Ok(bytes)
    }

    pub fn read_u64(&self, address: u64) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.read(address, 8)?.try_into().unwrap(),
        ))
    }

    /// Unmaps the parasite and puts `final_regs` into the task.
    pub fn cure(self, final_regs: &Regs) -> Result<()> {
        let args = [self.base, REGION_SIZE];
        let result = if self.stub_ready {
            self.syscall(libc::SYS_munmap, &args)?
        } else {
            pt::inject_syscall_at_rip(self.tid, &self.mem, &self.regs, libc::SYS_munmap, &args)?
        };
        if let Some(err) = pt::syscall_error(result) {
            bail!("pid {}: cannot unmap the parasite: {err}", self.tid);
        }
        pt::set_regs(self.tid, final_regs)
    }
}
