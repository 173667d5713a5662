//! Causal trace records (see `causeway_api::trace`): one per stored event and one per delivery
//! outcome, published without waiting for an ack into the trace stream of the namespace where
//! the event lives. A trace is diagnostics: a record lost in an outage costs a line of a
//! trace, never an event, and never a request's latency.
//!
//! Push listeners record their outcomes as they deliver ([`delivered`]). A pull listener's app
//! says what happened in `POST /v1/acks`, which has only the ack token: so the token carries the
//! event's [`Traced`] fields, and [`pulled`] records from them.
//!
//! Records are not written to NATS one by one: a request leaves its record in the
//! [`Recorder`], and [`keep_flushing`] publishes everything that gathered within
//! [`FLUSH_AFTER`] together, so many records share one socket write instead of each costing a
//! write (and the wake-ups around it) of its own. Idle, nothing waits or wakes.

use causeway_api::{
    envelope::Envelope,
    names::DnsLabel,
    naming::{self, Kind},
    registry::ListenerRecord,
    trace::{TraceRecord, What},
};
use serde::{Deserialize, Serialize};

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::{publish::Outgoing, state::State};

/// How long records gather before they are written together.
pub const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// Most records waiting at once; beyond, new ones are dropped and counted (a trace is
/// diagnostics: memory stays bounded while NATS is away).
const MAX_PENDING: usize = 16_384;

/// Trace records waiting to be written.
#[derive(Debug, Default)]
pub struct Recorder {
    pending: std::sync::Mutex<Vec<(String, Bytes)>>,
    wake: Notify,
}

impl Recorder {
    /// Leaves a record to be written soon; false when it was dropped (too many waiting).
    fn push(&self, subject: String, record: Bytes) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= MAX_PENDING {
            return false;
        }
        p.push((subject, record));
        if p.len() == 1 {
            self.wake.notify_one();
        }
        true
    }

    /// Publishes every waiting record (no reply is awaited); the client writes them together.
    pub async fn flush(&self, client: &async_nats::Client) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (subject, record) in batch {
            if let Err(e) = client.publish(subject, record).await {
                tracing::debug!(error = %e, "trace record not published");
            }
        }
    }
}

/// Writes the records that gathered, [`FLUSH_AFTER`] after the first of them, until shutdown
/// (the teardown flushes the last ones after the push workers have stopped).
pub async fn keep_flushing(state: Arc<State>) {
    let mut stop = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = state.traces.wake.notified() => {}
            _ = crate::flag::until_true(&mut stop) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(FLUSH_AFTER) => {}
            _ = crate::flag::until_true(&mut stop) => return,
        }
        state.traces.flush(&state.client).await;
    }
}

/// True when this node records traces (its Node's `spec.trace.enabled`, default on).
pub fn enabled(state: &State) -> bool {
    state.registry.own_node().is_none_or(|n| n.spec.trace.enabled)
}

/// The fields of an event that its trace records repeat.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Traced {
    /// The event id.
    pub id: String,
    /// Its type.
    pub event_type: String,
    /// Who sent it.
    pub sender: String,
    /// Its subject, relative to its store or inbox.
    pub subject: Option<String>,
    /// The event that caused it.
    pub causation_id: Option<String>,
    /// Its correlation id.
    pub correlation_id: String,
    /// Its Lamport time.
    pub lamport: u64,
    /// When it was created.
    pub time: String,
}

impl Traced {
    /// The trace fields of `env`.
    pub fn of(env: &Envelope) -> Self {
        Self {
            id: env.id.clone(),
            event_type: env.event_type.clone(),
            sender: env.sender.clone(),
            subject: env.subject.clone(),
            causation_id: env.causation_id.clone(),
            correlation_id: env.correlation_id.clone(),
            lamport: env.lamport,
            time: env.time.clone(),
        }
    }

    /// Compact MessagePack (fields by position), for an ack token's context.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("trace fields always encode")
    }

    /// Decodes [`Traced::encode`]'s bytes; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Self> {
        rmp_serde::from_slice(b).ok()
    }
}

/// Records that `out` was stored at `sequence` (not for dead letters: their outcome record says it).
pub async fn stored(state: &State, out: &Outgoing, sequence: u64) {
    if out.envelope.dead_letter.is_some() || !enabled(state) {
        return;
    }
    let mut ev = Traced::of(&out.envelope);
    ev.subject = naming::strip_subject_prefix(&out.prefix, &out.subject).map(|s| s.to_owned());
    let rec = record(state, What::Stored, ev, &out.stream, sequence);
    publish(state, &out.stream, rec).await;
}

/// A listener's outcome for one delivery attempt.
pub struct Outcome<'a> {
    /// What happened.
    pub what: What,
    /// The attempt (1 for the first).
    pub attempt: u64,
    /// The app's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed.
    pub error: Option<&'a str>,
}

/// Records what listener `l` did with the event at `sequence` of its stream.
pub async fn delivered(state: &State, l: &ListenerRecord, ev: Traced, sequence: u64, o: Outcome<'_>) {
    if !enabled(state) {
        return;
    }
    let mut rec = record(state, o.what, ev, &l.stream, sequence);
    rec.listener = Some(l.meta.name.to_string());
    rec.attempt = Some(o.attempt);
    rec.status = o.status;
    rec.error = o.error.map(|e| e.chars().take(500).collect());
    publish(state, &l.stream, rec).await;
}

/// What a pull listener's app answered for a fetched event in `POST /v1/acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `ack`: handled.
    Ack,
    /// `nak`: try again (after `delayMs`, if given).
    Nak,
    /// `term`: never deliver it again.
    Term,
}

/// Records a pull listener's outcome for the event at `sequence`, delivered for the `attempt`-th
/// time: an ack is `delivered`; a nak is `retried`, unless it was the last attempt `maxDeliver`
/// allows (JetStream delivers it no more, so the listener gave up: `deadLettered`); a term is
/// `deadLettered`. `reason` is what the app said, if anything.
pub async fn pulled(
    state: &State,
    l: &ListenerRecord,
    ev: Traced,
    sequence: u64,
    attempt: u64,
    answer: Answer,
    reason: Option<&str>,
) {
    let because = |what: &str| match reason {
        Some(r) => format!("{what}: {r}"),
        None => what.to_owned(),
    };
    let (what, error) = match answer {
        Answer::Ack => (What::Delivered, None),
        Answer::Nak => match l.delivery.max_deliver {
            Some(max) if max > 0 && attempt >= max as u64 => (
                What::DeadLettered,
                Some(because(&format!("the app naked its last allowed attempt (maxDeliver {max})"))),
            ),
            _ => (What::Retried, Some(because("the app naked it"))),
        },
        Answer::Term => (What::DeadLettered, Some(because("the app terminated it"))),
    };
    let o = Outcome { what, attempt, status: None, error: error.as_deref() };
    delivered(state, l, ev, sequence, o).await;
}

fn record(state: &State, what: What, ev: Traced, stream: &str, sequence: u64) -> TraceRecord {
    let target = match naming::parse_stream(stream) {
        Some((Kind::Node, ns, n)) => format!("node {ns}/{n}"),
        Some((_, ns, x)) => format!("store {ns}/{x}"),
        None => stream.to_owned(),
    };
    TraceRecord {
        what,
        id: ev.id,
        event_type: ev.event_type,
        sender: ev.sender,
        target,
        stream: stream.to_owned(),
        sequence,
        subject: ev.subject,
        causation_id: ev.causation_id,
        correlation_id: ev.correlation_id,
        lamport: ev.lamport,
        time: ev.time,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        by: state.sender(),
        listener: None,
        attempt: None,
        status: None,
        error: None,
    }
}

/// Leaves the record to the [`Recorder`]: JetStream stores it soon, nobody waits.
async fn publish(state: &State, stream: &str, rec: TraceRecord) {
    let ns = match naming::parse_stream(stream).map(|(_, ns, _)| DnsLabel::new(ns)) {
        Some(Ok(ns)) => ns,
        _ => return,
    };
    let c = &state.config;
    let subject = naming::trace_subject(&ns, &rec.correlation_id, c.namespace.as_str(), c.node.as_str());
    if !state.traces.push(subject, rec.encode().into()) {
        state.metrics.trace_dropped.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_fields_round_trip_compactly() {
        let ev = Traced {
            id: "01JD0000000000000000000000".into(),
            event_type: "order-placed".into(),
            sender: "shop/web".into(),
            subject: Some("order-placed".into()),
            causation_id: None,
            correlation_id: "01JD0000000000000000000000".into(),
            lamport: 17,
            time: "2026-11-25T12:00:00.123Z".into(),
        };
        let b = ev.encode();
        assert_eq!(Traced::decode(&b), Some(ev));
        // By position, not by name: the fields' own bytes and little more.
        assert!(b.len() < 130, "{} bytes", b.len());
        assert_eq!(Traced::decode(b"not msgpack"), None);
    }
}
