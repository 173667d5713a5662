//! What every request and worker shares.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use causeway_api::{causal::LamportClock, naming};
use tokio::sync::{Mutex, Semaphore, watch};

use crate::{
    acktoken::AckTokens,
    blob::Blobs,
    config::Config,
    creds::Creds,
    error::{Error, Result},
    event::Causes,
    http::BodyLimits,
    metrics::Metrics,
    nats::Link,
    registry::Registry,
};

/// Recently delivered events remembered for `Cw-Causation-Id`.
const CAUSES_REMEMBERED: usize = 4096;

/// Shared state.
#[derive(Debug)]
pub struct State {
    /// Configuration.
    pub config: Config,
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Whether it is connected, and since when.
    pub link: Arc<Link>,
    /// The NATS credential file, when one is configured.
    pub creds: Option<Arc<Creds>>,
    /// Signs the ack tokens this sidecar's fetches hand out.
    pub tokens: AckTokens,
    /// The live streams' consumers, deleted when their client goes or the sidecar stops.
    pub live: LiveConsumers,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The namespace's records.
    pub registry: Arc<Registry>,
    /// This node's Lamport clock.
    pub clock: LamportClock,
    /// Recently delivered events.
    pub causes: Causes,
    /// Large payloads.
    pub blobs: Blobs,
    /// Metrics.
    pub metrics: Metrics,
    /// Live streams allowed at once.
    pub streams: Arc<Semaphore>,
    /// API requests served at once.
    pub requests: Arc<Semaphore>,
    /// True while the app's health check passes (or when there is none).
    pub app_healthy: watch::Sender<bool>,
    /// True once the app's health check has passed at least once.
    pub app_seen: watch::Sender<bool>,
    /// True once the Lamport clock is restored from the state bucket (see [`crate::clock`]).
    pub clock_restored: watch::Sender<bool>,
    /// Becomes true on SIGTERM.
    pub shutdown: watch::Receiver<bool>,
    buckets: Mutex<HashMap<String, kv::Store>>,
}

impl State {
    /// New shared state.
    pub fn new(
        config: Config,
        client: async_nats::Client,
        link: Arc<Link>,
        creds: Option<Arc<Creds>>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let js = jetstream::new(client.clone());
        let registry = Registry::new(config.namespace.clone(), config.node.clone());
        let blobs = Blobs::new(js.clone(), naming::blob_bucket(&config.namespace));
        Arc::new(Self {
            streams: Arc::new(Semaphore::new(config.max_streams)),
            requests: Arc::new(Semaphore::new(config.max_requests)),
            config,
            client,
            link,
            creds,
            tokens: AckTokens::new(),
            live: LiveConsumers::default(),
            js,
            registry,
            clock: LamportClock::new(0),
            causes: Causes::new(CAUSES_REMEMBERED),
            blobs,
            metrics: Metrics::default(),
            app_healthy: watch::channel(true).0,
            app_seen: watch::channel(false).0,
            clock_restored: watch::channel(false).0,
            shutdown,
            buckets: Mutex::default(),
        })
    }

    /// The server's `max_payload`; 503 before the first connection told it.
    pub fn max_payload(&self) -> Result<usize> {
        match self.client.server_info().max_payload {
            0 => Err(Error::Unavailable("NATS has not been reached yet; retry in a moment".into())),
            n => Ok(n),
        }
    }

    /// Limits on reading a request body.
    pub fn body_limits(&self) -> BodyLimits {
        BodyLimits { max: self.config.max_body, within: self.config.body_timeout }
    }

    /// `<ns>/<node>`.
    pub fn sender(&self) -> String {
        self.config.sender()
    }

    /// A KV bucket handle, cached after the first lookup.
    pub async fn bucket(&self, name: &str) -> Result<kv::Store> {
        let mut g = self.buckets.lock().await;
        if let Some(s) = g.get(name) {
            return Ok(s.clone());
        }
        let s = self.js.get_key_value(name).await.map_err(|e| {
            Error::Unavailable(format!(
                "bucket {name} is not available ({e}); is the Node reconciled (causeway apply)?"
            ))
        })?;
        g.insert(name.to_owned(), s.clone());
        Ok(s)
    }

    /// The namespace's global bucket.
    pub fn global_bucket(&self) -> String {
        naming::global_bucket(&self.config.namespace)
    }

    /// This node's state bucket.
    pub fn state_bucket(&self) -> String {
        naming::state_bucket(&self.config.namespace, &self.config.node)
    }

    /// True when NATS is connected.
    pub fn nats_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// The ephemeral consumers of open live streams: `(stream, consumer)`.
#[derive(Debug, Default)]
pub struct LiveConsumers(std::sync::Mutex<HashSet<(String, String)>>);

/// How long deleting one consumer may take before it is left to its inactivity threshold.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

impl LiveConsumers {
    /// Remembers a consumer.
    pub fn register(&self, stream: &str, name: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert((stream.to_owned(), name.to_owned()));
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deletes one (bounded in time: if NATS is away, its inactivity threshold removes it).
    pub async fn delete(&self, js: &jetstream::Context, stream: &str, name: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&(stream.to_owned(), name.to_owned()));
        match tokio::time::timeout(DELETE_TIMEOUT, js.delete_consumer_from_stream(name, stream)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(consumer = name, error = %e, "could not delete a live-stream consumer"),
            Err(_) => tracing::debug!(consumer = name, "deleting a live-stream consumer timed out"),
        }
    }

    /// Deletes every one still open (on shutdown).
    pub async fn delete_all(&self, js: &jetstream::Context) {
        let all: Vec<_> = self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let deletes = all.iter().map(|(s, n)| self.delete(js, s, n));
        futures::future::join_all(deletes).await;
    }
}

pub use crate::flag::until_true;
