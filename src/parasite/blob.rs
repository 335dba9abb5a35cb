//! The parasite blob: a few dozen bytes of position-independent x86_64 code, assembled with
//! iced-x86, that runs a batch of system calls inside the task it is injected into.
//!
//! Layout:
//! - offset [`SYSCALL_STUB`]: `syscall; int3`, an instruction the host points RIP at to run one
//!   system call with PTRACE_SYSCALL stops;
//! - offset [`BATCH_ENTRY`]: the batch runner.
//!
//! The batch runner takes `rbx` = address of the first command and `r12` = address of a
//! counter. A command is eight u64 words: number (with flag bits), six arguments, result. The
//! list ends with a number of -1. Each command's result is stored in its last word; the counter
//! is incremented for each command that succeeded (or failed with [`FLAG_IGNORE_ERROR`]); the
//! first failure ends the batch. The batch always ends with `int3`, which the host catches.
//!
//! At [`TILE_TOUCH`], a routine for restoring AMX state: `ldtilecfg [rbx]; tilezero tmm0;
//! tilerelease; int3`. Its first tile instruction makes the kernel give the thread room for
//! the tile data (the XFD fault of a thread with the permission), which it needs before it
//! accepts an xstate that holds tile data; it runs only where the dumped state has tiles.
//!
//! With [`FLAG_REPEAT_IOVEC`], the second argument points at one `struct iovec` that is
//! advanced by each positive result and the call is repeated until the iovec is consumed: the
//! vmsplice of a large region into a pipe that holds only part of it at a time.

use anyhow::Result;
use iced_x86::code_asm::*;

pub const SYSCALL_STUB: u64 = 0;
pub const BATCH_ENTRY: u64 = 16;
pub const TILE_TOUCH: u64 = 2048;
pub const COMMAND_WORDS: usize = 8;
pub const COMMAND_BYTES: u64 = (COMMAND_WORDS * 8) as u64;
pub const END_OF_BATCH: u64 = u64::MAX;
pub const FLAG_REPEAT_IOVEC: u64 = 1 << 61;
pub const FLAG_IGNORE_ERROR: u64 = 1 << 62;
const NUMBER_MASK: i32 = 0xffff;

/// Assembles the blob. The code only uses relative branches, so it runs at any address.
pub fn assemble() -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    // SYSCALL_STUB
    a.syscall()?; // 2 bytes
    for _ in 2..BATCH_ENTRY {
        a.int3()?; // 1 byte each: the runner starts at BATCH_ENTRY
    }

    let mut top = a.create_label();
    let mut reissue = a.create_label();
    let mut check_error = a.create_label();
    let mut next = a.create_label();
    let mut failed = a.create_label();
    let mut done = a.create_label();

    a.set_label(&mut top)?;
    a.mov(rax, qword_ptr(rbx))?;
    a.cmp(rax, -1)?;
    a.je(done)?;
    a.mov(r13, rax)?;

    a.set_label(&mut reissue)?;
    a.mov(rax, r13)?;
    a.and(rax, NUMBER_MASK)?;
    a.mov(rdi, qword_ptr(rbx + 8))?;
    a.mov(rsi, qword_ptr(rbx + 16))?;
    a.mov(rdx, qword_ptr(rbx + 24))?;
    a.mov(r10, qword_ptr(rbx + 32))?;
    a.mov(r8, qword_ptr(rbx + 40))?;
    a.mov(r9, qword_ptr(rbx + 48))?;
    a.syscall()?;
    a.mov(qword_ptr(rbx + 56), rax)?;
    a.bt(r13, 61)?;
    a.jae(check_error)?; // CF clear: no repeat flag
    a.test(rax, rax)?;
    a.jle(check_error)?; // an error or no progress
    a.mov(rcx, qword_ptr(rbx + 16))?;
    a.add(qword_ptr(rcx), rax)?;
    a.sub(qword_ptr(rcx + 8), rax)?;
    a.jne(reissue)?;

    a.set_label(&mut check_error)?;
    a.cmp(rax, -4095)?;
    a.jae(failed)?; // unsigned: -4095..-1 are errors

    a.set_label(&mut next)?;
    a.inc(qword_ptr(r12))?;
    a.add(rbx, COMMAND_BYTES as i32)?;
    a.jmp(top)?;

    a.set_label(&mut failed)?;
    a.bt(r13, 62)?;
    a.jb(next)?; // CF set: errors are ignored for this command

    a.set_label(&mut done)?;
    a.int3()?;

    let mut code = a.assemble(0)?;
    assert!(code.len() <= TILE_TOUCH as usize);
    code.resize(TILE_TOUCH as usize, 0xcc);
    // ldtilecfg [rbx]; tilezero tmm0; tilerelease; int3 (VEX encodings, as GNU as gives them).
    code.extend_from_slice(&[
        0xc4, 0xe2, 0x78, 0x49, 0x03, // ldtilecfg [rbx]
        0xc4, 0xe2, 0x7b, 0x49, 0xc0, // tilezero tmm0
        0xc4, 0xe2, 0x78, 0x49, 0xc0, // tilerelease
        0xcc, // int3
    ]);
    debug_assert!(code.len() < 4096);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter, Mnemonic};

    #[test]
    fn stub_and_entry_are_where_the_host_expects_them() {
        let code = assemble().unwrap();
        assert_eq!(&code[..3], &[0x0f, 0x05, 0xcc]);
        let mut decoder = Decoder::with_ip(64, &code[BATCH_ENTRY as usize..], BATCH_ENTRY, 0);
        let first = decoder.decode();
        assert_eq!(first.mnemonic(), Mnemonic::Mov);
    }

    #[test]
    fn tile_touch_decodes() {
        let code = assemble().unwrap();
        let decoder = Decoder::with_ip(64, &code[TILE_TOUCH as usize..], 0, 0);
        let mnemonics: Vec<Mnemonic> = decoder.into_iter().map(|i| i.mnemonic()).collect();
        assert_eq!(
            mnemonics,
            [
                Mnemonic::Ldtilecfg,
                Mnemonic::Tilezero,
                Mnemonic::Tilerelease,
                Mnemonic::Int3
            ]
        );
    }

    #[test]
    fn blob_is_position_independent() {
        // Assembled at two addresses, the bytes must be identical: only relative branches.
        let code = assemble().unwrap();
        let mut decoder = Decoder::with_ip(64, &code, 0x7000_0000, DecoderOptions::NONE);
        let mut formatter = IntelFormatter::new();
        let mut text = String::new();
        for instruction in &mut decoder {
            assert!(
                !instruction.is_ip_rel_memory_operand(),
                "no rip-relative data"
            );
            formatter.format(&instruction, &mut text);
            text.push('\n');
        }
        assert!(text.contains("syscall"));
        assert!(text.ends_with("int3\n"));
    }
}
