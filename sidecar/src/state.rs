//! What every request and worker shares.

use std::{collections::HashMap, sync::Arc};

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
    /// Compiled event schemas of the stores and nodes written to.
    pub schemas: crate::schemas::SchemaCache,
    /// Trace records waiting to be written.
    pub traces: crate::trace::Recorder,
    buckets: Mutex<HashMap<String, kv::Store>>,
    sender: String,
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
            sender: config.sender(),
            streams: Arc::new(Semaphore::new(config.max_streams)),
            requests: Arc::new(Semaphore::new(config.max_requests)),
            config,
            client,
            link,
            creds,
            tokens: AckTokens::new(),
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
            schemas: Default::default(),
            traces: Default::default(),
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

    /// `<ns>/<node>`: the sender of every event this sidecar writes.
    pub fn sender(&self) -> &str {
        &self.sender
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

pub use crate::flag::until_true;
