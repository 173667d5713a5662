//! The guarantees of docs/reference.md, each against real nats-server processes (file storage), the real
//! sidecar binary and real HTTP, with faults injected:
//!
//! - nats-server crashes (SIGKILL) and restarts: nothing acknowledged is lost, the same sidecar
//!   process reconnects, `/readyz` follows, push delivery resumes;
//! - a sidecar is killed mid-delivery: what it held is redelivered after `ackWait`;
//! - a sidecar gets SIGTERM while the app is slower than the grace period: it naks what is left,
//!   exits 0 in time, and the next sidecar delivers it at once;
//! - one node of a 3-node cluster is lost (a follower, then the stream leader) under appends to
//!   an R3 store: every acknowledged append is there once, in order, without gaps;
//! - two sidecar processes append to one subject concurrently with expected sequences.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    collections::HashSet,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use causeway_tests::{Cluster, NatsServer, eventually};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::*;
use tokio::{net::TcpListener, sync::watch};

/// A store, a sending node, and a node whose push listener reads its inbox.
fn manifests(delivery: &str, timeout: &str) -> String {
    format!(
        r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {{name: orders, namespace: shop}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: web, namespace: shop}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: inventory, namespace: shop}}
spec:
  delivery: {{{delivery}}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: reserve, namespace: shop}}
spec:
  node: inventory
  source: {{inbox: inventory}}
  delivery: {{mode: push, path: /events, timeout: {timeout}}}
"#
    )
}

/// One push the app received.
#[derive(Debug, Clone)]
struct Push {
    id: String,
    attempt: u64,
    at: Instant,
}

/// A real HTTP app whose answers wait behind a gate: while the gate is closed every push is
/// recorded on arrival and held open; once it opens, held and new pushes are answered 200
/// (and recorded as answered).
struct GatedApp {
    port: u16,
    pushes: Arc<Mutex<Vec<Push>>>,
    answered: Arc<Mutex<Vec<String>>>,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedApp {
    async fn start(open: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let port = listener.local_addr().unwrap().port();
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let (gate, _) = watch::channel(open);
        let (p, a, g) = (pushes.clone(), answered.clone(), gate.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (p, a, g) = (p.clone(), a.clone(), g.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (p, a, mut rx) = (p.clone(), a.clone(), g.subscribe());
                        async move {
                            if req.method() == hyper::Method::POST {
                                let attempt = req
                                    .headers()
                                    .get("cw-delivery-attempt")
                                    .and_then(|v| v.to_str().ok()?.parse().ok())
                                    .unwrap_or(0);
                                let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let id = v["id"].as_str().unwrap_or("").to_owned();
                                p.lock().unwrap().push(Push { id: id.clone(), attempt, at: Instant::now() });
                                let _ = rx.wait_for(|open| *open).await;
                                a.lock().unwrap().push(id);
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { port, pushes, answered, gate, task }
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    fn pushes(&self) -> Vec<Push> {
        self.pushes.lock().unwrap().clone()
    }

    /// Ids of the events the app answered 200.
    fn answered(&self) -> HashSet<String> {
        self.answered.lock().unwrap().iter().cloned().collect()
    }

    fn ids(&self) -> HashSet<String> {
        self.pushes().into_iter().map(|p| p.id).collect()
    }
}

impl Drop for GatedApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the listener's consumer has nothing pending and nothing unacknowledged.
async fn settled(client: async_nats::Client, within: Duration) {
    let js = jetstream::new(client);
    eventually(within, "push consumer settled (nothing pending, nothing awaiting an ack)", || {
        let js = js.clone();
        async move {
            let mut c = js
                .get_consumer_from_stream::<pull::Config, _, _>("cw_shop_reserve", "CW_IN_shop_inventory")
                .await
                .ok()?;
            let i = c.info().await.ok()?;
            (i.num_pending == 0 && i.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

/// Sends one event to `node`; its id once the sidecar answers 202.
async fn send_ok(c: &reqwest::Client, sc: &Sidecar, node: &str, n: usize) -> String {
    let (s, a) =
        post(c, &sc.at(&format!("/v1/nodes/{node}/events")), &json!({"type": "order-placed", "payload": n})).await;
    assert_eq!(s, 202, "{a}");
    a["id"].as_str().unwrap().to_owned()
}

/// One append as a careful client makes it: the same id and expectation are retried on 5xx,
/// timeouts and connection errors until the sidecar answers 2xx or 409, or `within` passes.
/// Returns the final status, its body, and every status seen before it.
async fn append_retrying(
    c: &reqwest::Client,
    url: &str,
    id: &str,
    expected: u64,
    within: Duration,
) -> (u16, Value, Vec<u16>) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let r = c
            .post(format!("{url}?expectedSequence={expected}"))
            .timeout(Duration::from_secs(15))
            .json(&json!({"type": "appended", "id": id}))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() || r.status() == 409 => {
                let s = r.status().as_u16();
                return (s, r.json().await.unwrap_or(Value::Null), seen);
            }
            Ok(r) => seen.push(r.status().as_u16()),
            Err(_) => seen.push(0),
        }
        assert!(Instant::now() < deadline, "append {id} not accepted within {within:?}; statuses {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks a loaded subject against the appends acknowledged for it, in order: the same ids at
/// the same sequences, each once, and sequences `first..` without gaps.
fn assert_exactly(events: &[Value], acked: &[(String, u64)], first: u64) {
    let got: Vec<(String, u64)> = events
        .iter()
        .map(|e| (e["id"].as_str().unwrap_or("").to_owned(), e["sequence"].as_u64().unwrap_or(0)))
        .collect();
    let ids: Vec<&String> = got.iter().map(|(i, _)| i).collect();
    let unique: HashSet<&&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event is stored twice: {ids:?}");
    let seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (first..first + got.len() as u64).collect::<Vec<_>>(), "sequences have gaps");
    assert_eq!(got, acked, "the subject holds exactly the acknowledged appends, in order");
}

async fn readyz(c: &reqwest::Client, sc: &Sidecar) -> Option<(u16, Value)> {
    let r = c.get(sc.at("/readyz")).timeout(Duration::from_secs(2)).send().await.ok()?;
    let s = r.status().as_u16();
    Some((s, r.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_crash_loses_nothing_acknowledged_and_the_sidecar_recovers_by_itself() {
    let mut server = NatsServer::start();
    apply(&server, &manifests("ackWait: 2s, maxInFlight: 4", "1s")).await;
    // The app answers nothing until NATS is back, so every event sent before the crash is still
    // pending or in flight when it happens.
    let app = GatedApp::start(false).await;
    let port = app.port.to_string();
    let sc = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let c = http();
    let url = sc.at("/v1/stores/orders/subjects/order-1/events");

    // Before the crash: sends and conditional appends, every one acknowledged.
    let mut sent = Vec::new();
    let mut acked = Vec::new();
    for n in 0..15 {
        sent.push(send_ok(&c, &sc, "inventory", n).await);
        let id = format!("before-{n}");
        let (s, a, _) = append_retrying(&c, &url, &id, n as u64, Duration::from_secs(5)).await;
        assert_eq!((s, &a["duplicate"]), (202, &json!(false)), "{a}");
        acked.push((id, a["sequence"].as_u64().unwrap()));
    }

    server.kill();
    let down = eventually(Duration::from_secs(10), "/readyz not ready while NATS is down", || {
        let c = c.clone();
        let sc = &sc;
        async move { readyz(&c, sc).await.filter(|(s, _)| *s == 503) }
    })
    .await;
    assert_eq!(down.1["natsConnected"], false, "{}", down.1);
    assert_eq!(c.get(sc.at("/healthz")).send().await.unwrap().status(), 200, "liveness holds while NATS is away");

    // A client appends during the outage and keeps retrying the same id and expectation.
    let during = {
        let (c, url) = (c.clone(), url.clone());
        let expected = acked.last().unwrap().1;
        tokio::spawn(async move { append_retrying(&c, &url, "during-outage", expected, Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    eventually(Duration::from_secs(30), "/readyz ready again after the restart", || {
        let c = c.clone();
        let sc = &sc;
        async move { readyz(&c, sc).await.filter(|(s, v)| *s == 200 && v["natsConnected"] == true) }
    })
    .await;
    app.open();
    let (s, a, before) = during.await.unwrap();
    assert_eq!(s, 202, "the outage append lands once NATS is back: {a}");
    assert!(before.iter().all(|s| matches!(s, 0 | 503 | 504)), "an outage is a 503/504, never {before:?}");
    acked.push(("during-outage".into(), a["sequence"].as_u64().unwrap()));

    // The same sidecar process serves send, append and load again.
    for n in 15..25 {
        sent.push(send_ok(&c, &sc, "inventory", n).await);
        let id = format!("after-{n}");
        let (s, a, _) = append_retrying(&c, &url, &id, acked.last().unwrap().1, Duration::from_secs(10)).await;
        assert_eq!((s, &a["duplicate"]), (202, &json!(false)), "{a}");
        acked.push((id, a["sequence"].as_u64().unwrap()));
    }
    assert_exactly(&load(&c, &sc, "orders", "order-1").await, &acked, 1);

    // Push delivery resumed: the app answered nothing before the restart, so every acknowledged
    // send must have been answered after it (held pushes answered late, or pushed again).
    settled(server.client().await, Duration::from_secs(30)).await;
    let got = app.answered();
    let missing: Vec<&String> = sent.iter().filter(|id| !got.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged sends never handled by the app: {missing:?}");
    let metrics = c.get(sc.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("outcome=\"term\""), "nothing was given up: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_loses_nothing_and_its_deliveries_come_back_after_ack_wait() {
    let server = NatsServer::start();
    // The push timeout (2s) is shorter than ackWait (3s), as the operator requires; the kill
    // comes well before either.
    apply(&server, &manifests("ackWait: 3s, maxInFlight: 4", "2s")).await;
    let app = GatedApp::start(false).await;
    let port = app.port.to_string();
    let mut first = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let mut sent = Vec::new();
    for n in 0..12 {
        sent.push(send_ok(&c, &web, "inventory", n).await);
    }
    // The app holds every push, so the sidecar fills its maxInFlight slots and takes no more.
    eventually(Duration::from_secs(10), "four pushes held by the app", || {
        let n = app.pushes().len();
        async move { (n >= 4).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held: Vec<Push> = app.pushes();
    assert_eq!(held.len(), 4, "maxInFlight caps what one sidecar holds: {held:?}");
    first.kill();
    let killed = Instant::now();
    app.open();

    let _second = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    for n in 12..16 {
        sent.push(send_ok(&c, &web, "inventory", n).await);
    }
    settled(server.client().await, Duration::from_secs(30)).await;
    let pushes = app.pushes();
    let got = app.ids();
    let missing: Vec<&String> = sent.iter().filter(|id| !got.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged sends never delivered: {missing:?}");
    for h in &held {
        let again: Vec<&Push> = pushes.iter().filter(|p| p.id == h.id && p.at > killed).collect();
        assert!(!again.is_empty(), "held event {} was not redelivered after the kill", h.id);
        assert!(again.iter().all(|p| p.attempt >= 2), "a redelivery says so in Cw-Delivery-Attempt: {again:?}");
        let waited = again[0].at.duration_since(h.at);
        assert!(waited >= Duration::from_millis(2800), "redelivered only after ackWait (3s), not after {waited:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_slow_app_naks_what_is_left_and_the_next_sidecar_delivers_it_at_once() {
    let server = NatsServer::start();
    // ackWait is long: a redelivery within it can only come from the shutdown's nak.
    apply(&server, &manifests("ackWait: 60s, maxInFlight: 3", "50s")).await;
    let app = GatedApp::start(false).await;
    let port = app.port.to_string();
    let mut first =
        Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port), ("CAUSEWAY_GRACE_PERIOD", "1s")])
            .await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(send_ok(&c, &web, "inventory", n).await);
    }
    eventually(Duration::from_secs(10), "three pushes held by the app", || {
        let n = app.pushes().len();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    let held: HashSet<String> = app.ids();
    assert_eq!(held.len(), 3, "maxInFlight 3");

    let t = Instant::now();
    let code = first.terminate();
    let took = t.elapsed();
    assert_eq!(code, Some(0), "a graceful stop exits 0");
    assert!(took < Duration::from_secs(4), "exits within the 1s grace period (plus shutdown), took {took:?}");
    assert_eq!(app.pushes().len(), 3, "nothing new is pulled while draining");

    app.open();
    let _second = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    settled(server.client().await, Duration::from_secs(20)).await;
    assert!(t.elapsed() < Duration::from_secs(30), "redelivered long before ackWait: the events were nak'd");
    let pushes = app.pushes();
    let got = app.ids();
    let missing: Vec<&String> = sent.iter().filter(|id| !got.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged sends never delivered: {missing:?}");
    for id in &held {
        assert!(
            pushes.iter().any(|p| &p.id == id && p.attempt == 2),
            "held event {id} came back as attempt 2: {pushes:?}"
        );
    }
}

/// Applies manifests to a fresh cluster with the registry and global buckets on three
/// replicas, retrying while the cluster elects its meta leader.
async fn apply_r3(cluster: &Cluster, yaml: &str) {
    let client = cluster.client().await;
    let (objects, errs) = causeway_operator::manifest::parse_str(yaml, "<r3>");
    assert!(errs.is_empty(), "{errs:?}");
    let reconciler = causeway_operator::jetstream::Reconciler::new(client, causeway_api::registry::MANAGER_APPLY)
        .with_registry_replicas(3);
    eventually(Duration::from_secs(30), "a JetStream meta leader known to every node", || {
        let known = cluster
            .nodes
            .iter()
            .all(|n| n.monitor_json("/jsz")["meta_cluster"]["leader"].as_str().is_some_and(|l| !l.is_empty()));
        async move { known.then_some(()) }
    })
    .await;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match causeway_operator::local::apply(&reconciler, &objects, Default::default()).await {
            Ok(r) if r.ok() => return,
            Ok(r) => last = r.lines.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("apply to the cluster failed:\n{last}");
}

/// The name of the server leading a stream.
async fn stream_leader(client: &async_nats::Client, stream: &str) -> Option<String> {
    let js = jetstream::new(client.clone());
    let mut s = js.get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    let cluster = info.cluster.as_ref()?;
    cluster.leader.clone().filter(|l| !l.is_empty())
}

/// Appends `id` after the last acknowledged append, retrying like a client; records the ack and
/// returns how many tries failed first.
async fn append_r3(c: &reqwest::Client, url: &str, id: &str, acked: &mut Vec<(String, u64)>) -> usize {
    let expected = acked.last().map(|a| a.1).unwrap_or(0);
    let (s, a, before) = append_retrying(c, url, id, expected, Duration::from_secs(45)).await;
    assert_eq!(s, 202, "a single writer with the right expectation is never refused: {a}");
    assert!(before.iter().all(|s| matches!(s, 0 | 503 | 504)), "failures are 503/504: {before:?}");
    acked.push((id.to_owned(), a["sequence"].as_u64().unwrap()));
    before.len()
}

/// Loads a subject as a client would while the cluster heals. A load creates an ephemeral
/// consumer; right after a node dies JetStream may still place it on that node (or have no meta
/// leader), and the create times out, so a load can stall or answer 503/504 for some seconds.
async fn load_retrying(c: &reqwest::Client, sc: &Sidecar, store: &str, subject: &str) -> Vec<Value> {
    let url = sc.at(&format!("/v1/stores/{store}/subjects/{subject}/events?limit=10000"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A client gives up on a slow load sooner than the sidecar does, and tries again.
        let r = c.get(&url).timeout(Duration::from_secs(3)).send().await;
        let (s, v) = match r {
            Ok(r) => (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        };
        match s {
            200 => return v["events"].as_array().cloned().unwrap_or_default(),
            0 | 503 | 504 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
            _ => panic!("load answered {s}: {v}"),
        }
    }
}

fn index_of(cluster: &Cluster, name: &str) -> usize {
    cluster
        .nodes
        .iter()
        .position(|n| n.monitor_json("/varz")["server_name"] == name)
        .unwrap_or_else(|| panic!("no server named {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_store_loses_no_acknowledged_append_when_a_cluster_node_dies() {
    let mut cluster = Cluster::start3();
    apply_r3(
        &cluster,
        r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: ledger, namespace: shop}
spec: {replicas: 3}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: web, namespace: shop}
spec: {inbox: {replicas: 3}}
"#,
    )
    .await;
    let client = cluster.client().await;
    // The sidecar knows every node (CAUSEWAY_NATS_URL is comma-separated).
    let sc = Sidecar::spawn(&cluster.urls(), "shop", "web", &[]);
    sc.wait_ready().await;
    let c = http();
    let url = sc.at("/v1/stores/ledger/subjects/account-7/events");
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut retried = 0;
    for n in 0..20 {
        retried += append_r3(&c, &url, &format!("healthy-{n}"), &mut acked).await;
    }

    // Lose a follower of the stream.
    let leader =
        eventually(Duration::from_secs(10), "stream leader", || stream_leader(&client, "CW_ES_shop_ledger")).await;
    let li = index_of(&cluster, &leader);
    let follower = (li + 1) % 3;
    cluster.nodes[follower].kill();
    for n in 0..100 {
        retried += append_r3(&c, &url, &format!("no-follower-{n}"), &mut acked).await;
    }
    // Bring it back at once (its ports are free only until another process takes them), check
    // the appends made without it, then lose the stream leader itself.
    cluster.nodes[follower].restart();
    cluster.nodes[follower].wait_healthy(Duration::from_secs(30));
    // Loads right away may be served by the replica that is still catching up: never stale.
    for _ in 0..5 {
        assert_exactly(&load_retrying(&c, &sc, "ledger", "account-7").await, &acked, 1);
    }
    let watcher = cluster.nodes[(li + 2) % 3].client().await;
    eventually(Duration::from_secs(30), "all three replicas current again", || {
        let js = jetstream::new(watcher.clone());
        async move {
            let info = js.get_stream("CW_ES_shop_ledger").await.ok()?.info().await.ok()?.clone();
            let cl = info.cluster?;
            (cl.replicas.len() == 2 && cl.replicas.iter().all(|r| r.current)).then_some(())
        }
    })
    .await;
    let leader =
        eventually(Duration::from_secs(10), "stream leader", || stream_leader(&watcher, "CW_ES_shop_ledger")).await;
    let li = index_of(&cluster, &leader);
    cluster.nodes[li].kill();
    for n in 0..20 {
        retried += append_r3(&c, &url, &format!("no-leader-{n}"), &mut acked).await;
    }
    let events = load_retrying(&c, &sc, "ledger", "account-7").await;
    assert_exactly(&events, &acked, 1);
    let lagging = sc.logs().matches("lagging replica").count();
    eprintln!(
        "r3: {} appends acknowledged, {retried} retries, {lagging} loads read again off a lagging replica",
        acked.len()
    );
    let (s, f) = get(&c, &sc.at("/v1/stores/ledger")).await;
    assert_eq!((s, &f["lastSequence"]), (200, &json!(140)), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecar_processes_appending_concurrently_lose_nothing_and_refuse_with_409() {
    let server = NatsServer::start();
    apply(&server, &manifests("maxInFlight: 1", "1s")).await;
    let a = Sidecar::start(&server, "shop", "web", &[]).await;
    let b = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    const TASKS: usize = 8;
    const EACH: usize = 8;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let sc = if t % 2 == 0 { &a } else { &b };
        let (c, url) = (c.clone(), sc.at("/v1/stores/orders/subjects/counter/events"));
        handles.push(tokio::spawn(async move {
            let (mut accepted, mut refused, mut expected) = (Vec::new(), 0, 0u64);
            while accepted.len() < EACH {
                let id = format!("t{t}-{}", accepted.len());
                let r = c
                    .post(&url)
                    .header("if-match", format!("\"{expected}\""))
                    .json(&json!({"type": "inc", "id": id}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                match status {
                    202 => {
                        assert_eq!(body["duplicate"], false, "{body}");
                        expected = body["sequence"].as_u64().unwrap();
                        accepted.push((id, expected));
                    }
                    409 => {
                        assert_eq!(body["error"], "sequence_conflict", "{body}");
                        let last = body["lastSequence"].as_u64().unwrap();
                        assert!(last > expected, "a conflict reports a newer sequence: {last} <= {expected}");
                        expected = last;
                        refused += 1;
                    }
                    other => panic!("every refusal is a 409, got {other}: {body}"),
                }
            }
            (accepted, refused)
        }));
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    for h in handles {
        let (acc, r) = h.await.unwrap();
        accepted.extend(acc);
        refused += r;
    }
    assert!(refused > 0, "the two processes must have collided at least once");
    accepted.sort_by_key(|(_, seq)| *seq);
    // Both sidecars load the same history: exactly the accepted appends, by sequence.
    assert_exactly(&load(&c, &a, "orders", "counter").await, &accepted, 1);
    assert_exactly(&load(&c, &b, "orders", "counter").await, &accepted, 1);

    // A retry through the other replica is a duplicate, not a second event.
    let (s1, r1) = post(&c, &a.at("/v1/nodes/web/events"), &json!({"type": "x", "id": "retry-1"})).await;
    let (s2, r2) = post(&c, &b.at("/v1/nodes/web/events"), &json!({"type": "x", "id": "retry-1"})).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!((&r1["duplicate"], &r2["duplicate"], &r1["sequence"]), (&json!(false), &json!(true), &r2["sequence"]));
}
