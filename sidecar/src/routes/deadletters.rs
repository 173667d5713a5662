//! `/v1/listeners/{l}/deadletters`: list, show and replay the dead letters of one of this
//! node's listeners. The work is in [`crate::deadletters`]; only this node's own listeners are
//! served (a Listener is what grants its node its dead letters, whatever the access policy says
//! about the store).

use std::sync::Arc;

use causeway_api::registry::ListenerRecord;
use chrono::Utc;
use http::StatusCode;
use serde_json::{Value, json};

use crate::{
    conditional::{Conditions, Support},
    deadletters::{self as dl, Entry, Filter},
    error::{Error, Result},
    http::{Query, Resp, json},
    state::State,
};

/// Most dead letters one list or replay answers.
pub const MAX_LIMIT: u64 = 1000;
const LIST_PARAMS: &[&str] = &["since", "until", "type", "error", "status", "replayed", "after", "limit"];
const REPLAY_PARAMS: &[&str] = &["since", "until", "type", "error", "status", "after", "limit", "delete"];
const ONE_REPLAY_PARAMS: &[&str] = &["delete"];

fn filter(q: &Query) -> Result<Filter> {
    let now = Utc::now();
    let time = |k: &str| q.get(k).map(|v| dl::parse_time(v, now).map_err(|e| Error::InvalidQuery(format!("{k}: {e}"))));
    let types = match q.get("type") {
        None => vec![],
        Some(t) => t
            .split(',')
            .map(|t| {
                let t = t.trim();
                causeway_api::names::validate_type_pattern(t)
                    .map(|()| t.to_owned())
                    .map_err(|e| Error::InvalidQuery(format!("type: {e}")))
            })
            .collect::<Result<_>>()?,
    };
    let status = match q.u64("status")? {
        Some(s) if (100..=599).contains(&s) => Some(s as u16),
        Some(s) => return Err(Error::InvalidQuery(format!("status {s} is not an HTTP status"))),
        None => None,
    };
    Ok(Filter {
        since: time("since").transpose()?,
        until: time("until").transpose()?,
        types,
        error: q.get("error").map(str::to_owned),
        status,
        replayed: q.bool("replayed")?,
    })
}

fn limit(q: &Query) -> Result<usize> {
    match q.u64("limit")?.unwrap_or(100) {
        0 => Err(Error::InvalidQuery(format!("limit must be between 1 and {MAX_LIMIT}"))),
        n if n > MAX_LIMIT => Err(Error::InvalidQuery(format!("limit must be between 1 and {MAX_LIMIT}"))),
        n => Ok(n as usize),
    }
}

async fn listener(state: &State, name: &str) -> Result<Arc<ListenerRecord>> {
    let l = state.registry.own_listener(name)?;
    dl::dead_letter_of(&l)?;
    state.link.connected(state.config.nats_wait).await?;
    Ok(l)
}

/// Puts a blob-held payload back, so the answer shows what the app would see.
async fn resolve(state: &State, e: &mut Entry) {
    // Best effort: a payload that cannot be read is shown as its blob reference.
    let _ = state.blobs.inline(&mut e.envelope).await;
}

/// `GET /v1/listeners/{l}/deadletters`.
pub async fn list(state: &State, name: &str, req: &http::Request<hyper::body::Incoming>) -> Result<Resp> {
    let q = Query::parse(req.uri().query(), LIST_PARAMS)?;
    Conditions::parse(req.headers(), Support::None, "the dead-letter list takes no condition")?;
    let (f, limit, after) = (filter(&q)?, limit(&q)?, q.u64("after")?.unwrap_or(0));
    let l = listener(state, name).await?;
    let d = dl::dead_letter_of(&l)?;
    let mut page = dl::scan(&state.client, &l, &f, after, limit).await?;
    let mut out = Vec::with_capacity(page.entries.len());
    for e in &mut page.entries {
        resolve(state, e).await;
        out.push(e.view(&d.stream));
    }
    Ok(json(
        StatusCode::OK,
        &json!({"deadLetters": out, "store": d.store, "subject": d.subject, "lastSequence": page.last_sequence, "more": page.more}),
    ))
}

/// `GET /v1/listeners/{l}/deadletters/{id}`.
pub async fn show(state: &State, name: &str, id: &str, req: &http::Request<hyper::body::Incoming>) -> Result<Resp> {
    Query::parse(req.uri().query(), &[])?;
    Conditions::parse(req.headers(), Support::None, "a dead letter takes no condition")?;
    let l = listener(state, name).await?;
    let mut e = dl::get(&state.client, &l, id).await?;
    resolve(state, &mut e).await;
    Ok(json(StatusCode::OK, &e.view(&dl::dead_letter_of(&l)?.stream)))
}

/// `?delete=true` removes a message of the dead-letter store, a right a Node's own NATS
/// credential does not carry (it would reach every event of that store): refused up front
/// rather than left to time out.
fn may_delete(state: &State, l: &causeway_api::registry::ListenerRecord, delete: bool) -> Result<()> {
    let Some(dl) = l.dead_letter.as_ref().filter(|_| delete) else { return Ok(()) };
    if state.creds.as_ref().is_some_and(|c| !c.may_publish(&causeway_api::naming::js_stream_msg_delete(&dl.stream))) {
        return Err(Error::Forbidden {
            policy: format!("{} NATS credential", state.sender()),
            message: format!(
                "this node's NATS credential may not delete messages of {} (it would reach every event of that store); replay without delete=true, or delete with `causeway deadletters replay --delete` and an administrator's credential",
                dl.stream
            ),
        });
    }
    Ok(())
}

/// `POST /v1/listeners/{l}/deadletters/{id}/replay[?delete=true]`: 202 when replayed now, 200
/// when it had been replayed before (nothing published again).
pub async fn replay_one(
    state: &State,
    name: &str,
    id: &str,
    req: &http::Request<hyper::body::Incoming>,
) -> Result<Resp> {
    let q = Query::parse(req.uri().query(), ONE_REPLAY_PARAMS)?;
    Conditions::parse(req.headers(), Support::None, "a replay takes no condition")?;
    let delete = q.bool("delete")?.unwrap_or(false);
    let l = listener(state, name).await?;
    may_delete(state, &l, delete)?;
    let e = dl::get(&state.client, &l, id).await?;
    let r = dl::replay(&state.client, &l, &e, &dl::replayed_by(state, "API"), delete).await?;
    let status = if r.already_replayed { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok(json(status, &r))
}

/// `POST /v1/listeners/{l}/deadletters/replay?filters`: replays every selected dead letter not
/// replayed yet.
pub async fn replay_many(state: &State, name: &str, req: &http::Request<hyper::body::Incoming>) -> Result<Resp> {
    let q = Query::parse(req.uri().query(), REPLAY_PARAMS)?;
    Conditions::parse(req.headers(), Support::None, "a replay takes no condition")?;
    let (f, limit, after) = (filter(&q)?, limit(&q)?, q.u64("after")?.unwrap_or(0));
    let delete = q.bool("delete")?.unwrap_or(false);
    let l = listener(state, name).await?;
    may_delete(state, &l, delete)?;
    let (done, refused, more) =
        dl::replay_matching(&state.client, &l, &f, after, limit, &dl::replayed_by(state, "API"), delete).await?;
    let refused: Vec<Value> = refused.into_iter().map(|(s, e)| json!({"sequence": s, "error": e})).collect();
    Ok(json(StatusCode::OK, &json!({"replayed": done, "notReplayable": refused, "more": more})))
}
