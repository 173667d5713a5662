//! Child processes that die with `causeway dev`, even when it is killed with SIGKILL.
//!
//! `causeway dev` does not start nats-server, the sidecars or the demo apps directly but through
//! the hidden subcommand `causeway __child --parent PID -- PROGRAM ARGS...`, which asks the
//! kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), checks that the parent is still
//! `PID`, and then replaces itself with `PROGRAM` (`execve` keeps the parent-death signal). So
//! the children stop cleanly on SIGTERM whichever way `causeway dev` ends. This needs no
//! `unsafe` (no `pre_exec` hook): the setting is made by the child on itself. The parent-death
//! signal is Linux's; elsewhere the program runs untethered (stop dev with Ctrl-C or SIGTERM).
//!
//! The kernel sends the signal when the *thread* that spawned the child exits, not the process.
//! So `causeway dev` spawns its children on the main thread: `main` runs the subcommand there
//! with `block_on`, that thread lives exactly as long as the process, and
//! `tokio::process::Command::spawn` forks on the calling thread. A runtime worker would do too;
//! a blocking-pool thread would not: it exits after being idle for a while, and the children it
//! spawned would get SIGTERM with it.

use std::{ffi::OsString, os::unix::process::CommandExt, path::Path, process::ExitCode};

use clap::Args;

/// Exit code when the program cannot be run (as a shell says "command not found").
const EXIT_CANNOT_EXEC: u8 = 127;

/// Flags of the hidden `causeway __child`.
#[derive(Debug, Args)]
pub struct ChildArgs {
    /// The process this one must die with; when it is already gone, the program is not started.
    #[arg(long)]
    pub parent: u32,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// Runs in the child before any other thread exists (no async runtime): the parent-death
/// signal is a setting of the calling thread, and it must be the thread that execs.
pub fn run(a: ChildArgs) -> ExitCode {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        eprintln!("error: cannot ask for a parent-death signal: {e}");
        return ExitCode::from(crate::EXIT_NOT_READY);
    }
    let (program, args) = a.command.split_first().expect("clap requires a command");
    // The parent may have died between our fork and the prctl; then no signal would come, and
    // we would have been re-parented already.
    if std::os::unix::process::parent_id() != a.parent {
        eprintln!("error: parent process {} is gone; not starting {}", a.parent, Path::new(program).display());
        return ExitCode::from(crate::EXIT_NOT_READY);
    }
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("error: cannot run {}: {err}", Path::new(program).display());
    ExitCode::from(EXIT_CANNOT_EXEC)
}

/// A command that runs `program` as a child that receives SIGTERM when this process dies.
/// `causeway` is this very binary (`std::env::current_exe`). Spawn it from the main thread
/// (see the module docs).
pub fn command(causeway: &Path, program: &Path) -> tokio::process::Command {
    debug_assert_eq!(
        std::thread::current().name(),
        Some("main"),
        "tethered children die with the thread that spawns them: spawn from the main thread"
    );
    let mut cmd = tokio::process::Command::new(causeway);
    cmd.arg("__child").arg("--parent").arg(std::process::id().to_string()).arg("--").arg(program);
    cmd
}
