//! Event stores: append with optimistic concurrency, load, and figures.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy},
};
use causeway_api::{
    envelope::Envelope,
    names::{is_wildcard, validate_subject, validate_subject_pattern},
    naming,
};
use futures::StreamExt;
use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::{
    error::{Error, Result},
    event::{build, parse_request, view_json},
    http::{Query, Resp, etag, header_str, json, json_bytes, parse_etag, read_body},
    publish::{Outgoing, publish_batch, publish_one},
    state::State,
};

/// Most events one load answers (`limit` may ask for fewer).
pub const MAX_LOAD_EVENTS: u64 = 10_000;
const DEFAULT_LOAD_EVENTS: u64 = 1_000;

/// `POST /v1/stores/{store}/subjects/{subject}/events`: appends the body's event(s).
///
/// `If-Match: "<seq>"` or `?expectedSequence=N` makes it conditional on the subject's last
/// sequence (0: the subject must be empty); a mismatch answers 409 with `lastSequence`.
pub async fn append(state: &State, store: &str, subject: &str, req: Request<Incoming>) -> Result<Resp> {
    validate_subject(subject)?;
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query());
    let from_header = header_str(&parts.headers, "if-match")?.map(|v| parse_etag("If-Match", v)).transpose()?;
    let from_query = query.u64("expectedSequence")?;
    let expected = match (from_header, from_query) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::InvalidQuery(format!(
                "If-Match ({a}) and expectedSequence ({b}) disagree; give one of them"
            )));
        }
        (a, b) => a.or(b),
    };
    let body = read_body(&parts.headers, body, state.config.max_body).await?;
    let (drafts, batch) = parse_request(&parts.headers, &body)?;
    let record = state.registry.store(store)?;
    let target = format!("{}/{}", record.meta.namespace, record.meta.name);
    let full_subject = naming::join_subject(&record.subject_prefix, subject);
    let sender = state.sender();
    let outs: Vec<Outgoing> = drafts
        .into_iter()
        .enumerate()
        .map(|(i, d)| Outgoing {
            subject: full_subject.clone(),
            envelope: build(d, None, &state.causes, &state.clock, &sender, &target, subject),
            expected: if i == 0 { expected } else { None },
            msg_id: None,
        })
        .collect();
    let mut resp = if batch {
        let acks = publish_batch(state, outs).await?;
        state.metrics.written("append", acks.iter().all(|a| a.duplicate), acks.len() as u64);
        let last = acks.last().map(|a| a.sequence).unwrap_or(0);
        let mut r = json(StatusCode::ACCEPTED, &acks);
        r.headers_mut().insert(header::ETAG, etag(last));
        r
    } else {
        let ack = publish_one(state, outs.into_iter().next().expect("one event")).await?;
        state.metrics.written("append", ack.duplicate, 1);
        let mut r = json(StatusCode::ACCEPTED, &ack);
        r.headers_mut().insert(header::ETAG, etag(ack.sequence));
        r
    };
    resp.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Decodes a stored message into the JSON an app sees, fetching a blob-stored payload and
/// advancing the Lamport clock.
pub async fn decode_stored(state: &State, payload: &[u8], stream: &str, seq: u64) -> Result<(Envelope, Vec<u8>)> {
    let mut env = Envelope::decode(payload)
        .map_err(|e| Error::Unavailable(format!("event at {stream}#{seq} is not a Causeway event: {e}")))?;
    state.blobs.resolve(&mut env).await?;
    state.clock.observe(env.lamport);
    let v = view_json(&env, stream, seq);
    Ok((env, v))
}

/// `GET /v1/stores/{store}/subjects/{subject}/events?after=N&upTo=M&limit=L`: the events of a
/// subject (or a pattern with `*` and `>`) in order, as `{"events","lastSequence","more"}`.
pub async fn load(state: &State, store: &str, pattern: &str, query: Option<&str>) -> Result<Resp> {
    validate_subject_pattern(pattern)?;
    let q = Query::parse(query);
    let after = q.u64("after")?.unwrap_or(0);
    let up_to = q.u64("upTo")?;
    let limit = q.u64("limit")?.unwrap_or(DEFAULT_LOAD_EVENTS);
    if limit == 0 || limit > MAX_LOAD_EVENTS {
        return Err(Error::InvalidQuery(format!("limit must be between 1 and {MAX_LOAD_EVENTS}")));
    }
    let record = state.registry.store(store)?;
    let filter = naming::join_subject(&record.subject_prefix, pattern);
    let stream =
        state.js.get_stream_no_info(&record.stream).await.map_err(|e| stream_unavailable(&record.stream, e))?;

    // Where the matching events end, as the stream's leader says before we read. A load reads
    // through an ephemeral consumer, which JetStream may place on a replica that is still catching
    // up (a node that has just restarted); such a read ends early, and answering it would hide
    // acknowledged events. Reading again finds them (or the answer is a 503 to retry).
    let leader_last = match stream.get_last_raw_message_by_subject(&filter).await {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(Error::Unavailable(format!("{}: {e}", record.stream))),
    };
    let mut attempt = 0;
    let read = loop {
        let read = if up_to.is_none_or(|u| u > after) {
            read_events(state, &stream, &record.stream, &filter, after, up_to, limit).await?
        } else {
            Read::default()
        };
        if read.more
            || read.past_up_to
            || read.last.unwrap_or(after) >= leader_last
            || up_to.is_some_and(|u| u <= after)
        {
            break read;
        }
        attempt += 1;
        if attempt >= LOAD_ATTEMPTS {
            return Err(Error::Unavailable(format!(
                "the replica of {} that served this load is behind its leader (a NATS node is catching up); load again",
                record.stream
            )));
        }
        tracing::debug!(stream = %record.stream, leader_last, seen = ?read.last, "load read a lagging replica; reading again");
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
    };
    let Read { events, last: last_seq, more, bytes, .. } = read;
    let last_sequence = match last_seq {
        Some(s) => s,
        // Nothing after `after`: for one subject, say where it stands so an append can use it.
        None if !is_wildcard(pattern) => match up_to {
            Some(u) if leader_last > u => after,
            _ => leader_last,
        },
        None => after,
    };
    let mut body = Vec::with_capacity(bytes + events.len() + 64);
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.extend_from_slice(format!("],\"lastSequence\":{last_sequence},\"more\":{more}}}").as_bytes());
    let mut r = json_bytes(StatusCode::OK, body);
    if !is_wildcard(pattern) && !more {
        r.headers_mut().insert(header::ETAG, etag(last_sequence));
    }
    Ok(r)
}

/// Reads of one load before it answers 503 because the replica it reads stays behind.
const LOAD_ATTEMPTS: u64 = 4;

/// What one read of a load found.
#[derive(Default)]
struct Read {
    /// The events as the app sees them (JSON).
    events: Vec<Vec<u8>>,
    /// Sequence of the last one.
    last: Option<u64>,
    /// Cut by `limit` or the byte budget.
    more: bool,
    /// Bytes of JSON.
    bytes: usize,
    /// An event past `upTo` was seen (so the replica was not behind up to there).
    past_up_to: bool,
}

/// Reads the events matching `filter` after `after` (up to `up_to`) through an ephemeral consumer.
async fn read_events(
    state: &State,
    stream: &jetstream::stream::Stream<()>,
    stream_name: &str,
    filter: &str,
    after: u64,
    up_to: Option<u64>,
    limit: u64,
) -> Result<Read> {
    let mut read = Read::default();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: if after == 0 {
                DeliverPolicy::All
            } else {
                // Saturating: after=u64::MAX has nothing after it (a plain +1 panicked or wrapped to 0).
                DeliverPolicy::ByStartSequence { start_sequence: after.saturating_add(1) }
            },
            filter_subject: filter.to_owned(),
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| stream_unavailable(stream_name, e))?;
    let name = consumer.cached_info().name.clone();
    let pending = consumer.cached_info().num_pending;
    let result = async {
        if pending == 0 {
            return Ok(());
        }
        let batch = pending.min(limit + 1).min(256) as usize;
        let mut msgs = consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await
            .map_err(|e| Error::Unavailable(format!("load from {stream_name}: {e}")))?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), msgs.next()).await;
            let m = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(Error::Unavailable(format!("load from {stream_name}: {e}"))),
                Ok(None) => break,
                Err(_) => return Err(Error::Timeout(format!("load from {stream_name} stalled"))),
            };
            let info = m.info().map_err(|e| Error::Unavailable(e.to_string()))?;
            let (seq, left) = (info.stream_sequence, info.pending);
            if up_to.is_some_and(|u| seq > u) {
                read.past_up_to = true;
                break;
            }
            if read.events.len() as u64 >= limit || read.bytes >= state.config.max_load_bytes {
                read.more = true;
                break;
            }
            let (_, v) = decode_stored(state, &m.payload, stream_name, seq).await?;
            read.bytes += v.len();
            read.events.push(v);
            read.last = Some(seq);
            if left == 0 {
                break;
            }
        }
        Ok(())
    }
    .await;
    let js = state.js.clone();
    let stream_name = stream_name.to_owned();
    tokio::spawn(async move {
        let _ = js.delete_consumer_from_stream(&name, &stream_name).await;
    });
    result.map(|()| read)
}

fn stream_unavailable(stream: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("stream {stream} is not available ({e}); is the EventStore reconciled?"))
}

/// `GET /v1/stores/{store}`: offsets and figures.
pub async fn figures(state: &State, store: &str) -> Result<Resp> {
    let record = state.registry.store(store)?;
    let mut stream = state.js.get_stream(&record.stream).await.map_err(|e| stream_unavailable(&record.stream, e))?;
    let info = stream.info().await.map_err(|e| stream_unavailable(&record.stream, e))?;
    let s = &info.state;
    Ok(json(
        StatusCode::OK,
        &json!({
            "store": record.meta.name,
            "stream": record.stream,
            "subjects": naming::join_subject(&record.subject_prefix, ">"),
            "firstSequence": s.first_sequence,
            "lastSequence": s.last_sequence,
            "events": s.messages,
            "bytes": s.bytes,
            "subjectCount": s.subjects_count,
            "consumers": s.consumer_count,
        }),
    ))
}
