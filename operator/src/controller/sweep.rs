//! Tidies what a deletion had to leave behind while NATS was away.
//!
//! A `Retain` object (or a Listener) whose cleanup could not reach NATS is released at once, so
//! that deleting it (or its namespace) never blocks for long. Its registry record — and a
//! Listener's consumer — stay behind. Every resync, once the controllers' caches are filled, the
//! sweep removes the records written by the operator whose object no longer exists, and a
//! Listener's consumer with it. It never deletes an EventStore's or a Node's data: those records
//! are removed as under `Retain`.

use std::{future::Future, sync::Arc};

use causeway_api::{
    Kind,
    crd::{DeletionPolicy, EventStore, Listener, Node},
    registry::{MANAGER_OPERATOR, Record},
};
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Caches, Context};
use crate::jetstream::Mode;

fn exists<K: kube::Resource<DynamicType = ()> + Clone>(stores: &[Store<K>], ns: &str, name: &str) -> bool {
    let r = ObjectRef::<K>::new(name).within(ns);
    stores.iter().any(|s| s.get(&r).is_some())
}

/// One pass: removes operator records whose object is gone. Returns how many it removed.
pub async fn once(ctx: &Context, caches: &Caches) -> crate::Result<usize> {
    let mut removed = 0;
    for r in ctx.core.list_records().await? {
        let m = r.meta();
        if m.manager != MANAGER_OPERATOR {
            continue;
        }
        let (ns, name) = (m.namespace.as_str(), m.name.as_str());
        if !ctx.opts.namespaces.is_empty() && !ctx.opts.namespaces.iter().any(|n| n == ns) {
            continue;
        }
        let gone = match &r {
            Record::EventStore(_) => !exists::<EventStore>(&caches.stores, ns, name),
            Record::Node(_) => !exists::<Node>(&caches.nodes, ns, name),
            Record::Listener(_) => !exists::<Listener>(&caches.listeners, ns, name),
        };
        if !gone {
            continue;
        }
        let policy = if r.kind() == Kind::Listener { DeletionPolicy::Delete } else { DeletionPolicy::Retain };
        let c = ctx.core.cleanup(r.kind(), &m.namespace, &m.name, policy, Mode::Apply).await?;
        tracing::info!(object = %format!("{} {ns}/{name}", r.kind()), deleted = ?c.deleted, "removed what a deletion left behind");
        removed += 1;
    }
    Ok(removed)
}

/// Sweeps every resync until `shutdown`.
pub async fn run(ctx: Arc<Context>, caches: Caches, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    tokio::select! {
        _ = caches.ready() => {}
        _ = &mut shutdown => return,
    }
    let mut tick = tokio::time::interval(ctx.opts.resync);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = once(&ctx, &caches).await {
                    tracing::debug!(error = %e, "sweep deferred: NATS is not answering");
                }
            }
            _ = &mut shutdown => return,
        }
    }
}
