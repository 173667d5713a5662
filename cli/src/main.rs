//! `causeway`: apply manifests to NATS JetStream, run a local dev environment, replay dead
//! letters, generate CRDs.
#![forbid(unsafe_code)]

mod apply;
mod deadletters;
mod demo_app;
mod dev;
mod nats;
mod operator;
mod signal;
mod status;
mod tail;
mod tether;
mod trace;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Exit code for invalid input (manifests, flags): nothing was changed.
pub const EXIT_INVALID: u8 = 2;
/// Exit code when something was not applied or is not ready.
pub const EXIT_NOT_READY: u8 = 1;

/// Prints a line on stdout now (flushed), so whoever watches, or a run that is killed later,
/// sees it. A closed stdout (the terminal went away, `| head`) must not stop the work half-way.
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Causeway: a unified event space on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "causeway", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate manifests and reconcile them into JetStream streams, KV buckets and consumers.
    ///
    /// Prints one line per object: created, updated, unchanged or error. Exits 0 only when
    /// everything is applied and ready, 1 when something is not, 2 when a manifest is invalid
    /// (then nothing is changed).
    Apply(apply::ApplyArgs),
    /// Show every EventStore, Node and Listener: Ready, reason, JetStream names and figures.
    ///
    /// From NATS (read-only dry runs of the registry's records) or, with --kube/--kubeconfig,
    /// from the objects' Kubernetes status. Exits 0 when everything shown is ready, 1 when not
    /// (or NATS/Kubernetes cannot be reached), 2 for bad flags or filters.
    Status(status::StatusArgs),
    /// Show the causal tree of one operation: every event of a correlation id across the inboxes
    /// and stores of a namespace, with stream, sequence, Lamport time and what each listener did
    /// with it (delivered, retried, dead-lettered, pending); --svg also draws it.
    Trace(trace::TraceArgs),
    /// List, show and replay a Listener's dead letters (-n NS LISTENER).
    ///
    /// Replay sends events back to the Listener's source, for that Listener only, with their
    /// id, causal context and replayOf; a dead letter is replayed once, and kept (marked) unless
    /// --delete. See `causeway deadletters --help` for examples and exit codes.
    #[command(name = "deadletters")]
    DeadLetters(deadletters::DeadLettersArgs),
    /// Follow a store, a node's inbox or a whole namespace live, with each event's causal fields.
    ///
    /// `kubectl logs -f` for the event space: shows the last 10 matching events (or what --since
    /// asks for), then follows. Reads with ephemeral ordered consumers, so it leaves nothing
    /// behind in JetStream and never moves a Listener. Exits 2 for bad flags, 1 when NATS or the
    /// target cannot be read.
    Tail(tail::TailArgs),
    /// Run Causeway locally: a nats-server (data in ./.causeway), the examples applied,
    /// one sidecar per Node, and the demo apps. Ctrl-C stops everything.
    Dev(dev::DevArgs),
    /// Write the CRDs generated from the types (crds/*.yaml, and the Helm chart's copy in
    /// charts/causeway/crds/ when the chart is there).
    Crdgen {
        /// Directory to write to, or `-` for stdout.
        #[arg(long, short, default_value = "crds")]
        out: PathBuf,
    },
    /// Run the Kubernetes operator: reconcile EventStore, Node and Listener objects of the cluster
    /// into JetStream, with status, events, leader election, health and metrics.
    Operator(Box<operator::OperatorArgs>),
    /// A tiny app for the demo: logs every pushed event and optionally replies with events.
    DemoApp(demo_app::DemoAppArgs),
    /// Internal: runs a program that gets SIGTERM when the parent process dies (used by `dev`).
    #[command(name = "__child", hide = true)]
    Child(tether::ChildArgs),
}

fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CAUSEWAY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("CAUSEWAY_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A long-running operator says what it does; the one-shot commands only warn.
    init_tracing(if matches!(cli.command, Command::Operator(_)) { "info" } else { "warn" });
    match cli.command {
        // Before any runtime thread exists: the child execs from this, its only thread.
        Command::Child(c) => tether::run(c),
        Command::Crdgen { out } => crdgen(&out),
        Command::Apply(a) => block_on(apply::run(a)),
        Command::Dev(d) => block_on(dev::run(d)),
        Command::Status(s) => block_on(status::run(s)),
        Command::Trace(t) => block_on(trace::run(t)),
        Command::DeadLetters(d) => block_on(deadletters::run(d)),
        Command::Tail(t) => block_on(tail::run(t)),
        Command::DemoApp(a) => block_on(demo_app::run(a)),
        Command::Operator(a) => block_on(operator::run(*a)),
    }
}

/// Runs a subcommand on a multi-threaded runtime, on this, the main thread: `dev` spawns its
/// children here, and they die with the thread that spawned them (see tether.rs).
fn block_on(subcommand: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(subcommand),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_NOT_READY)
        }
    }
}

fn crdgen(out: &std::path::Path) -> ExitCode {
    let files = causeway_operator::crdgen::render();
    if out.as_os_str() == "-" {
        for (_, yaml) in files {
            print!("---\n{yaml}");
        }
        return ExitCode::SUCCESS;
    }
    // The Helm chart carries the same bytes: written too when it sits beside `out`.
    let chart = out.parent().unwrap_or(std::path::Path::new(".")).join("charts/causeway/crds");
    let mut dirs = vec![out.to_path_buf()];
    if out.file_name().is_some_and(|n| n == "crds") && chart.parent().is_some_and(|p| p.is_dir()) {
        dirs.push(chart);
    }
    for dir in dirs {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("error: cannot create {}: {e}", dir.display());
            return ExitCode::from(EXIT_NOT_READY);
        }
        for (name, yaml) in &files {
            let p = dir.join(name);
            if let Err(e) = std::fs::write(&p, yaml) {
                eprintln!("error: cannot write {}: {e}", p.display());
                return ExitCode::from(EXIT_NOT_READY);
            }
            println!("wrote {}", p.display());
        }
    }
    ExitCode::SUCCESS
}
