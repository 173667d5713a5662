//! Name resolution through the `CW_REGISTRY` bucket.
//!
//! The sidecar keeps a live copy of its namespace's records: an ordered consumer on the bucket's
//! stream delivers the last record of every key, then every change. So a Node or EventStore
//! created after the sidecar started is reachable without a restart, and a deleted one stops
//! resolving. Nodes of other namespaces (`namespace.name`) are looked up on demand.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use causeway_api::{
    DnsLabel, Kind,
    naming::{self, REGISTRY_BUCKET},
    registry::{ListenerRecord, NodeRecord, Record, StoreRecord},
};
use futures::StreamExt;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// What the sidecar knows about its namespace.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Event stores by name.
    pub stores: BTreeMap<String, Arc<StoreRecord>>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Arc<NodeRecord>>,
    /// Listeners by name.
    pub listeners: BTreeMap<String, Arc<ListenerRecord>>,
}

/// The live registry of one namespace.
#[derive(Debug)]
pub struct Registry {
    namespace: DnsLabel,
    node: DnsLabel,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Bumped on every change; push workers watch it to follow listener changes.
    version: watch::Sender<u64>,
    synced: watch::Sender<bool>,
    foreign: RwLock<BTreeMap<String, Cached>>,
}

/// A node of another namespace, looked up at a time (`None`: not found).
type Cached = (Instant, Option<Arc<NodeRecord>>);

const FOREIGN_TTL: Duration = Duration::from_secs(5);
const FOREIGN_CAP: usize = 1024;

impl Registry {
    /// An empty registry for `namespace`, serving `node`.
    pub fn new(namespace: DnsLabel, node: DnsLabel) -> Arc<Self> {
        Arc::new(Self {
            namespace,
            node,
            snapshot: RwLock::default(),
            version: watch::channel(0).0,
            synced: watch::channel(false).0,
            foreign: RwLock::default(),
        })
    }

    /// The current records.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True once the initial records have all been read.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// A receiver that changes whenever a record does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// A receiver for the synced flag.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Applies one record change (`None` = deleted).
    pub fn apply(&self, key: &str, record: Option<Record>) {
        let Some((ns, kind, name)) = naming::parse_registry_key(key) else { return };
        if ns != self.namespace {
            return;
        }
        let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        let mut s = (**guard).clone();
        let name = name.to_string();
        match (kind, record) {
            (_, Some(Record::EventStore(r))) if kind == Kind::EventStore => {
                s.stores.insert(name, Arc::new(r));
            }
            (_, Some(Record::Node(r))) if kind == Kind::Node => {
                s.nodes.insert(name, Arc::new(r));
            }
            (_, Some(Record::Listener(r))) if kind == Kind::Listener => {
                s.listeners.insert(name, Arc::new(r));
            }
            (Kind::EventStore, _) => {
                s.stores.remove(&name);
            }
            (Kind::Node, _) => {
                s.nodes.remove(&name);
            }
            (Kind::Listener, _) => {
                s.listeners.remove(&name);
            }
        }
        *guard = Arc::new(s);
        drop(guard);
        self.version.send_modify(|v| *v += 1);
    }

    /// Marks the initial read complete.
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    /// This sidecar's own node record, once it exists.
    pub fn own_node(&self) -> Option<Arc<NodeRecord>> {
        self.snapshot().nodes.get(self.node.as_str()).cloned()
    }

    /// A store of this namespace.
    pub fn store(&self, name: &str) -> Result<Arc<StoreRecord>> {
        let s = self.snapshot();
        s.stores
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownStore { name: name.to_owned(), known: s.stores.keys().cloned().collect() })
    }

    /// This node's listener `name`.
    pub fn own_listener(&self, name: &str) -> Result<Arc<ListenerRecord>> {
        let s = self.snapshot();
        s.listeners.get(name).filter(|l| l.node == self.node).cloned().ok_or_else(|| Error::UnknownListener {
            name: name.to_owned(),
            known: self.own_listeners().into_iter().map(|l| l.meta.name.to_string()).collect(),
        })
    }

    /// This node's listeners.
    pub fn own_listeners(&self) -> Vec<Arc<ListenerRecord>> {
        self.snapshot().listeners.values().filter(|l| l.node == self.node).cloned().collect()
    }

    /// Resolves `name` or `namespace.name` to a node.
    pub async fn node(&self, js: &jetstream::Context, target: &str) -> Result<Arc<NodeRecord>> {
        let (ns, name) = match target.split_once('.') {
            Some((ns, name)) => (ns, name),
            None => (self.namespace.as_str(), target),
        };
        if ns == self.namespace.as_str() {
            let s = self.snapshot();
            return s.nodes.get(name).cloned().ok_or_else(|| Error::UnknownNode {
                name: target.to_owned(),
                known: s.nodes.keys().cloned().collect(),
            });
        }
        let unknown = || Error::UnknownNode { name: target.to_owned(), known: vec![] };
        let (Ok(ns), Ok(name)) = (DnsLabel::new(ns), DnsLabel::new(name)) else { return Err(unknown()) };
        let key = naming::registry_key(&ns, Kind::Node, &name);
        if let Some((at, rec)) = self.foreign.read().unwrap_or_else(|e| e.into_inner()).get(&key)
            && at.elapsed() < FOREIGN_TTL
        {
            return rec.clone().ok_or_else(unknown);
        }
        let kv = js.get_key_value(REGISTRY_BUCKET).await.map_err(|e| Error::Unavailable(format!("registry: {e}")))?;
        let rec = match kv.get(&key).await.map_err(|e| Error::Unavailable(format!("registry: {e}")))? {
            Some(b) => match Record::from_bytes(&b) {
                Ok(Record::Node(n)) => Some(Arc::new(n)),
                _ => None,
            },
            None => None,
        };
        let mut f = self.foreign.write().unwrap_or_else(|e| e.into_inner());
        if f.len() >= FOREIGN_CAP {
            f.clear();
        }
        f.insert(key, (Instant::now(), rec.clone()));
        rec.ok_or_else(unknown)
    }
}

/// Follows the registry until `shutdown` fires, reconnecting as needed.
pub async fn follow(reg: Arc<Registry>, js: jetstream::Context, mut shutdown: watch::Receiver<bool>) {
    let mut last_revision = 0u64;
    loop {
        let run = follow_once(&reg, &js, &mut last_revision);
        tokio::select! {
            r = run => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "registry watch interrupted; retrying");
                }
            }
            _ = crate::state::until_true(&mut shutdown) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = crate::state::until_true(&mut shutdown) => return,
        }
    }
}

async fn follow_once(reg: &Registry, js: &jetstream::Context, last_revision: &mut u64) -> Result<(), String> {
    let kv = js.get_key_value(REGISTRY_BUCKET).await.map_err(|e| format!("bucket {REGISTRY_BUCKET}: {e}"))?;
    let filter = format!("{}{}", kv.prefix, naming::registry_namespace_filter(&reg.namespace));
    // Resume after the last revision seen, or read the latest value of every key first.
    let deliver_policy = if *last_revision == 0 {
        DeliverPolicy::LastPerSubject
    } else {
        DeliverPolicy::ByStartSequence { start_sequence: *last_revision + 1 }
    };
    let consumer = kv
        .stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: filter,
            deliver_policy,
            description: Some("causeway sidecar registry watch".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    if consumer.cached_info().num_pending == 0 {
        reg.mark_synced();
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let Ok(info) = m.info() else { continue };
        let (seq, pending) = (info.stream_sequence, info.pending);
        let key = m.subject.as_str().strip_prefix(kv.prefix.as_str()).unwrap_or_default().to_owned();
        let deleted = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        let record = if deleted {
            None
        } else {
            match Record::from_bytes(&m.payload) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "registry record does not parse; ignoring it");
                    *last_revision = seq;
                    continue;
                }
            }
        };
        reg.apply(&key, record);
        *last_revision = seq;
        if pending == 0 {
            reg.mark_synced();
        }
    }
    Err("the watch ended".into())
}

#[cfg(test)]
mod tests {
    use causeway_api::{
        crd::{EventStoreSpec, NodeSpec},
        registry::Meta,
    };

    use super::*;

    fn l(s: &str) -> DnsLabel {
        DnsLabel::new(s).unwrap()
    }

    fn meta(name: &str) -> Meta {
        Meta { namespace: l("shop"), name: l(name), generation: None, manager: "apply".into() }
    }

    #[tokio::test]
    async fn applies_puts_and_deletes() {
        let r = Registry::new(l("shop"), l("orders"));
        let spec: NodeSpec = serde_json::from_str("{}").unwrap();
        let node = Record::Node(NodeRecord::resolve(meta("inventory"), &spec));
        r.apply("shop.node.inventory", Some(node));
        let store: EventStoreSpec = serde_json::from_str("{}").unwrap();
        r.apply("shop.eventstore.orders", Some(Record::EventStore(StoreRecord::resolve(meta("orders"), &store))));
        r.apply("other.node.x", Some(Record::Node(NodeRecord::resolve(meta("x"), &spec))));
        assert!(r.snapshot().nodes.contains_key("inventory"));
        assert!(!r.snapshot().nodes.contains_key("x"));
        assert_eq!(r.store("orders").unwrap().stream, "CW_ES_shop_orders");
        match r.store("nope") {
            Err(Error::UnknownStore { known, .. }) => assert_eq!(known, vec!["orders".to_string()]),
            other => panic!("{other:?}"),
        }
        r.apply("shop.node.inventory", None);
        assert!(r.snapshot().nodes.is_empty());
    }
}
