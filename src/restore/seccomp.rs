//! seccomp filters, installed in each thread as the very last step (the tracee is traced with
//! PTRACE_O_SUSPEND_SECCOMP, so the filters cannot block what the restorer still does).

use anyhow::Result;

use super::steps::Steps;
use crate::image::proto::Seccomp;

const SECCOMP_SET_MODE_STRICT: u64 = 0;
const SECCOMP_SET_MODE_FILTER: u64 = 1;

pub fn restore(steps: &mut Steps, seccomp: &Seccomp) -> Result<()> {
    match seccomp.mode {
        1 => {
            steps.room(1, 0)?;
            steps.add(
                "seccomp strict mode",
                libc::SYS_seccomp,
                &[SECCOMP_SET_MODE_STRICT, 0, 0],
            );
        }
        2 => {
            for (index, program) in seccomp.filters.iter().enumerate() {
                steps.room(1, program.len() + 32)?;
                let filter = steps.put(program);
                // struct sock_fprog: unsigned short len (instructions), then the pointer.
                let fprog = steps.put_u64s(&[(program.len() / 8) as u64, filter]);
                steps.add(
                    format!("seccomp filter {index}"),
                    libc::SYS_seccomp,
                    &[SECCOMP_SET_MODE_FILTER, 0, fprog],
                );
            }
        }
        _ => {}
    }
    Ok(())
}
