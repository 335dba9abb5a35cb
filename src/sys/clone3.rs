//! clone3(2) with set_tid: a child created with the PID it had when it was dumped.

use std::io;
use std::mem::size_of;

use super::check;

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks (no shared memory, like fork(2)) a child whose PID is `pid`, runs `child` in it and
/// exits the child with the code it returns. Returns the child's PID in the parent.
///
/// The child is a copy of a process with one thread: rcr checks that it has only one before
/// forking, so `child` may use anything the parent left in a consistent state; it should still
/// keep to plain system calls.
pub fn clone_with_pid(pid: i32, child: impl FnOnce() -> i32) -> io::Result<i32> {
    clone_with(0, Some(pid), child)
}

/// Forks a child that is pid 1 of a new PID namespace, in a new mount namespace (so that it
/// can mount a /proc of its own); otherwise like [`clone_with_pid`].
pub fn clone_into_new_pid_namespace(child: impl FnOnce() -> i32) -> io::Result<i32> {
    clone_with((libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64, None, child)
}

fn clone_with(flags: u64, pid: Option<i32>, child: impl FnOnce() -> i32) -> io::Result<i32> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "clone3 from a process with {threads} threads is unsafe"
        )));
    }
    let set_tid: [libc::pid_t; 1] = [pid.unwrap_or(0)];
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid.is_some() {
            set_tid.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the address space like fork(2); the child runs
    // `child` on its own copy and never returns from this function.
    let ret = check(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    })?;
    if ret == 0 {
        let code = child();
        // SAFETY: _exit ends the child without running the parent's exit handlers twice.
        unsafe { libc::_exit(code) }
    }
    Ok(ret as i32)
}
