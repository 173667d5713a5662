//! `POST /v1/acks`: `[{"token","result":"ack"|"nak"|"term","delayMs"?}]` for fetched events.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::{
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

/// True when `token` is an ack subject of one of this node's listeners.
fn token_is_ours(state: &State, token: &str) -> bool {
    let Some(rest) = token.strip_prefix("$JS.ACK.") else { return false };
    let parts: Vec<&str> = rest.split('.').collect();
    state.registry.own_listeners().iter().any(|l| parts.windows(2).any(|w| w[0] == l.stream && w[1] == l.consumer))
}

/// Acks, naks or terminates fetched events. Every entry is checked before any is applied.
pub async fn post(state: &State, req: Request<Incoming>) -> Result<Resp> {
    let (parts, body) = req.into_parts();
    require_json(&parts.headers)?;
    let body = read_body(&parts.headers, body, state.config.max_body).await?;
    let entries: Vec<AckEntry> = serde_json::from_value(parse_json(&body)?)
        .map_err(|e| Error::InvalidAck(format!("send a JSON array of {{\"token\",\"result\",\"delayMs\"?}}: {e}")))?;
    if entries.is_empty() || entries.len() > MAX_ACKS {
        return Err(Error::InvalidAck(format!("send between 1 and {MAX_ACKS} acks")));
    }
    let mut planned = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if !token_is_ours(state, &e.token) {
            return Err(Error::InvalidAck(format!("ack [{i}]: the token is not one this node's fetch gave out")));
        }
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
        planned.push((e.token.clone(), payload));
    }
    for (token, payload) in &planned {
        state
            .client
            .publish(token.clone(), payload.clone().into())
            .await
            .map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
    }
    state.client.flush().await.map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
    Ok(json(StatusCode::OK, &json!({ "processed": planned.len() })))
}
