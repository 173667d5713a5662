//! Fuzzing the sidecar's HTTP API against a real nats-server and the real binary:
//!
//! - schemathesis generates requests from `GET /v1/openapi.json` (positive and negative data)
//!   and checks that none gets a 5xx;
//! - a seeded random generator sends raw HTTP/1.1 requests no schema describes: random
//!   methods, paths and percent-escapes, queries with out-of-range numbers, random bytes and
//!   random JSON bodies, and random `Content-Type`, `If-Match`, `Last-Event-ID`, `ce-*`,
//!   `Cw-*` headers, plus some bytes that are not HTTP at all. Never a 5xx, every 4xx is a
//!   JSON `{"error","message"}`, the process never panics and keeps serving;
//! - the official Python CloudEvents SDK builds binary, structured and batch requests, which
//!   send and append accept with every attribute mapped.
//!
//! Needs `.tools/bin/schemathesis` and `.tools/bin/python` with `cloudevents`
//! (`scripts/setup.sh --test`). `CAUSEWAY_FUZZ_SEED` changes the seed (printed on failure);
//! `CAUSEWAY_FUZZ_REQUESTS` the number of random requests.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{collections::BTreeMap, fmt, time::Duration};

use async_nats::jetstream;
use causeway_api::envelope::Envelope;
use causeway_tests::{NatsServer, TempDir, workspace_root};
use serde_json::{Value, json};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

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
  delivery: {mode: pull, ackWait: 5s, maxInFlight: 10000}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: capped, namespace: shop}
spec:
  node: web
  source: {store: orders}
  startAt: all
  delivery: {mode: pull, ackWait: 30s, maxInFlight: 2}
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

/// Request bodies above this get 413; the fuzzer sends a few.
const MAX_BODY: usize = 64 * 1024;

fn tool(name: &str) -> std::path::PathBuf {
    workspace_root().join(".tools/bin").join(name)
}

fn seed() -> u64 {
    std::env::var("CAUSEWAY_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_125)
}

async fn setup() -> (NatsServer, Sidecar) {
    let server = NatsServer::start();
    apply(&server, &manifests()).await;
    let max_body = MAX_BODY.to_string();
    let sc = Sidecar::start(&server, "shop", "web", &[("CAUSEWAY_MAX_BODY", &max_body)]).await;
    (server, sc)
}

/// The sidecar still answers health, readiness, a send and a load, and logged no panic.
async fn still_serves(sc: &Sidecar) {
    let c = http();
    assert_eq!(get(&c, &sc.at("/healthz")).await.0, 200);
    let (s, r) = get(&c, &sc.at("/readyz")).await;
    assert_eq!(s, 200, "{r}");
    let (s, a) =
        post(&c, &sc.at("/v1/stores/orders/subjects/after-fuzz/events"), &json!({"type": "checked", "id": "last-1"}))
            .await;
    assert_eq!(s, 202, "{a}");
    assert_eq!(load(&c, sc, "orders", "after-fuzz").await[0]["id"], "last-1");
    let logs = sc.logs();
    assert!(!logs.contains("panicked"), "the sidecar panicked:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_the_sidecar_keeps_serving() {
    let st = tool("schemathesis");
    assert!(st.exists(), "{} is missing: run scripts/setup.sh --test (pip package schemathesis)", st.display());
    let (_server, sc) = setup().await;
    let dir = TempDir::new("cw-schemathesis");
    // Known names most of the time, so requests get past 404 to the routes' own logic; bounded
    // waits, so long polls and live streams end.
    let config = r#"
[dictionaries.stores]
values = ["orders"]
[dictionaries.nodes]
values = ["web", "inventory", "shop.inventory", "other.web"]
[dictionaries.listeners]
values = ["history", "pushed"]
[dictionaries.subjects]
values = ["order-1", "order.*", ">", "a.b.c", "*"]
[dictionaries.types]
values = ["order-placed", "a.b", "x"]

[parameters]
"path.store" = { dictionary = "stores", probability = 0.8 }
"path.node" = { dictionary = "nodes", probability = 0.8 }
"path.listener" = { dictionary = "listeners", probability = 0.8 }
"path.subject" = { dictionary = "subjects", probability = 0.6 }
"body.type" = { dictionary = "types", probability = 0.6 }
"query.waitMs" = 50
"query.follow" = "false"
"#;
    let cfg = dir.path().join("schemathesis.toml");
    std::fs::write(&cfg, config).unwrap();
    let seed = seed().to_string();
    let mut cmd = tokio::process::Command::new(&st);
    cmd.current_dir(dir.path())
        .arg("--config-file")
        .arg(&cfg)
        .arg("run")
        .arg(sc.at("/v1/openapi.json"))
        .args(["--checks", "not_a_server_error", "--phases", "coverage,fuzzing", "--max-examples", "60"])
        .args(["--seed", &seed, "--request-timeout", "10", "--workers", "1", "--no-color"])
        .args(["--generation-database", "none", "--suppress-health-check", "all", "--warnings", "off"])
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .expect("schemathesis finished within 240s")
        .expect("run schemathesis");
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).into_owned();
        let cut = s.char_indices().rev().nth(12_000).map(|(i, _)| i).unwrap_or(0);
        s[cut..].to_owned()
    };
    let (stdout, stderr) = (tail(&out.stdout), tail(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found failures (seed {seed}; CAUSEWAY_FUZZ_SEED reruns one):\n{stdout}\n{stderr}"
    );
    let generated = stdout
        .lines()
        .find_map(|l| l.trim().strip_suffix(" passed")?.split(" generated, ").next()?.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no test-case count in schemathesis' output:\n{stdout}"));
    assert!(generated >= 500, "schemathesis ran only {generated} test cases:\n{stdout}");
    still_serves(&sc).await;
}

/// xorshift64*: small, seedable, good enough to pick test inputs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

/// A raw HTTP/1.1 request.
struct Raw {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Raw {
    fn bytes(&self) -> Vec<u8> {
        let mut b = format!("{} {} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n", self.method, self.target)
            .into_bytes();
        for (k, v) in &self.headers {
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(b": ");
            b.extend_from_slice(v);
            b.extend_from_slice(b"\r\n");
        }
        if self.chunked {
            b.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for part in self.body.chunks(700) {
                b.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                b.extend_from_slice(part);
                b.extend_from_slice(b"\r\n");
            }
            b.extend_from_slice(b"0\r\n\r\n");
        } else {
            b.extend_from_slice(format!("content-length: {}\r\n\r\n", self.body.len()).as_bytes());
            b.extend_from_slice(&self.body);
        }
        b
    }
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {}", self.method, self.target)?;
        for (k, v) in &self.headers {
            writeln!(f, "{k}: {}", String::from_utf8_lossy(v).escape_debug())?;
        }
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(400)]).into_owned();
        write!(f, "({} bytes{}) {}", self.body.len(), if self.chunked { ", chunked" } else { "" }, body.escape_debug())
    }
}

const NODES: &[&str] = &["web", "inventory", "shop.inventory", "nope", "other.web", "orders"];
const STORES: &[&str] = &["orders", "orders", "nope", "web"];
const LISTENERS: &[&str] = &["history", "pushed", "nope"];
const SUBJECTS: &[&str] = &["order-1", "a.b", "*", "%3E", "a.%3E", "order.*", "a..b", ".", "*.*", "a.%3E.b"];
const TYPES: &[&str] = &["order-placed", "a.b", "x", "", "a b", "a.*", ">", "a..b", "Ω", "-", "_"];

/// A path segment: a known name, or something odd but legal in a request target.
fn segment(r: &mut Rng, known: &[&str]) -> String {
    if r.chance(75) {
        return r.pick(known).to_owned();
    }
    const PIECES: &[&str] = &[
        "a",
        "Z",
        "0",
        "-",
        "_",
        ".",
        "*",
        "%3E",
        "%2F",
        "%00",
        "%FF",
        "%ZZ",
        "%",
        "%20",
        "%E2%82%AC",
        "~",
        "..",
        "%C3%28",
        "%2e%2e",
        "'",
        "(",
        ")",
        "!",
        "$",
        "&",
        "=",
        "+",
        ",",
        ";",
        ":",
        "@",
    ];
    let n = match r.below(10) {
        0 => 0,
        1 => 300,
        _ => 1 + r.below(8),
    };
    (0..n).map(|_| r.pick(PIECES)).collect()
}

/// A path, the methods its route serves, and whether it is the live stream.
fn path(r: &mut Rng) -> (String, &'static [&'static str], bool) {
    const POST: &[&str] = &["POST"];
    const GET: &[&str] = &["GET"];
    let p = match r.below(16) {
        0..=2 => (format!("/v1/nodes/{}/events", segment(r, NODES)), POST),
        3..=5 => {
            let p = format!("/v1/stores/{}/subjects/{}/events", segment(r, STORES), segment(r, SUBJECTS));
            (p, &["GET", "POST"][..])
        }
        6 => return (format!("/v1/stores/{}/events", segment(r, STORES)), GET, true),
        7 => (format!("/v1/stores/{}", segment(r, STORES)), GET),
        8 | 9 => {
            let scope = if r.chance(50) { "global" } else { "state" };
            let parts: Vec<String> =
                (0..1 + r.below(3)).map(|_| segment(r, &["k", "a.b", "x_y", "_cw.handled.x"])).collect();
            (format!("/v1/{scope}/{}", parts.join("/")), &["GET", "PUT", "PUT", "DELETE"][..])
        }
        10 => ("/v1/listeners".into(), GET),
        11 => (format!("/v1/listeners/{}/fetch", segment(r, LISTENERS)), POST),
        12 => ("/v1/acks".into(), POST),
        13 => (r.pick(&["/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/", "/v1", "/v1/"]).to_owned(), GET),
        _ => {
            let n = 1 + r.below(6);
            let segs: Vec<String> =
                (0..n).map(|_| segment(r, &["v1", "stores", "nodes", "events", "subjects"])).collect();
            (format!("/{}", segs.join("/")), GET)
        }
    };
    (p.0, p.1, false)
}

fn query(r: &mut Rng, stream: bool) -> String {
    const KEYS: &[&str] =
        &["after", "upTo", "limit", "expectedSequence", "subject", "follow", "max", "waitMs", "app", "x", ""];
    const VALUES: &[&str] = &[
        "0",
        "1",
        "2",
        "5",
        "100",
        "-1",
        "18446744073709551615",
        "18446744073709551616",
        "abc",
        "",
        "%FF",
        "true",
        "false",
        "%3E",
        "*",
        "a.b",
        "1e3",
        "%201",
        "99999999999999999999999999",
        "ignore",
        "%00",
    ];
    let mut pairs = Vec::new();
    if r.chance(60) {
        for _ in 0..1 + r.below(4) {
            let k = r.pick(KEYS);
            let v = r.pick(VALUES);
            pairs.push(if r.chance(10) { k.to_owned() } else { format!("{k}={v}") });
        }
    }
    // A live stream ends after its caughtUp marker only with follow=false (the last value wins).
    if stream {
        pairs.push("follow=false".into());
    }
    if pairs.is_empty() { String::new() } else { format!("?{}", pairs.join("&")) }
}

fn json_value(r: &mut Rng, depth: u32) -> String {
    match r.below(if depth == 0 { 6 } else { 9 }) {
        0 => "null".into(),
        1 => r.pick(&["true", "false"]).to_owned(),
        2 => r.pick(&["0", "-0", "1.5", "1e400", "-18446744073709551617", "18446744073709551616", "3"]).to_owned(),
        3 | 4 => json!(r.pick(TYPES)).to_string(),
        5 => r.pick(&[r#""\u0000""#, r#""\ud800""#, r#""é€😀""#, r#""a\"b""#, r#""""#]).to_owned(),
        6 => {
            let items: Vec<String> = (0..r.below(4)).map(|_| json_value(r, depth - 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            const KEYS: &[&str] = &[
                "type",
                "payload",
                "id",
                "causationId",
                "correlationId",
                "extensions",
                "paylod",
                "emit",
                "token",
                "result",
                "delayMs",
                "specversion",
                "data",
                "time",
                "data_base64",
                "datacontenttype",
            ];
            let fields: Vec<String> =
                (0..r.below(5)).map(|_| format!("{}:{}", json!(r.pick(KEYS)), json_value(r, depth - 1))).collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

fn event(r: &mut Rng) -> Value {
    let mut e = json!({"type": r.pick(TYPES)});
    if r.chance(70) {
        e["payload"] = serde_json::from_str(&json_value(r, 2)).unwrap_or(Value::Null);
    }
    if r.chance(40) {
        e["id"] = json!(r.pick(&["e-1", "e-2", "cw-probe-x", "", "a b", "01J:x.y", &"i".repeat(129)]));
    }
    if r.chance(15) {
        e["causationId"] = json!(r.pick(&["c-1", "", "\u{1}", &"c".repeat(200)]));
    }
    if r.chance(10) {
        e["extensions"] = json!({"k": r.pick(TYPES)});
    }
    e
}

fn cloud_event(r: &mut Rng) -> Value {
    let mut e = json!({"specversion": r.pick(&["1.0", "1.0", "0.3"]), "id": r.pick(&["ce-1", "ce-2", "", "x y"]),
                       "type": r.pick(TYPES), "source": "/fuzz"});
    if r.chance(50) {
        e["data"] = serde_json::from_str(&json_value(r, 2)).unwrap_or(Value::Null);
    }
    if r.chance(20) {
        e["time"] = json!(r.pick(&["2026-11-25T12:00:00Z", "yesterday", ""]));
    }
    if r.chance(10) {
        e["data_base64"] = json!("aGk=");
    }
    if r.chance(10) {
        e["datacontenttype"] = json!(r.pick(&["text/plain", "application/json", "application/x+json"]));
    }
    if r.chance(10) {
        e.as_object_mut().unwrap().remove(r.pick(&["id", "type", "specversion"]));
    }
    e
}

fn body(r: &mut Rng) -> Vec<u8> {
    match r.below(14) {
        0 => Vec::new(),
        1 => (0..r.below(300)).map(|_| r.next() as u8).collect(),
        2..=4 => event(r).to_string().into_bytes(),
        5 => {
            let n = if r.chance(5) { 1001 } else { r.below(5) };
            Value::Array((0..n).map(|_| event(r)).collect()).to_string().into_bytes()
        }
        6 => cloud_event(r).to_string().into_bytes(),
        7 => Value::Array((0..r.below(4)).map(|_| cloud_event(r)).collect()).to_string().into_bytes(),
        8 => json_value(r, 4).into_bytes(),
        9 => {
            let acks: Vec<Value> = (0..r.below(4))
                .map(|_| {
                    let delay = [json!(0), json!(u64::MAX), json!(-1), json!("1")][r.below(4)].clone();
                    json!({"token": r.pick(&["", "x", "$JS.ACK.a.b.1.1.1.1.1", "1.2.3"]),
                           "result": r.pick(&["ack", "nak", "term", "maybe"]), "delayMs": delay})
                })
                .collect();
            Value::Array(acks).to_string().into_bytes()
        }
        10 => {
            let depth = 50 + r.below(300);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        11 => b"{\"type\":\"a\xff\xfe\",\"payload\":\"\xc3\x28\"}".to_vec(),
        12 => {
            // Over CAUSEWAY_MAX_BODY.
            let mut b = b"{\"type\":\"big\",\"payload\":\"".to_vec();
            b.extend(std::iter::repeat_n(b'z', MAX_BODY + 10));
            b.extend_from_slice(b"\"}");
            b
        }
        _ => format!("{{\"type\":\"x\",\"payload\":{}}}", json_value(r, 3)).into_bytes(),
    }
}

fn headers(r: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let mut h: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |k: &str, v: &[u8]| h.push((k.to_owned(), v.to_vec()));
    if r.chance(75) {
        let ct: &[u8] = r.pick(&[
            b"application/json".as_slice(),
            b"application/json",
            b"application/json",
            b"application/json; charset=utf-8",
            b"application/cloudevents+json",
            b"application/cloudevents-batch+json",
            b"APPLICATION/CLOUDEVENTS+JSON; charset=utf-8",
            b"text/plain",
            b"application/x+json",
            b"",
            b"application/json;;;",
            b"\xff\xfe/json",
            b"multipart/form-data; boundary=x",
        ]);
        add("content-type", ct);
    }
    if r.chance(20) {
        let v: &[u8] = r.pick(&[
            b"\"0\"".as_slice(),
            b"\"1\"",
            b"W/\"3\"",
            b"*",
            b"abc",
            b"\"18446744073709551616\"",
            b"\"18446744073709551615\"",
            b"\"-1\"",
            b"",
            b"\xff",
            b"\"1\", \"2\"",
        ]);
        add("if-match", v);
    }
    if r.chance(10) {
        add("if-none-match", r.pick(&[b"*".as_slice(), b"\"1\"", b"x", b"\xfe"]));
    }
    if r.chance(15) {
        add("last-event-id", r.pick(&[b"0".as_slice(), b"5", b"18446744073709551615", b"-1", b"abc", b"", b"\xc3"]));
    }
    if r.chance(20) {
        add("accept", r.pick(&[b"text/event-stream".as_slice(), b"application/x-ndjson", b"*/*", b"application/json"]));
    }
    if r.chance(25) {
        add("ce-specversion", r.pick(&[b"1.0".as_slice(), b"1.0", b"0.3", b""]));
        if r.chance(85) {
            add("ce-id", r.pick(&[b"ce-9".as_slice(), b"", b"a%20b", b"%FF", b"\xff"]));
        }
        if r.chance(85) {
            add("ce-type", r.pick(&[b"order-placed".as_slice(), b"a.b", b"", b"a%2Eb", b"%E2%82%AC", b"*"]));
        }
        if r.chance(30) {
            add("ce-time", r.pick(&[b"2026-11-25T12:00:00Z".as_slice(), b"yesterday", b"%FF", b""]));
        }
        if r.chance(30) {
            add("ce-source", r.pick(&[b"/fuzz".as_slice(), b"%", b"\x80"]));
        }
        if r.chance(20) {
            add("ce-causationid", r.pick(&[b"c-1".as_slice(), b"", b"%00"]));
        }
    }
    if r.chance(10) {
        let name = r.pick(&["cw-causation-id", "cw-correlation-id"]);
        let long = vec![b'c'; 300];
        add(name, r.pick(&[b"c-1".as_slice(), b"", b"\xe9t\xe9", long.as_slice()]));
    }
    if r.chance(5) {
        add("authorization", r.pick(&[b"Bearer x".as_slice(), b"Basic Zm9vOmJhcg==", b""]));
    }
    if r.chance(10) {
        add(r.pick(&["x-fuzz", "ce-", "cw-", "expect", "range"]), r.pick(&[b"1".as_slice(), b"bytes=0-1", b"\xa0"]));
    }
    h
}

/// A request that is valid as generated, then maybe bent by one random header or query pair:
/// sends, appends (often conditional), batches, loads, KV writes, fetches.
fn mostly_valid_request(r: &mut Rng, n: usize) -> Raw {
    let id = format!("v{}-{n}", r.next() % 1_000_000);
    let (method, mut target, body) = match r.below(8) {
        0 | 1 => {
            ("POST", format!("/v1/nodes/{}/events", r.pick(&["web", "inventory", "shop.inventory"])), event_ok(r, &id))
        }
        2 | 3 => {
            let subject = r.pick(&["order-1", "order-2", "a.b"]);
            let cond = if r.chance(50) { format!("?expectedSequence={}", r.below(40)) } else { String::new() };
            ("POST", format!("/v1/stores/orders/subjects/{subject}/events{cond}"), event_ok(r, &id))
        }
        4 => {
            let batch: Vec<Value> = (0..1 + r.below(4))
                .map(|i| serde_json::from_slice(&event_ok(r, &format!("{id}-{i}"))).unwrap())
                .collect();
            ("POST", "/v1/stores/orders/subjects/batch/events".into(), Value::Array(batch).to_string().into_bytes())
        }
        5 => ("GET", format!("/v1/stores/orders/subjects/{}/events", r.pick(&["order-1", "*", "%3E", "a.*"])), vec![]),
        6 => {
            let key = r.pick(&["k1", "a.b", "x/y"]);
            let scope = r.pick(&["global", "state"]);
            let m = r.pick(&["PUT", "PUT", "GET", "DELETE"]);
            let body = if m == "PUT" { json_value(r, 2).into_bytes() } else { vec![] };
            (m, format!("/v1/{scope}/{key}"), body)
        }
        _ => ("POST", format!("/v1/listeners/history/fetch?max={}&waitMs=0", 1 + r.below(3)), vec![]),
    };
    let mut headers = vec![("content-type".to_owned(), b"application/json".to_vec())];
    if r.chance(50)
        && let Some(h) = self::headers(r).into_iter().last()
    {
        headers.push(h);
    }
    if r.chance(25) {
        let q = query(r, false);
        if !q.is_empty() {
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(&q[1..]);
        }
    }
    Raw { method: method.to_owned(), target, headers, body, chunked: r.chance(10) }
}

/// A valid event with this id (or the same id as an earlier one, for deduplication).
fn event_ok(r: &mut Rng, id: &str) -> Vec<u8> {
    let id = if r.chance(10) { "dup-1" } else { id };
    let payload: Value = serde_json::from_str(&json_value(r, 2)).unwrap_or(Value::Null);
    json!({"type": r.pick(&["order-placed", "a.b", "x"]), "id": id, "payload": payload}).to_string().into_bytes()
}

fn random_request(r: &mut Rng) -> Raw {
    let (p, methods, stream) = path(r);
    let target = format!("{p}{}", query(r, stream));
    let method = if r.chance(85) {
        methods[r.below(methods.len())]
    } else {
        r.pick(&["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "FUZZ"])
    };
    let body = if method == "GET" && r.chance(80) { Vec::new() } else { body(r) };
    Raw { method: method.to_owned(), target, headers: headers(r), body, chunked: r.chance(10) }
}

/// A parsed answer.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = &raw[end + 4..];
    let body = if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut out = Vec::new();
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap_or(0);
            if size == 0 || rest.len() < nl + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[(nl + 4 + size).min(rest.len())..];
        }
        out
    } else {
        rest.to_vec()
    };
    Some(Answer { status, headers, body })
}

/// Sends raw bytes on a fresh connection and reads until the server closes it.
async fn roundtrip(addr: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    // The server may answer (413, 400) and close before reading everything: keep reading.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => Ok(buf),
        Ok(Err(e)) if !buf.is_empty() => Err(format!("read after {} bytes: {e}", buf.len())),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err(format!("no end of answer within 15s ({} bytes so far)", buf.len())),
    }
}

fn is_snake(code: &str) -> bool {
    !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, usize>,
    written: usize,
}

async fn fuzz_worker(addr: String, seed: u64, n: usize) -> Tally {
    let mut r = Rng::new(seed);
    let mut tally = Tally::default();
    for i in 0..n {
        let req = if r.chance(30) { mostly_valid_request(&mut r, i) } else { random_request(&mut r) };
        let raw = roundtrip(&addr, &req.bytes()).await;
        let oversized = req.body.len() > MAX_BODY;
        let a = match raw.as_deref().map(parse_answer) {
            Ok(Some(a)) => a,
            // Answering 413 early and closing may reset the connection before the client reads.
            Err(_) | Ok(None) if oversized => continue,
            Ok(None) => panic!("request {i} (seed {seed}) got no HTTP answer:\n{req}"),
            Err(e) => panic!("request {i} (seed {seed}) got no answer ({e}):\n{req}"),
        };
        *tally.by_status.entry(a.status).or_default() += 1;
        let what =
            || format!("request {i} (seed {seed}):\n{req}\n-> {} {}", a.status, String::from_utf8_lossy(&a.body));
        assert!(a.status < 500, "a server error: {}", what());
        if a.status == 202 && req.method == "POST" {
            tally.written += 1;
        }
        if (400..500).contains(&a.status) && req.method != "HEAD" {
            let v: Value =
                serde_json::from_slice(&a.body).unwrap_or_else(|_| panic!("a 4xx that is not JSON: {}", what()));
            let code = v["error"].as_str().unwrap_or("");
            assert!(is_snake(code), "4xx without a snake_case \"error\": {}", what());
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "4xx without a \"message\": {}", what());
            assert!(
                a.headers.get("content-type").is_some_and(|c| c.starts_with("application/json")),
                "4xx not labelled JSON: {}",
                what()
            );
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_never_get_a_5xx_and_every_4xx_is_a_json_error() {
    let (_server, sc) = setup().await;
    let addr = sc.url.trim_start_matches("http://").to_owned();
    let n: usize = std::env::var("CAUSEWAY_FUZZ_REQUESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(5000);
    let seed = seed();
    // Two clients at once, each with its own sequence of requests.
    let a = tokio::spawn(fuzz_worker(addr.clone(), seed, n / 2));
    let b = tokio::spawn(fuzz_worker(addr.clone(), seed ^ 0x5eed, n - n / 2));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut by_status = a.by_status.clone();
    for (s, c) in &b.by_status {
        *by_status.entry(*s).or_default() += c;
    }
    eprintln!("fuzz (seed {seed}): {by_status:?}, {} events written", a.written + b.written);
    assert!(a.written + b.written >= n / 10, "too few valid requests got through: {by_status:?}");
    for s in [200, 400, 404, 405, 409, 413, 415] {
        assert!(by_status.contains_key(&s), "no {s} in {by_status:?}: the generator misses a path");
    }

    // Bytes that are not HTTP: answered with a 4xx or closed, never a crash.
    let mut r = Rng::new(seed ^ 0xbad);
    for i in 0..60 {
        let mut junk: Vec<u8> = match r.below(4) {
            0 => (0..1 + r.below(200)).map(|_| r.next() as u8).collect(),
            1 => format!("GET /healthz HTTP/{}\r\n\r\n", r.pick(&["9.9", "1", "1.1x", ""])).into_bytes(),
            2 => b"POST /v1/acks HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\n[]".to_vec(),
            _ => b"POST /v1/acks HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        };
        junk.extend_from_slice(b"\r\n\r\n");
        if let Ok(raw) = roundtrip(&addr, &junk).await
            && let Some(a) = parse_answer(&raw)
        {
            assert!(
                a.status < 500 || a.status == 505,
                "junk {i} got {}: {:?}",
                a.status,
                String::from_utf8_lossy(&junk)
            );
        }
    }
    still_serves(&sc).await;
}

/// Found by the fuzzer: a no-wait fetch asking for more events than the consumer's
/// max_ack_pending lets out got no end from JetStream and hung until the client gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_wait_fetch_answers_even_when_the_consumer_is_at_max_ack_pending() {
    let (_server, sc) = setup().await;
    let c = http();
    for n in 0..5 {
        let (s, a) = post(&c, &sc.at("/v1/stores/orders/subjects/o/events"), &json!({"type": "x", "payload": n})).await;
        assert_eq!(s, 202, "{a}");
    }
    for (max, want) in [(3, 2), (1, 0)] {
        let t = std::time::Instant::now();
        let r = c
            .post(sc.at(&format!("/v1/listeners/capped/fetch?max={max}&waitMs=0")))
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("the fetch is answered");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["events"].as_array().map(Vec::len), Some(want), "maxInFlight 2 lets out two events: {v}");
        assert!(t.elapsed() < Duration::from_secs(5), "a no-wait fetch took {:?}", t.elapsed());
    }
}

fn python() -> std::path::PathBuf {
    std::env::var_os("CAUSEWAY_PYTHON").map(Into::into).unwrap_or_else(|| tool("python"))
}

/// Checks one event as the app sees it (load) against what the Python SDK put in.
fn assert_mapped(e: &Value, n: u32) {
    let at = format!("event {n}: {e}");
    assert_eq!(e["id"], format!("sdk-{n}"), "{at}");
    assert_eq!(e["type"], "order.placed", "{at}");
    assert_eq!(e["time"], "2026-11-25T12:00:00Z", "{at}");
    assert_eq!(e["correlationId"], format!("corr-{n}"), "{at}");
    assert_eq!(e["payload"], json!({"orderId": n.to_string(), "lines": [1, 2.5, null, true]}), "{at}");
    assert_eq!(e["extensions"]["source"], "/shop/web", "{at}");
    assert_eq!(e["extensions"]["subject"], format!("order-{n}"), "{at}");
    assert_eq!(e["extensions"]["tenant"], "acme", "{at}");
    assert!(e["extensions"].get("specversion").is_none(), "{at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_from_the_python_sdk_are_accepted_with_every_attribute_mapped() {
    let (server, sc) = setup().await;
    let script = workspace_root().join("tests/python/cloudevents_requests.py");
    let out = std::process::Command::new(python())
        .args(["-W", "ignore"])
        .arg(&script)
        .arg("sdk")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run scripts/setup.sh --test", python().display()));
    assert!(
        out.status.success(),
        "the CloudEvents script failed (needs pip package cloudevents):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array of requests");
    assert_eq!(requests.len(), 3);
    let c = http();
    for route in ["/v1/stores/orders/subjects/ce/events", "/v1/nodes/inventory/events"] {
        for req in &requests {
            let mut b = c.post(sc.at(route)).body(req["body"].as_str().unwrap().to_owned());
            for (k, v) in req["headers"].as_object().unwrap() {
                b = b.header(k, v.as_str().unwrap());
            }
            let r = b.send().await.unwrap();
            let status = r.status().as_u16();
            let answer: Value = r.json().await.unwrap();
            assert_eq!(status, 202, "{} to {route}: {answer}", req["name"]);
            let acks = if answer.is_array() { answer.as_array().unwrap().clone() } else { vec![answer.clone()] };
            assert_eq!(acks.len(), if req["name"] == "batch" { 2 } else { 1 }, "{answer}");
            assert!(acks.iter().all(|a| a["duplicate"] == false && a["id"].as_str().unwrap().starts_with("sdk-")));
        }
    }

    // Appended: what load shows the app.
    let events = load(&c, &sc, "orders", "ce").await;
    assert_eq!(events.len(), 4);
    for (e, n) in events.iter().zip(1..) {
        assert_mapped(e, n);
        assert_eq!(e["subject"], "ce", "the store subject is the route's, not the CloudEvent's");
    }
    assert_eq!(events[0]["causationId"], "cause-1", "ce-causationid maps to the causation");

    // Sent: the envelopes stored in the inbox carry the same, as MessagePack.
    let js = jetstream::new(server.client().await);
    let mut inbox = js.get_stream("CW_IN_shop_inventory").await.unwrap();
    let last = inbox.info().await.unwrap().state.last_sequence;
    assert_eq!(last, 4);
    for seq in 1..=last {
        let env = Envelope::decode(&inbox.get_raw_message(seq).await.unwrap().payload).unwrap();
        let e = json!({"id": env.id, "type": env.event_type, "time": env.time, "correlationId": env.correlation_id,
                       "payload": env.payload, "extensions": env.extensions});
        assert_mapped(&e, seq as u32);
        assert_eq!(env.sender, "shop/web");
    }
    // Retried through the SDK's request again: deduplicated.
    let req = &requests[1];
    let r = c
        .post(sc.at("/v1/stores/orders/subjects/ce/events"))
        .header("content-type", req["headers"]["content-type"].as_str().unwrap())
        .body(req["body"].as_str().unwrap().to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], true);
}
