//! rcr: checkpoint and restore of Linux processes.

pub mod check;
pub mod dump;
pub mod error;
pub mod image;
pub mod log;
pub mod parasite;
pub mod ptrace;
pub mod restore;
pub mod show;
pub mod sys;
