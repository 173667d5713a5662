//! Causal context: event ids, correlation, causation, the hop path and the Lamport clock.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use chrono::{DateTime, SecondsFormat, Utc};

/// Hops kept in an event's `path`.
pub const MAX_PATH: usize = 32;

/// A Lamport clock: one per node, shared by all requests a sidecar serves.
#[derive(Debug, Default)]
pub struct LamportClock(AtomicU64);

impl LamportClock {
    /// A clock starting at `t`.
    pub fn new(t: u64) -> Self {
        Self(AtomicU64::new(t))
    }
    /// Before a send: `clock += 1`; returns the new time, which the event carries.
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    /// On every event received: `clock = max(clock, t)`.
    pub fn observe(&self, t: u64) {
        self.0.fetch_max(t, Ordering::SeqCst);
    }
    /// The current time.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The parts of a causing event that its effects inherit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The cause's id (becomes `causationId`).
    pub id: String,
    /// The cause's correlation id (inherited).
    pub correlation_id: String,
    /// The cause's path (extended).
    pub path: Vec<[String; 2]>,
}

/// The causal fields of a new event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Event id.
    pub id: String,
    /// Causation id, if any.
    pub causation_id: Option<String>,
    /// Correlation id.
    pub correlation_id: String,
    /// Hop path.
    pub path: Vec<[String; 2]>,
}

/// What the client said about a new event's causality.
#[derive(Debug, Clone, Default)]
pub struct Given {
    /// Client-chosen id.
    pub id: Option<String>,
    /// Client-given correlation id.
    pub correlation_id: Option<String>,
    /// Client-given causation id (body or `Cw-Causation-Id`).
    pub causation_id: Option<String>,
}

/// Applies the causal rules (docs/reference.md, "Causal rules"):
/// - `id` is given or generated;
/// - `correlationId` is given, else inherited from the cause, else equal to `id`;
/// - `causationId` is given, else the cause's id;
/// - `path` is the cause's path plus `[sender, target]`, keeping the last [`MAX_PATH`] hops.
pub fn context(given: Given, cause: Option<&Cause>, sender: &str, target: &str) -> Context {
    let id = given.id.unwrap_or_else(new_event_id);
    let correlation_id =
        given.correlation_id.or_else(|| cause.map(|c| c.correlation_id.clone())).unwrap_or_else(|| id.clone());
    let causation_id = given.causation_id.or_else(|| cause.map(|c| c.id.clone()));
    let mut path: Vec<[String; 2]> = cause.map(|c| c.path.clone()).unwrap_or_default();
    path.push([sender.to_owned(), target.to_owned()]);
    if path.len() > MAX_PATH {
        path.drain(..path.len() - MAX_PATH);
    }
    Context { id, causation_id, correlation_id, path }
}

static ULIDS: Mutex<Option<ulid::Generator>> = Mutex::new(None);

/// A new unique, time-sortable event id (a monotonic ULID).
pub fn new_event_id() -> String {
    let mut g = ULIDS.lock().unwrap_or_else(|e| e.into_inner());
    let g = g.get_or_insert_with(ulid::Generator::new);
    // The generator only fails when 2^80 ids are made in one millisecond.
    g.generate().unwrap_or_else(|_| ulid::Ulid::new()).to_string()
}

/// Now, as events carry it: RFC 3339 in UTC with milliseconds.
pub fn now_rfc3339() -> String {
    Rfc3339Millis::now().as_str().to_owned()
}

/// A time as events and trace records carry it, `YYYY-MM-DDTHH:MM:SS.mmmZ`: the text chrono's
/// `to_rfc3339_opts(Millis, true)` gives (a test holds them equal), written digit by digit
/// into a buffer on the stack, since every event and every trace record takes one. Years
/// outside 0–9999 and leap seconds are left to chrono.
pub enum Rfc3339Millis {
    /// The usual case.
    Fixed([u8; 24]),
    /// What chrono wrote.
    Other(String),
}

impl Rfc3339Millis {
    /// Now.
    pub fn now() -> Self {
        Self::of(Utc::now())
    }

    /// `t`.
    pub fn of(t: DateTime<Utc>) -> Self {
        use chrono::{Datelike, Timelike};
        let (year, nanos) = (t.year(), t.nanosecond());
        if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
            return Self::Other(t.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u32| {
            for d in b[at..at + width].iter_mut().rev() {
                *d = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year as u32);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        put(17, 2, t.second());
        put(20, 3, nanos / 1_000_000);
        Self::Fixed(b)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Fixed(b) => std::str::from_utf8(b).expect("digits and ASCII punctuation"),
            Self::Other(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn timestamps_read_as_chronos(ms in -70_000_000_000_000i64..300_000_000_000_000i64) {
            let t = DateTime::from_timestamp_millis(ms).unwrap();
            let ours = Rfc3339Millis::of(t);
            proptest::prop_assert_eq!(ours.as_str(), t.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
    }

    #[test]
    fn timestamp_edges_read_as_chronos() {
        for ms in [0, 1, 999, 1_000, -1, -62_167_219_200_000, 253_402_300_799_999, 253_402_300_800_000] {
            let t = DateTime::from_timestamp_millis(ms).unwrap();
            assert_eq!(Rfc3339Millis::of(t).as_str(), t.to_rfc3339_opts(SecondsFormat::Millis, true), "{ms}");
        }
        // Sub-millisecond digits are cut, not rounded, as chrono does.
        let t = DateTime::from_timestamp(1_764_000_000, 999_999_999).unwrap();
        assert_eq!(Rfc3339Millis::of(t).as_str(), "2025-11-24T16:00:00.999Z");
    }

    #[test]
    fn lamport_rules() {
        let c = LamportClock::new(0);
        assert_eq!(c.tick(), 1);
        c.observe(10);
        assert_eq!(c.tick(), 11);
        c.observe(3);
        assert_eq!(c.now(), 11);
    }

    #[test]
    fn root_event_correlates_with_itself() {
        let ctx = context(Given::default(), None, "shop/web", "shop/orders");
        assert_eq!(ctx.correlation_id, ctx.id);
        assert_eq!(ctx.causation_id, None);
        assert_eq!(ctx.path, vec![["shop/web".to_string(), "shop/orders".to_string()]]);
    }

    #[test]
    fn effects_inherit_and_extend() {
        let cause = Cause { id: "c1".into(), correlation_id: "r1".into(), path: vec![["a".into(), "b".into()]] };
        let ctx = context(Given::default(), Some(&cause), "b", "c");
        assert_eq!(ctx.causation_id.as_deref(), Some("c1"));
        assert_eq!(ctx.correlation_id, "r1");
        assert_eq!(ctx.path.len(), 2);
        let given =
            Given { id: Some("x".into()), correlation_id: Some("mine".into()), causation_id: Some("other".into()) };
        let ctx = context(given, Some(&cause), "b", "c");
        assert_eq!(
            (ctx.id.as_str(), ctx.correlation_id.as_str(), ctx.causation_id.as_deref()),
            ("x", "mine", Some("other"))
        );
    }

    #[test]
    fn path_keeps_last_32_hops() {
        let long: Vec<[String; 2]> = (0..40).map(|i| [format!("s{i}"), format!("t{i}")]).collect();
        let cause = Cause { id: "c".into(), correlation_id: "r".into(), path: long };
        let ctx = context(Given::default(), Some(&cause), "x", "y");
        assert_eq!(ctx.path.len(), MAX_PATH);
        assert_eq!(ctx.path.last().unwrap(), &["x".to_string(), "y".to_string()]);
        assert_eq!(ctx.path[0][0], "s9");
    }

    #[test]
    fn ids_sort_by_time() {
        let ids: Vec<String> = (0..1000).map(|_| new_event_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
}
