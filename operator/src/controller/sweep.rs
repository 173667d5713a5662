//! Tidies what a deletion had to leave behind while NATS was away.
//!
//! A `Retain` object (or a Listener) whose cleanup could not reach NATS is released at once, so
//! that deleting it (or its namespace) never blocks for long. Its registry record — and a
//! Listener's consumer — stay behind, and the cleanup is remembered:
//! - every resync, remembered cleanups are tried again until NATS answers (nothing is read or
//!   written while there are none, so an idle operator makes no JetStream writes);
//! - once at start (when the caches are filled), the whole registry is read, and records the
//!   operator wrote whose object no longer exists are removed — this covers cleanups remembered
//!   by a replica that has since stopped.
//!
//! The sweep never deletes an EventStore's or a Node's data: their records are removed as under
//! `Retain`; a Listener's consumer goes with its record.

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

fn policy_for(kind: Kind) -> DeletionPolicy {
    if kind == Kind::Listener { DeletionPolicy::Delete } else { DeletionPolicy::Retain }
}

/// Retries the remembered cleanups. Returns how many are done.
pub async fn deferred(ctx: &Context) -> crate::Result<usize> {
    let mut done = 0;
    for (kind, ns, name) in ctx.deferred_cleanups() {
        let (Ok(n), Ok(m)) = (causeway_api::DnsLabel::new(&ns), causeway_api::DnsLabel::new(&name)) else {
            ctx.cleaned_up(kind, &ns, &name);
            continue;
        };
        let c = ctx.core.cleanup(kind, &n, &m, policy_for(kind), Mode::Apply).await?;
        tracing::info!(object = %format!("{kind} {ns}/{name}"), deleted = ?c.deleted, "finished a cleanup deferred while NATS was away");
        ctx.cleaned_up(kind, &ns, &name);
        done += 1;
    }
    Ok(done)
}

/// One pass over the whole registry: removes operator records whose object is gone. Returns how
/// many it removed.
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
        let c = ctx.core.cleanup(r.kind(), &m.namespace, &m.name, policy_for(r.kind()), Mode::Apply).await?;
        tracing::info!(object = %format!("{} {ns}/{name}", r.kind()), deleted = ?c.deleted, "removed what a deletion left behind");
        removed += 1;
    }
    Ok(removed)
}

/// Reads the whole registry once (retrying until NATS answers), then retries remembered cleanups
/// every resync, until `shutdown`.
pub async fn run(ctx: Arc<Context>, caches: Caches, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    tokio::select! {
        _ = caches.ready() => {}
        _ = &mut shutdown => return,
    }
    let mut tick = tokio::time::interval(ctx.opts.resync);
    let mut full_pass_done = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !full_pass_done {
                    match once(&ctx, &caches).await {
                        Ok(_) => full_pass_done = true,
                        Err(e) => tracing::debug!(error = %e, "registry sweep deferred: NATS is not answering"),
                    }
                }
                if let Err(e) = deferred(&ctx).await {
                    tracing::debug!(error = %e, "deferred cleanups wait: NATS is not answering");
                }
            }
            _ = &mut shutdown => return,
        }
    }
}
