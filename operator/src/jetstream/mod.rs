//! The reconcile core: spec → desired JetStream config → diff with the server → create or
//! update only what differs → figures for the status.
//!
//! It knows nothing of Kubernetes beyond the spec types: the local driver (`causeway apply`)
//! and the Kubernetes controller both call [`Reconciler::reconcile`] and [`Reconciler::cleanup`].
//!
//! Guarantees:
//! - steady state makes no JetStream writes (only info requests and KV reads);
//! - a change JetStream cannot make in place (storage, retention kind, a listener's start) leaves
//!   the object untouched and reports `ImmutableFieldChanged` with how to migrate;
//! - objects deleted or changed behind Causeway's back are restored by the next reconcile.

pub mod desired;
pub mod diff;
pub mod schemas;

use async_nats::jetstream::{
    self, consumer,
    context::{ConsumerInfoErrorKind, CreateStreamErrorKind, GetStreamErrorKind, KeyValueErrorKind},
    kv,
    stream::{self, Stream},
};
use causeway_api::{
    DnsLabel, Kind,
    check::{self, FieldError},
    crd::{DeletionPolicy, EventStoreSpec, ListenerSpec, NodeSpec, RewindPosition, RewindStatus},
    naming::{self, REGISTRY_BUCKET},
    registry::{ListenerRecord, Meta, NodeRecord, Record, StoreRecord},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tracing::{debug, info};

pub use diff::Change;

use crate::error::{Error, Result};

/// Condition reasons, as they appear in `status.conditions[].reason` and in `causeway apply`.
pub mod reason {
    /// Everything exists as the spec says.
    pub const RECONCILED: &str = "Reconciled";
    /// The spec asks for a change JetStream cannot make in place.
    pub const IMMUTABLE_FIELD_CHANGED: &str = "ImmutableFieldChanged";
    /// A listener's store, inbox or node does not exist (yet).
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    /// A listener's dead-letter store does not exist (yet).
    pub const DEAD_LETTER_NOT_FOUND: &str = "DeadLetterNotFound";
    /// The spec breaks a rule the schema cannot express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// JetStream refused the configuration.
    pub const JETSTREAM_REJECTED: &str = "JetStreamRejected";
    /// A schema's ConfigMap (or its key) does not exist (yet).
    pub const SCHEMA_NOT_RESOLVED: &str = "SchemaNotResolved";
    /// Condition `SchemasCompatible`: a changed schema rejects an event already stored.
    pub const SCHEMA_NARROWED: &str = "SchemaNarrowed";
    /// Condition `SchemasCompatible`: no stored event sampled is rejected by its type's schema.
    pub const SCHEMAS_ACCEPT_STORED: &str = "StoredEventsAccepted";
}

/// The condition type that reports whether the schemas accept the events already stored.
pub const SCHEMAS_CONDITION: &str = "SchemasCompatible";

/// A resource's spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// EventStore spec.
    EventStore(EventStoreSpec),
    /// Node spec.
    Node(NodeSpec),
    /// Listener spec.
    Listener(ListenerSpec),
}

/// A resource to reconcile: who it is and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Namespace, name, generation and manager.
    pub meta: Meta,
    /// The spec.
    pub spec: Spec,
    /// The data of the ConfigMaps its `spec.schemas` refer to, as the driver read them (absent
    /// ones are left out: the reconcile reports `SchemaNotResolved`).
    pub config_maps: schemas::ConfigMaps,
}

impl Object {
    /// An object with no ConfigMap data.
    pub fn new(meta: Meta, spec: Spec) -> Self {
        Self { meta, spec, config_maps: Default::default() }
    }

    /// The schemas its spec declares (stores and nodes).
    pub fn schema_specs(&self) -> &[causeway_api::schema::EventSchema] {
        match &self.spec {
            Spec::EventStore(s) => &s.schemas,
            Spec::Node(s) => &s.schemas,
            Spec::Listener(_) => &[],
        }
    }
}

impl Object {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self.spec {
            Spec::EventStore(_) => Kind::EventStore,
            Spec::Node(_) => Kind::Node,
            Spec::Listener(_) => Kind::Listener,
        }
    }
    /// Its registry key.
    pub fn key(&self) -> String {
        naming::registry_key(&self.meta.namespace, self.kind(), &self.meta.name)
    }
    /// What happens to its data on deletion (listeners hold no data: their consumer always goes).
    pub fn deletion_policy(&self) -> DeletionPolicy {
        match &self.spec {
            Spec::EventStore(s) => s.deletion_policy,
            Spec::Node(s) => s.deletion_policy,
            Spec::Listener(_) => DeletionPolicy::Delete,
        }
    }
    /// Spec rules the schema cannot express.
    pub fn check(&self) -> Vec<FieldError> {
        match &self.spec {
            Spec::EventStore(s) => check::check_store(s),
            Spec::Node(s) => check::check_node(s),
            Spec::Listener(s) => check::check_listener(s),
        }
    }
    /// `Kind namespace/name`.
    pub fn display(&self) -> String {
        format!("{} {}/{}", self.kind(), self.meta.namespace, self.meta.name)
    }
}

/// Objects planned together (for dry-run planning of listeners).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Node specs by registry key.
    pub nodes: std::collections::HashMap<String, NodeSpec>,
    /// Streams the batch creates (stores and inboxes).
    pub streams: std::collections::HashSet<String>,
}

impl Batch {
    /// The batch of `objects`.
    pub fn of<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Self {
        let mut b = Self::default();
        for o in objects {
            let (ns, name) = (&o.meta.namespace, &o.meta.name);
            match &o.spec {
                Spec::EventStore(_) => {
                    b.streams.insert(naming::store_stream(ns, name));
                }
                Spec::Node(n) => {
                    b.streams.insert(naming::inbox_stream(ns, name));
                    b.nodes.insert(o.key(), n.clone());
                }
                Spec::Listener(_) => {}
            }
        }
        b
    }
}

/// Whether to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create and update.
    Apply,
    /// Only compute what would change.
    DryRun,
}

/// What a reconcile did (or, in dry-run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The main JetStream object was created.
    Created,
    /// Something was changed.
    Updated,
    /// Nothing needed changing.
    Unchanged,
}

impl Action {
    /// Lower-case word for output.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
        }
    }
}

/// The Ready condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Ready=True?
    pub ready: bool,
    /// CamelCase reason (see [`reason`]).
    pub reason: &'static str,
    /// What happened, and how to fix it when not ready.
    pub message: String,
}

impl Readiness {
    fn ready(message: impl Into<String>) -> Self {
        Self { ready: true, reason: reason::RECONCILED, message: message.into() }
    }
    fn not(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ready: false, reason, message: message.into() }
    }
}

/// Live figures read from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// Events in the stream (stores, inboxes).
    pub events: Option<u64>,
    /// Bytes in the stream.
    pub bytes: Option<u64>,
    /// First sequence.
    pub first_sequence: Option<u64>,
    /// Last sequence.
    pub last_sequence: Option<u64>,
    /// Consumers the stream holds (stores, inboxes).
    pub consumers: Option<u64>,
    /// Most consumers it may hold.
    pub max_consumers: Option<i64>,
    /// Consumer: not yet delivered.
    pub num_pending: Option<u64>,
    /// Consumer: delivered, not acked.
    pub num_ack_pending: Option<u64>,
    /// Consumer: redelivered, not acked.
    pub redelivered: Option<u64>,
    /// Listener: the last rewind carried out on its consumer.
    pub rewind: Option<RewindStatus>,
}

/// The result of one reconcile.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Created, updated or unchanged.
    pub action: Action,
    /// Field changes made (or planned, in dry-run), and immutable ones refused.
    pub changes: Vec<Change>,
    /// Ready condition.
    pub readiness: Readiness,
    /// Live figures.
    pub figures: Figures,
    /// The registry record (when resolved).
    pub record: Option<Record>,
    /// What the schema check found, when the object declares schemas.
    pub schemas: Option<SchemaCheck>,
    /// A listener's rewind carried out by this reconcile (in dry-run: the one it would do).
    pub rewound: Option<RewindStatus>,
}

/// Whether an object's schemas accept the events already stored (see
/// [`causeway_api::schema::Narrowing`] for what is checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaCheck {
    /// Types with a schema.
    pub types: usize,
    /// For each schema that rejects a stored event: `type vN: what was found`.
    pub narrowed: Vec<String>,
}

impl SchemaCheck {
    /// The `SchemasCompatible` condition: (status, reason, message).
    pub fn condition(&self) -> (bool, &'static str, String) {
        if self.narrowed.is_empty() {
            (
                true,
                reason::SCHEMAS_ACCEPT_STORED,
                format!("{} schema(s); no sampled stored event is rejected", self.types),
            )
        } else {
            (
                false,
                reason::SCHEMA_NARROWED,
                format!(
                    "a schema change may only widen, but {}. New events are checked against the new schema; stored events stay as they are. Widen the schema, or accept that these events no longer match",
                    self.narrowed.join("; ")
                ),
            )
        }
    }
}

/// The result of one cleanup.
#[derive(Debug, Clone, Default)]
pub struct Cleanup {
    /// JetStream objects deleted (or that would be, in dry-run).
    pub deleted: Vec<String>,
    /// JetStream objects kept because of `deletionPolicy: Retain`.
    pub retained: Vec<String>,
}

enum Step {
    Created,
    Updated,
    Unchanged,
    Immutable,
    Rejected(String),
}

struct StreamResult {
    step: Step,
    changes: Vec<Change>,
    state: Option<stream::State>,
    max_consumers: Option<i64>,
}

/// Talks to one JetStream account.
#[derive(Clone)]
pub struct Reconciler {
    js: jetstream::Context,
    manager: &'static str,
    registry_replicas: usize,
    /// Whether Nodes have credentials of their own; `None` (a reader such as `causeway status`,
    /// which cannot know) keeps what the stored record says.
    node_credentials: Option<causeway_api::registry::NodeCredentials>,
    /// Shared buckets (registry, global KVs) known to exist, and when that was last checked:
    /// they are re-checked at most every [`SHARED_RECHECK`], not once per object.
    shared: Arc<Mutex<HashMap<String, Instant>>>,
    /// The registry bucket handle, dropped after any failure so it is opened afresh.
    registry_kv: Arc<Mutex<Option<kv::Store>>>,
}

/// How often a shared bucket's existence is re-checked (drift correction for shared buckets).
const SHARED_RECHECK: Duration = Duration::from_secs(30);

impl Reconciler {
    /// A reconciler writing registry records as `manager` (`operator` or `apply`).
    pub fn new(client: async_nats::Client, manager: &'static str) -> Self {
        Self {
            js: jetstream::new(client),
            manager,
            registry_replicas: 1,
            node_credentials: None,
            shared: Default::default(),
            registry_kv: Default::default(),
        }
    }

    /// Replicas of the registry and global buckets when they are created (default 1).
    pub fn with_registry_replicas(mut self, n: usize) -> Self {
        self.registry_replicas = n;
        self
    }

    /// Records that Nodes get credentials of their own (the caller issues them), so `causeway
    /// status` can say whether NATS enforces node isolation.
    pub fn with_node_credentials(mut self, issued: bool) -> Self {
        self.node_credentials = Some(if issued {
            causeway_api::registry::NodeCredentials::Node
        } else {
            causeway_api::registry::NodeCredentials::Shared
        });
        self
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Who writes the records.
    pub fn manager(&self) -> &'static str {
        self.manager
    }

    /// Reconciles one object.
    pub async fn reconcile(&self, obj: &Object, mode: Mode) -> Result<Outcome> {
        self.reconcile_in(obj, mode, &Batch::default()).await
    }

    /// Reconciles one object that is part of a batch. In dry-run, a listener whose node or
    /// source is planned in the same batch is planned as if they existed.
    pub async fn reconcile_in(&self, obj: &Object, mode: Mode, batch: &Batch) -> Result<Outcome> {
        let errs = obj.check();
        if !errs.is_empty() {
            return Ok(not_ready(reason::INVALID_SPEC, join(&errs)));
        }
        let registry = self.ensure_stream(&desired::registry_kv(self.registry_replicas), mode, true).await?;
        let mut changes = registry.changes;
        let mut created = false;
        let mut updated = matches!(registry.step, Step::Created | Step::Updated);
        let ns = &obj.meta.namespace;

        let (mut record, streams, consumer): (Record, Vec<stream::Config>, Option<(String, consumer::Config)>) =
            match &obj.spec {
                Spec::EventStore(spec) => {
                    let mut rec = StoreRecord::resolve(obj.meta.clone(), spec);
                    match schemas::resolve(&spec.schemas, &obj.config_maps, ns) {
                        Ok(s) => rec.schemas = s,
                        Err((why, msg)) => return Ok(not_ready(why, msg)),
                    }
                    let streams = vec![
                        desired::global_kv(ns, self.registry_replicas),
                        desired::store_stream(&rec),
                        desired::blob_store(ns, self.registry_replicas),
                        desired::trace_stream(ns, self.registry_replicas),
                    ];
                    (Record::EventStore(rec), streams, None)
                }
                Spec::Node(spec) => {
                    let mut rec = NodeRecord::resolve(obj.meta.clone(), spec);
                    rec.credentials = self.node_credentials.unwrap_or_default();
                    match schemas::resolve(&spec.schemas, &obj.config_maps, ns) {
                        Ok(s) => rec.schemas = s,
                        Err((why, msg)) => return Ok(not_ready(why, msg)),
                    }
                    let streams = vec![
                        desired::global_kv(ns, self.registry_replicas),
                        desired::inbox_stream(&rec),
                        desired::state_kv(&rec),
                        desired::blob_store(ns, self.registry_replicas),
                        desired::trace_stream(ns, self.registry_replicas),
                    ];
                    (Record::Node(rec), streams, None)
                }
                Spec::Listener(spec) => {
                    let node_key = naming::registry_key(ns, Kind::Node, &spec.node);
                    // A dry run plans against the batch's node when the batch has one: that is the node
                    // the apply would write first.
                    let planned = if mode == Mode::DryRun { batch.nodes.get(&node_key).cloned() } else { None };
                    let node = match planned {
                        Some(n) => Some(n),
                        None => match self.read_record_key(&node_key).await? {
                            Some(Record::Node(n)) => Some(n.spec),
                            _ => None,
                        },
                    };
                    let Some(node) = node else {
                        return Ok(not_ready(
                            reason::SOURCE_NOT_FOUND,
                            format!(
                                "node {:?} does not exist in namespace {ns}: create the Node, then this listener becomes ready",
                                spec.node.as_str()
                            ),
                        ));
                    };
                    let rec = match ListenerRecord::resolve(obj.meta.clone(), spec, &node) {
                        Ok(r) => r,
                        Err(errs) => return Ok(not_ready(reason::INVALID_SPEC, join(&errs))),
                    };
                    let want = desired::listener_consumer(&rec);
                    (Record::Listener(rec.clone()), Vec::new(), Some((rec.stream.clone(), want)))
                }
            };

        let mut figures = Figures::default();
        for (i, want) in streams.iter().enumerate() {
            let shared = desired::is_shared(ns, &want.name);
            let r = self.ensure_stream(want, mode, shared).await?;
            changes.extend(r.changes);
            if let Some(o) = stopped(&r.step, obj, &format!("stream {}", want.name), &changes, &figures) {
                return Ok(o);
            }
            match r.step {
                // The object's own stream (index 1: store or inbox) decides "created".
                Step::Created if i == 1 => created = true,
                Step::Created | Step::Updated => updated = true,
                Step::Unchanged | Step::Immutable | Step::Rejected(_) => {}
            }
            if i == 1
                && let Some(s) = r.state
            {
                figures.events = Some(s.messages);
                figures.bytes = Some(s.bytes);
                figures.first_sequence = Some(s.first_sequence);
                figures.last_sequence = Some(s.last_sequence);
                figures.consumers = Some(s.consumer_count as u64);
                figures.max_consumers = r.max_consumers;
            }
        }

        if let (Some((stream_name, _)), Record::Listener(rec)) = (&consumer, &record) {
            let stream = self.get_stream(stream_name).await?;
            let planned = |s: &str| mode == Mode::DryRun && batch.streams.contains(s);
            if stream.is_none() && planned(stream_name) {
                return Ok(Outcome {
                    action: Action::Created,
                    changes,
                    readiness: Readiness::ready(ready_message(&record)),
                    figures,
                    record: Some(record),
                    schemas: None,
                    rewound: None,
                });
            }
            let Some(stream) = stream else {
                let what = match rec.source.kind {
                    Kind::Node => format!("inbox of node {:?}", rec.source.name.as_str()),
                    _ => format!("store {:?}", rec.source.name.as_str()),
                };
                return Ok(not_ready(
                    reason::SOURCE_NOT_FOUND,
                    format!(
                        "{what} does not exist in namespace {ns} (stream {stream_name}): create it, then this listener becomes ready"
                    ),
                ));
            };
            // A stream kept by deletionPolicy Retain outlives its object: without the object's
            // record no sidecar can write to it, so the listener is not ready either.
            let source_key = naming::registry_key(ns, rec.source.kind, &rec.source.name);
            if !planned(stream_name) && self.read_record_key(&source_key).await?.is_none() {
                let what = match rec.source.kind {
                    Kind::Node => format!("node {:?}", rec.source.name.as_str()),
                    _ => format!("store {:?}", rec.source.name.as_str()),
                };
                return Ok(not_ready(
                    reason::SOURCE_NOT_FOUND,
                    format!(
                        "{what} does not exist in namespace {ns} (its stream {stream_name} is still there, kept by deletionPolicy Retain): create it again, then this listener becomes ready"
                    ),
                ));
            }
            if let Some(dl) = &rec.dead_letter
                && !planned(&dl.stream)
                && (self.get_stream(&dl.stream).await?.is_none()
                    || self.read_record_key(&naming::registry_key(ns, Kind::EventStore, &dl.store)).await?.is_none())
            {
                return Ok(not_ready(
                    reason::DEAD_LETTER_NOT_FOUND,
                    format!(
                        "dead-letter store {:?} does not exist in namespace {ns}: create it or remove deadLetter",
                        dl.store.as_str()
                    ),
                ));
            }
            // The last rewind done: the registry record says, else the consumer's own metadata
            // (so a lost record never makes a rewind happen twice).
            let mut rec = rec.clone();
            let current = self.consumer_info(&stream, &rec.consumer).await?;
            rec.rewound = match self.read_record_key(&record.key()).await? {
                Some(Record::Listener(p)) if p.rewound.is_some() => p.rewound,
                _ => current.as_ref().and_then(|i| desired::rewind_of(&i.config)),
            };
            let want = desired::listener_consumer(&rec);
            let (step, ch, mut info) = self.ensure_consumer(&stream, current, &want, mode).await?;
            changes.extend(ch);
            if let Some(o) = stopped(&step, obj, &format!("consumer {}", rec.consumer), &changes, &figures) {
                return Ok(o);
            }
            match step {
                Step::Created => created = true,
                Step::Updated => updated = true,
                Step::Unchanged | Step::Immutable | Step::Rejected(_) => {}
            }
            if let Some(r) = &rec.spec.rewind
                && rec.rewound.as_ref().is_none_or(|done| done.id != r.id)
            {
                match self.rewind(&stream, &rec, r, info.as_ref(), mode).await? {
                    Ok((status, after)) => {
                        changes.push(Change {
                            object: format!("consumer {}", rec.consumer),
                            field: "position",
                            from: status
                                .from_sequence
                                .map(|s| format!("delivered up to sequence {s}"))
                                .unwrap_or_else(|| "new".into()),
                            to: format!("sequence {} (rewind {:?} to {})", status.sequence, r.id, r.to),
                            immutable: false,
                        });
                        if after.is_some() {
                            info = after;
                        }
                        if !created {
                            updated = true;
                        }
                        rec.rewound = Some(status);
                    }
                    Err(msg) => {
                        return Ok(Outcome {
                            action: if created { Action::Created } else { Action::Unchanged },
                            changes,
                            readiness: Readiness::not(
                                reason::JETSTREAM_REJECTED,
                                format!("rewind {:?} of consumer {}: {msg}", r.id, rec.consumer),
                            ),
                            figures,
                            record: None,
                            schemas: None,
                            rewound: None,
                        });
                    }
                }
            }
            figures.rewind = rec.rewound.clone();
            record = Record::Listener(rec);
            if let Some(info) = info {
                figures.num_pending = Some(info.num_pending);
                figures.num_ack_pending = Some(info.num_ack_pending as u64);
                figures.redelivered = Some(info.num_redelivered as u64);
            }
        }

        let schema_check = self.check_schemas(&mut record, &figures).await?;
        if let Some(previous) = self.put_record(&record, mode).await?
            && !created
        {
            updated = true;
            changes.push(Change {
                object: format!("registry {}", record.key()),
                field: "record",
                from: if previous { "out of date".into() } else { "missing".into() },
                to: "current".into(),
                immutable: false,
            });
        }
        let action = if created {
            Action::Created
        } else if updated {
            Action::Updated
        } else {
            Action::Unchanged
        };
        if action != Action::Unchanged {
            info!(object = %obj.display(), action = action.as_str(), dry_run = (mode == Mode::DryRun), "reconciled");
        }
        let rewound = match &record {
            Record::Listener(l) if changes.iter().any(|c| c.field == "position") => l.rewound.clone(),
            _ => None,
        };
        Ok(Outcome {
            action,
            changes,
            readiness: Readiness::ready(ready_message(&record)),
            figures,
            record: Some(record),
            schemas: schema_check,
            rewound,
        })
    }

    /// Finds stored events that changed schemas reject, and records what it found in the record
    /// (see [`causeway_api::schema::Narrowing`]). Schemas that did not change keep what the
    /// previous record says, so a steady state reads one registry key and no events.
    async fn check_schemas(&self, record: &mut Record, figures: &Figures) -> Result<Option<SchemaCheck>> {
        let key = record.key();
        let (stream, list) = match record {
            Record::EventStore(r) => (r.stream.clone(), &mut r.schemas),
            Record::Node(r) => (r.inbox_stream.clone(), &mut r.schemas),
            Record::Listener(_) => return Ok(None),
        };
        if list.is_empty() {
            return Ok(None);
        }
        let previous = match self.read_record_key(&key).await? {
            Some(Record::EventStore(r)) => r.schemas,
            Some(Record::Node(r)) => r.schemas,
            _ => Vec::new(),
        };
        let changed = schemas::carry_over(&previous, list);
        if !changed.is_empty() {
            let (first, last) = (figures.first_sequence.unwrap_or(0), figures.last_sequence.unwrap_or(0));
            let events = schemas::sample(&self.js.client(), &stream, first, last).await?;
            schemas::find_narrowing(&stream, &events, list, &changed);
        }
        let narrowed = list
            .iter()
            .filter_map(|s| s.narrowed.as_ref().map(|n| format!("type {} v{}: {n}", s.event_type, s.version)))
            .collect();
        Ok(Some(SchemaCheck { types: list.len(), narrowed }))
    }

    /// Removes an object: its registry record always, its JetStream data as `policy` says.
    pub async fn cleanup(
        &self,
        kind: Kind,
        ns: &DnsLabel,
        name: &DnsLabel,
        policy: DeletionPolicy,
        mode: Mode,
    ) -> Result<Cleanup> {
        let mut out = Cleanup::default();
        let key = naming::registry_key(ns, kind, name);
        let previous = self.read_record_key(&key).await?;
        match kind {
            Kind::EventStore => {
                let s = naming::store_stream(ns, name);
                self.delete_stream_per_policy(&s, policy, mode, &mut out).await?;
            }
            Kind::Node => {
                for s in [naming::inbox_stream(ns, name), format!("KV_{}", naming::state_bucket(ns, name))] {
                    self.delete_stream_per_policy(&s, policy, mode, &mut out).await?;
                }
            }
            Kind::Listener => {
                let consumer = naming::listener_consumer(ns, name);
                if let Some(Record::Listener(rec)) = &previous
                    && let Some(stream) = self.get_stream(&rec.stream).await?
                    && stream.consumer_info(&consumer).await.is_ok()
                {
                    if mode == Mode::Apply {
                        stream.delete_consumer(&consumer).await.map_err(Error::nats("delete consumer"))?;
                    }
                    out.deleted.push(format!("consumer {consumer}"));
                }
            }
        }
        if previous.is_some() {
            if mode == Mode::Apply {
                self.registry().await?.delete(&key).await.map_err(Error::nats("delete registry record"))?;
            }
            out.deleted.push(format!("registry {key}"));
        }
        Ok(out)
    }

    async fn delete_stream_per_policy(
        &self,
        name: &str,
        policy: DeletionPolicy,
        mode: Mode,
        out: &mut Cleanup,
    ) -> Result<()> {
        if self.get_stream(name).await?.is_none() {
            return Ok(());
        }
        match policy {
            DeletionPolicy::Retain => out.retained.push(format!("stream {name}")),
            DeletionPolicy::Delete => {
                if mode == Mode::Apply {
                    self.js.delete_stream(name).await.map_err(Error::nats("delete stream"))?;
                    info!(stream = name, "deleted stream");
                }
                out.deleted.push(format!("stream {name}"));
            }
        }
        Ok(())
    }

    /// Every record in the registry (none when the registry does not exist yet). Read through a
    /// consumer of its own that is deleted right after, so listing leaves nothing behind on the
    /// registry stream (a stream holds at most 1,000 consumers).
    pub async fn list_records(&self) -> Result<Vec<Record>> {
        use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
        use futures::StreamExt;
        let stream_name = format!("KV_{REGISTRY_BUCKET}");
        let Some(stream) = self.get_stream(&stream_name).await? else { return Ok(Vec::new()) };
        let name = format!("cw_list_{}", ulid::Ulid::new()).to_lowercase();
        let consumer = stream
            .create_consumer(pull::Config {
                name: Some(name.clone()),
                description: Some("Causeway: one listing of the registry".into()),
                filter_subject: format!("$KV.{REGISTRY_BUCKET}.>"),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(Error::nats("list registry"))?;
        let mut left = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        let read = async {
            while left > 0 {
                let mut batch = consumer
                    .fetch()
                    .max_messages(left.min(1000) as usize)
                    .messages()
                    .await
                    .map_err(Error::nats("list registry"))?;
                let mut got = 0;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| Error::Nats { what: "list registry".into(), source: e })?;
                    got += 1;
                    left = m.info().map(|i| i.pending).unwrap_or(0);
                    let deleted = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("KV-Operation"))
                        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
                    if !deleted && let Ok(r) = Record::from_bytes(&m.payload) {
                        out.push(r);
                    }
                }
                if got == 0 {
                    break;
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        let _ = stream.delete_consumer(&name).await;
        read.map(|()| out)
    }

    /// One registry record.
    pub async fn read_record(&self, ns: &DnsLabel, kind: Kind, name: &DnsLabel) -> Result<Option<Record>> {
        self.read_record_key(&naming::registry_key(ns, kind, name)).await
    }

    async fn read_record_key(&self, key: &str) -> Result<Option<Record>> {
        let cached = self.registry_kv.lock().expect("registry lock").clone();
        let kv = match cached {
            Some(kv) => kv,
            None => match self.js.get_key_value(REGISTRY_BUCKET).await {
                Ok(kv) => {
                    *self.registry_kv.lock().expect("registry lock") = Some(kv.clone());
                    kv
                }
                Err(e)
                    if e.kind() == KeyValueErrorKind::GetBucket
                        && self.get_stream(&format!("KV_{REGISTRY_BUCKET}")).await?.is_none() =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(Error::nats("open registry")(e)),
            },
        };
        match kv.get(key).await.map_err(|e| {
            self.forget_shared();
            Error::nats("read registry")(e)
        })? {
            Some(b) => Ok(Record::from_bytes(&b).ok()),
            None => Ok(None),
        }
    }

    async fn registry(&self) -> Result<kv::Store> {
        if let Some(kv) = self.registry_kv.lock().expect("registry lock").clone() {
            return Ok(kv);
        }
        let kv = self.js.get_key_value(REGISTRY_BUCKET).await.map_err(Error::nats("open registry"))?;
        *self.registry_kv.lock().expect("registry lock") = Some(kv.clone());
        Ok(kv)
    }

    /// After a failure, forget cached knowledge of shared buckets.
    fn forget_shared(&self) {
        self.registry_kv.lock().expect("registry lock").take();
        self.shared.lock().expect("shared lock").clear();
    }

    /// Writes the record if it differs from the stored one. `Some(existed)` when written (or
    /// would be, in dry-run), `None` when already current.
    async fn put_record(&self, record: &Record, mode: Mode) -> Result<Option<bool>> {
        let key = record.key();
        let mut bytes = record.to_bytes();
        if mode == Mode::DryRun && self.get_stream(&format!("KV_{REGISTRY_BUCKET}")).await?.is_none() {
            return Ok(Some(false));
        }
        let kv = self.registry().await?;
        let current = kv.get(&key).await.map_err(|e| {
            self.forget_shared();
            Error::nats("read registry")(e)
        })?;
        // Who issues credentials is not this reconciler's to say: keep the stored answer.
        if let (None, Record::Node(want), Some(Ok(Record::Node(held)))) =
            (self.node_credentials, record, current.as_deref().map(Record::from_bytes))
        {
            let mut want = want.clone();
            want.credentials = held.credentials;
            bytes = Record::Node(want).to_bytes();
        }
        if current.as_deref() == Some(bytes.as_slice()) {
            return Ok(None);
        }
        if mode == Mode::Apply {
            kv.put(&key, bytes.into()).await.map_err(|e| {
                self.forget_shared();
                Error::nats("write registry")(e)
            })?;
            debug!(key, "registry record written");
        }
        Ok(Some(current.is_some()))
    }

    async fn get_stream(&self, name: &str) -> Result<Option<Stream>> {
        match self.js.get_stream(name).await {
            Ok(s) => Ok(Some(s)),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
                    Ok(None)
                }
                _ => Err(Error::nats(format!("get stream {name}"))(e)),
            },
        }
    }

    /// Creates or updates a stream. A `shared` stream (the registry, a namespace's global and
    /// blob buckets) is checked at most every [`SHARED_RECHECK`], and once it exists only the
    /// fields every Causeway depends on are corrected (see [`shared_fields`]): who created it
    /// (and with how many replicas) is respected.
    async fn ensure_stream(&self, want: &stream::Config, mode: Mode, shared: bool) -> Result<StreamResult> {
        if shared {
            let fresh =
                self.shared.lock().expect("shared lock").get(&want.name).is_some_and(|t| t.elapsed() < SHARED_RECHECK);
            if fresh {
                return Ok(StreamResult {
                    step: Step::Unchanged,
                    changes: Vec::new(),
                    state: None,
                    max_consumers: None,
                });
            }
            let r = self.ensure_stream_now(want, mode, true).await?;
            if matches!(r.step, Step::Unchanged | Step::Created | Step::Updated) && mode == Mode::Apply {
                self.shared.lock().expect("shared lock").insert(want.name.clone(), Instant::now());
            }
            return Ok(r);
        }
        self.ensure_stream_now(want, mode, false).await
    }

    async fn ensure_stream_now(&self, want: &stream::Config, mode: Mode, shared: bool) -> Result<StreamResult> {
        let result = |step, changes, state: Option<stream::State>, config: Option<&stream::Config>| StreamResult {
            step,
            changes,
            state,
            max_consumers: config.map(|c| c.max_consumers as i64),
        };
        let Some(stream) = self.get_stream(&want.name).await? else {
            if mode == Mode::DryRun {
                return Ok(result(Step::Created, Vec::new(), None, Some(want)));
            }
            return match self.js.create_stream(want.clone()).await {
                Ok(mut s) => {
                    info!(stream = %want.name, "created stream");
                    let state = s.info().await.ok().map(|i| i.state.clone());
                    Ok(result(Step::Created, Vec::new(), state, Some(want)))
                }
                Err(e) => match e.kind() {
                    CreateStreamErrorKind::JetStream(j) => {
                        Ok(result(Step::Rejected(j.to_string()), Vec::new(), None, None))
                    }
                    _ => Err(Error::nats(format!("create stream {}", want.name))(e)),
                },
            };
        };
        let info = stream.cached_info();
        let state = Some(info.state.clone());
        let want = if shared { &shared_fields(&info.config, want) } else { want };
        let changes = diff::stream(&info.config, want);
        if changes.is_empty() {
            return Ok(result(Step::Unchanged, changes, state, Some(&info.config)));
        }
        if changes.iter().any(|c| c.immutable) {
            return Ok(result(Step::Immutable, changes, state, Some(&info.config)));
        }
        if mode == Mode::Apply {
            match self.js.update_stream(want.clone()).await {
                Ok(i) => {
                    info!(stream = %want.name, changes = changes.len(), "updated stream");
                    return Ok(result(Step::Updated, changes, Some(i.state.clone()), Some(&i.config)));
                }
                Err(e) => {
                    let msg = e.to_string();
                    if matches!(e.kind(), async_nats::jetstream::context::UpdateStreamErrorKind::JetStream(_)) {
                        return Ok(result(Step::Rejected(msg), changes, state, Some(&info.config)));
                    }
                    return Err(Error::nats(format!("update stream {}", want.name))(e));
                }
            }
        }
        Ok(result(Step::Updated, changes, state, Some(want)))
    }

    async fn consumer_info(&self, stream: &Stream, name: &str) -> Result<Option<consumer::Info>> {
        match stream.consumer_info(name).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => Ok(None),
            Err(e) => match e.kind() {
                ConsumerInfoErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND => {
                    Ok(None)
                }
                _ => Err(Error::nats(format!("consumer info {name}"))(e)),
            },
        }
    }

    /// Creates or updates a listener's consumer. A consumer that was rewound keeps the start
    /// position the rewind gave it: its deliver policy is the rewind's, not drift.
    async fn ensure_consumer(
        &self,
        stream: &Stream,
        current: Option<consumer::Info>,
        want: &consumer::Config,
        mode: Mode,
    ) -> Result<(Step, Vec<Change>, Option<consumer::Info>)> {
        let name = want.durable_name.clone().unwrap_or_default();
        let Some(info) = current else {
            if mode == Mode::DryRun {
                return Ok((Step::Created, Vec::new(), None));
            }
            return match stream.create_consumer(want.clone()).await {
                Ok(mut c) => {
                    info!(consumer = %name, "created consumer");
                    let info = c.info().await.ok().cloned();
                    Ok((Step::Created, Vec::new(), info))
                }
                Err(e) => Ok((Step::Rejected(e.to_string()), Vec::new(), None)),
            };
        };
        let mut want = want.clone();
        if desired::rewind_of(&info.config).is_some() {
            want.deliver_policy = info.config.deliver_policy;
        }
        let want = &want;
        let changes = diff::consumer(&info.config, want);
        if changes.is_empty() {
            return Ok((Step::Unchanged, changes, Some(info)));
        }
        if changes.iter().any(|c| c.immutable) {
            return Ok((Step::Immutable, changes, Some(info)));
        }
        if mode == Mode::Apply {
            release_pins(stream, &name, &info.config, want).await;
            match self.js.update_consumer_on_stream(want.clone(), &info.stream_name).await {
                Ok(mut c) => {
                    info!(consumer = %name, changes = changes.len(), "updated consumer");
                    let info = c.info().await.ok().cloned();
                    return Ok((Step::Updated, changes, info));
                }
                Err(e) => return Ok((Step::Rejected(e.to_string()), changes, Some(info))),
            }
        }
        Ok((Step::Updated, changes, Some(info)))
    }
}

/// Before a consumer leaves the pinned-client priority policy (a listener's `orderBy` turned
/// off): releases its groups' pins. nats-server keeps honouring a pin it holds after the policy
/// is gone, delivering to no other pull until the pin times out (ackWait + 15 s), and once the
/// group is gone it can no longer be unpinned. A failure only costs that wait.
async fn release_pins(stream: &Stream, name: &str, have: &consumer::Config, want: &consumer::Config) {
    use async_nats::jetstream::consumer::PriorityPolicy;
    if have.priority_policy != PriorityPolicy::PinnedClient || want.priority_policy == PriorityPolicy::PinnedClient {
        return;
    }
    for group in &have.priority_groups {
        match stream.unpin_consumer(name, group).await {
            Ok(()) => debug!(consumer = %name, group, "released the pin before leaving the priority policy"),
            Err(e) => debug!(consumer = %name, group, error = %e, "could not release the pin; it times out instead"),
        }
    }
}

impl Reconciler {
    /// Moves a listener's consumer to `r.to`, keeping the consumer and its settings. On
    /// nats-server 2.14+ with a consumer whose deliver policy allows it (all, or a start at or
    /// before the target), the consumer is reset in place (`$JS.API.CONSUMER.RESET`); otherwise
    /// it is deleted and created again with the same settings, starting at the target. Either
    /// way its metadata records the rewind. `Ok(Err(message))` when JetStream refused.
    async fn rewind(
        &self,
        stream: &Stream,
        rec: &ListenerRecord,
        r: &causeway_api::crd::Rewind,
        info: Option<&consumer::Info>,
        mode: Mode,
    ) -> Result<std::result::Result<(RewindStatus, Option<consumer::Info>), String>> {
        use async_nats::jetstream::stream::ConsumerResetErrorKind;
        let position = match r.to.position() {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let from_sequence = info.map(|i| i.delivered.stream_sequence).filter(|s| *s > 0);
        let sequence = match position {
            RewindPosition::Sequence(n) => n,
            RewindPosition::Time(t) => self.first_sequence_at(&rec.stream, t).await?,
        };
        let status = RewindStatus {
            id: r.id.clone(),
            to: r.to.clone(),
            sequence,
            from_sequence,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        if mode == Mode::DryRun {
            return Ok(Ok((status, None)));
        }
        let mut done = rec.clone();
        done.rewound = Some(status.clone());
        let mut want = desired::listener_consumer(&done);
        let name = rec.consumer.clone();
        match stream.reset_consumer(&name, Some(sequence)).await {
            Ok(reset) => {
                info!(consumer = %name, sequence, id = %r.id, "rewound consumer in place");
                // Record the rewind on the consumer itself, with the deliver policy it has.
                want.deliver_policy = reset.info.config.deliver_policy;
                return match self.js.update_consumer_on_stream(want, &rec.stream).await {
                    Ok(mut c) => Ok(Ok((status, c.info().await.ok().cloned()))),
                    Err(e) => Ok(Err(format!("the consumer was moved but its metadata not written: {e}"))),
                };
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ConsumerResetErrorKind::InvalidReset
                        | ConsumerResetErrorKind::NotFound
                        | ConsumerResetErrorKind::TimedOut
                ) =>
            {
                debug!(consumer = %name, error = %e, "reset not possible; recreating the consumer at the rewind position");
            }
            Err(e) => return Ok(Err(e.to_string())),
        }
        // Delete and create again: the same settings, starting at the target.
        want.deliver_policy = consumer::DeliverPolicy::ByStartSequence { start_sequence: sequence };
        if let Err(e) = stream.delete_consumer(&name).await
            && self.consumer_info(stream, &name).await?.is_some()
        {
            return Ok(Err(format!("cannot delete the consumer to recreate it: {e}")));
        }
        match stream.create_consumer(want).await {
            Ok(mut c) => {
                info!(consumer = %name, sequence, id = %r.id, "rewound consumer by recreating it");
                Ok(Ok((status, c.info().await.ok().cloned())))
            }
            Err(e) => {
                Ok(Err(format!("the consumer was deleted but not created again (the next reconcile retries): {e}")))
            }
        }
    }

    /// The sequence of the first event `stream` stored at or after `t`; past the last one when
    /// none was.
    async fn first_sequence_at(&self, stream: &str, t: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        #[derive(serde::Deserialize)]
        struct Msg {
            seq: u64,
        }
        #[derive(serde::Deserialize)]
        struct Got {
            message: Option<Msg>,
        }
        let req = serde_json::json!({"start_time": t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)});
        let got: jetstream::response::Response<Got> =
            self.js
                .request(format!("STREAM.MSG.GET.{stream}"), &req)
                .await
                .map_err(Error::nats(format!("find the first event of {stream} at {t}")))?;
        match got {
            jetstream::response::Response::Ok(Got { message: Some(m) }) => Ok(m.seq),
            _ => {
                // No event at or after t: start after the last one.
                let s = self.get_stream(stream).await?.map(|s| s.cached_info().state.last_sequence).unwrap_or_default();
                Ok(s + 1)
            }
        }
    }
}

/// A shared stream as it is, with the fields every Causeway depends on set as `want` says:
/// its consumer cap, direct gets (loads and the registry read with them) and the registry's
/// change feed.
fn shared_fields(current: &stream::Config, want: &stream::Config) -> stream::Config {
    let mut c = current.clone();
    c.max_consumers = want.max_consumers;
    c.allow_direct = want.allow_direct;
    c.republish = want.republish.clone();
    c
}

/// `rewound to sequence 5 (rewind "fix-1" to time …; it had delivered up to sequence 9)`.
pub fn rewind_note(rw: &RewindStatus) -> String {
    let mut note = format!("rewound to sequence {} (rewind {:?} to {}", rw.sequence, rw.id, rw.to);
    if let Some(f) = rw.from_sequence {
        note.push_str(&format!("; it had delivered up to sequence {f}"));
    }
    note.push(')');
    note
}

fn join(errs: &[FieldError]) -> String {
    errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// The outcome when a step leaves the object untouched (an immutable change, or JetStream
/// refusing the config); `None` when the reconcile goes on.
fn stopped(step: &Step, obj: &Object, what: &str, changes: &[Change], figures: &Figures) -> Option<Outcome> {
    let readiness = match step {
        Step::Immutable => {
            let fields: Vec<String> = changes.iter().filter(|c| c.immutable).map(ToString::to_string).collect();
            Readiness::not(reason::IMMUTABLE_FIELD_CHANGED, immutable_message(obj, &fields))
        }
        Step::Rejected(msg) => Readiness::not(reason::JETSTREAM_REJECTED, format!("{what}: {msg}")),
        Step::Created | Step::Updated | Step::Unchanged => return None,
    };
    Some(Outcome {
        action: Action::Unchanged,
        readiness,
        changes: changes.to_vec(),
        figures: figures.clone(),
        record: None,
        schemas: None,
        rewound: None,
    })
}

fn not_ready(reason: &'static str, message: String) -> Outcome {
    Outcome {
        action: Action::Unchanged,
        changes: Vec::new(),
        readiness: Readiness::not(reason, message),
        figures: Figures::default(),
        record: None,
        schemas: None,
        rewound: None,
    }
}

fn immutable_message(obj: &Object, fields: &[String]) -> String {
    let how = match obj.kind() {
        Kind::EventStore => {
            "JetStream cannot change this on a live stream. To migrate: create a new EventStore with the new settings, copy the events (e.g. with a Listener whose app appends them to the new store), switch writers over, then delete this one. The stream was left untouched."
        }
        Kind::Node => {
            "JetStream cannot change this on a live inbox. To migrate: create a new Node, point its listeners and senders at it, let this inbox drain, then delete this one. The inbox was left untouched."
        }
        Kind::Listener => {
            "startAt only applies when the consumer is created. To move the listener to another position, set spec.rewind {to: {sequence: N} or {time: RFC3339}, id: <new token>} instead: the consumer keeps its settings. The consumer was left untouched."
        }
    };
    format!("{}: {}. {how}", obj.display(), fields.join("; "))
}

fn ready_message(r: &Record) -> String {
    match r {
        Record::EventStore(s) => format!("stream {} holds {}.>", s.stream, s.subject_prefix),
        Record::Node(n) => format!("inbox {} and state bucket {} ready", n.inbox_stream, n.state_bucket),
        Record::Listener(l) => format!("consumer {} on stream {} ready", l.consumer, l.stream),
    }
}
