//! `GET /v1/stores/{store}/events?subject=…&after=N&follow=true`: a live stream of a store, as
//! Server-Sent Events (`id:` = sequence, resumable with `Last-Event-ID`) or NDJSON.
//!
//! The stream replays what is stored after `after`, sends a `caughtUp` marker, then follows new
//! events. It is backed by an ordered consumer that only pulls as fast as the client reads: a
//! bounded channel sits between them, and a client that stalls longer than
//! `CAUSEWAY_STREAM_SEND_TIMEOUT` is dropped rather than buffered.

use std::{convert::Infallible, sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use bytes::Bytes;
use causeway_api::{names::validate_subject_pattern, naming};
use futures::StreamExt;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;

use crate::{
    error::{Error, Result},
    http::{Query, Resp, header_str},
    routes::stores::decode_stored,
    state::State,
};

const CHANNEL_FRAMES: usize = 32;
const KEEPALIVE: Duration = Duration::from_secs(15);

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
        match self {
            Format::Sse => format!("event: caughtUp\ndata: {{\"caughtUp\":true,\"lastSequence\":{last}}}\n\n").into(),
            Format::Ndjson => format!("{{\"caughtUp\":true,\"lastSequence\":{last}}}\n").into(),
        }
    }
}

/// Opens a live stream.
pub async fn live(state: &Arc<State>, store: &str, req: Request<Incoming>) -> Result<Resp> {
    let q = Query::parse(req.uri().query());
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
    let record = state.registry.store(store)?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        Error::TooBusy(format!(
            "{} live streams are open, the most allowed (CAUSEWAY_MAX_STREAMS)",
            state.config.max_streams
        ))
    })?;
    let stream = state.js.get_stream_no_info(&record.stream).await.map_err(|e| {
        Error::Unavailable(format!("stream {} is not available ({e}); is the EventStore reconciled?", record.stream))
    })?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: naming::join_subject(&record.subject_prefix, &pattern),
            deliver_policy: if after == 0 {
                DeliverPolicy::All
            } else {
                // Saturating: after=u64::MAX has nothing after it (a plain +1 panicked or wrapped to 0).
                DeliverPolicy::ByStartSequence { start_sequence: after.saturating_add(1) }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Unavailable(format!("live stream on {}: {e}", record.stream)))?;
    let pending = consumer.cached_info().num_pending;
    let mut messages =
        consumer.messages().await.map_err(|e| Error::Unavailable(format!("live stream on {}: {e}", record.stream)))?;

    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_FRAMES);
    let st = state.clone();
    let stream_name = record.stream.clone();
    tokio::spawn(async move {
        let _permit = permit;
        st.metrics.streams.inc();
        let timeout = st.config.stream_send_timeout;
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move {
                tokio::time::timeout(timeout, tx.send(b)).await.map_err(|_| true).and_then(|r| r.map_err(|_| false))
            }
        };
        let mut last = after;
        let mut caught_up = false;
        let mut shutdown = st.shutdown.clone();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        let outcome: Result<(), bool> = async {
            if pending == 0 {
                caught_up = true;
                send(format.caught_up(last)).await?;
                if !follow {
                    return Ok(());
                }
            }
            loop {
                tokio::select! {
                    m = messages.next() => {
                        let Some(Ok(m)) = m else { return Ok(()) };
                        let Ok(info) = m.info() else { continue };
                        let (seq, left) = (info.stream_sequence, info.pending);
                        match decode_stored(&st, &m.payload, &stream_name, seq).await {
                            Ok((_, json)) => send(format.event(seq, &json)).await?,
                            Err(e) => tracing::warn!(error = %e, seq, "skipping an event the live stream cannot decode"),
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
                    _ = tx.closed() => return Ok(()),
                }
            }
        }
        .await;
        if outcome == Err(true) {
            st.metrics.streams_dropped.inc();
            tracing::info!(stream = %stream_name, "dropped a live-stream client that stopped reading");
        }
        st.metrics.streams.dec();
    });

    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut r = Resp::new(BodyExt::boxed(body));
    *r.status_mut() = StatusCode::OK;
    let ct = if format == Format::Sse { "text/event-stream" } else { "application/x-ndjson" };
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
