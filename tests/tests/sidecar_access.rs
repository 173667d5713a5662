//! A node's access policy (`spec.access`) and the sender that its inbox subject proves, enforced
//! by the sidecar itself (here with one shared NATS user, so nothing but the sidecar enforces
//! them; tests/tests/node_isolation.rs shows NATS refusing the same things with node
//! credentials).

#[path = "sidecar_support/mod.rs"]
mod support;

use std::time::Duration;

use async_nats::HeaderMap;
use causeway_api::envelope::{Envelope, HEADER_MSG_ID, HEADER_TYPE};
use causeway_tests::{NatsServer, eventually};
use serde_json::{Value, json};
use support::*;

const BASE: &str = r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: audit, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: dead, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: inventory, namespace: shop}
spec:
  delivery: {ackWait: 5s, backoff: [100ms]}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: billing, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: ledger, namespace: other}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: x, namespace: other}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: reserve, namespace: shop}
spec:
  node: inventory
  source: {inbox: inventory}
  delivery: {mode: push, path: /events, timeout: 1s}
  deadLetter: {store: dead, subject: reserve}
"#;

fn web(access: &str) -> String {
    format!(
        "{BASE}---\napiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {{name: web, namespace: shop}}\nspec: {{{access}}}\n"
    )
}

fn forbidden(got: (u16, Value), policy: &str, names: &str) {
    assert_eq!(got.0, 403, "{}", got.1);
    assert_eq!(got.1["error"], "forbidden", "{}", got.1);
    assert_eq!(got.1["policy"], policy, "{}", got.1);
    let m = got.1["message"].as_str().unwrap_or_default();
    assert!(m.contains(names), "the message names {names:?}: {m}");
}

async fn post_event(c: &reqwest::Client, url: &str) -> (u16, Value) {
    post(c, url, &json!({"type": "t", "payload": {}})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_is_this_namespace_and_nothing_across() {
    let server = NatsServer::start();
    apply(&server, &web("")).await;
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    assert_eq!(post_event(&c, &sc.at("/v1/nodes/billing/events")).await.0, 202);
    assert_eq!(post_event(&c, &sc.at("/v1/stores/audit/subjects/a/events")).await.0, 202);
    assert_eq!(get(&c, &sc.at("/v1/stores/audit/subjects/a/events")).await.0, 200);
    forbidden(post_event(&c, &sc.at("/v1/nodes/other.x/events")).await, "shop/web spec.access.send", "other/x");
    forbidden(
        post_event(&c, &sc.at("/v1/stores/other.ledger/subjects/a/events")).await,
        "shop/web spec.access.append",
        "other/ledger",
    );
    forbidden(get(&c, &sc.at("/v1/stores/other.ledger")).await, "shop/web spec.access.read", "other/ledger");
    // Refused before the name is looked up: a name that does not exist is refused the same way,
    // so the policy does not reveal what exists elsewhere.
    forbidden(post_event(&c, &sc.at("/v1/nodes/other.nope/events")).await, "shop/web spec.access.send", "other/nope");

    // Allowing the other namespace takes effect without a restart.
    apply(&server, &web(r#"access: {send: ["*", "other/*"], append: ["*", "other/ledger"]}"#)).await;
    eventually(Duration::from_secs(10), "the new policy is followed", || {
        let (c, url) = (c.clone(), sc.at("/v1/nodes/other.x/events"));
        async move { (post_event(&c, &url).await.0 == 202).then_some(()) }
    })
    .await;
    let (s, a) = post_event(&c, &sc.at("/v1/stores/other.ledger/subjects/a/events")).await;
    assert_eq!(s, 202, "{a}");
    let (s, a) = get(&c, &sc.at("/v1/stores/other.ledger/subjects/a/events")).await;
    assert_eq!((s, a["events"].as_array().map(Vec::len)), (200, Some(1)), "appending implies reading: {a}");
    assert_eq!(post_event(&c, &sc.at("/v1/nodes/other.nope/events")).await.0, 404, "allowed, and truly unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_policy_refuses_what_it_does_not_list_and_changes_nothing() {
    let server = NatsServer::start();
    apply(&server, &web(r#"access: {send: [inventory], append: [], read: [orders]}"#)).await;
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    assert_eq!(post_event(&c, &sc.at("/v1/nodes/inventory/events")).await.0, 202);
    forbidden(post_event(&c, &sc.at("/v1/nodes/billing/events")).await, "shop/web spec.access.send", "billing");
    forbidden(
        post(&c, &sc.at("/v1/nodes/billing/events"), &json!([{"type": "a"}, {"type": "b"}])).await,
        "shop/web spec.access.send",
        "billing",
    );
    forbidden(
        post_event(&c, &sc.at("/v1/stores/orders/subjects/o-1/events")).await,
        "shop/web spec.access.append",
        "orders",
    );
    assert_eq!(get(&c, &sc.at("/v1/stores/orders/subjects/o-1/events")).await.0, 200, "read is listed");
    assert_eq!(get(&c, &sc.at("/v1/stores/orders")).await.0, 200);
    let live = c.get(sc.at("/v1/stores/orders/events?follow=false")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    forbidden(get(&c, &sc.at("/v1/stores/audit/subjects/a/events")).await, "shop/web spec.access.read", "audit");
    let live = c.get(sc.at("/v1/stores/audit/events?follow=false")).send().await.unwrap();
    assert_eq!(live.status(), 403, "a live stream is a read too");

    // Nothing refused reached NATS.
    let js = async_nats::jetstream::new(server.client().await);
    for (stream, want) in [("CW_IN_shop_billing", 0), ("CW_ES_shop_orders", 0), ("CW_IN_shop_inventory", 1)] {
        let n = js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages;
        assert_eq!(n, want, "{stream}");
    }
}

/// The app's emits go through the same policy: a refused one dead-letters the event that caused
/// it, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_the_policy_refuses_is_dead_lettered_with_the_policy() {
    let server = NatsServer::start();
    let yaml = format!(
        "{}---\napiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {{name: web, namespace: shop}}\nspec: {{}}\n",
        BASE.replace(
            "  delivery: {ackWait: 5s, backoff: [100ms]}",
            "  delivery: {ackWait: 5s, backoff: [100ms]}\n  access: {send: [web]}",
        )
    );
    apply(&server, &yaml).await;
    let app = App::start(|_| (200, json!({"emit": [{"node": "billing", "type": "reserved"}]}))).await;
    let port = app.port.to_string();
    let inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    assert_eq!(post_event(&c, &web.at("/v1/nodes/inventory/events")).await.0, 202);
    let dead = eventually(Duration::from_secs(15), "the event is dead-lettered", || {
        let (c, inv) = (c.clone(), &inv);
        async move {
            let got = load(&c, inv, "dead", "reserve").await;
            (!got.is_empty()).then_some(got)
        }
    })
    .await;
    let error = dead[0]["deadLetter"]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("spec.access.send") && error.contains("billing"), "{}", dead[0]);
    let js = async_nats::jetstream::new(server.client().await);
    let n = js.get_stream("CW_IN_shop_billing").await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(n, 0, "the refused emit was not published");
}

fn envelope(id: &str, sender: &str, event_type: &str, lamport: u64) -> Envelope {
    Envelope {
        id: id.into(),
        event_type: event_type.into(),
        payload: json!({"n": 1}),
        subject: None,
        time: "2026-11-25T12:00:00Z".into(),
        sender: sender.into(),
        causation_id: None,
        correlation_id: id.into(),
        path: vec![],
        lamport,
        blob: None,
        dead_letter: None,
        replay_of: None,
        schema_version: None,
        extensions: Default::default(),
    }
}

async fn publish(server: &NatsServer, subject: &str, env: &Envelope) {
    let js = async_nats::jetstream::new(server.client().await);
    let mut h = HeaderMap::new();
    h.insert(HEADER_MSG_ID, env.id.as_str());
    h.insert(HEADER_TYPE, env.event_type.as_str());
    js.publish_with_headers(subject.to_owned(), h, env.encode().into()).await.unwrap().await.unwrap();
}

/// An event whose `sender` (or type) disagrees with the sender its subject proves never reaches
/// the app or the clock; it is dead-lettered with `forged_sender` and counted. Events that agree,
/// and events under the older subjects (which prove nothing), are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_sender_is_refused_by_the_receiving_sidecar() {
    let server = NatsServer::start();
    apply(&server, &web("")).await;
    let app = App::start(|_| (200, json!({}))).await;
    let port = app.port.to_string();
    let inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &port)]).await;

    let to = "cw.shop.to.inventory";
    publish(
        &server,
        &format!("{to}.shop.web.order-placed"),
        &envelope("forged-1", "shop/billing", "order-placed", 999_999_999),
    )
    .await;
    publish(&server, &format!("{to}.shop.web.order-placed"), &envelope("retyped-1", "shop/web", "refund-issued", 5))
        .await;
    publish(&server, &format!("{to}.shop.web.order-placed"), &envelope("honest-1", "shop/web", "order-placed", 5))
        .await;
    publish(&server, "cw.shop.in.inventory.order-placed", &envelope("legacy-1", "shop/anyone", "order-placed", 6))
        .await;

    let c = http();
    let js = async_nats::jetstream::new(server.client().await);
    // Read the dead letters straight from JetStream: loading them through a sidecar counts their
    // Lamport times, as it does for any stored event.
    let dead_stream = js.get_stream("CW_ES_shop_dead").await.unwrap();
    let dead = eventually(Duration::from_secs(15), "both forgeries are dead-lettered", || {
        let s = dead_stream.clone();
        async move {
            let mut got = Vec::new();
            for seq in 1..=2 {
                got.push(Envelope::decode(&s.get_raw_message(seq).await.ok()?.payload).unwrap());
            }
            Some(got)
        }
    })
    .await;
    eventually(Duration::from_secs(15), "the honest events arrive", || async { (app.count() >= 2).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = app.ids();
    ids.sort();
    assert_eq!(ids, vec!["honest-1", "legacy-1"], "the app never saw a forgery");
    let mut dead_ids: Vec<&str> = dead.iter().map(|d| d.id.as_str()).collect();
    dead_ids.sort();
    assert_eq!(dead_ids, vec!["forged-1", "retyped-1"]);
    for d in &dead {
        let error = &d.dead_letter.as_ref().expect("dead-letter info").error;
        assert!(error.starts_with("forged_sender") && error.contains("shop/web"), "{error}");
    }
    let metrics = reqwest::get(inv.at("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("causeway_sidecar_forged_events_total{listener=\"reserve\"} 2")),
        "{metrics}"
    );
    // The forged Lamport time did not move the receiver's clock.
    let (s, a) = post(&c, &inv.at("/v1/nodes/billing/events"), &json!({"type": "t"})).await;
    assert_eq!(s, 202, "{a}");
    let stream = js.get_stream("CW_IN_shop_billing").await.unwrap();
    let m = stream.get_last_raw_message_by_subject("cw.shop.to.billing.shop.inventory.t").await.unwrap();
    let sent = Envelope::decode(&m.payload).unwrap();
    assert!(sent.lamport < 1000, "the clock ignored the forgery: {}", sent.lamport);
}
