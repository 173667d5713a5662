//! Push delivery: for each `mode: push` Listener of this node, pull from its shared durable
//! consumer and POST every event to the app.
//!
//! - All sidecars of a node pull from the same consumer, so each event goes to one of them.
//! - A worker asks JetStream for only as many events as it has free slots (`maxInFlight`), so
//!   nothing waits in memory; `ordered` listeners have one slot (and one ack pending on the
//!   consumer), so events reach the app one at a time, in order.
//! - The app's answer decides: 2xx → publish the reply's `emit` events (caused by this one),
//!   then ack; 400/404/422 → dead letter and term; anything else, a timeout or a refused
//!   connection → nak with the listener's backoff, and dead letter on the last allowed attempt.
//! - While the app's health check fails, no new event is pulled.
//! - `delivery.orderBy` listeners run in [`keyed`]: one replica at a time (the server's pinned
//!   client), one event at a time per key, keys in parallel.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use causeway_api::{
    causal::now_rfc3339,
    envelope::{DeadLetterInfo, Envelope, HEADER_TYPE},
    naming,
    registry::ListenerRecord,
    trace::What,
};
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::{
    error::Error,
    event::{Draft, build, cause_of, view_json},
    metrics::ListenerMetrics,
    publish::{Outgoing, publish_one},
    routes::kv::RESERVED_KEY_PREFIX,
    state::State,
};

mod keyed;

/// Bytes of the app's error answer kept in a dead letter.
const EXCERPT: usize = 1024;
/// How long one pull waits for events before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Idle heartbeat of a continuous pull: a connection lost without notice is found this fast.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(c)
}

/// Where the app listens: the env override, else the Node's `app`.
fn app_target(state: &State) -> (Option<u16>, Option<String>) {
    let node = state.registry.own_node();
    let port = state.config.app_port.or_else(|| node.as_ref().and_then(|n| n.app.port));
    let health = state.config.app_health_path.clone().or_else(|| node.as_ref().and_then(|n| n.app.health_path.clone()));
    (port, health)
}

/// Checks the app's health until shutdown; delivery pauses while it fails.
pub async fn watch_app_health(state: Arc<State>) {
    let client = http_client();
    let mut shutdown = state.shutdown.clone();
    loop {
        let healthy = match app_target(&state) {
            (Some(port), Some(path)) => {
                let uri = format!("http://127.0.0.1:{port}{path}");
                let req = Request::get(uri).body(Full::new(Bytes::new())).expect("valid request");
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), client.request(req)).await,
                    Ok(Ok(r)) if r.status().is_success()
                )
            }
            // No health check configured: a refused push is naked and retried instead.
            _ => true,
        };
        if healthy {
            state.app_seen.send_if_modified(|s| !std::mem::replace(s, true));
        }
        if state.app_healthy.send_if_modified(|h| std::mem::replace(h, healthy) != healthy) {
            tracing::info!(healthy, "app health changed");
        }
        state.metrics.app_healthy.set(healthy as i64);
        tokio::select! {
            _ = tokio::time::sleep(state.config.app_health_interval) => {}
            _ = crate::flag::until_true(&mut shutdown) => return,
        }
    }
}

/// Runs one worker per push listener of this node, following registry changes, until shutdown;
/// then lets in-flight deliveries finish within the grace period.
pub async fn supervise(state: Arc<State>) {
    let client = http_client();
    let mut version = state.registry.subscribe();
    let mut shutdown = state.shutdown.clone();
    let mut workers: HashMap<String, (Arc<ListenerRecord>, watch::Sender<bool>)> = HashMap::new();
    let mut handles = JoinSet::new();
    loop {
        let desired: HashMap<String, Arc<ListenerRecord>> = state
            .registry
            .own_listeners()
            .into_iter()
            .filter(|l| l.delivery.mode == causeway_api::crd::DeliveryMode::Push)
            .map(|l| (l.meta.name.to_string(), l))
            .collect();
        workers.retain(|name, (rec, stop)| {
            let keep = desired.get(name).is_some_and(|d| d == rec);
            if !keep {
                tracing::info!(listener = %name, "stopping push worker");
                let _ = stop.send(true);
            }
            keep
        });
        for (name, rec) in desired {
            if workers.contains_key(&name) {
                continue;
            }
            tracing::info!(listener = %name, consumer = %rec.consumer, "starting push worker");
            let (stop_tx, stop_rx) = watch::channel(false);
            handles.spawn(worker(state.clone(), rec.clone(), client.clone(), stop_rx));
            workers.insert(name, (rec, stop_tx));
        }
        while handles.try_join_next().is_some() {}
        tokio::select! {
            r = version.changed() => if r.is_err() { break },
            _ = crate::flag::until_true(&mut shutdown) => break,
        }
    }
    for (_, (_, stop)) in workers.drain() {
        let _ = stop.send(true);
    }
    while handles.join_next().await.is_some() {}
}

async fn worker(state: Arc<State>, l: Arc<ListenerRecord>, client: HttpClient, mut stop: watch::Receiver<bool>) {
    if l.delivery.order_by.is_some() {
        return keyed::run(state, l, client, stop).await;
    }
    let slots = l.delivery.max_in_flight.max(1) as usize;
    let permits = Arc::new(Semaphore::new(slots));
    let (hard_tx, hard_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut healthy = state.app_healthy.subscribe();
    let mut consumer: Option<jetstream::consumer::Consumer<pull::Config>> = None;
    let label = l.meta.name.to_string();
    'outer: loop {
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = crate::flag::until_true(&mut healthy) => {}
            _ = crate::flag::until_true(&mut stop) => break,
        }
        let c = match &consumer {
            Some(c) => c.clone(),
            None => match tokio::select! {
                c = state.js.get_consumer_from_stream::<pull::Config, _, _>(&l.consumer, &l.stream) => c,
                _ = crate::flag::until_true(&mut stop) => break,
            } {
                Ok(c) => {
                    consumer = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::warn!(listener = %label, error = %e, "consumer not available yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = crate::flag::until_true(&mut stop) => break,
                    }
                }
            },
        };
        // One continuous pull, topped up as events are handed out: the server keeps at most
        // `maxInFlight` events unacked across all replicas (the consumer's max_ack_pending), so
        // what waits here is bounded. Asking NATS can hang while it is away: a stop must not
        // wait for it.
        let messages = tokio::select! {
            m = c.stream().max_messages_per_batch(slots).expires(PULL_EXPIRES).heartbeat(PULL_HEARTBEAT).messages() => m,
            _ = crate::flag::until_true(&mut stop) => break,
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(listener = %label, error = %e, "pull failed; retrying");
                consumer = None;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = crate::flag::until_true(&mut stop) => break,
                }
            }
        };
        loop {
            // A free slot first: at most `maxInFlight` events in this sidecar's hands.
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'outer },
                _ = crate::flag::until_true(&mut stop) => {
                    release_buffered(&mut messages).await;
                    break 'outer;
                }
            };
            let next = tokio::select! {
                n = messages.next() => n,
                _ = crate::flag::until_true(&mut stop) => {
                    release_buffered(&mut messages).await;
                    break 'outer;
                }
                // The app went away: no new event is handed to it; what was pulled goes back.
                _ = crate::flag::until_false(&mut healthy) => {
                    release_buffered(&mut messages).await;
                    continue 'outer;
                }
            };
            match next {
                Some(Ok(msg)) => {
                    let (st, l, client, hard) = (state.clone(), l.clone(), client.clone(), hard_rx.clone());
                    tasks.spawn(async move {
                        handle(&st, &l, &client, msg, hard, false).await;
                        drop(permit);
                    });
                    while tasks.try_join_next().is_some() {}
                }
                Some(Err(e)) => {
                    tracing::debug!(listener = %label, error = %e, "pull ended; pulling again");
                    if matches!(
                        e.kind(),
                        pull::MessagesErrorKind::ConsumerDeleted | pull::MessagesErrorKind::NoResponders
                    ) {
                        consumer = None;
                    }
                    continue 'outer;
                }
                None => continue 'outer,
            }
        }
    }
    // Stop: let in-flight deliveries finish within the grace period, then nak the rest.
    drain(&state, &label, &mut tasks, &hard_tx).await;
}

/// Naks the events a pull has already brought but nobody started, so another replica (or this
/// one, later) gets them at once instead of after ackWait.
async fn release_buffered(messages: &mut pull::Stream) {
    use futures::FutureExt;
    while let Some(Some(Ok(m))) = messages.next().now_or_never() {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
}

/// On stop: lets in-flight deliveries finish within the grace period, then tells the rest to
/// give up (`hard`) and waits for them.
pub(crate) async fn drain<T: 'static>(state: &State, label: &str, tasks: &mut JoinSet<T>, hard: &watch::Sender<bool>) {
    if tasks.is_empty() {
        return;
    }
    tracing::info!(listener = %label, in_flight = tasks.len(), "waiting for in-flight deliveries");
    let grace = tokio::time::sleep(state.config.grace_period);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = &mut grace => {
                let _ = hard.send(true);
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
}

/// What to do with a delivered message.
#[derive(Debug)]
enum Outcome {
    /// Handled (or not for this listener): ack.
    Ack(&'static str),
    /// Try again later.
    Retry { status: Option<u16>, error: String },
    /// Refused for good: dead letter and term.
    Refused { status: Option<u16>, error: String },
    /// Shutting down: nak at once so another sidecar takes it.
    Cancelled,
}

async fn handle(
    state: &State,
    l: &ListenerRecord,
    client: &HttpClient,
    msg: jetstream::Message,
    mut hard: watch::Receiver<bool>,
    retry_here: bool,
) {
    let metrics = state.metrics.listener(l.meta.name.as_str());
    let gauge = &metrics.in_flight;
    gauge.inc();
    let info = msg.info().map(|i| (i.stream_sequence, i.delivered.max(1) as u64));
    let (seq, mut attempt) = info.unwrap_or((0, 1));
    let listener = l.meta.name.as_str();
    let max = l.delivery.max_deliver.map(|m| m.max(1) as u64);
    let result = loop {
        let mut env = None;
        let outcome = tokio::select! {
            o = deliver(state, l, &metrics, client, &msg, seq, attempt, &mut env) => o,
            _ = crate::flag::until_true(&mut hard) => Outcome::Cancelled,
        };
        let traced = |what: What, status: Option<u16>, error: Option<&str>| {
            if let Some(env) = &env {
                let o = crate::trace::Outcome { what, attempt, status, error };
                crate::trace::delivered(state, l, env.into(), seq, o);
            }
        };
        break match outcome {
            Outcome::Ack(what) => {
                metrics.delivery(what);
                traced(What::Delivered, None, None);
                msg.ack().await
            }
            Outcome::Cancelled => {
                metrics.delivery("nak");
                msg.ack_with(AckKind::Nak(None)).await
            }
            // Ordered per key: the event keeps its place (and its key stays blocked) while it
            // waits here; the worker keeps it alive with progress acks.
            Outcome::Retry { status, error } if retry_here && max.is_none_or(|m| attempt < m) => {
                let delay = l.delivery.backoff_for(attempt).get();
                tracing::debug!(listener, seq, attempt, ?status, %error, ?delay, "push failed; retrying here later");
                metrics.delivery("nak");
                traced(What::Retried, status, Some(&error));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {
                        attempt += 1;
                        continue;
                    }
                    _ = crate::flag::until_true(&mut hard) => msg.ack_with(AckKind::Nak(None)).await,
                }
            }
            Outcome::Retry { status, error } if max.is_none_or(|m| attempt < m) => {
                let delay = l.delivery.backoff_for(attempt).get();
                tracing::debug!(listener, seq, attempt, ?status, %error, ?delay, "push failed; retrying later");
                metrics.delivery("nak");
                traced(What::Retried, status, Some(&error));
                msg.ack_with(AckKind::Nak(Some(delay))).await
            }
            Outcome::Retry { status, error } | Outcome::Refused { status, error } => {
                match dead_letter(state, l, env.as_ref(), &msg.payload, seq, attempt, status, &error).await {
                    Ok(()) => {
                        tracing::info!(listener, seq, attempt, ?status, %error, "event refused; dead-lettered");
                        metrics.delivery("term");
                        traced(What::DeadLettered, status, Some(&error));
                        msg.ack_with(AckKind::Term).await
                    }
                    Err(e) if retry_here => {
                        tracing::warn!(listener, seq, error = %e, "dead letter failed; retrying the event here later");
                        metrics.delivery("nak");
                        tokio::select! {
                            _ = tokio::time::sleep(l.delivery.backoff_for(attempt).get()) => continue,
                            _ = crate::flag::until_true(&mut hard) => msg.ack_with(AckKind::Nak(None)).await,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(listener, seq, error = %e, "dead letter failed; retrying the event later");
                        metrics.delivery("nak");
                        msg.ack_with(AckKind::Nak(Some(l.delivery.backoff_for(attempt).get()))).await
                    }
                }
            }
        };
    };
    if let Err(e) = result {
        tracing::warn!(listener, seq, error = %e, "ack to JetStream failed; the event will be redelivered");
    }
    gauge.dec();
}

/// The key in the state bucket that marks an event handled by a listener (exactly-once).
pub fn handled_key(listener: &str, id: &str) -> String {
    let mut k = format!("{RESERVED_KEY_PREFIX}.handled.{listener}.");
    for c in id.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => k.push(c),
            other => k.push_str(&format!("={:02X}", other as u32)),
        }
    }
    k
}

#[allow(clippy::too_many_arguments)]
async fn deliver(
    state: &State,
    l: &ListenerRecord,
    metrics: &ListenerMetrics,
    client: &HttpClient,
    msg: &jetstream::Message,
    seq: u64,
    attempt: u64,
    slot: &mut Option<Envelope>,
) -> Outcome {
    let typed = msg.headers.as_ref().and_then(|h| h.get(HEADER_TYPE)).map(|t| l.wants_type(t.as_str()));
    if typed == Some(false) {
        return Outcome::Ack("skipped");
    }
    let mut env = match Envelope::decode(&msg.payload) {
        Ok(e) => e,
        Err(e) => {
            state.metrics.undecodable("push");
            return Outcome::Refused { status: None, error: format!("not a Causeway event: {e}") };
        }
    };
    if typed.is_none() && !l.wants_type(&env.event_type) {
        return Outcome::Ack("skipped");
    }
    // Before the clock or the app sees it: a forged event must leave no trace but the dead letter.
    if let Err(error) = l.check_sender(&msg.subject, &env) {
        state.metrics.forged(l.meta.name.as_str());
        tracing::warn!(listener = %l.meta.name, seq, %error, "refusing an inbox event whose sender is forged");
        *slot = Some(env);
        return Outcome::Refused { status: None, error };
    }
    if let Err((permanent, error)) = state.blobs.inline(&mut env).await {
        *slot = Some(env);
        if permanent {
            state.metrics.undecodable("push");
            return Outcome::Refused { status: None, error };
        }
        return Outcome::Retry { status: None, error };
    }
    state.clock.observe(env.lamport);
    state.causes.remember(&env);
    // The caller keeps the event (for its trace record and a dead letter); it is read from there.
    let env: &Envelope = slot.insert(env);

    // Exactly-once listeners: the state bucket and the key of this event's handled mark.
    let marks = if l.delivery.exactly_once {
        let handled = handled_key(l.meta.name.as_str(), &env.id);
        match state.bucket(&state.state_bucket()).await {
            Ok(kv) => match crate::nats::kv_value(&state.client, &state.state_bucket(), &handled).await {
                // Handled before (the sidecar stopped before the ack landed): publish the events
                // the app's reply asked for again (their ids are fixed, so JetStream stores them
                // once), ack, and do not call the app again.
                Ok(Some(reply)) => {
                    if let Err(o) = emit(state, env, l, &reply).await {
                        return o;
                    }
                    return Outcome::Ack("skipped_handled");
                }
                Ok(None) => Some((kv, handled)),
                Err(e) => return Outcome::Retry { status: None, error: format!("exactly-once check: {e}") },
            },
            Err(e) => return Outcome::Retry { status: None, error: e.to_string() },
        }
    } else {
        None
    };

    let (Some(port), _) = app_target(state) else {
        return Outcome::Retry {
            status: None,
            error: "the app's port is unknown: set CAUSEWAY_APP_PORT or the Node's app.port".into(),
        };
    };
    let body = view_json(env, &l.stream, seq);
    let req = Request::post(format!("http://127.0.0.1:{port}{}", l.delivery.path))
        .header("content-type", "application/json")
        .header("cw-event-id", env.id.as_str())
        .header("cw-type", env.event_type.as_str())
        .header("cw-correlation-id", env.correlation_id.as_str())
        .header("cw-delivery-attempt", attempt)
        .header("cw-listener", l.meta.name.as_str())
        .body(Full::new(Bytes::from(body)));
    let req = match req {
        Ok(r) => r,
        Err(e) => return Outcome::Refused { status: None, error: format!("cannot build the push request: {e}") },
    };
    let started = Instant::now();
    let answer = tokio::time::timeout(l.delivery.timeout.get(), async {
        let resp = client.request(req).await.map_err(|e| format!("push to the app failed: {e}"))?;
        let status = resp.status();
        let limit = if status.is_success() { state.config.max_body } else { EXCERPT * 4 };
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| format!("reading the app's answer: {e}"));
        Ok::<_, String>((status, body))
    })
    .await;
    metrics.latency.observe(started.elapsed().as_secs_f64());
    let (status, body) = match answer {
        Err(_) => {
            return Outcome::Retry {
                status: None,
                error: format!("the app did not answer within {}", l.delivery.timeout),
            };
        }
        Ok(Err(e)) => return Outcome::Retry { status: None, error: e },
        Ok(Ok(x)) => x,
    };
    let code = Some(status.as_u16());
    let excerpt = |b: &Result<Bytes, String>| match b {
        Ok(b) => String::from_utf8_lossy(&b[..b.len().min(EXCERPT)]).into_owned(),
        Err(e) => e.clone(),
    };
    match status {
        s if s.is_success() => {
            let body = match body {
                Ok(b) => b,
                Err(e) => return Outcome::Retry { status: code, error: e },
            };
            let Some((kv, handled)) = marks else {
                if let Err(o) = emit(state, env, l, &body).await {
                    return o;
                }
                return Outcome::Ack("ack");
            };
            // Record the event as handled first, with the app's reply, so the window in which a
            // crash makes the app see it again is one KV write wide. A reply too large for the
            // mark is published first and marked after.
            let fits = state.max_payload().is_ok_and(|m| body.len() + crate::blob::HEADROOM <= m);
            if !fits {
                if let Err(o) = emit(state, env, l, &body).await {
                    return o;
                }
                mark_handled(&kv, &handled, Bytes::from_static(b"1"), l).await;
                return Outcome::Ack("ack");
            }
            let marked = mark_handled(&kv, &handled, body.clone(), l).await;
            if let Err(o) = emit(state, env, l, &body).await {
                // The event goes back to the app (or to the dead letter): it is not handled.
                if marked && let Err(e) = kv.delete(&handled).await {
                    tracing::warn!(listener = %l.meta.name, error = %e, "could not clear a handled mark");
                }
                return o;
            }
            Outcome::Ack("ack")
        }
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY => {
            Outcome::Refused { status: code, error: excerpt(&body) }
        }
        _ => Outcome::Retry { status: code, error: excerpt(&body) },
    }
}

/// Writes the exactly-once mark, retrying briefly; false when it could not be written (the event
/// is then acked unmarked: a redelivery, which needs a lost ack too, would call the app again).
async fn mark_handled(kv: &async_nats::jetstream::kv::Store, key: &str, value: Bytes, l: &ListenerRecord) -> bool {
    for attempt in 0..3u64 {
        match kv.put(key, value.clone()).await {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(listener = %l.meta.name, attempt, error = %e, "could not record the event as handled");
                tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
            }
        }
    }
    false
}

/// A deterministic id for the `index`-th event emitted in reply to `cause`, so that a redelivery
/// that emits again is deduplicated by JetStream instead of stored twice. It keeps the ULID shape
/// and sorts with its cause's time.
pub fn emitted_id(listener: &str, cause_id: &str, index: usize) -> String {
    let ms = ulid::Ulid::from_string(cause_id)
        .map(|u| u.timestamp_ms())
        .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis().max(0) as u64);
    let hash = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, listener, cause_id, index).hash(&mut h);
        h.finish()
    };
    let random = ((hash(1) as u128) << 64 | hash(2) as u128) & ((1u128 << 80) - 1);
    ulid::Ulid::from_parts(ms, random).to_string()
}

/// Publishes the `emit` events of a 2xx answer, caused by `cause`. An `Err` is the outcome to
/// report instead of an ack.
async fn emit(state: &State, cause: &Envelope, l: &ListenerRecord, body: &[u8]) -> Result<(), Outcome> {
    let Ok(Value::Object(mut reply)) = serde_json::from_slice::<Value>(body) else { return Ok(()) };
    let Some(list) = reply.remove("emit") else { return Ok(()) };
    let refused = |i: usize, e: &dyn std::fmt::Display| Outcome::Refused {
        status: None,
        error: format!("the app's reply has a bad emit [{i}]: {e}"),
    };
    let Value::Array(list) = list else {
        return Err(refused(0, &"\"emit\" must be an array of events with \"node\" or \"store\" and \"subject\""));
    };
    let c = cause_of(cause);
    let sender = state.sender();
    let mut outs = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let Value::Object(mut o) = item else { return Err(refused(i, &"an emit entry is a JSON object")) };
        let str_field = |o: &mut serde_json::Map<String, Value>, k: &str| match o.remove(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("\"{k}\" must be a string")),
        };
        let node = str_field(&mut o, "node").map_err(|e| refused(i, &e))?;
        let store = str_field(&mut o, "store").map_err(|e| refused(i, &e))?;
        let subject = str_field(&mut o, "subject").map_err(|e| refused(i, &e))?;
        let expected = match o.remove("expectedSequence") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| refused(i, &"\"expectedSequence\" must be a whole number"))?),
        };
        let mut draft = Draft::from_native(Value::Object(o), None).map_err(|e| refused(i, &e))?;
        if draft.id.is_none() {
            draft.id = Some(emitted_id(l.meta.name.as_str(), &cause.id, i));
        }
        let out = match (node, store, subject) {
            (Some(n), None, None) => {
                let target = match crate::access::send_target(state, &n).await {
                    Ok(t) => t,
                    Err(e) if e.status().is_server_error() => {
                        return Err(Outcome::Retry { status: None, error: format!("emit [{i}]: {e}") });
                    }
                    Err(e) => return Err(refused(i, &e)),
                };
                let tname = format!("{}/{}", target.meta.namespace, target.meta.name);
                let version = crate::schemas::check(
                    state.schemas.node(&target).as_deref(),
                    std::iter::once((draft.event_type.as_str(), &draft.payload)),
                    false,
                )
                .map_err(|e| refused(i, &e))?[0];
                let subject = draft.event_type.clone();
                let mut envelope = build(draft, Some(&c), &state.causes, &state.clock, sender, &tname, &subject);
                envelope.schema_version = version;
                Outgoing::to_inbox(state, &target, envelope)
            }
            (None, Some(s), Some(subject)) => {
                causeway_api::names::validate_subject(&subject).map_err(|e| refused(i, &e))?;
                let rec = match crate::access::store(state, causeway_api::crd::AccessAction::Append, &s).await {
                    Ok(r) => r,
                    Err(e) if e.status().is_server_error() => {
                        return Err(Outcome::Retry { status: None, error: format!("emit [{i}]: {e}") });
                    }
                    Err(e) => return Err(refused(i, &e)),
                };
                let tname = format!("{}/{}", rec.meta.namespace, rec.meta.name);
                let version = crate::schemas::check(
                    state.schemas.store(&rec).as_deref(),
                    std::iter::once((draft.event_type.as_str(), &draft.payload)),
                    false,
                )
                .map_err(|e| refused(i, &e))?[0];
                let mut envelope = build(draft, Some(&c), &state.causes, &state.clock, sender, &tname, &subject);
                envelope.schema_version = version;
                Outgoing {
                    subject: naming::join_subject(&rec.subject_prefix, &subject),
                    stream: rec.stream.clone(),
                    prefix: rec.subject_prefix.clone(),
                    envelope,
                    expected,
                    msg_id: None,
                }
            }
            _ => return Err(refused(i, &"give either \"node\", or \"store\" and \"subject\"")),
        };
        outs.push(out);
    }
    for (i, out) in outs.into_iter().enumerate() {
        match publish_one(state, out).await {
            Ok(ack) => state.metrics.written("emit", ack.duplicate, 1),
            // The app decided on stale state: deliver the event again so it can decide anew.
            Err(e @ Error::SequenceConflict { .. }) => {
                return Err(Outcome::Retry { status: None, error: format!("emit [{i}]: {e}") });
            }
            Err(e) if e.status().is_server_error() => {
                return Err(Outcome::Retry { status: None, error: format!("emit [{i}]: {e}") });
            }
            Err(e) => return Err(refused(i, &e)),
        }
    }
    Ok(())
}

/// Publishes a refused event to the listener's dead letter, with why (when it has one). `env` is
/// the event; without it (undecodable), `raw`, its stored bytes, are kept as a string.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn dead_letter(
    state: &State,
    l: &ListenerRecord,
    env: Option<&Envelope>,
    raw: &[u8],
    seq: u64,
    attempts: u64,
    status: Option<u16>,
    error: &str,
) -> Result<(), Error> {
    let Some(dl) = &l.dead_letter else { return Ok(()) };
    let listener = format!("{}/{}", l.meta.namespace, l.meta.name);
    let mut env = match env {
        Some(e) => e.clone(),
        // Undecodable: keep the raw bytes visible as a string.
        None => Envelope {
            id: format!("undecodable-{}-{seq}", l.stream),
            event_type: "causeway.undecodable".into(),
            payload: Value::String(String::from_utf8_lossy(raw).into_owned()),
            subject: None,
            time: now_rfc3339(),
            sender: listener.clone(),
            causation_id: None,
            correlation_id: format!("undecodable-{seq}"),
            path: vec![],
            lamport: state.clock.now(),
            blob: None,
            dead_letter: None,
            replay_of: None,
            schema_version: None,
            extensions: Default::default(),
        },
    };
    let mut error: String = error.chars().take(EXCERPT).collect();
    if error.is_empty() {
        error = "(empty answer)".into();
    }
    env.dead_letter = Some(DeadLetterInfo {
        listener: listener.clone(),
        stream: l.stream.clone(),
        sequence: seq,
        attempts,
        status,
        error,
        time: now_rfc3339(),
    });
    // The payload of a blob that cannot be read is gone: the dead letter must not point at it.
    if env.blob.is_some() {
        env.blob = None;
        env.payload = Value::Null;
    }
    // A replayed event that fails again is a new dead letter, not a duplicate of the first.
    let msg_id = match &env.replay_of {
        None => format!("{}.dl.{}", env.id, l.meta.name),
        Some(r) => format!("{}.dl.{}.r{}", env.id, l.meta.name, r.count),
    };
    let out = Outgoing {
        subject: dl.nats_subject.clone(),
        stream: dl.stream.clone(),
        prefix: naming::store_subject_prefix(&l.meta.namespace, &dl.store),
        envelope: env,
        expected: None,
        msg_id: Some(msg_id),
    };
    publish_one(state, out).await?;
    state.metrics.written("dead_letter", false, 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_keys_are_valid_kv_keys() {
        let k = handled_key("reserve", "01J:x.y");
        assert_eq!(k, "_cw.handled.reserve.01J=3Ax=2Ey");
        assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)));
    }

    #[test]
    fn emitted_ids_are_stable_and_distinct() {
        let cause = ulid::Ulid::new().to_string();
        let a = emitted_id("l", &cause, 0);
        assert_eq!(a, emitted_id("l", &cause, 0));
        assert_ne!(a, emitted_id("l", &cause, 1));
        assert_ne!(a, emitted_id("m", &cause, 0));
        let u = ulid::Ulid::from_string(&a).unwrap();
        assert_eq!(u.timestamp_ms(), ulid::Ulid::from_string(&cause).unwrap().timestamp_ms());
    }
}
