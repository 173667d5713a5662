//! End to end: the real `causeway operator` binary against a Kubernetes API and a real
//! nats-server, driven by kubectl as a user would.
//!
//! Each test starts its own Kubernetes API, nats-server and operator process(es) (so they run in
//! parallel) and bounds every wait in time. What each proves is in its doc comment.
//!
//! **Where the Kubernetes API comes from.** By default, the in-memory API emulator
//! (`tests/kube/kube_emulator.py`, see its deviations at the top: no validation or defaulting,
//! server-side apply is a merge patch, no garbage collection). To run the same scenarios against a
//! real cluster (kind, k3d, a test cluster), point `CAUSEWAY_E2E_KUBECONFIG` at its kubeconfig:
//!
//! ```sh
//! CAUSEWAY_E2E_KUBECONFIG=$HOME/.kube/kind-config cargo nextest run -p causeway-tests --test operator_e2e
//! ```
//!
//! Then every test applies `crds/` with kubectl, works in a namespace of its own
//! (`cw-e2e-<test>-<random>`, deleted at the end with the finalizers removed first), runs the
//! operator on this machine (`--namespaces <that namespace>`, its lease and webhook Secret in
//! that namespace, `--webhook-config ""` so that no cluster-wide webhook configuration is
//! touched) and nats-server on loopback as usual. The emulator's request log does not exist there, so the idle
//! test counts API writes by resourceVersions and Events instead (see `idle_*`). The kubeconfig's
//! user needs to manage CRDs, namespaces, the three kinds, Leases and Events. Nothing is skipped
//! in either mode: a missing tool fails the test and says what to install.
//!
//! **Idle time.** The idle test watches a quiet operator for `CAUSEWAY_E2E_IDLE_SECS` seconds
//! (default 20, about seven resyncs of 3 s). The two minutes the operator's acceptance asks for:
//!
//! ```sh
//! CAUSEWAY_E2E_IDLE_SECS=120 cargo nextest run -p causeway-tests --test operator_e2e idle
//! ```
//!
//! **Logs.** `CAUSEWAY_E2E_LOG` sets the operators' `CAUSEWAY_LOG` (default `info`); a failing
//! test prints the last 300 lines of each operator's log.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer, stream};
use causeway_api::crd::{EventStore, Listener, Node};
use causeway_tests::{
    KubeEmulator, NatsServer, Operator, OperatorOptions, RequestMark, Run, TempDir, crds_dir, examples_dir,
    kube_client_at, kubectl_at, printer_columns,
};
use futures::{StreamExt, TryStreamExt};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, ListParams},
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The Kubernetes side: the emulator, or a real cluster.
// ---------------------------------------------------------------------------------------------

/// The Kubernetes API of one test, and the namespace it works in.
struct Kube {
    emu: Option<KubeEmulator>,
    kubeconfig: PathBuf,
    scratch: TempDir,
    /// `shop` on the emulator (the examples' own namespace), a fresh one on a real cluster.
    ns: String,
}

impl Kube {
    fn start(test: &str) -> Self {
        let scratch = TempDir::new("cw-e2e");
        match std::env::var_os("CAUSEWAY_E2E_KUBECONFIG") {
            None => {
                let emu = KubeEmulator::start();
                emu.create_namespace("shop");
                Self { kubeconfig: emu.kubeconfig(), emu: Some(emu), scratch, ns: "shop".into() }
            }
            Some(kc) => {
                let suffix = format!("{:08x}", rand_u32());
                let mut slug: String = test.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                slug.truncate(40);
                let ns = format!("cw-e2e-{}-{suffix}", slug.trim_matches('-')).to_lowercase();
                let k = Self { emu: None, kubeconfig: PathBuf::from(kc), scratch, ns };
                let crds = crds_dir().display().to_string();
                let r = k.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &crds]);
                assert_eq!(r.code, 0, "kubectl apply -f crds/ on the cluster: {}{}", r.stdout, r.stderr);
                let r = k.kubectl(&[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/eventstores.causeway.dev",
                    "crd/nodes.causeway.dev",
                    "crd/listeners.causeway.dev",
                ]);
                assert_eq!(r.code, 0, "CRDs not established: {}{}", r.stdout, r.stderr);
                let r = k.apply(&format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n", k.ns));
                assert_eq!(r.code, 0, "create namespace {}: {}{}", k.ns, r.stdout, r.stderr);
                k
            }
        }
    }

    fn kubectl(&self, args: &[&str]) -> Run {
        match &self.emu {
            Some(e) => e.kubectl(args),
            None => kubectl_at(&self.kubeconfig, &self.scratch.path().join("kube-cache"), args, None),
        }
    }

    /// `kubectl apply -f -` with `yaml`.
    fn apply(&self, yaml: &str) -> Run {
        match &self.emu {
            Some(e) => e.kubectl_apply_yaml(yaml),
            None => {
                kubectl_at(&self.kubeconfig, &self.scratch.path().join("kube-cache"), &["apply", "-f", "-"], Some(yaml))
            }
        }
    }

    /// Like `kubectl`, asserting success.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.kubectl(args);
        assert_eq!(r.code, 0, "kubectl {args:?}: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {all:?}: not JSON ({e}): {out}"))
    }

    /// `kubectl get <kind> <name> -n <ns> -o json`, `None` when it does not exist.
    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let out = self.ok(&["get", kind, name, "-n", &self.ns, "--ignore-not-found", "-o", "json"]);
        (!out.trim().is_empty()).then(|| serde_json::from_str(&out).expect("kubectl get JSON"))
    }

    /// Events (events.k8s.io/v1) about `name`, as `(type, reason, note)`.
    fn events_about(&self, name: &str) -> Vec<(String, String, String)> {
        let list = self.json(&["get", "events.events.k8s.io", "-n", &self.ns]);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["regarding"]["name"] == name)
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("type"), s("reason"), s("note"))
            })
            .collect()
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        if self.emu.is_some() {
            return;
        }
        // A real cluster: the operators are gone, so let every object go, then the namespace.
        for kind in ["eventstores.causeway.dev", "nodes.causeway.dev", "listeners.causeway.dev"] {
            let r = self.kubectl(&["get", kind, "-n", &self.ns, "-o", "name"]);
            for obj in r.stdout.lines().filter(|l| !l.is_empty()) {
                let _ = self.kubectl(&[
                    "patch",
                    obj,
                    "-n",
                    &self.ns,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
        let _ = self.kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)) ^ (t.as_secs() as u32)
}

// ---------------------------------------------------------------------------------------------
// One test's world: Kubernetes, NATS, clients.
// ---------------------------------------------------------------------------------------------

struct World {
    kube: Kube,
    nats: NatsServer,
    nc: async_nats::Client,
    js: jetstream::Context,
    client: kube::Client,
}

impl World {
    async fn start(test: &str) -> Self {
        let kube = Kube::start(test);
        let nats = NatsServer::start();
        let nc = nats.client().await;
        let js = jetstream::new(nc.clone());
        let client = kube_client_at(&kube.kubeconfig).await;
        Self { kube, nats, nc, js, client }
    }

    fn ns(&self) -> &str {
        &self.kube.ns
    }

    /// The operator's flags for these tests: a short resync, a short lease, short NATS
    /// timeouts; on a real cluster only this test's namespace.
    fn operator(&self, resync: &str) -> OperatorOptions {
        let mut o = OperatorOptions::new(&self.kube.kubeconfig, &self.nats.url)
            .flag("--resync", resync)
            .flag("--lease-duration", "4s")
            .flag("--lease-namespace", self.ns())
            .flag("--nats-timeout", "3s")
            .flag("--cleanup-timeout", "2s");
        if let Ok(filter) = std::env::var("CAUSEWAY_E2E_LOG") {
            o.log_filter = filter;
        }
        if self.kube.emu.is_none() {
            // Only this test's namespace, and hands off the cluster's webhook configuration (a
            // real installation's caBundle must not be rewritten by a test).
            o = o.flag("--namespaces", self.ns()).flag("--webhook-config", "");
        }
        o
    }

    /// Starts an operator and waits until it is ready.
    fn start_operator(&self, resync: &str) -> Operator {
        let mut op = self.operator(resync).start();
        op.wait_ready(Duration::from_secs(30));
        op
    }

    /// The examples' YAML with their namespace replaced by this test's.
    fn examples_yaml(&self) -> String {
        let mut docs = Vec::new();
        for f in ["stores.yaml", "nodes.yaml", "listeners.yaml"] {
            let text = std::fs::read_to_string(examples_dir().join(f)).expect("read example");
            docs.push(text.replace("namespace: shop", &format!("namespace: {}", self.ns())));
        }
        docs.join("\n---\n")
    }

    /// `kubectl apply -f examples/` (on a real cluster: the same files in this test's namespace).
    fn apply_examples(&self) {
        let r = if self.kube.emu.is_some() {
            self.kube.kubectl(&["apply", "-f", &examples_dir().display().to_string()])
        } else {
            self.kube.apply(&self.examples_yaml())
        };
        assert_eq!(r.code, 0, "kubectl apply -f examples/: {}{}", r.stdout, r.stderr);
    }

    fn apply(&self, yaml: &str) {
        let r = self.kube.apply(yaml);
        assert_eq!(r.code, 0, "kubectl apply: {}{}\n{yaml}", r.stdout, r.stderr);
    }

    /// Every Causeway object of the namespace, through kube-rs (cheap enough to poll).
    async fn objects(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for ar in [
            ApiResource::erase::<EventStore>(&()),
            ApiResource::erase::<Node>(&()),
            ApiResource::erase::<Listener>(&()),
        ] {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), self.ns(), &ar);
            match api.list(&ListParams::default()).await {
                Ok(list) => out.extend(list.items.into_iter().map(|o| {
                    let mut v = serde_json::to_value(o).expect("object JSON");
                    v["kind"] = json!(ar.kind);
                    v
                })),
                Err(e) => panic!("list {}: {e}", ar.plural),
            }
        }
        out
    }

    /// Waits until exactly `names` (`Kind/name`) exist and all are Ready for their current
    /// generation; panics after `within` with the objects that are not.
    async fn wait_ready(&self, names: &BTreeSet<String>, within: Duration) -> Vec<Value> {
        poll(within, "every object Ready", || async {
            let objs = self.objects().await;
            let have: BTreeSet<String> = objs.iter().map(key).collect();
            if &have != names {
                return Err(format!("objects {:?} differ from {:?}", have.difference(names), names.difference(&have)));
            }
            let not: Vec<String> = objs
                .iter()
                .filter(|o| !ready_now(o))
                .map(|o| format!("{} {:?}", key(o), ready_of(o)))
                .take(10)
                .collect();
            if not.is_empty() { Ok(objs) } else { Err(format!("not ready: {not:?}")) }
        })
        .await
    }

    async fn registry_keys(&self) -> BTreeSet<String> {
        let kv = self.js.get_key_value("CW_REGISTRY").await.expect("registry bucket");
        kv.keys().await.expect("registry keys").try_collect().await.expect("registry keys")
    }

    async fn stream_names(&self) -> BTreeSet<String> {
        self.js.stream_names().try_collect().await.expect("stream names")
    }

    async fn stream(&self, name: &str) -> Option<stream::Info> {
        match self.js.get_stream(name).await {
            Ok(mut s) => Some(s.info().await.expect("stream info").clone()),
            Err(_) => None,
        }
    }

    async fn consumers(&self, stream: &str) -> BTreeMap<String, consumer::Info> {
        let s = self.js.get_stream(stream).await.expect("stream");
        let infos: Vec<consumer::Info> = s.consumers().try_collect().await.expect("consumers");
        infos.into_iter().map(|i| (i.name.clone(), i)).collect()
    }

    async fn consumer(&self, stream: &str, name: &str) -> consumer::Info {
        let s = self.js.get_stream(stream).await.expect("stream");
        s.consumer_info(name).await.unwrap_or_else(|e| panic!("consumer {name} on {stream}: {e}"))
    }

    /// Publishes `n` messages to `subject` through JetStream, each acknowledged.
    async fn publish(&self, subject: &str, n: usize) {
        for i in 0..n {
            self.js
                .publish(subject.to_string(), format!("event {i}").into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
    }
}

/// `Kind/name` of an object.
fn key(o: &Value) -> String {
    format!("{}/{}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?"))
}

fn keys(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The Ready condition: `(status, reason, message)`.
fn ready_of(o: &Value) -> Option<(String, String, String)> {
    let c = o["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// Ready=True, reported for the object's current generation.
fn ready_now(o: &Value) -> bool {
    ready_of(o).is_some_and(|(s, _, _)| s == "True") && observed_current(o)
}

fn observed_current(o: &Value) -> bool {
    let g = &o["metadata"]["generation"];
    !g.is_null() && o["status"]["observedGeneration"] == *g
}

/// Polls `f` every 200 ms until it returns `Ok`; panics after `within` with its last `Err`.
async fn poll<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn crd_yaml(plural: &str) -> String {
    std::fs::read_to_string(crds_dir().join(format!("{plural}.causeway.dev.yaml"))).expect("CRD file")
}

/// The example objects, as `Kind/name`.
fn example_keys() -> BTreeSet<String> {
    keys(&[
        "EventStore/orders",
        "EventStore/dead-letters",
        "Node/orders",
        "Node/inventory",
        "Node/shipping",
        "Listener/reserve-stock",
        "Listener/ship-order",
        "Listener/order-history",
    ])
}

/// Registry keys of the examples in `ns`.
fn example_registry_keys(ns: &str) -> BTreeSet<String> {
    [
        "eventstore.orders",
        "eventstore.dead-letters",
        "node.orders",
        "node.inventory",
        "node.shipping",
        "listener.reserve-stock",
        "listener.ship-order",
        "listener.order-history",
    ]
    .iter()
    .map(|k| format!("{ns}.{k}"))
    .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Stream configs (as JSON), by name.
async fn stream_configs(js: &jetstream::Context) -> BTreeMap<String, Value> {
    let infos: Vec<stream::Info> = js.streams().try_collect().await.expect("streams");
    infos.into_iter().map(|i| (i.config.name.clone(), serde_json::to_value(&i.config).expect("config JSON"))).collect()
}

/// Consumer configs (as JSON) of every stream, by `stream/consumer`.
async fn consumer_configs(js: &jetstream::Context) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let names: Vec<String> = js.stream_names().try_collect().await.expect("stream names");
    for s in names {
        let stream = js.get_stream(&s).await.expect("stream");
        let infos: Vec<consumer::Info> = stream.consumers().try_collect().await.expect("consumers");
        for i in infos {
            out.insert(format!("{s}/{}", i.name), serde_json::to_value(&i.config).expect("consumer JSON"));
        }
    }
    out
}

/// Registry records, with the fields that name who wrote them (`manager`) and from what
/// (`generation`) removed.
async fn registry_records(js: &jetstream::Context) -> BTreeMap<String, Value> {
    let kv = js.get_key_value("CW_REGISTRY").await.expect("registry");
    let keys: Vec<String> = kv.keys().await.expect("keys").try_collect().await.expect("keys");
    let mut out = BTreeMap::new();
    for k in keys {
        let bytes = kv.get(&k).await.expect("get record").expect("record");
        let mut v: Value = serde_json::from_slice(&bytes).expect("record JSON");
        strip_fields(&mut v, &["manager", "generation"]);
        out.insert(k, v);
    }
    out
}

fn strip_fields(v: &mut Value, fields: &[&str]) {
    match v {
        Value::Object(m) => {
            for f in fields {
                m.remove(*f);
            }
            for x in m.values_mut() {
                strip_fields(x, fields);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| strip_fields(x, fields)),
        _ => {}
    }
}

/// Scenario 1. `kubectl apply -f examples/` makes every object Ready; the JetStream objects are
/// exactly what `causeway apply` makes of the same manifests (streams, consumers, registry
/// records compared whole), and the fields the manifests set are checked one by one; every
/// printer column of every object tells the truth about JetStream (names, event counts,
/// consumers, pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_become_ready_with_the_jetstream_objects_they_ask_for() {
    let started = Instant::now();
    let w = World::start("examples").await;
    let ns = w.ns().to_string();
    let op = w.start_operator("2s");
    w.apply_examples();
    w.wait_ready(&example_keys(), Duration::from_secs(30)).await;
    let ready_after = started.elapsed();
    // The operator's own count agrees.
    for (kind, n) in [("EventStore", 2.0), ("Node", 3.0), ("Listener", 3.0)] {
        assert_eq!(object_gauges(&op, kind), (n, 0.0, 0.0), "{kind}: {}", op.metrics());
    }

    // The same manifests through `causeway apply`'s code path, on a second server.
    let other = NatsServer::start();
    let other_nc = other.client().await;
    let lines = causeway_operator::local::apply_yaml(&other_nc, &w.examples_yaml()).await.expect("causeway apply");
    assert_eq!(lines.len(), 8, "{lines:?}");
    let other_js = jetstream::new(other_nc);
    let (ours, theirs) = (stream_configs(&w.js).await, stream_configs(&other_js).await);
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "the same streams");
    for (name, cfg) in &ours {
        assert_eq!(cfg, &theirs[name], "stream {name}: the operator's config differs from causeway apply's");
    }
    let (ours_c, theirs_c) = (consumer_configs(&w.js).await, consumer_configs(&other_js).await);
    assert_eq!(ours_c, theirs_c, "consumers differ from causeway apply's");
    assert_eq!(ours_c.len(), 3, "one consumer per listener: {:?}", ours_c.keys());
    let (ours_r, theirs_r) = (registry_records(&w.js).await, registry_records(&other_js).await);
    assert_eq!(ours_r, theirs_r, "registry records differ from causeway apply's");
    assert_eq!(ours_r.keys().cloned().collect::<BTreeSet<_>>(), example_registry_keys(&ns));

    // Field by field, what the manifests ask for.
    let s = |n: &str| ours.get(n).unwrap_or_else(|| panic!("stream {n} missing: {:?}", ours.keys())).clone();
    let day = 86_400u64 * 1_000_000_000;
    let orders = s(&format!("CW_ES_{ns}_orders"));
    assert_eq!(orders["subjects"], json!([format!("cw.{ns}.es.orders.>"), format!("cw.{ns}.replay.es.orders.>")]));
    assert_eq!(orders["max_age"], json!(30 * day), "retention.maxAge 30d");
    assert_eq!(orders["max_bytes"], json!(1u64 << 30), "retention.maxBytes 1Gi");
    assert_eq!(orders["duplicate_window"], json!(120u64 * 1_000_000_000), "duplicateWindow 2m");
    assert_eq!(orders["max_consumers"], json!(1000), "maxConsumers default");
    assert_eq!(orders["num_replicas"], json!(1));
    assert_eq!(orders["storage"], json!("file"));
    assert_eq!(orders["retention"], json!("limits"));
    assert_eq!(
        orders["republish"],
        json!({"src": format!("cw.{ns}.es.orders.>"), "dest": format!("cw.{ns}.live.orders.>"), "headers_only": true}),
        "live announcements"
    );
    let dead = s(&format!("CW_ES_{ns}_dead-letters"));
    assert_eq!(
        dead["subjects"],
        json!([format!("cw.{ns}.es.dead-letters.>"), format!("cw.{ns}.replay.es.dead-letters.>")])
    );
    assert_eq!(dead["republish"]["dest"], json!(format!("cw.{ns}.live.dead-letters.>")));
    assert_eq!(dead["max_age"], json!(14 * day), "retention.maxAge 14d");
    for node in ["orders", "inventory", "shipping"] {
        let inbox = s(&format!("CW_IN_{ns}_{node}"));
        assert_eq!(
            inbox["subjects"],
            json!([
                format!("cw.{ns}.to.{node}.>"),
                format!("cw.{ns}.in.{node}.>"),
                format!("cw.{ns}.replay.in.{node}.>")
            ])
        );
        assert_eq!(inbox["max_consumers"], json!(1000));
        s(&format!("KV_CW_ST_{ns}_{node}"));
    }
    s(&format!("KV_CW_GL_{ns}"));
    s(&format!("OBJ_CW_BLOB_{ns}"));
    s("KV_CW_REGISTRY");
    let c = |k: &str| ours_c.get(k).unwrap_or_else(|| panic!("consumer {k} missing: {:?}", ours_c.keys())).clone();
    let reserve = c(&format!("CW_IN_{ns}_inventory/cw_{ns}_reserve-stock"));
    assert_eq!(reserve["durable_name"], json!(format!("cw_{ns}_reserve-stock")));
    assert_eq!(
        reserve["filter_subjects"],
        json!([
            format!("cw.{ns}.to.inventory.*.*.order-placed"),
            format!("cw.{ns}.in.inventory.order-placed"),
            format!("cw.{ns}.replay.in.inventory.reserve-stock.>")
        ]),
        "types, under both inbox layouts, and its replayed dead letters"
    );
    assert_eq!(reserve["ack_wait"], json!(30u64 * 1_000_000_000), "the node's ackWait");
    assert_eq!(reserve["max_ack_pending"], json!(16), "the node's maxInFlight");
    assert_eq!(reserve["max_deliver"], json!(5), "delivery.maxDeliver");
    assert_eq!(reserve["ack_policy"], json!("explicit"));
    assert_eq!(reserve["deliver_policy"], json!("new"), "startAt default");
    let ship = c(&format!("CW_IN_{ns}_shipping/cw_{ns}_ship-order"));
    assert_eq!(
        ship["filter_subjects"],
        json!([
            format!("cw.{ns}.to.shipping.*.*.stock-reserved"),
            format!("cw.{ns}.in.shipping.stock-reserved"),
            format!("cw.{ns}.replay.in.shipping.ship-order.>")
        ])
    );
    assert_eq!(ship["max_ack_pending"], json!(1), "ordered: one at a time");
    let history = c(&format!("CW_ES_{ns}_orders/cw_{ns}_order-history"));
    assert_eq!(history["deliver_policy"], json!("all"), "startAt: all");
    assert_eq!(history["max_ack_pending"], json!(32), "the node's default maxInFlight");

    // Figures: 3 orders, 2 order-placed to inventory (reserve-stock's filter), 1 other event to
    // shipping (not ship-order's filter). The printer columns must show them after a resync.
    w.publish(&format!("cw.{ns}.es.orders.order-1"), 3).await;
    w.publish(&format!("cw.{ns}.in.inventory.order-placed"), 2).await;
    w.publish(&format!("cw.{ns}.in.shipping.something-else"), 1).await;
    let expected = |plural: &str, o: &Value, st: &BTreeMap<String, stream::Info>, cons: &BTreeMap<String, u64>| {
        let name = o["metadata"]["name"].as_str().unwrap().to_string();
        let created = o["metadata"]["creationTimestamp"].as_str().map(str::to_string);
        let some = |s: &str| Some(s.to_string());
        let ready = [("Ready", some("True")), ("Reason", some("Reconciled"))];
        let mut cols: Vec<(String, Option<String>)> = ready.iter().map(|(c, v)| (c.to_string(), v.clone())).collect();
        match plural {
            "eventstores" => {
                let sn = format!("CW_ES_{ns}_{name}");
                let info = &st[&sn];
                cols.push(("Stream".into(), some(&sn)));
                cols.push(("Events".into(), Some(info.state.messages.to_string())));
                cols.push(("Consumers".into(), Some(info.state.consumer_count.to_string())));
            }
            "nodes" => {
                let sn = format!("CW_IN_{ns}_{name}");
                cols.push(("Inbox".into(), some(&sn)));
                cols.push(("Events".into(), Some(st[&sn].state.messages.to_string())));
            }
            _ => {
                let cn = format!("cw_{ns}_{name}");
                cols.push(("Node".into(), o["spec"]["node"].as_str().map(str::to_string)));
                cols.push(("Consumer".into(), some(&cn)));
                cols.push(("Pending".into(), Some(cons[&cn].to_string())));
            }
        }
        cols.push(("Age".into(), created));
        cols
    };
    let expect_pending = BTreeMap::from([
        (format!("cw_{ns}_reserve-stock"), 2u64),
        (format!("cw_{ns}_ship-order"), 0),
        (format!("cw_{ns}_order-history"), 3),
    ]);
    let mut checked = 0;
    for (plural, kind) in [("eventstores", "cwes"), ("nodes", "cwnode"), ("listeners", "cwl")] {
        let crd = crd_yaml(plural);
        let names: Vec<String> = example_keys()
            .iter()
            .filter(|k| k.to_lowercase().starts_with(&plural[..plural.len() - 1]))
            .map(|k| k.split_once('/').unwrap().1.to_string())
            .collect();
        for name in names {
            let (obj, got, want) = poll(Duration::from_secs(15), &format!("{kind} {name}'s columns"), || async {
                let obj = w.kube.get(kind, &name).ok_or("gone")?;
                let mut st = BTreeMap::new();
                for s in w.js.stream_names().try_collect::<Vec<String>>().await.map_err(|e| e.to_string())? {
                    st.insert(s.clone(), w.stream(&s).await.ok_or("stream gone")?);
                }
                let mut cons = BTreeMap::new();
                for (cn, stream) in [
                    (format!("cw_{ns}_reserve-stock"), format!("CW_IN_{ns}_inventory")),
                    (format!("cw_{ns}_ship-order"), format!("CW_IN_{ns}_shipping")),
                    (format!("cw_{ns}_order-history"), format!("CW_ES_{ns}_orders")),
                ] {
                    cons.insert(cn.clone(), w.consumer(&stream, &cn).await.num_pending);
                }
                let got = printer_columns(&crd, &obj);
                let want = expected(plural, &obj, &st, &cons);
                if got == want {
                    Ok((obj, got, want))
                } else {
                    Err(format!("columns {got:?}, JetStream says {want:?}"))
                }
            })
            .await;
            assert_eq!(got, want);
            checked += 1;
            // The figures are the ones published above, not zeros that happen to agree.
            let cell = |c: &str| got.iter().find(|(n, _)| n == c).and_then(|(_, v)| v.clone());
            match (plural, name.as_str()) {
                ("eventstores", "orders") => {
                    assert_eq!((cell("Events"), cell("Consumers")), (Some("3".into()), Some("1".into())));
                }
                ("nodes", "inventory") => assert_eq!(cell("Events").as_deref(), Some("2")),
                ("nodes", "shipping") => assert_eq!(cell("Events").as_deref(), Some("1")),
                ("listeners", l) => {
                    let want = expect_pending[&format!("cw_{ns}_{l}")].to_string();
                    assert_eq!(cell("Pending"), Some(want), "{l}");
                }
                _ => {}
            }
            assert_eq!(obj["metadata"]["finalizers"], json!(["causeway.dev/cleanup"]), "{kind} {name}");
        }
    }
    assert_eq!(checked, 8);
    eprintln!("examples Ready after {}, whole test {}", secs(ready_after), secs(started.elapsed()));
}

/// Scenario 2. Spec changes reach JetStream without a resync (300 s here): an EventStore's
/// retention.maxAge updates its stream in place (same stream, events kept), a Listener's
/// maxInFlight its consumer's max_ack_pending; `observedGeneration` (the status's and the
/// condition's) follows `metadata.generation`, and an `Updated` event names the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_changes_reach_jetstream_and_observed_generation_follows() {
    let started = Instant::now();
    let w = World::start("spec-change").await;
    let ns = w.ns().to_string();
    let _op = w.start_operator("300s");
    w.apply_examples();
    w.wait_ready(&example_keys(), Duration::from_secs(30)).await;
    let orders = format!("CW_ES_{ns}_orders");
    w.publish(&format!("cw.{ns}.es.orders.o-1"), 2).await;
    let created = w.stream(&orders).await.expect("stream").created;

    let t = Instant::now();
    w.kube.ok(&[
        "patch",
        "cwes",
        "orders",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"retention":{"maxAge":"60d"}}}"#,
    ]);
    w.kube.ok(&[
        "patch",
        "cwl",
        "reserve-stock",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"delivery":{"maxInFlight":4}}}"#,
    ]);
    poll(Duration::from_secs(10), "maxAge 60d and max_ack_pending 4 in JetStream", || async {
        let age = w.stream(&orders).await.map(|s| s.config.max_age);
        let pending = w
            .consumer(&format!("CW_IN_{ns}_inventory"), &format!("cw_{ns}_reserve-stock"))
            .await
            .config
            .max_ack_pending;
        if age == Some(Duration::from_secs(60 * 86_400)) && pending == 4 {
            Ok(())
        } else {
            Err(format!("max_age {age:?}, max_ack_pending {pending}"))
        }
    })
    .await;
    let applied = t.elapsed();
    let info = w.stream(&orders).await.expect("stream");
    assert_eq!(info.created, created, "updated in place, not recreated");
    assert_eq!(info.state.messages, 2, "events kept");

    for (kind, name) in [("cwes", "orders"), ("cwl", "reserve-stock")] {
        let o = poll(Duration::from_secs(10), &format!("{kind} {name} observed generation 2"), || async {
            let o = w.kube.get(kind, name).ok_or("gone")?;
            if ready_now(&o) { Ok(o) } else { Err(format!("{}", o["status"])) }
        })
        .await;
        assert_eq!(o["metadata"]["generation"], 2, "{kind} {name}");
        assert_eq!(o["status"]["observedGeneration"], 2, "{kind} {name}");
        let cond = o["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(cond["observedGeneration"], 2, "{kind} {name}: the condition's observedGeneration");
        let events = w.kube.events_about(name);
        assert!(
            events.iter().any(|(t, r, _)| t == "Normal" && r == "Updated"),
            "{kind} {name}: no Updated event: {events:?}"
        );
    }
    let notes = w.kube.events_about("orders");
    assert!(
        notes.iter().any(|(_, r, n)| r == "Updated" && n.contains("max_age")),
        "the note names the field: {notes:?}"
    );
    // Objects that were not changed stay at generation 1.
    let dead = w.kube.get("cwes", "dead-letters").unwrap();
    assert_eq!(
        (dead["metadata"]["generation"].clone(), dead["status"]["observedGeneration"].clone()),
        (json!(1), json!(1))
    );
    eprintln!("changes in JetStream {} after the patches; whole test {}", secs(applied), secs(started.elapsed()));
}

/// Scenario 12. A Node's delivery.ackWait change re-reconciles its Listeners at once (a Listener
/// inherits it): the consumer's ack_wait follows within seconds, with a resync of 300 s, although
/// the Listener itself did not change (its generation stays 1). Deleting a Node turns its
/// listeners `SourceNotFound` as promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_change_rereconciles_its_listeners_without_a_resync() {
    let started = Instant::now();
    let w = World::start("dependents").await;
    let ns = w.ns().to_string();
    let _op = w.start_operator("300s");
    w.apply_examples();
    w.wait_ready(&example_keys(), Duration::from_secs(30)).await;
    let (inbox, consumer) = (format!("CW_IN_{ns}_inventory"), format!("cw_{ns}_reserve-stock"));
    assert_eq!(w.consumer(&inbox, &consumer).await.config.ack_wait, Duration::from_secs(30));

    let t = Instant::now();
    w.kube.ok(&[
        "patch",
        "cwnode",
        "inventory",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"delivery":{"ackWait":"45s","maxInFlight":8}}}"#,
    ]);
    let c = poll(Duration::from_secs(10), "the listener's consumer to follow its node", || async {
        let c = w.consumer(&inbox, &consumer).await;
        if c.config.ack_wait == Duration::from_secs(45) {
            Ok(c)
        } else {
            Err(format!("ack_wait {:?}", c.config.ack_wait))
        }
    })
    .await;
    let took = t.elapsed();
    assert_eq!(c.config.max_ack_pending, 8, "maxInFlight follows too");
    // The other listeners' consumers are untouched.
    assert_eq!(
        w.consumer(&format!("CW_IN_{ns}_shipping"), &format!("cw_{ns}_ship-order")).await.config.ack_wait,
        Duration::from_secs(30)
    );
    let l = w.kube.get("cwl", "reserve-stock").unwrap();
    assert!(ready_now(&l), "{}", l["status"]);
    assert_eq!(l["metadata"]["generation"], 1, "the listener itself did not change");
    let n = poll(Duration::from_secs(10), "the node's status for generation 2", || async {
        let n = w.kube.get("cwnode", "inventory").ok_or("gone")?;
        if ready_now(&n) { Ok(n) } else { Err(n["status"].to_string()) }
    })
    .await;
    assert_eq!(n["status"]["observedGeneration"], 2);
    let reg = registry_records(&w.js).await;
    let rec = &reg[&format!("{ns}.listener.reserve-stock")];
    assert_eq!(rec["delivery"]["ackWait"], "45s", "the listener's registry record (what sidecars follow): {rec}");
    assert_eq!(rec["delivery"]["maxInFlight"], 8, "{rec}");
    assert!(took < Duration::from_secs(5), "took {took:?}: a resync (300 s) cannot explain it, but this is slow");

    // A node that goes away is noticed as promptly: deleting the Node `orders` turns its
    // listener `order-history` SourceNotFound without a resync. (Deleting a Retain *store* would
    // not: its stream stays, and the listener's consumer on it still works.)
    let t = Instant::now();
    w.kube.ok(&["delete", "cwnode", "orders", "-n", &ns, "--timeout=30s"]);
    poll(Duration::from_secs(10), "order-history SourceNotFound", || async {
        let l = w.kube.get("cwl", "order-history").ok_or("gone")?;
        match ready_of(&l) {
            Some((s, r, m)) if s == "False" && r == "SourceNotFound" && m.contains("orders") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let gone = t.elapsed();
    eprintln!(
        "consumer followed its node after {}; listener saw its node go after {}; whole test {}",
        secs(took),
        secs(gone),
        secs(started.elapsed())
    );
}

/// A condition of an object by type: `(status, reason, message)`.
fn condition_of(o: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = o["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// The first schema in the registry record `key`.
async fn first_schema(js: &jetstream::Context, key: &str) -> Value {
    registry_records(js).await[key]["schemas"][0].clone()
}

fn schema_config_map(ns: &str, schema: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ledger-schemas\n  namespace: {ns}\ndata:\n  entry.json: '{schema}'\n"
    )
}

/// Scenario 13. Schemas read from a ConfigMap follow the ConfigMap, not the resync (300 s here):
/// a changed schema reaches the registry records of the store and the node that read it within
/// seconds, although neither object changed; one that rejects an event already stored turns `SchemasCompatible`
/// False (`SchemaNarrowed`) and emits one Warning Event, not one per reconcile; a deleted
/// ConfigMap turns the store `SchemaNotResolved`, and its return makes it Ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_config_map_changes_reach_the_store_without_a_resync() {
    let started = Instant::now();
    let w = World::start("schema-cm").await;
    let ns = w.ns().to_string();
    let _op = w.start_operator("300s");
    w.apply(&schema_config_map(&ns, r#"{"type":"object"}"#));
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata:\n  name: ledger\n  namespace: {ns}\nspec:\n  schemas:\n    - type: entry\n      configMapRef: {{name: ledger-schemas, key: entry.json}}\n"
    ));
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata:\n  name: clerk\n  namespace: {ns}\nspec:\n  schemas:\n    - type: entry\n      configMapRef: {{name: ledger-schemas, key: entry.json}}\n"
    ));
    w.wait_ready(&keys(&["EventStore/ledger", "Node/clerk"]), Duration::from_secs(30)).await;
    let (store_key, node_key) = (format!("{ns}.eventstore.ledger"), format!("{ns}.node.clerk"));
    assert_eq!(first_schema(&w.js, &store_key).await["schema"], json!({"type": "object"}));
    assert_eq!(first_schema(&w.js, &node_key).await["schema"], json!({"type": "object"}));

    // An event the next schema rejects: amount 5 is below its minimum.
    let env: causeway_api::envelope::Envelope = serde_json::from_value(json!({
        "id": "entry-1", "type": "entry", "payload": {"amount": 5}, "subject": "acct",
        "time": "2026-11-25T12:00:00Z", "sender": format!("{ns}/web"), "correlationId": "entry-1", "lamport": 1
    }))
    .unwrap();
    w.js.publish(format!("cw.{ns}.es.ledger.acct"), env.encode().into()).await.unwrap().await.unwrap();

    let t = Instant::now();
    w.apply(&schema_config_map(&ns, r#"{"type":"object","properties":{"amount":{"minimum":10}}}"#));
    let s = poll(Duration::from_secs(15), "SchemasCompatible False after the ConfigMap changed", || async {
        let s = w.kube.get("cwes", "ledger").ok_or("gone")?;
        match condition_of(&s, "SchemasCompatible") {
            Some((st, r, _)) if st == "False" && r == "SchemaNarrowed" => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let took = t.elapsed();
    assert!(ready_now(&s), "narrowing is reported, never blocking: {}", s["status"]);
    assert_eq!(s["metadata"]["generation"], 1, "the EventStore itself did not change");
    let (_, _, message) = condition_of(&s, "SchemasCompatible").unwrap();
    assert!(message.contains("entry-1") && message.contains("/amount"), "{message}");
    let in_record = first_schema(&w.js, &store_key).await;
    assert_eq!(in_record["schema"]["properties"]["amount"]["minimum"], 10, "the record follows: {in_record}");
    assert_eq!(in_record["narrowed"]["id"], "entry-1", "{in_record}");
    let node_schema = poll(Duration::from_secs(5), "the node's record to follow", || async {
        let r = first_schema(&w.js, &node_key).await;
        if r["schema"]["properties"]["amount"]["minimum"] == 10 { Ok(r) } else { Err(r.to_string()) }
    })
    .await;
    assert!(node_schema.get("narrowed").is_none(), "its inbox holds nothing the schema rejects: {node_schema}");
    let n = w.kube.get("cwnode", "clerk").unwrap();
    assert_eq!(condition_of(&n, "SchemasCompatible").map(|c| c.0), Some("True".into()), "{}", n["status"]);
    assert!(took < Duration::from_secs(10), "took {took:?}: a resync (300 s) cannot explain it, but this is slow");

    let narrowed = || {
        w.kube.events_about("ledger").into_iter().filter(|(t, r, _)| t == "Warning" && r == "SchemaNarrowed").count()
    };
    poll(Duration::from_secs(10), "the SchemaNarrowed Event", || async {
        if narrowed() > 0 { Ok(()) } else { Err(format!("{:?}", w.kube.events_about("ledger"))) }
    })
    .await;
    let events = w.kube.events_about("ledger");
    let (_, _, note) = events.iter().find(|(_, r, _)| r == "SchemaNarrowed").unwrap();
    assert!(note.contains("entry-1"), "the Event names the event the schema rejects: {note}");

    // The ConfigMap changes again without touching the schema: reconciled, still narrowed, no
    // second Event.
    w.kube.ok(&["annotate", "configmap", "ledger-schemas", "-n", &ns, "touched=yes"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(narrowed(), 1, "{:?}", w.kube.events_about("ledger"));

    // Gone: SchemaNotResolved at once; back: Ready.
    w.kube.ok(&["delete", "configmap", "ledger-schemas", "-n", &ns]);
    poll(Duration::from_secs(15), "SchemaNotResolved after the ConfigMap went", || async {
        let s = w.kube.get("cwes", "ledger").ok_or("gone")?;
        match ready_of(&s) {
            Some((st, r, m)) if st == "False" && r == "SchemaNotResolved" && m.contains("ledger-schemas") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    w.apply(&schema_config_map(&ns, r#"{"type":"object"}"#));
    w.wait_ready(&keys(&["EventStore/ledger", "Node/clerk"]), Duration::from_secs(15)).await;
    eprintln!("store followed its ConfigMap after {}; whole test {}", secs(took), secs(started.elapsed()));
}

/// Scenario 3. A Listener applied before its Node and store waits as `SourceNotFound` (Ready
/// False, no consumer, no error loop) and becomes Ready as soon as they are applied — well before
/// the resync (300 s), so the watches on Nodes and EventStores did it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_waits_for_its_source_and_becomes_ready_when_it_comes() {
    let started = Instant::now();
    let w = World::start("source-late").await;
    let ns = w.ns().to_string();
    let op = w.start_operator("300s");
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata:\n  name: audit\n  namespace: {ns}\nspec:\n  node: auditor\n  source:\n    store: ledger\n  startAt: all\n  delivery:\n    mode: pull\n"
    ));
    let waiting = poll(Duration::from_secs(15), "SourceNotFound", || async {
        let l = w.kube.get("cwl", "audit").ok_or("gone")?;
        match ready_of(&l) {
            Some((s, r, _)) if s == "False" && r == "SourceNotFound" => Ok(l),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (_, _, message) = ready_of(&waiting).unwrap();
    assert!(message.contains("auditor") || message.contains("ledger"), "the message names what is missing: {message}");
    assert_eq!(waiting["status"]["observedGeneration"], 1);
    assert!(w.stream(&format!("CW_ES_{ns}_ledger")).await.is_none());
    let warnings = w.kube.events_about("audit");
    assert!(warnings.iter().any(|(t, r, _)| t == "Warning" && r == "SourceNotFound"), "{warnings:?}");
    // Waiting is not failing: no error loop. No failure is counted and, once its own status
    // write has come back through the watch, the listener is not reconciled again for 2 s (it
    // waits for a change or the 300 s resync).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waits =
        || op.metric(r#"causeway_operator_reconciles_total{kind="Listener",result="not_ready"}"#).unwrap_or(0.0);
    let before = waits();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(waits(), before, "reconciled again while waiting: {}", op.metrics());
    assert!(before >= 1.0, "{}", op.metrics());
    assert!(!op.metrics().contains("causeway_operator_failures_total{"), "{}", op.metrics());

    let t = Instant::now();
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata:\n  name: auditor\n  namespace: {ns}\nspec: {{}}\n---\napiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata:\n  name: ledger\n  namespace: {ns}\nspec: {{}}\n"
    ));
    w.wait_ready(&keys(&["Listener/audit", "Node/auditor", "EventStore/ledger"]), Duration::from_secs(15)).await;
    let took = t.elapsed();
    let c = w.consumer(&format!("CW_ES_{ns}_ledger"), &format!("cw_{ns}_audit")).await;

    // The same for a dead-letter store: DeadLetterNotFound until it is applied.
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata:\n  name: audit-strict\n  namespace: {ns}\nspec:\n  node: auditor\n  source:\n    store: ledger\n  deadLetter:\n    store: graveyard\n    subject: audit\n"
    ));
    poll(Duration::from_secs(15), "DeadLetterNotFound", || async {
        let l = w.kube.get("cwl", "audit-strict").ok_or("gone")?;
        match ready_of(&l) {
            Some((s, r, _)) if s == "False" && r == "DeadLetterNotFound" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let t2 = Instant::now();
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata:\n  name: graveyard\n  namespace: {ns}\nspec: {{}}\n"
    ));
    let all =
        keys(&["Listener/audit", "Listener/audit-strict", "Node/auditor", "EventStore/ledger", "EventStore/graveyard"]);
    w.wait_ready(&all, Duration::from_secs(15)).await;
    let dead_letter_took = t2.elapsed();
    assert!(dead_letter_took < Duration::from_secs(10), "Ready {dead_letter_took:?} after its dead-letter store came");
    assert_eq!(c.config.deliver_policy, consumer::DeliverPolicy::All);
    let events = w.kube.events_about("audit");
    assert!(events.iter().any(|(t, r, _)| t == "Normal" && r == "Created"), "{events:?}");
    assert!(took < Duration::from_secs(10), "Ready {took:?} after its source came: slow, though not a resync");
    eprintln!("listener Ready {} after its source was applied; whole test {}", secs(took), secs(started.elapsed()));
}

/// Scenario 4. An immutable change (EventStore storage file → memory) is refused, not carried
/// out: Ready=False `ImmutableFieldChanged` with a message that says how to migrate, a Warning
/// event, the stream untouched (file storage, same creation time) with every event stored
/// before, and the operator still running and ready. Changing the spec back makes it Ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_change_is_refused_and_nothing_is_lost() {
    let started = Instant::now();
    let w = World::start("immutable").await;
    let ns = w.ns().to_string();
    let mut op = w.start_operator("300s");
    let manifest = |storage: &str| {
        format!(
            "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata:\n  name: ledger\n  namespace: {ns}\nspec:\n  storage: {storage}\n  deletionPolicy: Delete\n"
        )
    };
    w.apply(&manifest("file"));
    w.wait_ready(&keys(&["EventStore/ledger"]), Duration::from_secs(15)).await;
    let stream = format!("CW_ES_{ns}_ledger");
    w.publish(&format!("cw.{ns}.es.ledger.acct-1"), 5).await;
    let before = w.stream(&stream).await.expect("stream");
    assert_eq!((before.config.storage, before.state.messages), (stream::StorageType::File, 5));

    w.apply(&manifest("memory"));
    let o = poll(Duration::from_secs(10), "ImmutableFieldChanged", || async {
        let o = w.kube.get("cwes", "ledger").ok_or("gone")?;
        match ready_of(&o) {
            Some((s, r, _)) if s == "False" && r == "ImmutableFieldChanged" && observed_current(&o) => Ok(o),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (_, _, message) = ready_of(&o).unwrap();
    assert!(message.contains("storage"), "names the field: {message}");
    assert!(message.contains("To migrate: create a new EventStore"), "says how to migrate: {message}");
    assert_eq!(o["status"]["observedGeneration"], 2);
    let warnings = w.kube.events_about("ledger");
    assert!(
        warnings.iter().any(|(t, r, n)| t == "Warning" && r == "ImmutableFieldChanged" && n.contains("migrate")),
        "{warnings:?}"
    );

    // Nothing happened to the stream or its events, and the operator is fine.
    let after = w.stream(&stream).await.expect("the stream still exists");
    assert_eq!(after.config.storage, stream::StorageType::File);
    assert_eq!(after.created, before.created, "not deleted and recreated");
    assert_eq!(after.state.messages, 5, "the events stored before are intact");
    let s = w.js.get_stream(&stream).await.unwrap();
    for seq in 1..=5 {
        let m = s.get_raw_message(seq).await.expect("stored event");
        assert_eq!(m.payload, format!("event {}", seq - 1).as_bytes());
    }
    assert!(op.is_running(), "the operator does not crash");
    let (code, body) = op.readyz().expect("readyz");
    assert_eq!(code, 200, "{body}");

    // Back to file storage: Ready again, same stream.
    w.apply(&manifest("file"));
    let o = w.wait_ready(&keys(&["EventStore/ledger"]), Duration::from_secs(10)).await;
    assert_eq!(o[0]["status"]["observedGeneration"], 3);
    assert_eq!(w.stream(&stream).await.unwrap().created, before.created);
    eprintln!("whole test {}", secs(started.elapsed()));
}

/// Scenario 5. Deletion honours deletionPolicy: `Retain` keeps an EventStore's stream (with its
/// events) and a Node's inbox and state bucket, `Delete` removes them; a Listener's consumer
/// always goes. The objects disappear (the finalizer is removed), every registry record goes, a
/// `Deleted` event says what was kept and what deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_honours_the_policy_and_releases_the_object() {
    let started = Instant::now();
    let w = World::start("delete").await;
    let ns = w.ns().to_string();
    let _op = w.start_operator("300s");
    let doc = |kind: &str, name: &str, spec: &str| {
        format!(
            "apiVersion: causeway.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec: {spec}\n"
        )
    };
    w.apply(
        &[
            doc("EventStore", "keep", "{}"),
            doc("EventStore", "drop", "{deletionPolicy: Delete}"),
            doc("Node", "keep-node", "{}"),
            doc("Node", "drop-node", "{deletionPolicy: Delete}"),
            doc("Listener", "tail", "{node: keep-node, source: {store: keep}}"),
        ]
        .join("---\n"),
    );
    let all = keys(&["EventStore/keep", "EventStore/drop", "Node/keep-node", "Node/drop-node", "Listener/tail"]);
    w.wait_ready(&all, Duration::from_secs(20)).await;
    w.publish(&format!("cw.{ns}.es.keep.k-1"), 3).await;
    w.publish(&format!("cw.{ns}.es.drop.d-1"), 3).await;
    assert_eq!(w.consumers(&format!("CW_ES_{ns}_keep")).await.len(), 1);
    assert_eq!(w.registry_keys().await.len(), 5);

    let t = Instant::now();
    w.kube.ok(&["delete", "cwl", "tail", "-n", &ns, "--timeout=30s"]);
    w.kube.ok(&["delete", "cwes", "keep", "drop", "-n", &ns, "--timeout=30s"]);
    w.kube.ok(&["delete", "cwnode", "keep-node", "drop-node", "-n", &ns, "--timeout=30s"]);
    let took = t.elapsed();
    assert!(
        w.objects().await.is_empty(),
        "the objects are gone: {:?}",
        w.objects().await.iter().map(key).collect::<Vec<_>>()
    );

    let streams = w.stream_names().await;
    let has = |s: String| streams.contains(&s);
    assert!(has(format!("CW_ES_{ns}_keep")), "Retain keeps the store's stream: {streams:?}");
    assert_eq!(w.stream(&format!("CW_ES_{ns}_keep")).await.unwrap().state.messages, 3, "with its events");
    assert!(!has(format!("CW_ES_{ns}_drop")), "Delete removes the store's stream: {streams:?}");
    assert!(has(format!("CW_IN_{ns}_keep-node")) && has(format!("KV_CW_ST_{ns}_keep-node")), "Retain: {streams:?}");
    assert!(!has(format!("CW_IN_{ns}_drop-node")) && !has(format!("KV_CW_ST_{ns}_drop-node")), "Delete: {streams:?}");
    assert!(w.consumers(&format!("CW_ES_{ns}_keep")).await.is_empty(), "the listener's consumer is deleted");
    assert!(has(format!("KV_CW_GL_{ns}")), "the namespace's global bucket is never deleted");
    assert_eq!(w.registry_keys().await, BTreeSet::new(), "every registry record is gone");

    let deleted = |name: &str| {
        let ev = w.kube.events_about(name);
        ev.into_iter()
            .find(|(t, r, _)| t == "Normal" && r == "Deleted")
            .unwrap_or_else(|| panic!("no Deleted event for {name}"))
            .2
    };
    assert!(
        deleted("keep").contains(&format!("kept by deletionPolicy Retain: stream CW_ES_{ns}_keep")),
        "{}",
        deleted("keep")
    );
    assert!(deleted("drop").contains(&format!("deleted stream CW_ES_{ns}_drop")), "{}", deleted("drop"));
    assert!(deleted("tail").contains(&format!("consumer cw_{ns}_tail")), "{}", deleted("tail"));
    eprintln!("three kubectl deletes took {}; whole test {}", secs(took), secs(started.elapsed()));
}

/// Collects what a JetStream client would call writes: JetStream API requests that create,
/// update, delete or purge anything, and KV puts/deletes (`$KV.>`), as seen on the wire.
struct JetStreamSpy {
    api: async_nats::Subscriber,
    kv: async_nats::Subscriber,
}

impl JetStreamSpy {
    async fn start(nc: &async_nats::Client) -> Self {
        let api = nc.subscribe("$JS.API.>").await.expect("subscribe $JS.API.>");
        let kv = nc.subscribe("$KV.>").await.expect("subscribe $KV.>");
        nc.flush().await.expect("flush");
        Self { api, kv }
    }

    /// `(writes, number of API requests seen)` since the start.
    async fn finish(mut self) -> (Vec<String>, usize) {
        let mut writes = Vec::new();
        let mut requests = 0;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), self.api.next()).await {
            requests += 1;
            let s = m.subject.to_string();
            if ["CREATE", "UPDATE", "DELETE", "PURGE"].iter().any(|w| s.contains(w)) {
                writes.push(s);
            }
        }
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), self.kv.next()).await {
            writes.push(m.subject.to_string());
        }
        (writes, requests)
    }
}

/// What the API looked like, to tell whether anything was written since: the emulator's request
/// log, or on a real cluster every object's resourceVersion and the number of Events.
enum ApiMark {
    Log(RequestMark),
    Versions(BTreeMap<String, String>, usize),
}

impl World {
    async fn api_mark(&self) -> ApiMark {
        match &self.kube.emu {
            Some(e) => ApiMark::Log(e.mark()),
            None => ApiMark::Versions(self.versions().await, self.event_count()),
        }
    }

    async fn versions(&self) -> BTreeMap<String, String> {
        self.objects()
            .await
            .iter()
            .map(|o| (key(o), o["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string()))
            .collect()
    }

    fn event_count(&self) -> usize {
        self.kube.json(&["get", "events.events.k8s.io", "-n", self.ns()])["items"].as_array().map_or(0, Vec::len)
    }

    /// API writes since `mark` other than the leader Lease's, and how many Lease writes (only
    /// known on the emulator).
    async fn api_writes_since(&self, mark: &ApiMark) -> (BTreeMap<String, usize>, Option<usize>) {
        match (mark, &self.kube.emu) {
            (ApiMark::Log(m), Some(e)) => {
                let mut writes = e.writes_since(*m);
                let lease: usize =
                    writes.iter().filter(|(p, _)| p.starts_with("/apis/coordination.k8s.io/")).map(|(_, n)| n).sum();
                writes.retain(|p, _| !p.starts_with("/apis/coordination.k8s.io/"));
                (writes, Some(lease))
            }
            (ApiMark::Versions(before, events), _) => {
                let now = self.versions().await;
                let mut changed: BTreeMap<String, usize> =
                    now.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, _)| (k.clone(), 1)).collect();
                let events_now = self.event_count();
                if events_now != *events {
                    changed.insert("events".into(), events_now.saturating_sub(*events));
                }
                (changed, None)
            }
            _ => unreachable!("a log mark comes from the emulator"),
        }
    }
}

/// `causeway_operator_objects{kind}` for ready `true`, `false`, `unknown`.
fn object_gauges(op: &Operator, kind: &str) -> (f64, f64, f64) {
    let text = op.metrics();
    let g = |ready: &str| {
        causeway_tests::metric_value(&text, &format!("causeway_operator_objects{{kind=\"{kind}\",ready=\"{ready}\"}}"))
            .unwrap_or(f64::NAN)
    };
    (g("true"), g("false"), g("unknown"))
}

/// Reconciles done so far, all kinds and results, from the operator's metrics.
fn reconciles(op: &Operator) -> f64 {
    let text = op.metrics();
    text.lines()
        .filter(|l| l.starts_with("causeway_operator_reconciles_total{"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum()
}

/// Scenario 8. An idle operator writes nothing: with everything Ready and a resync of 3 s, over
/// `CAUSEWAY_E2E_IDLE_SECS` (default 20 s; 120 for the two-minute version) the only Kubernetes
/// writes are the leader Lease's renewals (and there are some: this replica leads) and there is
/// no JetStream write at all — although every object was reconciled several times meanwhile
/// (the reconcile counter proves the resyncs happened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_operator_writes_nothing_but_its_lease() {
    let idle =
        Duration::from_secs(std::env::var("CAUSEWAY_E2E_IDLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20));
    let resync = Duration::from_secs(3);
    let started = Instant::now();
    let w = World::start("idle").await;
    let ns = w.ns().to_string();
    let op = w.start_operator("3s");
    w.apply_examples();
    w.wait_ready(&example_keys(), Duration::from_secs(30)).await;
    // Settled: the figures a first resync fills in (consumers on each stream) are there.
    let want_consumers = BTreeMap::from([
        ("EventStore/orders".to_string(), 1),
        ("EventStore/dead-letters".to_string(), 0),
        ("Node/orders".to_string(), 0),
        ("Node/inventory".to_string(), 1),
        ("Node/shipping".to_string(), 1),
    ]);
    poll(Duration::from_secs(20), "settled figures", || async {
        let objs = w.objects().await;
        let got: BTreeMap<String, i64> = objs
            .iter()
            .filter(|o| o["kind"] != "Listener")
            .map(|o| (key(o), o["status"]["consumers"].as_i64().unwrap_or(-1)))
            .collect();
        if got == want_consumers && objs.iter().all(ready_now) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mark = w.api_mark().await;
    let spy = JetStreamSpy::start(&w.nc).await;
    let reconciled_before = reconciles(&op);
    tokio::time::sleep(idle).await;
    let reconciled = reconciles(&op) - reconciled_before;
    let (js_writes, js_requests) = spy.finish().await;
    let (api_writes, lease_writes) = w.api_writes_since(&mark).await;

    let resyncs = (idle.as_secs_f64() / resync.as_secs_f64()).floor();
    assert!(
        reconciled >= 8.0 * (resyncs / 2.0).floor(),
        "the 8 objects should have been reconciled about every {resync:?}: {reconciled} reconciles in {idle:?}"
    );
    assert_eq!(api_writes, BTreeMap::new(), "Kubernetes writes while idle, other than the Lease's");
    if let Some(n) = lease_writes {
        assert!(n >= 2, "the leader renews its Lease (4 s lease): {n} renewals in {idle:?}");
    }
    assert_eq!(js_writes, Vec::<String>::new(), "JetStream writes while idle ({js_requests} API requests seen)");
    assert!(js_requests > 0, "the spy sees the operator's JetStream reads");
    eprintln!(
        "idle {}: {reconciled} reconciles, {js_requests} JetStream API reads, lease writes {lease_writes:?}, no other write; namespace {ns}; whole test {}",
        secs(idle),
        secs(started.elapsed())
    );
}

/// Waits until every object of the namespace has Ready=False with `reason`; returns them.
async fn wait_all_not_ready(w: &World, names: &BTreeSet<String>, reason: &str, within: Duration) -> Vec<Value> {
    poll(within, &format!("every object Ready=False {reason}"), || async {
        let objs = w.objects().await;
        let have: BTreeSet<String> = objs.iter().map(key).collect();
        if &have != names {
            return Err(format!("objects {have:?}"));
        }
        let not: Vec<String> = objs
            .iter()
            .filter(|o| !ready_of(o).is_some_and(|(s, r, _)| s == "False" && r == reason))
            .map(|o| format!("{} {:?}", key(o), ready_of(o)))
            .collect();
        if not.is_empty() { Ok(objs) } else { Err(format!("still {not:?}")) }
    })
    .await
}

/// Scenario 9. NATS goes away under a running operator: within a bounded time (resync 2 s +
/// NATS timeout 3 s + slack) every object is Ready=False `NatsUnavailable` — none keeps a stale
/// True — with its last known figures kept; `/readyz` is 503 and says NATS; the operator keeps
/// running. NATS comes back (same port and data): `/readyz` 200 and every object Ready again,
/// with no data lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_turns_objects_not_ready_and_back() {
    let started = Instant::now();
    let mut w = World::start("nats-outage").await;
    let ns = w.ns().to_string();
    let mut op = w.start_operator("2s");
    w.apply_examples();
    w.wait_ready(&example_keys(), Duration::from_secs(30)).await;
    w.publish(&format!("cw.{ns}.es.orders.o-1"), 4).await;
    poll(Duration::from_secs(10), "orders shows 4 events", || async {
        let o = w.kube.get("cwes", "orders").ok_or("gone")?;
        if o["status"]["events"] == 4 { Ok(()) } else { Err(o["status"].to_string()) }
    })
    .await;

    let t = Instant::now();
    w.nats.stop();
    let (code, body) = poll(Duration::from_secs(10), "/readyz 503", || async {
        match op.readyz() {
            Some((503, b)) => Ok((503, b)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(code, 503);
    assert_eq!(body["natsConnected"], false, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("NATS")), "readyz says why: {body}");
    let objs = wait_all_not_ready(&w, &example_keys(), "NatsUnavailable", Duration::from_secs(20)).await;
    let down_after = t.elapsed();
    for o in &objs {
        let (_, _, message) = ready_of(o).unwrap();
        assert!(message.contains("NATS"), "{}: {message}", key(o));
        assert!(observed_current(o), "{}", key(o));
    }
    let orders = objs.iter().find(|o| key(o) == "EventStore/orders").unwrap();
    assert_eq!(orders["status"]["events"], 4, "the last known figures are kept");
    let warnings = w.kube.events_about("orders");
    assert!(warnings.iter().any(|(t, r, _)| t == "Warning" && r == "NatsUnavailable"), "{warnings:?}");
    assert!(op.is_running(), "the operator keeps running without NATS");
    assert_eq!(op.metric("causeway_operator_nats_connected"), Some(0.0));
    for (kind, n) in [("EventStore", 2.0), ("Node", 3.0), ("Listener", 3.0)] {
        assert_eq!(object_gauges(&op, kind), (0.0, n, 0.0), "{kind}: {}", op.metrics());
    }
    // An object created during the outage gets its finalizer and says NatsUnavailable too.
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata:\n  name: during-outage\n  namespace: {ns}\nspec: {{}}\n"
    ));
    let mut all = example_keys();
    all.insert("EventStore/during-outage".into());
    // A resync or two later, still not ready (no flapping back to a stale True).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let objs = wait_all_not_ready(&w, &all, "NatsUnavailable", Duration::from_secs(15)).await;
    let new = objs.iter().find(|o| key(o) == "EventStore/during-outage").unwrap();
    assert_eq!(new["metadata"]["finalizers"], json!(["causeway.dev/cleanup"]));

    let t = Instant::now();
    w.nats.restart();
    op.wait_ready(Duration::from_secs(20));
    w.wait_ready(&all, Duration::from_secs(40)).await;
    let up_after = t.elapsed();
    assert!(w.stream(&format!("CW_ES_{ns}_during-outage")).await.is_some());
    assert_eq!(w.stream(&format!("CW_ES_{ns}_orders")).await.expect("stream").state.messages, 4);
    let ev = w.kube.events_about("orders");
    assert!(ev.iter().any(|(t, r, _)| t == "Normal" && r == "Reconciled"), "a recovery event: {ev:?}");
    eprintln!(
        "all NatsUnavailable {} after NATS stopped, all Ready {} after it came back; whole test {}",
        secs(down_after),
        secs(up_after),
        secs(started.elapsed())
    );
}

/// Scenario 10. Deleting `Retain` objects (an EventStore and a Listener) while NATS is down
/// completes within a bounded time (the cleanup timeout, 2 s, after a reconcile in flight, whose
/// NATS timeout is 3 s, plus slack): the objects disappear (finalizer
/// removed) with a `CleanupDeferred` warning. Once NATS is back, the operator finishes what it
/// deferred: the registry records and the listener's consumer go, the store's stream and its
/// events stay (Retain), and everything else is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_deletion_while_nats_is_down_is_bounded_and_tidied_later() {
    let started = Instant::now();
    let mut w = World::start("retain-down").await;
    let ns = w.ns().to_string();
    let _op = w.start_operator("2s");
    w.apply_examples();
    w.wait_ready(&example_keys(), Duration::from_secs(30)).await;
    w.publish(&format!("cw.{ns}.es.orders.o-1"), 2).await;

    w.nats.stop();
    // Each deletion waits at most --cleanup-timeout (2 s) on NATS, after the reconcile of that
    // object in flight, if any: a resync's apply that hangs on NATS for up to --nats-timeout
    // (3 s). So the bound is 3 + 2 s, plus the debounce and slack for a loaded machine.
    // (docs/operator.md says --cleanup-timeout alone; the in-flight apply comes first.)
    let bound = Duration::from_millis(3000 + 2000 + 4000);
    let mut took = Vec::new();
    for (kind, name) in [("cwl", "order-history"), ("cwes", "orders")] {
        let t = Instant::now();
        w.kube.ok(&["delete", kind, name, "-n", &ns, "--timeout=30s"]);
        took.push(t.elapsed());
        assert!(t.elapsed() < bound, "deleting {kind} {name} took {:?} with NATS down", t.elapsed());
        assert!(w.kube.get(kind, name).is_none(), "{kind} {name} released");
    }
    for name in ["orders", "order-history"] {
        let ev = w.kube.events_about(name);
        assert!(ev.iter().any(|(t, r, _)| t == "Warning" && r == "CleanupDeferred"), "{name}: {ev:?}");
    }

    w.nats.restart();
    let left = example_registry_keys(&ns)
        .into_iter()
        .filter(|k| !k.ends_with(".eventstore.orders") && !k.ends_with(".listener.order-history"))
        .collect::<BTreeSet<_>>();
    let t = Instant::now();
    poll(Duration::from_secs(30), "the deferred cleanups", || async {
        let keys = match w.js.get_key_value("CW_REGISTRY").await {
            Ok(kv) => match kv.keys().await {
                Ok(k) => k.try_collect::<BTreeSet<String>>().await.map_err(|e| e.to_string())?,
                Err(e) => return Err(e.to_string()),
            },
            Err(e) => return Err(e.to_string()),
        };
        if keys == left { Ok(()) } else { Err(format!("registry keys {keys:?}")) }
    })
    .await;
    let tidied = t.elapsed();
    let orders = w.stream(&format!("CW_ES_{ns}_orders")).await.expect("Retain keeps the stream");
    assert_eq!(orders.state.messages, 2, "with its events");
    assert!(w.consumers(&format!("CW_ES_{ns}_orders")).await.is_empty(), "the listener's consumer is gone");
    // The rest is untouched and Ready again.
    let rest: BTreeSet<String> =
        example_keys().into_iter().filter(|k| k != "EventStore/orders" && k != "Listener/order-history").collect();
    w.wait_ready(&rest, Duration::from_secs(30)).await;
    eprintln!(
        "deletes took {} and {} with NATS down; tidied {} after it came back; whole test {}",
        secs(took[0]),
        secs(took[1]),
        secs(tidied),
        secs(started.elapsed())
    );
}

/// Scenario 11. The escape hatch: a `deletionPolicy: Delete` EventStore deleted while NATS is
/// down stays (Terminating, finalizer kept, `CleanupFailed` warning naming the annotation) for as
/// long as its cleanup fails; annotated `causeway.dev/skip-cleanup=true` it goes at once
/// (`CleanupSkipped`). Its stream is left as it is (the data is not deleted behind the user's
/// back once NATS returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_policy_waits_for_nats_until_the_escape_hatch() {
    let started = Instant::now();
    let mut w = World::start("escape-hatch").await;
    let ns = w.ns().to_string();
    let mut op = w.start_operator("2s");
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata:\n  name: precious\n  namespace: {ns}\nspec:\n  deletionPolicy: Delete\n"
    ));
    w.wait_ready(&keys(&["EventStore/precious"]), Duration::from_secs(15)).await;
    w.publish(&format!("cw.{ns}.es.precious.p-1"), 3).await;

    w.nats.stop();
    w.kube.ok(&["delete", "cwes", "precious", "-n", &ns, "--wait=false"]);
    // Several cleanup attempts (2 s timeout each, backoff 1 s, 2 s, ...) later, it is still there.
    let failed = poll(Duration::from_secs(15), "a CleanupFailed warning", || async {
        let ev = w.kube.events_about("precious");
        ev.into_iter().find(|(t, r, _)| t == "Warning" && r == "CleanupFailed").ok_or("none yet".to_string())
    })
    .await;
    assert!(failed.2.contains("causeway.dev/skip-cleanup=true"), "the warning names the escape hatch: {}", failed.2);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let o = w.kube.get("cwes", "precious").expect("a Delete object waits for its cleanup");
    assert!(o["metadata"]["deletionTimestamp"].is_string(), "Terminating: {}", o["metadata"]);
    assert_eq!(o["metadata"]["finalizers"], json!(["causeway.dev/cleanup"]));
    assert!(op.is_running());

    let t = Instant::now();
    w.kube.ok(&["annotate", "cwes", "precious", "-n", &ns, "causeway.dev/skip-cleanup=true"]);
    w.kube.ok(&["wait", "--for=delete", "cwes/precious", "-n", &ns, "--timeout=20s"]);
    let released = t.elapsed();
    let ev = w.kube.events_about("precious");
    assert!(ev.iter().any(|(t, r, _)| t == "Warning" && r == "CleanupSkipped"), "{ev:?}");

    w.nats.restart();
    op.wait_ready(Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(5)).await; // a few resyncs and sweeps
    let s = w.stream(&format!("CW_ES_{ns}_precious")).await.expect("skip-cleanup leaves the stream");
    assert_eq!(s.state.messages, 3, "and its events");
    assert!(
        w.registry_keys().await.contains(&format!("{ns}.eventstore.precious")),
        "skip-cleanup leaves the registry record as it is (docs/operator.md)"
    );
    eprintln!("released {} after the annotation; whole test {}", secs(released), secs(started.elapsed()));
}

/// 100 EventStores `s-NNN`, 100 Nodes `n-NNN` and 100 Listeners `l-NNN` (node `n-NNN`, source
/// store `s-NNN`), in one multi-document YAML.
fn three_hundred(ns: &str) -> String {
    let mut docs = Vec::new();
    for i in 0..100 {
        docs.push(format!("apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata:\n  name: s-{i:03}\n  namespace: {ns}\nspec: {{}}\n"));
        docs.push(format!("apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata:\n  name: n-{i:03}\n  namespace: {ns}\nspec: {{}}\n"));
        docs.push(format!(
            "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata:\n  name: l-{i:03}\n  namespace: {ns}\nspec:\n  node: n-{i:03}\n  source:\n    store: s-{i:03}\n  delivery:\n    mode: pull\n"
        ));
    }
    docs.join("---\n")
}

/// Scenario 6. The operator is SIGKILLed in the middle of reconciling 300 objects (100 stores,
/// 100 nodes, 100 listeners in one `kubectl apply`), then started again: it converges (all 300
/// Ready for their generation) with no duplicates — exactly one stream per store, one inbox and
/// one state bucket per node, exactly one consumer per listener (on its store), one finalizer per
/// object, and registry keys equal to the objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_apply_then_restart_converges_without_duplicates() {
    let started = Instant::now();
    let w = World::start("sigkill").await;
    let ns = w.ns().to_string();
    // The same identity, as a restarted container of the same pod: it takes the lease at once.
    let opts = w.operator("300s").flag("--identity", "e2e-operator-0");
    let mut op = opts.clone().named("operator (killed)").start();
    op.wait_ready(Duration::from_secs(30));

    let yaml = three_hundred(&ns);
    let (kubeconfig, cache) = (w.kube.kubeconfig.clone(), w.kube.scratch.path().join("kube-cache-bulk"));
    let apply = std::thread::spawn(move || kubectl_at(&kubeconfig, &cache, &["apply", "-f", "-"], Some(&yaml)));
    let prefix = format!("CW_ES_{ns}_s-");
    let at_kill = poll(Duration::from_secs(60), "the first streams of the batch", || async {
        let n = w.stream_names().await.iter().filter(|s| s.starts_with(&prefix)).count();
        if n >= 15 { Ok(n) } else { Err(format!("{n} store streams")) }
    })
    .await;
    op.kill();
    let kubectl_running = !apply.is_finished();
    let keys_at_kill = w.registry_keys().await.len();
    let ready_at_kill = w.objects().await.iter().filter(|o| ready_now(o)).count();
    assert!(keys_at_kill < 300, "killed too late to be in the middle: {keys_at_kill} registry keys");
    let r = apply.join().expect("kubectl thread");
    assert_eq!(r.code, 0, "kubectl apply of 300 objects: {}", r.stderr);
    assert_eq!(r.stdout.lines().filter(|l| l.ends_with(" created")).count(), 300, "{}", r.stdout);
    drop(op);

    let t = Instant::now();
    let mut op = opts.named("operator (restarted)").start();
    op.wait_ready(Duration::from_secs(30));
    let mut all = BTreeSet::new();
    for i in 0..100 {
        all.extend([format!("EventStore/s-{i:03}"), format!("Node/n-{i:03}"), format!("Listener/l-{i:03}")]);
    }
    let objs = w.wait_ready(&all, Duration::from_secs(90)).await;
    let converged = t.elapsed();
    assert!(op.is_running());

    // No duplicates, nothing missing.
    for o in &objs {
        assert_eq!(o["metadata"]["finalizers"], json!(["causeway.dev/cleanup"]), "{}", key(o));
    }
    let streams = w.stream_names().await;
    let count = |p: &str| streams.iter().filter(|s| s.starts_with(&format!("{p}{ns}_"))).count();
    assert_eq!((count("CW_ES_"), count("CW_IN_"), count("KV_CW_ST_")), (100, 100, 100), "{streams:?}");
    for i in 0..100 {
        let stream = format!("CW_ES_{ns}_s-{i:03}");
        let names: Vec<String> = w.consumers(&stream).await.into_keys().collect();
        assert_eq!(names, [format!("cw_{ns}_l-{i:03}")], "exactly one consumer on {stream}");
        assert!(w.consumers(&format!("CW_IN_{ns}_n-{i:03}")).await.is_empty());
    }
    let mut want_keys = BTreeSet::new();
    for i in 0..100 {
        want_keys.extend([
            format!("{ns}.eventstore.s-{i:03}"),
            format!("{ns}.node.n-{i:03}"),
            format!("{ns}.listener.l-{i:03}"),
        ]);
    }
    assert_eq!(w.registry_keys().await, want_keys);
    eprintln!(
        "killed at {at_kill} store streams, {keys_at_kill} registry keys, {ready_at_kill} objects Ready (kubectl still applying: {kubectl_running}); restarted operator converged in {}; whole test {}",
        secs(converged),
        secs(started.elapsed())
    );
}

/// Scenario 7. Two replicas with leader election (4 s lease): only the leader reconciles — the
/// other's `/readyz` says `leader: false`, its `causeway_operator_leader` is 0 and it has made no
/// reconcile — and when the leader is SIGKILLed (no release) the other takes over within about
/// the lease duration: an object applied right after the kill is Ready within lease + 6 s, and the
/// Lease names the new holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_failover_within_the_lease() {
    let started = Instant::now();
    let w = World::start("leader").await;
    let ns = w.ns().to_string();
    let mut a = w.operator("300s").flag("--identity", "replica-a").named("replica-a").start();
    let ra = a.wait_ready(Duration::from_secs(30));
    assert_eq!(ra["leader"], true, "the first replica leads: {ra}");
    let mut b = w.operator("300s").flag("--identity", "replica-b").named("replica-b").start();
    let rb = b.wait_ready(Duration::from_secs(30));
    assert_eq!(rb["leader"], false, "the second waits: {rb}");

    w.apply_examples();
    w.wait_ready(&example_keys(), Duration::from_secs(30)).await;
    assert_eq!(a.metric("causeway_operator_leader"), Some(1.0));
    assert_eq!(b.metric("causeway_operator_leader"), Some(0.0));
    assert!(reconciles(&a) >= 8.0, "the leader reconciled: {}", a.metrics());
    assert_eq!(reconciles(&b), 0.0, "the other replica reconciles nothing: {}", b.metrics());
    assert!(!b.log().contains("starting the controllers"), "{}", b.log());
    let lease = w.kube.json(&["get", "lease", "causeway-operator", "-n", &ns]);
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");

    a.kill();
    let t = Instant::now();
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata:\n  name: after-failover\n  namespace: {ns}\nspec: {{}}\n"
    ));
    let mut all = example_keys();
    all.insert("EventStore/after-failover".into());
    w.wait_ready(&all, Duration::from_secs(20)).await;
    let took = t.elapsed();
    assert!(took <= Duration::from_secs(10), "failover took {took:?} with a 4 s lease");
    let rb = b.readyz().expect("readyz").1;
    assert_eq!(rb["leader"], true, "{rb}");
    assert_eq!(b.metric("causeway_operator_leader"), Some(1.0));
    assert!(reconciles(&b) >= 1.0);
    assert!(w.stream(&format!("CW_ES_{ns}_after-failover")).await.is_some());
    let lease = w.kube.json(&["get", "lease", "causeway-operator", "-n", &ns]);
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    eprintln!("new object Ready {} after the leader was killed; whole test {}", secs(took), secs(started.elapsed()));
}

/// Leader election, the graceful way: a leader stopped with SIGTERM finishes, releases the Lease
/// and exits 0, and the waiting replica takes over at once — well before the 15 s lease would
/// have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_lease_over_at_once() {
    let started = Instant::now();
    let w = World::start("handover").await;
    let ns = w.ns().to_string();
    let opts = w.operator("300s").flag("--lease-duration", "15s");
    let mut a = opts.clone().flag("--identity", "replica-a").named("replica-a").start();
    assert_eq!(a.wait_ready(Duration::from_secs(30))["leader"], true);
    let mut b = opts.flag("--identity", "replica-b").named("replica-b").start();
    assert_eq!(b.wait_ready(Duration::from_secs(30))["leader"], false);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let t = Instant::now();
    assert_eq!(a.terminate(Duration::from_secs(10)), Some(0), "SIGTERM: a clean exit");
    let stopped = t.elapsed();
    poll(Duration::from_secs(20), "replica-b to lead", || async {
        match b.readyz() {
            Some((200, v)) if v["leader"] == true => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let took = t.elapsed();
    w.apply(&format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata:\n  name: after-handover\n  namespace: {ns}\nspec: {{}}\n"
    ));
    w.wait_ready(&keys(&["EventStore/after-handover"]), Duration::from_secs(10)).await;
    let lease = w.kube.json(&["get", "lease", "causeway-operator", "-n", &ns]);
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert!(
        took < Duration::from_secs(4),
        "replica-b led {took:?} after the SIGTERM (the leader stopped in {stopped:?})"
    );
    eprintln!(
        "leader stopped in {}, the other led {} after the SIGTERM; whole test {}",
        secs(stopped),
        secs(took),
        secs(started.elapsed())
    );
}
