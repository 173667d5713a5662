//! `delivery.orderBy`: order per key, keys in parallel, across two real sidecar replicas of one
//! node: strict per-key order and a speed-up over `ordered: true` on the same workload, a
//! replica killed mid-run, and a retried event that blocks only its key.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    consumer::{PriorityPolicy, pull},
};
use causeway_tests::{NatsServer, eventually};
use serde_json::{Value, json};
use support::*;

const KEYS: u64 = 20;
const PER_KEY: u64 = 20;

/// A store `accounts`, a writer node, and one node per listener, each listener reading every
/// stored event with the delivery given.
fn manifests(listeners: &[(&str, &str)], ack_wait: &str) -> String {
    let mut m = String::from(
        r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: accounts, namespace: bank}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: writer, namespace: bank}
spec: {}
"#,
    );
    for (name, delivery) in listeners {
        m.push_str(&format!(
            r#"---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: {name}, namespace: bank}}
spec:
  delivery: {{ackWait: {ack_wait}, backoff: [300ms], maxInFlight: 16}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: {name}, namespace: bank}}
spec:
  node: {name}
  source: {{store: accounts}}
  subjects: ['acct.>']
  startAt: all
  delivery: {{mode: push, path: /events, timeout: 1s, {delivery}}}
"#
        ));
    }
    m
}

/// What the apps saw, shared by every replica's app: arrivals per key (in order), keys being
/// handled right now, and any key seen twice at once.
#[derive(Default)]
struct Seen {
    per_key: HashMap<String, Vec<u64>>,
    active: HashSet<String>,
    overlaps: Vec<String>,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Arrival time of each (key, n) the first time.
    at: HashMap<(String, u64), Instant>,
}

type Shared = Arc<Mutex<Seen>>;
type Handler = Arc<dyn Fn(&Received) -> (u16, Value) + Send + Sync>;

/// An app handler that takes `work` per event and records it; `fail` says which (key, n, try)
/// answer 503.
fn recorder(seen: Shared, work: Duration, fail: impl Fn(&str, u64, usize) -> bool + Send + Sync + 'static) -> Handler {
    Arc::new(move |r: &Received| {
        let key = r.body["payload"]["key"].as_str().unwrap_or_default().to_owned();
        let n = r.body["payload"]["n"].as_u64().unwrap_or(u64::MAX);
        let tries = {
            let mut s = seen.lock().unwrap();
            let now = Instant::now();
            s.first.get_or_insert(now);
            if !s.active.insert(key.clone()) {
                s.overlaps.push(format!("{key}#{n}"));
            }
            s.at.entry((key.clone(), n)).or_insert(now);
            let v = s.per_key.entry(key.clone()).or_default();
            v.push(n);
            v.iter().filter(|x| **x == n).count()
        };
        std::thread::sleep(work);
        let mut s = seen.lock().unwrap();
        s.active.remove(&key);
        s.last = Some(Instant::now());
        if fail(&key, n, tries) { (503, json!("later")) } else { (200, json!({})) }
    })
}

async fn append_all(sc: &Sidecar) {
    let c = http();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            let body = json!({"type": "moved", "payload": {"key": format!("k{k}"), "n": n}});
            let (s, a) = post(&c, &sc.at(&format!("/v1/stores/accounts/subjects/acct.k{k}.moves/events")), &body).await;
            assert_eq!(s, 202, "{a}");
        }
    }
}

async fn settled(server: &NatsServer, consumer: &str, within: Duration) {
    let js = jetstream::new(server.client().await);
    eventually(within, &format!("{consumer} has nothing pending"), || {
        let js = js.clone();
        async move {
            let mut c =
                js.get_consumer_from_stream::<pull::Config, _, _>(consumer, "CW_ES_bank_accounts").await.ok()?;
            let i = c.info().await.ok()?;
            (i.num_pending == 0 && i.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

/// Every key got all its events, never went back, and never ran twice at once. Repeats (an
/// event redelivered after a replica died) are allowed only in place.
fn assert_per_key_order(seen: &Seen) {
    assert!(seen.overlaps.is_empty(), "events of one key ran at once: {:?}", seen.overlaps);
    assert_eq!(seen.per_key.len() as u64, KEYS, "every key delivered");
    for (k, v) in &seen.per_key {
        assert!(v.windows(2).all(|w| w[0] <= w[1]), "key {k} out of order: {v:?}");
        let unique: HashSet<u64> = v.iter().copied().collect();
        assert_eq!(unique, (0..PER_KEY).collect(), "key {k} complete: {v:?}");
    }
}

fn elapsed(seen: &Seen) -> Duration {
    seen.last.unwrap() - seen.first.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn per_key_order_across_two_replicas_and_faster_than_ordered() {
    let server = NatsServer::start();
    apply(&server, &manifests(&[("serial", "ordered: true"), ("keyed", "orderBy: 'token:2'")], "5s")).await;

    // The consumer is a pinned-client priority group, maxInFlight acks pending.
    let js = jetstream::new(server.client().await);
    let mut c =
        js.get_consumer_from_stream::<pull::Config, _, _>("cw_bank_keyed", "CW_ES_bank_accounts").await.unwrap();
    let cfg = c.info().await.unwrap().config.clone();
    assert_eq!(cfg.priority_policy, PriorityPolicy::PinnedClient);
    assert_eq!(cfg.priority_groups, vec!["cw".to_owned()]);
    assert_eq!(cfg.priority_timeout, Duration::from_secs(20), "ackWait 5s + two pulls of 5s + 5s");
    assert_eq!(cfg.max_ack_pending, 16);

    let writer = Sidecar::start(&server, "bank", "writer", &[]).await;
    append_all(&writer).await;
    let work = Duration::from_millis(10);

    // ordered: true, on the same events.
    let serial: Shared = Default::default();
    let app = App::start_on(0, recorder(serial.clone(), work, |_, _, _| false)).await;
    let port = app.port.to_string();
    let sc = Sidecar::start(&server, "bank", "serial", &[("CAUSEWAY_APP_PORT", &port)]).await;
    settled(&server, "cw_bank_serial", Duration::from_secs(60)).await;
    drop(sc);
    let t_serial = {
        let serial = serial.lock().unwrap();
        assert_per_key_order(&serial);
        elapsed(&serial)
    };

    // orderBy: two replicas, each with its own app, recording into one place.
    let keyed: Shared = Default::default();
    let (a, b) = (
        App::start_on(0, recorder(keyed.clone(), work, |_, _, _| false)).await,
        App::start_on(0, recorder(keyed.clone(), work, |_, _, _| false)).await,
    );
    let _s1 = Sidecar::start(&server, "bank", "keyed", &[("CAUSEWAY_APP_PORT", &a.port.to_string())]).await;
    let _s2 = Sidecar::start(&server, "bank", "keyed", &[("CAUSEWAY_APP_PORT", &b.port.to_string())]).await;
    settled(&server, "cw_bank_keyed", Duration::from_secs(60)).await;
    let keyed = keyed.lock().unwrap();
    assert_per_key_order(&keyed);
    let total: usize = keyed.per_key.values().map(Vec::len).sum();
    assert_eq!(total as u64, KEYS * PER_KEY, "each event once");
    // Only the pinned replica works.
    assert!(a.count() == 0 || b.count() == 0, "one replica at a time: {} and {}", a.count(), b.count());

    let t_keyed = elapsed(&keyed);
    let speedup = t_serial.as_secs_f64() / t_keyed.as_secs_f64();
    eprintln!("ordered: {t_serial:?}, orderBy: {t_keyed:?}, speed-up {speedup:.1}x");
    assert!(speedup >= 1.5, "orderBy must beat ordered: true: {t_serial:?} vs {t_keyed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_killed_replica_hands_its_keys_over_in_order() {
    let server = NatsServer::start();
    apply(&server, &manifests(&[("keyed", "orderBy: 'token:2'")], "2s")).await;
    let writer = Sidecar::start(&server, "bank", "writer", &[]).await;
    append_all(&writer).await;

    let seen: Shared = Default::default();
    let work = Duration::from_millis(30);
    let (a, b) = (
        App::start_on(0, recorder(seen.clone(), work, |_, _, _| false)).await,
        App::start_on(0, recorder(seen.clone(), work, |_, _, _| false)).await,
    );
    let mut s1 = Sidecar::start(&server, "bank", "keyed", &[("CAUSEWAY_APP_PORT", &a.port.to_string())]).await;
    let mut s2 = Sidecar::start(&server, "bank", "keyed", &[("CAUSEWAY_APP_PORT", &b.port.to_string())]).await;
    // Kill whichever replica is working, mid-run.
    let first = eventually(Duration::from_secs(30), "a replica is working", || async {
        if a.count() >= 50 {
            Some(1)
        } else if b.count() >= 50 {
            Some(2)
        } else {
            None
        }
    })
    .await;
    let killed_at = Instant::now();
    let (before, survivor) = if first == 1 {
        s1.kill();
        (a.count(), &b)
    } else {
        s2.kill();
        (b.count(), &a)
    };
    assert!(before < (KEYS * PER_KEY) as usize, "killed mid-run");
    settled(&server, "cw_bank_keyed", Duration::from_secs(90)).await;
    let took_over = survivor.count();
    assert!(took_over > 0, "the other replica took over");
    let seen = seen.lock().unwrap();
    assert_per_key_order(&seen);
    eprintln!(
        "killed after {before} deliveries; the survivor handled {took_over}; done {:?} after the kill",
        seen.last.unwrap() - killed_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_retried_event_blocks_only_its_key() {
    let server = NatsServer::start();
    apply(&server, &manifests(&[("keyed", "orderBy: subject")], "5s")).await;
    let writer = Sidecar::start(&server, "bank", "writer", &[]).await;
    append_all(&writer).await;
    let seen: Shared = Default::default();
    // k0's first event fails three times (300ms backoff each), then succeeds.
    let app = App::start_on(
        0,
        recorder(seen.clone(), Duration::from_millis(5), |k, n, tries| k == "k0" && n == 0 && tries <= 3),
    )
    .await;
    let _s = Sidecar::start(&server, "bank", "keyed", &[("CAUSEWAY_APP_PORT", &app.port.to_string())]).await;
    settled(&server, "cw_bank_keyed", Duration::from_secs(60)).await;
    let seen = seen.lock().unwrap();
    assert!(seen.overlaps.is_empty(), "{:?}", seen.overlaps);
    let k0 = &seen.per_key["k0"];
    let mut want = vec![0, 0, 0];
    want.extend(0..PER_KEY);
    assert_eq!(k0, &want, "k0 retried in place, its later events waited");
    for (k, v) in &seen.per_key {
        if k != "k0" {
            assert_eq!(v, &(0..PER_KEY).collect::<Vec<_>>(), "key {k}");
        }
    }
    // Other keys moved on while k0 was blocked: many of them were done before k0's second event.
    let k0_next = seen.at[&("k0".to_owned(), 1)];
    let done_before = seen.at.iter().filter(|((k, _), t)| k != "k0" && **t < k0_next).count();
    assert!(done_before >= 100, "only {done_before} events of other keys ran while k0 was blocked");
}

/// Turning `orderBy` off on a listener whose sidecar runs hands its events to the plain worker at
/// once. The server honours a pin it holds even after the consumer's priority policy is gone, and
/// then the group cannot be unpinned any more: without the reconcile's unpin before the update,
/// nothing was delivered until the pin timed out (ackWait 30s + 15s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn turning_order_by_off_on_a_running_listener_delivers_at_once() {
    let server = NatsServer::start();
    apply(&server, &manifests(&[("keyed", "orderBy: 'token:2'")], "30s")).await;
    let writer = Sidecar::start(&server, "bank", "writer", &[]).await;
    let app = App::start(|_| (200, json!({}))).await;
    let _sc = Sidecar::start(&server, "bank", "keyed", &[("CAUSEWAY_APP_PORT", &app.port.to_string())]).await;
    let c = http();
    let append = |n: u64| {
        let (c, url) = (c.clone(), writer.at("/v1/stores/accounts/subjects/acct.k1.moves/events"));
        async move {
            let (s, a) = post(&c, &url, &json!({"type": "moved", "payload": {"key": "k1", "n": n}})).await;
            assert_eq!(s, 202, "{a}");
        }
    };
    append(0).await;
    eventually(Duration::from_secs(15), "the first event, under the pin", || async {
        (app.count() == 1).then_some(())
    })
    .await;

    apply(&server, &manifests(&[("keyed", "ordered: true")], "30s")).await;
    let js = jetstream::new(server.client().await);
    let mut consumer =
        js.get_consumer_from_stream::<pull::Config, _, _>("cw_bank_keyed", "CW_ES_bank_accounts").await.unwrap();
    assert_eq!(consumer.info().await.unwrap().config.priority_policy, PriorityPolicy::None);
    let t = Instant::now();
    append(1).await;
    eventually(Duration::from_secs(40), "the next event, without the pin", || async {
        (app.count() == 2).then_some(())
    })
    .await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "delivered {took:?} after the switch: the old pin held it back");
}
