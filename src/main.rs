//! The rcr command line: parse, call the library, turn errors into one line and an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rcr::dump::{AfterDump, DumpOptions};
use rcr::image::proto::ExternalUnix;
use rcr::restore::RestoreOptions;

#[derive(Parser)]
#[command(
    name = "rcr",
    version,
    about = "Checkpoint and restore Linux processes",
    after_help = "\
Exit status:
  0  done
  1  failed: an error from the system, a damaged image...
  2  bad command line
  3  refused: rcr will not do it as asked and changed nothing (the tree holds something
     rcr does not support, an option is missing, or the image directory is not one to
     use; the message says which)
  rcr restore without --detach exits with the restored tree's own status once it runs
  (128+N when signal N killed it).

Privileges: run as root (CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE, and CAP_SYS_PTRACE;
more to restore other credentials or rlimits): `rcr check` tells what this machine allows."
)]
struct Cli {
    /// More detail on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Write the log to FILE instead of stderr.
    #[arg(short = 'o', long = "log-file", global = true, value_name = "FILE")]
    log_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExternalUnixMode {
    Reconnect,
    Disconnect,
}

#[derive(Subcommand)]
enum Command {
    /// Dump a process into a directory of images.
    Dump {
        /// The process to dump.
        #[arg(short = 't', long = "tree", value_name = "PID")]
        pid: i32,
        /// The image directory: created if missing; one that already holds rcr images is
        /// refused (use an empty or new directory).
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Let the process run on after the dump instead of killing it.
        #[arg(long, conflicts_with = "leave_stopped")]
        leave_running: bool,
        /// Leave the process stopped (SIGSTOP) after the dump.
        #[arg(long)]
        leave_stopped: bool,
        /// What to do with unix sockets whose peer is outside the dumped tree (refused
        /// without this): connect again to the peer's address at restore, or restore them
        /// as if the peer had closed its end.
        #[arg(long, value_name = "MODE")]
        external_unix: Option<ExternalUnixMode>,
        /// The process is a job started from a shell: save its fds on the shell's terminal
        /// (and that controlling terminal) as "the external terminal".
        #[arg(long)]
        shell_job: bool,
    },
    /// Restore a process from a directory of images.
    Restore {
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Return as soon as the process runs, instead of waiting for it to exit.
        #[arg(short, long)]
        detach: bool,
        /// Write the restored root's PID to FILE.
        #[arg(long, value_name = "FILE")]
        pidfile: Option<PathBuf>,
        /// Restore into a new PID namespace: the tree keeps its original PIDs inside it,
        /// under a small init of rcr's that exits with the root's status.
        #[arg(long)]
        pidns: bool,
        /// Restore even if regular files the processes have open changed size since the dump.
        #[arg(long)]
        ignore_file_size: bool,
        /// A job dumped with --shell-job: give it the terminal rcr runs on (its stdin) in
        /// place of the one it had, in rcr's session, in the foreground if it was.
        #[arg(long)]
        shell_job: bool,
        /// Wait up to SECS for the tree's pids to be freed when zombies hold them (a dumped
        /// tree its parent has not reaped yet); 0: refuse at once. A pid held by a live
        /// process is refused at once.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        pid_wait: f64,
        /// A pipe whose other end was outside the dumped tree (`job | cat > log`) becomes fd
        /// N, which rcr restore is given open (CRIU's form; repeat for each pipe). For a pipe
        /// the tree's end gets a description of its own on the pipe handed in.
        #[arg(long, value_name = "fd[N]:pipe:[INODE]")]
        inherit_fd: Vec<String>,
        /// Or it becomes /dev/null (a read end first reads what was unread at the dump).
        #[arg(long, value_name = "pipe:[INODE]=null")]
        external_pipe: Vec<String>,
    },
    /// Show which kernel features rcr needs and whether this machine has them.
    Check,
    /// Decode every image of a directory.
    Show {
        dir: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    // The fds given to restore, checked before rcr opens anything (a log file could take
    // the number of one the caller forgot).
    let mut inherit_fds = Vec::new();
    if let Command::Restore { inherit_fd, .. } = &cli.command {
        for spec in inherit_fd {
            let (fd, inode) = rcr::restore::files::parse_inherit_fd(spec)?;
            if !rcr::sys::fd::is_open(fd) {
                anyhow::bail!("--inherit-fd {spec}: fd {fd} is not open in rcr restore");
            }
            inherit_fds.push((fd, inode));
        }
    }
    let log_file = match &cli.log_file {
        Some(path) => Some(std::fs::File::create(path)?),
        None => None,
    };
    rcr::log::init(cli.verbose, log_file);
    match cli.command {
        Command::Dump {
            pid,
            dir,
            leave_running,
            leave_stopped,
            external_unix,
            shell_job,
        } => {
            let after = if leave_running {
                AfterDump::LeaveRunning
            } else if leave_stopped {
                AfterDump::LeaveStopped
            } else {
                AfterDump::Kill
            };
            let external_unix = match external_unix {
                None => ExternalUnix::Refuse,
                Some(ExternalUnixMode::Reconnect) => ExternalUnix::Reconnect,
                Some(ExternalUnixMode::Disconnect) => ExternalUnix::Disconnect,
            };
            rcr::dump::dump(&DumpOptions {
                pid,
                dir,
                after,
                external_unix,
                shell_job,
            })?;
            Ok(0)
        }
        Command::Restore {
            dir,
            detach,
            pidfile,
            pidns,
            ignore_file_size,
            shell_job,
            pid_wait,
            inherit_fd: _,
            external_pipe,
        } => {
            if !(0.0..=86400.0).contains(&pid_wait) {
                anyhow::bail!("--pid-wait {pid_wait}: expected seconds from 0 to 86400");
            }
            let external_pipes = external_pipe
                .iter()
                .map(|spec| rcr::restore::files::parse_external_pipe(spec))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let code = rcr::restore::restore(&RestoreOptions {
                dir,
                detach,
                pidfile,
                pidns,
                ignore_file_size,
                shell_job,
                pid_wait: std::time::Duration::from_secs_f64(pid_wait),
                inherit_fds,
                external_pipes,
            })?;
            Ok(code.clamp(0, 255) as u8)
        }
        Command::Check => Ok(if rcr::check::check()? { 0 } else { 1 }),
        Command::Show { dir, json } => {
            rcr::show::show(&dir, json)?;
            Ok(0)
        }
    }
}

/// rcr's own high-water mark of resident memory, from /proc/self/status.
fn peak_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let result = run(Cli::parse());
    rcr::log::info(&format!("peak memory {} KiB", peak_memory_kib()));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // One line: the outermost context and its causes, joined.
            let causes: Vec<String> = err.chain().map(|c| c.to_string()).collect();
            eprintln!("rcr: {}", causes.join(": "));
            ExitCode::from(if rcr::error::is_refusal(&err) {
                rcr::error::EXIT_REFUSED
            } else {
                rcr::error::EXIT_FAILURE
            })
        }
    }
}
