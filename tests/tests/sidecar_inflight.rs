//! `maxInFlight` bounds the events handed to the app at once — across every sidecar of the node,
//! because the shared durable consumer's max_ack_pending enforces it on the server.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use causeway_tests::{NatsServer, eventually};
use http_body_util::Full;
use hyper::{Response, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::json;
use support::*;

const MANIFESTS: &str = "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: web, namespace: shop}\n---\n\
apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: inventory, namespace: shop}\nspec:\n  delivery: {maxInFlight: 3}\n---\n\
apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {name: reserve, namespace: shop}\nspec:\n  node: inventory\n  source: {inbox: inventory}\n  delivery: {mode: push, path: /events}\n";

/// A slow app that counts how many deliveries it holds at once.
async fn slow_app(now: Arc<AtomicUsize>, max: Arc<AtomicUsize>, done: Arc<AtomicUsize>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { break };
            let (now, max, done) = (now.clone(), max.clone(), done.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let (now, max, done) = (now.clone(), max.clone(), done.clone());
                    async move {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        now.fetch_sub(1, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_deliveries_across_all_sidecars_of_a_node() {
    let server = NatsServer::start();
    apply(&server, MANIFESTS).await;
    let (now, max, done) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let port = slow_app(now, max.clone(), done.clone()).await.to_string();
    let env = [("CAUSEWAY_APP_PORT", port.as_str())];
    let a = Sidecar::start(&server, "shop", "inventory", &env).await;
    let b = Sidecar::start(&server, "shop", "inventory", &env).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let events: Vec<_> = (0..15).map(|i| json!({"type": "order-placed", "payload": {"i": i}})).collect();
    let (s, _) = post(&c, &web.at("/v1/nodes/inventory/events"), &json!(events)).await;
    assert_eq!(s, 202);
    eventually(Duration::from_secs(20), "all 15 delivered", || {
        let done = done.clone();
        async move { (done.load(Ordering::SeqCst) >= 15).then_some(()) }
    })
    .await;
    let max = max.load(Ordering::SeqCst);
    assert!(max <= 3, "at most maxInFlight=3 at once across both sidecars, saw {max}");
    assert!(max >= 2, "delivery is concurrent up to the bound, saw only {max}");
    drop((a, b));
}
