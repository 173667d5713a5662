//! What is stored never changes: regression tests for the integrity classes of bugs, against a
//! real nats-server (small `max_payload`, so payloads go to blobs) and the real sidecar.
//!
//! - blob-held payloads survive retries, refused batches, losing conditions and reused ids, and
//!   a refused request leaves no blob behind; a blob changed behind Causeway's back is reported,
//!   never served;
//! - a reused id on another subject is a 409 naming where it lives;
//! - misspelt or unsupported conditions are refused; conditions follow RFC 9110;
//! - large KV values round-trip, and replaced values leave no blob behind;
//! - the load byte budget counts blob bytes;
//! - an undecodable message is skipped and reported by load, live stream and delivery alike.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::time::Duration;

use async_nats::jetstream;
use causeway_api::envelope::Envelope;
use causeway_tests::{NatsServer, eventually};
use futures::StreamExt;
use serde_json::{Value, json};
use support::*;

const MAX_PAYLOAD: usize = 64 * 1024;

fn manifests() -> String {
    format!(
        "{SHOP}---\n{}",
        r#"apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: archive, namespace: shop}
spec: {}
"#
    )
}

async fn setup(env: &[(&str, &str)]) -> (NatsServer, Sidecar) {
    let server = NatsServer::start_with_max_payload(MAX_PAYLOAD);
    apply(&server, &manifests()).await;
    let sc = Sidecar::start(&server, "shop", "web", env).await;
    (server, sc)
}

/// A payload well over `max_payload`, distinguishable by `mark`.
fn big(mark: u32) -> Value {
    json!({"mark": mark, "fill": "x".repeat(100 * 1024)})
}

fn append_url(sc: &Sidecar, store: &str, subject: &str) -> String {
    sc.at(&format!("/v1/stores/{store}/subjects/{subject}/events"))
}

fn count_with_prefix(names: &[String], prefix: &str) -> usize {
    names.iter().filter(|n| n.starts_with(prefix)).count()
}

async fn marks(c: &reqwest::Client, sc: &Sidecar, store: &str, subject: &str) -> Vec<(String, Value)> {
    load(c, sc, store, subject)
        .await
        .into_iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e["payload"]["mark"].clone()))
        .collect()
}

#[tokio::test]
async fn blob_payloads_never_change_and_refused_requests_leave_no_blob() {
    let (server, sc) = setup(&[]).await;
    let c = http();
    let url = append_url(&sc, "orders", "a");
    let (s, a) = post(&c, &url, &json!({"type": "t", "id": "e1", "payload": big(1)})).await;
    assert_eq!((s, &a["duplicate"]), (202, &json!(false)), "{a}");

    // A retry with the same id and another payload: a duplicate, the stored payload stays.
    let (s, a) = post(&c, &url, &json!({"type": "t", "id": "e1", "payload": big(2)})).await;
    assert_eq!((s, &a["duplicate"]), (202, &json!(true)), "{a}");
    // A refused batch (one id already stored): nothing of it is stored.
    let got = post(
        &c,
        &url,
        &json!([{"type": "t", "id": "e2", "payload": big(3)}, {"type": "t", "id": "e1", "payload": big(4)}]),
    )
    .await;
    assert_error(got, 409, "duplicate_in_batch");
    // A conditional append that loses.
    let r = c
        .post(&url)
        .header("if-match", "\"0\"")
        .json(&json!({"type": "t", "id": "e3", "payload": big(5)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // The same id in another store of the namespace is another event, with a blob of its own.
    let (s, a) = post(&c, &append_url(&sc, "archive", "a"), &json!({"type": "t", "id": "e1", "payload": big(6)})).await;
    assert_eq!((s, &a["duplicate"]), (202, &json!(false)), "{a}");

    assert_eq!(
        marks(&c, &sc, "orders", "a").await,
        vec![("e1".to_owned(), json!(1))],
        "orders keeps its first payload"
    );
    assert_eq!(marks(&c, &sc, "archive", "a").await, vec![("e1".to_owned(), json!(6))]);
    let names = blob_names(&server, "shop").await;
    assert_eq!(count_with_prefix(&names, "event/e1/"), 2, "one blob per stored event: {names:?}");
    assert_eq!(names.len(), 2, "refused and duplicate requests left no blob: {names:?}");
}

#[tokio::test]
async fn a_blob_changed_behind_causeways_back_is_reported_not_served() {
    let (server, sc) = setup(&[]).await;
    let c = http();
    let (s, a) = post(&c, &append_url(&sc, "orders", "t"), &json!({"type": "t", "payload": big(7)})).await;
    assert_eq!(s, 202, "{a}");
    let (s, _) = post(&c, &append_url(&sc, "orders", "t"), &json!({"type": "t", "payload": {"small": true}})).await;
    assert_eq!(s, 202);
    // Overwrite the blob with other bytes of the same length through the object store.
    let js = jetstream::new(server.client().await);
    let stored = js
        .get_stream("CW_ES_shop_orders")
        .await
        .unwrap()
        .get_raw_message(a["sequence"].as_u64().unwrap())
        .await
        .unwrap();
    let r = Envelope::decode(&stored.payload).unwrap().blob.unwrap();
    let store = js.get_object_store("CW_BLOB_shop").await.unwrap();
    let other = rmp_serde::to_vec_named(&big(8)).unwrap();
    assert_eq!(other.len() as u64, r.size, "same size, other bytes");
    let meta = async_nats::jetstream::object_store::ObjectMetadata {
        name: r.name.clone(),
        chunk_size: Some(32 * 1024),
        ..Default::default()
    };
    store.put(meta, &mut other.as_slice()).await.unwrap();

    let (s, v) = get(&c, &sc.at("/v1/stores/orders/subjects/t/events")).await;
    assert_eq!(s, 200, "one damaged event does not make the subject unreadable: {v}");
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "only the intact event is served: {v}");
    assert_eq!(events[0]["payload"]["small"], true);
    assert_eq!(v["skipped"][0]["sequence"], a["sequence"], "{v}");
    assert!(v["skipped"][0]["error"].as_str().unwrap().contains("digest"), "{v}");

    // Deleted outright: reported as missing, still not a 503.
    store.delete(r.name.as_str()).await.unwrap();
    let (s, v) = get(&c, &sc.at("/v1/stores/orders/subjects/t/events")).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["skipped"][0]["error"].as_str().unwrap().contains("missing"), "{v}");
    let metrics = c.get(sc.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("causeway_sidecar_undecodable_events_total{where=\"load\"}"), "{metrics}");
}

#[tokio::test]
async fn a_reused_id_on_another_subject_is_refused_and_named() {
    let (_server, sc) = setup(&[]).await;
    let c = http();
    let (s, _) = post(&c, &append_url(&sc, "orders", "A"), &json!({"type": "t", "id": "x1"})).await;
    assert_eq!(s, 202);
    let r = c
        .post(append_url(&sc, "orders", "B"))
        .header("if-match", "\"0\"")
        .json(&json!({"type": "t", "id": "x1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.headers().get("etag").is_none(), "no ETag suggests B holds it");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (&v["error"], &v["subject"], &v["sequence"], &v["stream"]),
        (&json!("id_conflict"), &json!("A"), &json!(1), &json!("CW_ES_shop_orders")),
        "{v}"
    );
    assert!(load(&c, &sc, "orders", "B").await.is_empty(), "B holds nothing");
    // Unconditional too, and in a batch.
    assert_error(
        post(&c, &append_url(&sc, "orders", "B"), &json!({"type": "t", "id": "x1"})).await,
        409,
        "id_conflict",
    );
    // Sends: the inbox subject is the type, so the same id with another type is refused too.
    let send_url = sc.at("/v1/nodes/inventory/events");
    let (s, _) = post(&c, &send_url, &json!({"type": "placed", "id": "s1"})).await;
    assert_eq!(s, 202);
    let (s, a) = post(&c, &send_url, &json!({"type": "placed", "id": "s1"})).await;
    assert_eq!((s, &a["duplicate"]), (202, &json!(true)), "a true retry is a duplicate: {a}");
    let got = post(&c, &send_url, &json!({"type": "cancelled", "id": "s1"})).await;
    if causeway_tests::secure_suite() {
        // Under node isolation a sender may not read the target's inbox, so it cannot see where
        // the id lives (docs/security.md, "Known limits"): JetStream's answer stands.
        assert_eq!((got.0, &got.1["duplicate"]), (202, &json!(true)), "{}", got.1);
        return;
    }
    assert_eq!(got.1["subject"], "placed", "{}", got.1);
    assert_error(got, 409, "id_conflict");
}

#[tokio::test]
async fn misspelt_and_unsupported_conditions_are_refused_and_change_nothing() {
    let (_server, sc) = setup(&[]).await;
    let c = http();
    let url = append_url(&sc, "orders", "m");
    let (s, _) = post(&c, &url, &json!({"type": "t"})).await;
    assert_eq!(s, 202);
    for q in ["expectedsequence=5", "expected_sequence=5", "ExpectedSequence=0", "expectedSequence=1&x=1"] {
        let got = post(&c, &format!("{url}?{q}"), &json!({"type": "t"})).await;
        assert_eq!(got.1["allowed"], json!(["expectedSequence"]), "{q}: {}", got.1);
        assert_error(got, 400, "unknown_parameter");
    }
    for (name, value) in [("if-unmodified-since", "Tue, 01 Jan 2030 00:00:00 GMT"), ("if-none-match", "\"3\"")] {
        let r = c.post(&url).header(name, value).json(&json!({"type": "t"})).send().await.unwrap();
        assert_eq!(r.status(), 400, "{name}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unsupported_condition", "{name}: {v}");
    }
    for bad in ["W/\"1\"", "1", "\"abc\"", "\"1\", \"2\""] {
        let r = c.post(&url).header("if-match", bad).json(&json!({"type": "t"})).send().await.unwrap();
        assert_eq!(r.status(), 400, "If-Match {bad}");
    }
    // Routes without conditions refuse them rather than ignore them.
    let send = sc.at("/v1/nodes/inventory/events");
    let r = c.post(&send).header("if-match", "\"1\"").json(&json!({"type": "t"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_error(
        post(&c, &format!("{send}?expectedSequence=0"), &json!({"type": "t"})).await,
        400,
        "unknown_parameter",
    );
    let (s, v) = get(&c, &sc.at("/v1/stores/orders/subjects/m/events?afer=1")).await;
    assert_eq!((s, &v["allowed"]), (400, &json!(["after", "upTo", "limit"])), "{v}");
    assert_eq!(load(&c, &sc, "orders", "m").await.len(), 1, "nothing refused was stored");
    assert!(load(&c, &sc, "orders", ">").await.len() == 1);
}

#[tokio::test]
async fn conditions_follow_rfc_9110() {
    let (_server, sc) = setup(&[]).await;
    let c = http();
    let url = append_url(&sc, "orders", "c");
    // If-Match: * needs events; If-None-Match: * needs none.
    let r = c.post(&url).header("if-match", "*").json(&json!({"type": "t"})).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let r = c.post(&url).header("if-none-match", "*").json(&json!({"type": "t", "id": "c1"})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let r = c.post(&url).header("if-none-match", "*").json(&json!({"type": "t", "id": "c2"})).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let r = c.post(&url).header("if-match", "*").json(&json!({"type": "t", "id": "c3"})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(load(&c, &sc, "orders", "c").await.len(), 2);

    // Loads: If-None-Match with the current ETag is a 304 carrying it; a stale one reads.
    let load_url = sc.at("/v1/stores/orders/subjects/c/events");
    let r = c.get(&load_url).send().await.unwrap();
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(tag, "\"2\"");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = c.get(&load_url).header("if-none-match", &tag).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["etag"].to_str().unwrap()), (304, tag.as_str()));
    let r = c.get(&load_url).header("if-none-match", "\"1\"").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(&load_url).header("if-match", "\"1\"").send().await.unwrap();
    assert_eq!(r.status(), 412);
    let r = c.get(sc.at("/v1/stores/orders/subjects/%3E/events")).header("if-none-match", &tag).send().await.unwrap();
    assert_eq!(r.status(), 400, "a pattern has no ETag to match");

    // KV.
    let kv = sc.at("/v1/global/cart");
    let r = c.put(&kv).header("if-match", "*").json(&json!(1)).send().await.unwrap();
    assert_eq!(r.status(), 412, "If-Match: * needs the key to exist");
    let r = c.put(&kv).header("if-none-match", "*").json(&json!(1)).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let rev = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = c.get(&kv).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["cache-control"].to_str().unwrap()), (200, "no-store"));
    let r = c.get(&kv).header("if-none-match", &rev).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), rev);
    let r = c.get(&kv).header("if-none-match", "\"999\", \"998\"").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(&kv).header("if-match", "\"999\"").send().await.unwrap();
    assert_eq!(r.status(), 412);
    let r = c.put(&kv).header("if-match", "*").json(&json!(2)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.put(&kv).header("if-match", &rev).json(&json!(3)).send().await.unwrap();
    assert_eq!(r.status(), 412, "the old revision no longer matches");
    let r = c.put(&kv).header("if-match", "W/\"1\"").json(&json!(3)).send().await.unwrap();
    assert_eq!(r.status(), 400, "weak tags are refused, not read as strong");
    let r = c.delete(&kv).header("if-none-match", "*").send().await.unwrap();
    assert_eq!(r.status(), 412);
    let r = c.delete(&kv).header("if-match", "*").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (s, v) = get(&c, &kv).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("key_not_found")));
    let r = c.get(&kv).header("if-none-match", "*").send().await.unwrap();
    assert_eq!(r.status(), 404, "If-None-Match: * holds for a missing key, which is then not found");
}

#[tokio::test]
async fn large_kv_values_round_trip_and_replaced_values_leave_no_blob() {
    let (server, sc) = setup(&[]).await;
    let c = http();
    let kv = sc.at("/v1/global/doc");
    let r = c.put(&kv).json(&big(1)).send().await.unwrap();
    assert_eq!(r.status(), 201, "a value over max_payload is stored, not refused with 413");
    let rev1 = r.headers()["etag"].to_str().unwrap().to_owned();
    let (s, v) = get(&c, &kv).await;
    assert_eq!((s, &v), (200, &big(1)));
    let blobs = || async { count_with_prefix(&blob_names(&server, "shop").await, "kv/CW_GL_shop/doc/") };
    assert_eq!(blobs().await, 1);
    // A refused compare-and-set stores nothing and leaves no blob.
    let r = c.put(&kv).header("if-match", "\"999\"").json(&big(2)).send().await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(blobs().await, 1);
    let r = c.put(&kv).header("if-match", &rev1).json(&big(3)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(&c, &kv).await.1, big(3));
    assert_eq!(blobs().await, 1, "the replaced value's blob is gone");
    let r = c.put(&kv).json(&json!("small")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(blobs().await, 0);
    assert_eq!(get(&c, &kv).await.1, json!("small"));
    let r = c.put(&kv).json(&big(4)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.delete(&kv).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(blobs().await, 0, "a deleted value's blob is gone");
    // The node's own state bucket takes large values too.
    let st = sc.at("/v1/state/big");
    assert_eq!(c.put(&st).json(&big(5)).send().await.unwrap().status(), 201);
    assert_eq!(get(&c, &st).await.1, big(5));
}

#[tokio::test]
async fn the_load_budget_counts_blob_bytes() {
    let (_server, sc) = setup(&[("CAUSEWAY_MAX_LOAD_BYTES", "1Mi"), ("CAUSEWAY_MAX_BODY", "4Mi")]).await;
    let c = http();
    let url = append_url(&sc, "orders", "b");
    let payload = |n: u32| json!({"n": n, "fill": "y".repeat(400 * 1024)});
    for n in 0..4 {
        let (s, a) = post(&c, &url, &json!({"type": "t", "payload": payload(n)})).await;
        assert_eq!(s, 202, "{a}");
    }
    let load_url = sc.at("/v1/stores/orders/subjects/b/events");
    let r = c.get(&load_url).send().await.unwrap();
    assert!(r.headers().get("etag").is_none(), "a partial answer names no subject state");
    let body = r.bytes().await.unwrap();
    assert!(body.len() <= (1 << 20) + 64 * 1024, "the answer keeps to the 1 MiB budget: {} bytes", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["events"].as_array().unwrap().len(), &v["more"]), (2, &json!(true)));
    let (_, rest) = get(&c, &format!("{load_url}?after={}", v["lastSequence"])).await;
    assert_eq!((rest["events"].as_array().unwrap().len(), &rest["more"]), (2, &json!(false)));
    assert_eq!(rest["events"][1]["payload"]["n"], 3);
    // One event larger than the budget still comes, alone.
    let (s, _) = post(&c, &url, &json!({"type": "t", "payload": {"fill": "z".repeat(1500 * 1024)}})).await;
    assert_eq!(s, 202);
    let (_, one) = get(&c, &format!("{load_url}?after=4")).await;
    assert_eq!((one["events"].as_array().unwrap().len(), &one["more"]), (1, &json!(false)));
}

const PUSHED: &str = r#"---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: dead, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: audit, namespace: shop}
spec:
  node: inventory
  source: {store: orders}
  subjects: [u]
  startAt: all
  delivery: {mode: push, maxDeliver: 3, backoff: [100ms]}
  deadLetter: {store: dead, subject: audit}
"#;

#[tokio::test]
async fn an_undecodable_message_is_skipped_and_reported_everywhere() {
    let server = NatsServer::start_with_max_payload(MAX_PAYLOAD);
    apply(&server, &format!("{}{PUSHED}", manifests())).await;
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let url = append_url(&sc, "orders", "u");
    assert_eq!(post(&c, &url, &json!({"type": "t", "payload": 1})).await.0, 202);
    // Another client writes bytes that are not a Causeway event into the store.
    let js = jetstream::new(server.client().await);
    js.publish("cw.shop.es.orders.u", "not msgpack at all".into()).await.unwrap().await.unwrap();
    assert_eq!(post(&c, &url, &json!({"type": "t", "payload": 3})).await.0, 202);

    let (s, v) = get(&c, &sc.at("/v1/stores/orders/subjects/u/events")).await;
    assert_eq!(s, 200, "the store stays readable: {v}");
    let payloads: Vec<&Value> = v["events"].as_array().unwrap().iter().map(|e| &e["payload"]).collect();
    assert_eq!(payloads, vec![&json!(1), &json!(3)]);
    assert_eq!((&v["skipped"][0]["sequence"], &v["lastSequence"]), (&json!(2), &json!(3)), "{v}");
    let (_, all) = get(&c, &sc.at("/v1/stores/orders/subjects/%3E/events")).await;
    assert_eq!(all["skipped"].as_array().map(Vec::len), Some(1), "{all}");

    // The live stream reports it in place and goes on.
    let r = c
        .get(sc.at("/v1/stores/orders/events?subject=u&follow=false"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(
        (&lines[0]["payload"], &lines[1]["skipped"], &lines[1]["sequence"]),
        (&json!(1), &json!(true), &json!(2))
    );
    assert_eq!((&lines[2]["payload"], &lines[3]["caughtUp"]), (&json!(3), &json!(true)));

    // Push delivery delivers the good ones and dead-letters the bad one at once.
    let app = App::start(|_| (200, json!({}))).await;
    let port = app.port.to_string();
    let _inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let dead = eventually(Duration::from_secs(10), "the undecodable message in the dead letter", || {
        let (c, sc) = (c.clone(), &sc);
        async move { Some(load(&c, sc, "dead", "audit").await).filter(|d| !d.is_empty()) }
    })
    .await;
    assert_eq!(dead[0]["deadLetter"]["sequence"], 2);
    assert!(dead[0]["deadLetter"]["error"].as_str().unwrap().contains("not a Causeway event"), "{}", dead[0]);
    eventually(Duration::from_secs(10), "both good events pushed", || {
        let n = app.count();
        async move { (n == 2).then_some(()) }
    })
    .await;
}

/// JetStream API requests that create consumers, seen on the wire.
async fn consumer_creates(server: &NatsServer) -> (async_nats::Subscriber, async_nats::Client) {
    let spy = server.client().await;
    let sub = spy.subscribe("$JS.API.CONSUMER.CREATE.>").await.unwrap();
    spy.flush().await.unwrap();
    (sub, spy)
}

async fn consumers_of(server: &NatsServer, stream: &str) -> usize {
    let js = jetstream::new(server.client().await);
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.consumer_count
}

#[tokio::test]
async fn loads_live_streams_and_registry_reads_create_no_consumer() {
    let server = NatsServer::start();
    apply(&server, &format!("{}{PUSHED}", manifests())).await;
    let sc = Sidecar::start(&server, "shop", "web", &[("CAUSEWAY_MAX_STREAMS", "40")]).await;
    let c = http();
    for n in 0..5 {
        assert_eq!(post(&c, &append_url(&sc, "orders", "u"), &json!({"type": "t", "payload": n})).await.0, 202);
    }
    assert_eq!(consumers_of(&server, "KV_CW_REGISTRY").await, 0, "sidecars follow the registry without consumers");
    let baseline = consumers_of(&server, "CW_ES_shop_orders").await;
    assert_eq!(baseline, 1, "the audit listener's consumer");

    let (mut creates, _spy) = consumer_creates(&server).await;
    for _ in 0..20 {
        assert_eq!(load(&c, &sc, "orders", "u").await.len(), 5);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), creates.next()).await.is_err(),
        "a load created a consumer"
    );

    // Thirty clients open a live stream and go away, as browsers on a flaky network do.
    for _ in 0..30 {
        let r = c
            .get(sc.at("/v1/stores/orders/events?subject=u"))
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .unwrap();
        let mut body = r.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(!first.is_empty());
        drop(body);
    }
    // Open ones hold none either, and the sidecar stops cleanly while they are open.
    let mut held = Vec::new();
    for _ in 0..3 {
        let r = c.get(sc.at("/v1/stores/orders/events")).header("accept", "application/x-ndjson").send().await.unwrap();
        let mut s = r.bytes_stream();
        s.next().await.unwrap().unwrap();
        held.push(s);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), creates.next()).await.is_err(),
        "a live stream created a consumer"
    );
    assert_eq!(consumers_of(&server, "CW_ES_shop_orders").await, baseline);
    let (s, f) = get(&c, &sc.at("/v1/stores/orders")).await;
    assert_eq!((s, &f["consumers"], &f["maxConsumers"]), (200, &json!(baseline), &json!(1000)), "{f}");
    let mut sc = sc;
    assert_eq!(sc.terminate(), Some(0));
    for mut s in held {
        // Each open stream ended with the sidecar: the body ends (or the connection closes).
        while let Some(Ok(_)) = s.next().await {}
    }
}

/// The next line of an NDJSON body, as JSON.
async fn ndjson_line(
    body: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
) -> Value {
    loop {
        if let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            return serde_json::from_str(&line).unwrap();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next()).await.expect("the stream stalled");
        buf.push_str(std::str::from_utf8(&chunk.expect("the stream ended").unwrap()).unwrap());
    }
}

#[tokio::test]
async fn a_store_at_its_consumer_cap_still_loads_and_streams_live() {
    let server = NatsServer::start();
    let yaml = format!(
        "{SHOP}---\n{}",
        r#"apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: tiny, namespace: shop}
spec: {maxConsumers: 1}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: only, namespace: shop}
spec: {node: web, source: {store: tiny}, delivery: {mode: pull}}
"#
    );
    apply(&server, &yaml).await;
    let sc = Sidecar::start(&server, "shop", "web", &[("CAUSEWAY_MAX_STREAMS", "2")]).await;
    let c = http();
    assert_eq!(post(&c, &append_url(&sc, "tiny", "s"), &json!({"type": "t"})).await.0, 202);
    assert_eq!(load(&c, &sc, "tiny", "s").await.len(), 1, "a load needs no consumer");
    // Nor does a live stream: it opens on a store at its cap and follows it.
    let r =
        c.get(sc.at("/v1/stores/tiny/events?subject=s")).header("accept", "application/x-ndjson").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (mut lines, mut text) = (r.bytes_stream(), String::new());
    assert_eq!(ndjson_line(&mut lines, &mut text).await["sequence"], 1);
    assert_eq!(ndjson_line(&mut lines, &mut text).await["caughtUp"], true);
    assert_eq!(post(&c, &append_url(&sc, "tiny", "s"), &json!({"type": "t"})).await.0, 202);
    assert_eq!(ndjson_line(&mut lines, &mut text).await["sequence"], 2);
    // The sidecar's own bound on live streams.
    let mut held = Vec::new();
    let r = c.get(sc.at("/v1/stores/orders/events")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    held.push(r);
    let r = c.get(sc.at("/v1/stores/orders/events")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // The reconcile reports consumer use.
    let js = jetstream::new(server.client().await);
    let info = js.get_stream("CW_ES_shop_tiny").await.unwrap().info().await.unwrap().clone();
    assert_eq!((info.config.max_consumers, info.state.consumer_count), (1, 1));
    let client = server.client().await;
    let reconciler = causeway_operator::jetstream::Reconciler::new(client, causeway_api::registry::MANAGER_APPLY);
    let (objects, _) = causeway_operator::manifest::parse_str(&yaml, "<t>");
    let store = objects.iter().find(|o| o.object.display() == "EventStore shop/tiny").unwrap();
    let out = reconciler.reconcile(&store.object, causeway_operator::jetstream::Mode::Apply).await.unwrap();
    assert_eq!((out.figures.consumers, out.figures.max_consumers), (Some(1), Some(1)));
}

#[tokio::test]
async fn exactly_once_records_the_reply_and_replays_it_instead_of_calling_the_app_again() {
    let server = NatsServer::start();
    let yaml = format!(
        "{}{}",
        manifests().replace(
            "metadata: {name: inventory, namespace: shop}\nspec: {}",
            "metadata: {name: inventory, namespace: shop}\nspec: {delivery: {exactlyOnce: true}}"
        ),
        r#"---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: reserve, namespace: shop}
spec: {node: inventory, source: {inbox: inventory}, delivery: {mode: push}}
"#
    );
    apply(&server, &yaml).await;
    let app = App::start(|r| {
        (200, json!({"emit": [{"store": "archive", "subject": "log", "type": "seen", "payload": r.body["id"]}]}))
    })
    .await;
    let port = app.port.to_string();
    let _inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let (s, _) = post(&c, &web.at("/v1/nodes/inventory/events"), &json!({"type": "order", "id": "first"})).await;
    assert_eq!(s, 202);
    eventually(Duration::from_secs(10), "the emit stored", || {
        let (c, web) = (c.clone(), &web);
        async move { Some(load(&c, web, "archive", "log").await).filter(|l| l.len() == 1) }
    })
    .await;
    // The mark holds the app's reply.
    let js = jetstream::new(server.client().await);
    let kv = js.get_key_value("CW_ST_shop_inventory").await.unwrap();
    let mark = kv.get("_cw.handled.reserve.first").await.unwrap().expect("handled mark");
    assert!(String::from_utf8_lossy(&mark).contains("\"emit\""), "{}", String::from_utf8_lossy(&mark));

    // As after a crash between the app's 2xx and the ack: the mark is there, the event comes
    // again. The app is not called; the recorded emits are published (once: fixed ids).
    let reply = json!({"emit": [{"store": "archive", "subject": "log", "type": "seen", "payload": "replayed"}]});
    kv.put("_cw.handled.reserve.second", serde_json::to_vec(&reply).unwrap().into()).await.unwrap();
    let (s, _) = post(&c, &web.at("/v1/nodes/inventory/events"), &json!({"type": "order", "id": "second"})).await;
    assert_eq!(s, 202);
    let log = eventually(Duration::from_secs(10), "the recorded emit replayed", || {
        let (c, web) = (c.clone(), &web);
        async move { Some(load(&c, web, "archive", "log").await).filter(|l| l.len() == 2) }
    })
    .await;
    assert_eq!(log[1]["payload"], "replayed");
    assert_eq!(log[1]["causationId"], "second");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.ids(), vec!["first".to_owned()], "the app saw each event once");
}
