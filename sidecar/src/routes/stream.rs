//! `GET /v1/stores/{store}/events?subject=…&after=N&follow=true`: a live stream of a store, as
//! Server-Sent Events (`id:` = sequence, resumable with `Last-Event-ID`) or NDJSON.
//!
//! The stream replays what is stored after `after`, sends a `caughtUp` marker, then follows new
//! events. An event that cannot be decoded is reported as a `skipped` entry (with its sequence,
//! so resuming passes it) and the stream goes on; if NATS cannot be asked, the stream ends with
//! an `error` entry, and the client resumes from the last id it saw, missing nothing.
//!
//! Each live stream reads through one ephemeral consumer that this sidecar names, keeps in
//! order itself (a gap in the consumer's sequence recreates it after the last event sent) and
//! deletes as soon as the client goes away, the sidecar stops, or the stream ends: a stream holds
//! at most `maxConsumers` (1,000 by default), shared by listeners and every sidecar's live
//! streams. `CAUSEWAY_MAX_STREAMS` bounds them per sidecar, and the consumer's inactivity
//! threshold removes it if the sidecar dies. A client that stalls longer than
//! `CAUSEWAY_STREAM_SEND_TIMEOUT` is dropped rather than buffered.

use std::{convert::Infallible, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use bytes::Bytes;
use causeway_api::{names::validate_subject_pattern, naming};
use futures::StreamExt;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    conditional::{Conditions, Support},
    error::{Error, Result},
    event::{Decoded, decode_stored},
    http::{Query, Resp, header_str},
    state::State,
};

const CHANNEL_FRAMES: usize = 32;
const KEEPALIVE: Duration = Duration::from_secs(15);
/// A live-stream consumer left behind by a sidecar that died is removed after this.
pub const LIVE_INACTIVE: Duration = Duration::from_secs(30);
/// JetStream: the stream holds as many consumers as it may.
const ERR_MAX_CONSUMERS: u64 = 10026;
const PARAMS: &[&str] = &["subject", "after", "follow"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

impl Format {
    fn event(self, seq: u64, json: &[u8]) -> Bytes {
        let mut b = Vec::with_capacity(json.len() + 32);
        match self {
            Format::Sse => {
                b.extend_from_slice(format!("id: {seq}\ndata: ").as_bytes());
                b.extend_from_slice(json);
                b.extend_from_slice(b"\n\n");
            }
            Format::Ndjson => {
                b.extend_from_slice(json);
                b.push(b'\n');
            }
        }
        b.into()
    }
    fn caught_up(self, last: u64) -> Bytes {
        self.marker("caughtUp", None, &json!({"caughtUp": true, "lastSequence": last}))
    }
    fn skipped(self, seq: u64, error: &str) -> Bytes {
        self.marker("skipped", Some(seq), &json!({"skipped": true, "sequence": seq, "error": error}))
    }
    fn error(self, e: &Error) -> Bytes {
        self.marker("error", None, &e.body())
    }
    fn marker(self, name: &str, id: Option<u64>, v: &serde_json::Value) -> Bytes {
        match self {
            Format::Sse => {
                let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
                format!("{id}event: {name}\ndata: {v}\n\n").into()
            }
            Format::Ndjson => format!("{v}\n").into(),
        }
    }
}

/// One ephemeral consumer of a live stream, named by this sidecar so it can be deleted.
struct LiveConsumer {
    state: Arc<State>,
    stream: String,
    name: String,
}

impl LiveConsumer {
    async fn create(
        state: &Arc<State>,
        stream: &jetstream::stream::Stream<()>,
        stream_name: &str,
        filter: &str,
        after: u64,
    ) -> Result<(Self, jetstream::consumer::Consumer<pull::Config>)> {
        let name = format!("cw_live_{}_{}_{}", state.config.namespace, state.config.node, ulid::Ulid::new())
            .to_ascii_lowercase();
        let config = pull::Config {
            name: Some(name.clone()),
            description: Some(format!("Causeway live stream of sidecar {}", state.sender())),
            filter_subject: filter.to_owned(),
            deliver_policy: match after.checked_add(1) {
                _ if after == 0 => DeliverPolicy::All,
                Some(start) => DeliverPolicy::ByStartSequence { start_sequence: start },
                // after=u64::MAX: nothing can come after it but new events.
                None => DeliverPolicy::New,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: LIVE_INACTIVE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.map_err(|e| {
            let full = matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(j) if j.error_code().0 == ERR_MAX_CONSUMERS);
            if full {
                Error::Unavailable(format!(
                    "stream {stream_name} holds as many consumers as its maxConsumers allows (listeners and live streams of every sidecar count); close other live streams or raise the EventStore's maxConsumers, then retry"
                ))
            } else {
                Error::Unavailable(format!("live stream on {stream_name}: {e}"))
            }
        })?;
        state.live.register(stream_name, &name);
        Ok((Self { state: state.clone(), stream: stream_name.to_owned(), name }, consumer))
    }

    async fn delete(self) {
        self.state.live.delete(&self.state.js, &self.stream, &self.name).await;
    }
}

/// Opens a live stream.
pub async fn live(state: &Arc<State>, store: &str, req: Request<Incoming>) -> Result<Resp> {
    let q = Query::parse(req.uri().query(), PARAMS)?;
    Conditions::parse(req.headers(), Support::None, "a live stream resumes with Last-Event-ID, not conditions")?;
    let pattern = q.get("subject").unwrap_or(">").to_owned();
    validate_subject_pattern(&pattern)?;
    let after = match header_str(req.headers(), "last-event-id")? {
        Some(id) if !id.is_empty() => id.parse::<u64>().map_err(|_| {
            Error::InvalidHeader(format!("Last-Event-ID {id:?} is not a sequence number from this stream"))
        })?,
        _ => q.u64("after")?.unwrap_or(0),
    };
    let follow = q.bool("follow")?.unwrap_or(true);
    let accept = header_str(req.headers(), "accept")?.unwrap_or("").to_ascii_lowercase();
    let format = if accept.contains("ndjson") || accept.contains("jsonl") || accept.contains("json-seq") {
        Format::Ndjson
    } else {
        Format::Sse
    };
    let record = crate::access::store(state, causeway_api::crd::AccessAction::Read, store).await?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        Error::TooBusy(format!(
            "{} live streams are open, the most allowed (CAUSEWAY_MAX_STREAMS)",
            state.config.max_streams
        ))
    })?;
    state.link.connected(state.config.nats_wait).await?;
    let stream = state.js.get_stream_no_info(&record.stream).await.map_err(|e| {
        Error::Unavailable(format!("stream {} is not available ({e}); is the EventStore reconciled?", record.stream))
    })?;
    let filter = naming::join_subject(&record.subject_prefix, &pattern);
    let (live, consumer) = LiveConsumer::create(state, &stream, &record.stream, &filter, after).await?;
    let pending = consumer.cached_info().num_pending;

    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_FRAMES);
    let st = state.clone();
    let stream_name = record.stream.clone();
    tokio::spawn(async move {
        let _permit = permit;
        st.metrics.streams.inc();
        let mut reader = Reader { st: st.clone(), stream, stream_name: stream_name.clone(), filter, live, consumer };
        let outcome = reader.run(tx, format, after, pending, follow).await;
        if outcome == Err(true) {
            st.metrics.streams_dropped.inc();
            tracing::info!(stream = %stream_name, "dropped a live-stream client that stopped reading");
        }
        reader.live.delete().await;
        st.metrics.streams.dec();
    });

    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut r = Resp::new(BodyExt::boxed(body));
    *r.status_mut() = StatusCode::OK;
    let ct = if format == Format::Sse { "text/event-stream" } else { "application/x-ndjson" };
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(r)
}

/// Reads one live stream in order, replacing its consumer when delivery skips a message.
struct Reader {
    st: Arc<State>,
    stream: jetstream::stream::Stream<()>,
    stream_name: String,
    filter: String,
    live: LiveConsumer,
    consumer: jetstream::consumer::Consumer<pull::Config>,
}

impl Reader {
    /// `Err(true)`: the client stalled; `Err(false)`: the client left.
    async fn run(
        &mut self,
        tx: mpsc::Sender<Bytes>,
        format: Format,
        after: u64,
        pending: u64,
        follow: bool,
    ) -> Result<(), bool> {
        let timeout = self.st.config.stream_send_timeout;
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move {
                tokio::time::timeout(timeout, tx.send(b)).await.map_err(|_| true).and_then(|r| r.map_err(|_| false))
            }
        };
        let mut last = after;
        let mut caught_up = false;
        let mut shutdown = self.st.shutdown.clone();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        if pending == 0 {
            caught_up = true;
            send(format.caught_up(last)).await?;
            if !follow {
                return Ok(());
            }
        }
        'consumers: loop {
            let mut messages = match self.consumer.stream().max_messages_per_batch(64).messages().await {
                Ok(m) => m,
                Err(e) => {
                    let _ = send(format.error(&Error::Unavailable(format!("live stream: {e}")))).await;
                    return Ok(());
                }
            };
            let mut expected_consumer_seq = 1;
            loop {
                tokio::select! {
                    m = messages.next() => {
                        let m = match m {
                            Some(Ok(m)) => m,
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "live-stream consumer failed; recreating it");
                                if self.recreate(last).await.is_err() {
                                    let _ = send(format.error(&Error::Unavailable(format!("live stream: {e}")))).await;
                                    return Ok(());
                                }
                                continue 'consumers;
                            }
                            None => return Ok(()),
                        };
                        let Ok(info) = m.info() else { continue };
                        let (seq, left, cseq) = (info.stream_sequence, info.pending, info.consumer_sequence);
                        if cseq != expected_consumer_seq || seq <= last && last != 0 {
                            // A message was lost between the server and us: start again after the
                            // last event the client has.
                            tracing::debug!(cseq, expected_consumer_seq, "live-stream gap; recreating its consumer");
                            if self.recreate(last).await.is_err() {
                                let _ = send(format.error(&Error::Unavailable("live stream lost its consumer".into()))).await;
                                return Ok(());
                            }
                            continue 'consumers;
                        }
                        expected_consumer_seq += 1;
                        match decode_stored(&self.st, &m.payload, &self.stream_name, seq, None).await {
                            Ok(Decoded::Event(_, json)) => send(format.event(seq, &json)).await?,
                            Ok(Decoded::Skipped(error)) => {
                                self.st.metrics.undecodable("stream");
                                send(format.skipped(seq, &error)).await?;
                            }
                            Ok(Decoded::TooLarge) => unreachable!("no room limit is given"),
                            Err(e) => {
                                // Never skip silently: end the stream, the client resumes from `last`.
                                let _ = send(format.error(&e)).await;
                                return Ok(());
                            }
                        }
                        last = seq;
                        if !caught_up && left == 0 {
                            caught_up = true;
                            send(format.caught_up(last)).await?;
                            if !follow {
                                return Ok(());
                            }
                        }
                    }
                    _ = keepalive.tick(), if format == Format::Sse => send(Bytes::from_static(b": keepalive\n\n")).await?,
                    _ = crate::state::until_true(&mut shutdown) => return Ok(()),
                    _ = tx.closed() => return Err(false),
                }
            }
        }
    }

    /// Replaces the consumer with one that starts after `last`.
    async fn recreate(&mut self, last: u64) -> Result<()> {
        let (live, consumer) =
            LiveConsumer::create(&self.st, &self.stream, &self.stream_name, &self.filter, last).await?;
        let old = std::mem::replace(&mut self.live, live);
        old.delete().await;
        self.consumer = consumer;
        Ok(())
    }
}
