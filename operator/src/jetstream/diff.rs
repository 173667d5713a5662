//! Desired vs. actual: the field-level differences that decide whether to write.
//!
//! Only fields Causeway manages are compared, after normalising the forms JetStream reports
//! back (defaults filled in, a single filter subject moved to `filter_subject`, …), so a
//! steady state compares equal and makes no writes.

use std::{fmt, time::Duration as StdDuration};

use async_nats::jetstream::{
    consumer::{self, DeliverPolicy},
    stream::{self, Compression},
};
use causeway_api::quantity::Duration;

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The JetStream object, e.g. `stream CW_ES_shop_orders`.
    pub object: String,
    /// The JetStream field, e.g. `max_age`.
    pub field: &'static str,
    /// What the server has.
    pub from: String,
    /// What the spec wants.
    pub to: String,
    /// JetStream cannot change this field on a live object.
    pub immutable: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {} -> {}", self.object, self.field, self.from, self.to)?;
        if self.immutable {
            f.write_str(" (immutable)")?;
        }
        Ok(())
    }
}

fn dur(d: StdDuration) -> String {
    if d.is_zero() { "unlimited".into() } else { Duration::from(d).to_string() }
}

fn lim(v: i64) -> String {
    if v < 0 { "unlimited".into() } else { v.to_string() }
}

fn text<T: fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_lowercase()
}

struct Differ<'a> {
    object: &'a str,
    changes: Vec<Change>,
}

impl Differ<'_> {
    fn cmp<T: PartialEq>(
        &mut self,
        field: &'static str,
        cur: T,
        want: T,
        show: impl Fn(&T) -> String,
        immutable: bool,
    ) {
        if cur != want {
            self.changes.push(Change {
                object: self.object.to_owned(),
                field,
                from: show(&cur),
                to: show(&want),
                immutable,
            });
        }
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

fn norm_limit(v: i64) -> i64 {
    if v <= 0 { -1 } else { v }
}

/// Differences between a stream's current and desired config.
pub fn stream(cur: &stream::Config, want: &stream::Config) -> Vec<Change> {
    let object = format!("stream {}", want.name);
    let mut d = Differ { object: &object, changes: Vec::new() };
    d.cmp("storage", cur.storage, want.storage, |v| text(v), true);
    d.cmp("retention", cur.retention, want.retention, |v| text(v), true);
    d.cmp("subjects", sorted(&cur.subjects), sorted(&want.subjects), |v| v.join(","), false);
    d.cmp("description", cur.description.clone(), want.description.clone(), |v| v.clone().unwrap_or_default(), false);
    d.cmp("num_replicas", cur.num_replicas.max(1), want.num_replicas.max(1), |v| v.to_string(), false);
    d.cmp("max_age", cur.max_age, want.max_age, |v| dur(*v), false);
    d.cmp("max_bytes", norm_limit(cur.max_bytes), norm_limit(want.max_bytes), |v| lim(*v), false);
    d.cmp("max_msgs", norm_limit(cur.max_messages), norm_limit(want.max_messages), |v| lim(*v), false);
    d.cmp(
        "max_msgs_per_subject",
        norm_limit(cur.max_messages_per_subject),
        norm_limit(want.max_messages_per_subject),
        |v| lim(*v),
        false,
    );
    d.cmp("duplicate_window", cur.duplicate_window, want.duplicate_window, |v| dur(*v), false);
    d.cmp("discard", cur.discard, want.discard, |v| text(v), false);
    d.cmp(
        "compression",
        cur.compression.clone().unwrap_or(Compression::None),
        want.compression.clone().unwrap_or(Compression::None),
        |v| text(v),
        false,
    );
    d.cmp("allow_atomic", cur.allow_atomic_publish, want.allow_atomic_publish, |v| v.to_string(), false);
    d.cmp("allow_direct", cur.allow_direct, want.allow_direct, |v| v.to_string(), false);
    d.cmp("allow_rollup_hdrs", cur.allow_rollup, want.allow_rollup, |v| v.to_string(), false);
    d.cmp("deny_delete", cur.deny_delete, want.deny_delete, |v| v.to_string(), false);
    d.cmp("deny_purge", cur.deny_purge, want.deny_purge, |v| v.to_string(), false);
    d.cmp("sealed", cur.sealed, want.sealed, |v| v.to_string(), false);
    d.cmp(
        "max_consumers",
        norm_limit(cur.max_consumers as i64),
        norm_limit(want.max_consumers as i64),
        |v| lim(*v),
        false,
    );
    d.cmp("republish", republish(cur), republish(want), |v| v.clone(), false);
    d.changes
}

/// The republish as one comparable value: source, destination and whether only headers go (a
/// store stream of an earlier version has none and gains it on the next reconcile).
fn republish(c: &stream::Config) -> String {
    c.republish
        .as_ref()
        .map(|r| format!("{} -> {}{}", r.source, r.destination, if r.headers_only { " (headers only)" } else { "" }))
        .unwrap_or_else(|| "none".into())
}

fn filters(c: &consumer::Config) -> Vec<String> {
    let mut v = c.filter_subjects.clone();
    if !c.filter_subject.is_empty() {
        v.push(c.filter_subject.clone());
    }
    sorted(&v)
}

fn deliver(p: &DeliverPolicy) -> String {
    match p {
        DeliverPolicy::All => "all".into(),
        DeliverPolicy::Last => "last".into(),
        DeliverPolicy::New => "new".into(),
        DeliverPolicy::LastPerSubject => "last_per_subject".into(),
        DeliverPolicy::ByStartSequence { start_sequence } => format!("sequence {start_sequence}"),
        DeliverPolicy::ByStartTime { start_time } => format!("time {start_time}"),
    }
}

/// Differences between a consumer's current and desired config.
pub fn consumer(cur: &consumer::Config, want: &consumer::Config) -> Vec<Change> {
    let object = format!("consumer {}", want.durable_name.clone().unwrap_or_default());
    let mut d = Differ { object: &object, changes: Vec::new() };
    d.cmp("deliver_policy", deliver(&cur.deliver_policy), deliver(&want.deliver_policy), |v| v.clone(), true);
    d.cmp("ack_policy", cur.ack_policy, want.ack_policy, |v| text(v), true);
    d.cmp("filter_subjects", filters(cur), filters(want), |v| v.join(","), false);
    d.cmp("description", cur.description.clone(), want.description.clone(), |v| v.clone().unwrap_or_default(), false);
    d.cmp("ack_wait", cur.ack_wait, want.ack_wait, |v| dur(*v), false);
    d.cmp("max_deliver", norm_limit(cur.max_deliver), norm_limit(want.max_deliver), |v| lim(*v), false);
    d.cmp("max_ack_pending", norm_limit(cur.max_ack_pending), norm_limit(want.max_ack_pending), |v| lim(*v), false);
    // Only Causeway's own key: the server adds keys of its own (`_nats.*`).
    let rewind = |c: &consumer::Config| c.metadata.get(super::desired::REWIND_METADATA).cloned();
    d.cmp("metadata.rewind", rewind(cur), rewind(want), |v| v.clone().unwrap_or_else(|| "none".into()), false);
    // nats-server updates these on a live consumer (delivery.orderBy turned on or off).
    d.cmp("priority_policy", cur.priority_policy.clone(), want.priority_policy.clone(), |v| text(v), false);
    d.cmp("priority_groups", cur.priority_groups.clone(), want.priority_groups.clone(), |v| v.join(","), false);
    let pinned = want.priority_policy == consumer::PriorityPolicy::PinnedClient;
    if pinned {
        d.cmp("priority_timeout", cur.priority_timeout, want.priority_timeout, |v| dur(*v), false);
    }
    d.changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_configs_have_no_changes() {
        let c = stream::Config { name: "S".into(), subjects: vec!["a.>".into()], ..Default::default() };
        assert!(stream(&c, &c).is_empty());
    }

    #[test]
    fn server_normal_forms_compare_equal() {
        let want = stream::Config {
            name: "S".into(),
            max_bytes: -1,
            compression: Some(Compression::None),
            ..Default::default()
        };
        let cur =
            stream::Config { name: "S".into(), max_bytes: 0, compression: None, num_replicas: 0, ..Default::default() };
        assert!(stream(&cur, &want).is_empty(), "{:?}", stream(&cur, &want));
        let want = consumer::Config { filter_subjects: vec!["a".into()], max_deliver: -1, ..Default::default() };
        let cur = consumer::Config { filter_subject: "a".into(), max_deliver: 0, ..Default::default() };
        assert!(consumer(&cur, &want).is_empty());
    }

    #[test]
    fn republish_compares_source_destination_and_headers_only() {
        let rp = |src: &str, dest: &str, headers_only| {
            Some(stream::Republish { source: src.into(), destination: dest.into(), headers_only })
        };
        let want = stream::Config { name: "S".into(), republish: rp("a.>", "b.>", true), ..Default::default() };
        let mut cur = want.clone();
        assert!(stream(&cur, &want).is_empty());
        for (other, from) in [
            (None, "none"),
            (rp("a.>", "b.>", false), "a.> -> b.>"),
            (rp("a.>", "c.>", true), "a.> -> c.> (headers only)"),
            (rp("a.x", "b.x", true), "a.x -> b.x (headers only)"),
        ] {
            cur.republish = other;
            let ch = stream(&cur, &want);
            assert_eq!(ch.len(), 1, "{ch:?}");
            assert_eq!((ch[0].field, ch[0].immutable, ch[0].from.as_str()), ("republish", false, from));
        }
    }

    #[test]
    fn immutable_fields_are_marked() {
        let want = stream::Config { name: "S".into(), storage: stream::StorageType::Memory, ..Default::default() };
        let cur = stream::Config { name: "S".into(), max_age: StdDuration::from_secs(60), ..Default::default() };
        let ch = stream(&cur, &want);
        assert_eq!(ch.len(), 2);
        assert!(ch.iter().any(|c| c.field == "storage" && c.immutable));
        assert!(ch.iter().any(|c| c.field == "max_age" && !c.immutable && c.from == "1m" && c.to == "unlimited"));
    }
}
