//! `POST /v1/acks`: `[{"token","result":"ack"|"nak"|"term","delayMs"?}]` for fetched events.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::{
    conditional::{Conditions, Support},
    error::{Error, Result},
    http::{Resp, json, parse_json, read_body, require_json},
    state::State,
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
}

/// The ack subject of a token this sidecar handed out for one of this node's listeners.
fn ack_subject(state: &State, i: usize, token: &str) -> Result<String> {
    let a = state.tokens.verify(token).map_err(|why| Error::InvalidAck(format!("ack [{i}]: {why}")))?;
    let ours = state.registry.own_listeners().iter().any(|l| l.stream == a.stream && l.consumer == a.consumer);
    if !ours {
        return Err(Error::InvalidAck(format!(
            "ack [{i}]: the token's listener ({}) is no longer one of this node's",
            a.consumer
        )));
    }
    Ok(a.subject)
}

/// Acks, naks or terminates fetched events. Every entry is checked before any is applied.
pub async fn post(state: &State, req: Request<Incoming>) -> Result<Resp> {
    let (parts, body) = req.into_parts();
    crate::http::Query::parse(parts.uri.query(), &[])?;
    Conditions::parse(&parts.headers, Support::None, "acks take no condition")?;
    require_json(&parts.headers)?;
    let body = read_body(&parts.headers, body, state.body_limits()).await?;
    let entries: Vec<AckEntry> = serde_json::from_value(parse_json(&body)?)
        .map_err(|e| Error::InvalidAck(format!("send a JSON array of {{\"token\",\"result\",\"delayMs\"?}}: {e}")))?;
    if entries.is_empty() || entries.len() > MAX_ACKS {
        return Err(Error::InvalidAck(format!("send between 1 and {MAX_ACKS} acks")));
    }
    let mut planned = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let subject = ack_subject(state, i, &e.token)?;
        let payload = match (e.result.as_str(), e.delay_ms) {
            ("ack", None) => "+ACK".to_owned(),
            ("term", None) => "+TERM".to_owned(),
            ("nak", None) => "-NAK".to_owned(),
            ("nak", Some(ms)) => format!("-NAK {{\"delay\":{}}}", ms.saturating_mul(1_000_000)),
            ("ack" | "term", Some(_)) => {
                return Err(Error::InvalidAck(format!("ack [{i}]: delayMs only goes with \"nak\"")));
            }
            (other, _) => {
                return Err(Error::InvalidAck(format!("ack [{i}]: result {other:?} must be ack, nak or term")));
            }
        };
        planned.push((subject, payload));
    }
    state.link.connected(state.config.nats_wait).await?;
    for (subject, payload) in &planned {
        state
            .client
            .publish(subject.clone(), payload.clone().into())
            .await
            .map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
    }
    state.client.flush().await.map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
    Ok(json(StatusCode::OK, &json!({ "processed": planned.len() })))
}
