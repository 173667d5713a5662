//! Registry records: what the reconcile core writes to `CW_REGISTRY` under `<ns>.<kind>.<name>`
//! and what sidecars watch to resolve names. Each record is resolved from a spec here, once:
//! JetStream names, subjects and the delivery settings a listener inherits from its node.

use serde::{Deserialize, Serialize};

use crate::{
    check::FieldError,
    crd::{AppSpec, DeliveryMode, EventStoreSpec, ListenerSpec, NodeSpec, OrderBy},
    names::{DnsLabel, is_wildcard},
    naming::{self, Kind},
    quantity::Duration,
    schema::ResolvedSchema,
};

/// Who wrote a record: the Kubernetes operator or `causeway apply`.
pub const MANAGER_OPERATOR: &str = "operator";
/// Who wrote a record: the Kubernetes operator or `causeway apply`.
pub const MANAGER_APPLY: &str = "apply";

/// Default push path.
pub const DEFAULT_PUSH_PATH: &str = "/events";
/// Default push timeout.
pub const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Identity of a record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Namespace.
    pub namespace: DnsLabel,
    /// Name.
    pub name: DnsLabel,
    /// Generation of the resource the record was resolved from (local apply: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// `operator` or `apply`.
    pub manager: String,
}

/// A registry entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind")]
// Records are few and read rarely; boxing would only add noise at every use.
#[allow(clippy::large_enum_variant)]
pub enum Record {
    /// An EventStore.
    EventStore(StoreRecord),
    /// A Node.
    Node(NodeRecord),
    /// A Listener.
    Listener(ListenerRecord),
}

impl Record {
    /// The kind.
    pub fn kind(&self) -> Kind {
        match self {
            Record::EventStore(_) => Kind::EventStore,
            Record::Node(_) => Kind::Node,
            Record::Listener(_) => Kind::Listener,
        }
    }
    /// The identity.
    pub fn meta(&self) -> &Meta {
        match self {
            Record::EventStore(r) => &r.meta,
            Record::Node(r) => &r.meta,
            Record::Listener(r) => &r.meta,
        }
    }
    /// `<ns>.<kind>.<name>`.
    pub fn key(&self) -> String {
        naming::registry_key(&self.meta().namespace, self.kind(), &self.meta().name)
    }
    /// JSON bytes as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serialises")
    }
    /// Parses stored bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

/// A resolved EventStore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoreRecord {
    /// Identity.
    pub meta: Meta,
    /// Stream name.
    pub stream: String,
    /// Events live at `<subjectPrefix>.<subject>`.
    pub subject_prefix: String,
    /// The spec it was resolved from.
    pub spec: EventStoreSpec,
    /// JSON Schemas of event types appended here, resolved (inline or from ConfigMaps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<ResolvedSchema>,
}

impl StoreRecord {
    /// Resolves a spec.
    pub fn resolve(meta: Meta, spec: &EventStoreSpec) -> Self {
        Self {
            stream: naming::store_stream(&meta.namespace, &meta.name),
            subject_prefix: naming::store_subject_prefix(&meta.namespace, &meta.name),
            spec: spec.clone(),
            schemas: Vec::new(),
            meta,
        }
    }
}

/// A resolved Node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// Identity.
    pub meta: Meta,
    /// Inbox stream name.
    pub inbox_stream: String,
    /// `send(node, T)` publishes to `<inboxSubjectPrefix>.<T>`.
    pub inbox_subject_prefix: String,
    /// The node's state bucket.
    pub state_bucket: String,
    /// The namespace's global bucket.
    pub global_bucket: String,
    /// The namespace's blob store for large payloads.
    pub blob_bucket: String,
    /// The app beside the sidecar.
    pub app: AppSpec,
    /// The spec it was resolved from.
    pub spec: NodeSpec,
    /// How this node's sidecars authenticate to NATS, as the writer of this record knows it.
    #[serde(default, skip_serializing_if = "NodeCredentials::is_shared")]
    pub credentials: NodeCredentials,
    /// JSON Schemas of event types sent to this node, resolved (inline or from ConfigMaps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<ResolvedSchema>,
}

/// How a node's sidecars authenticate to NATS.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum NodeCredentials {
    /// One credential shared by every sidecar (or none): node isolation is enforced by the
    /// sidecars only, not by NATS.
    #[default]
    Shared,
    /// Its own credential, issued by the operator or `causeway apply`, holding exactly its rights:
    /// NATS enforces node isolation.
    Node,
}

impl NodeCredentials {
    /// True for [`NodeCredentials::Shared`].
    pub fn is_shared(&self) -> bool {
        *self == Self::Shared
    }

    /// What this means for node isolation, in one line.
    pub fn isolation(&self) -> &'static str {
        match self {
            Self::Shared => "not enforced by NATS: sidecars share one credential (the sidecars enforce the policy)",
            Self::Node => "enforced by NATS: the node has its own credential",
        }
    }
}

impl NodeRecord {
    /// Resolves a spec.
    pub fn resolve(meta: Meta, spec: &NodeSpec) -> Self {
        let (ns, n) = (&meta.namespace, &meta.name);
        Self {
            inbox_stream: naming::inbox_stream(ns, n),
            inbox_subject_prefix: naming::inbox_subject_prefix(ns, n),
            state_bucket: naming::state_bucket(ns, n),
            global_bucket: naming::global_bucket(ns),
            blob_bucket: naming::blob_bucket(ns),
            app: spec.app.clone(),
            spec: spec.clone(),
            credentials: NodeCredentials::Shared,
            schemas: Vec::new(),
            meta,
        }
    }
}

/// What a listener reads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    /// EventStore or Node (for an inbox).
    pub kind: Kind,
    /// Its name.
    pub name: DnsLabel,
}

/// Delivery settings after the listener's own and its node's are merged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDelivery {
    /// push or pull.
    pub mode: DeliveryMode,
    /// Push path on the app.
    pub path: String,
    /// Push timeout.
    pub timeout: Duration,
    /// Consumer ack wait.
    pub ack_wait: Duration,
    /// Attempts before dead-lettering; `None` is unlimited.
    pub max_deliver: Option<i64>,
    /// Nak delays; the last repeats.
    pub backoff: Vec<Duration>,
    /// Consumer max ack pending (1 when ordered).
    pub max_in_flight: u32,
    /// One at a time, in order.
    pub ordered: bool,
    /// One at a time per key, keys in parallel (a pinned-client consumer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<OrderBy>,
    /// Skip redeliveries already handled.
    pub exactly_once: bool,
}

/// The priority group a `delivery.orderBy` listener's sidecars pull in; the server pins one
/// client of it at a time.
pub const ORDER_BY_GROUP: &str = "cw";
/// How long one pull of a `delivery.orderBy` listener waits before the sidecar asks again; each
/// pull renews the pin, so it must stay well below [`ResolvedDelivery::pinned_ttl`].
pub const ORDER_BY_PULL_EXPIRES: std::time::Duration = std::time::Duration::from_secs(5);

impl ResolvedDelivery {
    /// How long the server keeps a `delivery.orderBy` listener pinned to a replica that stopped
    /// pulling, before it pins another. It exceeds ackWait plus two pulls (and a margin), so
    /// that by the time another replica is pinned every event the silent one held has run out
    /// of ackWait and waits, in stream order, for redelivery ahead of newer events: per-key
    /// order survives a replica's death. It is therefore also the failover time.
    pub fn pinned_ttl(&self) -> std::time::Duration {
        self.ack_wait.get() + 2 * ORDER_BY_PULL_EXPIRES + std::time::Duration::from_secs(5)
    }

    /// The nak delay after the given (1-based) failed attempt.
    pub fn backoff_for(&self, attempt: u64) -> Duration {
        let i = (attempt.max(1) - 1) as usize;
        self.backoff.get(i).or(self.backoff.last()).copied().unwrap_or(Duration::from_secs(1))
    }
}

/// A resolved dead letter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDeadLetter {
    /// The store.
    pub store: DnsLabel,
    /// Its stream.
    pub stream: String,
    /// Subject relative to the store.
    pub subject: String,
    /// Full NATS subject.
    pub nats_subject: String,
}

/// A resolved Listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerRecord {
    /// Identity.
    pub meta: Meta,
    /// The node whose sidecars deliver it.
    pub node: DnsLabel,
    /// What it reads.
    pub source: SourceRef,
    /// The source stream.
    pub stream: String,
    /// The source's subject prefix.
    pub subject_prefix: String,
    /// Durable consumer name.
    pub consumer: String,
    /// Full NATS filter subjects of the consumer.
    pub filter_subjects: Vec<String>,
    /// Type filters applied by the sidecar (empty: all).
    pub types: Vec<String>,
    /// Delivery settings.
    pub delivery: ResolvedDelivery,
    /// Dead letter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<ResolvedDeadLetter>,
    /// The spec it was resolved from.
    pub spec: ListenerSpec,
    /// The last rewind carried out on its consumer (kept from record to record; set by the
    /// reconcile, not by `resolve`). Sidecars refuse ack tokens handed out before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewound: Option<crate::crd::RewindStatus>,
}

impl ListenerRecord {
    /// Resolves a listener against its node's delivery defaults.
    pub fn resolve(meta: Meta, spec: &ListenerSpec, node: &NodeSpec) -> Result<Self, Vec<FieldError>> {
        let mut errs = crate::check::check_listener(spec);
        if !errs.is_empty() {
            return Err(errs);
        }
        let ns = &meta.namespace;
        let (source, stream, prefix) = match (&spec.source.store, &spec.source.inbox) {
            (Some(s), _) => (
                SourceRef { kind: Kind::EventStore, name: s.clone() },
                naming::store_stream(ns, s),
                naming::store_subject_prefix(ns, s),
            ),
            (None, Some(n)) => (
                SourceRef { kind: Kind::Node, name: n.clone() },
                naming::inbox_stream(ns, n),
                naming::inbox_subject_prefix(ns, n),
            ),
            (None, None) => unreachable!("checked above"),
        };
        let mut relative: Vec<String> = spec.subjects.iter().map(|s| s.to_string()).collect();
        if source.kind == Kind::Node && !spec.types.is_empty() {
            // In an inbox the subject is the type, so the server can filter by type.
            relative = spec
                .types
                .iter()
                .map(|t| match t.strip_suffix(".*") {
                    Some(p) => format!("{p}.>"),
                    None => t.to_string(),
                })
                .collect();
        }
        if relative.is_empty() {
            relative.push(">".into());
        }
        relative.sort();
        relative.dedup();
        let mut filter_subjects: Vec<String> = match source.kind {
            Kind::Node => relative.iter().flat_map(|r| naming::inbox_filters(ns, &source.name, r)).collect(),
            _ => relative.iter().map(|r| naming::join_subject(&prefix, r)).collect(),
        };
        // Its replayed dead letters, and no other listener's.
        filter_subjects.push(naming::join_subject(&replay_prefix_of(&meta, &source), ">"));

        let d = &spec.delivery;
        let nd = &node.delivery;
        let delivery = ResolvedDelivery {
            mode: d.mode,
            path: d.path.clone().unwrap_or_else(|| DEFAULT_PUSH_PATH.to_owned()),
            timeout: d.timeout.unwrap_or(DEFAULT_PUSH_TIMEOUT),
            ack_wait: d.ack_wait.unwrap_or(nd.ack_wait),
            max_deliver: d.max_deliver.or(nd.max_deliver),
            backoff: d.backoff.clone().unwrap_or_else(|| nd.backoff.clone()),
            max_in_flight: if d.ordered { 1 } else { d.max_in_flight.unwrap_or(nd.max_in_flight) },
            ordered: d.ordered,
            order_by: d.order_by,
            exactly_once: nd.exactly_once,
        };
        if delivery.mode == DeliveryMode::Push && delivery.timeout >= delivery.ack_wait {
            errs.push(FieldError::new(
                "spec.delivery.timeout",
                format!(
                    "push timeout {} must be shorter than ackWait {} (from the node unless set here)",
                    delivery.timeout, delivery.ack_wait
                ),
            ));
        }
        if delivery.backoff.is_empty() {
            errs.push(FieldError::new("spec.delivery.backoff", "the node's backoff is empty: give at least one delay"));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let dead_letter = spec.dead_letter.as_ref().map(|dl| {
            let p = naming::store_subject_prefix(ns, &dl.store);
            ResolvedDeadLetter {
                store: dl.store.clone(),
                stream: naming::store_stream(ns, &dl.store),
                subject: dl.subject.to_string(),
                nats_subject: naming::join_subject(&p, &dl.subject),
            }
        });
        Ok(Self {
            node: spec.node.clone(),
            consumer: naming::listener_consumer(ns, &meta.name),
            source,
            stream,
            subject_prefix: prefix,
            filter_subjects,
            types: spec.types.iter().map(|t| t.to_string()).collect(),
            delivery,
            dead_letter,
            spec: spec.clone(),
            meta,
            rewound: None,
        })
    }

    /// For an inbox listener, checks that an event read at `subject` says what its subject
    /// proves: the sender named by the subject's sender tokens (which NATS permissions tie to the
    /// publishing node's credential) and the type the subject carries. Events under the older
    /// `cw.<ns>.in.<n>.<T>` layout prove nothing and pass, as do all events of a store.
    pub fn check_sender(&self, subject: &str, env: &crate::envelope::Envelope) -> Result<(), String> {
        if self.source.kind != Kind::Node {
            return Ok(());
        }
        let to = naming::inbox_to_prefix(&self.meta.namespace, &self.source.name);
        let Some((ns, node, event_type)) = naming::parse_inbox_sender(&to, subject) else { return Ok(()) };
        let proven = format!("{ns}/{node}");
        if env.sender != proven {
            return Err(format!(
                "forged_sender: event {} claims sender {:?} but was published by {proven} (its subject {subject})",
                env.id, env.sender
            ));
        }
        if env.event_type != event_type {
            return Err(format!(
                "forged_sender: event {} claims type {:?} but {proven} published it as type {event_type:?} (its subject {subject})",
                env.id, env.event_type
            ));
        }
        Ok(())
    }

    /// Where this listener's dead letters are replayed in its source stream (see
    /// [`naming::listener_replay_prefix`]); only this listener's consumer filters on it.
    pub fn replay_prefix(&self) -> String {
        replay_prefix_of(&self.meta, &self.source)
    }

    /// The subject a dead-lettered event is replayed at: the replay prefix and the event's
    /// subject in a store (its type in an inbox, or when a store event names no subject).
    pub fn replay_subject(&self, env: &crate::envelope::Envelope) -> String {
        let rel = match (self.source.kind, &env.subject) {
            (Kind::EventStore, Some(s)) if !s.is_empty() => s.as_str(),
            _ => env.event_type.as_str(),
        };
        naming::join_subject(&self.replay_prefix(), rel)
    }

    /// The subject of an event read at the full NATS `subject`, relative to its store (for an
    /// inbox: its type), as `delivery.orderBy` sees it. Replayed dead letters keep the subject
    /// they were replayed at (see [`Self::replay_subject`]), so they share their key.
    pub fn relative_subject<'a>(&self, subject: &'a str) -> &'a str {
        let ns = &self.meta.namespace;
        if let Some(rest) = naming::strip_subject_prefix(&self.replay_prefix(), subject) {
            return rest;
        }
        if self.source.kind == Kind::Node
            && let Some((_, _, t)) =
                naming::parse_inbox_sender(&naming::inbox_to_prefix(ns, &self.source.name), subject)
        {
            return t;
        }
        naming::strip_subject_prefix(&self.subject_prefix, subject).unwrap_or(subject)
    }

    /// The `delivery.orderBy` key of an event read at the full NATS `subject`, if the listener
    /// orders by key.
    pub fn order_key<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.delivery.order_by.map(|o| o.key(self.relative_subject(subject)))
    }

    /// True when an event of this type is for this listener.
    pub fn wants_type(&self, event_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|f| crate::names::type_matches(f, event_type))
    }
}

fn replay_prefix_of(meta: &Meta, source: &SourceRef) -> String {
    let src = match source.kind {
        Kind::Node => naming::inbox_replay_prefix(&meta.namespace, &source.name),
        _ => naming::store_replay_prefix(&meta.namespace, &source.name),
    };
    naming::listener_replay_prefix(&src, &meta.name)
}

/// True when a subject pattern (relative) can match more than one subject.
pub fn pattern_is_wildcard(p: &str) -> bool {
    is_wildcard(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crd::{ListenerSpec, NodeSpec},
        envelope::Envelope,
    };

    fn listener(source: serde_json::Value) -> ListenerRecord {
        let spec: ListenerSpec =
            serde_json::from_value(serde_json::json!({"node": "inventory", "source": source})).unwrap();
        let meta = Meta {
            namespace: DnsLabel::new("shop").unwrap(),
            name: DnsLabel::new("reserve").unwrap(),
            generation: None,
            manager: "test".into(),
        };
        let node: NodeSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        ListenerRecord::resolve(meta, &spec, &node).unwrap()
    }

    fn event(sender: &str, event_type: &str) -> Envelope {
        Envelope {
            id: "e1".into(),
            event_type: event_type.into(),
            payload: serde_json::Value::Null,
            subject: None,
            time: "2026-11-25T00:00:00Z".into(),
            sender: sender.into(),
            causation_id: None,
            correlation_id: "e1".into(),
            path: vec![],
            lamport: 1,
            blob: None,
            dead_letter: None,
            replay_of: None,
            schema_version: None,
            extensions: Default::default(),
        }
    }

    #[test]
    fn order_keys_come_from_the_relative_subject() {
        let mut s = listener(serde_json::json!({"store": "orders"}));
        assert_eq!(s.order_key("cw.shop.es.orders.acct.42.moves"), None, "no orderBy, no key");
        s.delivery.order_by = Some(OrderBy::Token(2));
        assert_eq!(s.order_key("cw.shop.es.orders.acct.42.moves"), Some("42"));
        assert_eq!(s.order_key("cw.shop.replay.es.orders.reserve.acct.42.moves"), Some("42"), "a replay keeps its key");
        assert_eq!(s.order_key("cw.shop.es.orders.lonely"), Some("lonely"), "too few tokens: the subject");
        s.delivery.order_by = Some(OrderBy::Subject);
        assert_eq!(s.order_key("cw.shop.es.orders.acct.42.moves"), Some("acct.42.moves"));
        let mut i = listener(serde_json::json!({"inbox": "inventory"}));
        i.delivery.order_by = Some(OrderBy::Subject);
        assert_eq!(i.order_key("cw.shop.to.inventory.shop.orders.order.placed"), Some("order.placed"));
        assert_eq!(i.order_key("cw.shop.in.inventory.order.placed"), Some("order.placed"));
        i.delivery.order_by = Some(OrderBy::Token(1));
        assert_eq!(i.order_key("cw.shop.to.inventory.shop.orders.order.placed"), Some("order"));
        assert_eq!("token:3".parse::<OrderBy>(), Ok(OrderBy::Token(3)));
        assert!("token:0".parse::<OrderBy>().is_err() && "token:17".parse::<OrderBy>().is_err());
    }

    #[test]
    fn an_inbox_event_must_say_what_its_subject_proves() {
        let l = listener(serde_json::json!({"inbox": "inventory"}));
        let subject = "cw.shop.to.inventory.shop.orders.order.placed";
        assert_eq!(l.check_sender(subject, &event("shop/orders", "order.placed")), Ok(()));
        let forged = l.check_sender(subject, &event("shop/billing", "order.placed")).unwrap_err();
        assert!(forged.starts_with("forged_sender") && forged.contains("shop/orders"), "{forged}");
        let retyped = l.check_sender(subject, &event("shop/orders", "order.cancelled")).unwrap_err();
        assert!(retyped.contains("type"), "{retyped}");
        // The older layout proves nothing, and so cannot be checked.
        assert_eq!(l.check_sender("cw.shop.in.inventory.order.placed", &event("shop/anyone", "order.placed")), Ok(()));
        // Store events carry user subjects.
        let s = listener(serde_json::json!({"store": "orders"}));
        assert_eq!(s.check_sender("cw.shop.es.orders.a.b.c", &event("x/y", "t")), Ok(()));
    }

    #[test]
    fn inbox_listeners_filter_both_layouts() {
        let l = listener(serde_json::json!({"inbox": "inventory"}));
        assert_eq!(
            l.filter_subjects,
            vec!["cw.shop.to.inventory.*.*.>", "cw.shop.in.inventory.>", "cw.shop.replay.in.inventory.reserve.>"]
        );
    }
}
