//! Manual check: latency a send through the sidecar adds over a direct async-nats publish with
//! the same headers, measured in one run on one machine (ratios, not absolute numbers).
//!
//! `cargo test -p causeway-tests --release --test sidecar_latency -- --ignored --nocapture`

#[path = "sidecar_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use causeway_tests::NatsServer;
use serde_json::json;
use support::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
#[ignore = "a measurement, not a check: run by hand with --ignored --nocapture"]
async fn send_latency_over_direct_publish() {
    let server = NatsServer::start();
    apply(&server, "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: web, namespace: shop}\nspec: {}\n")
        .await;
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let js = async_nats::jetstream::new(server.client().await);
    let url = sc.at("/v1/nodes/web/events");
    const N: usize = 2000;
    let (mut direct, mut sidecar) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for i in 0..N {
        let body = json!({"type": "bench", "payload": {"i": i, "text": "x".repeat(200)}});
        let t = Instant::now();
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("d-{i}").as_str());
        h.insert("Cw-Type", "bench");
        js.publish_with_headers("cw.shop.in.web.bench", h, serde_json::to_vec(&body).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
        direct.push(t.elapsed());
        let t = Instant::now();
        let r = c.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 202);
        sidecar.push(t.elapsed());
    }
    let (d, s) = (median(direct), median(sidecar));
    println!(
        "median direct publish+ack {d:?}, via sidecar {s:?}, added {:?}, ratio {:.2}",
        s.saturating_sub(d),
        s.as_secs_f64() / d.as_secs_f64()
    );
}
