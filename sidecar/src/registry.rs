//! Name resolution through the `CW_REGISTRY` bucket.
//!
//! The sidecar keeps a live copy of its namespace's records without a JetStream consumer (a
//! stream holds at most 1,000, and every sidecar of a cluster follows the same registry):
//! - a snapshot is read with batched direct gets of `$KV.CW_REGISTRY.<ns>.>` (the bucket keeps one
//!   revision per key, so that is the latest record of each);
//! - changes arrive on a core subscription to `cw._registry.<ns>.>`, where the registry stream
//!   republishes each change once it is stored, with its sequence; a change older than what is
//!   known for its key is ignored;
//! - after every reconnect (core messages sent meanwhile are lost) and every
//!   [`RESYNC`], the snapshot is read again.
//!
//! A Node or EventStore created after the sidecar started is reachable without a restart, and a
//! deleted one stops resolving. Nodes of other namespaces (`namespace.name`) are looked up on
//! demand. Until the first snapshot is read, names answer 503 (`not_ready`), never 404.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use causeway_api::{
    DnsLabel, Kind,
    naming::{self, REGISTRY_BUCKET},
    registry::{ListenerRecord, NodeRecord, Record, StoreRecord},
};
use futures::StreamExt;
use tokio::sync::watch;

use crate::{
    error::{Error, Result},
    nats::{Link, direct_batch, direct_last},
};

/// How often the whole namespace is read again, whatever the change feed said.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How often it is read when the registry stream does not republish its changes (a registry
/// created by an older Causeway, until the next reconcile adds it).
const POLL: Duration = Duration::from_secs(2);

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
    /// Stream sequence of the record applied for each key (deletes included).
    seqs: RwLock<HashMap<String, u64>>,
    foreign: RwLock<BTreeMap<String, Cached>>,
}

/// A record of another namespace, looked up at a time (`None`: not found).
type Cached = (Instant, Option<Record>);

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
            seqs: RwLock::default(),
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

    /// Applies a change read at stream sequence `seq`, unless a newer one is known for its key.
    pub fn apply_at(&self, key: &str, seq: u64, record: Option<Record>) -> bool {
        {
            let mut seqs = self.seqs.write().unwrap_or_else(|e| e.into_inner());
            let known = seqs.entry(key.to_owned()).or_insert(0);
            if seq <= *known {
                return false;
            }
            *known = seq;
        }
        self.apply(key, record);
        true
    }

    /// Replaces the whole view with a snapshot read up to `read_through` (a stream sequence):
    /// keys missing from it were deleted, unless a change newer than the snapshot arrived.
    pub fn replace(&self, snapshot: Vec<(String, u64, Option<Record>)>, read_through: u64) {
        let present: std::collections::HashSet<&str> = snapshot.iter().map(|(k, _, _)| k.as_str()).collect();
        let known: Vec<(String, u64)> =
            self.seqs.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (k, seq) in known {
            if !present.contains(k.as_str()) && seq <= read_through {
                self.apply_at(&k, read_through.max(seq + 1), None);
            }
        }
        for (k, seq, rec) in snapshot {
            self.apply_at(&k, seq, rec);
        }
    }

    /// Marks the initial read complete.
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    /// This sidecar's own node record, once it exists.
    pub fn own_node(&self) -> Option<Arc<NodeRecord>> {
        self.snapshot().nodes.get(self.node.as_str()).cloned()
    }

    /// 503 until the first snapshot is read: a name cannot be called unknown before then.
    pub fn ready(&self) -> Result<()> {
        if self.is_synced() {
            Ok(())
        } else {
            Err(Error::NotSynced("NATS is not reachable yet, or the registry is being read".into()))
        }
    }

    /// A store of this namespace.
    pub fn store(&self, name: &str) -> Result<Arc<StoreRecord>> {
        self.ready()?;
        let s = self.snapshot();
        s.stores
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownStore { name: name.to_owned(), known: s.stores.keys().cloned().collect() })
    }

    /// This node's listener `name`.
    pub fn own_listener(&self, name: &str) -> Result<Arc<ListenerRecord>> {
        self.ready()?;
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

    /// Splits `name` or `namespace.name` into `(namespace, name)`.
    pub fn split<'a>(&'a self, target: &'a str) -> (&'a str, &'a str) {
        target.split_once('.').unwrap_or((self.namespace.as_str(), target))
    }

    /// Resolves `name` or `namespace.name` to a node.
    pub async fn node(
        &self,
        client: &async_nats::Client,
        link: &Link,
        wait: Duration,
        target: &str,
    ) -> Result<Arc<NodeRecord>> {
        self.ready()?;
        let (ns, name) = self.split(target);
        if ns == self.namespace.as_str() {
            let s = self.snapshot();
            return s.nodes.get(name).cloned().ok_or_else(|| Error::UnknownNode {
                name: target.to_owned(),
                known: s.nodes.keys().cloned().collect(),
            });
        }
        match self.foreign(client, link, wait, Kind::Node, ns, name).await? {
            Some(Record::Node(n)) => Ok(Arc::new(n)),
            _ => Err(Error::UnknownNode { name: target.to_owned(), known: vec![] }),
        }
    }

    /// Resolves `name` or `namespace.name` to a store.
    pub async fn any_store(
        &self,
        client: &async_nats::Client,
        link: &Link,
        wait: Duration,
        target: &str,
    ) -> Result<Arc<StoreRecord>> {
        self.ready()?;
        let (ns, name) = self.split(target);
        if ns == self.namespace.as_str() {
            return self.store(name);
        }
        match self.foreign(client, link, wait, Kind::EventStore, ns, name).await? {
            Some(Record::EventStore(s)) => Ok(Arc::new(s)),
            _ => Err(Error::UnknownStore { name: target.to_owned(), known: vec![] }),
        }
    }

    /// A record of another namespace, read with a direct get and cached for a few seconds.
    async fn foreign(
        &self,
        client: &async_nats::Client,
        link: &Link,
        wait: Duration,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Result<Option<Record>> {
        let (Ok(ns), Ok(name)) = (DnsLabel::new(ns), DnsLabel::new(name)) else { return Ok(None) };
        let key = naming::registry_key(&ns, kind, &name);
        if let Some((at, rec)) = self.foreign.read().unwrap_or_else(|e| e.into_inner()).get(&key)
            && at.elapsed() < FOREIGN_TTL
        {
            return Ok(rec.clone());
        }
        let (stream, subject) = (registry_stream(), naming::registry_kv_subject(&key));
        let read = crate::nats::resilient(link, wait, || direct_last(client, &stream, &subject)).await?;
        let rec = match read {
            Some(m) if !is_delete(&m.headers) => Record::from_bytes(&m.payload).ok(),
            _ => None,
        };
        let mut f = self.foreign.write().unwrap_or_else(|e| e.into_inner());
        if f.len() >= FOREIGN_CAP {
            f.clear();
        }
        f.insert(key, (Instant::now(), rec.clone()));
        Ok(rec)
    }
}

fn registry_stream() -> String {
    format!("KV_{REGISTRY_BUCKET}")
}

fn is_delete(h: &async_nats::HeaderMap) -> bool {
    h.get("KV-Operation").is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
}

fn parse_record(key: &str, h: &async_nats::HeaderMap, payload: &[u8]) -> Option<Record> {
    if is_delete(h) {
        return None;
    }
    match Record::from_bytes(payload) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(%key, error = %e, "registry record does not parse; treating it as absent");
            None
        }
    }
}

/// Reads every record of the namespace: `(key, sequence, record)` and the stream sequence read
/// through.
pub async fn read_namespace(
    client: &async_nats::Client,
    ns: &DnsLabel,
) -> Result<(Vec<(String, u64, Option<Record>)>, u64)> {
    let stream = registry_stream();
    let prefix = format!("$KV.{REGISTRY_BUCKET}.");
    let filter = naming::registry_kv_subject(&naming::registry_namespace_filter(ns));
    let mut out = Vec::new();
    let mut next = 1;
    let mut through = 0;
    loop {
        let b = direct_batch(client, &stream, &filter, next, 256, 1 << 20).await?;
        for m in &b.messages {
            let key = m.subject.strip_prefix(&prefix).unwrap_or_default().to_owned();
            out.push((key.clone(), m.sequence, parse_record(&key, &m.headers, &m.payload)));
            through = through.max(m.sequence);
        }
        match b.messages.last() {
            Some(last) if b.pending > 0 => next = last.sequence + 1,
            _ => break,
        }
    }
    Ok((out, through))
}

async fn republishes(js: &async_nats::jetstream::Context) -> bool {
    match js.get_stream(registry_stream()).await {
        Ok(s) => s.cached_info().config.republish.is_some(),
        Err(_) => false,
    }
}

/// Follows the registry until `shutdown` fires, reading it again after every reconnect.
pub async fn follow(
    reg: Arc<Registry>,
    client: async_nats::Client,
    link: Arc<Link>,
    mut shutdown: watch::Receiver<bool>,
) {
    let js = async_nats::jetstream::new(client.clone());
    let mut conn = link.subscribe();
    loop {
        let epoch = tokio::select! {
            s = conn.wait_for(|s| s.connected) => match s { Ok(s) => s.epoch, Err(_) => return },
            _ = crate::flag::until_true(&mut shutdown) => return,
        };
        let run = follow_connection(&reg, &client, &js, &link, epoch);
        tokio::select! {
            r = run => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "registry watch interrupted; reading it again");
                }
            }
            _ = crate::flag::until_true(&mut shutdown) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = crate::flag::until_true(&mut shutdown) => return,
        }
    }
}

/// Follows the registry over one connection: subscribe first, then read the snapshot, so no
/// change falls between the two.
async fn follow_connection(
    reg: &Registry,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    link: &Link,
    epoch: u64,
) -> Result<(), String> {
    let mut changes = client
        .subscribe(naming::registry_changes_filter(&reg.namespace))
        .await
        .map_err(|e| format!("subscribe to registry changes: {e}"))?;
    let every = if republishes(js).await {
        RESYNC
    } else {
        tracing::warn!(
            "the registry stream does not republish its changes (written by an older Causeway?); polling it every {POLL:?} until the next reconcile"
        );
        POLL
    };
    let mut resync = tokio::time::interval(every);
    let lost = link.lost(epoch);
    tokio::pin!(lost);
    loop {
        tokio::select! {
            _ = resync.tick() => {
                let (snapshot, through) = read_namespace(client, &reg.namespace).await.map_err(|e| e.to_string())?;
                reg.replace(snapshot, through);
                reg.mark_synced();
            }
            m = changes.next() => {
                let Some(m) = m else { return Err("the change feed closed".into()) };
                let h = m.headers.clone().unwrap_or_default();
                let (Some(seq), Some(subject)) = (
                    h.get("Nats-Sequence").and_then(|v| v.as_str().parse::<u64>().ok()),
                    h.get("Nats-Subject").map(|v| v.to_string()),
                ) else {
                    continue;
                };
                let Some(key) = subject.strip_prefix(&format!("$KV.{REGISTRY_BUCKET}.")).map(str::to_owned) else {
                    continue;
                };
                let record = parse_record(&key, &h, &m.payload);
                reg.apply_at(&key, seq, record);
            }
            _ = &mut lost => return Err("the NATS connection was lost".into()),
        }
    }
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
        // Before the first snapshot no name is unknown: it is too early to say.
        assert_eq!(r.store("orders").unwrap_err().code(), "not_ready");
        r.mark_synced();
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
        // Changes apply in stream order: an older one arriving late changes nothing.
        let node = Record::Node(NodeRecord::resolve(meta("late"), &spec));
        assert!(r.apply_at("shop.node.late", 10, Some(node.clone())));
        assert!(!r.apply_at("shop.node.late", 9, None));
        assert!(r.snapshot().nodes.contains_key("late"));
        // A snapshot without a key (read through a later sequence) removes it.
        r.replace(vec![], 20);
        assert!(!r.snapshot().nodes.contains_key("late"));
    }
}
