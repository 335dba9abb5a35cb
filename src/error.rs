//! Two kinds of error, told apart by rcr's exit code: a refusal (rcr will not do what was
//! asked, on purpose, and changed nothing: the tree holds something rcr does not support, an
//! option is missing, or the image directory is not one to use) and a failure (anything else:
//! the system said no, an image is damaged...). A refusal is a [`Refusal`] anywhere in an
//! `anyhow::Error`'s chain, made with [`refuse!`](crate::refuse) or
//! [`refusal!`](crate::refusal); context added on the way up keeps it one.

/// rcr will not do what was asked (see the module doc); the message says what and, where
/// there is one, the option to use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Exit code of a failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error (clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a refusal.
pub const EXIT_REFUSED: u8 = 3;

/// Whether `err`, or any error it wraps, is a refusal.
pub fn is_refusal(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Refusal>())
}

/// A refusal as an `anyhow::Error`, from format arguments.
#[macro_export]
macro_rules! refusal {
    ($($arg:tt)*) => {
        ::anyhow::Error::new($crate::error::Refusal(format!($($arg)*)))
    };
}

/// Returns a refusal from the current function (like `anyhow::bail!`).
#[macro_export]
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err($crate::refusal!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::{Context, Result};

    fn refused() -> Result<()> {
        crate::refuse!("pid {} fd {}: not supported", 7, 3);
    }

    #[test]
    fn a_refusal_stays_one_under_context() {
        let err = refused().context("dumping").context("outer").unwrap_err();
        assert!(is_refusal(&err));
        let line: Vec<String> = err.chain().map(|c| c.to_string()).collect();
        assert_eq!(line.join(": "), "outer: dumping: pid 7 fd 3: not supported");
    }

    #[test]
    fn other_errors_are_failures() {
        let err = anyhow::anyhow!("no such process").context("dumping");
        assert!(!is_refusal(&err));
    }
}
