//! `causeway apply -f PATH... --nats URL`.

use std::{path::PathBuf, process::ExitCode};

use causeway_api::registry::MANAGER_APPLY;
use causeway_operator::{
    jetstream::Reconciler,
    local::{self, Options},
    manifest,
};
use clap::Args;

use crate::{EXIT_INVALID, EXIT_NOT_READY, nats::NatsArgs, say};

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
    /// Replicas of the shared buckets (registry, global KV, blob store) when they are first
    /// created: 1, 3 or 5. Default: 3 on a cluster of three or more servers, else 1.
    #[arg(long, value_parser = replicas)]
    pub registry_replicas: Option<usize>,
    /// How long to wait for JetStream to become available (e.g. while a new cluster elects its
    /// meta leader) before giving up.
    #[arg(long, default_value = "30s")]
    pub wait: causeway_api::quantity::Duration,
    /// Issue every Node applied its own NATS credential into DIR/<ns>/<node>.creds (needs
    /// --nats-account-key); see docs/security.md.
    #[arg(long, value_name = "DIR", requires = "nats_account_key")]
    pub issue_credentials: Option<PathBuf>,
    /// Seed file (SA…) of the NATS account, or of one of its signing keys, that signs the
    /// credentials --issue-credentials writes.
    #[arg(long, env = "CAUSEWAY_NATS_ACCOUNT_KEY", value_name = "FILE", requires = "issue_credentials")]
    pub nats_account_key: Option<PathBuf>,
    /// The account's public key (A…), when --nats-account-key holds a signing key.
    #[arg(long, env = "CAUSEWAY_NATS_ACCOUNT", value_name = "ID", requires = "nats_account_key")]
    pub nats_account: Option<String>,
    /// Lifetime of an issued credential.
    #[arg(long, default_value = "1h")]
    pub credentials_ttl: causeway_api::quantity::Duration,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// Validates everything (each document, then the rules between objects), then applies,
/// printing each object's line as soon as it is done.
pub async fn run(a: ApplyArgs) -> ExitCode {
    let manifest::Manifests { objects, errors: errs, skipped, .. } = manifest::load_all(&a.paths);
    for s in &skipped {
        eprintln!("skipped {s}: not a Causeway resource (apply it with kubectl)");
    }
    if !errs.is_empty() {
        return invalid(&errs);
    }
    if objects.is_empty() {
        eprintln!(
            "error: no manifests found in {}",
            a.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        return ExitCode::from(EXIT_INVALID);
    }
    let issuer = match &a.nats_account_key {
        None => None,
        Some(path) => match causeway_operator::identity::Issuer::from_seed_file(path, a.nats_account.as_deref()) {
            Ok(i) => Some(i),
            Err(e) => {
                eprintln!("error: --nats-account-key {}: {e}", path.display());
                return ExitCode::from(EXIT_INVALID);
            }
        },
    };
    let client = match a.nats.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    if let Err(e) = wait_for_jetstream(&client, a.wait.get()).await {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_NOT_READY);
    }
    let replicas = a.registry_replicas.unwrap_or_else(|| default_shared_replicas(&client.server_info()));
    let reconciler = Reconciler::new(client.clone(), MANAGER_APPLY)
        .with_registry_replicas(replicas)
        .with_node_credentials(issuer.is_some());
    // Rules between objects (a listener against its node) are checked for the whole batch
    // before the first write, so a bad pair cannot fail an apply half-way.
    match manifest::check_batch(&reconciler, &objects).await {
        Ok(errs) if !errs.is_empty() => return invalid(&errs),
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    }
    let opts = Options { dry_run: a.dry_run, prune: a.prune };
    let report = match local::apply_each(&reconciler, &objects, opts, |line| say(&line.to_string())).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    if let (Some(issuer), Some(dir), false) = (issuer, &a.issue_credentials, a.dry_run) {
        let nodes: std::collections::BTreeSet<(String, String)> = objects
            .iter()
            .filter(|o| o.object.kind() == causeway_api::Kind::Node)
            .map(|o| (o.object.meta.namespace.to_string(), o.object.meta.name.to_string()))
            .collect();
        let files = local::CredentialFiles::new(dir, issuer, a.credentials_ttl.get());
        let want = |n: &causeway_api::registry::NodeRecord| {
            nodes.contains(&(n.meta.namespace.to_string(), n.meta.name.to_string()))
        };
        match files.sync(&reconciler, want).await {
            Ok(issued) => {
                for f in issued {
                    say(&format!(
                        "credentials {} -> {} (expires {})",
                        f.node,
                        f.path.display(),
                        f.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ));
                }
            }
            Err(e) => {
                eprintln!("error: issuing node credentials: {e}");
                return ExitCode::from(EXIT_NOT_READY);
            }
        }
    }
    let _ = client.flush().await;
    if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_READY) }
}

/// Reports invalid manifests: nothing was applied.
fn invalid(errs: &[manifest::ManifestError]) -> ExitCode {
    for e in errs {
        eprintln!("error: {e}");
    }
    eprintln!("{} invalid manifest problem(s); nothing was applied", errs.len());
    ExitCode::from(EXIT_INVALID)
}

fn replicas(s: &str) -> Result<usize, String> {
    match s {
        "1" | "3" | "5" => Ok(s.parse().unwrap_or(1)),
        _ => Err("replicas must be 1, 3 or 5".into()),
    }
}

/// 3 on a cluster of three or more servers (so losing one keeps the registry), else 1.
fn default_shared_replicas(info: &async_nats::ServerInfo) -> usize {
    if info.cluster.is_some() && info.connect_urls.len() >= 3 { 3 } else { 1 }
}

/// Waits until JetStream answers account info: a fresh cluster has no meta leader for a while.
async fn wait_for_jetstream(client: &async_nats::Client, within: std::time::Duration) -> Result<(), String> {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + within;
    let mut said = false;
    loop {
        let err = match js.query_account().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "JetStream is not available after {}: {err} (is the server started with JetStream enabled, -js?)",
                causeway_api::quantity::Duration::from(within)
            ));
        }
        if !said {
            eprintln!("waiting for JetStream ({err})…");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
