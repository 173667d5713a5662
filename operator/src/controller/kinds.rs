//! The three kinds as the controllers see them: how to turn an object into the core's
//! [`Object`], and the core's outcome into the object's status. One generic reconcile
//! ([`super::reconcile`]) serves all three.

use std::fmt::Debug;

use causeway_api::{
    DnsLabel, Kind,
    crd::{Condition, DeletionPolicy, EventStore, EventStoreStatus, Listener, ListenerStatus, Node, NodeStatus},
    naming,
    registry::{MANAGER_OPERATOR, Meta},
    schema::EventSchema,
};
use kube::{Resource, ResourceExt, core::NamespaceResourceScope};
use serde::{Serialize, de::DeserializeOwned};

use crate::jetstream::{Figures, Object, Spec};

/// A Causeway custom resource.
pub trait Managed:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Which kind.
    const KIND: Kind;
    /// Its spec, for the core.
    fn spec_of(&self) -> Spec;
    /// What happens to its data on deletion.
    fn deletion_policy(&self) -> DeletionPolicy;
    /// Its stored status, as JSON (to compare before patching).
    fn stored_status(&self) -> Option<serde_json::Value>;
    /// The status for a Ready condition and figures. `previous` is the stored status (its
    /// figures are kept when the new ones are unknown, e.g. while NATS is away).
    fn status(
        &self,
        ns: &DnsLabel,
        name: &DnsLabel,
        ready: Condition,
        figures: &Figures,
        previous: Option<&serde_json::Value>,
    ) -> serde_json::Value;
    /// The object as a Node, for the steps only Nodes have (their NATS credential).
    fn as_node(&self) -> Option<&Node> {
        None
    }
    /// The event schemas its spec declares (EventStores and Nodes).
    fn schemas(&self) -> &[EventSchema] {
        &[]
    }
    /// True when one of its schemas is read from the ConfigMap `name` (of its own namespace).
    fn uses_config_map(&self, name: &str) -> bool {
        self.schemas().iter().any(|s| s.config_map_ref.as_ref().is_some_and(|r| r.name == name))
    }
}

/// The core's view of an object, or why it cannot have one (its name is not a DNS label, which
/// the CRD's own rule forbids but an API server without validation lets through).
pub fn object_of<K: Managed>(o: &K) -> Result<(Object, DnsLabel, DnsLabel), String> {
    let ns = DnsLabel::new(o.namespace().unwrap_or_else(|| "default".into())).map_err(|e| e.to_string())?;
    let name = DnsLabel::new(o.name_any()).map_err(|e| e.to_string())?;
    let meta = Meta {
        namespace: ns.clone(),
        name: name.clone(),
        generation: o.meta().generation,
        manager: MANAGER_OPERATOR.into(),
    };
    Ok((Object::new(meta, o.spec_of()), ns, name))
}

fn prev_figure<T: DeserializeOwned>(previous: Option<&serde_json::Value>, field: &str) -> Option<T> {
    previous.and_then(|p| p.get(field)).and_then(|v| serde_json::from_value(v.clone()).ok())
}

fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl Managed for EventStore {
    const KIND: Kind = Kind::EventStore;
    fn schemas(&self) -> &[EventSchema] {
        &self.spec.schemas
    }
    fn spec_of(&self) -> Spec {
        Spec::EventStore(self.spec.clone())
    }
    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }
    fn stored_status(&self) -> Option<serde_json::Value> {
        self.status.as_ref().map(to_json)
    }
    fn status(
        &self,
        ns: &DnsLabel,
        name: &DnsLabel,
        ready: Condition,
        f: &Figures,
        previous: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let keep = |v: Option<u64>, field: &str| v.or_else(|| prev_figure(previous, field));
        to_json(&EventStoreStatus {
            observed_generation: self.meta().generation,
            conditions: vec![ready],
            stream: Some(naming::store_stream(ns, name)),
            subjects: Some(naming::join_subject(&naming::store_subject_prefix(ns, name), ">")),
            events: keep(f.events, "events"),
            bytes: keep(f.bytes, "bytes"),
            first_sequence: keep(f.first_sequence, "firstSequence"),
            last_sequence: keep(f.last_sequence, "lastSequence"),
            consumers: keep(f.consumers, "consumers"),
            max_consumers: f.max_consumers.or_else(|| prev_figure(previous, "maxConsumers")),
        })
    }
}

impl Managed for Node {
    const KIND: Kind = Kind::Node;
    fn schemas(&self) -> &[EventSchema] {
        &self.spec.schemas
    }
    fn as_node(&self) -> Option<&Node> {
        Some(self)
    }
    fn spec_of(&self) -> Spec {
        Spec::Node(self.spec.clone())
    }
    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }
    fn stored_status(&self) -> Option<serde_json::Value> {
        self.status.as_ref().map(to_json)
    }
    fn status(
        &self,
        ns: &DnsLabel,
        name: &DnsLabel,
        ready: Condition,
        f: &Figures,
        previous: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let keep = |v: Option<u64>, field: &str| v.or_else(|| prev_figure(previous, field));
        to_json(&NodeStatus {
            observed_generation: self.meta().generation,
            conditions: vec![ready],
            inbox_stream: Some(naming::inbox_stream(ns, name)),
            inbox_subjects: Some(naming::inbox_stream_subjects(ns, name).join(", ")),
            state_bucket: Some(naming::state_bucket(ns, name)),
            global_bucket: Some(naming::global_bucket(ns)),
            events: keep(f.events, "events"),
            bytes: keep(f.bytes, "bytes"),
            last_sequence: keep(f.last_sequence, "lastSequence"),
            consumers: keep(f.consumers, "consumers"),
            max_consumers: f.max_consumers.or_else(|| prev_figure(previous, "maxConsumers")),
            // Filled in by the reconcile when the operator issues node credentials.
            credentials: None,
        })
    }
}

impl Managed for Listener {
    const KIND: Kind = Kind::Listener;
    fn spec_of(&self) -> Spec {
        Spec::Listener(self.spec.clone())
    }
    fn deletion_policy(&self) -> DeletionPolicy {
        // A consumer holds a position, not events: it always goes with its Listener.
        DeletionPolicy::Delete
    }
    fn stored_status(&self) -> Option<serde_json::Value> {
        self.status.as_ref().map(to_json)
    }
    fn status(
        &self,
        ns: &DnsLabel,
        name: &DnsLabel,
        ready: Condition,
        f: &Figures,
        previous: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let keep = |v: Option<u64>, field: &str| v.or_else(|| prev_figure(previous, field));
        let stream = match (&self.spec.source.store, &self.spec.source.inbox) {
            (Some(s), _) => Some(naming::store_stream(ns, s)),
            (None, Some(n)) => Some(naming::inbox_stream(ns, n)),
            (None, None) => None,
        };
        to_json(&ListenerStatus {
            observed_generation: self.meta().generation,
            conditions: vec![ready],
            stream,
            consumer: Some(naming::listener_consumer(ns, name)),
            num_pending: keep(f.num_pending, "numPending"),
            num_ack_pending: keep(f.num_ack_pending, "numAckPending"),
            redelivered: keep(f.redelivered, "redelivered"),
            rewind: f.rewind.clone().or_else(|| prev_figure(previous, "rewind")),
        })
    }
}
