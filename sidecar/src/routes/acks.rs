//! `POST /v1/acks`: `[{"token","result":"ack"|"nak"|"term","delayMs"?,"reason"?}]` for fetched
//! events. A `term` writes the event to the listener's dead letter first, when it has one.

use std::sync::Arc;

use causeway_api::{envelope::Envelope, naming, registry::ListenerRecord};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::{
    acktoken::Verified,
    conditional::{Conditions, Support},
    error::{Error, Result},
    http::{Resp, json, parse_json, read_body, require_json},
    state::State,
    trace::{self, Answer, Traced},
};

/// Most acks in one request.
pub const MAX_ACKS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AckEntry {
    token: String,
    result: String,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

/// A token this sidecar handed out for one of this node's listeners, and that listener.
fn verify(state: &State, i: usize, token: &str) -> Result<(Verified, Arc<ListenerRecord>)> {
    let v = state.tokens.verify(token).map_err(|why| Error::InvalidAck(format!("ack [{i}]: {why}")))?;
    let a = &v.ack;
    let Some(l) = state.registry.own_listeners().into_iter().find(|l| l.stream == a.stream && l.consumer == a.consumer)
    else {
        return Err(Error::InvalidAck(format!(
            "ack [{i}]: the token's listener ({}) is no longer one of this node's",
            a.consumer
        )));
    };
    Ok((v, l))
}

/// One checked entry: where its ack goes, the event it answers, and what its trace record says.
struct Planned {
    subject: String,
    payload: String,
    listener: Arc<ListenerRecord>,
    sequence: u64,
    delivered: u64,
    traced: Option<Traced>,
    answer: Answer,
    reason: Option<String>,
}

/// A `term` gives the event up: like an event its app refuses in push delivery, it goes to the
/// listener's dead letter (when it has one), read back from its stream, so that it can be
/// replayed after a fix. The dead letter's id is fixed per event and listener, so a retried
/// request stores it once. An event already gone from its stream (limits) leaves nothing.
async fn dead_letter_termed(state: &State, p: &Planned) -> Result<()> {
    let l = &p.listener;
    if l.dead_letter.is_none() {
        return Ok(());
    }
    // A credential issued before this listener had its dead letter cannot read the source yet:
    // say so at once (the operator reissues it) rather than wait for NATS's silence.
    if state.creds.as_ref().is_some_and(|c| !c.may_publish(&naming::js_direct_get(&l.stream))) {
        return Err(Error::Unavailable(format!(
            "this node's NATS credential may not read {} yet, to dead-letter the termed event; retry once the operator has reissued it",
            l.stream
        )));
    }
    let Some(stored) = crate::nats::direct_seq(&state.client, &l.stream, p.sequence).await? else { return Ok(()) };
    let error = match &p.reason {
        Some(r) => format!("the app terminated it: {r}"),
        None => "the app terminated it".to_owned(),
    };
    let mut env = Envelope::decode(&stored.payload).ok();
    if let Some(e) = env.as_mut()
        && let Err((false, why)) = state.blobs.inline(e).await
    {
        return Err(Error::Unavailable(format!("reading the payload of the event to dead-letter: {why}")));
    }
    crate::push::dead_letter(state, l, env.as_ref(), &stored.payload, p.sequence, p.delivered, None, &error).await
}

/// Acks, naks or terminates fetched events. Every entry is checked before any is applied. With
/// tracing on, each applied entry is recorded on the trace (from the token's trace fields).
pub async fn post(state: &State, req: Request<Incoming>) -> Result<Resp> {
    let (parts, body) = req.into_parts();
    crate::http::Query::parse(parts.uri.query(), &[])?;
    Conditions::parse(&parts.headers, Support::None, "acks take no condition")?;
    require_json(&parts.headers)?;
    let body = read_body(&parts.headers, body, state.body_limits()).await?;
    let entries: Vec<AckEntry> = serde_json::from_value(parse_json(&body)?).map_err(|e| {
        Error::InvalidAck(format!("send a JSON array of {{\"token\",\"result\",\"delayMs\"?,\"reason\"?}}: {e}"))
    })?;
    if entries.is_empty() || entries.len() > MAX_ACKS {
        return Err(Error::InvalidAck(format!("send between 1 and {MAX_ACKS} acks")));
    }
    let mut planned = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let (v, l) = verify(state, i, &e.token)?;
        let (payload, answer) = match (e.result.as_str(), e.delay_ms) {
            ("ack", None) => ("+ACK".to_owned(), Answer::Ack),
            ("term", None) => ("+TERM".to_owned(), Answer::Term),
            ("nak", None) => ("-NAK".to_owned(), Answer::Nak),
            ("nak", Some(ms)) => (format!("-NAK {{\"delay\":{}}}", ms.saturating_mul(1_000_000)), Answer::Nak),
            ("ack" | "term", Some(_)) => {
                return Err(Error::InvalidAck(format!("ack [{i}]: delayMs only goes with \"nak\"")));
            }
            (other, _) => {
                return Err(Error::InvalidAck(format!("ack [{i}]: result {other:?} must be ack, nak or term")));
            }
        };
        planned.push(Planned {
            traced: v.context.as_deref().and_then(Traced::decode),
            subject: v.ack.subject,
            payload,
            listener: l,
            sequence: v.ack.stream_sequence,
            delivered: v.ack.delivered,
            answer,
            reason: e.reason,
        });
    }
    state.link.connected(state.config.nats_wait).await?;
    // Dead letters first: one that cannot be written now answers 503 before anything is acked.
    for p in planned.iter().filter(|p| p.answer == Answer::Term) {
        dead_letter_termed(state, p).await?;
    }
    for p in &planned {
        state
            .client
            .publish(p.subject.clone(), p.payload.clone().into())
            .await
            .map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
    }
    state.client.flush().await.map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
    let processed = planned.len();
    // Recorded only if tracing is still on (it may have been turned off since the fetch).
    for p in planned {
        if let Some(ev) = p.traced {
            trace::pulled(state, &p.listener, &ev, p.sequence, p.delivered, p.answer, p.reason.as_deref());
        }
    }
    Ok(json(StatusCode::OK, &json!({ "processed": processed })))
}
