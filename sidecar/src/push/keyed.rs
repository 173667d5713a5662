//! Push delivery ordered per key (`delivery.orderBy`): one event at a time per key, different
//! keys in parallel, across all replicas of the node.
//!
//! - **Across replicas** the consumer is a pinned-client priority group: the server hands
//!   events to one replica only (the pinned one) and pins another when it stops pulling for
//!   the pin's timeout. So only one sidecar ever holds a key's events; there are no locks.
//! - **Within the pinned replica** events arrive in stream order; each key has a queue, and a
//!   key's next event starts when the one before it is acked or dead-lettered. The consumer's
//!   `max_ack_pending` (`maxInFlight`) bounds what is held, so nothing piles up in memory.
//! - **A failed event keeps its key blocked**: it is retried here, after the listener's
//!   backoff, instead of being naked back to the server (a nak would let the server hand out
//!   the key's next events first). Every held event gets a progress ack well within ackWait,
//!   in stream order, so that if this replica dies they run out of ackWait in that order.
//! - **Failover**: the pin's timeout exceeds ackWait (see
//!   [`causeway_api::registry::ResolvedDelivery::pinned_ttl`]), so when another replica is
//!   pinned, every event this one held is already due for redelivery, and the server redelivers
//!   those (sorted by sequence) before any newer event.
//! - **Stop**: in-flight deliveries finish within the grace period; events not yet started are
//!   naked in stream order, then the pin is released so another replica takes over at once.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use async_nats::{
    Subject,
    jetstream::{self, AckKind, consumer::pull},
};
use causeway_api::{
    naming,
    registry::{ListenerRecord, ORDER_BY_GROUP, ORDER_BY_PULL_EXPIRES},
};
use futures::StreamExt;
use tokio::{sync::watch, task::JoinSet};

use super::{HttpClient, handle};
use crate::state::State;

/// How often held events get a progress ack: a third of ackWait, so two can be lost.
fn progress_every(l: &ListenerRecord) -> Duration {
    (l.delivery.ack_wait.get() / 3).max(Duration::from_millis(200))
}

fn seq_of(m: &jetstream::Message) -> u64 {
    m.info().map(|i| i.stream_sequence).unwrap_or(0)
}

/// What the worker holds: every unacked event by stream sequence (for progress acks), the
/// key each in-flight delivery belongs to, and the events waiting behind them.
#[derive(Default)]
struct Held {
    replies: BTreeMap<u64, Subject>,
    busy: HashMap<String, u64>,
    waiting: HashMap<String, VecDeque<jetstream::Message>>,
}

pub(super) async fn run(
    state: Arc<State>,
    l: Arc<ListenerRecord>,
    client: HttpClient,
    mut stop: watch::Receiver<bool>,
) {
    let slots = l.delivery.max_in_flight.max(1) as usize;
    let label = l.meta.name.to_string();
    let (hard_tx, hard_rx) = watch::channel(false);
    let mut tasks: JoinSet<(String, u64)> = JoinSet::new();
    let mut held = Held::default();
    let mut sweep = tokio::time::interval(progress_every(&l));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut messages: Option<pull::Stream> = None;
    // The pin this replica last received events under, and pull errors in a row.
    let mut pin: Option<String> = None;
    let mut errors = 0u32;

    let spawn = |tasks: &mut JoinSet<(String, u64)>, held: &mut Held, key: String, msg: jetstream::Message| {
        let seq = seq_of(&msg);
        held.busy.insert(key.clone(), seq);
        let (st, l, client, mut hard) = (state.clone(), l.clone(), client.clone(), hard_rx.clone());
        tasks.spawn(async move {
            // While the app is unhealthy the event waits here, held and kept alive.
            let mut healthy = st.app_healthy.subscribe();
            tokio::select! {
                _ = crate::flag::until_true(&mut healthy) => handle(&st, &l, &client, msg, hard, true).await,
                _ = crate::flag::until_true(&mut hard) => {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
            }
            (key, seq)
        });
    };

    loop {
        let Some(stream) = messages.as_mut() else {
            let opened = tokio::select! {
                s = open(&state, &l, slots) => s,
                _ = crate::flag::until_true(&mut stop) => break,
            };
            match opened {
                Ok(s) => messages = Some(s),
                Err(e) => {
                    tracing::warn!(listener = %label, error = %e, "consumer not available yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = crate::flag::until_true(&mut stop) => break,
                    }
                }
            }
            continue;
        };
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(msg)) => {
                    errors = 0;
                    if let Some(p) = msg.headers.as_ref().and_then(|h| h.get(PIN_HEADER)) {
                        pin = Some(p.as_str().to_owned());
                    }
                    accept(&l, &mut held, &mut tasks, msg, &spawn);
                }
                // The stream recovers from most errors (reconnects, missed heartbeats) and keeps
                // its pin; reopening would lose it, so only a stream that keeps failing is.
                Some(Err(e)) => {
                    errors += 1;
                    tracing::debug!(listener = %label, error = %e, errors, "pull stream error");
                    if errors >= 5 {
                        messages = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                None => messages = None,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((key, seq)) = done else { continue };
                held.replies.remove(&seq);
                held.busy.remove(&key);
                if let Some(q) = held.waiting.get_mut(&key) {
                    let next = q.pop_front();
                    if q.is_empty() {
                        held.waiting.remove(&key);
                    }
                    if let Some(next) = next {
                        spawn(&mut tasks, &mut held, key, next);
                    }
                }
            }
            _ = sweep.tick() => {
                // In stream order, so that if this replica dies its events run out of ackWait
                // (and are redelivered) in that order.
                for reply in held.replies.values() {
                    if let Err(e) = state.client.publish(reply.clone(), "+WPI".into()).await {
                        tracing::debug!(listener = %label, error = %e, "progress ack failed");
                    }
                }
            }
            _ = crate::flag::until_true(&mut stop) => break,
        }
    }
    // No more pulls: the server stops sending here.
    drop(messages);
    super::drain(&state, &label, &mut tasks, &hard_tx).await;
    // Hand back what never started, in stream order, then release the pin.
    let mut rest: Vec<jetstream::Message> = held.waiting.into_values().flatten().collect();
    rest.sort_by_key(seq_of);
    for m in rest {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
    // Only when this replica holds it: releasing another replica's pin while it works would
    // let a third take keys it still holds.
    if let Some(pin) = pin
        && pinned_now(&state, &l).await.as_deref() == Some(pin.as_str())
    {
        let unpin = naming::js_consumer_unpin(&l.stream, &l.consumer);
        let body = serde_json::json!({ "group": ORDER_BY_GROUP }).to_string();
        match tokio::time::timeout(Duration::from_secs(2), state.client.request(unpin, body.into())).await {
            Ok(Ok(_)) => tracing::info!(listener = %label, "released the pin"),
            other => tracing::debug!(listener = %label, ?other, "could not release the pin; it times out instead"),
        }
    }
}

/// The header in which the server names the pin an event was delivered under.
const PIN_HEADER: &str = "Nats-Pin-Id";

/// The pin id the server holds for the listener's group now.
async fn pinned_now(state: &State, l: &ListenerRecord) -> Option<String> {
    let mut c = state.js.get_consumer_from_stream::<pull::Config, _, _>(&l.consumer, &l.stream).await.ok()?;
    let info = tokio::time::timeout(Duration::from_secs(2), c.info()).await.ok()?.ok()?;
    info.priority_groups.iter().find(|g| g.group == ORDER_BY_GROUP).and_then(|g| g.pinned_client_id.clone())
}

/// A pull stream in the listener's priority group: the server delivers only to the pinned
/// client, and each pull (every [`ORDER_BY_PULL_EXPIRES`]) renews the pin.
async fn open(state: &State, l: &ListenerRecord, slots: usize) -> Result<pull::Stream, String> {
    let c = state
        .js
        .get_consumer_from_stream::<pull::Config, _, _>(&l.consumer, &l.stream)
        .await
        .map_err(|e| e.to_string())?;
    c.stream()
        .group(ORDER_BY_GROUP)
        .max_messages_per_batch(slots)
        .expires(ORDER_BY_PULL_EXPIRES)
        .heartbeat(ORDER_BY_PULL_EXPIRES / 2)
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Takes one delivered event: starts it when its key is free, else queues it behind the key's
/// events in stream order. A redelivery of an event still held here (its ackWait ran out)
/// replaces the queued copy, or is dropped when the event is in flight.
fn accept(
    l: &ListenerRecord,
    held: &mut Held,
    tasks: &mut JoinSet<(String, u64)>,
    msg: jetstream::Message,
    spawn: &impl Fn(&mut JoinSet<(String, u64)>, &mut Held, String, jetstream::Message),
) {
    let seq = seq_of(&msg);
    let key = l.order_key(&msg.subject).unwrap_or_default().to_owned();
    let Some(reply) = msg.reply.clone() else { return };
    if let Some(r) = held.replies.get_mut(&seq) {
        tracing::debug!(listener = %l.meta.name, seq, "redelivery of an event held here");
        *r = reply;
        if let Some(q) = held.waiting.get_mut(&key)
            && let Some(slot) = q.iter_mut().find(|m| seq_of(m) == seq)
        {
            *slot = msg;
        }
        return;
    }
    held.replies.insert(seq, reply);
    match held.busy.get(&key) {
        None => spawn(tasks, held, key, msg),
        Some(&running) => {
            if seq < running {
                tracing::warn!(listener = %l.meta.name, seq, running, %key, "an earlier event of a running key arrived late");
            }
            let q = held.waiting.entry(key).or_default();
            let at = q.iter().position(|m| seq_of(m) > seq).unwrap_or(q.len());
            q.insert(at, msg);
        }
    }
}
