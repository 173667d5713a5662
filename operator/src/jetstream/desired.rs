//! Spec → desired JetStream configuration. Pure: no I/O.
//!
//! Every stream Causeway manages (stores, inboxes and the streams behind KV buckets) is described
//! here as a `stream::Config`, and every listener as a consumer `Config`, so one diff and one apply
//! path serve them all.

use std::time::Duration as StdDuration;

use async_nats::jetstream::{
    consumer::{self, AckPolicy, DeliverPolicy, PriorityPolicy, ReplayPolicy},
    stream::{self, Compression, DiscardPolicy, RetentionPolicy, StorageType},
};
use causeway_api::{
    DnsLabel,
    crd::{self, DEFAULT_MAX_CONSUMERS, Retention, RetentionKind, RewindStatus, StartAt},
    naming::{self, REGISTRY_BUCKET, REGISTRY_CHANGES_PREFIX},
    quantity::Duration,
    registry::{ListenerRecord, NodeRecord, ORDER_BY_GROUP, StoreRecord},
};

/// Duplicate window when a spec does not give one (JetStream's own default).
const DEFAULT_DUPLICATE_WINDOW: StdDuration = StdDuration::from_secs(120);

fn storage(s: crd::StorageType) -> StorageType {
    match s {
        crd::StorageType::File => StorageType::File,
        crd::StorageType::Memory => StorageType::Memory,
    }
}

fn retention_kind(k: RetentionKind) -> RetentionPolicy {
    match k {
        RetentionKind::Limits => RetentionPolicy::Limits,
        RetentionKind::Interest => RetentionPolicy::Interest,
        RetentionKind::WorkQueue => RetentionPolicy::WorkQueue,
    }
}

fn limit(v: Option<i64>) -> i64 {
    v.unwrap_or(-1)
}

fn age(v: Option<Duration>) -> StdDuration {
    v.map(Duration::get).unwrap_or_default()
}

/// A window no longer than the max age (JetStream refuses a longer one).
fn window(want: StdDuration, max_age: StdDuration) -> StdDuration {
    if max_age.is_zero() { want } else { want.min(max_age) }
}

fn with_retention(mut c: stream::Config, r: &Retention) -> stream::Config {
    c.retention = retention_kind(r.kind);
    c.max_age = age(r.max_age);
    c.max_bytes = r.max_bytes.map(|b| b.get() as i64).unwrap_or(-1);
    c.max_messages = limit(r.max_events);
    c.max_messages_per_subject = limit(r.max_events_per_subject);
    c
}

fn base(name: String, subjects: Vec<String>, description: String) -> stream::Config {
    stream::Config {
        name,
        subjects,
        description: Some(description),
        max_bytes: -1,
        max_messages: -1,
        max_messages_per_subject: -1,
        // Explicit: nats-server 2.15 reads 0 or -1 as its own default (1,000).
        max_consumers: DEFAULT_MAX_CONSUMERS as i32,
        max_message_size: -1,
        num_replicas: 1,
        // Direct get lets sidecars load events and KV entries from any replica.
        allow_direct: true,
        ..Default::default()
    }
}

/// The stream of an EventStore.
pub fn store_stream(rec: &StoreRecord) -> stream::Config {
    let s = &rec.spec;
    let mut c = base(
        rec.stream.clone(),
        naming::store_stream_subjects(&rec.meta.namespace, &rec.meta.name).into(),
        format!("Causeway EventStore {}/{}", rec.meta.namespace, rec.meta.name),
    );
    c = with_retention(c, &s.retention);
    c.storage = storage(s.storage);
    c.num_replicas = s.replicas.get() as usize;
    c.duplicate_window = s.duplicate_window.get();
    c.discard = match s.discard {
        crd::Discard::Old => DiscardPolicy::Old,
        crd::Discard::New => DiscardPolicy::New,
    };
    c.compression = Some(match s.compression {
        crd::Compression::None => Compression::None,
        crd::Compression::S2 => Compression::S2,
    });
    c.allow_atomic_publish = s.allow_atomic_batch;
    c.max_consumers = s.max_consumers.clamp(1, i32::MAX as i64) as i32;
    c.republish = Some(store_announcements(rec));
    c
}

/// The headers-only republish of a store stream: every stored event is announced at
/// `cw.<ns>.live.<x>.<S>` with its `Nats-Sequence`, so live streams are woken without a
/// consumer each (a stream holds at most `maxConsumers`) and read with direct gets.
fn store_announcements(rec: &StoreRecord) -> stream::Republish {
    stream::Republish {
        source: naming::join_subject(&rec.subject_prefix, ">"),
        destination: naming::join_subject(&naming::store_live_prefix(&rec.meta.namespace, &rec.meta.name), ">"),
        headers_only: true,
    }
}

/// The inbox stream of a Node.
pub fn inbox_stream(rec: &NodeRecord) -> stream::Config {
    let i = &rec.spec.inbox;
    let mut c = base(
        rec.inbox_stream.clone(),
        naming::inbox_stream_subjects(&rec.meta.namespace, &rec.meta.name).into(),
        format!("Causeway Node {}/{} inbox", rec.meta.namespace, rec.meta.name),
    );
    c = with_retention(c, &i.retention);
    c.storage = storage(i.storage);
    c.num_replicas = i.replicas.get() as usize;
    c.duplicate_window = window(DEFAULT_DUPLICATE_WINDOW, c.max_age);
    c.compression = Some(Compression::None);
    // Batch sends are all-or-nothing.
    c.allow_atomic_publish = true;
    c
}

/// The stream behind a KV bucket, shaped exactly as NATS KV clients expect.
pub fn kv_stream(
    bucket: &str,
    description: String,
    history: i64,
    ttl: Option<Duration>,
    replicas: usize,
) -> stream::Config {
    let mut c = base(format!("KV_{bucket}"), vec![format!("$KV.{bucket}.>")], description);
    c.max_messages_per_subject = history.max(1);
    c.max_age = age(ttl);
    c.duplicate_window = window(DEFAULT_DUPLICATE_WINDOW, c.max_age);
    c.storage = StorageType::File;
    c.num_replicas = replicas;
    c.allow_rollup = true;
    c.deny_delete = true;
    c.discard = DiscardPolicy::New;
    c.compression = Some(Compression::None);
    c
}

/// The state bucket of a Node.
pub fn state_kv(rec: &NodeRecord) -> stream::Config {
    kv_stream(
        &rec.state_bucket,
        format!("Causeway Node {}/{} state", rec.meta.namespace, rec.meta.name),
        rec.spec.state.history as i64,
        rec.spec.state.ttl,
        rec.spec.inbox.replicas.get() as usize,
    )
}

/// The global bucket of a namespace (created with its first Node or EventStore).
pub fn global_kv(ns: &DnsLabel, replicas: usize) -> stream::Config {
    kv_stream(&naming::global_bucket(ns), format!("Causeway global KV of namespace {ns}"), 1, None, replicas)
}

/// The object store of a namespace for payloads above the server's `max_payload`, shaped as
/// NATS object-store clients expect (stream `OBJ_<bucket>`).
pub fn blob_store(ns: &DnsLabel, replicas: usize) -> stream::Config {
    let bucket = naming::blob_bucket(ns);
    let mut c = base(
        format!("OBJ_{bucket}"),
        vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
        format!("Causeway large payloads of namespace {ns}"),
    );
    c.storage = StorageType::File;
    c.num_replicas = replicas;
    c.discard = DiscardPolicy::New;
    c.allow_rollup = true;
    c
}

/// How long the trace stream keeps causal metadata, and how much of it.
pub const TRACE_MAX_AGE: StdDuration = StdDuration::from_secs(24 * 3600);
/// See [`TRACE_MAX_AGE`]; the oldest records go first. A cap on records, not bytes: JetStream
/// reserves a stream's `max_bytes` against the server's storage up front, which would cost every
/// namespace that much disk before it traced anything.
pub const TRACE_MAX_RECORDS: i64 = 1_000_000;

/// The trace stream of a namespace (created with its first Node or EventStore): causal
/// metadata only, one small record per stored event and delivery outcome, read per correlation
/// through JetStream's per-subject index (see `causeway_api::trace`). Oldest records go first.
pub fn trace_stream(ns: &DnsLabel, replicas: usize) -> stream::Config {
    let mut c = base(
        naming::trace_stream(ns),
        vec![naming::trace_stream_subject(ns)],
        format!("Causeway causal traces of namespace {ns}"),
    );
    c.storage = StorageType::File;
    c.num_replicas = replicas;
    c.max_age = TRACE_MAX_AGE;
    c.max_messages = TRACE_MAX_RECORDS;
    c.discard = DiscardPolicy::Old;
    // Diagnostics: a record is not worth an fsync of its own (a server with `sync_interval:
    // always` would otherwise write every send twice to disk). Single-replica only, as
    // nats-server allows; a hard kill may lose the last records, never an event.
    if replicas == 1 {
        c.persist_mode = Some(stream::PersistenceMode::Async);
    }
    c.duplicate_window = window(DEFAULT_DUPLICATE_WINDOW, c.max_age);
    c
}

/// True for the streams a namespace shares (global and blob buckets, traces): created once by
/// whichever object comes first, then only the fields every Causeway depends on are kept.
pub fn is_shared(ns: &DnsLabel, stream: &str) -> bool {
    stream == naming::kv_stream(&naming::global_bucket(ns))
        || stream == naming::object_stream(&naming::blob_bucket(ns))
        || stream == naming::trace_stream(ns)
}

/// The registry bucket that sidecars watch. It republishes every stored change to
/// `cw._registry.<key>`, so sidecars follow it with a plain subscription instead of a consumer
/// each (a stream holds at most 1,000).
pub fn registry_kv(replicas: usize) -> stream::Config {
    let mut c =
        kv_stream(REGISTRY_BUCKET, "Causeway registry: resolved stores, nodes and listeners".into(), 1, None, replicas);
    c.republish = Some(stream::Republish {
        source: format!("$KV.{REGISTRY_BUCKET}.>"),
        destination: format!("{REGISTRY_CHANGES_PREFIX}.>"),
        headers_only: false,
    });
    c
}

/// JetStream's deliver policy for a start position.
pub fn deliver_policy(s: &StartAt) -> DeliverPolicy {
    match s {
        StartAt::New => DeliverPolicy::New,
        StartAt::All => DeliverPolicy::All,
        StartAt::Last => DeliverPolicy::Last,
        StartAt::Sequence(n) => DeliverPolicy::ByStartSequence { start_sequence: *n },
        StartAt::Time(t) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(t.timestamp_nanos_opt().unwrap_or(0) as i128)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
    }
}

/// The durable consumer of a Listener. All replicas of the node share it.
pub fn listener_consumer(rec: &ListenerRecord) -> consumer::Config {
    let d = &rec.delivery;
    // orderBy: one replica at a time gets events (the pinned client of the group), so the
    // sidecar that holds a key's events is the only one that can run them.
    let (priority_policy, priority_groups, priority_timeout) = match d.order_by {
        Some(_) => (PriorityPolicy::PinnedClient, vec![ORDER_BY_GROUP.to_owned()], d.pinned_ttl()),
        None => (PriorityPolicy::None, Vec::new(), StdDuration::ZERO),
    };
    let (filter_subject, filter_subjects) = match rec.filter_subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    consumer::Config {
        durable_name: Some(rec.consumer.clone()),
        name: Some(rec.consumer.clone()),
        description: Some(format!("Causeway Listener {}/{} (node {})", rec.meta.namespace, rec.meta.name, rec.node)),
        deliver_policy: deliver_policy(&rec.spec.start_at),
        ack_policy: AckPolicy::Explicit,
        ack_wait: d.ack_wait.get(),
        max_deliver: d.max_deliver.unwrap_or(-1),
        filter_subject,
        filter_subjects,
        replay_policy: ReplayPolicy::Instant,
        max_ack_pending: d.max_in_flight as i64,
        metadata: rec.rewound.iter().map(|r| (REWIND_METADATA.to_owned(), rewind_metadata(r))).collect(),
        priority_policy,
        priority_groups,
        priority_timeout,
        ..Default::default()
    }
}

/// The consumer metadata key that records the last rewind done to a listener's consumer (its
/// JSON), so a rewind is never done twice, even when the registry record is lost.
pub const REWIND_METADATA: &str = "causeway.dev/rewind";

fn rewind_metadata(r: &RewindStatus) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// The rewind a consumer's metadata records, if any.
pub fn rewind_of(c: &consumer::Config) -> Option<RewindStatus> {
    c.metadata.get(REWIND_METADATA).and_then(|v| serde_json::from_str(v).ok())
}

#[cfg(test)]
mod tests {
    use causeway_api::{crd::EventStoreSpec, registry::Meta};

    use super::*;
    use crate::jetstream::diff;

    fn store(ns: &str, name: &str) -> StoreRecord {
        let meta = Meta {
            namespace: DnsLabel::new(ns).unwrap(),
            name: DnsLabel::new(name).unwrap(),
            generation: None,
            manager: "test".into(),
        };
        let spec: EventStoreSpec = serde_json::from_str("{}").unwrap();
        StoreRecord::resolve(meta, &spec)
    }

    #[test]
    fn a_store_stream_announces_what_it_stores_headers_only_under_its_live_prefix() {
        let c = store_stream(&store("shop", "orders"));
        let r = c.republish.expect("a store stream republishes");
        assert_eq!(r.source, "cw.shop.es.orders.>");
        assert_eq!(r.destination, "cw.shop.live.orders.>");
        assert!(r.headers_only, "announcements carry no payload");
        // The destination must not be captured by the stream itself (JetStream refuses a cycle).
        assert!(c.subjects.iter().all(|s| !r.destination.starts_with(s.trim_end_matches('>'))));
    }

    #[test]
    fn a_store_stream_of_an_earlier_version_gains_the_republish_as_an_update() {
        let want = store_stream(&store("shop", "orders"));
        let mut old = want.clone();
        old.republish = None;
        let changes = diff::stream(&old, &want);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let c = &changes[0];
        assert_eq!((c.field, c.immutable, c.from.as_str()), ("republish", false, "none"));
        assert_eq!(c.to, "cw.shop.es.orders.> -> cw.shop.live.orders.> (headers only)");
        assert!(diff::stream(&want, &want).is_empty());
    }
}
