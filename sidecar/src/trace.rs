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
    causal,
    envelope::Envelope,
    names,
    naming::{self, Kind},
    registry::ListenerRecord,
    trace::{RecordRef, What},
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
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            // The next batch likely gathers as many: room for them, so it does not regrow.
            let room = p.len();
            std::mem::replace(&mut *p, Vec::with_capacity(room))
        };
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

/// The fields of an event that its trace records repeat, as an ack token carries them.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
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
    /// Decodes [`EventRef::encode`]'s bytes; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Self> {
        rmp_serde::from_slice(b).ok()
    }
}

/// [`Traced`], borrowed from the event: what every record is written from, without copying.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct EventRef<'a> {
    id: &'a str,
    event_type: &'a str,
    sender: &'a str,
    subject: Option<&'a str>,
    causation_id: Option<&'a str>,
    correlation_id: &'a str,
    lamport: u64,
    time: &'a str,
}

impl EventRef<'_> {
    /// Compact MessagePack (fields by position), for an ack token's context: [`Traced::decode`]
    /// reads it back.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("trace fields always encode")
    }
}

impl<'a> From<&'a Envelope> for EventRef<'a> {
    fn from(env: &'a Envelope) -> Self {
        Self {
            id: &env.id,
            event_type: &env.event_type,
            sender: &env.sender,
            subject: env.subject.as_deref(),
            causation_id: env.causation_id.as_deref(),
            correlation_id: &env.correlation_id,
            lamport: env.lamport,
            time: &env.time,
        }
    }
}

impl<'a> From<&'a Traced> for EventRef<'a> {
    fn from(t: &'a Traced) -> Self {
        Self {
            id: &t.id,
            event_type: &t.event_type,
            sender: &t.sender,
            subject: t.subject.as_deref(),
            causation_id: t.causation_id.as_deref(),
            correlation_id: &t.correlation_id,
            lamport: t.lamport,
            time: &t.time,
        }
    }
}

/// Records that `out` was stored at `sequence` (not for dead letters: their outcome record says it).
pub fn stored(state: &State, out: &Outgoing, sequence: u64) {
    if out.envelope.dead_letter.is_some() || !enabled(state) {
        return;
    }
    let ev = EventRef { subject: naming::strip_subject_prefix(&out.prefix, &out.subject), ..(&out.envelope).into() };
    record(state, What::Stored, ev, &out.stream, sequence, None);
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
pub fn delivered(state: &State, l: &ListenerRecord, ev: EventRef<'_>, sequence: u64, o: Outcome<'_>) {
    if enabled(state) {
        record(state, o.what, ev, &l.stream, sequence, Some((l.meta.name.as_str(), o)));
    }
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
pub fn pulled(
    state: &State,
    l: &ListenerRecord,
    ev: &Traced,
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
    delivered(state, l, ev.into(), sequence, o);
}

/// Most characters of a delivery error a record keeps.
const MAX_ERROR_CHARS: usize = 500;

/// Writes one record (to the [`Recorder`]: JetStream stores it soon, nobody waits), in the
/// trace stream of the namespace of `stream`, where the event lives.
fn record(
    state: &State,
    what: What,
    ev: EventRef<'_>,
    stream: &str,
    sequence: u64,
    outcome: Option<(&str, Outcome<'_>)>,
) {
    let Some((kind, ns, x)) = naming::parse_stream(stream) else { return };
    if !names::is_dns_label(ns) {
        return;
    }
    let at = causal::Rfc3339Millis::now();
    let (listener, o) = outcome.map_or((None, None), |(l, o)| (Some(l), Some(o)));
    let error =
        o.as_ref().and_then(|o| o.error).map(|e| e.char_indices().nth(MAX_ERROR_CHARS).map_or(e, |(i, _)| &e[..i]));
    let rec = RecordRef {
        what,
        id: ev.id,
        event_type: ev.event_type,
        sender: ev.sender,
        target: [if kind == Kind::Node { "node " } else { "store " }, ns, "/", x],
        stream,
        sequence,
        subject: ev.subject,
        causation_id: ev.causation_id,
        correlation_id: ev.correlation_id,
        lamport: ev.lamport,
        time: ev.time,
        at: at.as_str(),
        by: state.sender(),
        listener,
        attempt: o.as_ref().map(|o| o.attempt),
        status: o.as_ref().and_then(|o| o.status),
        error,
    };
    let c = &state.config;
    let subject = naming::trace_subject(ns, ev.correlation_id, c.namespace.as_str(), c.node.as_str());
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
        let b = EventRef::from(&ev).encode();
        assert_eq!(Traced::decode(&b), Some(ev));
        // By position, not by name: the fields' own bytes and little more.
        assert!(b.len() < 130, "{} bytes", b.len());
        assert_eq!(Traced::decode(b"not msgpack"), None);
    }
}
