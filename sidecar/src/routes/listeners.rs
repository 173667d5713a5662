//! `GET /v1/listeners` and `POST /v1/listeners/{l}/fetch` (pull delivery).

use std::time::Duration;

use async_nats::jetstream::{AckKind, consumer::pull};
use causeway_api::{
    crd::DeliveryMode,
    envelope::{Envelope, HEADER_TYPE},
    registry::ListenerRecord,
    trace::What,
};
use futures::StreamExt;
use http::StatusCode;
use serde_json::{Value, json};

use crate::{
    conditional::{Conditions, Support},
    error::{Error, Result},
    event::{Decoded, decode_stored},
    http::{Query, Resp, json},
    state::State,
    trace,
};

/// Most events one fetch returns.
pub const MAX_FETCH: u64 = 1000;
/// Longest a fetch waits for events.
pub const MAX_WAIT_MS: u64 = 30_000;
/// How long past `waitMs` a fetch waits for JetStream to end the pull before answering with
/// what it has.
const FETCH_GRACE: Duration = Duration::from_secs(1);

/// This node's listeners, with their consumers' figures.
pub async fn list(state: &State, req: &http::Request<hyper::body::Incoming>) -> Result<Resp> {
    Query::parse(req.uri().query(), &[])?;
    Conditions::parse(req.headers(), Support::None, "the listener list takes no condition")?;
    state.registry.ready()?;
    state.link.connected(state.config.nats_wait).await?;
    let mut out = Vec::new();
    for l in state.registry.own_listeners() {
        let figures = match state.js.get_consumer_from_stream::<pull::Config, _, _>(&l.consumer, &l.stream).await {
            Ok(mut c) => match c.info().await {
                Ok(i) => json!({
                    "numPending": i.num_pending,
                    "numAckPending": i.num_ack_pending,
                    "redelivered": i.num_redelivered,
                    "delivered": i.delivered.stream_sequence,
                    "ackFloor": i.ack_floor.stream_sequence,
                }),
                Err(e) => json!({"error": e.to_string()}),
            },
            Err(e) => json!({"error": format!("consumer {}: {e}", l.consumer)}),
        };
        out.push(describe(&l, figures));
    }
    Ok(json(StatusCode::OK, &json!({ "listeners": out })))
}

fn describe(l: &ListenerRecord, figures: Value) -> Value {
    json!({
        "name": l.meta.name,
        "node": l.node,
        "source": {"kind": l.source.kind.registry_token(), "name": l.source.name},
        "stream": l.stream,
        "consumer": l.consumer,
        "filterSubjects": l.filter_subjects,
        "types": l.types,
        "mode": l.delivery.mode,
        "path": l.delivery.path,
        "ordered": l.delivery.ordered,
        "orderBy": l.delivery.order_by.map(|o| o.to_string()),
        "maxInFlight": l.delivery.max_in_flight,
        "figures": figures,
    })
}

/// Pulls up to `max` events (waiting up to `waitMs` for the first), each with an `ackToken`
/// for `POST /v1/acks`. Events whose type the listener does not want are acked and skipped.
pub async fn fetch(state: &State, name: &str, req: &http::Request<hyper::body::Incoming>) -> Result<Resp> {
    let q = Query::parse(req.uri().query(), &["max", "waitMs"])?;
    Conditions::parse(req.headers(), Support::None, "a fetch takes no condition")?;
    let max = q.u64("max")?.unwrap_or(10);
    let wait_ms = q.u64("waitMs")?.unwrap_or(0);
    if max == 0 || max > MAX_FETCH {
        return Err(Error::InvalidQuery(format!("max must be between 1 and {MAX_FETCH}")));
    }
    if wait_ms > MAX_WAIT_MS {
        return Err(Error::InvalidQuery(format!("waitMs must be at most {MAX_WAIT_MS}")));
    }
    let l = state.registry.own_listener(name)?;
    if l.delivery.mode != DeliveryMode::Pull {
        return Err(Error::NotPullListener(name.to_owned()));
    }
    state.link.connected(state.config.nats_wait).await?;
    let consumer =
        state.js.get_consumer_from_stream::<pull::Config, _, _>(&l.consumer, &l.stream).await.map_err(|e| {
            Error::Unavailable(format!("consumer {} is not available ({e}); is the Listener reconciled?", l.consumer))
        })?;
    let unavailable = |e: &dyn std::fmt::Display| Error::Unavailable(format!("fetch from {}: {e}", l.consumer));
    let mut msgs = if wait_ms == 0 {
        consumer.fetch().max_messages(max as usize).messages().await.map_err(|e| unavailable(&e))?
    } else {
        consumer
            .batch()
            .max_messages(max as usize)
            .expires(Duration::from_millis(wait_ms.max(10)))
            .messages()
            .await
            .map_err(|e| unavailable(&e))?
    };
    let mut events = Vec::new();
    let mut skipped = Vec::new();
    // JetStream can leave a pull unanswered (a no-wait fetch for more events than the consumer's
    // max_ack_pending lets out got neither events nor "no messages"), and a no-wait pull has no
    // client-side timer, so without a deadline the request hung until the client gave up.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms) + FETCH_GRACE;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, msgs.next()).await {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "fetch ended");
                break;
            }
        };
        let wanted = m.headers.as_ref().and_then(|h| h.get(HEADER_TYPE)).is_none_or(|t| l.wants_type(t.as_str()));
        if !wanted {
            let _ = m.ack().await;
            continue;
        }
        let Ok(info) = m.info() else { continue };
        let (seq, attempt) = (info.stream_sequence, info.delivered);
        let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else { continue };
        let (env, error) = match decode_stored(state, &m.payload, &l.stream, seq, None).await {
            Ok(Decoded::Event(env, _)) => match l.check_sender(&m.subject, &env) {
                Ok(()) => (env, None),
                Err(error) => {
                    state.metrics.forged(l.meta.name.as_str());
                    tracing::warn!(listener = %l.meta.name, seq, %error, "refusing an inbox event whose sender is forged");
                    (env, Some(error))
                }
            },
            Ok(Decoded::Skipped(error)) => {
                state.metrics.undecodable("fetch");
                skipped.push(skip(state, &l, &m, (seq, attempt as u64), None, error).await);
                continue;
            }
            Ok(Decoded::TooLarge) => unreachable!("no room limit is given"),
            Err(e) => {
                // Cannot be read now: give it back at once and answer with what is there.
                tracing::warn!(listener = %l.meta.name, seq, error = %e, "fetch could not read an event; giving it back");
                let _ = m.ack_with(AckKind::Nak(None)).await;
                if events.is_empty() {
                    return Err(e);
                }
                break;
            }
        };
        if let Some(error) = error {
            skipped.push(skip(state, &l, &m, (seq, attempt as u64), Some(&env), error).await);
            continue;
        }
        state.causes.remember(&env);
        let mut v = crate::event::view_value(&env, &l.stream, seq);
        if let Value::Object(o) = &mut v {
            // With tracing on, the token carries the event's trace fields, so that its ack, nak or
            // term can be recorded (see `trace::pulled`).
            let traced = trace::enabled(state).then(|| trace::EventRef::from(&*env).encode());
            o.insert("ackToken".into(), state.tokens.issue(&reply, traced.as_deref()).into());
            o.insert("attempt".into(), attempt.into());
        }
        events.push(v);
    }
    let mut body = json!({ "events": events });
    if !skipped.is_empty() {
        body["skipped"] = json!(skipped);
    }
    Ok(json(StatusCode::OK, &body))
}

/// An event a fetch can never serve: dead-letter it (if the listener has one) and let it go, as
/// push delivery does, so it does not come back on every fetch. A forged one (`env` given) is
/// traced as dead-lettered, as push delivery traces it. Answers its entry of `skipped`.
async fn skip(
    state: &State,
    l: &ListenerRecord,
    m: &async_nats::jetstream::Message,
    (seq, attempt): (u64, u64),
    env: Option<&Envelope>,
    error: String,
) -> Value {
    if let Err(e) = crate::push::dead_letter(state, l, env, &m.payload, seq, attempt, None, &error).await {
        tracing::warn!(listener = %l.meta.name, seq, error = %e, "dead letter failed; the event comes back later");
        let _ = m.ack_with(AckKind::Nak(None)).await;
    } else {
        if let Some(env) = env {
            let o = trace::Outcome { what: What::DeadLettered, attempt, status: None, error: Some(&error) };
            trace::delivered(state, l, env.into(), seq, o);
        }
        let _ = m.ack_with(AckKind::Term).await;
    }
    json!({"sequence": seq, "error": error})
}
