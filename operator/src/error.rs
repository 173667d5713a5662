//! Errors of the reconcile core: only what is worth retrying. Problems with a spec are not
//! errors; they end in a `Ready=False` condition instead (see [`crate::jetstream::reason`]).

/// A failure talking to NATS (connection, timeout, unexpected answer). Retry with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A NATS or JetStream request failed.
    #[error("{what}: {source}")]
    Nats {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps a NATS error with what was being done: `.map_err(Error::nats("create stream"))`.
    pub fn nats<E: std::error::Error + Send + Sync + 'static>(what: impl Into<String>) -> impl FnOnce(E) -> Error {
        let what = what.into();
        move |e| Error::Nats { what, source: Box::new(e) }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Nats { .. } => "nats",
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
