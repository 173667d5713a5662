//! Push delivery through the real sidecar to a real HTTP app: ack with emits and causation,
//! retry with backoff, dead letters, app outages, ordering, shared work between replicas,
//! exactly-once, and graceful shutdown.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull};
use causeway_api::envelope::Envelope;
use causeway_tests::{NatsServer, eventually, free_port};
use serde_json::{Value, json};
use support::*;

fn manifests(extra_node: &str, listener: &str) -> String {
    format!(
        r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {{name: dead, namespace: shop}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: web, namespace: shop}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: shipping, namespace: shop}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: inventory, namespace: shop}}
spec:
  delivery: {{ackWait: 5s, backoff: [100ms, 200ms], maxInFlight: 8{extra_node}}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: reserve, namespace: shop}}
spec:
  node: inventory
  source: {{inbox: inventory}}
  types: [order-placed]
  delivery: {{mode: push, path: /events, timeout: 1s{listener}}}
  deadLetter: {{store: dead, subject: reserve}}
"#
    )
}

async fn consumer_settled(server: &NatsServer) {
    let js = jetstream::new(server.client().await);
    eventually(Duration::from_secs(15), "consumer has nothing pending", || {
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

async fn send(c: &reqwest::Client, sc: &Sidecar, node: &str, body: Value) -> Value {
    let (s, a) = post(c, &sc.at(&format!("/v1/nodes/{node}/events")), &body).await;
    assert_eq!(s, 202, "{a}");
    a
}

async fn last_in(server: &NatsServer, stream: &str) -> Envelope {
    let js = jetstream::new(server.client().await);
    let mut st = js.get_stream(stream).await.unwrap();
    let last = st.info().await.unwrap().state.last_sequence;
    Envelope::decode(&st.get_raw_message(last).await.unwrap().payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_acks_after_publishing_emits_with_causation() {
    let server = NatsServer::start();
    apply(&server, &manifests("", "")).await;
    let app = App::start(|r| {
        let order = r.body["payload"]["orderId"].clone();
        (
            200,
            json!({"emit": [
                {"node": "shipping", "type": "stock-reserved", "payload": {"orderId": order}},
                {"store": "dead", "subject": "audit", "type": "reserved"}
            ]}),
        )
    })
    .await;
    let port = app.port.to_string();
    let inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let sent = send(&c, &web, "inventory", json!({"type": "order-placed", "payload": {"orderId": "42"}})).await;
    let sent_id = sent["id"].as_str().unwrap().to_owned();
    // Not for this listener: acked without delivery.
    send(&c, &web, "inventory", json!({"type": "order-cancelled"})).await;
    consumer_settled(&server).await;
    assert_eq!(app.count(), 1, "only the wanted type is pushed");
    let got = app.received.lock().unwrap()[0].clone();
    assert_eq!(got.path, "/events");
    assert_eq!(got.headers["cw-event-id"], sent_id);
    assert_eq!(got.headers["cw-type"], "order-placed");
    assert_eq!(got.headers["cw-correlation-id"], sent_id);
    assert_eq!(got.headers["cw-delivery-attempt"], "1");
    assert_eq!((&got.body["payload"]["orderId"], &got.body["stream"]), (&json!("42"), &json!("CW_IN_shop_inventory")));
    assert_eq!(got.body["sender"], "shop/web");

    let reply = last_in(&server, "CW_IN_shop_shipping").await;
    assert_eq!(reply.event_type, "stock-reserved");
    assert_eq!(reply.causation_id.as_deref(), Some(sent_id.as_str()), "the emit points back at its cause");
    assert_eq!(reply.correlation_id, sent_id);
    assert_eq!(reply.sender, "shop/inventory");
    let hops: Vec<[String; 2]> =
        vec![["shop/web".into(), "shop/inventory".into()], ["shop/inventory".into(), "shop/shipping".into()]];
    assert_eq!(reply.path, hops);
    assert!(reply.lamport > got.body["lamport"].as_u64().unwrap(), "Lamport time moves forward");
    assert_eq!(last_in(&server, "CW_ES_shop_dead").await.causation_id.as_deref(), Some(sent_id.as_str()));

    // An app calling its sidecar with Cw-Causation-Id inherits correlation and path.
    let r = c
        .post(inv.at("/v1/nodes/web/events"))
        .header("cw-causation-id", sent_id.as_str())
        .json(&json!({"type": "noted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let noted = last_in(&server, "CW_IN_shop_web").await;
    assert_eq!(
        (noted.causation_id.as_deref(), noted.correlation_id.as_str()),
        (Some(sent_id.as_str()), sent_id.as_str())
    );
    assert_eq!(noted.path.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_backoff_then_acked() {
    let server = NatsServer::start();
    apply(&server, &manifests("", "")).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let (c2, t2) = (calls.clone(), times.clone());
    let app = App::start(move |_| {
        t2.lock().unwrap().push(Instant::now());
        match c2.fetch_add(1, Ordering::SeqCst) {
            0 => (503, json!("busy")),
            1 => (429, json!("slow down")),
            _ => (200, json!({})),
        }
    })
    .await;
    let port = app.port.to_string();
    let _inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    send(&http(), &web, "inventory", json!({"type": "order-placed"})).await;
    consumer_settled(&server).await;
    let attempts: Vec<String> =
        app.received.lock().unwrap().iter().map(|r| r.headers["cw-delivery-attempt"].clone()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let t = times.lock().unwrap().clone();
    assert!(t[1] - t[0] >= Duration::from_millis(90), "first backoff is 100ms: {:?}", t[1] - t[0]);
    assert!(t[2] - t[1] >= Duration::from_millis(190), "second backoff is 200ms: {:?}", t[2] - t[1]);
}

async fn dead_letters(c: &reqwest::Client, sc: &Sidecar) -> Vec<Value> {
    load(c, sc, "dead", "reserve").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_exhausted_events_go_to_the_dead_letter_with_the_error() {
    let server = NatsServer::start();
    apply(&server, &manifests("", ", maxDeliver: 2")).await;
    let app = App::start(|r| match r.body["payload"]["kind"].as_str() {
        Some("bad") => (422, json!({"problem": "order has no items"})),
        _ => (500, json!("database down")),
    })
    .await;
    let port = app.port.to_string();
    let _inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let bad = send(&c, &web, "inventory", json!({"type": "order-placed", "payload": {"kind": "bad"}})).await;
    let flaky = send(&c, &web, "inventory", json!({"type": "order-placed", "payload": {"kind": "flaky"}})).await;
    consumer_settled(&server).await;
    let dl = eventually(Duration::from_secs(10), "two dead letters", || {
        let (c, web) = (c.clone(), &web);
        async move { Some(dead_letters(&c, web).await).filter(|d| d.len() == 2) }
    })
    .await;
    let by_id = |id: &Value| dl.iter().find(|e| &e["id"] == id).cloned().expect("dead-lettered");
    let b = by_id(&bad["id"]);
    assert_eq!((&b["deadLetter"]["status"], &b["deadLetter"]["attempts"]), (&json!(422), &json!(1)));
    assert!(b["deadLetter"]["error"].as_str().unwrap().contains("order has no items"), "{b}");
    assert_eq!(b["deadLetter"]["listener"], "shop/reserve");
    assert_eq!(b["payload"]["kind"], "bad", "the dead letter keeps the event");
    let f = by_id(&flaky["id"]);
    assert_eq!((&f["deadLetter"]["status"], &f["deadLetter"]["attempts"]), (&json!(500), &json!(2)));
    assert!(f["deadLetter"]["error"].as_str().unwrap().contains("database down"));
    let bad_calls = app.received.lock().unwrap().iter().filter(|r| r.body["payload"]["kind"] == "bad").count();
    assert_eq!(bad_calls, 1, "a 422 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_down_then_up_loses_nothing() {
    let server = NatsServer::start();
    apply(&server, &manifests("", "")).await;
    // The app is not there at all: pushes are refused and naked.
    let port = free_port();
    let inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port.to_string())]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let mut ids = HashSet::new();
    for n in 0..10 {
        ids.insert(
            send(&c, &web, "inventory", json!({"type": "order-placed", "payload": n})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    eventually(Duration::from_secs(10), "refused pushes counted as naks", || {
        let (c, url) = (c.clone(), inv.at("/metrics"));
        async move { c.get(url).send().await.ok()?.text().await.ok().filter(|m| m.contains("outcome=\"nak\"")).map(|_| ()) }
    })
    .await;
    let app = App::start_on(port, Arc::new(|_| (200, json!({})))).await;
    consumer_settled(&server).await;
    let got: HashSet<String> = app.ids().into_iter().collect();
    assert_eq!(got, ids, "every event arrives once the app is up");

    // With a health check, delivery pauses while the app is unhealthy, and resumes after.
    drop(inv);
    app.healthy.store(false, Ordering::SeqCst);
    let before = app.count();
    let inv = Sidecar::spawn(
        &server.url,
        "shop",
        "inventory",
        &[("CAUSEWAY_APP_PORT", &port.to_string()), ("CAUSEWAY_APP_HEALTH_PATH", "/healthz")],
    );
    eventually(Duration::from_secs(10), "sidecar serving", || {
        let (c, url) = (c.clone(), inv.at("/healthz"));
        async move { c.get(url).send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    for n in 0..5 {
        send(&c, &web, "inventory", json!({"type": "order-placed", "payload": n})).await;
    }
    eventually(Duration::from_secs(10), "app reported unhealthy", || {
        let (c, url) = (c.clone(), inv.at("/metrics"));
        async move {
            c.get(url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
                .filter(|m| m.contains("causeway_sidecar_app_healthy 0"))
                .map(|_| ())
        }
    })
    .await;
    assert_eq!(app.count(), before, "nothing is pushed to an unhealthy app");
    app.healthy.store(true, Ordering::SeqCst);
    consumer_settled(&server).await;
    assert_eq!(app.count(), before + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_delivery_keeps_stream_order_through_retries() {
    let server = NatsServer::start();
    apply(&server, &manifests("", ", ordered: true")).await;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let s2 = seen.clone();
    let app = App::start(move |r| {
        let n = r.body["payload"].as_u64().unwrap();
        // Every third event fails on its first attempt.
        if n % 3 == 0 && s2.lock().unwrap().insert(n) { (503, json!("later")) } else { (200, json!({})) }
    })
    .await;
    let port = app.port.to_string();
    let _inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    for n in 0..12u64 {
        send(&c, &web, "inventory", json!({"type": "order-placed", "payload": n})).await;
    }
    consumer_settled(&server).await;
    let order: Vec<u64> = app.received.lock().unwrap().iter().map(|r| r.body["payload"].as_u64().unwrap()).collect();
    let mut expected = Vec::new();
    for n in 0..12u64 {
        expected.push(n);
        if n % 3 == 0 {
            expected.push(n);
        }
    }
    assert_eq!(order, expected, "one at a time, in order, a failed event retried before the next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sidecars_of_one_node_share_the_work() {
    let server = NatsServer::start();
    apply(&server, &manifests("", "")).await;
    let slow = || {
        Arc::new(|_: &Received| {
            std::thread::sleep(Duration::from_millis(5));
            (200, json!({}))
        })
    };
    let (a, b) = (App::start_on(0, slow()).await, App::start_on(0, slow()).await);
    let _s1 = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &a.port.to_string())]).await;
    let _s2 = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &b.port.to_string())]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let batch: Vec<Value> = (0..100).map(|n| json!({"type": "order-placed", "payload": n})).collect();
    let (s, acks) = post(&c, &web.at("/v1/nodes/inventory/events"), &Value::Array(batch)).await;
    assert_eq!(s, 202, "{acks}");
    consumer_settled(&server).await;
    let (ia, ib) = (a.ids(), b.ids());
    let all: Vec<&String> = ia.iter().chain(ib.iter()).collect();
    let unique: HashSet<&String> = all.iter().copied().collect();
    assert_eq!((all.len(), unique.len()), (100, 100), "each event handled once");
    assert!(!ia.is_empty() && !ib.is_empty(), "both replicas took work: {} and {}", ia.len(), ib.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_skips_events_already_handled() {
    let server = NatsServer::start();
    apply(&server, &manifests(", exactlyOnce: true", "")).await;
    let app = App::start(|_| (200, json!({}))).await;
    let port = app.port.to_string();
    let _inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    // A redelivery of an event a replica already handled: its mark is in the state bucket.
    let js = jetstream::new(server.client().await);
    let kv = js.get_key_value("CW_ST_shop_inventory").await.unwrap();
    kv.put("_cw.handled.reserve.already-1", "1".into()).await.unwrap();
    send(&c, &web, "inventory", json!({"type": "order-placed", "id": "already-1"})).await;
    send(&c, &web, "inventory", json!({"type": "order-placed", "id": "fresh-1"})).await;
    consumer_settled(&server).await;
    assert_eq!(app.ids(), ["fresh-1"]);
    assert!(kv.get("_cw.handled.reserve.fresh-1").await.unwrap().is_some(), "handled events are recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_deliveries() {
    let server = NatsServer::start();
    apply(&server, &manifests("", "")).await;
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = started.clone();
    let app = App::start(move |_| {
        s2.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(700));
        (200, json!({}))
    })
    .await;
    let port = app.port.to_string();
    let mut inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    send(&http(), &web, "inventory", json!({"type": "order-placed"})).await;
    eventually(Duration::from_secs(10), "push started", || {
        let s = started.clone();
        async move { (s.load(Ordering::SeqCst) > 0).then_some(()) }
    })
    .await;
    assert_eq!(inv.terminate(), Some(0), "clean exit");
    assert_eq!(app.count(), 1);
    consumer_settled(&server).await;
    assert_eq!(started.load(Ordering::SeqCst), 1, "acked before exit, so never redelivered");
}
