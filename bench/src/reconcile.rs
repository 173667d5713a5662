//! Steady-state reconcile of the shop example against the least any drift-correcting
//! reconciler must do: one JetStream INFO request per JetStream object it owns.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use causeway_operator::{
    jetstream::{Mode, Reconciler},
    local::{self, Options},
    manifest,
};
use causeway_tests::{NatsServer, examples_dir};
use futures::StreamExt;

const PASSES: usize = 200;

pub async fn run() {
    let server = NatsServer::start();
    let client = server.client().await;
    let (objects, errs) = manifest::load(&[examples_dir()]);
    assert!(errs.is_empty(), "{errs:?}");
    let reconciler = Reconciler::new(client.clone(), "apply");
    assert!(local::apply(&reconciler, &objects, Options::default()).await.unwrap().ok());
    let js = jetstream::new(client.clone());

    // What the core requests in one steady-state pass, counted on the wire.
    let spy = server.client().await;
    let mut api = spy.subscribe("$JS.API.>").await.unwrap();
    spy.flush().await.unwrap();
    for o in &objects {
        reconciler.reconcile(&o.object, Mode::Apply).await.unwrap();
    }
    client.flush().await.unwrap();
    spy.flush().await.unwrap();
    let mut requests = 0usize;
    let mut writes = 0usize;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), api.next()).await {
        requests += 1;
        if ["CREATE", "UPDATE", "DELETE"].iter().any(|w| m.subject.contains(w)) {
            writes += 1;
        }
    }

    // Baseline: one STREAM.INFO per stream the example owns (stores, inboxes, buckets).
    let mut streams: Vec<String> = Vec::new();
    let mut names = js.stream_names();
    while let Some(Ok(n)) = names.next().await {
        streams.push(n);
    }

    let mut core = Vec::with_capacity(PASSES);
    let mut base = Vec::with_capacity(PASSES);
    for _ in 0..PASSES {
        let t = Instant::now();
        for o in &objects {
            reconciler.reconcile(&o.object, Mode::Apply).await.unwrap();
        }
        core.push(t.elapsed());
        let t = Instant::now();
        for s in &streams {
            js.get_stream(s).await.unwrap();
        }
        base.push(t.elapsed());
    }
    let (c, b) = (crate::median_us(core), crate::median_us(base));
    println!("reconcile steady state, shop example: {} objects, {} JetStream streams", objects.len(), streams.len());
    println!("  JetStream API requests per pass: {requests} ({writes} writes)");
    println!("  median pass: causeway {c:.0} us, baseline (one STREAM.INFO per stream) {b:.0} us");
    println!("  ratio causeway / baseline: {:.2}", c / b);
}
