//! A sidecar's NATS credential renewed under load (docs/security.md): the sidecar reconnects
//! with each new credential file and loses nothing; an expired credential makes it answer 503
//! until a new one arrives, never a permanent error.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use causeway_api::{DnsLabel, grants::node_grants, registry::Record};
use causeway_operator::jetstream::Reconciler;
use causeway_tests::{NatsServer, TempDir, eventually};
use serde_json::json;
use support::*;

/// The grants of `shop/web` as the operator would compute them.
async fn web_grants(server: &NatsServer) -> causeway_api::grants::Grants {
    let records = Reconciler::new(server.client().await, "apply").list_records().await.unwrap();
    let listeners: Vec<_> =
        records.iter().filter_map(|r| if let Record::Listener(l) = r { Some(l.clone()) } else { None }).collect();
    let stores = |ns: &DnsLabel| -> Vec<DnsLabel> {
        records
            .iter()
            .filter_map(|r| match r {
                Record::EventStore(s) if s.meta.namespace == *ns => Some(s.meta.name.clone()),
                _ => None,
            })
            .collect()
    };
    let web = records
        .iter()
        .find_map(|r| match r {
            Record::Node(n) if n.meta.name.as_str() == "web" => Some(n.clone()),
            _ => None,
        })
        .expect("node web");
    node_grants(&web, &listeners, &stores)
}

fn write(path: &std::path::Path, text: &str) {
    causeway_operator::local::write_private(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_the_credential_under_load_loses_nothing() {
    let server = NatsServer::start_secure();
    apply(&server, SHOP).await;
    let grants = web_grants(&server).await;
    let dir = TempDir::new("cw-rotate");
    let file = dir.path().join("web.creds");
    write(&file, &server.issue("shop/web", &grants, Duration::from_secs(600)).creds);
    let sc = Sidecar::start(
        &server,
        "shop",
        "web",
        &[("CAUSEWAY_NATS_CREDS", &file.display().to_string()), ("CAUSEWAY_NATS_CREDS_RELOAD", "50ms")],
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let n = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (stop, sent, failures, n, url, append) = (
            stop.clone(),
            sent.clone(),
            failures.clone(),
            n.clone(),
            sc.at("/v1/nodes/inventory/events"),
            sc.at(&format!("/v1/stores/orders/subjects/w{w}/events")),
        );
        workers.push(tokio::spawn(async move {
            let c = http();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("w{w}-{i}");
                let target = if i % 2 == 0 { &url } else { &append };
                let (s, a) = post(&c, target, &json!({"type": "tick", "id": id})).await;
                if s == 202 {
                    sent.lock().unwrap().insert((i % 2, id));
                } else {
                    failures.lock().unwrap().push(format!("{id}: {s} {a}"));
                }
                n.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    // Ten renewals, each a new user, while the load runs.
    let mut users = BTreeSet::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = server.issue("shop/web", &grants, Duration::from_secs(600));
        users.insert(c.user.clone());
        write(&file, &c.creds);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "every request was answered 202 through the renewals: {failures:?}");
    let sent = sent.lock().unwrap().clone();
    assert!(n.load(Ordering::SeqCst) > 100, "the load ran: {}", n.load(Ordering::SeqCst));
    let logs = sc.logs();
    let reconnects = logs.matches("the NATS credential changed; reconnecting with it").count();
    assert!(reconnects >= 5, "the sidecar followed the renewals ({reconnects} reconnects):\n{logs}");

    // Everything acknowledged is stored exactly once.
    let js = async_nats::jetstream::new(server.client().await);
    let inbox = js.get_stream("CW_IN_shop_inventory").await.unwrap().info().await.unwrap().state.messages;
    let store = js.get_stream("CW_ES_shop_orders").await.unwrap().info().await.unwrap().state.messages;
    let (sends, appends) = sent.iter().partition::<Vec<_>, _>(|(k, _)| *k == 0);
    assert_eq!(inbox as usize, sends.len(), "sends stored once each");
    assert_eq!(store as usize, appends.len(), "appends stored once each");
    let c = http();
    let loaded = load(&c, &sc, "orders", ">").await;
    let ids: BTreeSet<String> = loaded.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let want: BTreeSet<String> = appends.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, want);
}

/// A credential that expires without renewal: NATS closes the connection, the sidecar answers
/// 503 with Retry-After (temporary), and serves again as soon as a new credential is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_credential_is_temporary_until_a_new_one_arrives() {
    let server = NatsServer::start_secure();
    apply(&server, SHOP).await;
    let grants = web_grants(&server).await;
    let dir = TempDir::new("cw-expire");
    let file = dir.path().join("web.creds");
    write(&file, &server.issue("shop/web", &grants, Duration::from_secs(3)).creds);
    let sc = Sidecar::start(
        &server,
        "shop",
        "web",
        &[
            ("CAUSEWAY_NATS_CREDS", &file.display().to_string()),
            ("CAUSEWAY_NATS_CREDS_RELOAD", "50ms"),
            ("CAUSEWAY_NATS_WAIT", "500ms"),
        ],
    )
    .await;
    let c = http();
    let url = sc.at("/v1/nodes/inventory/events");
    assert_eq!(post(&c, &url, &json!({"type": "t"})).await.0, 202);
    let refused = eventually(Duration::from_secs(15), "the expired credential is cut off", || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.post(&url).json(&json!({"type": "t"})).send().await.ok()?;
            (r.status() == 503).then(|| r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()))
        }
    })
    .await;
    assert!(refused.is_some(), "503 carries Retry-After");
    write(&file, &server.issue("shop/web", &grants, Duration::from_secs(600)).creds);
    eventually(Duration::from_secs(15), "a new credential brings it back", || {
        let (c, url) = (c.clone(), url.clone());
        async move { (post(&c, &url, &json!({"type": "t"})).await.0 == 202).then_some(()) }
    })
    .await;
}
