//! The operator's Kubernetes contract as scenarios, in the kube-rs style: a mocked API server
//! (`tower_test::mock`) that expects exact calls in order and fails on any extra one, with a
//! real nats-server behind the reconcile core.
//!
//! Given an object and the server's state, each scenario asserts exactly which API calls a
//! reconcile makes (finalizer, events, status by server-side apply) and what JetStream holds.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use causeway_api::{
    crd::{DeletionPolicy, EventStore, EventStoreSpec},
    registry::MANAGER_OPERATOR,
};
use causeway_operator::{
    controller::{
        Context, Options,
        context::{FINALIZER, SKIP_CLEANUP_ANNOTATION},
        metrics::Metrics,
        reconcile::reconcile,
    },
    jetstream::Reconciler,
};
use causeway_tests::NatsServer;
use http::{Request, Response};
use kube::{Client, Resource, ResourceExt, client::Body, runtime::events::Reporter};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn store(name: &str, policy: DeletionPolicy) -> EventStore {
    let mut spec: EventStoreSpec = serde_json::from_value(json!({})).unwrap();
    spec.deletion_policy = policy;
    let mut s = EventStore::new(name, spec);
    s.meta_mut().namespace = Some("shop".into());
    s.meta_mut().generation = Some(3);
    s.meta_mut().uid = Some(format!("uid-{name}"));
    s.meta_mut().resource_version = Some("1".into());
    s
}

fn finalized(mut s: EventStore) -> EventStore {
    s.finalizers_mut().push(FINALIZER.into());
    s
}

fn deleting(mut s: EventStore) -> EventStore {
    s.meta_mut().deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-11-25T12:00:00Z".parse().unwrap()));
    s
}

fn context(client: Client, nats: async_nats::Client, opts: Options) -> Arc<Context> {
    let reporter = Reporter { controller: "causeway-operator".into(), instance: Some("test".into()) };
    Arc::new(Context::new(
        client,
        Reconciler::new(nats, MANAGER_OPERATOR),
        reporter,
        Arc::new(Metrics::default()),
        opts,
    ))
}

fn options() -> Options {
    Options { nats_timeout: Duration::from_secs(3), cleanup_timeout: Duration::from_secs(1), ..Options::default() }
}

/// One expected API call: its method and path (query ignored); answers `respond` and hands
/// back the request body.
async fn expect(h: &mut Handle, method: &str, path: &str, respond: Value) -> Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), h.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} came"))
        .expect("the client is alive");
    let got = format!("{} {}", req.method(), req.uri().path());
    assert_eq!(got, format!("{method} {path}"), "unexpected call (full URI {})", req.uri());
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = req.into_body().collect_bytes().await.unwrap();
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&respond).unwrap())).unwrap());
    json!({"query": query, "body": body})
}

/// Asserts that no further API call comes.
async fn silent(h: &mut Handle) {
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(300), h.next_request()).await {
        panic!("unexpected extra call {} {}", req.method(), req.uri());
    }
}

const ES: &str = "/apis/causeway.dev/v1alpha1/namespaces/shop/eventstores";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

async fn stream_exists(server: &NatsServer, name: &str) -> bool {
    jetstream::new(server.client().await).get_stream(name).await.is_ok()
}

/// JetStream API requests that write (create, update, delete, purge) and KV puts, on the wire.
async fn jetstream_writes(server: &NatsServer) -> (async_nats::Subscriber, async_nats::Subscriber, async_nats::Client) {
    let spy = server.client().await;
    let api = spy.subscribe("$JS.API.>").await.unwrap();
    let kv = spy.subscribe("$KV.>").await.unwrap();
    spy.flush().await.unwrap();
    (api, kv, spy)
}

async fn writes_seen(api: &mut async_nats::Subscriber, kv: &mut async_nats::Subscriber) -> Vec<String> {
    use futures::StreamExt;
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), api.next()).await {
        let s = m.subject.to_string();
        if ["CREATE", "UPDATE", "DELETE", "PURGE"].iter().any(|w| s.contains(w)) {
            seen.push(s);
        }
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), kv.next()).await {
        seen.push(m.subject.to_string());
    }
    seen
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_and_nothing_else() {
    let server = NatsServer::start();
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(svc, "default"), server.client().await, options());
    let obj = store("orders", DeletionPolicy::Retain);
    let run = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx));
    let call = expect(&mut h, "PATCH", &format!("{ES}/orders"), serde_json::to_value(finalized(obj)).unwrap()).await;
    let ops = call["body"].as_array().expect("a JSON patch");
    assert!(ops.iter().any(|o| o["op"] == "add" && o["value"] == json!([FINALIZER])), "{call}");
    run.await.unwrap().expect("reconcile");
    silent(&mut h).await;
    assert!(!stream_exists(&server, "CW_ES_shop_orders").await, "nothing is created before the finalizer is in place");
}

#[tokio::test]
async fn apply_creates_announces_and_patches_status_then_an_unchanged_object_writes_nothing() {
    let server = NatsServer::start();
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(svc, "default"), server.client().await, options());
    let obj = finalized(store("orders", DeletionPolicy::Retain));
    let run = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx.clone()));
    let ev = expect(&mut h, "POST", EVENTS, json!({})).await;
    assert_eq!((&ev["body"]["reason"], &ev["body"]["type"]), (&json!("Created"), &json!("Normal")), "{ev}");
    assert_eq!(ev["body"]["regarding"]["name"], "orders");
    let patch = expect(&mut h, "PATCH", &format!("{ES}/orders/status"), serde_json::to_value(&obj).unwrap()).await;
    assert!(patch["query"].as_str().unwrap().contains("fieldManager=causeway-operator"), "{patch}");
    assert!(patch["query"].as_str().unwrap().contains("force=true"), "server-side apply: {patch}");
    let status = patch["body"]["status"].clone();
    assert_eq!(patch["body"]["kind"], "EventStore");
    let ready = &status["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"], &ready["reason"]),
        (&json!("Ready"), &json!("True"), &json!("Reconciled"))
    );
    assert_eq!((&status["observedGeneration"], &ready["observedGeneration"]), (&json!(3), &json!(3)));
    assert_eq!(
        (&status["stream"], &status["events"], &status["maxConsumers"]),
        (&json!("CW_ES_shop_orders"), &json!(0), &json!(1000))
    );
    run.await.unwrap().expect("reconcile");
    silent(&mut h).await;
    assert!(stream_exists(&server, "CW_ES_shop_orders").await);

    // The same object with the status it now has: no API call, no JetStream write.
    let mut current = obj;
    current.status = Some(serde_json::from_value(status).unwrap());
    let (mut api, mut kv, _spy) = jetstream_writes(&server).await;
    reconcile(Arc::new(current), ctx).await.expect("reconcile");
    silent(&mut h).await;
    assert_eq!(
        writes_seen(&mut api, &mut kv).await,
        Vec::<String>::new(),
        "a steady state writes nothing to JetStream"
    );
}

#[tokio::test]
async fn a_failing_nats_yields_ready_false_and_the_next_success_clears_it() {
    let mut server = NatsServer::start();
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(svc, "default"), server.client().await, options());
    let ready_status = {
        let obj = finalized(store("orders", DeletionPolicy::Retain));
        let run = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx.clone()));
        expect(&mut h, "POST", EVENTS, json!({})).await;
        let p = expect(&mut h, "PATCH", &format!("{ES}/orders/status"), serde_json::to_value(&obj).unwrap()).await;
        run.await.unwrap().unwrap();
        p["body"]["status"].clone()
    };
    let mut obj = finalized(store("orders", DeletionPolicy::Retain));
    obj.status = Some(serde_json::from_value(ready_status).unwrap());

    server.stop();
    let run = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx.clone()));
    // The status goes first (never a stale True), then the warning.
    let p = expect(&mut h, "PATCH", &format!("{ES}/orders/status"), serde_json::to_value(&obj).unwrap()).await;
    let cond = &p["body"]["status"]["conditions"][0];
    assert_eq!((&cond["status"], &cond["reason"]), (&json!("False"), &json!("NatsUnavailable")), "{p}");
    assert!(cond["message"].as_str().unwrap().contains("NATS"), "{cond}");
    assert_eq!(p["body"]["status"]["events"], 0, "the last known figures stay");
    let ev = expect(&mut h, "POST", EVENTS, json!({})).await;
    assert_eq!((&ev["body"]["reason"], &ev["body"]["type"]), (&json!("NatsUnavailable"), &json!("Warning")));
    assert!(run.await.unwrap().is_err(), "the failure is an error, so the controller backs off");
    silent(&mut h).await;

    let mut failed = obj.clone();
    failed.status = Some(serde_json::from_value(p["body"]["status"].clone()).unwrap());
    server.restart();
    let ctx = context(ctx.kube.clone(), server.client().await, options());
    let run = tokio::spawn(reconcile(Arc::new(failed.clone()), ctx));
    let ev = expect(&mut h, "POST", EVENTS, json!({})).await;
    assert_eq!(ev["body"]["reason"], "Reconciled", "{ev}");
    let p = expect(&mut h, "PATCH", &format!("{ES}/orders/status"), serde_json::to_value(&failed).unwrap()).await;
    assert_eq!(p["body"]["status"]["conditions"][0]["status"], "True");
    run.await.unwrap().expect("reconcile");
    silent(&mut h).await;
}

async fn cleanup_scenario(policy: DeletionPolicy, nats_up: bool) -> (NatsServer, Result<(), String>, Vec<Value>) {
    let mut server = NatsServer::start();
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(svc, "default"), server.client().await, options());
    // Reconciled first, so there is something to clean up.
    let obj = finalized(store("orders", policy));
    let run = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx.clone()));
    expect(&mut h, "POST", EVENTS, json!({})).await;
    expect(&mut h, "PATCH", &format!("{ES}/orders/status"), serde_json::to_value(&obj).unwrap()).await;
    run.await.unwrap().unwrap();
    if !nats_up {
        server.stop();
    }
    let gone = deleting(obj);
    let mut run = tokio::spawn(reconcile(Arc::new(gone.clone()), ctx));
    let mut calls = vec![expect(&mut h, "POST", EVENTS, json!({})).await];
    let mut released = gone.clone();
    released.finalizers_mut().clear();
    // Either the reconcile ends (the finalizer stays), or it removes the finalizer first.
    let result = tokio::select! {
        r = &mut run => r.unwrap(),
        Some((req, send)) = h.next_request() => {
            let path = req.uri().path().to_owned();
            let body = req.into_body().collect_bytes().await.unwrap();
            calls.push(json!({"path": path, "body": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)}));
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&released).unwrap())).unwrap());
            run.await.unwrap()
        }
    };
    let result = result.map(|_| ()).map_err(|e| e.to_string());
    silent(&mut h).await;
    if !nats_up {
        server.restart();
    }
    (server, result, calls)
}

fn removes_finalizer(call: &Value) -> bool {
    call["path"] == format!("{ES}/orders")
        && call["body"].as_array().is_some_and(|ops| ops.iter().any(|o| o["op"] == "remove"))
}

#[tokio::test]
async fn cleanup_under_retain_keeps_the_stream_and_removes_the_record() {
    let (server, result, calls) = cleanup_scenario(DeletionPolicy::Retain, true).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(calls[0]["body"]["reason"], "Deleted", "{calls:?}");
    assert!(calls[0]["body"]["note"].as_str().unwrap().contains("kept by deletionPolicy Retain"), "{calls:?}");
    assert!(calls.get(1).is_some_and(removes_finalizer), "the finalizer goes: {calls:?}");
    assert!(stream_exists(&server, "CW_ES_shop_orders").await, "Retain keeps the data");
    let kv = jetstream::new(server.client().await).get_key_value("CW_REGISTRY").await.unwrap();
    assert!(kv.get("shop.eventstore.orders").await.unwrap().is_none(), "the registry record always goes");
}

#[tokio::test]
async fn cleanup_under_delete_removes_the_stream() {
    let (server, result, calls) = cleanup_scenario(DeletionPolicy::Delete, true).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(calls[0]["body"]["reason"], "Deleted");
    assert!(calls.get(1).is_some_and(removes_finalizer), "{calls:?}");
    assert!(!stream_exists(&server, "CW_ES_shop_orders").await, "Delete removes the data");
}

#[tokio::test]
async fn cleanup_with_nats_down_releases_retain_at_once_and_holds_delete_with_a_hint() {
    let t = std::time::Instant::now();
    let (server, result, calls) = cleanup_scenario(DeletionPolicy::Retain, false).await;
    assert!(result.is_ok(), "a Retain object never waits on NATS: {result:?}");
    assert!(t.elapsed() < Duration::from_secs(15), "bounded: {:?}", t.elapsed());
    assert_eq!(calls[0]["body"]["reason"], "CleanupDeferred", "{calls:?}");
    assert!(calls.get(1).is_some_and(removes_finalizer), "{calls:?}");
    assert!(stream_exists(&server, "CW_ES_shop_orders").await);
    drop(server);

    let (server, result, calls) = cleanup_scenario(DeletionPolicy::Delete, false).await;
    assert!(result.is_err(), "a Delete object keeps its finalizer until its streams are gone");
    assert_eq!(calls[0]["body"]["reason"], "CleanupFailed", "{calls:?}");
    assert!(calls[0]["body"]["note"].as_str().unwrap().contains(SKIP_CLEANUP_ANNOTATION), "the escape hatch is named");
    assert_eq!(calls.len(), 1, "no finalizer removal: {calls:?}");
    assert!(stream_exists(&server, "CW_ES_shop_orders").await);
}

#[tokio::test]
async fn the_escape_hatch_annotation_lets_a_delete_object_go_without_touching_nats() {
    let server = NatsServer::start();
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(svc, "default"), server.client().await, options());
    let mut obj = deleting(finalized(store("orders", DeletionPolicy::Delete)));
    obj.annotations_mut().insert(SKIP_CLEANUP_ANNOTATION.into(), "true".into());
    let run = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx));
    let ev = expect(&mut h, "POST", EVENTS, json!({})).await;
    assert_eq!(ev["body"]["reason"], "CleanupSkipped");
    let fin = expect(&mut h, "PATCH", &format!("{ES}/orders"), serde_json::to_value(&obj).unwrap()).await;
    assert!(fin["body"].as_array().unwrap().iter().any(|o| o["op"] == "remove"), "{fin}");
    run.await.unwrap().expect("reconcile");
    silent(&mut h).await;
}

const LISTENERS: &str = "/apis/causeway.dev/v1alpha1/namespaces/shop/listeners";

/// A Listener `history` on store `orders` (node `history`), as the operator gets it.
fn listener_with_rewind(rewind: Value) -> causeway_api::crd::Listener {
    let spec = serde_json::from_value(json!({
        "node": "history", "source": {"store": "orders"}, "startAt": "all",
        "delivery": {"mode": "pull", "ackWait": "45s"}, "rewind": rewind,
    }))
    .unwrap();
    let mut l = causeway_api::crd::Listener::new("history", spec);
    l.meta_mut().namespace = Some("shop".into());
    l.meta_mut().generation = Some(2);
    l.meta_mut().uid = Some("uid-history".into());
    l.meta_mut().resource_version = Some("1".into());
    l.finalizers_mut().push(FINALIZER.into());
    l
}

#[tokio::test]
async fn a_rewind_with_a_new_id_moves_the_consumer_once_records_it_in_status_and_emits_rewound() {
    use futures::StreamExt;
    let server = NatsServer::start();
    let nats = server.client().await;
    let lines = causeway_operator::local::apply_yaml(
        &nats,
        r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: history, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: history, namespace: shop}
spec: {node: history, source: {store: orders}, startAt: all, delivery: {mode: pull, ackWait: 45s}}
"#,
    )
    .await
    .unwrap();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let js = jetstream::new(nats.clone());
    for i in 0..4 {
        js.publish(format!("cw.shop.es.orders.o{i}"), "x".into()).await.unwrap().await.unwrap();
    }
    let stream = js.get_stream("CW_ES_shop_orders").await.unwrap();
    let c: jetstream::consumer::PullConsumer = stream.get_consumer("cw_shop_history").await.unwrap();
    let mut got = c.fetch().max_messages(10).expires(Duration::from_millis(500)).messages().await.unwrap();
    while let Some(m) = got.next().await {
        m.unwrap().double_ack().await.unwrap();
    }

    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(svc, "default"), nats.clone(), options());
    let obj = listener_with_rewind(json!({"to": {"sequence": 2}, "id": "fix-1"}));
    let run = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx.clone()));
    let ev = expect(&mut h, "POST", EVENTS, json!({})).await;
    assert_eq!((&ev["body"]["reason"], &ev["body"]["type"]), (&json!("Rewound"), &json!("Normal")), "{ev}");
    let note = ev["body"]["note"].as_str().unwrap();
    assert!(note.contains("rewound to sequence 2") && note.contains("delivered up to sequence 4"), "{note}");
    let ev = expect(&mut h, "POST", EVENTS, json!({})).await;
    assert_eq!(ev["body"]["reason"], "Updated", "{ev}");
    let patch =
        expect(&mut h, "PATCH", &format!("{LISTENERS}/history/status"), serde_json::to_value(&obj).unwrap()).await;
    let status = patch["body"]["status"].clone();
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");
    let rw = &status["rewind"];
    assert_eq!((&rw["id"], &rw["sequence"], &rw["fromSequence"]), (&json!("fix-1"), &json!(2), &json!(4)), "{status}");
    assert_eq!(rw["to"], json!({"sequence": 2}));
    run.await.unwrap().expect("reconcile");
    silent(&mut h).await;
    let mut got = c.fetch().max_messages(10).expires(Duration::from_millis(500)).messages().await.unwrap();
    let mut seqs = Vec::new();
    while let Some(m) = got.next().await {
        let m = m.unwrap();
        seqs.push(m.info().unwrap().stream_sequence);
        m.double_ack().await.unwrap();
    }
    assert_eq!(seqs, vec![2, 3, 4]);

    // Resynced with that status and the same id: no event, nothing moves. The figures moved
    // when the events were drained, so a status refresh may come; it keeps the same rewind.
    let answer = serde_json::to_value(&obj).unwrap();
    let mut current = obj;
    current.status = Some(serde_json::from_value(status.clone()).unwrap());
    let (mut api, mut kv, _spy) = jetstream_writes(&server).await;
    let run = tokio::spawn(reconcile(Arc::new(current), ctx));
    if let Ok(Some((req, send))) = tokio::time::timeout(Duration::from_secs(3), h.next_request()).await {
        let call = format!("{} {}", req.method(), req.uri().path());
        assert_eq!(call, format!("PATCH {LISTENERS}/history/status"), "only a status refresh, never an Event");
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["status"]["rewind"], status["rewind"], "the same rewind: {body}");
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap());
    }
    run.await.unwrap().expect("reconcile");
    silent(&mut h).await;
    assert_eq!(writes_seen(&mut api, &mut kv).await, Vec::<String>::new(), "the same id writes nothing");
    let mut got = c.fetch().max_messages(10).expires(Duration::from_millis(300)).messages().await.unwrap();
    assert!(got.next().await.is_none(), "nothing redelivered");
}
