//! Causal traces: what the trace stream holds, and the tree of one correlation built from it.
//!
//! Every sidecar records, on the trace stream of the namespace where an event lives
//! ([`crate::naming::trace_stream`]), one small [`TraceRecord`] when it stores an event (a send
//! into an inbox, an append to a store, an emit) and one per delivery outcome of its listeners
//! (delivered, retried, dead-lettered). Records of one correlation share a subject token
//! ([`crate::naming::trace_filter`]), so a trace is read with one batched direct get, without
//! scanning any event stream. [`Trace::build`] turns them into the causal tree.
//!
//! Pure: no I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// What a trace record says happened.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum What {
    /// The event was stored (its stream and sequence are in the record).
    Stored,
    /// A listener's app took it (2xx).
    Delivered,
    /// A listener's delivery failed and will be tried again.
    Retried,
    /// A listener gave up on it: it went to the listener's dead letter (or was dropped, without one).
    DeadLettered,
}

/// One trace record, MessagePack on the trace stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TraceRecord {
    /// What happened.
    pub what: What,
    /// The event id.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Who sent the event (`<ns>/<node>`).
    pub sender: String,
    /// Where the event lives: `node <ns>/<n>` (an inbox) or `store <ns>/<x>`.
    pub target: String,
    /// The event's stream.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// Its subject, relative to its store or inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The event that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Its correlation id.
    pub correlation_id: String,
    /// Its Lamport time.
    pub lamport: u64,
    /// When the event was created.
    pub time: String,
    /// When this record was written (RFC 3339).
    pub at: String,
    /// Who wrote the record (`<ns>/<node>`).
    pub by: String,
    /// The listener, for delivery outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// The delivery attempt (1 for the first), for delivery outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
    /// The app's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why a delivery failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TraceRecord {
    /// MessagePack, fields by name (what [`RecordRef::encode`] writes).
    pub fn encode(&self) -> Vec<u8> {
        self.borrow().encode()
    }

    /// The record's fields, borrowed.
    pub fn borrow(&self) -> RecordRef<'_> {
        RecordRef {
            what: self.what,
            id: &self.id,
            event_type: &self.event_type,
            sender: &self.sender,
            target: [&self.target, "", "", ""],
            stream: &self.stream,
            sequence: self.sequence,
            subject: self.subject.as_deref(),
            causation_id: self.causation_id.as_deref(),
            correlation_id: &self.correlation_id,
            lamport: self.lamport,
            time: &self.time,
            at: &self.at,
            by: &self.by,
            listener: self.listener.as_deref(),
            attempt: self.attempt,
            status: self.status,
            error: self.error.as_deref(),
        }
    }

    /// Decodes a record; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Self> {
        rmp_serde::from_slice(b).ok()
    }
}

/// A [`TraceRecord`] whose strings are borrowed: what a sidecar encodes for every event it
/// stores and every delivery outcome, straight from the event's own fields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecordRef<'a> {
    /// What happened.
    pub what: What,
    /// The event id.
    pub id: &'a str,
    /// The event type.
    pub event_type: &'a str,
    /// Who sent the event (`<ns>/<node>`).
    pub sender: &'a str,
    /// Where the event lives, in parts written one after another (`["node ", ns, "/", name]`),
    /// so that it needs no string of its own.
    pub target: [&'a str; 4],
    /// The event's stream.
    pub stream: &'a str,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// Its subject, relative to its store or inbox.
    pub subject: Option<&'a str>,
    /// The event that caused it.
    pub causation_id: Option<&'a str>,
    /// Its correlation id.
    pub correlation_id: &'a str,
    /// Its Lamport time.
    pub lamport: u64,
    /// When the event was created.
    pub time: &'a str,
    /// When this record was written (RFC 3339).
    pub at: &'a str,
    /// Who wrote the record (`<ns>/<node>`).
    pub by: &'a str,
    /// The listener, for delivery outcomes.
    pub listener: Option<&'a str>,
    /// The delivery attempt (1 for the first), for delivery outcomes.
    pub attempt: Option<u64>,
    /// The app's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why a delivery failed.
    pub error: Option<&'a str>,
}

impl RecordRef<'_> {
    /// MessagePack, fields by name: the bytes `rmp_serde` writes for the same [`TraceRecord`]
    /// (a test holds them equal), written directly, since this runs once per event a sidecar
    /// stores or delivers and the field names never change.
    pub fn encode(&self) -> Vec<u8> {
        let optional = [
            self.subject.is_some(),
            self.causation_id.is_some(),
            self.listener.is_some(),
            self.attempt.is_some(),
            self.status.is_some(),
            self.error.is_some(),
        ];
        // A record takes about 380 bytes: one buffer, no regrowth.
        let mut w = Vec::with_capacity(512);
        mp::map(&mut w, 12 + optional.iter().filter(|o| **o).count());
        mp::entry_str(&mut w, "what", self.what.name());
        mp::entry_str(&mut w, "id", self.id);
        mp::entry_str(&mut w, "type", self.event_type);
        mp::entry_str(&mut w, "sender", self.sender);
        mp::str(&mut w, "target");
        mp::str_of(&mut w, &self.target);
        mp::entry_str(&mut w, "stream", self.stream);
        mp::entry_uint(&mut w, "sequence", self.sequence);
        if let Some(s) = self.subject {
            mp::entry_str(&mut w, "subject", s);
        }
        if let Some(c) = self.causation_id {
            mp::entry_str(&mut w, "causationId", c);
        }
        mp::entry_str(&mut w, "correlationId", self.correlation_id);
        mp::entry_uint(&mut w, "lamport", self.lamport);
        mp::entry_str(&mut w, "time", self.time);
        mp::entry_str(&mut w, "at", self.at);
        mp::entry_str(&mut w, "by", self.by);
        if let Some(l) = self.listener {
            mp::entry_str(&mut w, "listener", l);
        }
        if let Some(a) = self.attempt {
            mp::entry_uint(&mut w, "attempt", a);
        }
        if let Some(s) = self.status {
            mp::entry_uint(&mut w, "status", u64::from(s));
        }
        if let Some(e) = self.error {
            mp::entry_str(&mut w, "error", e);
        }
        w
    }
}

impl What {
    /// The name a record carries (`stored`, `delivered`, `retried`, `deadLettered`).
    pub fn name(self) -> &'static str {
        match self {
            What::Stored => "stored",
            What::Delivered => "delivered",
            What::Retried => "retried",
            What::DeadLettered => "deadLettered",
        }
    }
}

/// The few MessagePack forms a trace record uses, each in its shortest encoding (as the
/// MessagePack spec asks, and as `rmp` writes them).
mod mp {
    pub fn map(w: &mut Vec<u8>, n: usize) {
        if n < 16 {
            w.push(0x80 | n as u8);
        } else {
            // A record has at most 18 fields.
            w.push(0xde);
            w.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }

    pub fn str(w: &mut Vec<u8>, s: &str) {
        str_header(w, s.len());
        w.extend_from_slice(s.as_bytes());
    }

    /// One string made of `parts`.
    pub fn str_of(w: &mut Vec<u8>, parts: &[&str]) {
        str_header(w, parts.iter().map(|p| p.len()).sum());
        for p in parts {
            w.extend_from_slice(p.as_bytes());
        }
    }

    fn str_header(w: &mut Vec<u8>, n: usize) {
        match n {
            0..32 => w.push(0xa0 | n as u8),
            32..256 => w.extend_from_slice(&[0xd9, n as u8]),
            256..65_536 => {
                w.push(0xda);
                w.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                w.push(0xdb);
                w.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
    }

    pub fn uint(w: &mut Vec<u8>, v: u64) {
        match v {
            0..128 => w.push(v as u8),
            128..256 => w.extend_from_slice(&[0xcc, v as u8]),
            256..65_536 => {
                w.push(0xcd);
                w.extend_from_slice(&(v as u16).to_be_bytes());
            }
            65_536..4_294_967_296 => {
                w.push(0xce);
                w.extend_from_slice(&(v as u32).to_be_bytes());
            }
            _ => {
                w.push(0xcf);
                w.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    pub fn entry_str(w: &mut Vec<u8>, key: &str, v: &str) {
        str(w, key);
        str(w, v);
    }

    pub fn entry_uint(w: &mut Vec<u8>, key: &str, v: u64) {
        str(w, key);
        uint(w, v);
    }
}

/// The state of one listener's delivery of an event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The listener.
    pub listener: String,
    /// `delivered`, `retrying` or `deadLettered`.
    pub state: String,
    /// Attempts seen so far.
    pub attempts: u64,
    /// The last failure's HTTP status, if the app answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One event of a trace, with its deliveries and the events it caused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TraceEvent {
    /// The event id.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Who sent it.
    pub sender: String,
    /// Where it lives: `node <ns>/<n>` or `store <ns>/<x>`.
    pub target: String,
    /// Its stream.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
    /// Its subject, relative to its store or inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The event that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Its Lamport time.
    pub lamport: u64,
    /// When it was created.
    pub time: String,
    /// `pending` (no listener has reported yet), `delivered` (every listener that reported
    /// took it), `retrying` or `deadLettered` (some listener is retrying it, or gave up).
    pub outcome: String,
    /// One entry per listener that reported, by name.
    pub deliveries: Vec<Delivery>,
    /// The events it caused, in Lamport order.
    pub children: Vec<TraceEvent>,
}

/// The causal tree of one correlation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// The correlation id.
    pub correlation_id: String,
    /// How many events the trace holds.
    pub events: usize,
    /// The events without a cause in the trace (normally the one that started it), in
    /// Lamport order, each with what it caused.
    pub roots: Vec<TraceEvent>,
}

impl Trace {
    /// Builds the tree from the records of one correlation (records of other correlations,
    /// which can share a subject token, are left out). An event stored twice (a retried send
    /// in another stream) appears once per stream; outcomes attach to the event's stream.
    pub fn build(correlation_id: &str, records: &[TraceRecord]) -> Self {
        let records: Vec<&TraceRecord> = records.iter().filter(|r| r.correlation_id == correlation_id).collect();
        let mut events: BTreeMap<(String, String), TraceEvent> = BTreeMap::new();
        for r in records.iter().filter(|r| r.what == What::Stored) {
            events.entry((r.id.clone(), r.stream.clone())).or_insert_with(|| event_of(r));
        }
        // An outcome whose stored record is missing (written before tracing was on, or lost)
        // still shows the event.
        for r in records.iter().filter(|r| r.what != What::Stored) {
            events.entry((r.id.clone(), r.stream.clone())).or_insert_with(|| event_of(r));
        }
        let mut outcomes: HashMap<(String, String), BTreeMap<String, Vec<&TraceRecord>>> = HashMap::new();
        for r in records.iter().filter(|r| r.what != What::Stored) {
            let l = r.listener.clone().unwrap_or_default();
            outcomes.entry((r.id.clone(), r.stream.clone())).or_default().entry(l).or_default().push(r);
        }
        for (key, e) in events.iter_mut() {
            if let Some(by_listener) = outcomes.get(key) {
                e.deliveries = by_listener.iter().map(|(l, rs)| delivery(l, rs)).collect();
            }
            e.outcome = outcome(&e.deliveries).to_owned();
        }
        let total = events.len();
        let ids: HashSet<String> = events.keys().map(|(id, _)| id.clone()).collect();
        let mut by_cause: HashMap<Option<String>, Vec<TraceEvent>> = HashMap::new();
        for e in events.into_values() {
            let cause = e.causation_id.clone().filter(|c| ids.contains(c) && *c != e.id);
            by_cause.entry(cause).or_default().push(e);
        }
        let mut seen = HashSet::new();
        let roots = by_cause.remove(&None).unwrap_or_default();
        let mut roots = attach(roots, &mut by_cause, &mut seen);
        // Cycles (a causation chain that loops, only possible with hand-set ids) have no root:
        // show them from their earliest event so nothing is left out.
        let mut rest: Vec<TraceEvent> = by_cause.into_values().flatten().filter(|e| !seen.contains(&e.id)).collect();
        rest.sort_by(order);
        if let Some(first) = rest.first().cloned() {
            let mut by_cause: HashMap<Option<String>, Vec<TraceEvent>> = HashMap::new();
            for e in rest.into_iter().skip(1) {
                by_cause.entry(e.causation_id.clone()).or_default().push(e);
            }
            roots.extend(attach(vec![first], &mut by_cause, &mut seen));
        }
        roots.sort_by(order);
        Trace { correlation_id: correlation_id.to_owned(), events: total, roots }
    }

    /// Every event of the tree, depth first, with its depth.
    pub fn walk(&self) -> Vec<(usize, &TraceEvent)> {
        fn go<'a>(e: &'a TraceEvent, depth: usize, out: &mut Vec<(usize, &'a TraceEvent)>) {
            out.push((depth, e));
            for c in &e.children {
                go(c, depth + 1, out);
            }
        }
        let mut out = Vec::new();
        for r in &self.roots {
            go(r, 0, &mut out);
        }
        out
    }
}

fn order(a: &TraceEvent, b: &TraceEvent) -> std::cmp::Ordering {
    (a.lamport, &a.time, &a.id, a.sequence).cmp(&(b.lamport, &b.time, &b.id, b.sequence))
}

fn attach(
    mut level: Vec<TraceEvent>,
    by_cause: &mut HashMap<Option<String>, Vec<TraceEvent>>,
    seen: &mut HashSet<String>,
) -> Vec<TraceEvent> {
    level.sort_by(order);
    for e in level.iter_mut() {
        seen.insert(e.id.clone());
        if let Some(children) = by_cause.remove(&Some(e.id.clone())) {
            e.children = attach(children, by_cause, seen);
        }
    }
    level
}

fn event_of(r: &TraceRecord) -> TraceEvent {
    TraceEvent {
        id: r.id.clone(),
        event_type: r.event_type.clone(),
        sender: r.sender.clone(),
        target: r.target.clone(),
        stream: r.stream.clone(),
        sequence: r.sequence,
        subject: r.subject.clone(),
        causation_id: r.causation_id.clone(),
        lamport: r.lamport,
        time: r.time.clone(),
        outcome: String::new(),
        deliveries: Vec::new(),
        children: Vec::new(),
    }
}

/// One listener's delivery: its final word if it has one, else retrying.
fn delivery(listener: &str, rs: &[&TraceRecord]) -> Delivery {
    let attempts = rs.iter().filter_map(|r| r.attempt).max().unwrap_or(rs.len() as u64);
    let last_failure = rs.iter().filter(|r| r.what != What::Delivered).max_by_key(|r| r.attempt);
    let state = if rs.iter().any(|r| r.what == What::Delivered) {
        "delivered"
    } else if rs.iter().any(|r| r.what == What::DeadLettered) {
        "deadLettered"
    } else {
        "retrying"
    };
    Delivery {
        listener: listener.to_owned(),
        state: state.to_owned(),
        attempts,
        status: last_failure.and_then(|r| r.status),
        error: last_failure.and_then(|r| r.error.clone()),
    }
}

fn outcome(deliveries: &[Delivery]) -> &'static str {
    if deliveries.is_empty() {
        "pending"
    } else if deliveries.iter().any(|d| d.state == "deadLettered") {
        "deadLettered"
    } else if deliveries.iter().any(|d| d.state == "retrying") {
        "retrying"
    } else {
        "delivered"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(what: What, id: &str, cause: Option<&str>, lamport: u64) -> TraceRecord {
        TraceRecord {
            what,
            id: id.into(),
            event_type: "t".into(),
            sender: "shop/a".into(),
            target: "node shop/b".into(),
            stream: "CW_IN_shop_b".into(),
            sequence: lamport,
            subject: None,
            causation_id: cause.map(Into::into),
            correlation_id: "c".into(),
            lamport,
            time: "2026-11-25T00:00:00Z".into(),
            at: "2026-11-25T00:00:01Z".into(),
            by: "shop/b".into(),
            listener: None,
            attempt: None,
            status: None,
            error: None,
        }
    }

    fn outcome_rec(what: What, id: &str, listener: &str, attempt: u64, error: Option<&str>) -> TraceRecord {
        TraceRecord {
            listener: Some(listener.into()),
            attempt: Some(attempt),
            error: error.map(Into::into),
            status: error.map(|_| 500),
            ..rec(what, id, None, 0)
        }
    }

    /// The hand-written encoder writes exactly what serde's MessagePack writes for the same
    /// record, at every length and width boundary, with and without the optional fields.
    #[test]
    fn the_direct_encoding_is_serdes_encoding() {
        let widths = [0, 1, 127, 128, 255, 256, 65_535, 65_536, u32::MAX as u64, u32::MAX as u64 + 1, u64::MAX];
        let lengths = [0, 1, 31, 32, 255, 256, 65_535, 65_536];
        let mut cases = Vec::new();
        for what in [What::Stored, What::Delivered, What::Retried, What::DeadLettered] {
            cases.push(rec(what, "01JD0000000000000000000000", None, 3));
            cases.push(TraceRecord {
                subject: Some("order-placed".into()),
                ..outcome_rec(what, "x", "l", 2, Some("boom"))
            });
        }
        for (i, v) in widths.iter().enumerate() {
            let s = "é".repeat(i * 3);
            cases.push(TraceRecord {
                sequence: *v,
                lamport: v.wrapping_add(1),
                attempt: Some(*v),
                status: Some((*v).min(u16::MAX as u64) as u16),
                subject: Some(s.clone()),
                causation_id: Some(s.clone()),
                listener: Some(s),
                ..outcome_rec(What::Retried, "i", "l", 1, Some(""))
            });
        }
        for n in lengths {
            let s = "x".repeat(n);
            cases.push(TraceRecord { id: s.clone(), error: Some(s.clone()), ..rec(What::Stored, "", None, 1) });
            cases.push(TraceRecord { target: s.clone(), at: s, ..outcome_rec(What::DeadLettered, "d", "l", 9, None) });
        }
        for r in cases {
            let ours = r.encode();
            let serdes = rmp_serde::to_vec_named(&r).unwrap();
            assert_eq!(ours, serdes, "{r:?}");
            assert_eq!(TraceRecord::decode(&ours).as_ref(), Some(&r));
        }
    }

    #[test]
    fn builds_the_causal_tree_with_outcomes() {
        let records = vec![
            rec(What::Stored, "b", Some("a"), 2),
            rec(What::Stored, "a", None, 1),
            rec(What::Stored, "c", Some("a"), 3),
            rec(What::Stored, "d", Some("b"), 4),
            outcome_rec(What::Delivered, "a", "l1", 1, None),
            outcome_rec(What::Retried, "b", "l2", 1, Some("boom")),
            outcome_rec(What::Delivered, "b", "l2", 2, None),
            outcome_rec(What::Retried, "c", "l3", 1, Some("bad")),
            outcome_rec(What::DeadLettered, "c", "l3", 2, Some("bad")),
            TraceRecord { correlation_id: "other".into(), ..rec(What::Stored, "x", None, 9) },
        ];
        let t = Trace::build("c", &records);
        assert_eq!(t.events, 4);
        let walk: Vec<(usize, &str, &str)> =
            t.walk().iter().map(|(d, e)| (*d, e.id.as_str(), e.outcome.as_str())).collect();
        assert_eq!(
            walk,
            vec![(0, "a", "delivered"), (1, "b", "delivered"), (2, "d", "pending"), (1, "c", "deadLettered")]
        );
        let b = &t.roots[0].children[0];
        assert_eq!(b.deliveries[0].attempts, 2);
        assert_eq!(b.deliveries[0].error.as_deref(), Some("boom"));
        let c = &t.roots[0].children[1];
        assert_eq!((c.deliveries[0].state.as_str(), c.deliveries[0].attempts), ("deadLettered", 2));
    }

    #[test]
    fn retrying_without_a_final_word_and_orphans_and_cycles_are_shown() {
        let records = vec![
            outcome_rec(What::Retried, "r", "l", 3, Some("503")),
            rec(What::Stored, "orphan", Some("missing"), 5),
            rec(What::Stored, "x", Some("y"), 7),
            rec(What::Stored, "y", Some("x"), 8),
        ];
        let t = Trace::build("c", &records);
        assert_eq!(t.events, 4);
        assert_eq!(t.walk().len(), 4, "{t:#?}");
        let r = t.walk().into_iter().find(|(_, e)| e.id == "r").unwrap().1;
        assert_eq!((r.outcome.as_str(), r.deliveries[0].attempts), ("retrying", 3));
    }

    #[test]
    fn records_round_trip() {
        let r = outcome_rec(What::DeadLettered, "a", "l", 2, Some("x"));
        assert_eq!(TraceRecord::decode(&r.encode()), Some(r));
        assert_eq!(TraceRecord::decode(b"nope"), None);
    }
}
