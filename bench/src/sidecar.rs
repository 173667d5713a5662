//! What the sidecar adds over a direct async-nats client on the same nats-server, same run:
//! latency of a send and of a conditional append (sequential), throughput with concurrent
//! clients, and the sidecar's memory before and after sustained load.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use causeway_api::{
    causal,
    envelope::{Envelope, HEADER_MSG_ID, HEADER_TYPE},
};
use causeway_tests::NatsServer;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

const N: usize = 3000;
pub(crate) const CONCURRENCY: usize = 32;
pub(crate) const PER_TASK: usize = 500;

pub(crate) type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub(crate) struct Proc(pub(crate) Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn sibling(name: &str) -> std::path::PathBuf {
    let p = std::env::current_exe().unwrap().parent().unwrap().join(name);
    assert!(p.exists(), "{} missing: build it beside causeway-bench (see bench/README.md)", p.display());
    p
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    crate::status_kib(pid, "VmRSS")
}

/// Starts the release sidecar of `node` in namespace `bench` with `env` added, and waits until
/// it is ready: the process, its pid and its base URL.
pub(crate) async fn spawn_sidecar(nats_url: &str, node: &str, env: &[(&str, String)]) -> (Proc, u32, String) {
    let port = causeway_tests::free_port();
    let mut cmd = Command::new(sibling("causeway-sidecar"));
    cmd.env("CAUSEWAY_NODE", node)
        .env("CAUSEWAY_NAMESPACE", "bench")
        .env("CAUSEWAY_NATS_URL", nats_url)
        .env("CAUSEWAY_PORT", port.to_string())
        .env("CAUSEWAY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start sidecar");
    let pid = child.id();
    let proc = Proc(child);
    let base = format!("http://127.0.0.1:{port}");
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http.request(hyper::Request::get(format!("{base}/readyz")).body(Full::default()).unwrap()).await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "sidecar {node} not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (proc, pid, base)
}

pub(crate) fn envelope(ty: &str, payload: serde_json::Value) -> Envelope {
    let ctx = causal::context(causal::Given::default(), None, "bench/web", "bench/sink");
    Envelope {
        id: ctx.id,
        event_type: ty.into(),
        payload,
        subject: Some(ty.into()),
        time: causal::now_rfc3339(),
        sender: "bench/web".into(),
        causation_id: None,
        correlation_id: ctx.correlation_id,
        path: ctx.path,
        lamport: 1,
        blob: None,
        dead_letter: None,
        replay_of: None,
        schema_version: None,
        extensions: Default::default(),
    }
}

pub(crate) async fn post(c: &Http, url: &str, body: Bytes, if_match: Option<u64>) -> u16 {
    post_seq(c, url, body, if_match).await.0
}

/// Status and the answer's `sequence`.
async fn post_seq(c: &Http, url: &str, body: Bytes, if_match: Option<u64>) -> (u16, u64) {
    let mut b = hyper::Request::post(url).header("content-type", "application/json");
    if let Some(n) = if_match {
        b = b.header("if-match", format!("\"{n}\""));
    }
    let r = c.request(b.body(Full::new(body)).unwrap()).await.expect("request");
    let status = r.status().as_u16();
    let bytes = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let seq =
        serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["sequence"].as_u64()).unwrap_or(0);
    (status, seq)
}

/// `CONCURRENCY` clients each sending `PER_TASK` events through the sidecar.
pub(crate) async fn sidecar_round(http: &Arc<Http>, url: &str, body: &Bytes) {
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, url, body) = (http.clone(), url.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                assert_eq!(post(&http, &url, body.clone(), None).await, 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

pub(crate) fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6
}

fn row(what: &str, direct: Vec<Duration>, sidecar: Vec<Duration>) {
    let (d50, s50) = (pct(direct.clone(), 0.5), pct(sidecar.clone(), 0.5));
    let (d99, s99) = (pct(direct, 0.99), pct(sidecar, 0.99));
    println!("| {what} | {d50:.0} / {d99:.0} | {s50:.0} / {s99:.0} | {:.0} | {:.2} |", s50 - d50, s50 / d50);
}

pub async fn run() {
    let server = NatsServer::start();
    let client = server.client().await;
    causeway_operator::local::apply_yaml(
        &client,
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: web, namespace: bench}\n---\n\
         apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: sink, namespace: bench}\n---\n\
         apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {name: ledger, namespace: bench}\n",
    )
    .await
    .expect("apply");
    let (_sidecar, pid, base) = spawn_sidecar(&server.url, "web", &[]).await;
    let http: Http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(CONCURRENCY).build_http();
    let js = jetstream::new(client.clone());
    let payload = serde_json::json!({"orderId": "123", "items": [{"sku": "a-1", "qty": 2}], "note": "x".repeat(200)});
    let body =
        Bytes::from(serde_json::to_vec(&serde_json::json!({"type": "order-placed", "payload": payload})).unwrap());
    let send_url = format!("{base}/v1/nodes/sink/events");

    // Warm up both paths.
    for _ in 0..200 {
        assert_eq!(post(&http, &send_url, body.clone(), None).await, 202);
        let e = envelope("order-placed", payload.clone());
        let mut h = HeaderMap::new();
        h.insert(HEADER_MSG_ID, e.id.as_str());
        h.insert(HEADER_TYPE, "order-placed");
        js.publish_with_headers("cw.bench.in.sink.order-placed", h, e.encode().into()).await.unwrap().await.unwrap();
    }
    let rss_before = rss_kib(pid);

    println!(
        "| operation | direct async-nats p50 / p99 (µs) | via sidecar p50 / p99 (µs) | added p50 (µs) | ratio p50 |"
    );
    println!("|---|---|---|---|---|");
    // Send: JSON in, envelope built and encoded, JetStream publish, wait for the ack, JSON out.
    let (mut d, mut s) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for _ in 0..N {
        let t = Instant::now();
        let e = envelope("order-placed", payload.clone());
        let mut h = HeaderMap::new();
        h.insert(HEADER_MSG_ID, e.id.as_str());
        h.insert(HEADER_TYPE, "order-placed");
        js.publish_with_headers("cw.bench.in.sink.order-placed", h, e.encode().into()).await.unwrap().await.unwrap();
        d.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(post(&http, &send_url, body.clone(), None).await, 202);
        s.push(t.elapsed());
    }
    row("send (publish + ack)", d, s);

    // Append with optimistic concurrency on one subject each.
    let (mut d, mut s) = (Vec::with_capacity(N), Vec::with_capacity(N));
    let (mut last_direct, mut last_sidecar) = (0u64, 0u64);
    let url = format!("{base}/v1/stores/ledger/subjects/sidecar/events");
    for _ in 0..N {
        let t = Instant::now();
        let e = envelope("deposited", payload.clone());
        let mut h = HeaderMap::new();
        h.insert(HEADER_MSG_ID, e.id.as_str());
        h.insert(HEADER_TYPE, "deposited");
        h.insert("Nats-Expected-Last-Subject-Sequence", last_direct.to_string().as_str());
        let ack = js.publish_with_headers("cw.bench.es.ledger.direct", h, e.encode().into()).await.unwrap().await;
        last_direct = ack.expect("direct append").sequence;
        d.push(t.elapsed());
        let t = Instant::now();
        let (status, seq) = post_seq(&http, &url, body.clone(), Some(last_sidecar)).await;
        assert_eq!(status, 202);
        last_sidecar = seq;
        s.push(t.elapsed());
    }
    row("append with expected sequence", d, s);

    // Throughput with concurrent clients.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (js, payload) = (js.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                let e = envelope("order-placed", payload.clone());
                let mut h = HeaderMap::new();
                h.insert(HEADER_MSG_ID, e.id.as_str());
                h.insert(HEADER_TYPE, "order-placed");
                js.publish_with_headers("cw.bench.in.sink.order-placed", h, e.encode().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let direct_rate = (CONCURRENCY * PER_TASK) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let http = Arc::new(http);
    sidecar_round(&http, &send_url, &body).await;
    let sidecar_rate = (CONCURRENCY * PER_TASK) as f64 / t.elapsed().as_secs_f64();
    println!();
    println!(
        "throughput, {CONCURRENCY} concurrent clients: direct {direct_rate:.0} events/s, via sidecar {sidecar_rate:.0} events/s, ratio {:.2}",
        sidecar_rate / direct_rate
    );
    let rss_after = rss_kib(pid);
    println!(
        "sidecar resident memory: {:.1} MiB after warm-up, {:.1} MiB after {} more requests",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        2 * N + CONCURRENCY * PER_TASK
    );
    // Sustained load: memory after each further round must stay flat (bounded queues, no leaks).
    let mut samples = Vec::new();
    for _ in 0..4 {
        sidecar_round(&http, &send_url, &body).await;
        samples.push(format!("{:.1}", rss_kib(pid) as f64 / 1024.0));
    }
    println!(
        "sustained load, RSS (MiB) after each further {} requests: {}",
        CONCURRENCY * PER_TASK,
        samples.join(", ")
    );
}
