//! Publishing envelopes to JetStream: one at a time, or as an all-or-nothing atomic batch.
//!
//! Requests go straight to the stream's subject and the pub ack is parsed here, so the API error
//! code decides the answer (`wrong last sequence` → 409 with the actual sequence, atomic publish
//! disabled → 422, and so on) rather than an error string.
//!
//! What an answer promises:
//! - `202 duplicate:false`: this request's event is stored (with its payload, inline or as a blob);
//! - `202 duplicate:true`: an event with this id was already stored *on the same subject*, and
//!   nothing was changed; the same id on another subject of the stream is a 409 `id_conflict`
//!   naming where it lives;
//! - any 4xx: nothing was stored, and the blob this request wrote, if any, is deleted;
//! - a 503 or 504 after the request was sent: it may or may not be stored, and retrying it
//!   unchanged is safe (the same id is stored once).

use async_nats::HeaderMap;
use bytes::Bytes;
use causeway_api::{
    envelope::{Envelope, HEADER_MSG_ID, HEADER_TYPE},
    naming,
    registry::NodeRecord,
};
use serde::Serialize;

use crate::{
    blob::{HEADROOM, Written},
    error::{Error, Result},
    nats::{ApiError, PubAck, request_ack, resilient},
    state::State,
};

const EXPECTED_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";
const BATCH_ID: &str = "Nats-Batch-Id";
const BATCH_SEQ: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// JetStream: the subject's last sequence is not the expected one.
pub const ERR_WRONG_LAST_SEQUENCE: u64 = 10071;
const ERR_WRONG_LAST_MSG_ID: u64 = 10070;
const ERR_ATOMIC_DISABLED: u64 = 10174;
const ERR_BATCH_DUPLICATE_ID: u64 = 10201;

/// An event ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Full NATS subject.
    pub subject: String,
    /// The stream that captures it.
    pub stream: String,
    /// The subject prefix of its store or inbox (to name a subject in errors).
    pub prefix: String,
    /// The event.
    pub envelope: Envelope,
    /// Optimistic concurrency: the subject's expected last sequence (0 = empty).
    pub expected: Option<u64>,
    /// Deduplication id when it is not the event id (dead letters carry the original's id).
    pub msg_id: Option<String>,
}

impl Outgoing {
    /// An event for `target`'s inbox, published under this sidecar's own sender tokens
    /// (`cw.<ns>.to.<node>.<our ns>.<our node>.<type>`): its NATS credential allows those and no
    /// other node's, so the subject proves who sent it.
    pub fn to_inbox(state: &State, target: &NodeRecord, envelope: Envelope) -> Self {
        let c = &state.config;
        let prefix = naming::inbox_send_prefix(&target.meta.namespace, &target.meta.name, &c.namespace, &c.node);
        Self {
            subject: naming::join_subject(&prefix, &envelope.event_type),
            stream: target.inbox_stream.clone(),
            prefix,
            envelope,
            expected: None,
            msg_id: None,
        }
    }
}

/// What JetStream answered for one event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ack {
    /// The event id.
    pub id: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// True when an event with this id was already stored on this subject (within the
    /// duplicate window), so nothing new was stored.
    pub duplicate: bool,
}

fn headers(out: &Outgoing) -> HeaderMap {
    let env = &out.envelope;
    let mut h = HeaderMap::new();
    h.insert(HEADER_MSG_ID, out.msg_id.as_deref().unwrap_or(env.id.as_str()));
    h.insert(HEADER_TYPE, env.event_type.as_str());
    h
}

/// Maps a stream's refusal to the API's answer.
pub fn api_error(e: ApiError) -> Error {
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

/// Encodes an envelope, moving its payload to a new blob when the message would not fit.
async fn encode(state: &State, env: &mut Envelope) -> Result<(Bytes, Option<Written>)> {
    let max_payload = state.max_payload()?;
    let bytes = env.encode();
    if bytes.len() + HEADROOM <= max_payload {
        return Ok((bytes.into(), None));
    }
    let payload = rmp_serde::to_vec_named(&env.payload).map_err(|e| Error::Internal(e.to_string()))?;
    state.link.connected(state.config.nats_wait).await?;
    let written = state.blobs.put("event", &env.id, &payload, max_payload).await?;
    env.blob = Some(written.blob.clone());
    let saved = std::mem::replace(&mut env.payload, serde_json::Value::Null);
    let bytes = env.encode();
    if bytes.len() + HEADROOM > max_payload {
        env.payload = saved;
        env.blob = None;
        state.blobs.delete(&written).await;
        return Err(Error::InvalidEvent(format!(
            "the event without its payload is still {} bytes, over the server's max_payload of {max_payload}; shorten its extensions",
            bytes.len()
        )));
    }
    Ok((bytes.into(), Some(written)))
}

/// Deletes the blobs of a request unless its own event was stored: after a refusal (4xx) or
/// a duplicate, nothing points to them. After a 503/504 the event may be stored, so they stay.
async fn tidy<T>(state: &State, blobs: &[Written], result: &Result<T>, stored_new: impl Fn(&T) -> bool) {
    let unused = match result {
        Ok(v) => !stored_new(v),
        Err(e) => e.status().is_client_error(),
    };
    if unused {
        for w in blobs {
            state.blobs.delete(w).await;
        }
    }
}

/// Publishes one event and waits for its ack.
pub async fn publish_one(state: &State, mut out: Outgoing) -> Result<Ack> {
    let (payload, blob) = encode(state, &mut out.envelope).await?;
    let result = publish_encoded(state, &out, payload).await;
    tidy(state, blob.as_slice(), &result, |a: &Ack| !a.duplicate).await;
    if let Ok(a) = &result
        && !a.duplicate
    {
        crate::trace::stored(state, &out, a.sequence);
    }
    result
}

async fn publish_encoded(state: &State, out: &Outgoing, payload: Bytes) -> Result<Ack> {
    let mut h = headers(out);
    if let Some(n) = out.expected {
        h.insert(EXPECTED_SUBJECT_SEQ, n.to_string().as_str());
    }
    let ack = resilient(&state.link, state.config.nats_wait, || {
        request_ack(&state.client, &out.subject, h.clone(), payload.clone())
    })
    .await?;
    let id = out.envelope.id.clone();
    match ack.error {
        None if ack.duplicate => {
            check_same_subject(state, out, ack.seq).await?;
            Ok(Ack { id, sequence: ack.seq, duplicate: true })
        }
        None => Ok(Ack { id, sequence: ack.seq, duplicate: false }),
        Some(e) => match api_error(e) {
            // A retried conditional append fails its expectation; if its id is already stored,
            // it is a duplicate, not a conflict.
            Error::SequenceConflict { last } => match probe(state, &out.subject, msg_id(out)).await? {
                Some(seq) => {
                    check_same_subject(state, out, seq).await?;
                    Ok(Ack { id, sequence: seq, duplicate: true })
                }
                None => Err(Error::SequenceConflict { last }),
            },
            other => Err(other),
        },
    }
}

fn msg_id(out: &Outgoing) -> &str {
    out.msg_id.as_deref().unwrap_or(out.envelope.id.as_str())
}

/// A duplicate is only honest when the stored event lives on the subject this request named.
/// JetStream deduplicates per stream, so the same id on another subject would otherwise be
/// answered as if that subject held it.
///
/// A sidecar whose NATS credential may not read the stream (an inbox of another node, when node
/// credentials are issued: sending does not grant reading) cannot check, and trusts JetStream's
/// per-stream answer: an event with this id is already in that inbox.
async fn check_same_subject(state: &State, out: &Outgoing, seq: u64) -> Result<()> {
    let stream = out.stream.clone();
    if state.creds.as_ref().is_some_and(|c| !c.may_publish(&format!("$JS.API.DIRECT.GET.{stream}"))) {
        return Ok(());
    }
    let read = resilient(&state.link, state.config.nats_wait, || async {
        Ok(crate::nats::direct_seq(&state.client, &stream, seq).await?.map(|m| m.subject))
    })
    .await?;
    match read {
        Some(subject) if subject != out.subject => Err(Error::IdConflict {
            id: msg_id(out).to_owned(),
            stream,
            subject: causeway_api::naming::strip_subject_prefix(&out.prefix, &subject).unwrap_or(&subject).to_owned(),
            sequence: seq,
        }),
        // Removed by retention since: the id was stored once, on a subject we can no longer see.
        _ => Ok(()),
    }
}

/// Asks JetStream whether an event id is in the stream's duplicate window, without storing
/// anything: a publish whose `Nats-Expected-Last-Msg-Id` can never match is refused unless it is
/// a duplicate, which JetStream checks first and answers with the stored sequence.
async fn probe(state: &State, subject: &str, id: &str) -> Result<Option<u64>> {
    let mut h = HeaderMap::new();
    h.insert(HEADER_MSG_ID, id);
    h.insert(EXPECTED_LAST_MSG_ID, format!("{}-{}", crate::event::RESERVED_ID_PREFIX, ulid::Ulid::new()).as_str());
    let ack =
        resilient(&state.link, state.config.nats_wait, || request_ack(&state.client, subject, h.clone(), Bytes::new()))
            .await?;
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
    let mut blobs = Vec::new();
    let mut failed = None;
    for o in &mut outs {
        match encode(state, &mut o.envelope).await {
            Ok((p, b)) => {
                payloads.push(p);
                blobs.extend(b);
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let result = match failed {
        Some(e) => Err(e),
        None => {
            let r = resilient(&state.link, state.config.nats_wait, || send_batch(state, &outs, &payloads)).await;
            match r {
                Ok(acks) => Ok(acks),
                Err(e) => batch_refused(state, &outs, e).await,
            }
        }
    };
    // A failed encode leaves earlier blobs of this batch unreferenced: always a client or
    // server error before anything was sent, so they go too.
    let all_unsent = result.is_err() && payloads.len() < outs.len();
    if all_unsent {
        for w in &blobs {
            state.blobs.delete(w).await;
        }
    } else {
        tidy(state, &blobs, &result, |acks: &Vec<Ack>| acks.iter().any(|a| !a.duplicate)).await;
    }
    if let Ok(acks) = &result {
        for (o, a) in outs.iter().zip(acks).filter(|(_, a)| !a.duplicate) {
            crate::trace::stored(state, o, a.sequence);
        }
    }
    result
}

/// One attempt at an atomic batch, under a fresh batch id.
async fn send_batch(state: &State, outs: &[Outgoing], payloads: &[Bytes]) -> Result<Vec<Ack>> {
    let batch_id = ulid::Ulid::new().to_string();
    let n = outs.len();
    let mut last = PubAck::default();
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
            last = request_ack(&state.client, &o.subject, h, p.clone()).await?;
        } else if i == 0 {
            // The first message is a request, so a stream that refuses batches says so at once.
            if let Some(e) = request_ack(&state.client, &o.subject, h, p.clone()).await?.error {
                return Err(api_error(e));
            }
        } else {
            state
                .client
                .publish_with_headers(o.subject.clone(), h, p.clone())
                .await
                .map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
        }
    }
    match last.error {
        None => {
            let count = last.count.unwrap_or(n as u64);
            let first = last.seq + 1 - count;
            Ok(outs
                .iter()
                .enumerate()
                .map(|(i, o)| Ack { id: o.envelope.id.clone(), sequence: first + i as u64, duplicate: false })
                .collect())
        }
        Some(e) => Err(api_error(e)),
    }
}

/// After a batch was refused: a retried batch finds all its ids stored (all duplicates, on their
/// own subjects); anything else is refused as a whole.
async fn batch_refused(state: &State, outs: &[Outgoing], e: Error) -> Result<Vec<Ack>> {
    let dup_check = matches!(e, Error::DuplicateInBatch { .. })
        || (matches!(e, Error::SequenceConflict { .. })
            && probe(state, &outs[0].subject, msg_id(&outs[0])).await?.is_some());
    if !dup_check {
        return Err(e);
    }
    let mut acks = Vec::with_capacity(outs.len());
    let mut stored = Vec::new();
    for o in outs {
        match probe(state, &o.subject, msg_id(o)).await? {
            Some(seq) => {
                check_same_subject(state, o, seq).await?;
                stored.push(o.envelope.id.clone());
                acks.push(Ack { id: o.envelope.id.clone(), sequence: seq, duplicate: true });
            }
            None => acks.push(Ack { id: o.envelope.id.clone(), sequence: 0, duplicate: false }),
        }
    }
    if stored.len() == outs.len() {
        Ok(acks)
    } else {
        match e {
            Error::SequenceConflict { last } => Err(Error::SequenceConflict { last }),
            _ => Err(Error::DuplicateInBatch { ids: stored }),
        }
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
