//! A queue of labelled system calls run by the parasite in the task being restored, flushed as
//! whole batches (one ptrace round trip each); a failure names the step.

use anyhow::{Result, bail};

use crate::parasite::{Batch, Parasite};
use crate::ptrace::Regs;

pub struct Steps<'a> {
    parasite: &'a mut Parasite,
    /// Another thread of the process to run the batches in, with its registers.
    thread: Option<(i32, Regs)>,
    batch: Batch,
    labels: Vec<String>,
    expected: Vec<Option<i64>>,
    pub batches_run: usize,
}

impl<'a> Steps<'a> {
    pub fn new(parasite: &'a mut Parasite) -> Steps<'a> {
        let batch = parasite.batch();
        Steps {
            parasite,
            thread: None,
            batch,
            labels: Vec::new(),
            expected: Vec::new(),
            batches_run: 0,
        }
    }

    /// Steps run by thread `tid` (stopped, with registers `regs`) instead of the leader.
    pub fn new_in_thread(parasite: &'a mut Parasite, tid: i32, regs: Regs) -> Steps<'a> {
        let mut steps = Steps::new(parasite);
        steps.thread = Some((tid, regs));
        steps
    }

    /// Makes sure the next `commands` commands and `bytes` of data go into one batch.
    pub fn room(&mut self, commands: usize, bytes: usize) -> Result<()> {
        if !self.batch.has_room(commands, bytes) {
            self.flush()?;
        }
        Ok(())
    }

    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        self.batch.put(bytes)
    }

    pub fn put_u64s(&mut self, words: &[u64]) -> u64 {
        self.batch.put_u64s(words)
    }

    pub fn put_cstr(&mut self, text: &str) -> u64 {
        self.batch.put_cstr(text)
    }

    pub fn add(&mut self, label: impl Into<String>, nr: i64, args: &[u64]) {
        self.batch.syscall(nr, args);
        self.labels.push(label.into());
        self.expected.push(None);
    }

    /// A step that may fail without failing the restore (an optimisation).
    pub fn add_may_fail(&mut self, label: impl Into<String>, nr: i64, args: &[u64]) {
        self.batch.syscall_may_fail(nr, args);
        self.labels.push(label.into());
        self.expected.push(None);
    }

    /// A step whose result must be exactly `expected` (a full read, say).
    pub fn add_expect(&mut self, label: impl Into<String>, nr: i64, args: &[u64], expected: i64) {
        self.add(label, nr, args);
        *self.expected.last_mut().unwrap() = Some(expected);
    }

    pub fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let pid = self.parasite.tid;
        let result = match self.thread {
            Some((tid, regs)) => self.parasite.run_in_thread(tid, &regs, &self.batch)?,
            None => self.parasite.run(&self.batch)?,
        };
        self.batches_run += 1;
        if let Some((index, errno)) = result.failure() {
            bail!(
                "pid {pid}: {} failed: {}",
                self.labels[index],
                std::io::Error::from_raw_os_error(errno)
            );
        }
        for (index, expected) in self.expected.iter().enumerate() {
            if let Some(expected) = expected
                && result.results[index] != *expected
            {
                bail!(
                    "pid {pid}: {} returned {}, expected {expected}",
                    self.labels[index],
                    result.results[index]
                );
            }
        }
        self.batch = self.parasite.batch();
        self.labels.clear();
        self.expected.clear();
        Ok(())
    }
}
