//! Regression tests for the sidecar's hardening, against the real binary and real nats-server
//! processes, each covering a class of defect:
//!
//! - A: a temporary problem is never answered as a permanent one: while NATS has never been
//!   reached, dies mid-request or stays away, every route answers 503 with `Retry-After`
//!   (never 404 or 413), quickly, and the same requests succeed once NATS is back, without
//!   storing anything twice;
//! - B: a sidecar whose NATS is gone still stops within its grace period, also while clients
//!   hold requests open;
//! - C: only ack tokens this very sidecar process handed out are accepted; anything else is a
//!   400 `invalid_ack` that reaches neither NATS nor another consumer;
//! - D: slow clients cannot starve the others: bodies and headers have deadlines, request slots
//!   are bounded and probes never need one, and unauthorised requests never take one;
//! - E: browsers cannot reach the API: foreign `Host` and `Origin` are refused, and writes need a
//!   JSON content type;
//! - F: every 503 and 504 carries `Retry-After` (checked on every answer these tests read).

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull};
use causeway_api::envelope::Envelope;
use causeway_tests::{NatsServer, eventually};
use futures::StreamExt;
use serde_json::{Value, json};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The shared shop plus two pull listeners of `web` on the `orders` store.
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
  delivery: {mode: pull, ackWait: 2s}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: audit, namespace: shop}
spec:
  node: web
  source: {store: orders}
  startAt: all
  delivery: {mode: pull, ackWait: 2s}
"#
    )
    // web may send to namespace `other` too, so a send there waits for NATS rather than being
    // refused by its access policy.
    .replace(
        "metadata: {name: web, namespace: shop}\nspec: {}",
        "metadata: {name: web, namespace: shop}\nspec: {access: {send: [\"*\", \"other/*\"]}}",
    )
}

async fn setup(env: &[(&str, &str)]) -> (NatsServer, Sidecar) {
    let server = NatsServer::start();
    apply(&server, &manifests()).await;
    let sc = Sidecar::start(&server, "shop", "web", env).await;
    (server, sc)
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers. Every answer read here goes through `Answer::check`, which enforces F: a 503 or
// 504 without a `Retry-After` of at least one second fails the test.

#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    took: Duration,
}

impl Answer {
    fn check(self, what: &str) -> Self {
        if matches!(self.status, 503 | 504) {
            let ra =
                self.retry_after.as_deref().unwrap_or_else(|| panic!("{what}: {} without Retry-After", self.status));
            assert!(ra.trim().parse::<u64>().is_ok_and(|s| s >= 1), "{what}: Retry-After {ra:?} is not a delay");
        }
        self
    }

    fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    /// A 503 that says "temporary": `not_ready` or `unavailable`, JSON with a message.
    fn assert_temporary(&self, what: &str) {
        assert_eq!(self.status, 503, "{what}: expected 503, got {} {}", self.status, self.body);
        assert!(matches!(self.code(), "not_ready" | "unavailable"), "{what}: {}", self.body);
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {}", self.body);
    }
}

async fn call(what: &str, rb: reqwest::RequestBuilder) -> Answer {
    let t = Instant::now();
    let r = rb.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = r.json().await.unwrap_or(Value::Null);
    Answer { status, retry_after, body, took: t.elapsed() }.check(what)
}

/// One API request, described so it can be sent again and again.
#[derive(Clone, Debug)]
struct Req {
    name: &'static str,
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
}

impl Req {
    fn new(name: &'static str, method: reqwest::Method, path: &str, body: Option<Value>) -> Self {
        Self { name, method, path: path.to_owned(), body }
    }

    async fn send(&self, c: &reqwest::Client, sc: &Sidecar) -> Answer {
        let mut rb = c.request(self.method.clone(), sc.at(&self.path));
        if let Some(b) = &self.body {
            rb = rb.json(b);
        }
        call(self.name, rb).await
    }
}

async fn readyz(c: &reqwest::Client, sc: &Sidecar) -> Answer {
    call("readyz", c.get(sc.at("/readyz"))).await
}

/// The events stored in `stream`: `(sequence, event id)`, read with an ordered consumer.
async fn stored(server: &NatsServer, stream: &str) -> Vec<(u64, String)> {
    let js = jetstream::new(server.client().await);
    let mut s = js.get_stream(stream).await.expect("stream");
    let n = s.info().await.expect("stream info").state.messages as usize;
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let consumer = s.create_consumer(pull::OrderedConfig::default()).await.expect("ordered consumer");
    let mut msgs = consumer.messages().await.expect("messages");
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("reading the stream stalled")
            .expect("stream ended")
            .expect("message");
        let seq = m.info().expect("jetstream message").stream_sequence;
        out.push((seq, Envelope::decode(&m.payload).expect("an envelope").id));
    }
    out
}

async fn stored_count(server: &NatsServer, stream: &str) -> u64 {
    let js = jetstream::new(server.client().await);
    js.get_stream(stream).await.expect("stream").info().await.expect("info").state.messages
}

/// `host:port` of a sidecar.
fn addr(sc: &Sidecar) -> String {
    sc.url.trim_start_matches("http://").trim_end_matches('/').to_owned()
}

/// One answer read off a raw connection.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn check(self, what: &str) -> Self {
        Answer {
            status: self.status,
            retry_after: self.header("retry-after").map(str::to_owned),
            body: Value::Null,
            took: Duration::ZERO,
        }
        .check(what);
        self
    }

    fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!((self.status, self.body["error"].as_str()), (status, Some(code)), "{what}: {:?}", self);
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {:?}", self);
    }
}

/// Reads one HTTP answer; `None` when the connection closes (or fails) before a whole one came.
async fn read_reply<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<RawReply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = buf[head_end + 4..].to_vec();
    while len.is_none_or(|l| body.len() < l) {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) if len.is_none() => break,
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawReply { status, headers, body: serde_json::from_slice(&body).unwrap_or(Value::Null) })
}

/// Sends one complete request on a fresh connection and reads its answer. `headers` are sent as
/// given; a `Host` of 127.0.0.1 is added unless one is among them.
async fn raw(sc: &Sidecar, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> RawReply {
    let mut s = TcpStream::connect(addr(sc)).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.expect("write");
    let what = format!("{method} {path} {headers:?}");
    tokio::time::timeout(Duration::from_secs(10), read_reply(&mut s))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 10s"))
        .unwrap_or_else(|| panic!("{what}: connection closed without an answer"))
        .check(&what)
}

/// Waits until the peer closes `s` (EOF or reset), reading and dropping whatever comes; the time
/// it took, or `None` if it stayed open for `within`.
async fn closed_within<R: AsyncReadExt + Unpin>(s: &mut R, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|_| t.elapsed())
}

/// A client that sends a request's head at once, then its body one byte every `every` (counted in
/// `sent`) until the server stops reading it or `stop` is set, and reads the answer meanwhile.
/// Resolves to the answer (or `None`: closed without one) and the time from the end of the head
/// to that moment; the body keeps trickling after that.
fn trickle_body(
    at: String,
    head: String,
    every: Duration,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Option<RawReply>, Duration)> {
    tokio::spawn(async move {
        let s = TcpStream::connect(at).await.expect("connect");
        let (mut r, mut w) = s.into_split();
        w.write_all(head.as_bytes()).await.expect("write head");
        let t = Instant::now();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(every).await;
                if w.write_all(b" ").await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        });
        let reply = tokio::time::timeout(Duration::from_secs(20), read_reply(&mut r)).await.ok().flatten();
        (reply.map(|r| r.check("trickled request")), t.elapsed())
    })
}

fn post_head(path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n{extra}\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// A. Temporary is not permanent.

/// The requests of A1 and A3: every kind of route that needs NATS.
fn nats_routes() -> Vec<Req> {
    use reqwest::Method as M;
    let big = "z".repeat(1536 * 1024);
    vec![
        Req::new("send", M::POST, "/v1/nodes/inventory/events", Some(json!({"type": "placed", "id": "a-send"}))),
        Req::new(
            "append",
            M::POST,
            "/v1/stores/orders/subjects/o-1/events",
            Some(json!({"type": "placed", "id": "a-append"})),
        ),
        Req::new("load", M::GET, "/v1/stores/orders/subjects/o-1/events", None),
        Req::new("figures", M::GET, "/v1/stores/orders", None),
        Req::new("kv put", M::PUT, "/v1/global/a-key", Some(json!({"n": 1}))),
        Req::new("kv put (large)", M::PUT, "/v1/state/a-big", Some(json!({"blob": big}))),
        Req::new("kv get", M::GET, "/v1/global/a-key", None),
        Req::new("kv get (large)", M::GET, "/v1/state/a-big", None),
        Req::new("fetch", M::POST, "/v1/listeners/history/fetch?max=1", Some(Value::Null)),
        Req::new("live stream", M::GET, "/v1/stores/orders/events?follow=false", None),
        Req::new("kv delete", M::DELETE, "/v1/global/a-gone", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_started_without_nats_answers_503_then_serves_once_nats_is_up() {
    let mut server = NatsServer::start();
    apply(&server, &manifests()).await;
    tokio::task::block_in_place(|| server.stop());
    let sc = Sidecar::spawn(&server.url, "shop", "web", &[("CAUSEWAY_NATS_WAIT", "1s")]);
    let c = http();

    assert_eq!(call("healthz", c.get(sc.at("/healthz"))).await.status, 200, "liveness does not need NATS");
    let r = readyz(&c, &sc).await;
    assert_eq!((r.status, &r.body["natsConnected"]), (503, &json!(false)), "{}", r.body);

    // Names cannot be called unknown before the registry was read: 503, not 404.
    let mut before = nats_routes();
    use reqwest::Method as M;
    before.push(Req::new("send to an unknown node", M::POST, "/v1/nodes/nope/events", Some(json!({"type": "x"}))));
    before.push(Req::new("load of an unknown store", M::GET, "/v1/stores/nope/subjects/x/events", None));
    before.push(Req::new("listeners", M::GET, "/v1/listeners", None));
    before.push(Req::new("send to another namespace", M::POST, "/v1/nodes/other.x/events", Some(json!({"type": "x"}))));
    for q in &before {
        let a = q.send(&c, &sc).await;
        a.assert_temporary(q.name);
        assert!(a.took < Duration::from_millis(2500), "{}: took {:?} with CAUSEWAY_NATS_WAIT=1s", q.name, a.took);
    }

    // NATS comes up on the same port with the same store: the same sidecar process serves the
    // same requests, without a restart.
    tokio::task::block_in_place(|| server.restart());
    for q in nats_routes() {
        let a = eventually(Duration::from_secs(20), q.name, || {
            let (c, q, sc) = (c.clone(), q.clone(), &sc);
            async move {
                let a = q.send(&c, sc).await;
                if a.status == 503 {
                    a.assert_temporary(q.name);
                    return None;
                }
                Some(a)
            }
        })
        .await;
        let ok = match q.name {
            "send" | "append" => a.status == 202,
            "kv put" | "kv put (large)" => matches!(a.status, 200 | 201),
            "kv delete" => a.status == 204,
            _ => a.status == 200,
        };
        assert!(ok, "{} after NATS came up: {} {}", q.name, a.status, a.body);
        match q.name {
            "load" => assert_eq!(a.body["events"][0]["id"], "a-append", "{}", a.body),
            "kv get" => assert_eq!(a.body, json!({"n": 1})),
            "kv get (large)" => assert_eq!(a.body["blob"].as_str().map(str::len), Some(1536 * 1024)),
            "fetch" => assert_eq!(a.body["events"][0]["id"], "a-append", "{}", a.body),
            _ => {}
        }
    }
    // Now that the registry is read, unknown names are 404.
    for node in ["nope", "other.x"] {
        let url = sc.at(&format!("/v1/nodes/{node}/events"));
        let a = call("unknown node", c.post(url).json(&json!({"type": "x"}))).await;
        assert_eq!((a.status, a.code()), (404, "unknown_node"), "{node}: {}", a.body);
    }
    assert_eq!(readyz(&c, &sc).await.status, 200);
    // Each request stored its event once, whatever was retried.
    assert_eq!(stored(&server, "CW_IN_shop_inventory").await, vec![(1, "a-send".to_owned())]);
    assert_eq!(stored(&server, "CW_ES_shop_orders").await, vec![(1, "a-append".to_owned())]);
}

#[derive(Default, Debug)]
struct SenderLog {
    /// `(id, sequence, duplicate)` of every 202.
    accepted: Vec<(String, u64, bool)>,
    /// Ids that got a 503 and were sent again.
    retried: Vec<String>,
    /// 503s for a request that had been sent to NATS when the connection went.
    in_flight: usize,
    /// Answers other than 202 and a temporary 503.
    wrong: Vec<String>,
    longest: Duration,
}

/// A client sending events with ids `{prefix}-{n}` one after the other until `stop`; after a 503
/// it sends the same id again, and it only stops after a 202, so every id it sent was accepted.
fn sender(
    c: reqwest::Client,
    url: String,
    prefix: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<SenderLog> {
    tokio::spawn(async move {
        let mut log = SenderLog::default();
        let (mut n, mut owed) = (0, false);
        while !stop.load(Ordering::SeqCst) || owed {
            let id = format!("{prefix}-{n}");
            let a = call("send", c.post(&url).json(&json!({"type": "tick", "id": id}))).await;
            log.longest = log.longest.max(a.took);
            match a.status {
                202 => {
                    let seq = a.body["sequence"].as_u64().unwrap_or(0);
                    log.accepted.push((id, seq, a.body["duplicate"] == true));
                    ok.fetch_add(1, Ordering::SeqCst);
                    (n, owed) = (n + 1, false);
                }
                503 if matches!(a.code(), "unavailable" | "not_ready") => {
                    if a.body["message"].as_str().is_some_and(|m| m.contains("may or may not")) {
                        log.in_flight += 1;
                    }
                    log.retried.push(id);
                    owed = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                s => {
                    log.wrong.push(format!("{id}: {s} {}", a.body));
                    (n, owed) = (n + 1, false);
                }
            }
        }
        log
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_dying_under_load_answers_fast_and_stores_each_accepted_id_once() {
    // Two sidecars of one node send to the same inbox: a patient one (CAUSEWAY_NATS_WAIT=3s,
    // longer than the outage: its requests wait and land) and an impatient one (500ms: its
    // requests answer 503, and its clients send the same ids again).
    let (mut server, patient) = setup(&[("CAUSEWAY_NATS_WAIT", "3s")]).await;
    let impatient = Sidecar::start(&server, "shop", "web", &[("CAUSEWAY_NATS_WAIT", "500ms")]).await;
    let c = reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(64).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_patient, ok_impatient) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    const SENDERS: usize = 10;
    let mut senders = Vec::new();
    for t in 0..SENDERS {
        let url = patient.at("/v1/nodes/inventory/events");
        senders.push((true, sender(c.clone(), url, format!("p{t}"), stop.clone(), ok_patient.clone())));
        let url = impatient.at("/v1/nodes/inventory/events");
        senders.push((false, sender(c.clone(), url, format!("i{t}"), stop.clone(), ok_impatient.clone())));
    }
    let flowing = |min: usize| {
        let (a, b) = (ok_patient.clone(), ok_impatient.clone());
        async move { (a.load(Ordering::SeqCst) >= min && b.load(Ordering::SeqCst) >= min).then_some(()) }
    };
    eventually(Duration::from_secs(10), "sends flowing", || flowing(2 * SENDERS)).await;
    tokio::task::block_in_place(|| server.kill());
    // The outage itself: NATS stays dead for a second while the clients keep sending.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| server.restart());
    let base = ok_patient.load(Ordering::SeqCst).max(ok_impatient.load(Ordering::SeqCst));
    eventually(Duration::from_secs(20), "sends flowing again after the restart", || flowing(base + 3 * SENDERS)).await;
    stop.store(true, Ordering::SeqCst);
    let mut logs = Vec::new();
    for (patient, s) in senders {
        logs.push((patient, tokio::time::timeout(Duration::from_secs(30), s).await.expect("a sender hung").unwrap()));
    }

    let wrong: Vec<&String> = logs.iter().flat_map(|(_, l)| &l.wrong).collect();
    assert!(wrong.is_empty(), "every answer is a 202 or a temporary 503 with Retry-After: {wrong:?}");
    let longest = |p: bool| logs.iter().filter(|(q, _)| *q == p).map(|(_, l)| l.longest).max().unwrap();
    let sum =
        |p: bool, f: fn(&SenderLog) -> usize| logs.iter().filter(|(q, _)| *q == p).map(|(_, l)| f(l)).sum::<usize>();
    // The patient sidecar's requests waited for the crash and landed, well before the 10s ack
    // timeout; the impatient one's gave up after its wait, and some of them were in flight.
    assert!(longest(true) < Duration::from_secs(6), "a request took {:?} (CAUSEWAY_NATS_WAIT=3s)", longest(true));
    assert!(longest(true) > Duration::from_millis(300), "no request waited for the crash: it tested nothing");
    assert!(longest(false) < Duration::from_secs(3), "a request took {:?} (CAUSEWAY_NATS_WAIT=500ms)", longest(false));
    let (retried, in_flight) = (sum(false, |l| l.retried.len()), sum(false, |l| l.in_flight));
    assert!(retried > 0, "the impatient sidecar never answered 503 during a 1s outage");

    let accepted: Vec<&(String, u64, bool)> = logs.iter().flat_map(|(_, l)| &l.accepted).collect();
    let stored = stored(&server, "CW_IN_shop_inventory").await;
    let mut times: HashMap<&str, usize> = HashMap::new();
    for (_, id) in &stored {
        *times.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ids stored more than once: {twice:?}");
    let at: HashMap<&str, u64> = stored.iter().map(|(s, id)| (id.as_str(), *s)).collect();
    for (id, seq, dup) in &accepted {
        assert_eq!(at.get(id.as_str()), Some(seq), "accepted {id} (duplicate: {dup}) is stored where its 202 said");
    }
    assert_eq!(stored.len(), accepted.len(), "nothing is stored that was not accepted");
    let retried_ids: HashSet<&String> = logs.iter().flat_map(|(_, l)| &l.retried).collect();
    let duplicates = accepted.iter().filter(|a| a.2).count();
    eprintln!(
        "{} sends accepted ({duplicates} as duplicates); {retried} 503s ({in_flight} for requests in flight) on {} ids, \
         all sent again; longest requests {:?} (patient) and {:?} (impatient)",
        accepted.len(),
        retried_ids.len(),
        longest(true),
        longest(false)
    );
    for sc in [&patient, &impatient] {
        assert_eq!(readyz(&c, sc).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_staying_down_answers_503_within_the_configured_wait() {
    let (mut server, sc) = setup(&[("CAUSEWAY_NATS_WAIT", "1s")]).await;
    let c = http();
    // A pull token handed out while NATS was up.
    let a = call("append", c.post(sc.at("/v1/stores/orders/subjects/o-1/events")).json(&json!({"type": "x"}))).await;
    assert_eq!(a.status, 202);
    let f = call("fetch", c.post(sc.at("/v1/listeners/history/fetch?max=1&waitMs=1000")).json(&Value::Null)).await;
    let token = f.body["events"][0]["ackToken"].as_str().expect("a token").to_owned();

    tokio::task::block_in_place(|| server.kill());
    eventually(Duration::from_secs(10), "/readyz sees NATS gone", || {
        let (c, sc) = (c.clone(), &sc);
        async move { (readyz(&c, sc).await.status == 503).then_some(()) }
    })
    .await;
    assert_eq!(call("healthz", c.get(sc.at("/healthz"))).await.status, 200);

    use reqwest::Method as M;
    let mut reqs = nats_routes();
    reqs.push(Req::new("ack", M::POST, "/v1/acks", Some(json!([{"token": token, "result": "ack"}]))));
    reqs.push(Req::new(
        "send batch",
        M::POST,
        "/v1/nodes/inventory/events",
        Some(json!([{"type": "a"}, {"type": "b"}])),
    ));
    // All at once: each waits for NATS on its own, then gives up.
    let answers = futures::future::join_all(reqs.iter().map(|q| q.send(&c, &sc))).await;
    for (q, a) in reqs.iter().zip(answers) {
        a.assert_temporary(q.name);
        assert!(
            a.took >= Duration::from_millis(900),
            "{}: answered 503 after {:?}, before CAUSEWAY_NATS_WAIT=1s passed",
            q.name,
            a.took
        );
        assert!(a.took < Duration::from_millis(2500), "{}: took {:?} with CAUSEWAY_NATS_WAIT=1s", q.name, a.took);
    }
}

/// With NATS down, a send to a node of another namespace (`namespace.name`, not cached) waits
/// for NATS only as long as `CAUSEWAY_NATS_WAIT` says, then answers 503 (it used to answer 504
/// after the 5s direct-get timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_another_namespace_answers_within_the_configured_wait_while_nats_is_down() {
    let (mut server, sc) = setup(&[("CAUSEWAY_NATS_WAIT", "1s")]).await;
    let c = http();
    tokio::task::block_in_place(|| server.kill());
    eventually(Duration::from_secs(10), "/readyz sees NATS gone", || {
        let (c, sc) = (c.clone(), &sc);
        async move { (readyz(&c, sc).await.status == 503).then_some(()) }
    })
    .await;
    let a = call("foreign send", c.post(sc.at("/v1/nodes/other.inventory/events")).json(&json!({"type": "x"}))).await;
    assert!(a.took < Duration::from_millis(2500), "took {:?} with NATS down: {}", a.took, a.body);
    a.assert_temporary("send to another namespace");
}

/// With NATS down, `GET /v1/listeners` answers 503 with `Retry-After` after `CAUSEWAY_NATS_WAIT`
/// (it used to answer 200 after ~10s per listener, with "consumer … not found" in the figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_list_answers_within_the_configured_wait_while_nats_is_down() {
    let (mut server, sc) = setup(&[("CAUSEWAY_NATS_WAIT", "1s")]).await;
    let c = http();
    tokio::task::block_in_place(|| server.kill());
    eventually(Duration::from_secs(10), "/readyz sees NATS gone", || {
        let (c, sc) = (c.clone(), &sc);
        async move { (readyz(&c, sc).await.status == 503).then_some(()) }
    })
    .await;
    let a = call("listeners", c.get(sc.at("/v1/listeners")).timeout(Duration::from_secs(30))).await;
    assert!(a.took < Duration::from_millis(2500), "listeners took {:?} with NATS down: {}", a.took, a.body);
    a.assert_temporary("listeners");
}

// ---------------------------------------------------------------------------------------------
// B. Shutdown.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_whose_nats_is_gone_stops_within_its_grace_period() {
    let mut server = NatsServer::start();
    apply(&server, &manifests()).await;
    let env = [("CAUSEWAY_GRACE_PERIOD", "1s"), ("CAUSEWAY_NATS_WAIT", "30s")];
    let mut sc = Sidecar::start(&server, "shop", "web", &env).await;
    let c = http();
    tokio::task::block_in_place(|| server.kill());
    eventually(Duration::from_secs(10), "/readyz sees NATS gone", || {
        let (c, sc) = (c.clone(), &sc);
        async move { (readyz(&c, sc).await.body["natsConnected"] == false).then_some(()) }
    })
    .await;

    // Held open: a request waiting for NATS (up to 30s), a client trickling its body (allowed
    // 30s), and an idle keep-alive connection.
    let waiting = {
        let (c, url) = (c.clone(), sc.at("/v1/global/held"));
        tokio::spawn(async move {
            match c.get(url).send().await {
                Ok(r) => Some((r.status().as_u16(), r.headers().contains_key("retry-after"))),
                Err(_) => None,
            }
        })
    };
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let slow = trickle_body(
        addr(&sc),
        post_head("/v1/nodes/inventory/events", ""),
        Duration::from_millis(200),
        sent.clone(),
        stop.clone(),
    );
    let mut idle = TcpStream::connect(addr(&sc)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert_eq!(read_reply(&mut idle).await.expect("healthz").status, 200);
    eventually(Duration::from_secs(5), "the slow client trickling", || {
        let n = sent.load(Ordering::SeqCst);
        async move { (n >= 2).then_some(()) }
    })
    .await;

    let t = Instant::now();
    let code = tokio::task::block_in_place(|| sc.terminate());
    let took = t.elapsed();
    assert_eq!(code, Some(0), "a clean stop exits 0 (took {took:?})");
    assert!(took < Duration::from_millis(4500), "stopped {took:?} after SIGTERM with a 1s grace period");
    eprintln!("stopped {took:?} after SIGTERM, NATS gone and requests held open");
    // Whatever the held requests got, they are over.
    let w = tokio::time::timeout(Duration::from_secs(2), waiting).await.expect("held request ended").unwrap();
    if let Some((status, retry_after)) = w {
        assert!(status == 503 && retry_after, "a request held by the stop answers a temporary 503, got {status}");
    }
    let (reply, _) = tokio::time::timeout(Duration::from_secs(2), slow).await.expect("slow client ended").unwrap();
    assert!(reply.as_ref().is_none_or(|r| r.status != 202), "{reply:?}");
    assert!(closed_within(&mut idle, Duration::from_secs(2)).await.is_some(), "the idle connection is closed");
    stop.store(true, Ordering::SeqCst);

    // A sidecar that never reached NATS stops as quickly.
    let mut never = Sidecar::spawn(&server.url, "shop", "web", &[("CAUSEWAY_GRACE_PERIOD", "1s")]);
    assert_eq!(call("healthz", c.get(never.at("/healthz"))).await.status, 200);
    let t = Instant::now();
    let code = tokio::task::block_in_place(|| never.terminate());
    let took = t.elapsed();
    assert_eq!(code, Some(0), "a clean stop exits 0 (took {took:?})");
    assert!(took < Duration::from_millis(4500), "stopped {took:?} after SIGTERM with a 1s grace period");
    eprintln!("stopped {took:?} after SIGTERM, NATS never reached");
}

// ---------------------------------------------------------------------------------------------
// C. Ack tokens.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_encode(b: &[u8]) -> String {
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64_decode(s: &str) -> Vec<u8> {
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c);
        acc = (acc << 6) | v.unwrap_or_else(|| panic!("{s:?} is not base64url: not a signed token")) as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The ack subject inside a token, and its signature part.
fn token_parts(token: &str) -> (String, String) {
    let (subject, tag) = token.split_once('.').expect("subject.tag");
    (String::from_utf8(b64_decode(subject)).expect("utf-8 subject"), tag.to_owned())
}

async fn append_n(c: &reqwest::Client, sc: &Sidecar, ids: &[&str]) {
    for id in ids {
        let a =
            call("append", c.post(sc.at("/v1/stores/orders/subjects/c/events")).json(&json!({"type": "n", "id": id})))
                .await;
        assert_eq!(a.status, 202, "{}", a.body);
    }
}

/// `(event id, ack token, attempt)` of what a fetch returned.
async fn fetch(c: &reqwest::Client, sc: &Sidecar, max: u32, wait_ms: u32) -> Vec<(String, String, u64)> {
    let url = sc.at(&format!("/v1/listeners/history/fetch?max={max}&waitMs={wait_ms}"));
    let a = call("fetch", c.post(url).json(&Value::Null)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["ackToken"].as_str().unwrap().to_owned(),
                e["attempt"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn ack(c: &reqwest::Client, sc: &Sidecar, entries: Value) -> Answer {
    call("acks", c.post(sc.at("/v1/acks")).json(&entries)).await
}

/// The nats-server connection ids of a node's sidecars.
fn sidecar_cids(server: &NatsServer) -> Vec<u64> {
    let connz = server.monitor_json("/connz");
    connz["connections"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["name"].as_str().is_some_and(|n| n.contains("shop/web")))
                .filter_map(|c| c["cid"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tokens_this_sidecar_handed_out_are_accepted() {
    let (server, sc) = setup(&[]).await;
    let c = http();
    append_n(&c, &sc, &["e0", "e1", "e2"]).await;
    let got = fetch(&c, &sc, 3, 1000).await;
    assert_eq!(got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), ["e0", "e1", "e2"]);
    let (t0, t1, t2) = (&got[0].1, &got[1].1, &got[2].1);
    let cids = tokio::task::block_in_place(|| sidecar_cids(&server));
    assert_eq!(cids.len(), 1, "one sidecar connection: {cids:?}");

    // Every forgery names e2, so had any of them been applied, e2 would not come back.
    let (subject, tag) = token_parts(t2);
    assert!(subject.starts_with("$JS.ACK.CW_ES_shop_orders.cw_shop_history."), "{subject}");
    let other_consumer = subject.replace(".cw_shop_history.", ".cw_shop_audit.");
    let other_stream = subject.replace("CW_ES_shop_orders", "CW_IN_shop_web");
    let bad_tokens = vec![
        ("a raw ack subject", subject.clone()),
        ("a raw ack subject of another consumer", other_consumer.clone()),
        ("another consumer under this token's signature", format!("{}.{tag}", b64_encode(other_consumer.as_bytes()))),
        ("another stream under this token's signature", format!("{}.{tag}", b64_encode(other_stream.as_bytes()))),
        (
            "this subject with another token's signature",
            format!("{}.{}", b64_encode(subject.as_bytes()), token_parts(t0).1),
        ),
        ("a subject with a protocol injection", format!("{}.{tag}", b64_encode(b"$JS.ACK.x\r\nPUB evil 1\r\n"))),
        ("a truncated token", t2[..t2.len() - 3].to_owned()),
        ("garbage", "not a token".to_owned()),
        ("garbage with a dot", "x.y".to_owned()),
        ("only dots", "...".to_owned()),
        ("an empty token", String::new()),
        ("CRLF garbage", "$JS.ACK.a\r\nPUB x 1\r\nhi\r\n".to_owned()),
        ("5000 characters", "a".repeat(5000)),
        ("5000 characters of base64 with a dot", format!("{}.{tag}", b64_encode(&[b'x'; 3700]))),
    ];
    for (what, token) in &bad_tokens {
        for result in ["ack", "term"] {
            let a = ack(&c, &sc, json!([{"token": token, "result": result}])).await;
            assert_eq!((a.status, a.code()), (400, "invalid_ack"), "{what} ({result}): {}", a.body);
            assert!(a.took < Duration::from_secs(1), "{what}: refused only after {:?}", a.took);
        }
    }
    // A batch with one bad entry is refused whole: its good entries are not applied either.
    let a = ack(&c, &sc, json!([{"token": t2, "result": "term"}, {"token": "x.y", "result": "ack"}])).await;
    assert_eq!((a.status, a.code()), (400, "invalid_ack"), "{}", a.body);

    // The sidecar keeps serving on the very same NATS connection.
    let r = readyz(&c, &sc).await;
    assert_eq!((r.status, &r.body["natsConnected"]), (200, &json!(true)), "{}", r.body);
    assert_eq!(tokio::task::block_in_place(|| sidecar_cids(&server)), cids, "the NATS connection never dropped");
    let a = ack(&c, &sc, json!([{"token": t0, "result": "ack"}, {"token": t1, "result": "ack"}])).await;
    assert_eq!((a.status, &a.body["processed"]), (200, &json!(2)), "{}", a.body);

    // After ackWait (2s) only e2 comes back: e0 and e1 are acked, and nothing forged touched e2.
    let again = fetch(&c, &sc, 10, 3500).await;
    assert_eq!(again.iter().map(|g| (g.0.as_str(), g.2)).collect::<Vec<_>>(), [("e2", 2)], "{again:?}");
    let a = ack(&c, &sc, json!([{"token": again[0].1, "result": "ack"}])).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(fetch(&c, &sc, 10, 2500).await.is_empty(), "an acked event is not delivered again");
    // The other listener's consumer was not touched by the forgeries either: all three wait.
    let l = call("listeners", c.get(sc.at("/v1/listeners"))).await;
    let audit = l.body["listeners"].as_array().unwrap().iter().find(|l| l["name"] == "audit").unwrap().clone();
    assert_eq!(audit["figures"]["numPending"], 3, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_another_or_a_restarted_sidecar_are_refused() {
    let (server, mut a) = setup(&[]).await;
    let b = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    append_n(&c, &a, &["e0", "e1", "e2"]).await;
    let at_a = fetch(&c, &a, 1, 1000).await;
    let at_b = fetch(&c, &b, 1, 1000).await;
    assert_eq!((at_a[0].0.as_str(), at_b[0].0.as_str()), ("e0", "e1"));
    let (ta, tb) = (at_a[0].1.clone(), at_b[0].1.clone());

    // Two processes of the same node: neither accepts the other's tokens.
    let r = ack(&c, &a, json!([{"token": tb, "result": "ack"}])).await;
    assert_eq!((r.status, r.code()), (400, "invalid_ack"), "{}", r.body);
    let r = ack(&c, &b, json!([{"token": ta, "result": "ack"}])).await;
    assert_eq!((r.status, r.code()), (400, "invalid_ack"), "{}", r.body);
    let r = ack(&c, &a, json!([{"token": ta, "result": "ack"}])).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // One more event handed out by `a`, then `a` restarts: its tokens die with it.
    let pending = fetch(&c, &a, 1, 1000).await;
    assert_eq!(pending[0].0, "e2");
    assert_eq!(tokio::task::block_in_place(|| a.terminate()), Some(0));
    drop(b);
    let a2 = Sidecar::start(&server, "shop", "web", &[]).await;
    for (what, token) in
        [("acked before the restart", &ta), ("pending before the restart", &pending[0].1), ("the other process's", &tb)]
    {
        let r = ack(&c, &a2, json!([{"token": token, "result": "ack"}])).await;
        assert_eq!((r.status, r.code()), (400, "invalid_ack"), "{what}: {}", r.body);
    }
    let r = readyz(&c, &a2).await;
    assert_eq!((r.status, &r.body["natsConnected"]), (200, &json!(true)), "{}", r.body);

    // The unacked events come back after ackWait (2s), to the new process, which acks them.
    let mut again = fetch(&c, &a2, 10, 3500).await;
    again.sort();
    assert_eq!(again.iter().map(|g| (g.0.as_str(), g.2)).collect::<Vec<_>>(), [("e1", 2), ("e2", 2)], "{again:?}");
    let entries: Vec<Value> = again.iter().map(|g| json!({"token": g.1, "result": "ack"})).collect();
    let r = ack(&c, &a2, json!(entries)).await;
    assert_eq!((r.status, &r.body["processed"]), (200, &json!(2)), "{}", r.body);
    assert!(fetch(&c, &a2, 10, 2500).await.is_empty(), "acked events are not delivered again");
}

// ---------------------------------------------------------------------------------------------
// D. Slow clients.

const SLOW_ENV: [(&str, &str); 4] = [
    ("CAUSEWAY_MAX_REQUESTS", "4"),
    ("CAUSEWAY_BODY_TIMEOUT", "1s"),
    ("CAUSEWAY_HEADER_TIMEOUT", "1s"),
    ("CAUSEWAY_QUEUE_TIMEOUT", "1s"),
];

async fn probes_answer_quickly(c: &reqwest::Client, sc: &Sidecar) {
    for path in ["/healthz", "/readyz"] {
        let a = call(path, c.get(sc.at(path))).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert!(a.took < Duration::from_millis(500), "{path} took {:?} while the slots are taken", a.took);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_and_never_starve_the_probes() {
    let (server, sc) = setup(&SLOW_ENV).await;
    let c = http();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let heads = [
        post_head("/v1/nodes/inventory/events", ""),
        post_head("/v1/stores/orders/subjects/slow/events", ""),
        post_head("/v1/acks", ""),
        "PUT /v1/global/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            .to_owned(),
    ];
    let slow: Vec<_> = heads
        .iter()
        .map(|h| trickle_body(addr(&sc), h.clone(), Duration::from_millis(300), sent.clone(), stop.clone()))
        .collect();
    eventually(Duration::from_secs(5), "the slow clients trickling", || {
        let n = sent.load(Ordering::SeqCst);
        async move { (n >= 4).then_some(()) }
    })
    .await;
    probes_answer_quickly(&c, &sc).await;
    for (h, s) in heads.iter().zip(slow) {
        let (reply, took) = s.await.unwrap();
        let what = h.lines().next().unwrap();
        if let Some(r) = &reply {
            r.assert_error(408, "request_timeout", what);
        }
        assert!(
            took > Duration::from_millis(800) && took < Duration::from_millis(2500),
            "{what}: ended {took:?} after its head with CAUSEWAY_BODY_TIMEOUT=1s ({reply:?})"
        );
    }
    // Afterwards everything works, and nothing half-sent was stored.
    let a = call("send", c.post(sc.at("/v1/nodes/inventory/events")).json(&json!({"type": "after"}))).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(stored_count(&server, "CW_IN_shop_inventory").await, 1);
    assert_eq!(stored_count(&server, "CW_ES_shop_orders").await, 0);
    let a = call("kv", c.get(sc.at("/v1/global/slow"))).await;
    assert_eq!((a.status, a.code()), (404, "key_not_found"), "{}", a.body);
    stop.store(true, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_held_by_long_polls_answer_503_too_busy_and_probes_still_pass() {
    let (server, sc) = setup(&SLOW_ENV).await;
    let c = http();
    let polls: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), sc.at("/v1/listeners/history/fetch?max=1&waitMs=4000"));
            tokio::spawn(async move { call("long poll", c.post(url).json(&Value::Null)).await })
        })
        .collect();
    // All four pulls wait on the server: every slot is taken.
    let js = jetstream::new(server.client().await);
    eventually(Duration::from_secs(5), "four pulls waiting", || {
        let js = js.clone();
        async move {
            let mut consumer =
                js.get_consumer_from_stream::<pull::Config, _, _>("cw_shop_history", "CW_ES_shop_orders").await.ok()?;
            (consumer.info().await.ok()?.num_waiting >= 4).then_some(())
        }
    })
    .await;
    probes_answer_quickly(&c, &sc).await;
    let a = call("a fifth request", c.get(sc.at("/v1/stores/orders"))).await;
    assert_eq!((a.status, a.code()), (503, "too_busy"), "{}", a.body);
    assert!(
        a.took > Duration::from_millis(800) && a.took < Duration::from_millis(2500),
        "too_busy after {:?} with CAUSEWAY_QUEUE_TIMEOUT=1s",
        a.took
    );
    for p in polls {
        let a = p.await.unwrap();
        assert_eq!((a.status, &a.body["events"]), (200, &json!([])), "{}", a.body);
    }
    let a = call("after", c.get(sc.at("/v1/stores/orders"))).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed_after_the_header_timeout() {
    let (_server, sc) = setup(&SLOW_ENV).await;
    let c = http();
    // Headers one byte at a time, never finished.
    let trickling: Vec<_> = (0..3)
        .map(|_| {
            let at = addr(&sc);
            tokio::spawn(async move {
                let s = TcpStream::connect(at).await.unwrap();
                let (mut r, mut w) = s.into_split();
                let writer = tokio::spawn(async move {
                    for b in b"POST /v1/nodes/inventory/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".iter().cycle() {
                        if w.write_all(&[*b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                let closed = closed_within(&mut r, Duration::from_secs(5)).await;
                writer.abort();
                closed
            })
        })
        .collect();
    // An idle keep-alive connection after one answer, and a connection that never says anything.
    let mut idle = TcpStream::connect(addr(&sc)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert_eq!(read_reply(&mut idle).await.expect("healthz").status, 200);
    let mut mute = TcpStream::connect(addr(&sc)).await.unwrap();
    let (idle_closed, mute_closed) = tokio::join!(
        closed_within(&mut idle, Duration::from_secs(5)),
        closed_within(&mut mute, Duration::from_secs(5))
    );
    for (what, closed) in [("idle keep-alive", idle_closed), ("mute", mute_closed)] {
        let took = closed.unwrap_or_else(|| panic!("{what} connection still open after 5s"));
        assert!(
            took > Duration::from_millis(700) && took < Duration::from_millis(2500),
            "{what}: closed after {took:?}"
        );
    }
    for t in trickling {
        let took = t.await.unwrap().expect("a connection trickling its headers is closed");
        assert!(took > Duration::from_millis(800) && took < Duration::from_millis(2500), "closed after {took:?}");
    }
    probes_answer_quickly(&c, &sc).await;
    let a = call("send", c.post(sc.at("/v1/nodes/inventory/events")).json(&json!({"type": "after"}))).await;
    assert_eq!(a.status, 202, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorised_requests_are_refused_at_once_and_take_no_slot() {
    let mut env = SLOW_ENV.to_vec();
    env.push(("CAUSEWAY_API_TOKEN", "secret"));
    let (server, sc) = setup(&env).await;
    let c = http();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let heads = [
        post_head("/v1/nodes/inventory/events", ""),
        post_head("/v1/nodes/inventory/events", "Authorization: Bearer wrong\r\n"),
        post_head("/v1/stores/orders/subjects/x/events", "Authorization: secret\r\n"),
        post_head("/v1/acks", ""),
    ];
    // Twice as many trickling unauthorised requests as there are slots.
    let slow: Vec<_> = heads
        .iter()
        .cycle()
        .take(8)
        .map(|h| trickle_body(addr(&sc), h.clone(), Duration::from_millis(300), sent.clone(), stop.clone()))
        .collect();
    for (h, s) in heads.iter().cycle().zip(slow) {
        let (reply, took) = s.await.unwrap();
        let what = h.lines().find(|l| l.starts_with("POST") || l.starts_with("Authorization")).unwrap();
        let reply = reply.unwrap_or_else(|| panic!("{what}: closed without an answer"));
        reply.assert_error(401, "unauthorized", what);
        assert!(took < Duration::from_millis(500), "{what}: 401 only after {took:?}: its body was waited for");
    }
    // While they are all still connected (and some still trickle), the app gets through at once.
    let a = call(
        "authorised send",
        c.post(sc.at("/v1/nodes/inventory/events")).bearer_auth("secret").json(&json!({"type": "ok"})),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(a.took < Duration::from_millis(600), "an authorised request waited {:?}", a.took);
    probes_answer_quickly(&c, &sc).await;
    assert_eq!(stored_count(&server, "CW_IN_shop_inventory").await, 1, "only the authorised send is stored");
    stop.store(true, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------------------------
// E. Browsers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_reach_the_api() {
    let (server, sc) = setup(&[]).await;
    let c = http();
    let event = r#"{"type":"x"}"#;
    let json_ct = ("Content-Type", "application/json");

    // DNS rebinding: a foreign Host is refused on the API and metrics, never on the probes.
    for host in ["evil.example:4480", "evil.example", "127.0.0.1.evil.example", "localhost.evil:80", "10.0.0.1:4480"] {
        for (m, path, body) in [
            ("GET", "/v1/openapi.json", ""),
            ("POST", "/v1/nodes/inventory/events", event),
            ("POST", "/v1/stores/orders/subjects/x/events", event),
            ("GET", "/v1/stores/orders/subjects/x/events", ""),
            ("PUT", "/v1/global/k", "1"),
            ("GET", "/v1/global/k", ""),
            ("POST", "/v1/listeners/history/fetch", ""),
            ("GET", "/metrics", ""),
        ] {
            let r = raw(&sc, m, path, &[("Host", host), json_ct], body).await;
            r.assert_error(403, "forbidden_host", &format!("{m} {path} Host {host}"));
        }
        for path in ["/healthz", "/readyz"] {
            assert_eq!(raw(&sc, "GET", path, &[("Host", host)], "").await.status, 200, "{path} with Host {host}");
        }
    }
    for host in ["localhost:4480", "127.0.0.1", "[::1]:4480", "app.localhost", &addr(&sc)] {
        assert_eq!(raw(&sc, "GET", "/v1/openapi.json", &[("Host", host)], "").await.status, 200, "Host {host}");
    }

    // Cross-site pages.
    for origin in
        ["http://evil.example", "https://evil.example:443", "null", "http://localhost.evil.example", "file://"]
    {
        for (m, path, body) in [
            ("GET", "/v1/openapi.json", ""),
            ("POST", "/v1/nodes/inventory/events", event),
            ("PUT", "/v1/global/k", "1"),
        ] {
            let r = raw(&sc, m, path, &[("Origin", origin), json_ct], body).await;
            r.assert_error(403, "forbidden_origin", &format!("{m} {path} Origin {origin}"));
        }
    }
    for origin in ["http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:8080"] {
        let r = raw(&sc, "POST", "/v1/nodes/inventory/events", &[("Origin", origin), json_ct], event).await;
        assert_eq!(r.status, 202, "Origin {origin}: {r:?}");
    }
    assert_eq!(stored_count(&server, "CW_IN_shop_inventory").await, 3, "only the allowed origins' sends are stored");

    // Writes need a JSON content type: no "simple" cross-site request can write, fetch or ack.
    let a = call("append", c.post(sc.at("/v1/stores/orders/subjects/ct/events")).json(&json!({"type": "x"}))).await;
    assert_eq!(a.status, 202);
    let not_json = [
        None,
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ];
    let refused = |routes: Vec<(&'static str, &'static str, String)>| {
        let sc = &sc;
        async move {
            for ct in not_json {
                for (m, path, body) in &routes {
                    let headers: Vec<(&str, &str)> = ct.map(|t| ("Content-Type", t)).into_iter().collect();
                    let r = raw(sc, m, path, &headers, body).await;
                    r.assert_error(415, "unsupported_media_type", &format!("{m} {path} Content-Type {ct:?}"));
                }
            }
        }
    };
    refused(vec![
        ("POST", "/v1/nodes/inventory/events", event.to_owned()),
        ("POST", "/v1/stores/orders/subjects/ct/events", event.to_owned()),
        ("PUT", "/v1/global/ct", "{\"a\":1}".to_owned()),
        ("PUT", "/v1/state/ct", "{\"a\":1}".to_owned()),
        ("POST", "/v1/listeners/history/fetch?max=10", String::new()),
    ])
    .await;
    let history = |c: reqwest::Client| {
        let url = sc.at("/v1/listeners");
        async move {
            let l = call("listeners", c.get(url)).await;
            let h = l.body["listeners"].as_array().unwrap().iter().find(|l| l["name"] == "history").unwrap().clone();
            (h["figures"]["numPending"].as_u64().unwrap(), h["figures"]["numAckPending"].as_u64().unwrap())
        }
    };
    assert_eq!(history(c.clone()).await, (1, 0), "the refused fetches took nothing");
    let got = fetch(&c, &sc, 1, 1000).await;
    assert_eq!(got[0].2, 1, "first delivered to the accepted fetch: {got:?}");
    let token = got[0].1.clone();
    refused(vec![("POST", "/v1/acks", json!([{"token": token, "result": "ack"}]).to_string())]).await;
    assert_eq!(history(c.clone()).await, (0, 1), "the refused acks acked nothing");
    let a = ack(&c, &sc, json!([{"token": token, "result": "ack"}])).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // Nothing refused was stored.
    assert_eq!(stored_count(&server, "CW_IN_shop_inventory").await, 3);
    assert_eq!(stored_count(&server, "CW_ES_shop_orders").await, 1);
    for scope in ["global", "state"] {
        let a = call("kv", c.get(sc.at(&format!("/v1/{scope}/ct")))).await;
        assert_eq!((a.status, a.code()), (404, "key_not_found"), "{}", a.body);
    }

    // An operator can name more hosts.
    let named = Sidecar::start(&server, "shop", "web", &[("CAUSEWAY_ALLOWED_HOSTS", "sidecar.internal")]).await;
    for host in ["sidecar.internal:4480", "sidecar.internal", "SIDECAR.internal:80"] {
        let r = raw(&named, "POST", "/v1/nodes/inventory/events", &[("Host", host), json_ct], event).await;
        assert_eq!(r.status, 202, "Host {host}: {r:?}");
    }
    let r = raw(
        &named,
        "GET",
        "/v1/openapi.json",
        &[("Host", "sidecar.internal:4480"), ("Origin", "http://sidecar.internal:4480")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = raw(&named, "GET", "/v1/openapi.json", &[("Host", "evil.example:4480")], "").await;
    r.assert_error(403, "forbidden_host", "evil host next to an allowed one");
    let r = raw(&named, "GET", "/v1/openapi.json", &[("Host", "other.internal")], "").await;
    r.assert_error(403, "forbidden_host", "a host not named");
}
