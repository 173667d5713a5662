//! `causeway-bench perf`: every workload of the sidecar (and the operator's scale figures)
//! against its floor, measured in the same run on the same nats-server, as one table per sync
//! mode: nats-server's default `sync_interval` (writes acknowledged from the page cache) and
//! `sync_interval: always` (every write fsynced before its ack).
//!
//! Floors:
//! - **direct async-nats**: the same work a client of NATS does itself (build and encode the
//!   envelope, publish with `Nats-Msg-Id`, wait for the ack), with the same concurrency;
//! - **bare HTTP hop**: a hyper server that reads the body and answers what the sidecar answers,
//!   nothing else (`causeway-bench floor-http`, its own process, the sidecar's runtime settings),
//!   driven by the same HTTP client.
//!
//! A send through a sidecar that cost nothing would run at `1 / (1/direct + 1/hop)`: the hop
//! and the publish, one after the other. The targets are ratios against these floors.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use causeway_api::{
    DnsLabel,
    envelope::{HEADER_MSG_ID, HEADER_TYPE},
    naming,
};
use causeway_tests::NatsServer;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::sync::Mutex;

use crate::{
    cpu_secs,
    sidecar::{Http, Proc, envelope, rss_kib, spawn_sidecar},
};

/// Sync modes of the nats-server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// nats-server's default `sync_interval` (2 min).
    Default,
    /// `sync_interval: always`.
    Always,
}

impl SyncMode {
    fn label(self) -> &'static str {
        match self {
            SyncMode::Default => "default sync (sync_interval 2m: acks from the page cache)",
            SyncMode::Always => "sync_interval: always (every write fsynced before its ack)",
        }
    }
}

/// Options of `causeway-bench perf`.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Small and short: only checks that every workload completes.
    pub quick: bool,
    /// The sync modes to run, in order.
    pub syncs: Vec<SyncMode>,
    /// Only these workloads (all when empty).
    pub only: Vec<String>,
}

/// The workloads, in the order they run.
const WORKLOADS: &[&str] = &["latency", "send", "batch", "push", "load", "operator"];

impl Opts {
    /// `[--quick] [--sync default|always|both]`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Opts { quick: false, syncs: vec![SyncMode::Default, SyncMode::Always], only: vec![] };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--sync" => {
                    o.syncs = match it.next().map(String::as_str) {
                        Some("default") => vec![SyncMode::Default],
                        Some("always") => vec![SyncMode::Always],
                        Some("both") => vec![SyncMode::Default, SyncMode::Always],
                        Some(other) => return Err(format!("--sync takes default, always or both (got {other:?})")),
                        None => return Err("--sync takes default, always or both".into()),
                    }
                }
                "--only" => {
                    let list = it.next().ok_or("--only takes a comma-separated list of workloads")?;
                    for w in list.split(',') {
                        if !WORKLOADS.contains(&w) {
                            return Err(format!(
                                "--only: unknown workload {w:?} (workloads: {})",
                                WORKLOADS.join(", ")
                            ));
                        }
                        o.only.push(w.to_owned());
                    }
                }
                other => return Err(format!("perf: unknown option {other:?}")),
            }
        }
        Ok(o)
    }

    fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }
}

/// How much of each workload to run.
struct Sizes {
    /// Length of each closed-loop throughput round.
    round: Duration,
    /// Length of each paced (1,000 req/s) latency run.
    paced: Duration,
    /// Events delivered by push (and by the direct consumer).
    push: usize,
    /// Events of one subject loaded, and caught up by a live stream.
    load: usize,
    /// Operator scale: stores and nodes (listeners: 5×), idle seconds, resync seconds.
    operator: (usize, u64, u64),
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                round: Duration::from_millis(300),
                paced: Duration::from_millis(300),
                push: 300,
                load: 2_000,
                operator: (5, 3, 2),
            }
        } else {
            Sizes {
                round: Duration::from_secs(5),
                paced: Duration::from_secs(5),
                push: 20_000,
                load: 100_000,
                operator: (1000, 120, 60),
            }
        }
    }
}

/// Concurrent keep-alive HTTP clients, and concurrent direct publishers.
const CLIENTS: usize = 64;
/// Concurrent clients of the batch workload.
const BATCH_CLIENTS: usize = 8;
/// Events per batch.
const BATCH: usize = 100;
/// Requests per second of the latency runs.
const RATE: u64 = 1000;
/// Largest page of a load (the sidecar's most events per answer).
const PAGE: usize = 10_000;

/// A target a row is checked against.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The ratio must be at least this.
    RatioAtLeast(f64),
    /// The ratio must be at most this.
    RatioAtMost(f64),
    /// The value must be at most this.
    AtMost(f64),
}

impl Target {
    fn met(self, value: f64, ratio: Option<f64>) -> bool {
        match self {
            Target::RatioAtLeast(t) => ratio.is_some_and(|r| r >= t),
            Target::RatioAtMost(t) => ratio.is_some_and(|r| r <= t),
            Target::AtMost(t) => value <= t,
        }
    }
    fn text(self) -> String {
        match self {
            Target::RatioAtLeast(t) => format!("ratio ≥ {t}"),
            Target::RatioAtMost(t) => format!("ratio ≤ {t}"),
            Target::AtMost(t) => format!("≤ {t}"),
        }
    }
}

/// One line of the table.
struct Row {
    workload: String,
    floor: String,
    floor_value: Option<f64>,
    value: f64,
    ratio: Option<f64>,
    target: Option<Target>,
}

impl Row {
    fn figure(workload: impl Into<String>, value: f64, target: Option<Target>) -> Self {
        Row { workload: workload.into(), floor: String::new(), floor_value: None, value, ratio: None, target }
    }
    fn against(
        workload: impl Into<String>,
        floor: impl Into<String>,
        floor_value: f64,
        value: f64,
        target: Option<Target>,
    ) -> Self {
        let ratio = (floor_value > 0.0).then(|| value / floor_value);
        Row { workload: workload.into(), floor: floor.into(), floor_value: Some(floor_value), value, ratio, target }
    }
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(mode: SyncMode, rows: &[Row]) {
    println!();
    println!("### {}", mode.label());
    println!();
    println!("| workload | floor | floor | sidecar | ratio | target | met |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let met = match r.target {
            Some(t) if t.met(r.value, r.ratio) => "**yes**",
            Some(_) => "no",
            None => "",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {met} |",
            r.workload,
            r.floor,
            r.floor_value.map(num).unwrap_or_default(),
            num(r.value),
            r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default(),
            r.target.map(Target::text).unwrap_or_default(),
        );
    }
}

/// Busy and total CPU time of the whole machine so far (from `/proc/stat`, in clock ticks).
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// The share of the machine's CPU that was busy since `from` (a [`machine_ticks`] reading).
fn busy_since(from: (f64, f64)) -> f64 {
    let now = machine_ticks();
    (now.0 - from.0) / (now.1 - from.1).max(1.0) * 100.0
}

/// Runs `CONCURRENCY` loops of `op` for `dur`: operations done, and the time they took (until
/// the last one in flight ended).
async fn closed<F, Fut>(concurrency: usize, dur: Duration, op: F) -> (u64, Duration)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (stop, done, op) = (stop.clone(), done.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                op().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a workload task panicked");
    }
    (done.load(Ordering::Relaxed), start.elapsed())
}

/// Starts `op` `RATE` times a second for `dur`, whatever the earlier ones are doing (an open
/// loop): the latency of each.
async fn paced<F, Fut>(dur: Duration, op: F) -> Vec<Duration>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let n = (dur.as_secs_f64() * RATE as f64) as u64;
    let every = Duration::from_secs_f64(1.0 / RATE as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until(start + every * i as u32).await;
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            op().await;
            t.elapsed()
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("a paced task panicked"));
    }
    out
}

fn pct_us(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6
}

/// POSTs `body` to `url` and checks the status.
async fn post(http: &Http, url: &str, body: Bytes, want: u16) {
    let req = hyper::Request::post(url).header("content-type", "application/json").body(Full::new(body)).unwrap();
    let r = http.request(req).await.expect("HTTP request");
    let status = r.status().as_u16();
    let answer = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    assert_eq!(status, want, "{url}: {}", String::from_utf8_lossy(&answer));
}

/// GETs `url` with `accept`: the whole body.
async fn get(http: &Http, url: &str, accept: &str) -> Bytes {
    let req = hyper::Request::get(url).header("accept", accept).body(Full::default()).unwrap();
    let r = http.request(req).await.expect("HTTP request");
    assert_eq!(r.status(), 200, "{url}");
    r.into_body().collect().await.expect("body").to_bytes()
}

/// Publishes one ~256-byte event to `subject` the way a direct client would, and waits for its ack.
async fn direct_send(js: &jetstream::Context, subject: String, payload: &serde_json::Value) {
    let e = envelope("order-placed", payload.clone());
    let mut h = HeaderMap::new();
    h.insert(HEADER_MSG_ID, e.id.as_str());
    h.insert(HEADER_TYPE, "order-placed");
    js.publish_with_headers(subject, h, e.encode().into()).await.expect("publish").await.expect("ack");
}

/// Fills `subject` with `n` events, many acks outstanding at once.
async fn fill(js: &jetstream::Context, subject: &str, n: usize, payload: &serde_json::Value) {
    futures::stream::iter(0..n)
        .map(|_| {
            let (js, subject, payload) = (js.clone(), subject.to_owned(), payload.clone());
            async move { direct_send(&js, subject, &payload).await }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
}

/// Sends one atomic batch of `BATCH` events directly: all but the last published, the last (the
/// commit) a request whose answer is the batch's ack.
async fn direct_batch_send(client: &async_nats::Client, subject: &str, payload: &serde_json::Value) {
    let id = ulid::Ulid::new().to_string();
    for i in 1..=BATCH {
        let e = envelope("order-placed", payload.clone());
        let mut h = HeaderMap::new();
        h.insert(HEADER_MSG_ID, e.id.as_str());
        h.insert(HEADER_TYPE, "order-placed");
        h.insert("Nats-Batch-Id", id.as_str());
        h.insert("Nats-Batch-Sequence", i.to_string().as_str());
        if i == BATCH {
            h.insert("Nats-Batch-Commit", "1");
            let ack =
                client.request_with_headers(subject.to_owned(), h, e.encode().into()).await.expect("batch commit");
            let v: serde_json::Value = serde_json::from_slice(&ack.payload).expect("batch ack");
            assert!(v.get("error").is_none(), "batch refused: {v}");
        } else {
            client.publish_with_headers(subject.to_owned(), h, e.encode().into()).await.expect("batch publish");
        }
    }
}

/// A tiny app that answers every push 200 and counts them, noting when the first and last came.
struct App {
    received: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

async fn start_app() -> (u16, Arc<App>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let port = listener.local_addr().unwrap().port();
    let app = Arc::new(App { received: AtomicU64::new(0), first: Mutex::new(None), last: Mutex::new(None) });
    let a = app.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let a = a.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let a = a.clone();
                    async move {
                        let push = req.method() == hyper::Method::POST;
                        let _ = req.into_body().collect().await;
                        if push {
                            let now = Instant::now();
                            a.first.lock().await.get_or_insert(now);
                            *a.last.lock().await = Some(now);
                            a.received.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, app)
}

/// Starts the bare HTTP floor as its own process; waits until it answers.
async fn start_floor(http: &Http, env: &[(&str, String)]) -> (Proc, u32, String) {
    let port = causeway_tests::free_port();
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("own path"));
    cmd.args([crate::floor::COMMAND, &port.to_string()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start the floor server");
    let pid = child.id();
    let url = format!("http://127.0.0.1:{port}/v1/nodes/sink/events");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = hyper::Request::post(&url).body(Full::new(Bytes::from_static(b"{}"))).unwrap();
        if http.request(req).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the floor server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (Proc(child), pid, url)
}

const MANIFESTS: &str = "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: web, namespace: bench}\n---\n\
apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: sink, namespace: bench}\n---\n\
apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: push, namespace: bench}\n---\n\
apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {name: ledger, namespace: bench}\n";

const PUSH_LISTENER: &str = "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {name: pushed, namespace: bench}\n\
spec: {node: push, source: {inbox: push}, startAt: all}\n";

/// What every workload of a pass shares.
struct Ctx {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    http: Arc<Http>,
    env: Vec<(&'static str, String)>,
    /// The sidecar of node `web` (sends, loads, live streams): pid and base URL.
    pid: u32,
    base: String,
    send_url: String,
    floor_pid: u32,
    floor_url: String,
    payload: serde_json::Value,
    /// One ~256-byte send request.
    body: Bytes,
    /// Direct clients publish where the sidecar of `web` does.
    inbox_subject: String,
    push_subject: String,
    load_subject: String,
    ns: DnsLabel,
}

/// A closure for [`closed`] and [`paced`]: one HTTP POST of `body` to `url`.
fn http_op(
    c: &Ctx,
    url: &str,
    body: Bytes,
) -> impl Fn() -> futures::future::BoxFuture<'static, ()> + Clone + Send + Sync + 'static {
    let (h, u) = (c.http.clone(), url.to_owned());
    move || {
        let (h, u, b) = (h.clone(), u.clone(), body.clone());
        Box::pin(async move { post(&h, &u, b, 202).await })
    }
}

/// A closure for [`closed`] and [`paced`]: one direct publish and its ack.
fn direct_op(c: &Ctx) -> impl Fn() -> futures::future::BoxFuture<'static, ()> + Clone + Send + Sync + 'static {
    let (js, subject, payload) = (c.js.clone(), c.inbox_subject.clone(), c.payload.clone());
    move || {
        let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
        Box::pin(async move { direct_send(&js, subject, &payload).await })
    }
}

/// Send throughput and CPU per send, 64 clients each: direct, the bare hop, the sidecar. The
/// machine's busy share during each round says whether a shortfall is work or waiting.
async fn send(c: &Ctx, sizes: &Sizes, rows: &mut Vec<Row>) {
    let me = std::process::id();
    let (cpu, m) = (cpu_secs(me), machine_ticks());
    let (n, t) = closed(CLIENTS, sizes.round, direct_op(c)).await;
    let (direct_rate, direct_busy) = (n as f64 / t.as_secs_f64(), busy_since(m));
    let direct_cpu = (cpu_secs(me) - cpu) / n as f64 * 1e6;
    let (cpu, m) = (cpu_secs(c.floor_pid), machine_ticks());
    let (n, t) = closed(CLIENTS, sizes.round, http_op(c, &c.floor_url, c.body.clone())).await;
    let (hop_rate, hop_busy) = (n as f64 / t.as_secs_f64(), busy_since(m));
    let hop_cpu = (cpu_secs(c.floor_pid) - cpu) / n as f64 * 1e6;
    let (cpu, m) = (cpu_secs(c.pid), machine_ticks());
    let (n, t) = closed(CLIENTS, sizes.round, http_op(c, &c.send_url, c.body.clone())).await;
    let (sidecar_rate, sidecar_busy) = (n as f64 / t.as_secs_f64(), busy_since(m));
    let sidecar_cpu = (cpu_secs(c.pid) - cpu) / n as f64 * 1e6;
    let ideal = 1.0 / (1.0 / direct_rate + 1.0 / hop_rate);
    rows.push(Row::figure(
        format!("send/s, direct async-nats, 64 publishers (machine {direct_busy:.0}% busy)"),
        direct_rate,
        None,
    ));
    rows.push(Row::figure(format!("send/s, bare HTTP hop, 64 clients (machine {hop_busy:.0}% busy)"), hop_rate, None));
    rows.push(Row::against(
        format!("send/s via sidecar, 64 clients (machine {sidecar_busy:.0}% busy)"),
        "1/(1/direct+1/hop)",
        ideal,
        sidecar_rate,
        Some(Target::RatioAtLeast(0.9)),
    ));
    rows.push(Row::against(
        "sidecar CPU µs per send (= ms per 1,000)",
        format!("hop {hop_cpu:.1} + direct {direct_cpu:.1}"),
        hop_cpu + direct_cpu,
        sidecar_cpu,
        Some(Target::RatioAtMost(1.15)),
    ));
}

/// Latency at a fixed 1,000 req/s: the bare hop, direct, the sidecar; and the sidecar's RSS
/// under that load.
async fn latency(c: &Ctx, sizes: &Sizes, rows: &mut Vec<Row>) {
    let per_send = |cpu: f64, n: usize| cpu / n as f64 * 1e6;
    let cpu = cpu_secs(c.floor_pid);
    let mut hop = paced(sizes.paced, http_op(c, &c.floor_url, c.body.clone())).await;
    let hop_cpu = per_send(cpu_secs(c.floor_pid) - cpu, hop.len());
    let me = std::process::id();
    let cpu = cpu_secs(me);
    let mut direct = paced(sizes.paced, direct_op(c)).await;
    let direct_cpu = per_send(cpu_secs(me) - cpu, direct.len());
    let cpu = cpu_secs(c.pid);
    let mut side = paced(sizes.paced, http_op(c, &c.send_url, c.body.clone())).await;
    let side_cpu = per_send(cpu_secs(c.pid) - cpu, side.len());
    let rss = rss_kib(c.pid) as f64 / 1024.0;
    for (p, name, target) in [(0.5, "p50", 1.5), (0.99, "p99", 2.0)] {
        let (hop_p, direct_p, side_p) = (pct_us(&mut hop, p), pct_us(&mut direct, p), pct_us(&mut side, p));
        rows.push(Row::against(
            format!("send at 1,000/s, {name} µs added (sidecar {side_p:.0} − direct {direct_p:.0})"),
            "bare hop",
            hop_p,
            side_p - direct_p,
            Some(Target::RatioAtMost(target)),
        ));
    }
    rows.push(Row::against(
        "sidecar CPU µs per send at 1,000/s",
        format!("hop {hop_cpu:.1} + direct (with its client) {direct_cpu:.1}"),
        hop_cpu + direct_cpu,
        side_cpu,
        None,
    ));
    rows.push(Row::figure("sidecar RSS MiB, at 1,000 req/s", rss, Some(Target::AtMost(12.0))));
}

/// Batches of 100, 8 clients: direct atomic batches and the sidecar's.
async fn batch(c: &Ctx, sizes: &Sizes, rows: &mut Vec<Row>) {
    let (cl, subject, payload) = (c.client.clone(), c.inbox_subject.clone(), c.payload.clone());
    let (n, t) = closed(BATCH_CLIENTS, sizes.round, move || {
        let (cl, subject, payload) = (cl.clone(), subject.clone(), payload.clone());
        async move { direct_batch_send(&cl, &subject, &payload).await }
    })
    .await;
    let direct = (n as usize * BATCH) as f64 / t.as_secs_f64();
    let one = serde_json::json!({"type": "order-placed", "payload": c.payload});
    let body = Bytes::from(serde_json::to_vec(&vec![one; BATCH]).unwrap());
    let (n, t) = closed(BATCH_CLIENTS, sizes.round, http_op(c, &c.send_url, body)).await;
    let sidecar = (n as usize * BATCH) as f64 / t.as_secs_f64();
    rows.push(Row::against("batch of 100, events/s, 8 clients", "direct atomic batch", direct, sidecar, None));
}

/// Push delivery: the same events through a direct explicit-ack consumer, and through the
/// sidecar of node `push` to a local app.
async fn push(c: &Ctx, sizes: &Sizes, rows: &mut Vec<Row>) {
    fill(&c.js, &c.push_subject, sizes.push, &c.payload).await;
    let push = DnsLabel::new("push").unwrap();
    let stream = c.js.get_stream(naming::inbox_stream(&c.ns, &push)).await.expect("push inbox");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bench-direct".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("direct consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let (mut first, mut n) = (None, 0);
    while n < sizes.push {
        let m = messages.next().await.expect("a message").expect("no error");
        first.get_or_insert_with(Instant::now);
        causeway_api::envelope::Envelope::decode(&m.payload).expect("an envelope");
        m.ack().await.expect("ack");
        n += 1;
    }
    let direct = (n - 1) as f64 / first.expect("one message").elapsed().as_secs_f64();
    drop(messages);

    let (app_port, app) = start_app().await;
    let env = [c.env.as_slice(), &[("CAUSEWAY_APP_PORT", app_port.to_string())]].concat();
    let (_sidecar, pid, _) = spawn_sidecar(&c.server.url, "push", &env).await;
    let cpu = cpu_secs(pid);
    causeway_operator::local::apply_yaml(&c.client, PUSH_LISTENER).await.expect("apply the push listener");
    let deadline = Instant::now() + Duration::from_secs(300);
    while app.received.load(Ordering::Relaxed) < sizes.push as u64 {
        let got = app.received.load(Ordering::Relaxed);
        assert!(Instant::now() < deadline, "push delivered {got} of {}", sizes.push);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (first, last) = (app.first.lock().await.expect("first"), app.last.lock().await.expect("last"));
    let sidecar = (sizes.push - 1) as f64 / (last - first).as_secs_f64();
    let cpu = (cpu_secs(pid) - cpu) / sizes.push as f64 * 1e6;
    // What no sidecar can beat: the consumer plus one HTTP exchange with the app per event, at
    // the listener's 32 in flight.
    let (n, t) = closed(32, sizes.round, http_op(c, &c.floor_url, c.body.clone())).await;
    let hop = n as f64 / t.as_secs_f64();
    let ideal = 1.0 / (1.0 / direct + 1.0 / hop);
    rows.push(Row::against(
        "push to a local app, events/s",
        "direct explicit-ack consumer",
        direct,
        sidecar,
        Some(Target::RatioAtLeast(0.7)),
    ));
    rows.push(Row::against(
        "push to a local app, events/s (same figure)",
        format!("1/(1/direct+1/hop), hop {hop:.0}/s at 32"),
        ideal,
        sidecar,
        None,
    ));
    rows.push(Row::figure("push: sidecar CPU µs per event", cpu, None));
}

/// Load of one subject's events, and a live stream catching up on the same events, against
/// direct batch gets that decode each event.
async fn load(c: &Ctx, sizes: &Sizes, rows: &mut Vec<Row>) {
    fill(&c.js, &c.load_subject, sizes.load, &c.payload).await;
    let ledger = DnsLabel::new("ledger").unwrap();
    let stream = naming::store_stream(&c.ns, &ledger);
    let t = Instant::now();
    let (mut after, mut n) = (0u64, 0usize);
    loop {
        let b = causeway_sidecar::nats::direct_batch(&c.client, &stream, &c.load_subject, after + 1, PAGE, 64 << 20)
            .await
            .expect("direct batch get");
        for m in &b.messages {
            causeway_api::envelope::Envelope::decode(&m.payload).expect("an envelope");
        }
        n += b.messages.len();
        after = b.messages.last().map(|m| m.sequence).unwrap_or(after);
        if b.pending == 0 || b.messages.is_empty() {
            break;
        }
    }
    assert_eq!(n, sizes.load, "direct load read every event");
    let direct = n as f64 / t.elapsed().as_secs_f64();

    #[derive(serde::Deserialize)]
    struct Page {
        events: Vec<serde::de::IgnoredAny>,
        #[serde(rename = "lastSequence")]
        last: u64,
        more: bool,
    }
    let t = Instant::now();
    let (mut after, mut n) = (0u64, 0usize);
    loop {
        let url = format!("{}/v1/stores/ledger/subjects/acct.1/events?limit={PAGE}&after={after}", c.base);
        let page: Page = serde_json::from_slice(&get(&c.http, &url, "application/json").await).expect("a load page");
        n += page.events.len();
        after = page.last;
        if !page.more {
            break;
        }
    }
    assert_eq!(n, sizes.load, "the sidecar's load read every event");
    let sidecar = n as f64 / t.elapsed().as_secs_f64();
    rows.push(Row::against(
        format!("load {} events of one subject, events/s", sizes.load),
        "direct batch get",
        direct,
        sidecar,
        Some(Target::RatioAtLeast(0.8)),
    ));

    let t = Instant::now();
    let url = format!("{}/v1/stores/ledger/events?after=0", c.base);
    let req = hyper::Request::get(&url).header("accept", "application/x-ndjson").body(Full::default()).unwrap();
    let r = c.http.request(req).await.expect("live stream");
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    // Lines may be split across frames: count whole lines only.
    let (mut lines, mut caught_up, mut partial) = (0usize, false, Vec::new());
    while let Some(f) = body.frame().await {
        let Ok(data) = f.expect("live frame").into_data() else { continue };
        partial.extend_from_slice(&data);
        let Some(end) = partial.iter().rposition(|b| *b == b'\n') else { continue };
        for l in partial[..end].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if l.starts_with(b"{\"caughtUp\"") {
                caught_up = true;
            } else {
                lines += 1;
            }
        }
        partial.drain(..=end);
        if caught_up {
            break;
        }
    }
    assert_eq!(lines, sizes.load, "the live stream caught up on every event");
    let live = lines as f64 / t.elapsed().as_secs_f64();
    rows.push(Row::against(
        format!("live stream catch-up on {} events, events/s", sizes.load),
        "direct batch get",
        direct,
        live,
        None,
    ));
}

/// The operator at scale, on the same server.
async fn operator(c: &Ctx, sizes: &Sizes, rows: &mut Vec<Row>) {
    let (n, idle, resync) = sizes.operator;
    let f = crate::operator::measure(&c.server, n, Duration::from_secs(idle), resync, false).await;
    let what = format!("operator, {n} stores + {n} nodes + {} listeners", 5 * n);
    rows.push(Row::figure(format!("{what}: s until all Ready"), f.ready_secs, Some(Target::AtMost(60.0))));
    rows.push(Row::figure(format!("{what}: reconciles/s"), f.reconciles_per_sec, None));
    rows.push(Row::figure(format!("{what}: peak RSS MiB"), f.peak_rss_mib, Some(Target::AtMost(150.0))));
    rows.push(Row::figure(format!("{what}: CPU s until Ready"), f.cpu_secs, None));
    rows.push(Row::figure(
        format!("{what}: writes in {idle} s idle (API besides Lease + JetStream)"),
        (f.idle_api_writes + f.idle_js_writes) as f64,
        Some(Target::AtMost(0.0)),
    ));
}

/// Every wanted workload once, on a fresh nats-server in `mode`.
async fn pass(mode: SyncMode, o: &Opts, sizes: &Sizes, env: &[(&'static str, String)]) -> Vec<Row> {
    let server = match mode {
        SyncMode::Default => NatsServer::start_default_sync(),
        SyncMode::Always => NatsServer::start(),
    };
    let client = server.client().await;
    causeway_operator::local::apply_yaml(&client, MANIFESTS).await.expect("apply the bench manifests");
    let ns = DnsLabel::new("bench").unwrap();
    let subject = |node: &str| {
        let node = DnsLabel::new(node).unwrap();
        naming::join_subject(&naming::inbox_send_prefix(&ns, &node, "bench", "web"), "order-placed")
    };
    let (inbox_subject, push_subject) = (subject("sink"), subject("push"));
    let load_subject =
        naming::join_subject(&naming::store_subject_prefix(&ns, &DnsLabel::new("ledger").unwrap()), "acct.1");
    let http: Arc<Http> = Arc::new(Client::builder(TokioExecutor::new()).pool_max_idle_per_host(CLIENTS).build_http());
    let (_sidecar, pid, base) = spawn_sidecar(&server.url, "web", env).await;
    let (_floor, floor_pid, floor_url) = start_floor(&http, env).await;
    let payload = serde_json::json!({"orderId": "123", "items": [{"sku": "a-1", "qty": 2}], "note": "x".repeat(160)});
    let body =
        Bytes::from(serde_json::to_vec(&serde_json::json!({"type": "order-placed", "payload": payload})).unwrap());
    let c = Ctx {
        js: jetstream::new(client.clone()),
        client,
        server,
        http,
        env: env.to_vec(),
        pid,
        send_url: format!("{base}/v1/nodes/sink/events"),
        base,
        floor_pid,
        floor_url,
        payload,
        body,
        inbox_subject,
        push_subject,
        load_subject,
        ns,
    };
    let mut rows = Vec::new();
    // Warm up every path; then the idle figure.
    let (side, hop, direct) =
        (http_op(&c, &c.send_url, c.body.clone()), http_op(&c, &c.floor_url, c.body.clone()), direct_op(&c));
    for _ in 0..100 {
        side().await;
        hop().await;
        direct().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    rows.push(Row::figure("sidecar RSS MiB, idle", rss_kib(c.pid) as f64 / 1024.0, Some(Target::AtMost(8.0))));
    // Latency first: its RSS figure is then the sidecar's at 1,000 req/s, not what the 64-client
    // round left allocated.
    if o.wants("latency") {
        latency(&c, sizes, &mut rows).await;
    }
    if o.wants("send") {
        send(&c, sizes, &mut rows).await;
        rows.push(Row::figure("sidecar RSS MiB, after the 64-client rounds", rss_kib(c.pid) as f64 / 1024.0, None));
    }
    if o.wants("batch") {
        batch(&c, sizes, &mut rows).await;
    }
    if o.wants("push") {
        push(&c, sizes, &mut rows).await;
    }
    if o.wants("load") {
        load(&c, sizes, &mut rows).await;
    }
    if o.wants("operator") {
        operator(&c, sizes, &mut rows).await;
    }
    rows
}

/// Runs every pass and prints one table per sync mode.
pub async fn run(o: Opts) {
    let sizes = Sizes::new(o.quick);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let var = causeway_sidecar::config::ENV_WORKER_THREADS;
    let threads = std::env::var(var)
        .unwrap_or_else(|_| format!("{} (default)", causeway_sidecar::config::DEFAULT_WORKER_THREADS));
    println!(
        "causeway-bench perf{}: {cores} cores, sidecar worker threads {threads}, {}",
        if o.quick { " --quick (smoke test: figures are not meaningful)" } else { "" },
        causeway_tests::nats_server_bin().display()
    );
    let env: Vec<(&'static str, String)> = std::env::var(var).map(|v| vec![(var, v)]).unwrap_or_default();
    for &mode in &o.syncs {
        let rows = pass(mode, &o, &sizes, &env).await;
        print_table(mode, &rows);
    }
}
