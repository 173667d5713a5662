//! The node's Lamport clock survives a sidecar crash: events sent after a restart carry later
//! times than every event sent before it.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::time::Duration;

use causeway_tests::{NatsServer, eventually};
use serde_json::json;
use support::*;

const NODES: &str = "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: web, namespace: shop}\n---\n\
apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: sink, namespace: shop}\n---\n\
apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {name: log, namespace: shop}\n";

async fn lamports(c: &reqwest::Client, sc: &Sidecar) -> Vec<u64> {
    load(c, sc, "log", "s").await.iter().map(|e| e["lamport"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn lamport_clock_is_monotonic_across_a_sidecar_crash() {
    let server = NatsServer::start();
    apply(&server, NODES).await;
    let c = http();
    let mut sc = Sidecar::start(&server, "shop", "web", &[]).await;
    for _ in 0..5 {
        let (s, _) = post(&c, &sc.at("/v1/stores/log/subjects/s/events"), &json!({"type": "t"})).await;
        assert_eq!(s, 202);
    }
    let before = lamports(&c, &sc).await;
    assert_eq!(before, vec![1, 2, 3, 4, 5], "each send ticks the clock");
    // Wait until the clock is saved, then crash the sidecar.
    let js = async_nats::jetstream::new(server.client().await);
    let kv = js.get_key_value("CW_ST_shop_web").await.unwrap();
    eventually(Duration::from_secs(10), "clock saved", || {
        let kv = kv.clone();
        async move { (kv.get("_cw.lamport").await.ok()?? == "5".as_bytes()).then_some(()) }
    })
    .await;
    sc.kill();

    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let (s, _) = post(&c, &sc.at("/v1/stores/log/subjects/s/events"), &json!({"type": "t"})).await;
    assert_eq!(s, 202);
    let after = lamports(&c, &sc).await;
    assert_eq!(after.len(), 6);
    assert!(after[5] > before[4], "after a restart the clock moves on: {after:?}");
    // Readiness reports the restored clock.
    let ready: serde_json::Value = c.get(sc.at("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["clockRestored"], true, "{ready}");
}
