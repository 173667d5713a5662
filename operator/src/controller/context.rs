//! What every reconcile shares: the Kubernetes client, the reconcile core (NATS), the event
//! recorder, metrics, options, and the per-object failure counts behind the backoff.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use causeway_api::Kind;
use kube::runtime::events::{Recorder, Reporter};

use super::metrics::Metrics;
use crate::jetstream::Reconciler;

/// Finalizer that keeps a deleted object until its JetStream side is cleaned up.
pub const FINALIZER: &str = "causeway.dev/cleanup";
/// Annotation that lets the finalizer go without cleanup (the escape hatch for a `Delete` object
/// whose cleanup keeps failing): `causeway.dev/skip-cleanup: "true"`.
pub const SKIP_CLEANUP_ANNOTATION: &str = "causeway.dev/skip-cleanup";
/// The field manager that writes every status.
pub const FIELD_MANAGER: &str = "causeway-operator";
/// Reason of a `Ready=False` caused by a failing NATS call.
pub const REASON_NATS_UNAVAILABLE: &str = "NatsUnavailable";
/// Reason of a Node's `Ready=False` when its NATS credential cannot be issued.
pub const REASON_CREDENTIALS_FAILED: &str = "CredentialsFailed";

/// How the controllers behave.
#[derive(Debug, Clone)]
pub struct Options {
    /// Every object is reconciled again this often (restores drift, refreshes figures).
    pub resync: Duration,
    /// Reconciles at once, per kind.
    pub concurrency: u16,
    /// Changes to one object within this window are reconciled once.
    pub debounce: Duration,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Longest a reconcile may wait on NATS before it reports `NatsUnavailable`.
    pub nats_timeout: Duration,
    /// Longest a deletion may wait on NATS (see the deletion rules in docs/operator.md).
    pub cleanup_timeout: Duration,
    /// Longest backoff after repeated failures.
    pub max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(60),
            concurrency: 8,
            debounce: Duration::from_millis(500),
            namespaces: Vec::new(),
            nats_timeout: Duration::from_secs(20),
            cleanup_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// Kubernetes.
    pub kube: kube::Client,
    /// The reconcile core, on NATS.
    pub core: Reconciler,
    /// Kubernetes Events.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Options.
    pub opts: Options,
    /// Per-node NATS credentials, when the operator has an account key.
    pub identity: Option<super::credentials::Identity>,
    /// The controllers' caches, once they run (node credentials are computed from them).
    pub caches: std::sync::OnceLock<super::Caches>,
    failures: Mutex<HashMap<String, u32>>,
    /// Cleanups that could not reach NATS and let their object go: the sweep retries them.
    deferred: Mutex<std::collections::BTreeSet<(Kind, String, String)>>,
}

impl Context {
    /// A context; events are reported as `reporter`.
    pub fn new(kube: kube::Client, core: Reconciler, reporter: Reporter, metrics: Arc<Metrics>, opts: Options) -> Self {
        let recorder = Recorder::new(kube.clone(), reporter);
        Self {
            kube,
            core,
            recorder,
            metrics,
            opts,
            identity: None,
            caches: std::sync::OnceLock::new(),
            failures: Mutex::default(),
            deferred: Mutex::default(),
        }
    }

    /// Issues node credentials with `identity`.
    pub fn with_identity(mut self, identity: Option<super::credentials::Identity>) -> Self {
        self.identity = identity;
        self
    }

    /// The next backoff for `key` after another failure: 1 s, 2 s, 4 s, … up to `max_backoff`.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_after(*n, self.opts.max_backoff)
    }

    /// Remembers a cleanup left for the sweep.
    pub fn defer_cleanup(&self, kind: Kind, ns: &str, name: &str) {
        self.deferred.lock().unwrap_or_else(|e| e.into_inner()).insert((kind, ns.to_owned(), name.to_owned()));
    }

    /// The cleanups left for the sweep.
    pub fn deferred_cleanups(&self) -> Vec<(Kind, String, String)> {
        self.deferred.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Forgets a cleanup the sweep has done.
    pub fn cleaned_up(&self, kind: Kind, ns: &str, name: &str) {
        self.deferred.lock().unwrap_or_else(|e| e.into_inner()).remove(&(kind, ns.to_owned(), name.to_owned()));
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The wait after the `n`-th failure in a row (n ≥ 1): 1 s, 2 s, 4 s, … up to `max`.
pub fn backoff_after(n: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(20)).min(max)
}

/// Errors of a reconcile. Each is retried with backoff; none crashes the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// NATS failed or did not answer in time.
    #[error("NATS: {0}")]
    Nats(String),
    /// A `Delete` object could not be cleaned up; the finalizer stays.
    #[error("cleanup failed: {0}")]
    Cleanup(String),
    /// A node's NATS credential could not be issued.
    #[error("node credentials: {0}")]
    Credentials(String),
    /// The finalizer helper failed.
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short label for the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Nats(_) => "nats",
            Error::Cleanup(_) => "cleanup",
            Error::Credentials(_) => "credentials",
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_to_a_cap() {
        let max = std::time::Duration::from_secs(10);
        let steps: Vec<u64> = (1..=6).map(|n| super::backoff_after(n, max).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 10, 10]);
        assert_eq!(super::backoff_after(u32::MAX, max).as_secs(), 10, "no overflow");
    }
}
