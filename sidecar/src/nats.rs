//! The NATS connection and the few JetStream primitives every route is built on.
//!
//! - [`Link`] follows the connection (connected or not, and how many times it reconnected), so
//!   a request can wait briefly for NATS instead of failing, and notice when the connection it
//!   sent on went away.
//! - [`resilient`] runs one JetStream write: if the connection drops before its answer, the write
//!   is sent again once NATS is back (every write carries a `Nats-Msg-Id`, so JetStream stores it
//!   once), or the request fails fast with 503 when NATS stays away.
//! - [`direct_batch`] reads many messages of a stream with one batched direct get: no consumer is
//!   created (a stream holds at most 1,000), and any replica may answer.

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::{HeaderMap, Message, Request, RequestErrorKind, StatusCode};

use crate::creds::Creds;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;

use crate::{
    config::{self, Config},
    error::{Error, Result},
};

/// How long to wait for a JetStream answer while connected.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection as seen through async-nats events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Connected now.
    pub connected: bool,
    /// Bumped on every (re)connect.
    pub epoch: u64,
}

/// Follows the NATS connection.
#[derive(Debug)]
pub struct Link {
    state: watch::Sender<LinkState>,
}

impl Link {
    /// Not connected yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { state: watch::channel(LinkState::default()).0 })
    }

    /// The current state.
    pub fn now(&self) -> LinkState {
        *self.state.borrow()
    }

    /// A receiver of state changes.
    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    fn on_event(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Connected => self.state.send_modify(|s| {
                s.connected = true;
                s.epoch += 1;
            }),
            async_nats::Event::Disconnected | async_nats::Event::Closed => {
                self.state.send_if_modified(|s| std::mem::replace(&mut s.connected, false));
            }
            _ => {}
        }
    }

    /// Waits up to `within` for a connection; its epoch, or 503.
    pub async fn connected(&self, within: Duration) -> Result<u64> {
        let mut rx = self.subscribe();
        let waited = tokio::time::timeout(within, rx.wait_for(|s| s.connected)).await;
        match waited {
            Ok(Ok(s)) => Ok(s.epoch),
            _ => Err(Error::Unavailable(format!(
                "NATS is not reachable (waited {}); the request changed nothing, retry it",
                causeway_api::quantity::Duration::from(within)
            ))),
        }
    }

    /// Resolves once the connection of `epoch` is gone (disconnected, or replaced).
    pub async fn lost(&self, epoch: u64) {
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|s| !s.connected || s.epoch != epoch).await;
    }
}

/// Connects to NATS with the configured credentials. The first connection is retried in the
/// background, so the sidecar serves `/healthz` (and a failing `/readyz`) while NATS is away.
///
/// With a credentials file, every (re)connect is signed with what [`Creds`] holds at that moment,
/// so a renewed credential is picked up without a restart. Replies come to the node's own
/// `_INBOX.<ns>.<node>` prefix, the only one its credential may subscribe to.
pub async fn connect(
    config: &Config,
    link: Arc<Link>,
    creds: Option<Arc<Creds>>,
) -> Result<async_nats::Client, String> {
    let opts = match creds {
        Some(c) => async_nats::ConnectOptions::with_auth_callback(move |nonce| {
            let c = c.clone();
            async move { c.auth(&nonce) }
        }),
        None => async_nats::ConnectOptions::new(),
    };
    let mut opts = opts
        .name(format!("causeway-sidecar {}", config.sender()))
        .custom_inbox_prefix(causeway_api::naming::reply_inbox_prefix(&config.namespace, &config.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |e| {
            let link = link.clone();
            async move {
                match &e {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
                    async_nats::Event::SlowConsumer(sid) => tracing::warn!(sid, "NATS slow consumer"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
                link.on_event(&e);
            }
        });
    opts = match &config.nats_auth {
        // Signed by the callback above.
        config::NatsAuth::None | config::NatsAuth::Creds(_) => opts,
        config::NatsAuth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
        config::NatsAuth::Token(t) => opts.token(t.clone()),
    };
    if config.nats_tls.required {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &config.nats_tls.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.nats_tls.client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let addrs: Vec<async_nats::ServerAddr> = config.nats_urls.iter().filter_map(|u| u.parse().ok()).collect();
    opts.connect(addrs).await.map_err(|e| format!("NATS: {e}"))
}

/// Runs `op` (one idempotent JetStream request) until it answers: when NATS is away it waits up
/// to `wait` for it; when the connection drops while `op` waits for its answer, `op` runs again
/// on the new connection. Fails with 503 once NATS stays away longer than `wait`.
pub async fn resilient<T, F, Fut>(link: &Link, wait: Duration, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT + wait;
    let mut attempt = 0u32;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let epoch = link.connected(wait.min(left)).await.map_err(|e| {
            if attempt > 0 {
                Error::Unavailable(format!(
                    "the NATS connection was lost before JetStream answered, and NATS is not back: the request may or may not have been stored; retry it unchanged (the same id is stored once) — {e}"
                ))
            } else {
                e
            }
        })?;
        attempt += 1;
        tokio::select! {
            r = op() => return r,
            _ = link.lost(epoch) => {
                tracing::debug!(attempt, "NATS connection lost while waiting for JetStream; sending again once back");
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(
                "JetStream did not answer in time; the request may or may not have been stored: retry it unchanged"
                    .into(),
            ));
        }
    }
}

/// JetStream's answer to a publish.
#[derive(Deserialize, Debug, Default)]
pub struct PubAck {
    /// Stream sequence.
    #[serde(default)]
    pub seq: u64,
    /// Already stored under this message id.
    #[serde(default)]
    pub duplicate: bool,
    /// Events in a committed atomic batch.
    #[serde(default)]
    pub count: Option<u64>,
    /// The stream's refusal.
    pub error: Option<ApiError>,
}

/// A JetStream API error.
#[derive(Deserialize, Debug, Clone)]
pub struct ApiError {
    /// JetStream's error code (`err_code`).
    #[serde(default)]
    pub err_code: u64,
    /// What it said.
    #[serde(default)]
    pub description: String,
}

/// Sends one message to a stream's subject and waits for the pub ack (one attempt).
pub async fn request_ack(client: &async_nats::Client, subject: &str, h: HeaderMap, payload: Bytes) -> Result<PubAck> {
    let req = Request::new().headers(h).payload(payload).timeout(Some(ACK_TIMEOUT));
    let msg = client.send_request(subject.to_owned(), req).await.map_err(|e| match e.kind() {
        // Only a stream's leader listens on its subjects, so a clustered stream that is electing
        // a new leader (after losing a node) has no responders for a few seconds, just like a
        // stream that does not exist.
        RequestErrorKind::NoResponders => Error::Unavailable(format!(
            "no stream answered for {subject}: either no stream captures it (check that the EventStore or Node is \
             reconciled: causeway apply), or its stream is electing a leader after losing a NATS node (retry in a few \
             seconds with the same event id)"
        )),
        RequestErrorKind::TimedOut => Error::Timeout(format!(
            "JetStream did not acknowledge {subject} in time; the event may or may not be stored: retry it with the same id"
        )),
        RequestErrorKind::MaxPayloadExceeded => {
            Error::InvalidEvent(format!("the message is larger than the server's max_payload: {e}"))
        }
        _ => Error::Unavailable(format!("NATS: {e}")),
    })?;
    if msg.payload.is_empty() {
        // Flow-control answer to a batch message that is not the commit.
        return Ok(PubAck::default());
    }
    serde_json::from_slice(&msg.payload).map_err(|e| Error::Unavailable(format!("unexpected JetStream answer: {e}")))
}

/// One message read by a direct get.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its full subject.
    pub subject: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// Its own headers (plus the `Nats-*` ones the server adds).
    pub headers: HeaderMap,
    /// Its payload.
    pub payload: Bytes,
}

/// What one batched direct get returned.
#[derive(Debug, Default)]
pub struct Batch {
    /// The messages, in stream order.
    pub messages: Vec<Stored>,
    /// Matching messages left after the last one returned.
    pub pending: u64,
}

const DIRECT_TIMEOUT: Duration = Duration::from_secs(5);

fn header_u64(h: Option<&HeaderMap>, name: &str) -> Option<u64> {
    h?.get(name)?.as_str().parse().ok()
}

fn direct_error(stream: &str, m: &Message) -> Error {
    let status = m.status.map(|s| s.as_u16()).unwrap_or(0);
    let what = m.description.clone().unwrap_or_default();
    if status == 503 {
        Error::Unavailable(format!(
            "stream {stream} did not answer (it does not exist, or is electing a leader); is it reconciled?"
        ))
    } else {
        Error::Unavailable(format!("reading {stream}: {status} {what}"))
    }
}

/// Reads up to `batch` messages of `stream` matching `filter` from sequence `start` on, stopping
/// early after about `max_bytes` (the first message always comes). Any replica may answer.
pub async fn direct_batch(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    start: u64,
    batch: usize,
    max_bytes: usize,
) -> Result<Batch> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
    let body = serde_json::json!({
        "seq": start.max(1),
        "next_by_subj": filter,
        "batch": batch.max(1),
        "max_bytes": max_bytes.max(1),
    });
    client
        .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, body.to_string().into())
        .await
        .map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
    let mut out = Batch::default();
    let deadline = tokio::time::Instant::now() + DIRECT_TIMEOUT;
    loop {
        let m = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(Error::Unavailable("NATS: the connection closed during a read".into())),
            Err(_) => return Err(Error::Timeout(format!("reading {stream} stalled"))),
        };
        match m.status.map(|s| s.as_u16()) {
            None | Some(200) => {
                let h = m.headers.as_ref();
                let (Some(sequence), Some(subject)) =
                    (header_u64(h, "Nats-Sequence"), h.and_then(|h| h.get("Nats-Subject")).map(|s| s.to_string()))
                else {
                    return Err(Error::Unavailable(format!("reading {stream}: an answer without sequence or subject")));
                };
                out.pending = header_u64(h, "Nats-Num-Pending").unwrap_or(0);
                out.messages.push(Stored {
                    subject,
                    sequence,
                    headers: m.headers.unwrap_or_default(),
                    payload: m.payload,
                });
            }
            Some(204) => {
                // End of batch.
                out.pending = header_u64(m.headers.as_ref(), "Nats-Num-Pending").unwrap_or(0);
                break;
            }
            Some(404) => break,
            Some(_) => return Err(direct_error(stream, &m)),
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(out)
}

/// The last message on `subject` (a subject or pattern) in `stream`, read by direct get from any
/// replica; `None` when there is none.
pub async fn direct_last(client: &async_nats::Client, stream: &str, subject: &str) -> Result<Option<Stored>> {
    direct_one(client, stream, serde_json::json!({ "last_by_subj": subject })).await
}

/// The current value of `key` in KV bucket `bucket`, read by direct get (`None` when absent or
/// deleted). Unlike the client's KV get it asks with the request body, so a node's credential
/// needs one permission per bucket (`$JS.API.DIRECT.GET.KV_<bucket>`), not one per key.
pub async fn kv_value(client: &async_nats::Client, bucket: &str, key: &str) -> Result<Option<Bytes>> {
    let m = direct_last(client, &format!("KV_{bucket}"), &format!("$KV.{bucket}.{key}")).await?;
    Ok(m.filter(|m| !m.headers.get("KV-Operation").is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE")))
        .map(|m| m.payload))
}

/// The message at sequence `seq` of `stream`, read by direct get; `None` when there is none.
pub async fn direct_seq(client: &async_nats::Client, stream: &str, seq: u64) -> Result<Option<Stored>> {
    direct_one(client, stream, serde_json::json!({ "seq": seq })).await
}

async fn direct_one(client: &async_nats::Client, stream: &str, body: serde_json::Value) -> Result<Option<Stored>> {
    let req = Request::new().payload(body.to_string().into()).timeout(Some(DIRECT_TIMEOUT));
    let m = client.send_request(format!("$JS.API.DIRECT.GET.{stream}"), req).await.map_err(|e| match e.kind() {
        RequestErrorKind::NoResponders => Error::Unavailable(format!(
            "stream {stream} did not answer (it does not exist, or is electing a leader); is it reconciled?"
        )),
        RequestErrorKind::TimedOut => Error::Timeout(format!("reading {stream} timed out")),
        _ => Error::Unavailable(format!("NATS: {e}")),
    })?;
    match m.status {
        None | Some(StatusCode::OK) => {
            let h = m.headers.as_ref();
            let sequence = header_u64(h, "Nats-Sequence").unwrap_or(0);
            let subject = h.and_then(|h| h.get("Nats-Subject")).map(|s| s.to_string()).unwrap_or_default();
            Ok(Some(Stored { subject, sequence, headers: m.headers.unwrap_or_default(), payload: m.payload }))
        }
        Some(StatusCode::NOT_FOUND) => Ok(None),
        Some(_) => Err(direct_error(stream, &m)),
    }
}
