//! The Kubernetes controllers: one kube-rs `Controller` per kind, all calling the reconcile core
//! that `causeway apply` uses ([`crate::jetstream`]), so no mapping rule exists twice.
//!
//! - [`reconcile`]: the finalizer, status by server-side apply, events, backoff;
//! - [`kinds`]: object ↔ core, status per kind;
//! - a Listener is reconciled again when its Node, source store, source inbox or dead-letter
//!   store changes (`watches` mapped through the listeners' own cache, no polling);
//! - an EventStore or Node is reconciled again when a ConfigMap its `spec.schemas` read from
//!   changes (a metadata-only watch of ConfigMaps, mapped through the kind's own cache);
//! - [`sweep`]: registry records whose object is gone (left behind by a deletion while NATS was
//!   away) are removed;
//! - [`leader`]: only the holder of a Lease reconciles.

pub mod context;
pub mod credentials;
pub mod health;
pub mod kinds;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod sweep;

use std::{future::Future, sync::Arc};

use causeway_api::crd::{EventStore, Listener, Node};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, controller,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

pub use context::{Context, Error, Options};
use kinds::Managed;

/// The caches of the running controllers, for the sweep and the object metrics.
#[derive(Clone, Default)]
pub struct Caches {
    /// EventStores, one cache per watched scope.
    pub stores: Vec<Store<EventStore>>,
    /// Nodes.
    pub nodes: Vec<Store<Node>>,
    /// Listeners.
    pub listeners: Vec<Store<Listener>>,
}

impl Caches {
    /// Waits until every cache has been filled once.
    pub async fn ready(&self) {
        for s in &self.stores {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.nodes {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.listeners {
            let _ = s.wait_until_ready().await;
        }
    }

    /// Counts objects by Ready state into the metrics.
    pub fn count(&self, metrics: &metrics::Metrics) {
        fn ready_of<K: Managed>(o: &K) -> Option<bool> {
            let s = o.stored_status()?;
            let c = s.get("conditions")?.as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
            Some(c["status"] == "True")
        }
        fn tally<K: Managed>(stores: &[Store<K>], metrics: &metrics::Metrics) {
            let (mut t, mut f, mut u) = (0, 0, 0);
            for o in stores.iter().flat_map(|s| s.state()) {
                match ready_of(&*o) {
                    Some(true) => t += 1,
                    Some(false) => f += 1,
                    None => u += 1,
                }
            }
            metrics.set_objects(K::KIND.as_str(), t, f, u);
        }
        tally(&self.stores, metrics);
        tally(&self.nodes, metrics);
        tally(&self.listeners, metrics);
    }
}

fn config(opts: &Options) -> controller::Config {
    controller::Config::default().concurrency(opts.concurrency).debounce(opts.debounce)
}

fn drive<K: Managed>(
    c: Controller<K>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()> {
    c.graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile::<K>, reconcile::error_policy::<K>, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .boxed()
}

/// The listeners (in `store`) that depend on an object of `ns` named `name` through `uses`.
fn dependents(
    store: &Store<Listener>,
    ns: Option<String>,
    uses: impl Fn(&Listener) -> bool,
) -> Vec<ObjectRef<Listener>> {
    store.state().iter().filter(|l| l.namespace() == ns && uses(l)).map(|l| ObjectRef::from_obj(&**l)).collect()
}

/// The objects (in `store`) whose schemas are read from the ConfigMap `cm`.
fn schema_readers<K: Managed>(store: &Store<K>, cm: &PartialObjectMeta<ConfigMap>) -> Vec<ObjectRef<K>> {
    let (ns, name) = (cm.namespace(), cm.name_any());
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == ns && o.uses_config_map(&name))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

/// Reconciles the EventStores or Nodes of `c` again when a ConfigMap one of them reads its
/// schemas from is created, changed or deleted. Only metadata is watched (an
/// `Api<PartialObjectMeta<_>>` asks for nothing else): every ConfigMap of the scope passes through
/// this watch, and the reconcile reads the data of only the ones a spec names.
fn on_schema_config_maps<K: Managed>(c: Controller<K>, client: &kube::Client, scope: &Option<String>) -> Controller<K> {
    let store = c.store();
    let config_maps = scoped::<PartialObjectMeta<ConfigMap>>(client, scope);
    c.watches(config_maps, watcher::Config::default(), move |cm| schema_readers(&store, &cm))
}

/// Builds the controllers of every kind for every watched scope. Each stops (finishing the
/// reconciles in flight) when `shutdown` completes.
pub fn controllers(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) -> (Vec<BoxFuture<'static, ()>>, Caches) {
    let client = ctx.kube.clone();
    let wc = watcher::Config::default();
    let mut runs = Vec::new();
    let mut caches = Caches::default();
    let scopes: Vec<Option<String>> = if ctx.opts.namespaces.is_empty() {
        vec![None]
    } else {
        ctx.opts.namespaces.iter().cloned().map(Some).collect()
    };
    for scope in &scopes {
        let c = Controller::new(scoped::<EventStore>(&client, scope), wc.clone()).with_config(config(&ctx.opts));
        caches.stores.push(c.store());
        let c = on_schema_config_maps(c, &client, scope);
        runs.push(drive(c, ctx.clone(), shutdown.clone()));
    }
    for scope in &scopes {
        let mut c = Controller::new(scoped::<Node>(&client, scope), wc.clone()).with_config(config(&ctx.opts));
        caches.nodes.push(c.store());
        c = on_schema_config_maps(c, &client, scope);
        if ctx.identity.is_some() {
            // A node's credential holds the consumers of its listeners and the stores its
            // policy reads: reissue it when they change, and restore its Secret if deleted.
            let managed = format!("{}={}", credentials::MANAGED_BY.0, credentials::MANAGED_BY.1);
            let nodes = c.store();
            c = c
                .owns(scoped::<Secret>(&client, scope), watcher::Config::default().labels(&managed))
                .watches(scoped::<Listener>(&client, scope), wc.clone(), |l: Listener| credentials::node_of(&l))
                .watches(scoped::<EventStore>(&client, scope), wc.clone(), move |s: EventStore| {
                    credentials::nodes_covering(std::slice::from_ref(&nodes), &s)
                });
        }
        runs.push(drive(c, ctx.clone(), shutdown.clone()));
    }
    for scope in &scopes {
        let (napi, sapi) = (scoped::<Node>(&client, scope), scoped::<EventStore>(&client, scope));
        let c = Controller::new(scoped::<Listener>(&client, scope), wc.clone()).with_config(config(&ctx.opts));
        let store = c.store();
        caches.listeners.push(store.clone());
        let by_node = store.clone();
        let by_store = store;
        let c = c
            .watches(napi, wc.clone(), move |n: Node| {
                let name = n.name_any();
                dependents(&by_node, n.namespace(), |l| {
                    l.spec.node.as_str() == name || l.spec.source.inbox.as_ref().is_some_and(|i| i.as_str() == name)
                })
            })
            .watches(sapi, wc.clone(), move |s: EventStore| {
                let name = s.name_any();
                dependents(&by_store, s.namespace(), |l| {
                    l.spec.source.store.as_ref().is_some_and(|x| x.as_str() == name)
                        || l.spec.dead_letter.as_ref().is_some_and(|d| d.store.as_str() == name)
                })
            });
        runs.push(drive(c, ctx.clone(), shutdown.clone()));
    }
    let _ = ctx.caches.set(caches.clone());
    (runs, caches)
}

/// An Api over every namespace (`None`) or one.
fn scoped<K>(client: &kube::Client, scope: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controllers and the sweep until `shutdown`; returns after in-flight reconciles are
/// done.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
    caches_out: Option<&std::sync::Mutex<Caches>>,
) {
    let (runs, caches) = controllers(ctx.clone(), shutdown.clone());
    if let Some(out) = caches_out {
        *out.lock().unwrap_or_else(|e| e.into_inner()) = caches.clone();
    }
    let sweeping = sweep::run(ctx.clone(), caches, shutdown);
    // Both end with `shutdown`; the controllers first finish the reconciles in flight.
    futures::join!(futures::future::join_all(runs), sweeping);
}

/// Everything `causeway operator` is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How the controllers behave.
    pub opts: Options,
    /// Leader election (None: this replica always reconciles).
    pub lease: Option<leader::LeaseOptions>,
    /// Replicas of shared buckets when first created.
    pub registry_replicas: usize,
    /// Name of this replica in Events (its pod name).
    pub instance: Option<String>,
    /// Per-node NATS credentials (None: sidecars share one credential).
    pub identity: Option<credentials::Identity>,
}

/// Why `operate` stopped other than by a shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// Another replica took the lease: restart with fresh caches.
    #[error("lost the leader lease")]
    LostLease,
    /// The lease could not be set up.
    #[error("{0}")]
    Lease(String),
}

async fn wait_for<F, Fut, T>(health: &health::Health, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut said = false;
    loop {
        match probe().await {
            Ok(_) => return,
            Err(e) => {
                let why = format!("{what}: {e}");
                if !said {
                    tracing::warn!("{why}; waiting");
                    said = true;
                }
                health.set_not_ready(Some(why));
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
    }
}

/// Runs the operator until `shutdown`: waits for JetStream and the CRDs (reporting why on
/// `/readyz` meanwhile, never crash-looping), takes the lease, then runs the controllers.
/// On `shutdown` it finishes in-flight reconciles and releases the lease.
pub async fn operate(
    kube: kube::Client,
    nats: async_nats::Client,
    settings: Settings,
    health: Arc<health::Health>,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) -> Result<(), Stopped> {
    let js = async_nats::jetstream::new(nats.clone());
    let ready = async {
        wait_for(&health, "JetStream is not available", || async {
            js.query_account().await.map_err(|e| e.to_string())
        })
        .await;
        wait_for(&health, "the Causeway CRDs are not installed", || async {
            Api::<EventStore>::all(kube.clone())
                .list(&kube::api::ListParams::default().limit(1))
                .await
                .map_err(|e| e.to_string())
        })
        .await;
    };
    tokio::select! {
        _ = ready => {}
        _ = shutdown.clone() => return Ok(()),
    }
    health.set_not_ready(None);
    let core = crate::jetstream::Reconciler::new(nats.clone(), causeway_api::registry::MANAGER_OPERATOR)
        .with_registry_replicas(settings.registry_replicas)
        .with_node_credentials(settings.identity.is_some());
    let reporter =
        kube::runtime::events::Reporter { controller: "causeway-operator".into(), instance: settings.instance.clone() };
    let ctx = Arc::new(
        Context::new(kube.clone(), core, reporter, health.metrics.clone(), settings.opts.clone())
            .with_identity(settings.identity.clone()),
    );
    let mut lease = match &settings.lease {
        None => None,
        Some(o) => Some(leader::Lease::new(kube.clone(), o).await.map_err(Stopped::Lease)?),
    };
    if let Some(l) = &mut lease {
        tracing::info!("waiting for the leader lease");
        tokio::select! {
            _ = l.acquire() => {}
            _ = shutdown.clone() => return Ok(()),
        }
        tracing::info!("leading: starting the controllers");
    }
    health.set_leading(true);
    let running = run(ctx, shutdown.clone(), Some(&health.caches));
    let outcome = match &lease {
        None => {
            running.await;
            Ok(())
        }
        Some(l) => {
            tokio::select! {
                _ = running => Ok(()),
                _ = l.lost() => Err(Stopped::LostLease),
            }
        }
    };
    health.set_leading(false);
    if let (Some(l), Ok(())) = (&lease, &outcome) {
        l.release().await;
    }
    outcome
}
