//! `causeway apply -f PATH... --nats URL`.

use std::{path::PathBuf, process::ExitCode};

use causeway_api::registry::MANAGER_APPLY;
use causeway_operator::{
    jetstream::Reconciler,
    local::{self, Options},
    manifest,
};
use clap::Args;

use crate::{EXIT_INVALID, EXIT_NOT_READY, nats::NatsArgs};

/// Flags of `causeway apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Files or directories of manifests (YAML, multi-document; JSON); `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub paths: Vec<PathBuf>,
    /// Print the plan, with field-level differences, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove objects created by earlier applies that are no longer in PATH (their data is
    /// kept or deleted as their deletionPolicy says).
    #[arg(long)]
    pub prune: bool,
    /// Replicas of the registry and global buckets when they are first created.
    #[arg(long, default_value_t = 1, value_parser = replicas)]
    pub registry_replicas: usize,
    #[command(flatten)]
    pub nats: NatsArgs,
}

pub async fn run(a: ApplyArgs) -> ExitCode {
    let (objects, errs) = manifest::load(&a.paths);
    if !errs.is_empty() {
        for e in &errs {
            eprintln!("error: {e}");
        }
        eprintln!("{} invalid manifest problem(s); nothing was applied", errs.len());
        return ExitCode::from(EXIT_INVALID);
    }
    if objects.is_empty() {
        eprintln!(
            "error: no manifests found in {}",
            a.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        return ExitCode::from(EXIT_INVALID);
    }
    let client = match a.nats.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    let reconciler = Reconciler::new(client.clone(), MANAGER_APPLY).with_registry_replicas(a.registry_replicas);
    let report = match local::apply(&reconciler, &objects, Options { dry_run: a.dry_run, prune: a.prune }).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    for line in &report.lines {
        println!("{line}");
    }
    let _ = client.flush().await;
    if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_READY) }
}

fn replicas(s: &str) -> Result<usize, String> {
    match s {
        "1" | "3" | "5" => Ok(s.parse().unwrap_or(1)),
        _ => Err("replicas must be 1, 3 or 5".into()),
    }
}
