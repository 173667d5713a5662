//! Event stores: append with optimistic concurrency, load, and figures.
//!
//! A load reads with batched direct gets: no consumer is created (a stream holds at most 1,000,
//! kept for listeners), and any replica may answer. Live streams ([`super::stream`]) read the
//! same way, through [`read_page`] and [`decode_stored`]. An event that cannot be decoded
//! (written by something else, or whose payload blob is gone) is skipped and reported in
//! `skipped`, so one bad message never makes a store unreadable.

use std::time::Duration;

use async_nats::jetstream;
use causeway_api::crd::AccessAction;
use causeway_api::{
    names::{is_wildcard, validate_subject, validate_subject_pattern},
    naming,
};
use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::{
    conditional::{Conditions, Support, Tags, Verdict},
    error::{Error, Result},
    event::{Decoded, build, decode_stored, parse_request},
    http::{Query, Resp, etag, json, json_bytes, read_body},
    nats::{Batch, direct_batch, resilient},
    publish::{Ack, Outgoing, publish_batch, publish_one},
    state::State,
};

/// Most events one load answers (`limit` may ask for fewer).
pub const MAX_LOAD_EVENTS: u64 = 10_000;
const DEFAULT_LOAD_EVENTS: u64 = 1_000;
/// Rounds of `If-Match: *` (the subject must hold events) before giving up under contention.
const NONEMPTY_ROUNDS: usize = 8;

const APPEND_PARAMS: &[&str] = &["expectedSequence"];
const LOAD_PARAMS: &[&str] = &["after", "upTo", "limit"];

/// What an append expects of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Nothing.
    Nothing,
    /// This last sequence (0: empty).
    Sequence(u64),
    /// At least one event (`If-Match: *`).
    NonEmpty,
}

fn expectation(conds: &Conditions, query: &Query) -> Result<Expect> {
    let from_header = match (&conds.if_match, &conds.if_none_match) {
        (None, None) => None,
        (Some(t), None) => Some(match t {
            Tags::Any => Expect::NonEmpty,
            t => Expect::Sequence(t.single().ok_or_else(|| {
                Error::InvalidHeader("If-Match on an append takes one sequence (or *), not a list".into())
            })?),
        }),
        (None, Some(Tags::Any)) => Some(Expect::Sequence(0)),
        (None, Some(_)) => {
            return Err(Error::UnsupportedCondition {
                header: "If-None-Match",
                supported: "an append takes If-None-Match: * (the subject must be empty) or If-Match: \"<sequence>\"",
            });
        }
        (Some(_), Some(_)) => {
            return Err(Error::InvalidHeader("give If-Match or If-None-Match on an append, not both".into()));
        }
    };
    let from_query = query.u64("expectedSequence")?.map(Expect::Sequence);
    match (from_header, from_query) {
        (Some(a), Some(b)) if a != b => Err(Error::InvalidQuery(format!(
            "the conditional header ({a:?}) and expectedSequence ({b:?}) disagree; give one of them"
        ))),
        (a, b) => Ok(a.or(b).unwrap_or(Expect::Nothing)),
    }
}

/// `POST /v1/stores/{store}/subjects/{subject}/events`: appends the body's event(s).
///
/// `If-Match: "<seq>"` or `?expectedSequence=N` makes it conditional on the subject's last
/// sequence (0: the subject must be empty), `If-None-Match: *` means "must be empty" and
/// `If-Match: *` "must hold events"; a mismatch answers 409 with `lastSequence`.
pub async fn append(state: &State, store: &str, subject: &str, req: Request<Incoming>) -> Result<Resp> {
    validate_subject(subject)?;
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query(), APPEND_PARAMS)?;
    let conds = Conditions::parse(&parts.headers, Support::Tags, "")?;
    let expect = expectation(&conds, &query)?;
    let body = read_body(&parts.headers, body, state.body_limits()).await?;
    let (drafts, batch) = parse_request(&parts.headers, &body)?;
    let record = crate::access::store(state, AccessAction::Append, store).await?;
    let target = format!("{}/{}", record.meta.namespace, record.meta.name);
    let full_subject = naming::join_subject(&record.subject_prefix, subject);
    let versions = crate::schemas::check(
        state.schemas.store(&record).as_deref(),
        drafts.iter().map(|d| (d.event_type.as_str(), &d.payload)),
        batch,
    )?;
    let sender = state.sender();
    let envelopes: Vec<_> = drafts
        .into_iter()
        .zip(versions)
        .map(|(d, version)| {
            let mut env = build(d, None, &state.causes, &state.clock, sender, &target, subject);
            env.schema_version = version;
            env
        })
        .collect();
    let publish = |expected: Option<u64>| {
        let outs: Vec<Outgoing> = envelopes
            .iter()
            .enumerate()
            .map(|(i, e)| Outgoing {
                subject: full_subject.clone(),
                stream: record.stream.clone(),
                prefix: record.subject_prefix.clone(),
                envelope: e.clone(),
                expected: if i == 0 { expected } else { None },
                msg_id: None,
            })
            .collect();
        async move {
            if batch {
                publish_batch(state, outs).await
            } else {
                publish_one(state, outs.into_iter().next().expect("one event")).await.map(|a| vec![a])
            }
        }
    };
    let acks: Vec<Ack> = match expect {
        Expect::Nothing => publish(None).await?,
        Expect::Sequence(n) => publish(Some(n)).await?,
        Expect::NonEmpty => {
            let mut result = Err(Error::SequenceConflict { last: 0 });
            for _ in 0..NONEMPTY_ROUNDS {
                let last = leader_last(state, &record.stream, &full_subject).await?;
                if last == 0 {
                    result = Err(Error::SequenceConflict { last: 0 });
                    break;
                }
                result = publish(Some(last)).await;
                if !matches!(result, Err(Error::SequenceConflict { last }) if last > 0) {
                    break;
                }
            }
            result?
        }
    };
    state.metrics.written("append", acks.iter().all(|a| a.duplicate), acks.len() as u64);
    let last = acks.last().map(|a| a.sequence).unwrap_or(0);
    let mut r = if batch { json(StatusCode::ACCEPTED, &acks) } else { json(StatusCode::ACCEPTED, &acks[0]) };
    r.headers_mut().insert(header::ETAG, etag(last));
    Ok(r)
}

/// The last sequence of `filter` (a subject or pattern) as the stream's leader says: 0 when none.
async fn leader_last(state: &State, stream: &str, filter: &str) -> Result<u64> {
    resilient(&state.link, state.config.nats_wait, || async {
        let s = state.js.get_stream_no_info(stream).await.map_err(|e| stream_unavailable(stream, e))?;
        match s.get_last_raw_message_by_subject(filter).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(stream_unavailable(stream, e)),
        }
    })
    .await
}

/// `GET /v1/stores/{store}/subjects/{subject}/events?after=N&upTo=M&limit=L`: the events of a
/// subject (or a pattern with `*` and `>`) in order, as `{"events","lastSequence","more"}`, plus
/// `skipped` when some could not be decoded.
pub async fn load(state: &State, store: &str, pattern: &str, req: &Request<Incoming>) -> Result<Resp> {
    validate_subject_pattern(pattern)?;
    let q = Query::parse(req.uri().query(), LOAD_PARAMS)?;
    let wildcard = is_wildcard(pattern);
    let conds = Conditions::parse(
        req.headers(),
        if wildcard { Support::None } else { Support::Tags },
        "conditions apply to one subject, not to a pattern",
    )?;
    let after = q.u64("after")?.unwrap_or(0);
    let up_to = q.u64("upTo")?;
    let limit = q.u64("limit")?.unwrap_or(DEFAULT_LOAD_EVENTS);
    if limit == 0 || limit > MAX_LOAD_EVENTS {
        return Err(Error::InvalidQuery(format!("limit must be between 1 and {MAX_LOAD_EVENTS}")));
    }
    let record = crate::access::store(state, AccessAction::Read, store).await?;
    let filter = naming::join_subject(&record.subject_prefix, pattern);

    // Where the matching events end, as the stream's leader says before we read. Direct gets may
    // be answered by a replica that is still catching up (a node that has just restarted); such a
    // read ends early, and answering it would hide acknowledged events. Reading again finds them
    // (or the answer is a 503 to retry).
    let leader_last = leader_last(state, &record.stream, &filter).await?;
    if !wildcard {
        match conds.evaluate_subject(leader_last, true) {
            Verdict::Proceed => {}
            Verdict::NotModified => {
                let mut r = crate::http::empty(StatusCode::NOT_MODIFIED);
                r.headers_mut().insert(header::ETAG, etag(leader_last));
                return Ok(r);
            }
            Verdict::Failed => {
                return Err(Error::PreconditionFailed {
                    message: format!("the subject's last sequence is {leader_last}, which If-Match does not name"),
                    revision: Some(leader_last),
                });
            }
        }
    }
    let mut attempt = 0;
    let read = loop {
        let read = if up_to.is_none_or(|u| u > after) {
            read_events(state, &record.stream, &filter, after, up_to, limit).await?
        } else {
            Read::default()
        };
        if read.more
            || read.past_up_to
            || read.last.unwrap_or(after) >= leader_last
            || up_to.is_some_and(|u| u <= after || read.last.unwrap_or(after) >= u)
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
    let Read { events, skipped, last: last_seq, more, bytes, .. } = read;
    let last_sequence = match last_seq {
        Some(s) => s,
        // Nothing after `after`: for one subject, say where it stands so an append can use it.
        None if !wildcard => match up_to {
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
    body.extend_from_slice(format!("],\"lastSequence\":{last_sequence},\"more\":{more}").as_bytes());
    if !skipped.is_empty() {
        body.extend_from_slice(b",\"skipped\":");
        body.extend_from_slice(&serde_json::to_vec(&skipped).unwrap_or_else(|_| b"[]".to_vec()));
    }
    body.push(b'}');
    let mut r = json_bytes(StatusCode::OK, body);
    // The ETag names the subject's state, so only an answer that reaches its end carries it.
    if !wildcard && !more && last_sequence == leader_last {
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
    /// Events that could not be decoded: `{"sequence","error"}`.
    skipped: Vec<Value>,
    /// Sequence of the last event read (decoded or skipped).
    last: Option<u64>,
    /// Cut by `limit` or the byte budget.
    more: bool,
    /// Bytes of JSON.
    bytes: usize,
    /// An event past `upTo` was seen (so the replica was not behind up to there).
    past_up_to: bool,
}

/// Events fetched per direct get.
pub(crate) const PAGE: u64 = 256;

/// One batched direct get of the events matching `filter` from sequence `next` on: at most `want`
/// of them and about `max_bytes` (the first always comes). A NATS outage is waited out as by every
/// request (`CAUSEWAY_NATS_WAIT`). Loads and live streams read through it.
pub(crate) async fn read_page(
    state: &State,
    stream: &str,
    filter: &str,
    next: u64,
    want: usize,
    max_bytes: usize,
) -> Result<Batch> {
    resilient(&state.link, state.config.nats_wait, || {
        direct_batch(&state.client, stream, filter, next, want, max_bytes)
    })
    .await
}

/// Reads the events matching `filter` after `after` (up to `up_to`) with batched direct gets.
async fn read_events(
    state: &State,
    stream: &str,
    filter: &str,
    after: u64,
    up_to: Option<u64>,
    limit: u64,
) -> Result<Read> {
    let budget = state.config.max_load_bytes;
    let mut read = Read::default();
    // after=u64::MAX has nothing after it (a plain +1 panicked or wrapped to 0).
    let Some(mut next) = after.checked_add(1) else { return Ok(read) };
    'pages: loop {
        let want = (limit - read.events.len() as u64 + 1).min(PAGE) as usize;
        let page = read_page(state, stream, filter, next, want, budget.saturating_sub(read.bytes).max(1)).await?;
        let Some(last_in_page) = page.messages.last().map(|m| m.sequence) else { break };
        for m in page.messages {
            let seq = m.sequence;
            if up_to.is_some_and(|u| seq > u) {
                read.past_up_to = true;
                break 'pages;
            }
            if read.events.len() as u64 >= limit || (read.bytes >= budget && !read.events.is_empty()) {
                read.more = true;
                break 'pages;
            }
            let room = (!read.events.is_empty()).then(|| budget.saturating_sub(read.bytes));
            match decode_stored(state, &m.payload, stream, seq, room).await? {
                Decoded::Event(_, v) => {
                    read.bytes += v.len();
                    read.events.push(v);
                }
                // Its blob alone would overflow the answer: it starts the next one.
                Decoded::TooLarge if !read.events.is_empty() => {
                    read.more = true;
                    break 'pages;
                }
                Decoded::TooLarge => unreachable!("a budget is only given while the answer holds events"),
                Decoded::Skipped(error) => {
                    state.metrics.undecodable("load");
                    read.skipped.push(json!({"sequence": seq, "error": error}));
                }
            }
            read.last = Some(seq);
        }
        if page.pending == 0 {
            break;
        }
        next = last_in_page + 1;
    }
    Ok(read)
}

fn stream_unavailable(stream: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("stream {stream} is not available ({e}); is the EventStore reconciled?"))
}

/// `GET /v1/stores/{store}`: offsets and figures.
pub async fn figures(state: &State, store: &str, req: &Request<Incoming>) -> Result<Resp> {
    Query::parse(req.uri().query(), &[])?;
    Conditions::parse(req.headers(), Support::None, "the figures of a store take no condition")?;
    let record = crate::access::store(state, AccessAction::Read, store).await?;
    let info = resilient(&state.link, state.config.nats_wait, || async {
        let mut stream =
            state.js.get_stream(&record.stream).await.map_err(|e| stream_unavailable(&record.stream, e))?;
        stream.info().await.cloned().map_err(|e| stream_unavailable(&record.stream, e))
    })
    .await?;
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
            "maxConsumers": info.config.max_consumers,
        }),
    ))
}
