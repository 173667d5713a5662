//! `causeway operator`: the Kubernetes controllers, health and metrics.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use causeway_api::quantity::Duration;
use causeway_operator::{
    controller::{self, Options, Settings, health::Health, leader::LeaseOptions, metrics::Metrics},
    webhook::{WebhookConfig, inject, inject::InjectConfig},
};
use clap::Args;

use crate::{EXIT_INVALID, EXIT_NOT_READY, nats::NatsArgs};

/// Flags of `causeway operator`.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch, comma-separated (default: all).
    #[arg(long, env = "CAUSEWAY_WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// How often every object is reconciled again (restores drift, refreshes figures).
    #[arg(long, env = "CAUSEWAY_RESYNC", default_value = "60s")]
    pub resync: Duration,
    /// Reconciles at once, per kind.
    #[arg(long, env = "CAUSEWAY_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Changes to one object within this window are reconciled once.
    #[arg(long, env = "CAUSEWAY_DEBOUNCE", default_value = "500ms")]
    pub debounce: Duration,
    /// Longest a reconcile waits on NATS before reporting NatsUnavailable.
    #[arg(long, env = "CAUSEWAY_NATS_TIMEOUT", default_value = "20s")]
    pub nats_timeout: Duration,
    /// Longest a deletion waits on NATS (Retain objects and Listeners are then released; see docs/operator.md).
    #[arg(long, env = "CAUSEWAY_CLEANUP_TIMEOUT", default_value = "10s")]
    pub cleanup_timeout: Duration,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CAUSEWAY_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    pub health_addr: SocketAddr,
    /// Run without leader election (only one replica may run then).
    #[arg(long, env = "CAUSEWAY_NO_LEADER_ELECTION")]
    pub no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "CAUSEWAY_LEASE_NAME", default_value = "causeway-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long the lease lasts without renewal; a new leader takes over within it.
    #[arg(long, env = "CAUSEWAY_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: Duration,
    /// This replica's identity in the lease and in Events (default: the pod's name, else the host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Replicas of the shared buckets (registry, global KV, blob store) when first created.
    #[arg(long, env = "CAUSEWAY_REGISTRY_REPLICAS", default_value_t = 1)]
    pub registry_replicas: usize,
    /// Seed file (SA…) of the NATS account, or of one of its signing keys: the operator then
    /// issues every Node its own credential (Secret causeway-node-<node>; see docs/security.md).
    #[arg(long, env = "CAUSEWAY_NATS_ACCOUNT_KEY", value_name = "FILE")]
    pub nats_account_key: Option<PathBuf>,
    /// The account's public key (A…), when --nats-account-key holds a signing key.
    #[arg(long, env = "CAUSEWAY_NATS_ACCOUNT", value_name = "ID")]
    pub nats_account: Option<String>,
    /// Lifetime of a Node's credential; it is issued again when half of it is left, and a
    /// deleted Node's credential stops working when it expires.
    #[arg(long, env = "CAUSEWAY_CREDENTIALS_TTL", default_value = "1h")]
    pub credentials_ttl: Duration,
    #[command(flatten)]
    pub webhook: WebhookArgs,
}

/// The sidecar-injection webhook and what it injects.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Do not serve the sidecar-injection webhook.
    #[arg(long, env = "CAUSEWAY_NO_WEBHOOK")]
    pub no_webhook: bool,
    /// Where the webhook listens (TLS).
    #[arg(long, env = "CAUSEWAY_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// The Service in front of the webhook; its DNS names go into the certificate.
    #[arg(long, env = "CAUSEWAY_WEBHOOK_SERVICE", default_value = "causeway-webhook")]
    pub webhook_service: String,
    /// The Secret (in the operator's namespace) holding the webhook's CA and certificate.
    #[arg(long, env = "CAUSEWAY_WEBHOOK_SECRET", default_value = "causeway-webhook-tls")]
    pub webhook_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator sets and keeps (empty: none).
    #[arg(long, env = "CAUSEWAY_WEBHOOK_CONFIG", default_value = "causeway-sidecar-injector")]
    pub webhook_config: String,
    /// Serve tls.crt and tls.key from this directory (cert-manager, or your own certificate)
    /// instead of managing a CA; the caBundle is then left to whoever issued them.
    #[arg(long, env = "CAUSEWAY_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// The sidecar image (it holds causeway-sidecar).
    #[arg(long, env = "CAUSEWAY_SIDECAR_IMAGE", default_value = "ghcr.io/causeway-dev/causeway:0.1.0")]
    pub sidecar_image: String,
    /// The sidecar image's pull policy.
    #[arg(long, env = "CAUSEWAY_SIDECAR_IMAGE_PULL_POLICY")]
    pub sidecar_image_pull_policy: Option<String>,
    /// NATS URL(s) for sidecars (default: the operator's).
    #[arg(long, env = "CAUSEWAY_SIDECAR_NATS_URL")]
    pub sidecar_nats_url: Option<String>,
    /// A Secret expected in each app namespace with the sidecars' NATS credentials under key `creds`.
    #[arg(long, env = "CAUSEWAY_SIDECAR_CREDS_SECRET")]
    pub sidecar_creds_secret: Option<String>,
    /// Default sidecar CPU request (a pod's causeway.dev/sidecar-cpu-request overrides it).
    #[arg(long, env = "CAUSEWAY_SIDECAR_CPU_REQUEST", default_value = "10m")]
    pub sidecar_cpu_request: String,
    /// Default sidecar memory request.
    #[arg(long, env = "CAUSEWAY_SIDECAR_MEMORY_REQUEST", default_value = "32Mi")]
    pub sidecar_memory_request: String,
    /// Default sidecar CPU limit (none unless set).
    #[arg(long, env = "CAUSEWAY_SIDECAR_CPU_LIMIT")]
    pub sidecar_cpu_limit: Option<String>,
    /// Default sidecar memory limit.
    #[arg(long, env = "CAUSEWAY_SIDECAR_MEMORY_LIMIT", default_value = "128Mi")]
    pub sidecar_memory_limit: String,
    /// The sidecars' log filter.
    #[arg(long, env = "CAUSEWAY_SIDECAR_LOG")]
    pub sidecar_log: Option<String>,
}

impl WebhookArgs {
    /// `per_node`: the operator issues each Node its own credential (`--nats-account-key`).
    fn config(&self, nats_url: &str, namespace: &str, per_node: bool) -> Result<Option<WebhookConfig>, String> {
        if self.no_webhook {
            return Ok(None);
        }
        let shared = self.sidecar_creds_secret.clone().filter(|s| !s.trim().is_empty());
        let creds = match (per_node, shared) {
            (true, Some(_)) => {
                return Err("give --sidecar-creds-secret (one credential shared by every sidecar) or --nats-account-key (a credential per Node), not both".into());
            }
            (true, None) => inject::CredsSource::PerNode,
            (false, Some(s)) => inject::CredsSource::Shared(s),
            (false, None) => inject::CredsSource::None,
        };
        let mut resources = std::collections::BTreeMap::new();
        for (kind, res, q) in [
            ("requests", "cpu", Some(&self.sidecar_cpu_request)),
            ("requests", "memory", Some(&self.sidecar_memory_request)),
            ("limits", "cpu", self.sidecar_cpu_limit.as_ref()),
            ("limits", "memory", Some(&self.sidecar_memory_limit)),
        ] {
            let Some(q) = q.filter(|q| !q.trim().is_empty()) else { continue };
            if !inject::valid_quantity(q) {
                return Err(format!("sidecar {res} {kind}: {q:?} is not a resource quantity, e.g. 100m or 64Mi"));
            }
            resources.insert((kind.to_owned(), res.to_owned()), q.trim().to_owned());
        }
        Ok(Some(WebhookConfig {
            addr: self.webhook_addr,
            service: self.webhook_service.clone(),
            namespace: namespace.to_owned(),
            secret: self.webhook_secret.clone(),
            config_name: Some(self.webhook_config.trim().to_owned()).filter(|n| !n.is_empty()),
            cert_dir: self.webhook_cert_dir.clone(),
            inject: InjectConfig {
                image: self.sidecar_image.clone(),
                image_pull_policy: self.sidecar_image_pull_policy.clone(),
                nats_url: self.sidecar_nats_url.clone().unwrap_or_else(|| nats_url.to_owned()),
                creds,
                resources,
                log: self.sidecar_log.clone(),
                ..InjectConfig::default()
            },
        }))
    }
}

fn identity(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p).map_err(|e| format!("kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", p.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| format!("no Kubernetes configuration found: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

pub async fn run(a: OperatorArgs) -> ExitCode {
    if a.concurrency == 0 {
        eprintln!("error: --concurrency must be at least 1");
        return ExitCode::from(EXIT_INVALID);
    }
    if !matches!(a.registry_replicas, 1 | 3 | 5) {
        eprintln!("error: --registry-replicas must be 1, 3 or 5");
        return ExitCode::from(EXIT_INVALID);
    }
    let namespace = a.lease_namespace.clone().unwrap_or_else(|| "default".into());
    let node_identity = match &a.nats_account_key {
        None if a.nats_account.is_some() => {
            eprintln!("error: --nats-account needs --nats-account-key");
            return ExitCode::from(EXIT_INVALID);
        }
        None => None,
        Some(path) => {
            if a.credentials_ttl.get() < std::time::Duration::from_secs(60) {
                eprintln!("error: --credentials-ttl must be at least 1m");
                return ExitCode::from(EXIT_INVALID);
            }
            match causeway_operator::identity::Issuer::from_seed_file(path, a.nats_account.as_deref()) {
                Ok(issuer) => Some(controller::credentials::Identity { issuer, ttl: a.credentials_ttl.get() }),
                Err(e) => {
                    eprintln!("error: --nats-account-key {}: {e}", path.display());
                    return ExitCode::from(EXIT_INVALID);
                }
            }
        }
    };
    let webhook = match a.webhook.config(&a.nats.url, &namespace, node_identity.is_some()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let kube = match kube_client(a.kubeconfig.as_ref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    // NATS may come up after the operator: connect in the background and say so on /readyz.
    let nats = match a.nats.connect_retrying().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let listener = match tokio::net::TcpListener::bind(a.health_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", a.health_addr);
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    let identity = identity(a.identity);
    let settings = Settings {
        opts: Options {
            resync: a.resync.get(),
            concurrency: a.concurrency,
            debounce: a.debounce.get(),
            namespaces: a.namespaces.into_iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect(),
            nats_timeout: a.nats_timeout.get(),
            cleanup_timeout: a.cleanup_timeout.get(),
            ..Options::default()
        },
        lease: (!a.no_leader_election).then(|| LeaseOptions {
            name: a.lease_name.clone(),
            namespace: namespace.clone(),
            identity: identity.clone(),
            duration: a.lease_duration.get(),
            grace: (a.lease_duration.get() / 3).max(std::time::Duration::from_secs(1)),
        }),
        registry_replicas: a.registry_replicas,
        instance: Some(identity.clone()),
        identity: node_identity,
    };
    let metrics = Arc::new(Metrics::default());
    let health = Health::new(metrics, nats.clone(), "starting");
    let shutdown = crate::signal::Shutdown::install();
    let stop = shutdown.clone();
    let health_server =
        tokio::spawn(controller::health::serve(listener, health.clone(), async move { stop.wait().await }));
    eprintln!(
        "causeway operator {identity}: health on http://{}, watching {}",
        a.health_addr,
        if settings.opts.namespaces.is_empty() { "all namespaces".into() } else { settings.opts.namespaces.join(", ") }
    );
    // A webhook that cannot serve (its port taken, its certificate files unreadable) stops the
    // whole operator with an error, as a health port that cannot be bound does: a replica left
    // running but never ready would stall a rollout without saying why, and Kubernetes restarts
    // one that exits. (Trouble it can wait out, such as its Secret, it retries.)
    let (webhook_failed_tx, mut webhook_failed) = tokio::sync::watch::channel(None::<String>);
    let webhook_failure = webhook_failed_tx.subscribe();
    let stop = futures::FutureExt::shared(futures::FutureExt::boxed(async move {
        tokio::select! {
            _ = shutdown.wait() => {}
            // Without a webhook (or once it stopped cleanly) the sender is gone: nothing to wait for.
            _ = async {
                if webhook_failed.wait_for(Option::is_some).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {}
        }
    }));
    // Every replica serves the webhook, leader or not.
    let webhook_task = webhook.map(|w| {
        let (client, ready, stop) = (kube.clone(), health.webhook.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = causeway_operator::webhook::run(client, w, ready.clone(), stop).await {
                tracing::error!(error = %e, "the webhook stopped; stopping the operator");
                *ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("webhook: {e}"));
                let _ = webhook_failed_tx.send(Some(e));
            }
        })
    });
    let result = controller::operate(kube, nats.clone(), settings, health, stop).await;
    if let Some(t) = webhook_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), nats.flush()).await;
    health_server.abort();
    if let Some(e) = webhook_failure.borrow().clone() {
        eprintln!("error: {e}; exiting so that a restart begins afresh");
        return ExitCode::from(EXIT_NOT_READY);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}; exiting so that a restart begins afresh");
            ExitCode::from(EXIT_NOT_READY)
        }
    }
}
