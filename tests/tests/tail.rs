//! `causeway tail` against a real nats-server with the real binary: the last N events of a
//! store with their causal fields, JSON lines, filters by subject and type, an inbox, a whole
//! namespace followed live, nothing durable left behind, and bad input refused.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use async_nats::jetstream;
use causeway_api::envelope::Envelope;
use causeway_tests::{NatsServer, TempDir, bin, causeway, eventually, write_file};
use serde_json::{Value, json};

const MANIFESTS: &str = r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: inventory, namespace: shop}
spec: {}
"#;

fn envelope(id: &str, event_type: &str, subject: Option<&str>, lamport: u64) -> Envelope {
    Envelope {
        id: id.into(),
        event_type: event_type.into(),
        payload: json!({"id": id}),
        subject: subject.map(Into::into),
        time: "2026-11-25T12:00:00Z".into(),
        sender: "shop/web".into(),
        causation_id: Some(format!("cause-of-{id}")),
        correlation_id: "corr-1".into(),
        path: vec![],
        lamport,
        blob: None,
        dead_letter: None,
        replay_of: None,
        schema_version: None,
        extensions: Default::default(),
    }
}

async fn append(js: &jetstream::Context, subject: &str, id: &str, event_type: &str, lamport: u64) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Cw-Type", event_type);
    let env = envelope(id, event_type, Some(subject), lamport);
    js.publish_with_headers(format!("cw.shop.es.orders.{subject}"), headers, env.encode().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn send(js: &jetstream::Context, id: &str, event_type: &str) {
    let env = envelope(id, event_type, None, 1);
    js.publish(format!("cw.shop.to.inventory.shop.web.{event_type}"), env.encode().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn setup(server: &NatsServer, dir: &TempDir) {
    let f = write_file(dir, "m.yaml", MANIFESTS);
    let r = causeway(&["apply", "--nats", &server.url, "-f", &f]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[tokio::test]
async fn tail_shows_the_last_events_with_their_causal_fields_and_filters() {
    let server = NatsServer::start();
    let dir = TempDir::new("tail-last");
    setup(&server, &dir);
    let js = jetstream::new(server.client().await);
    for i in 1..=6 {
        let (subject, t) = if i % 2 == 0 { ("order.1", "order-placed") } else { ("refund.1", "order-refunded") };
        append(&js, subject, &format!("e{i}"), t, 10 + i).await;
    }
    let tail = |extra: &[&str]| {
        let mut args = vec!["tail", "store/orders", "--namespace", "shop", "--nats", &server.url, "--no-follow"];
        args.extend(extra);
        causeway(&args)
    };

    // The last 3, in order, as JSON lines with every causal field.
    let r = tail(&["-n", "3", "-o", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let got = lines(&r.stdout);
    assert_eq!(got.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(), ["e4", "e5", "e6"]);
    let e6 = &got[2];
    assert_eq!(e6["type"], "order-placed");
    assert_eq!(e6["sender"], "shop/web");
    assert_eq!(e6["causationId"], "cause-of-e6");
    assert_eq!(e6["correlationId"], "corr-1");
    assert_eq!(e6["lamport"], 16);
    assert_eq!(e6["stream"], "CW_ES_shop_orders");
    assert_eq!(e6["sequence"], 6);
    assert_eq!(e6["subject"], "order.1");
    assert_eq!(e6["payload"], json!({"id": "e6"}));

    // Text: one line per event with the same fields.
    let r = tail(&["-n", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = r.stdout.trim();
    for part in [
        "CW_ES_shop_orders#6",
        "order-placed",
        "id=e6",
        "sender=shop/web",
        "causationId=cause-of-e6",
        "correlationId=corr-1",
        "lamport=16",
        "subject=order.1",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line:?}");
    }
    assert_eq!(r.stdout.lines().count(), 1);

    // By type: the last 2 refunds, though newer events of other types exist.
    let r = tail(&["--type", "order-refunded", "-n", "2", "-o", "json"]);
    let ids: Vec<String> = lines(&r.stdout).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["e3", "e5"]);
    // By subject, everything.
    let r = tail(&["--subject", "order.*", "-n", "all", "-o", "json"]);
    let ids: Vec<String> = lines(&r.stdout).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["e2", "e4", "e6"]);
    // --since: everything stored in the last hour; nothing stored in the future.
    assert_eq!(lines(&tail(&["--since", "1h", "-o", "json"]).stdout).len(), 6);
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert!(tail(&["--since", &later]).stdout.is_empty());

    // Nothing durable is left: the ordered consumers go away by themselves.
    let stream = js.get_stream("CW_ES_shop_orders").await.unwrap();
    eventually(Duration::from_secs(20), "tail's consumers to go away", || {
        let mut s = stream.clone();
        async move { (s.info().await.unwrap().state.consumer_count == 0).then_some(()) }
    })
    .await;
    let names: Vec<String> = {
        use futures::TryStreamExt;
        stream.consumer_names().try_collect().await.unwrap()
    };
    assert!(names.is_empty(), "{names:?}");
}

#[tokio::test]
async fn tail_follows_a_whole_namespace_live_and_an_inbox() {
    let server = NatsServer::start();
    let dir = TempDir::new("tail-follow");
    setup(&server, &dir);
    let js = jetstream::new(server.client().await);
    append(&js, "order.1", "old", "order-placed", 1).await;
    send(&js, "old-send", "reserve").await;

    // The inbox alone.
    let r = causeway(&[
        "tail",
        "node/inventory",
        "--namespace",
        "shop",
        "--nats",
        &server.url,
        "--no-follow",
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let got = lines(&r.stdout);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0]["id"].as_str(), got[0]["stream"].as_str()), (Some("old-send"), Some("CW_IN_shop_inventory")));

    // The whole namespace, live, from now on.
    let mut child = Command::new(bin("causeway"))
        .args(["tail", "--namespace", "shop", "--nats", &server.url, "-n", "0", "-f", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Give it a moment to start reading, then write to both places.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    append(&js, "order.2", "live-1", "order-placed", 2).await;
    send(&js, "live-2", "reserve").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let l = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("only {seen:?} arrived"));
        let v: Value = serde_json::from_str(&l).unwrap();
        seen.push((v["id"].as_str().unwrap().to_owned(), v["stream"].as_str().unwrap().to_owned()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("live-1".to_owned(), "CW_ES_shop_orders".to_owned()),
            ("live-2".to_owned(), "CW_IN_shop_inventory".to_owned())
        ],
        "-n 0 shows nothing old, and both new events"
    );
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "nothing else");
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn tail_refuses_bad_input_and_unknown_targets() {
    let server = NatsServer::start();
    let dir = TempDir::new("tail-bad");
    setup(&server, &dir);
    for (args, code, says) in [
        (vec!["tail", "orders"], 2, "say store/NAME or node/NAME"),
        (vec!["tail", "queue/orders"], 2, "the kind must be store or node"),
        (vec!["tail", "store/Orders"], 2, "store/Orders"),
        (vec!["tail", "--since", "yesterday"], 2, "--since"),
        (vec!["tail", "--type", "a b"], 2, "--type"),
        (vec!["tail", "--subject", "a..b"], 2, "--subject"),
        (vec!["tail", "-n", "lots"], 2, "lots"),
        (vec!["tail", "store/missing", "--namespace", "shop"], 1, "EventStore shop/missing has no stream"),
        (vec!["tail", "--namespace", "empty"], 1, "namespace empty has no EventStore or Node"),
    ] {
        let mut a = args.clone();
        a.extend(["--nats", &server.url, "--no-follow"]);
        let r = causeway(&a);
        assert_eq!(r.code, code, "{args:?}: {r:?}");
        assert!(r.stderr.contains(says), "{args:?}: expected {says:?} in {}", r.stderr);
    }
    let r = causeway(&["tail", "--help"]);
    assert!(r.stdout.contains("--since") && r.stdout.contains("Examples:"), "{}", r.stdout);
}
