//! Live streams of a store without a JetStream consumer, against a real nats-server and the real
//! sidecar: every store stream announces what it stores (headers only) at
//! `cw.<ns>.live.<x>.>`, and a live stream subscribes to that, then reads with direct gets.
//!
//! - twenty live streams on a store capped at one consumer open, follow, and take no consumer;
//!   the sidecar asks JetStream only for direct gets and stream info;
//! - readers that join a store while it is appended to see every matching event after their
//!   start once, in order, with no gap and nothing that does not match;
//! - a client that disconnects and resumes with `Last-Event-ID` misses nothing;
//! - a nats-server restart (quick, and longer than `CAUSEWAY_NATS_WAIT`) ends a stream with an
//!   `error` entry or lets it go on, and resuming from the last id misses nothing;
//! - a store stream of an earlier version (no announcements) is still followed, and gains the
//!   announcements on the next apply with its events intact.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream;
use causeway_tests::{NatsServer, eventually};
use futures::StreamExt;
use serde_json::{Value, json};
use support::*;

/// Longest silence a live stream may keep while an event is due (the sidecar's own fallback
/// read comes every 5 s, so this only trips on a stream that stopped following).
const STALL: Duration = Duration::from_secs(20);

/// One entry of a live stream, in either format.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// An event and its sequence.
    Event(u64, Value),
    /// The `caughtUp` marker and its `lastSequence`.
    CaughtUp(u64),
    /// An undecodable event's sequence.
    Skipped(u64),
    /// The stream ended on an error.
    Error(Value),
}

/// A live stream as an SSE or NDJSON client reads it.
struct Live {
    resp: reqwest::Response,
    buf: Vec<u8>,
    sse: bool,
    ended: bool,
}

impl Live {
    async fn open(c: &reqwest::Client, url: &str, sse: bool, last_event_id: Option<u64>) -> Live {
        let accept = if sse { "text/event-stream" } else { "application/x-ndjson" };
        let mut req = c.get(url).header("accept", accept);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.expect("open a live stream");
        let status = resp.status();
        if status != 200 {
            panic!("live stream {url}: {status} {}", resp.text().await.unwrap_or_default());
        }
        assert_eq!(resp.headers()["content-type"], accept);
        Live { resp, buf: Vec::new(), sse, ended: false }
    }

    /// The next entry, or `None` once the stream has ended (or its connection broke). Panics
    /// after [`STALL`] without a byte.
    async fn next(&mut self) -> Option<Entry> {
        loop {
            if let Some(e) = self.parse_one() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(STALL, self.resp.chunk()).await.expect("the live stream stalled") {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) | Err(_) => self.ended = true,
            }
        }
    }

    /// The next event, skipping nothing else: panics on any other entry.
    async fn event(&mut self) -> (u64, Value) {
        match self.next().await {
            Some(Entry::Event(seq, v)) => (seq, v),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn parse_one(&mut self) -> Option<Entry> {
        if !self.sse {
            let end = self.buf.iter().position(|b| *b == b'\n')?;
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let v: Value = serde_json::from_slice(&line).expect("an NDJSON line");
            return Some(if v["caughtUp"] == true {
                Entry::CaughtUp(v["lastSequence"].as_u64().expect("lastSequence"))
            } else if v["skipped"] == true {
                Entry::Skipped(v["sequence"].as_u64().expect("sequence"))
            } else if v.get("error").is_some() && v.get("type").is_none() {
                Entry::Error(v)
            } else {
                Entry::Event(v["sequence"].as_u64().expect("an event carries its sequence"), v)
            });
        }
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8(frame).expect("UTF-8 SSE");
            let (mut id, mut event, mut data) = (None, "message".to_owned(), String::new());
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse::<u64>().expect("a numeric id"));
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let v: Value = serde_json::from_str(&data).expect("SSE data is JSON");
            return Some(match event.as_str() {
                "message" => {
                    let seq = id.expect("an event frame carries its id");
                    assert_eq!(v["sequence"], seq, "the id is the sequence");
                    Entry::Event(seq, v)
                }
                "caughtUp" => Entry::CaughtUp(v["lastSequence"].as_u64().expect("lastSequence")),
                "skipped" => Entry::Skipped(id.expect("a skipped frame carries its id")),
                "error" => Entry::Error(v),
                other => panic!("unknown SSE event {other:?}: {v}"),
            });
        }
    }
}

fn append_url(sc: &Sidecar, store: &str, subject: &str) -> String {
    sc.at(&format!("/v1/stores/{store}/subjects/{subject}/events"))
}

/// Appends one event with a fixed id, retrying while the sidecar answers 503/504 (NATS away):
/// the id makes a retry store it once.
async fn append(c: &reqwest::Client, sc: &Sidecar, store: &str, subject: &str, event: &Value) -> u64 {
    let url = append_url(sc, store, subject);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.post(&url).json(event).send().await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            match status {
                202 => return v["sequence"].as_u64().expect("sequence"),
                503 | 504 => {}
                _ => panic!("append {event} to {store}/{subject}: {status} {v}"),
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "append {event} never succeeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(sequence, id)` of every stored event matching `pattern` (`>` spelled `%3E`), as a load says.
async fn stored(c: &reqwest::Client, sc: &Sidecar, store: &str, pattern: &str) -> Vec<(u64, String)> {
    load(c, sc, store, pattern)
        .await
        .iter()
        .map(|e| (e["sequence"].as_u64().unwrap(), e["id"].as_str().unwrap().to_owned()))
        .collect()
}

fn ids(events: &[(u64, Value)]) -> Vec<(u64, String)> {
    events.iter().map(|(s, v)| (*s, v["id"].as_str().unwrap_or_default().to_owned())).collect()
}

async fn stream_info(server: &NatsServer, stream: &str) -> jetstream::stream::Info {
    let js = jetstream::new(server.client().await);
    js.get_stream(stream).await.unwrap().info().await.unwrap().clone()
}

#[tokio::test]
async fn twenty_live_streams_take_no_consumer_even_on_a_store_capped_at_one() {
    let server = NatsServer::start();
    let yaml = format!(
        "{SHOP}---\n{}",
        r#"apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: tiny, namespace: shop}
spec: {maxConsumers: 1}
"#
    );
    apply(&server, &yaml).await;
    let sc = Sidecar::start(&server, "shop", "web", &[("CAUSEWAY_MAX_STREAMS", "40")]).await;
    let c = http();
    for n in 0..3 {
        append(&c, &sc, "tiny", "s", &json!({"type": "t", "id": format!("before-{n}")})).await;
    }
    // Every JetStream API request from now on, seen on the wire.
    let spy = server.client().await;
    let mut api = spy.subscribe("$JS.API.>").await.unwrap();
    spy.flush().await.unwrap();

    let mut streams = Vec::new();
    for i in 0..20 {
        let mut live = Live::open(&c, &sc.at("/v1/stores/tiny/events?subject=s"), i % 2 == 0, None).await;
        for n in 0..3 {
            assert_eq!(live.event().await.1["id"], format!("before-{n}"));
        }
        assert_eq!(live.next().await, Some(Entry::CaughtUp(3)));
        streams.push(live);
    }
    for n in 0..2 {
        append(&c, &sc, "tiny", "s", &json!({"type": "t", "id": format!("after-{n}")})).await;
    }
    for live in &mut streams {
        let got = [live.event().await, live.event().await];
        assert_eq!(ids(&got), [(4, "after-0".to_owned()), (5, "after-1".to_owned())]);
    }
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), api.next()).await {
        seen.push(m.subject.to_string());
    }
    assert!(
        seen.iter().any(|s| s == "$JS.API.DIRECT.GET.CW_ES_shop_tiny"),
        "live streams read with direct gets: {seen:?}"
    );
    let other: Vec<_> = seen
        .iter()
        .filter(|s| !s.starts_with("$JS.API.DIRECT.GET.") && !s.starts_with("$JS.API.STREAM.INFO."))
        .collect();
    assert!(other.is_empty(), "the sidecar asked JetStream for more than direct gets and stream info: {other:?}");

    let info = stream_info(&server, "CW_ES_shop_tiny").await;
    assert_eq!((info.config.max_consumers, info.state.consumer_count), (1, 0), "20 open live streams, no consumer");
    let (s, f) = get(&c, &sc.at("/v1/stores/tiny")).await;
    assert_eq!((s, &f["consumers"]), (200, &json!(0)), "{f}");
    // And the sidecar's own bound still holds.
    let mut more = Vec::new();
    for _ in 0..20 {
        more.push(Live::open(&c, &sc.at("/v1/stores/tiny/events"), false, None).await);
    }
    let r = c.get(sc.at("/v1/stores/tiny/events")).send().await.unwrap();
    assert_eq!(r.status(), 503, "CAUSEWAY_MAX_STREAMS=40");
    assert!(r.headers().contains_key("retry-after"));
}

/// Subjects the appenders write: the first three match `order.*`, the others do not.
const SUBJECTS: [&str; 6] = ["order.a", "order.b", "order.c-1", "order.a.x", "orders.a", "shipping.a"];
const PATTERN: &str = "order.*";

fn matches_pattern(subject: &str) -> bool {
    let t: Vec<&str> = subject.split('.').collect();
    t.len() == 2 && t[0] == "order"
}

#[tokio::test]
async fn readers_joining_during_appends_see_every_matching_event_once_in_order() {
    let server = NatsServer::start();
    apply(&server, SHOP).await;
    let sc = Arc::new(Sidecar::start(&server, "shop", "web", &[]).await);
    let c = http();
    const APPENDERS: usize = 2;
    const EACH: usize = 200;
    let done = Arc::new(AtomicUsize::new(0));
    let mut appenders = Vec::new();
    for k in 0..APPENDERS {
        let (c, sc, done) = (c.clone(), sc.clone(), done.clone());
        appenders.push(tokio::spawn(async move {
            for i in 0..EACH {
                let subject = SUBJECTS[(i * 7 + k * 3) % SUBJECTS.len()];
                append(&c, &sc, "orders", subject, &json!({"type": "t", "id": format!("e-{k}-{i}"), "payload": i}))
                    .await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Readers join at different points, some from the start, some halfway back, some from now.
    let mut readers = Vec::new();
    for (n, join_at) in [0, 0, 60, 120, 180, 260, 330, APPENDERS * EACH].into_iter().enumerate() {
        eventually(Duration::from_secs(60), "the appenders to get there", || {
            let d = done.load(Ordering::SeqCst);
            async move { (d >= join_at).then_some(()) }
        })
        .await;
        let (_, f) = get(&c, &sc.at("/v1/stores/orders")).await;
        let last = f["lastSequence"].as_u64().unwrap();
        let (after, by_header) = match n % 4 {
            0 => (last, false),
            1 => (last / 2, false),
            2 => (last / 3, true),
            _ => (0, false),
        };
        let url = if by_header {
            sc.at(&format!("/v1/stores/orders/events?subject={PATTERN}"))
        } else {
            sc.at(&format!("/v1/stores/orders/events?subject={PATTERN}&after={after}"))
        };
        let mut live = Live::open(&c, &url, n % 2 == 0, by_header.then_some(after)).await;
        readers.push(tokio::spawn(async move {
            let mut entries = Vec::new();
            loop {
                let e = live.next().await.expect("the stream goes on");
                let end = matches!(&e, Entry::Event(_, v) if v["type"] == "end");
                entries.push(e);
                if end {
                    return (after, entries);
                }
            }
        }));
    }
    for a in appenders {
        a.await.unwrap();
    }
    append(&c, &sc, "orders", "order.end", &json!({"type": "end", "id": "end"})).await;

    let all = stored(&c, &sc, "orders", "%3E").await;
    assert_eq!(all.len(), APPENDERS * EACH + 1, "every append stored once");
    let matching = stored(&c, &sc, "orders", PATTERN).await;
    assert!(matching.len() > 100 && matching.len() < all.len() - 100, "both kinds were appended");
    for r in readers {
        let (after, entries) = tokio::time::timeout(Duration::from_secs(120), r).await.expect("reader done").unwrap();
        let markers: Vec<u64> =
            entries.iter().filter_map(|e| if let Entry::CaughtUp(l) = e { Some(*l) } else { None }).collect();
        assert_eq!(markers.len(), 1, "one caughtUp marker: {markers:?}");
        let events: Vec<(u64, Value)> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Event(s, v) => Some((*s, v.clone())),
                Entry::CaughtUp(_) => None,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        for (_, v) in &events {
            let subject = v["subject"].as_str().unwrap();
            assert!(matches_pattern(subject), "{subject} does not match {PATTERN}");
        }
        let want: Vec<(u64, String)> = matching.iter().filter(|(s, _)| *s > after).cloned().collect();
        assert_eq!(ids(&events), want, "the reader after {after} saw every matching event once, in order");
        // The marker sits where the catch-up ended: before it nothing later, after it nothing earlier.
        let at = entries.iter().position(|e| matches!(e, Entry::CaughtUp(_))).unwrap();
        assert!(entries[..at].iter().all(|e| matches!(e, Entry::Event(s, _) if *s <= markers[0])));
        assert!(entries[at + 1..].iter().all(|e| matches!(e, Entry::Event(s, _) if *s > markers[0])));
    }
}

#[tokio::test]
async fn a_client_that_disconnects_and_resumes_with_last_event_id_misses_nothing() {
    let server = NatsServer::start();
    apply(&server, SHOP).await;
    let sc = Arc::new(Sidecar::start(&server, "shop", "web", &[]).await);
    let c = http();
    const EVENTS: usize = 150;
    let appender = {
        let (c, sc) = (c.clone(), sc.clone());
        tokio::spawn(async move {
            for i in 0..EVENTS {
                append(&c, &sc, "orders", &format!("s{}", i % 3), &json!({"type": "t", "id": format!("r-{i}")})).await;
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            append(&c, &sc, "orders", "s0", &json!({"type": "end", "id": "end"})).await;
        })
    };
    let url = sc.at("/v1/stores/orders/events");
    let mut got: Vec<(u64, Value)> = Vec::new();
    let mut last_id = None;
    let mut sessions = 0;
    'sessions: loop {
        sessions += 1;
        let mut live = Live::open(&c, &url, true, last_id).await;
        // Each session reads a few events, then the client goes away without a word.
        let mut read = 0;
        while let Some(e) = live.next().await {
            match e {
                Entry::Event(seq, v) => {
                    let end = v["type"] == "end";
                    got.push((seq, v));
                    last_id = Some(seq);
                    read += 1;
                    if end {
                        break 'sessions;
                    }
                    if read == 25 {
                        break;
                    }
                }
                Entry::CaughtUp(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(live);
        // Appends go on while the client is away.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    appender.await.unwrap();
    assert!(sessions > 3, "the client resumed several times ({sessions})");
    assert_eq!(ids(&got), stored(&c, &sc, "orders", "%3E").await, "nothing missed, nothing twice");
}

/// Reads `live` until the event with id `until`; on an `error` entry or the end of the stream,
/// resumes from the last id seen. The events read, and how many times it resumed.
async fn read_until(
    c: &reqwest::Client,
    url: &str,
    mut live: Live,
    mut last: u64,
    until: &str,
) -> (Vec<(u64, Value)>, Vec<Value>) {
    let mut got = Vec::new();
    let mut errors = Vec::new();
    loop {
        match live.next().await {
            Some(Entry::Event(seq, v)) => {
                let end = v["id"] == until;
                got.push((seq, v));
                last = seq;
                if end {
                    return (got, errors);
                }
            }
            Some(Entry::CaughtUp(_)) => {}
            Some(Entry::Error(e)) => errors.push(e),
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                // Ended (after its error entry, or cut): resume from the last id seen.
                let opened = eventually(Duration::from_secs(30), "the live stream to open again", || async move {
                    let r = c.get(url).header("accept", "text/event-stream").header("last-event-id", last.to_string());
                    r.send().await.ok().filter(|r| r.status() == 200)
                })
                .await;
                live = Live { resp: opened, buf: Vec::new(), sse: true, ended: false };
            }
        }
    }
}

#[tokio::test]
async fn a_nats_restart_during_a_live_stream_loses_nothing() {
    let mut server = NatsServer::start();
    apply(&server, SHOP).await;
    let sc = Sidecar::start(&server, "shop", "web", &[("CAUSEWAY_NATS_WAIT", "2s")]).await;
    let c = http();
    let url = sc.at("/v1/stores/orders/events?subject=r.>");
    for n in 0..5 {
        append(&c, &sc, "orders", "r.a", &json!({"type": "t", "id": format!("a-{n}")})).await;
    }
    let mut live = Live::open(&c, &url, true, None).await;
    for _ in 0..5 {
        live.event().await;
    }
    assert_eq!(live.next().await, Some(Entry::CaughtUp(5)));

    // A quick restart: the stream may go on, or end with an error entry; either way, resuming
    // from the last id misses nothing.
    server.restart();
    for n in 0..5 {
        append(&c, &sc, "orders", "r.b", &json!({"type": "t", "id": format!("b-{n}")})).await;
    }
    let (got, _) = read_until(&c, &url, live, 5, "b-4").await;
    assert_eq!(ids(&got), (6..=10).map(|s| (s, format!("b-{}", s - 6))).collect::<Vec<_>>());

    // NATS away for longer than CAUSEWAY_NATS_WAIT: the stream ends with an error entry.
    let mut live = Live::open(&c, &url, true, Some(10)).await;
    assert_eq!(live.next().await, Some(Entry::CaughtUp(10)));
    server.kill();
    let e = live.next().await;
    let Some(Entry::Error(e)) = e else { panic!("expected an error entry, got {e:?}") };
    assert_eq!(e["error"], "unavailable", "{e}");
    assert_eq!(live.next().await, None, "the stream ends after its error entry");
    server.restart();
    for n in 0..5 {
        append(&c, &sc, "orders", "r.c", &json!({"type": "t", "id": format!("c-{n}")})).await;
    }
    let live = Live::open(&c, &url, true, Some(10)).await;
    let (got, _) = read_until(&c, &url, live, 10, "c-4").await;
    assert_eq!(ids(&got), (11..=15).map(|s| (s, format!("c-{}", s - 11))).collect::<Vec<_>>());
    assert_eq!(stored(&c, &sc, "orders", "r.%3E").await.len(), 15);
}

#[tokio::test]
async fn a_store_stream_without_announcements_is_followed_and_gains_them_on_the_next_apply() {
    let server = NatsServer::start();
    apply(&server, SHOP).await;
    // The store stream as an earlier version created it: no republish.
    let js = jetstream::new(server.client().await);
    let mut cfg = stream_info(&server, "CW_ES_shop_orders").await.config;
    assert!(cfg.republish.is_some(), "a new store stream announces what it stores");
    cfg.republish = None;
    js.update_stream(cfg).await.unwrap();
    assert!(stream_info(&server, "CW_ES_shop_orders").await.config.republish.is_none());

    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    for n in 0..5 {
        append(&c, &sc, "orders", "o", &json!({"type": "t", "id": format!("old-{n}"), "payload": n})).await;
    }
    // Without announcements a live stream still follows, by its periodic reads.
    let mut live = Live::open(&c, &sc.at("/v1/stores/orders/events?after=5"), false, None).await;
    assert_eq!(live.next().await, Some(Entry::CaughtUp(5)));
    append(&c, &sc, "orders", "o", &json!({"type": "t", "id": "unannounced", "payload": 5})).await;
    assert_eq!(ids(&[live.event().await]), [(6, "unannounced".to_owned())]);

    let before = stream_info(&server, "CW_ES_shop_orders").await;
    let reconciler =
        causeway_operator::jetstream::Reconciler::new(server.client().await, causeway_api::registry::MANAGER_APPLY);
    let (objects, _) = causeway_operator::manifest::parse_str(SHOP, "<t>");
    let store = objects.iter().find(|o| o.object.display() == "EventStore shop/orders").unwrap();
    let out = reconciler.reconcile(&store.object, causeway_operator::jetstream::Mode::Apply).await.unwrap();
    assert_eq!(out.action, causeway_operator::jetstream::Action::Updated);
    let fields: Vec<&str> = out.changes.iter().map(|c| c.field).collect();
    assert_eq!(fields, ["republish"], "{:?}", out.changes);
    assert!(!out.changes[0].immutable);
    let again = reconciler.reconcile(&store.object, causeway_operator::jetstream::Mode::Apply).await.unwrap();
    assert_eq!(again.action, causeway_operator::jetstream::Action::Unchanged, "{:?}", again.changes);

    let after = stream_info(&server, "CW_ES_shop_orders").await;
    let rp = after.config.republish.clone().expect("the republish was added");
    assert_eq!(
        (rp.source.as_str(), rp.destination.as_str(), rp.headers_only),
        ("cw.shop.es.orders.>", "cw.shop.live.orders.>", true)
    );
    assert_eq!(
        (after.state.messages, after.state.first_sequence, after.state.last_sequence),
        (before.state.messages, before.state.first_sequence, before.state.last_sequence),
        "the events are intact"
    );
    let payloads: Vec<Value> = load(&c, &sc, "orders", "o").await.iter().map(|e| e["payload"].clone()).collect();
    assert_eq!(payloads, (0..6).map(|n| json!(n)).collect::<Vec<_>>());

    // Stored events are announced now: headers only, with their sequence.
    let watcher = server.client().await;
    let mut announcements = watcher.subscribe("cw.shop.live.orders.>").await.unwrap();
    watcher.flush().await.unwrap();
    append(&c, &sc, "orders", "o", &json!({"type": "t", "id": "announced", "payload": 6})).await;
    let a = tokio::time::timeout(Duration::from_secs(5), announcements.next()).await.expect("an announcement").unwrap();
    assert_eq!(a.subject.as_str(), "cw.shop.live.orders.o");
    assert!(a.payload.is_empty(), "headers only");
    assert_eq!(a.headers.as_ref().and_then(|h| h.get("Nats-Sequence")).map(|v| v.as_str()), Some("7"));
    assert_eq!(ids(&[live.event().await]), [(7, "announced".to_owned())]);
    let distinct: BTreeSet<u64> =
        load(&c, &sc, "orders", "o").await.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert_eq!(distinct.len(), 7);
}
