//! Publishing envelopes to JetStream: one at a time, or as an all-or-nothing atomic batch.
//!
//! Requests go straight to the stream's subject and the pub ack is parsed here, so the API error
//! code decides the answer (`wrong last sequence` → 409 with the actual sequence, atomic publish
//! disabled → 422, and so on) rather than an error string.

use std::time::Duration;

use async_nats::{HeaderMap, Request, RequestErrorKind};
use bytes::Bytes;
use causeway_api::envelope::{Envelope, HEADER_MSG_ID, HEADER_TYPE};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    state::State,
};

const EXPECTED_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";
const BATCH_ID: &str = "Nats-Batch-Id";
const BATCH_SEQ: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT: &str = "Nats-Batch-Commit";

const ERR_WRONG_LAST_SEQUENCE: u64 = 10071;
const ERR_WRONG_LAST_MSG_ID: u64 = 10070;
const ERR_ATOMIC_DISABLED: u64 = 10174;
const ERR_BATCH_DUPLICATE_ID: u64 = 10201;

/// How long to wait for a pub ack.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// An event ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Full NATS subject.
    pub subject: String,
    /// The event.
    pub envelope: Envelope,
    /// Optimistic concurrency: the subject's expected last sequence (0 = empty).
    pub expected: Option<u64>,
    /// Deduplication id when it is not the event id (dead letters carry the original's id).
    pub msg_id: Option<String>,
}

/// What JetStream answered for one event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ack {
    /// The event id.
    pub id: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// True when an event with this id was already stored (within the duplicate window).
    pub duplicate: bool,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct PubAck {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    count: Option<u64>,
    error: Option<ApiError>,
}

fn headers(out: &Outgoing) -> HeaderMap {
    let env = &out.envelope;
    let mut h = HeaderMap::new();
    h.insert(HEADER_MSG_ID, out.msg_id.as_deref().unwrap_or(env.id.as_str()));
    h.insert(HEADER_TYPE, env.event_type.as_str());
    h
}

async fn request(state: &State, subject: &str, h: HeaderMap, payload: Bytes) -> Result<PubAck> {
    let req = Request::new().headers(h).payload(payload).timeout(Some(ACK_TIMEOUT));
    let msg = state.client.send_request(subject.to_owned(), req).await.map_err(|e| match e.kind() {
        // Only a stream's leader listens on its subjects, so a clustered stream that is electing
        // a new leader (after losing a node) has no responders for a few seconds, just like a
        // stream that does not exist.
        RequestErrorKind::NoResponders => Error::Unavailable(format!(
            "no stream answered for {subject}: either no stream captures it (check that the EventStore or Node is \
             reconciled: causeway apply), or its stream is electing a leader after losing a NATS node (retry in a few \
             seconds with the same event id)"
        )),
        RequestErrorKind::TimedOut => Error::Timeout(format!("JetStream did not acknowledge {subject} in time")),
        RequestErrorKind::MaxPayloadExceeded => {
            Error::InvalidEvent(format!("the event is larger than the server's max_payload: {e}"))
        }
        _ => Error::Unavailable(format!("NATS: {e}")),
    })?;
    if msg.payload.is_empty() {
        // Flow-control answer to a batch message that is not the commit.
        return Ok(PubAck { seq: 0, duplicate: false, count: None, error: None });
    }
    serde_json::from_slice(&msg.payload).map_err(|e| Error::Unavailable(format!("unexpected JetStream answer: {e}")))
}

fn api_error(e: ApiError) -> Error {
    match e.err_code {
        ERR_WRONG_LAST_SEQUENCE => Error::SequenceConflict { last: parse_last_sequence(&e.description).unwrap_or(0) },
        ERR_ATOMIC_DISABLED => Error::BatchNotSupported(
            "this stream does not accept all-or-nothing batches (allowAtomicBatch is off); send the events one by one"
                .into(),
        ),
        ERR_BATCH_DUPLICATE_ID => Error::DuplicateInBatch { ids: vec![] },
        _ => Error::Unavailable(format!("JetStream refused the event: {} (code {})", e.description, e.err_code)),
    }
}

/// `wrong last sequence: 12` → 12.
fn parse_last_sequence(d: &str) -> Option<u64> {
    d.rsplit(':').next()?.trim().parse().ok()
}

/// Publishes one event and waits for its ack.
pub async fn publish_one(state: &State, mut out: Outgoing) -> Result<Ack> {
    let payload = state.blobs.encode(&mut out.envelope, state.max_payload()).await?;
    let mut h = headers(&out);
    if let Some(n) = out.expected {
        h.insert(EXPECTED_SUBJECT_SEQ, n.to_string().as_str());
    }
    let ack = request(state, &out.subject, h, payload.into()).await?;
    let id = out.envelope.id.clone();
    match ack.error {
        None => Ok(Ack { id, sequence: ack.seq, duplicate: ack.duplicate }),
        Some(e) => match api_error(e) {
            // A retried conditional append fails its expectation; if its id is already stored,
            // it is a duplicate, not a conflict.
            Error::SequenceConflict { last } => match probe(state, &out.subject, &id).await? {
                Some(seq) => Ok(Ack { id, sequence: seq, duplicate: true }),
                None => Err(Error::SequenceConflict { last }),
            },
            other => Err(other),
        },
    }
}

/// Asks JetStream whether an event id is in the stream's duplicate window, without storing
/// anything: a publish whose `Nats-Expected-Last-Msg-Id` can never match is refused unless it is
/// a duplicate, which JetStream checks first and answers with the stored sequence.
async fn probe(state: &State, subject: &str, id: &str) -> Result<Option<u64>> {
    let mut h = HeaderMap::new();
    h.insert(HEADER_MSG_ID, id);
    h.insert(EXPECTED_LAST_MSG_ID, format!("{}-{}", crate::event::RESERVED_ID_PREFIX, ulid::Ulid::new()).as_str());
    let ack = request(state, subject, h, Bytes::new()).await?;
    match ack.error {
        None if ack.duplicate => Ok(Some(ack.seq)),
        None => Err(Error::Internal(format!("probe for {id} was stored at {}; this is a bug", ack.seq))),
        Some(e) if e.err_code == ERR_WRONG_LAST_MSG_ID => Ok(None),
        Some(e) => Err(api_error(e)),
    }
}

/// Publishes events all-or-nothing. One event is a plain publish; more use JetStream's atomic
/// batch (nats-server 2.12+, stream `allow_atomic`). `expected` of the first event applies.
pub async fn publish_batch(state: &State, mut outs: Vec<Outgoing>) -> Result<Vec<Ack>> {
    if outs.len() == 1 {
        return Ok(vec![publish_one(state, outs.remove(0)).await?]);
    }
    let mut payloads = Vec::with_capacity(outs.len());
    for o in &mut outs {
        payloads.push(state.blobs.encode(&mut o.envelope, state.max_payload()).await?);
    }
    let batch_id = ulid::Ulid::new().to_string();
    let n = outs.len();
    let mut last = None;
    for (i, (o, p)) in outs.iter().zip(payloads).enumerate() {
        let mut h = headers(o);
        h.insert(BATCH_ID, batch_id.as_str());
        h.insert(BATCH_SEQ, (i + 1).to_string().as_str());
        if i == 0
            && let Some(e) = o.expected
        {
            h.insert(EXPECTED_SUBJECT_SEQ, e.to_string().as_str());
        }
        if i + 1 == n {
            h.insert(BATCH_COMMIT, "1");
            last = Some(request(state, &o.subject, h, p.into()).await?);
        } else if i == 0 {
            // The first message is a request, so a stream that refuses batches says so at once.
            if let Some(e) = request(state, &o.subject, h, p.into()).await?.error {
                return Err(api_error(e));
            }
        } else {
            state
                .client
                .publish_with_headers(o.subject.clone(), h, p.into())
                .await
                .map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
        }
    }
    let ack = last.expect("a batch has a last event");
    match ack.error {
        None => {
            let count = ack.count.unwrap_or(n as u64);
            let first = ack.seq + 1 - count;
            Ok(outs
                .iter()
                .enumerate()
                .map(|(i, o)| Ack { id: o.envelope.id.clone(), sequence: first + i as u64, duplicate: false })
                .collect())
        }
        Some(e) => match api_error(e) {
            // A batch is stored whole or not at all, so a retried batch finds all its ids stored.
            Error::DuplicateInBatch { .. } => {
                let mut acks = Vec::with_capacity(n);
                let mut stored = Vec::new();
                for o in &outs {
                    match probe(state, &o.subject, &o.envelope.id).await? {
                        Some(seq) => {
                            stored.push(o.envelope.id.clone());
                            acks.push(Ack { id: o.envelope.id.clone(), sequence: seq, duplicate: true });
                        }
                        None => acks.push(Ack { id: o.envelope.id.clone(), sequence: 0, duplicate: false }),
                    }
                }
                if stored.len() == n { Ok(acks) } else { Err(Error::DuplicateInBatch { ids: stored }) }
            }
            Error::SequenceConflict { last } => match probe(state, &outs[0].subject, &outs[0].envelope.id).await? {
                Some(_) => {
                    let mut acks = Vec::with_capacity(n);
                    for o in &outs {
                        let seq = probe(state, &o.subject, &o.envelope.id).await?.unwrap_or(0);
                        acks.push(Ack { id: o.envelope.id.clone(), sequence: seq, duplicate: true });
                    }
                    Ok(acks)
                }
                None => Err(Error::SequenceConflict { last }),
            },
            other => Err(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_sequence_from_description() {
        assert_eq!(parse_last_sequence("wrong last sequence: 12"), Some(12));
        assert_eq!(parse_last_sequence("wrong last sequence"), None);
    }
}
