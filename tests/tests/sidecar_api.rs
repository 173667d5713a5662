//! The sidecar's HTTP API against a real nats-server and the real binary: every route's success
//! and failure paths, optimistic concurrency under load, deduplication, batches, CloudEvents,
//! KV preconditions, live streams with resume, pull delivery and large payloads.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{collections::HashSet, time::Duration};

use causeway_tests::{NatsServer, bin, eventually};
use futures::StreamExt;
use serde_json::{Value, json};
use support::*;

fn manifests() -> String {
    format!(
        "{SHOP}---\n{}",
        r#"apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: history, namespace: shop}
spec:
  node: web
  source: {store: orders}
  startAt: all
  delivery: {mode: pull, ackWait: 5s}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: pushed, namespace: shop}
spec:
  node: web
  source: {inbox: web}
  delivery: {mode: push}
"#
    )
}

async fn setup(env: &[(&str, &str)]) -> (NatsServer, Sidecar) {
    let server = NatsServer::start();
    apply(&server, &manifests()).await;
    let sc = Sidecar::start(&server, "shop", "web", env).await;
    (server, sc)
}

#[test]
fn bad_configuration_exits_64_with_one_line() {
    for (env, var) in [
        (vec![], "CAUSEWAY_NODE"),
        (vec![("CAUSEWAY_NODE", "Not_A_Label")], "CAUSEWAY_NODE"),
        (vec![("CAUSEWAY_NODE", "web"), ("CAUSEWAY_BIND", "0.0.0.0")], "CAUSEWAY_API_TOKEN"),
        (vec![("CAUSEWAY_NODE", "web"), ("CAUSEWAY_PORT", "http")], "CAUSEWAY_PORT"),
    ] {
        let out = std::process::Command::new(bin("causeway-sidecar")).env_clear().envs(env).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(var), "{err}");
    }
}

#[tokio::test]
async fn send_deduplicates_and_resolves_nodes_through_the_registry() {
    let (server, sc) = setup(&[("CAUSEWAY_MAX_BODY", "64Ki")]).await;
    let c = http();
    let url = sc.at("/v1/nodes/inventory/events");
    let (s, a) = post(&c, &url, &json!({"type": "order-placed", "payload": {"orderId": "1"}, "id": "ord-1"})).await;
    assert_eq!((s, &a["id"], &a["duplicate"]), (202, &json!("ord-1"), &json!(false)), "{a}");
    let seq = a["sequence"].as_u64().unwrap();
    let (s, b) = post(&c, &url, &json!({"type": "order-placed", "payload": {"orderId": "1"}, "id": "ord-1"})).await;
    assert_eq!((s, &b["duplicate"], b["sequence"].as_u64()), (202, &json!(true), Some(seq)), "{b}");
    // `namespace.name` works too.
    let (s, _) = post(&c, &sc.at("/v1/nodes/shop.inventory/events"), &json!({"type": "x"})).await;
    assert_eq!(s, 202);
    let js = async_nats::jetstream::new(server.client().await);
    let mut inbox = js.get_stream("CW_IN_shop_inventory").await.unwrap();
    assert_eq!(inbox.info().await.unwrap().state.messages, 2, "the retried id is stored once");

    // Unknown node: 404 naming the known ones; a node created later is reachable without restart.
    let got = post(&c, &sc.at("/v1/nodes/late/events"), &json!({"type": "x"})).await;
    assert_eq!(got.1["known"], json!(["inventory", "web"]), "{}", got.1);
    assert_error(got, 404, "unknown_node");
    apply(
        &server,
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: late, namespace: shop}\nspec: {}\n",
    )
    .await;
    eventually(Duration::from_secs(10), "late node reachable", || {
        let (c, url) = (c.clone(), sc.at("/v1/nodes/late/events"));
        async move { (post(&c, &url, &json!({"type": "x"})).await.0 == 202).then_some(()) }
    })
    .await;

    // Bad input: the right 4xx, JSON, and the sidecar keeps serving.
    let raw = |body: &'static str, ct: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.post(&url).header("content-type", ct).body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_error(raw("{\"type\":", "application/json").await, 400, "invalid_json");
    assert_error(raw("", "application/json").await, 400, "invalid_json");
    assert_error(raw("{\"type\":\"x\"}", "text/plain").await, 415, "unsupported_media_type");
    assert_error(raw("{\"type\":\"a b\"}", "application/json").await, 400, "invalid_type");
    assert_error(raw("{\"type\":\"a.>\"}", "application/json").await, 400, "invalid_type");
    assert_error(raw("{\"paylod\":1,\"type\":\"x\"}", "application/json").await, 400, "invalid_event");
    assert_error(raw("[]", "application/json").await, 400, "invalid_event");
    assert_error(raw("\"x\"", "application/json").await, 400, "invalid_event");
    assert_error(raw("{\"type\":\"x\",\"id\":\"a b\"}", "application/json").await, 400, "invalid_event");
    let big = json!({"type": "x", "payload": "y".repeat(100 * 1024)});
    assert_error(post(&c, &url, &big).await, 413, "payload_too_large");
    assert_error(get(&c, &url).await, 405, "method_not_allowed");
    assert_error(get(&c, &sc.at("/v1/nope")).await, 404, "not_found");
    let (s, _) = post(&c, &url, &json!({"type": "still-serving"})).await;
    assert_eq!(s, 202);
}

#[tokio::test]
async fn batch_send_is_all_or_nothing_and_retries_are_duplicates() {
    let (server, sc) = setup(&[]).await;
    let c = http();
    let url = sc.at("/v1/nodes/inventory/events");
    let batch = json!([{"type": "a", "id": "b-1"}, {"type": "b", "id": "b-2"}, {"type": "c", "id": "b-3"}]);
    let (s, acks) = post(&c, &url, &batch).await;
    assert_eq!(s, 202, "{acks}");
    let seqs: Vec<u64> = acks.as_array().unwrap().iter().map(|a| a["sequence"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let (s, again) = post(&c, &url, &batch).await;
    assert_eq!(s, 202, "{again}");
    assert!(again.as_array().unwrap().iter().all(|a| a["duplicate"] == true), "{again}");
    assert_eq!(again.as_array().unwrap().iter().map(|a| a["sequence"].as_u64().unwrap()).collect::<Vec<_>>(), seqs);
    // One old id among new ones: refused whole, nothing stored.
    let mixed = json!([{"type": "a", "id": "b-4"}, {"type": "a", "id": "b-1"}]);
    let got = post(&c, &url, &mixed).await;
    assert_eq!(got.1["ids"], json!(["b-1"]), "{}", got.1);
    assert_error(got, 409, "duplicate_in_batch");
    // An invalid event anywhere refuses the whole batch before anything is sent.
    let got = post(&c, &url, &json!([{"type": "ok"}, {"type": "not ok"}])).await;
    assert_error(got, 400, "invalid_type");
    let js = async_nats::jetstream::new(server.client().await);
    let mut inbox = js.get_stream("CW_IN_shop_inventory").await.unwrap();
    assert_eq!(inbox.info().await.unwrap().state.messages, 3);
}

#[tokio::test]
async fn append_load_and_figures() {
    let (_server, sc) = setup(&[]).await;
    let c = http();
    let append = |subject: &str, q: &str| sc.at(&format!("/v1/stores/orders/subjects/{subject}/events{q}"));
    let (s, a) = post(&c, &append("order-1", "?expectedSequence=0"), &json!({"type": "placed", "id": "o1-a"})).await;
    assert_eq!(s, 202, "{a}");
    let s1 = a["sequence"].as_u64().unwrap();
    let got = post(&c, &append("order-1", "?expectedSequence=0"), &json!({"type": "paid"})).await;
    assert_eq!(got.1["lastSequence"], s1, "{}", got.1);
    assert_error(got, 409, "sequence_conflict");
    // Retrying an accepted conditional append is a duplicate, not a conflict.
    let (s, d) = post(&c, &append("order-1", "?expectedSequence=0"), &json!({"type": "placed", "id": "o1-a"})).await;
    assert_eq!((s, &d["duplicate"], d["sequence"].as_u64()), (202, &json!(true), Some(s1)), "{d}");
    let r = c
        .post(append("order-1", ""))
        .header("if-match", format!("\"{s1}\""))
        .json(&json!({"type": "paid", "payload": {"amount": 12}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let s2 = r.json::<Value>().await.unwrap()["sequence"].as_u64().unwrap();
    let r =
        c.post(append("order-1", "")).header("if-match", "\"abc\"").json(&json!({"type": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_header");
    for sub in ["order.2", "order.3"] {
        assert_eq!(post(&c, &append(sub, ""), &json!({"type": "placed"})).await.0, 202);
    }

    let (s, l) = get(&c, &append("order-1", "")).await;
    assert_eq!(s, 200);
    let events = l["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(l["lastSequence"], s2);
    let e = &events[1];
    assert_eq!((&e["type"], &e["payload"]["amount"], &e["subject"]), (&json!("paid"), &json!(12), &json!("order-1")));
    assert_eq!((&e["stream"], &e["sender"]), (&json!("CW_ES_shop_orders"), &json!("shop/web")));
    assert_eq!(e["path"], json!([["shop/web", "shop/orders"]]));
    assert!(e["lamport"].as_u64().unwrap() > events[0]["lamport"].as_u64().unwrap());
    assert_eq!(e["correlationId"], e["id"]);
    let (_, l) = get(&c, &append("order-1", &format!("?after={s1}"))).await;
    assert_eq!(l["events"].as_array().unwrap().len(), 1);
    let (_, l) = get(&c, &append("order-1", &format!("?upTo={s1}"))).await;
    assert_eq!((l["events"].as_array().unwrap().len(), &l["lastSequence"]), (1, &json!(s1)));
    let (_, l) = get(&c, &append("order-1", "?limit=1")).await;
    assert_eq!((l["events"].as_array().unwrap().len(), &l["more"]), (1, &json!(true)));
    let (_, l) = get(&c, &append("order.*", "")).await;
    assert_eq!(l["events"].as_array().unwrap().len(), 2);
    let (_, l) = get(&c, &append("%3E", "")).await;
    assert_eq!(l["events"].as_array().unwrap().len(), 4);
    let (_, l) = get(&c, &append("empty", "")).await;
    assert_eq!((l["events"].as_array().unwrap().len(), &l["lastSequence"]), (0, &json!(0)));
    let (_, l) = get(&c, &append("order-1", &format!("?after={s2}"))).await;
    assert_eq!(l["lastSequence"], s2, "an empty load still says where the subject stands");

    assert_error(get(&c, &append("a..b", "")).await, 400, "invalid_subject");
    assert_error(post(&c, &append("a.*", ""), &json!({"type": "x"})).await, 400, "invalid_subject");
    assert_error(get(&c, &append("x", "?after=-1")).await, 400, "invalid_query");
    assert_error(get(&c, &sc.at("/v1/stores/nope/subjects/x/events")).await, 404, "unknown_store");
    assert_error(
        post(&c, &sc.at("/v1/stores/nope/subjects/x/events"), &json!({"type": "x"})).await,
        404,
        "unknown_store",
    );

    let (s, f) = get(&c, &sc.at("/v1/stores/orders")).await;
    assert_eq!(s, 200);
    assert_eq!((&f["events"], &f["lastSequence"], &f["stream"]), (&json!(4), &json!(4), &json!("CW_ES_shop_orders")));
    assert_error(get(&c, &sc.at("/v1/stores/nope")).await, 404, "unknown_store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_lose_nothing_and_get_409() {
    let (_server, sc) = setup(&[]).await;
    let c = http();
    let url = sc.at("/v1/stores/orders/subjects/counter/events");
    const TASKS: usize = 12;
    const EACH: usize = 8;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (c, url) = (c.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let (mut conflicts, mut other) = (0, 0);
            let mut expected = 0u64;
            while accepted.len() < EACH {
                let id = format!("t{t}-{}", accepted.len());
                let r = c
                    .post(format!("{url}?expectedSequence={expected}"))
                    .json(&json!({"type": "inc", "id": id}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                match status {
                    202 => {
                        assert_eq!(body["duplicate"], false);
                        expected = body["sequence"].as_u64().unwrap();
                        accepted.push((id, expected));
                    }
                    409 => {
                        conflicts += 1;
                        assert_eq!(body["error"], "sequence_conflict");
                        expected = body["lastSequence"].as_u64().unwrap();
                    }
                    _ => other += 1,
                }
            }
            (accepted, conflicts, other)
        }));
    }
    let mut accepted = Vec::new();
    let mut conflicts = 0;
    for h in handles {
        let (a, c, o) = h.await.unwrap();
        assert_eq!(o, 0, "every rejection is a 409");
        accepted.extend(a);
        conflicts += c;
    }
    assert!(conflicts > 0, "concurrent appenders must have collided at least once");
    let events = load(&c, &sc, "orders", "counter").await;
    assert_eq!(events.len(), TASKS * EACH);
    let seqs: Vec<u64> = events.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=(TASKS * EACH) as u64).collect::<Vec<_>>(), "no gaps, in order");
    let stored: HashSet<(String, u64)> =
        events.iter().map(|e| (e["id"].as_str().unwrap().to_owned(), e["sequence"].as_u64().unwrap())).collect();
    for a in &accepted {
        assert!(stored.contains(a), "accepted append {a:?} is stored where its ack said");
    }
}

#[tokio::test]
async fn cloudevents_binary_and_structured() {
    let (_server, sc) = setup(&[]).await;
    let c = http();
    let ce = json!({"specversion": "1.0", "id": "ce-1", "type": "order.placed", "source": "/web", "data": {"n": 1}});
    let r = c
        .post(sc.at("/v1/stores/orders/subjects/ce/events"))
        .header("content-type", "application/cloudevents+json")
        .body(ce.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .post(sc.at("/v1/stores/orders/subjects/ce/events"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "ce-2")
        .header("ce-type", "order.paid")
        .header("ce-source", "/pay")
        .header("ce-tenant", "acme")
        .body(r#"{"amount":5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let events = load(&c, &sc, "orders", "ce").await;
    assert_eq!(
        (&events[0]["id"], &events[0]["payload"]["n"], &events[0]["extensions"]["source"]),
        (&json!("ce-1"), &json!(1), &json!("/web"))
    );
    assert_eq!((&events[1]["type"], &events[1]["payload"]["amount"]), (&json!("order.paid"), &json!(5)));
    assert_eq!(events[1]["extensions"]["tenant"], "acme");
    let r = c
        .post(sc.at("/v1/nodes/inventory/events"))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","type":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn kv_etags_and_preconditions() {
    let (_server, sc) = setup(&[]).await;
    let c = http();
    for scope in ["global", "state"] {
        let url = sc.at(&format!("/v1/{scope}/cart.42"));
        let r = c.put(&url).header("if-none-match", "*").json(&json!({"items": [1]})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let rev1: u64 = r.headers()["etag"].to_str().unwrap().trim_matches('"').parse().unwrap();
        let r = c.put(&url).header("if-none-match", "*").json(&json!({"items": [2]})).send().await.unwrap();
        assert_eq!(r.status(), 412);
        assert_eq!(r.json::<Value>().await.unwrap()["revision"], rev1);
        let r = c.put(&url).header("if-match", format!("\"{}\"", rev1 + 100)).json(&json!(1)).send().await.unwrap();
        assert_eq!(r.status(), 412);
        let r =
            c.put(&url).header("if-match", format!("\"{rev1}\"")).json(&json!({"items": [1, 2]})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let rev2 = r.json::<Value>().await.unwrap()["revision"].as_u64().unwrap();
        assert!(rev2 > rev1);
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.headers()["etag"].to_str().unwrap(), format!("\"{rev2}\""));
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"items": [1, 2]}));
        let r = c.put(&url).header("if-match", "nope").json(&json!(1)).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let r = c.put(&url).header("content-type", "text/plain").body("x").send().await.unwrap();
        assert_eq!(r.status(), 415);
        let r = c.put(&url).header("content-type", "application/json").body("{").send().await.unwrap();
        assert_eq!(r.status(), 400);
        let r = c.delete(&url).header("if-match", format!("\"{rev1}\"")).send().await.unwrap();
        assert_eq!(r.status(), 412);
        let r = c.delete(&url).header("if-match", format!("\"{rev2}\"")).send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert_error(get(&c, &url).await, 404, "key_not_found");
        assert_error(get(&c, &sc.at(&format!("/v1/{scope}/bad..key"))).await, 400, "invalid_key");
        assert_error(get(&c, &sc.at(&format!("/v1/{scope}/_cw.handled.x"))).await, 400, "invalid_key");
    }
    // The two buckets are separate.
    c.put(sc.at("/v1/global/k")).json(&json!("g")).send().await.unwrap();
    assert_error(get(&c, &sc.at("/v1/state/k")).await, 404, "key_not_found");
}

async fn read_sse(resp: &mut reqwest::Response, buf: &mut String, want: usize) -> Vec<(Option<u64>, String, Value)> {
    let mut out = Vec::new();
    while out.len() < want {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, "message".to_owned(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if !data.is_empty() {
                out.push((id, event, serde_json::from_str(&data).unwrap()));
            }
        }
        if out.len() >= want {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.expect("SSE stalled").unwrap();
        buf.push_str(std::str::from_utf8(&chunk.expect("SSE ended")).unwrap());
    }
    out
}

#[tokio::test]
async fn live_stream_sse_resumes_without_missing_anything() {
    let (_server, sc) = setup(&[]).await;
    let c = http();
    let append = |n: usize| {
        let (c, url) = (c.clone(), sc.at("/v1/stores/orders/subjects/live/events"));
        async move { assert_eq!(post(&c, &url, &json!({"type": "n", "payload": n})).await.0, 202) }
    };
    for n in 0..3 {
        append(n).await;
    }
    let url = sc.at("/v1/stores/orders/events?subject=live");
    let mut r = c.get(&url).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    let first = read_sse(&mut r, &mut buf, 4).await;
    assert_eq!(first.iter().map(|f| f.1.as_str()).collect::<Vec<_>>(), ["message", "message", "message", "caughtUp"]);
    assert_eq!(first[3].2["lastSequence"], 3);
    for n in 3..5 {
        append(n).await;
    }
    let live = read_sse(&mut r, &mut buf, 1).await;
    assert_eq!(live[0].2["payload"], 3);
    let last_id = live[0].0.unwrap();
    drop(r);
    for n in 5..7 {
        append(n).await;
    }
    let mut r = c.get(&url).header("last-event-id", last_id.to_string()).send().await.unwrap();
    let mut buf = String::new();
    let resumed = read_sse(&mut r, &mut buf, 4).await;
    let payloads: Vec<Value> = resumed.iter().filter(|f| f.1 == "message").map(|f| f.2["payload"].clone()).collect();
    assert_eq!(payloads, vec![json!(4), json!(5), json!(6)], "resume after {last_id} misses nothing");
    assert_eq!(resumed[3].1, "caughtUp");

    // NDJSON without follow: the stored events, the marker, then the end.
    let r = c.get(format!("{url}&follow=false&after=5")).header("accept", "application/x-ndjson").send().await.unwrap();
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[2], json!({"caughtUp": true, "lastSequence": 7}));
    let r = c.get(&url).header("last-event-id", "x").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c.get(sc.at("/v1/stores/orders/events?subject=a..b")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // A streaming body is also readable chunk by chunk while events arrive.
    let r = c.get(format!("{url}&follow=false")).header("accept", "application/x-ndjson").send().await.unwrap();
    let chunks: Vec<_> = r.bytes_stream().collect().await;
    assert!(chunks.iter().all(|c| c.is_ok()));
}

#[tokio::test]
async fn pull_fetch_and_acks() {
    let (_server, sc) = setup(&[]).await;
    let c = http();
    for n in 0..3 {
        assert_eq!(
            post(&c, &sc.at("/v1/stores/orders/subjects/p/events"), &json!({"type": "n", "payload": n})).await.0,
            202
        );
    }
    let (s, l) = get(&c, &sc.at("/v1/listeners")).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = l["listeners"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["history", "pushed"]);
    assert_eq!(l["listeners"][0]["figures"]["numPending"], 3, "{l}");

    let (s, f) = post(&c, &sc.at("/v1/listeners/history/fetch?max=10&waitMs=500"), &Value::Null).await;
    assert_eq!(s, 200, "{f}");
    let events = f["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["ackToken"].is_string() && e["attempt"] == 1));
    let acks = json!([
        {"token": events[0]["ackToken"], "result": "ack"},
        {"token": events[1]["ackToken"], "result": "ack"},
        {"token": events[2]["ackToken"], "result": "nak", "delayMs": 0}
    ]);
    assert_eq!(post(&c, &sc.at("/v1/acks"), &acks).await.0, 200);
    let (_, f) = post(&c, &sc.at("/v1/listeners/history/fetch?max=10&waitMs=2000"), &Value::Null).await;
    let again = f["events"].as_array().unwrap();
    assert_eq!(again.len(), 1, "{f}");
    assert_eq!((&again[0]["payload"], &again[0]["attempt"]), (&json!(2), &json!(2)));
    assert_eq!(post(&c, &sc.at("/v1/acks"), &json!([{"token": again[0]["ackToken"], "result": "term"}])).await.0, 200);
    let (_, f) = post(&c, &sc.at("/v1/listeners/history/fetch?max=10&waitMs=200"), &Value::Null).await;
    assert_eq!(f["events"], json!([]));

    assert_error(
        post(&c, &sc.at("/v1/acks"), &json!([{"token": "$JS.ACK.OTHER.x.1.1.1.1.0", "result": "ack"}])).await,
        400,
        "invalid_ack",
    );
    assert_error(
        post(&c, &sc.at("/v1/acks"), &json!([{"token": events[0]["ackToken"], "result": "maybe"}])).await,
        400,
        "invalid_ack",
    );
    assert_error(post(&c, &sc.at("/v1/acks"), &json!({"token": "x"})).await, 400, "invalid_ack");
    assert_error(post(&c, &sc.at("/v1/listeners/nope/fetch"), &Value::Null).await, 404, "unknown_listener");
    assert_error(post(&c, &sc.at("/v1/listeners/pushed/fetch"), &Value::Null).await, 409, "not_pull_listener");
    assert_error(post(&c, &sc.at("/v1/listeners/history/fetch?max=0"), &Value::Null).await, 400, "invalid_query");
}

#[tokio::test]
async fn health_readiness_metrics_openapi_and_token() {
    let (_server, sc) = setup(&[("CAUSEWAY_API_TOKEN", "s3cret")]).await;
    let c = http();
    assert_eq!(get(&c, &sc.at("/healthz")).await.0, 200);
    let (s, r) = get(&c, &sc.at("/readyz")).await;
    assert_eq!((s, &r["natsConnected"], &r["registrySynced"]), (200, &json!(true), &json!(true)));
    assert_error(get(&c, &sc.at("/v1/openapi.json")).await, 401, "unauthorized");
    let authed = |url: String| c.get(url).bearer_auth("s3cret").send();
    let doc: Value = authed(sc.at("/v1/openapi.json")).await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1/stores/{store}/subjects/{subject}/events"]["post"].is_object());
    let r = authed(sc.at("/v1/stores/orders")).await.unwrap();
    assert_eq!(r.status(), 200);
    let metrics = c.get(sc.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("causeway_sidecar_http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"figures\""), "{metrics}");
}

#[tokio::test]
async fn large_payloads_go_through_the_blob_store() {
    let server = NatsServer::start_with_max_payload(64 * 1024);
    apply(&server, &manifests()).await;
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let big = "z".repeat(300 * 1024);
    let (s, a) =
        post(&c, &sc.at("/v1/stores/orders/subjects/big/events"), &json!({"type": "big", "payload": {"blob": big}}))
            .await;
    assert_eq!(s, 202, "{a}");
    let events = load(&c, &sc, "orders", "big").await;
    assert_eq!(events[0]["payload"]["blob"].as_str().map(str::len), Some(big.len()));
    assert!(events[0].get("blob").is_none(), "the app never sees the reference");
    // The stored envelope points at a blob of its own, which any object-store client can read
    // back (the client checks the digest) and whose bytes are the payload as MessagePack.
    let js = async_nats::jetstream::new(server.client().await);
    let stream = js.get_stream("CW_ES_shop_orders").await.unwrap();
    let stored = stream.get_raw_message(a["sequence"].as_u64().unwrap()).await.unwrap();
    let env = causeway_api::envelope::Envelope::decode(&stored.payload).unwrap();
    let r = env.blob.expect("the envelope carries a blob reference");
    assert!(r.name.starts_with(&format!("event/{}/", a["id"].as_str().unwrap())), "{}", r.name);
    assert!(r.digest.as_deref().is_some_and(|d| d.starts_with("SHA-256=")), "{r:?}");
    let store = js.get_object_store("CW_BLOB_shop").await.expect("blob bucket");
    let info = store.info(&r.name).await.expect("the object exists");
    assert_eq!((info.size as u64, info.digest.as_deref()), (r.size, r.digest.as_deref()));
    let mut obj = store.get(&r.name).await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut bytes).await.unwrap();
    let v: Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(v["blob"].as_str().map(str::len), Some(big.len()));
    let (s, _) = post(&c, &sc.at("/v1/nodes/inventory/events"), &json!({"type": "big", "payload": big})).await;
    assert_eq!(s, 202);
}
