//! The three custom resources: `EventStore`, `Node` and `Listener` (group `causeway.dev`, `v1alpha1`).
//!
//! Doc comments on fields become the `kubectl explain` text, so they are written for users.
//! Defaults live in the `default_*` functions below and appear in the CRD schema.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    names::{AccessRef, DnsLabel, Subject, SubjectPattern, TypePattern},
    quantity::{ByteSize, Duration},
};

/// API group of every Causeway resource.
pub const GROUP: &str = "causeway.dev";
/// API version of every Causeway resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "causeway.dev/v1alpha1";

const NAME_RULE: &str =
    "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63";
const NAME_MESSAGE: &str = "metadata.name must be a DNS-1123 label: at most 63 lower-case letters, digits and '-'";

// ---------------------------------------------------------------------------------------------
// Shared spec pieces
// ---------------------------------------------------------------------------------------------

/// Where JetStream keeps a stream's data.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// On disk (survives restarts).
    #[default]
    File,
    /// In memory (lost when the server restarts).
    Memory,
}

/// How many copies of a stream the NATS cluster keeps: 1, 3 or 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas(u8);

impl Replicas {
    /// The replica count.
    pub fn get(self) -> u8 {
        self.0
    }
    /// A replica count; `None` unless 1, 3 or 5.
    pub fn new(n: u8) -> Option<Self> {
        matches!(n, 1 | 3 | 5).then_some(Self(n))
    }
}

impl Default for Replicas {
    fn default() -> Self {
        Self(1)
    }
}

impl Serialize for Replicas {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u8::try_from(n)
            .ok()
            .and_then(Replicas::new)
            .ok_or_else(|| serde::de::Error::custom(format!("replicas must be 1, 3 or 5, not {n}")))
    }
}

impl JsonSchema for Replicas {
    fn schema_name() -> Cow<'static, str> {
        "Replicas".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "enum": [1, 3, 5], "default": 1,
            "description": "How many copies of the stream the NATS cluster keeps: 1, 3 or 5. More than 1 needs a clustered NATS."})
    }
}

/// Which end of a full stream gives way.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Drop the oldest events to make room.
    #[default]
    Old,
    /// Refuse new events while full.
    New,
}

/// On-disk compression of a stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// S2 compression (file storage only).
    S2,
}

/// What happens to the JetStream data when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the streams and buckets (the default: data is never lost by accident).
    #[default]
    Retain,
    /// Delete the streams and buckets with the resource.
    Delete,
}

/// When JetStream may remove events before the limits say so.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RetentionKind {
    /// Keep events until a limit (age, bytes, count) is reached. The only kind for event stores
    /// that are replayed.
    #[default]
    Limits,
    /// Remove an event once every listener has acknowledged it.
    Interest,
    /// Remove an event once one listener has acknowledged it; listeners must not overlap.
    WorkQueue,
}

/// Retention limits of a stream. Unset limits mean unlimited.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Retention kind: limits (default), interest or workQueue. Immutable: JetStream cannot change it
    /// on a live stream.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("retention.kind is immutable: create a new store and copy the events over, then delete the old one"))]
    pub kind: RetentionKind,
    /// Remove events older than this, e.g. 7d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Keep at most this many bytes, e.g. 10Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// Keep at most this many events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_events: Option<i64>,
    /// Keep at most this many events per subject (1 makes the store a last-value cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_events_per_subject: Option<i64>,
}

/// Condition of a resource, as in every Kubernetes API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type; Causeway reports `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// One-word CamelCase reason, e.g. Reconciled, SourceNotFound, ImmutableFieldChanged.
    pub reason: String,
    /// What happened and, when not ready, how to fix it.
    pub message: String,
    /// When status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The generation this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Delivery settings shared by a Node's listeners.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeDelivery {
    /// Record handled event ids in the node's state bucket, so a redelivery is acked without
    /// calling the app again.
    #[serde(default)]
    pub exactly_once: bool,
    /// How long JetStream waits for an ack before redelivering.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Duration,
    /// Delivery attempts per event before it is dead-lettered; unset means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_deliver: Option<i64>,
    /// Delays between attempts after a failure; the last repeats.
    #[serde(default = "default_backoff")]
    pub backoff: Vec<Duration>,
    /// Events handed to the app at once, per listener, across all replicas.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: u32,
}

impl Default for NodeDelivery {
    fn default() -> Self {
        Self {
            exactly_once: false,
            ack_wait: default_ack_wait(),
            max_deliver: None,
            backoff: default_backoff(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff() -> Vec<Duration> {
    vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)]
}
fn default_max_in_flight() -> u32 {
    32
}
/// Consumers a stream may hold when its spec does not say: nats-server 2.15's own default, set
/// explicitly because a stream's 0 or -1 now means "the server's default", whatever that is.
pub const DEFAULT_MAX_CONSUMERS: i64 = 1000;

fn default_max_consumers() -> i64 {
    DEFAULT_MAX_CONSUMERS
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_true() -> bool {
    true
}
fn default_history() -> u8 {
    1
}

// ---------------------------------------------------------------------------------------------
// EventStore
// ---------------------------------------------------------------------------------------------

/// An event store: one JetStream stream `CW_ES_<namespace>_<name>` holding events at
/// `cw.<namespace>.es.<name>.<subject>`, appended and loaded through the sidecar with
/// optimistic concurrency.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "causeway.dev",
    version = "v1alpha1",
    kind = "EventStore",
    namespaced,
    cel,
    status = "EventStoreStatus",
    shortname = "cwes",
    category = "causeway",
    doc = "An event store: one JetStream stream of events, appended and loaded through the Causeway sidecar with optimistic concurrency.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Stream", type_ = "string", json_path = ".status.stream"),
    printcolumn(name = "Events", type_ = "integer", json_path = ".status.events"),
    printcolumn(name = "Consumers", type_ = "integer", json_path = ".status.consumers", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
pub struct EventStoreSpec {
    /// file (default) or memory. Immutable: JetStream cannot move a stream between storage types.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable: create a new store with the storage you want, copy the events, then delete this one"))]
    pub storage: StorageType,
    /// Copies kept by the NATS cluster: 1 (default), 3 or 5.
    #[serde(default)]
    pub replicas: Replicas,
    /// Retention limits.
    #[serde(default)]
    pub retention: Retention,
    /// Window in which a retried event with the same id is stored once (default 2m).
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: Duration,
    /// old (default): drop the oldest events when full; new: refuse new events.
    #[serde(default)]
    pub discard: Discard,
    /// none (default) or s2.
    #[serde(default)]
    pub compression: Compression,
    /// Allow all-or-nothing batches of appends (default true).
    #[serde(default = "default_true")]
    pub allow_atomic_batch: bool,
    /// Most consumers the stream may hold (default 1000, nats-server's own default). Each
    /// Listener on the store counts toward it (live streams take none); status reports the use.
    #[serde(default = "default_max_consumers")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_consumers: i64,
    /// Retain (default) keeps the stream when the EventStore is deleted; Delete removes it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// JSON Schemas of event types appended to this store: the sidecar refuses an event of such
    /// a type whose payload fails its schema (422). Types without a schema are not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<crate::schema::EventSchema>,
}

/// Observed state of an EventStore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventStoreStatus {
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and its reason.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// JetStream stream name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Subjects the stream captures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<String>,
    /// Events stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// Bytes stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Sequence of the first stored event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sequence: Option<u64>,
    /// Sequence of the last stored event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<u64>,
    /// Consumers the stream holds now (one per Listener on it, plus any other clients made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<u64>,
    /// Most consumers it may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consumers: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------------------------

/// A node: a logical service identity ("send to inventory"). It becomes an inbox stream
/// `CW_IN_<namespace>_<name>`, a state bucket `CW_ST_<namespace>_<name>` and a registry entry.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "causeway.dev",
    version = "v1alpha1",
    kind = "Node",
    namespaced,
    cel,
    status = "NodeStatus",
    shortname = "cwnode",
    category = "causeway",
    doc = "A node: a logical service identity with an inbox stream, a state bucket and delivery defaults for its listeners.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Inbox", type_ = "string", json_path = ".status.inboxStream"),
    printcolumn(name = "Events", type_ = "integer", json_path = ".status.events"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// The inbox stream that events sent to this node wait in.
    #[serde(default)]
    pub inbox: InboxSpec,
    /// The node's own key-value state bucket.
    #[serde(default)]
    pub state: StateSpec,
    /// Delivery defaults for this node's listeners.
    #[serde(default)]
    pub delivery: NodeDelivery,
    /// Where the sidecar pushes events to the app, and how it checks the app's health.
    #[serde(default)]
    pub app: AppSpec,
    /// Retain (default) keeps the inbox and state when the Node is deleted; Delete removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Whom this node may send to, and which stores it may append to and read. Enforced by its
    /// sidecars always, and by NATS where node credentials are issued.
    #[serde(default, skip_serializing_if = "NodeAccess::is_default")]
    pub access: NodeAccess,
    /// Causal tracing: whether this node's sidecars record what happens to events (stored,
    /// delivered, retried, dead-lettered) on the namespace's trace stream, for `causeway trace`
    /// and `GET /v1/traces/{correlationId}`. On unless turned off.
    #[serde(default, skip_serializing_if = "TraceSpec::is_default")]
    pub trace: TraceSpec,
    /// JSON Schemas of event types sent to this node: the sender's sidecar refuses an event of
    /// such a type whose payload fails its schema (422). Types without a schema are not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<crate::schema::EventSchema>,
}

/// A node's tracing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceSpec {
    /// Record trace entries (default true). Off, the node's sends, appends and deliveries leave
    /// no trace; what other nodes record still shows.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for TraceSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl TraceSpec {
    /// True for the default (so records of nodes that never set it stay as they were).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A node's access policy. Each entry is a name of this namespace, '*' (every one of this
/// namespace), 'namespace/name' or 'namespace/*'. A list left out means ['*']; an empty list
/// means nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeAccess {
    /// Nodes this node may send events to. Default: every node of its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Vec<AccessRef>>,
    /// Stores this node may append to (and so also read). Default: every store of its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<Vec<AccessRef>>,
    /// Stores this node may load and stream. Default: every store of its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Vec<AccessRef>>,
}

/// What an access policy is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessAction {
    /// Send to a node's inbox.
    Send,
    /// Append to a store.
    Append,
    /// Load or stream a store.
    Read,
}

impl AccessAction {
    /// The field of `spec.access` that governs it.
    pub fn field(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Append => "append",
            Self::Read => "read",
        }
    }
}

impl NodeAccess {
    /// True when nothing is set (every list is the default).
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// The entries of one list, with the default (`*`) filled in.
    pub fn entries(&self, action: AccessAction) -> Cow<'_, [AccessRef]> {
        let list = match action {
            AccessAction::Send => &self.send,
            AccessAction::Append => &self.append,
            AccessAction::Read => &self.read,
        };
        match list {
            Some(l) => Cow::Borrowed(l.as_slice()),
            None => Cow::Owned(vec![AccessRef::new("*").expect("valid")]),
        }
    }

    /// True when a node of namespace `own` with this policy may do `action` on `name` of
    /// namespace `ns`. Appending implies reading.
    pub fn allows(&self, own: &str, action: AccessAction, ns: &str, name: &str) -> bool {
        let covered = |a| self.entries(a).iter().any(|r| r.covers(own, ns, name));
        covered(action) || (action == AccessAction::Read && covered(AccessAction::Append))
    }
}

/// The inbox stream of a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboxSpec {
    /// Retention limits of the inbox.
    #[serde(default)]
    pub retention: Retention,
    /// file (default) or memory. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("inbox.storage is immutable: create a new node, move its listeners, then delete this one"))]
    pub storage: StorageType,
    /// Copies kept by the NATS cluster: 1 (default), 3 or 5.
    #[serde(default)]
    pub replicas: Replicas,
}

/// The state bucket of a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateSpec {
    /// Revisions kept per key (1 to 64, default 1).
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 64))]
    pub history: u8,
    /// Remove keys not written for this long; unset means keep forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

impl Default for StateSpec {
    fn default() -> Self {
        Self { history: default_history(), ttl: None }
    }
}

/// The app beside the sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Port the app listens on at 127.0.0.1 for pushed events; the pod annotation
    /// causeway.dev/app-port overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Path the sidecar GETs to check the app's health; delivery pauses while it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/.*$"))]
    pub health_path: Option<String>,
}

/// Observed state of a Node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and its reason.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Inbox stream name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_stream: Option<String>,
    /// Subjects the inbox captures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_subjects: Option<String>,
    /// State bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_bucket: Option<String>,
    /// The namespace's global bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_bucket: Option<String>,
    /// Events in the inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// Bytes in the inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Sequence of the last event sent to the inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<u64>,
    /// Consumers the inbox holds now (its listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<u64>,
    /// Most consumers it may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consumers: Option<i64>,
    /// The node's own NATS credential, when the operator issues one (absent: its sidecars share
    /// one credential, and NATS does not enforce node isolation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<NodeCredentialsStatus>,
}

/// The NATS credential the operator issued a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCredentialsStatus {
    /// The Secret in the node's namespace that holds it (key nats.creds).
    pub secret: String,
    /// The NATS user (public nkey) it authenticates as.
    pub user: String,
    /// When it was issued (RFC 3339).
    pub issued_at: String,
    /// When NATS stops accepting it (RFC 3339); it is issued again before.
    pub expires_at: String,
}

// ---------------------------------------------------------------------------------------------
// Listener
// ---------------------------------------------------------------------------------------------

/// A stored, durable listener: a durable consumer on a store or an inbox, and a delivery rule
/// carried out by the sidecars of one node. Every event is handled once per Listener, not once
/// per pod.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "causeway.dev",
    version = "v1alpha1",
    kind = "Listener",
    namespaced,
    cel,
    status = "ListenerStatus",
    shortname = "cwl",
    category = "causeway",
    doc = "A durable listener: a JetStream consumer on an event store or a node's inbox, delivered to the app by the sidecars of one node.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Consumer", type_ = "string", json_path = ".status.consumer"),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.numPending"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// The node whose sidecars deliver this listener's events.
    pub node: DnsLabel,
    /// What the listener reads: exactly one of store or inbox.
    pub source: ListenerSource,
    /// NATS subject patterns relative to the source (`order-*` style tokens, `*`, a final `>`).
    /// Empty means every subject. For an inbox the subject is the event type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<SubjectPattern>,
    /// Event types to deliver: exact, or `prefix.*`. Empty means every type. Other events are
    /// acknowledged without delivery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<TypePattern>,
    /// Where a new listener starts: new (default), all, last, {sequence: N} or {time: RFC3339}.
    /// Only used when the consumer is created.
    #[serde(default)]
    pub start_at: StartAt,
    /// How events reach the app; unset fields come from the node's delivery.
    #[serde(default)]
    pub delivery: ListenerDelivery,
    /// Where events go that the app refuses (400, 404, 422) or that run out of attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
    /// A one-shot move of the listener's position: {to: {sequence: N} | {time: RFC3339}, id}.
    /// It is carried out once per new id (status.rewind records the last one); the consumer
    /// and its settings stay, only its position moves. Leave it in place or remove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<Rewind>,
}

/// A one-shot rewind (or fast-forward) of a listener: done once for each new `id`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rewind {
    /// Where the listener moves to: exactly one of {sequence: N} or {time: RFC3339}.
    pub to: RewindTo,
    /// Any non-empty token (e.g. a date or a ticket number). A new id asks for a new rewind;
    /// the same id again does nothing.
    #[schemars(length(min = 1, max = 128))]
    pub id: String,
}

/// The position of a rewind: exactly one of `sequence` or `time`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.sequence) != has(self.time)").message("rewind.to must name exactly one of sequence or time"))]
pub struct RewindTo {
    /// Redeliver from this stream sequence on (>= 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub sequence: Option<u64>,
    /// Redeliver from the first event stored at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// Where a rewind goes, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewindPosition {
    /// From this stream sequence on.
    Sequence(u64),
    /// From the first event stored at or after this time.
    Time(DateTime<Utc>),
}

impl RewindTo {
    /// The checked position, or what is wrong with it.
    pub fn position(&self) -> Result<RewindPosition, String> {
        match (self.sequence, &self.time) {
            (Some(0), None) => Err("rewind.to.sequence must be 1 or more (stream sequences start at 1)".into()),
            (Some(n), None) => Ok(RewindPosition::Sequence(n)),
            (None, Some(t)) => {
                DateTime::parse_from_rfc3339(t).map(|t| RewindPosition::Time(t.with_timezone(&Utc))).map_err(|e| {
                    format!("rewind.to.time {t:?} is not an RFC 3339 time such as 2026-11-25T12:00:00Z ({e})")
                })
            }
            _ => Err("rewind.to must name exactly one of sequence or time, e.g. {sequence: 5}".into()),
        }
    }
}

impl std::fmt::Display for RewindTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.sequence, &self.time) {
            (Some(n), _) => write!(f, "sequence {n}"),
            (None, Some(t)) => write!(f, "time {t}"),
            (None, None) => f.write_str("nowhere"),
        }
    }
}

/// The last rewind carried out: in a Listener's status and in its registry record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RewindStatus {
    /// The id of spec.rewind it carried out.
    pub id: String,
    /// Where it was asked to go.
    pub to: RewindTo,
    /// The stream sequence the consumer was moved to: the next event it delivers is the first
    /// one at or after it that the listener's filter matches.
    pub sequence: u64,
    /// The last stream sequence the consumer had delivered before the rewind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_sequence: Option<u64>,
    /// When it was carried out (RFC 3339).
    pub at: String,
}

/// The source of a listener: exactly one of `store` or `inbox`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.store) != has(self.inbox)").message("source must name exactly one of store or inbox"))]
pub struct ListenerSource {
    /// An EventStore in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<DnsLabel>,
    /// A Node in the same namespace whose inbox to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<DnsLabel>,
}

/// Where a new listener starts reading.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Only events stored after the listener is created.
    #[default]
    New,
    /// Every stored event.
    All,
    /// The last stored event, then new ones.
    Last,
    /// From this stream sequence on.
    Sequence(u64),
    /// From the first event stored at or after this time.
    Time(DateTime<Utc>),
}

impl Serialize for StartAt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            StartAt::New => s.serialize_str("new"),
            StartAt::All => s.serialize_str("all"),
            StartAt::Last => s.serialize_str("last"),
            StartAt::Sequence(n) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("sequence", n)?;
                m.end()
            }
            StartAt::Time(t) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("time", &t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for StartAt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Map(std::collections::BTreeMap<String, serde_json::Value>),
        }
        const HOW: &str = "startAt must be new, all, last, {sequence: N} (N >= 1) or {time: RFC3339}";
        let bad = |what: String| serde::de::Error::custom(format!("{what}: {HOW}"));
        match Raw::deserialize(d).map_err(|_| bad("not a word or a map".into()))? {
            Raw::Word(w) => match w.as_str() {
                "new" => Ok(StartAt::New),
                "all" => Ok(StartAt::All),
                "last" => Ok(StartAt::Last),
                _ => Err(bad(format!("{w:?} is not a start position"))),
            },
            Raw::Map(m) if m.len() == 1 => {
                let (k, v) = m.into_iter().next().expect("one entry");
                match (k.as_str(), v) {
                    ("sequence", serde_json::Value::Number(n)) => match n.as_u64() {
                        Some(n) if n >= 1 => Ok(StartAt::Sequence(n)),
                        _ => Err(bad(format!("sequence {n} is not a whole number >= 1"))),
                    },
                    ("time", serde_json::Value::String(t)) => DateTime::parse_from_rfc3339(&t)
                        .map(|t| StartAt::Time(t.with_timezone(&Utc)))
                        .map_err(|e| bad(format!("time {t:?} is not RFC 3339 ({e})"))),
                    (k, v) => Err(bad(format!("{k}: {v} is not a start position"))),
                }
            }
            Raw::Map(_) => Err(bad("a start position map has exactly one key".into())),
        }
    }
}

impl JsonSchema for StartAt {
    fn schema_name() -> Cow<'static, str> {
        "StartAt".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A word or a one-key map is not expressible as a structural schema, so the field keeps
        // its content as written. `causeway apply` and the operator check it when they parse
        // the spec (kube-cel cannot evaluate `type()`, so no CEL rule is given here).
        json_schema!({
            "x-kubernetes-preserve-unknown-fields": true,
            "default": "new",
            "description": "Where a new listener starts: new (default), all, last, {sequence: N} or {time: RFC3339}. Only used when the consumer is created."
        })
    }
}

/// push: the sidecar POSTs each event to the app; pull: the app fetches through the sidecar.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// The sidecar POSTs each event to the app.
    #[default]
    Push,
    /// The app fetches with POST /v1/listeners/{l}/fetch and acks with POST /v1/acks.
    Pull,
}

/// How a listener's events reach the app. Unset fields come from the node's delivery.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.orderBy) || !has(self.ordered) || !self.ordered").message("orderBy and ordered: true exclude each other: ordered delivers one event at a time for the whole listener, orderBy one at a time per key; keep one"))]
#[x_kube(validation = Rule::new("!has(self.orderBy) || !has(self.mode) || self.mode == 'push'").message("orderBy needs mode: push (the sidecar keeps the order per key; a pull app fetches and acks on its own)"))]
pub struct ListenerDelivery {
    /// push (default) or pull.
    #[serde(default)]
    pub mode: DeliveryMode,
    /// Path on the app that push delivery POSTs to (default /events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^\s]*$"))]
    pub path: Option<String>,
    /// How long the app may take to answer a push (default 10s); must be shorter than ackWait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// How long JetStream waits for an ack before redelivering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait: Option<Duration>,
    /// Attempts per event before it is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_deliver: Option<i64>,
    /// Delays between attempts after a failure; the last repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Vec<Duration>>,
    /// Events handed to the app at once, across all replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: Option<u32>,
    /// Deliver one event at a time, in stream order.
    #[serde(default)]
    pub ordered: bool,
    /// Keep stream order per key, and run different keys in parallel up to maxInFlight, across
    /// all replicas of the node: `subject` (the event's subject relative to the store; in an
    /// inbox, its type) or `token:N` (the N-th token, 1-based, of that subject). Push only; not
    /// with ordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<OrderBy>,
}

/// What keeps its order under `delivery.orderBy`: the event's relative subject, or one token of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderBy {
    /// The whole subject relative to the store (the type, in an inbox).
    Subject,
    /// The N-th token (1-based) of that subject; a subject with fewer tokens is its own key.
    Token(u8),
}

impl OrderBy {
    /// The ordering key of an event at `relative` (its subject relative to the store or inbox).
    pub fn key<'a>(&self, relative: &'a str) -> &'a str {
        match self {
            OrderBy::Subject => relative,
            OrderBy::Token(n) => relative.split('.').nth(*n as usize - 1).unwrap_or(relative),
        }
    }
}

impl std::fmt::Display for OrderBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderBy::Subject => f.write_str("subject"),
            OrderBy::Token(n) => write!(f, "token:{n}"),
        }
    }
}

impl std::str::FromStr for OrderBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const HOW: &str = "orderBy must be subject or token:N (N from 1 to 16), e.g. token:2";
        match s {
            "subject" => Ok(OrderBy::Subject),
            _ => match s.strip_prefix("token:").map(str::parse::<u8>) {
                Some(Ok(n)) if (1..=16).contains(&n) => Ok(OrderBy::Token(n)),
                _ => Err(format!("{s:?}: {HOW}")),
            },
        }
    }
}

impl Serialize for OrderBy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OrderBy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for OrderBy {
    fn schema_name() -> Cow<'static, str> {
        "OrderBy".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(subject|token:([1-9]|1[0-6]))$",
            "description": "Keep stream order per key, and run different keys in parallel up to maxInFlight, across all replicas of the node: subject (the event's subject relative to the store; in an inbox, its type) or token:N (the N-th token, 1-based, of that subject). Push only; not with ordered."
        })
    }
}

/// The dead letter of a listener: an event store and a subject in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// An EventStore in the same namespace.
    pub store: DnsLabel,
    /// The subject in that store, e.g. dead.reserve-stock.
    pub subject: Subject,
    /// Replay this listener's dead letters automatically, some time after they were
    /// dead-lettered, at most `max` times per event. Carried out by the sidecars of the
    /// listener's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_replay: Option<AutoReplay>,
}

/// Automatic replay of a listener's dead letters (`deadLetter.autoReplay`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoReplay {
    /// How long after it was dead-lettered an event is replayed, e.g. 10m.
    pub after: Duration,
    /// Replays per event at most (default 3); an event that fails again after its last
    /// replay stays in the dead letter.
    #[serde(default = "default_auto_replay_max")]
    #[schemars(range(min = 1, max = 100))]
    pub max: u32,
}

fn default_auto_replay_max() -> u32 {
    3
}

/// Observed state of a Listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and its reason.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The stream the consumer reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Durable consumer name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Events not yet delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_pending: Option<u64>,
    /// Events delivered and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_ack_pending: Option<u64>,
    /// Events delivered more than once and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<u64>,
    /// The last rewind carried out (spec.rewind with this id is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<RewindStatus>,
}
