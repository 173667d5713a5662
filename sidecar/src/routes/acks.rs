//! `POST /v1/acks`: `[{"token","result":"ack"|"nak"|"term","delayMs"?,"reason"?}]` for fetched
//! events.

use std::sync::Arc;

use causeway_api::registry::ListenerRecord;
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

/// One checked entry: where its ack goes, and what its trace record says.
struct Planned {
    subject: String,
    payload: String,
    traced: Option<(Arc<ListenerRecord>, Traced, u64, u64)>,
    answer: Answer,
    reason: Option<String>,
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
        let traced = v.context.as_deref().and_then(Traced::decode);
        planned.push(Planned {
            subject: v.ack.subject,
            payload,
            traced: traced.map(|t| (l, t, v.ack.stream_sequence, v.ack.delivered)),
            answer,
            reason: e.reason,
        });
    }
    state.link.connected(state.config.nats_wait).await?;
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
        if let Some((l, ev, seq, attempt)) = p.traced {
            trace::pulled(state, &l, &ev, seq, attempt, p.answer, p.reason.as_deref());
        }
    }
    Ok(json(StatusCode::OK, &json!({ "processed": processed })))
}
