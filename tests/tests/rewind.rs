//! `spec.rewind` through `causeway apply` against a real nats-server: a rewind to a sequence
//! redelivers exactly the events from it, once per id; by time; the consumer keeps its settings
//! (ack wait, max deliver, filter, max in flight); an old delivery's ack after the rewind does
//! not swallow a redelivery; a dry run moves nothing; bad input is refused before any write.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use causeway_api::{envelope::Envelope, registry::Record};
use causeway_tests::{NatsServer, TempDir, causeway, write_file};
use futures::StreamExt;
use serde_json::json;

const BASE: &str = r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: history, namespace: shop}
spec: {}
"#;

/// A pull listener on the orders store with settings of its own, and `extra` spec lines.
fn listener(name: &str, start_at: &str, extra: &str) -> String {
    format!(
        r#"
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: {name}, namespace: shop}}
spec:
  node: history
  source: {{store: orders}}
  subjects: ["order.>"]
  startAt: {start_at}
  delivery: {{mode: pull, ackWait: 45s, maxDeliver: 7, maxInFlight: 8}}
{extra}"#
    )
}

fn apply(server: &NatsServer, dir: &TempDir, yaml: &str, extra: &[&str]) -> causeway_tests::Run {
    let f = write_file(dir, "m.yaml", yaml);
    let mut args = vec!["apply", "--nats", &server.url, "-f", &f];
    args.extend(extra);
    causeway(&args)
}

async fn publish(js: &jetstream::Context, subject: &str, n: usize, tag: &str) {
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let env = Envelope {
            id: id.clone(),
            event_type: "order-placed".into(),
            payload: json!({"i": i}),
            subject: Some(subject.into()),
            time: "2026-11-25T12:00:00Z".into(),
            sender: "shop/web".into(),
            causation_id: None,
            correlation_id: id,
            path: vec![],
            lamport: 1,
            blob: None,
            dead_letter: None,
            replay_of: None,
            schema_version: None,
            extensions: Default::default(),
        };
        js.publish(format!("cw.shop.es.orders.{subject}"), env.encode().into()).await.unwrap().await.unwrap();
    }
}

async fn consumer(js: &jetstream::Context, name: &str) -> PullConsumer {
    js.get_stream("CW_ES_shop_orders").await.unwrap().get_consumer(name).await.unwrap()
}

/// Everything the consumer delivers within a short wait, as stream sequences; acked unless
/// `ack` is false (then the messages are returned for a later ack).
async fn drain(c: &PullConsumer, ack: bool) -> (Vec<u64>, Vec<jetstream::Message>) {
    let mut seqs = Vec::new();
    let mut held = Vec::new();
    loop {
        let mut batch = c.fetch().max_messages(100).expires(Duration::from_millis(700)).messages().await.unwrap();
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            got += 1;
            seqs.push(m.info().unwrap().stream_sequence);
            if ack {
                m.double_ack().await.unwrap();
            } else {
                held.push(m);
            }
        }
        if got == 0 {
            return (seqs, held);
        }
    }
}

async fn record(js: &jetstream::Context, name: &str) -> causeway_api::registry::ListenerRecord {
    let kv = js.get_key_value("CW_REGISTRY").await.unwrap();
    match Record::from_bytes(&kv.get(format!("shop.listener.{name}")).await.unwrap().unwrap()).unwrap() {
        Record::Listener(l) => l,
        other => panic!("not a listener record: {other:?}"),
    }
}

#[tokio::test]
async fn a_rewind_to_a_sequence_redelivers_exactly_from_it_once_per_id_and_keeps_the_consumer_settings() {
    let server = NatsServer::start();
    let dir = TempDir::new("rewind-seq");
    let js = jetstream::new(server.client().await);
    // `all` is reset in place (nats-server 2.14+); `new` cannot be, so it is recreated: both
    // must behave the same.
    for (name, start_at) in [("history", "all"), ("fresh", "new")] {
        let plain = format!("{BASE}{}", listener(name, start_at, ""));
        let r = apply(&server, &dir, &plain, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        let base = js.get_stream("CW_ES_shop_orders").await.unwrap().info().await.unwrap().state.last_sequence;
        publish(&js, "order.1", 10, name).await;
        // An event the filter does not take, in the middle of what is rewound over.
        publish(&js, "refund.1", 1, &format!("{name}-other")).await;
        let c = consumer(&js, &format!("cw_shop_{name}")).await;
        let (seqs, _) = drain(&c, true).await;
        assert_eq!(seqs, (base + 1..=base + 10).collect::<Vec<_>>(), "{name}: first delivery");
        let before = c.clone().info().await.unwrap().clone();

        // Rewind to the 5th of them.
        let to = base + 5;
        let rw = format!(
            "{BASE}{}",
            listener(name, start_at, &format!("  rewind: {{to: {{sequence: {to}}}, id: fix-1}}\n"))
        );
        let r = apply(&server, &dir, &rw, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        let line = format!("Listener shop/{name} rewound to sequence {to} (rewind \"fix-1\" to sequence {to}");
        assert!(r.stdout.contains(&line), "{name}: no rewind line in:\n{}", r.stdout);
        assert!(r.stdout.contains(&format!("it had delivered up to sequence {}", base + 10)), "{}", r.stdout);
        let c = consumer(&js, &format!("cw_shop_{name}")).await;
        let (seqs, _) = drain(&c, true).await;
        assert_eq!(seqs, (to..=base + 10).collect::<Vec<_>>(), "{name}: exactly the events from the rewind on");

        // The consumer kept every setting.
        let after = c.clone().info().await.unwrap().clone();
        let (a, b) = (&after.config, &before.config);
        assert_eq!(a.ack_wait, Duration::from_secs(45));
        assert_eq!((a.ack_wait, a.max_deliver, a.max_ack_pending), (b.ack_wait, b.max_deliver, b.max_ack_pending));
        assert_eq!((a.max_deliver, a.max_ack_pending), (7, 8));
        // Its filters: the listener's subjects and its own replay subject (dead-letter replays).
        let filters = |c: &jetstream::consumer::Config| {
            let mut f = c.filter_subjects.clone();
            f.extend((!c.filter_subject.is_empty()).then(|| c.filter_subject.clone()));
            f
        };
        assert!(filters(a).contains(&"cw.shop.es.orders.order.>".to_owned()), "{:?}", filters(a));
        assert_eq!((filters(a), a.ack_policy), (filters(b), b.ack_policy));
        assert_eq!(a.description, b.description);
        assert!(a.metadata.get("causeway.dev/rewind").is_some_and(|m| m.contains("fix-1")), "{:?}", a.metadata);

        // The registry records the rewind.
        let rec = record(&js, name).await;
        let done = rec.rewound.expect("the record keeps the rewind");
        assert_eq!((done.id.as_str(), done.sequence, done.from_sequence), ("fix-1", to, Some(base + 10)));

        // The same id again: nothing moves, nothing is written, nothing is redelivered.
        let r = apply(&server, &dir, &rw, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains(&format!("Listener shop/{name} unchanged\n")), "{}", r.stdout);
        assert!(!r.stdout.contains("rewound"), "{}", r.stdout);
        let (seqs, _) = drain(&c, true).await;
        assert!(seqs.is_empty(), "{name}: a second apply with the same id redelivered {seqs:?}");
        // Taking the field out again changes nothing either (the start position is the rewind's,
        // not drift to correct, and not an immutable change).
        let r = apply(&server, &dir, &plain, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains(&format!("Listener shop/{name} updated\n"))
                || r.stdout.contains(&format!("Listener shop/{name} unchanged\n")),
            "{}",
            r.stdout
        );
        assert!(!r.stdout.contains("ImmutableFieldChanged"), "{}", r.stdout);
        assert!(record(&js, name).await.rewound.is_some_and(|d| d.id == "fix-1"), "the last rewind stays recorded");
        let r = apply(&server, &dir, &plain, &[]);
        assert!(r.stdout.contains(&format!("Listener shop/{name} unchanged\n")), "steady state: {}", r.stdout);
        let (seqs, _) = drain(&c, true).await;
        assert!(seqs.is_empty(), "{seqs:?}");

        // A new id rewinds again.
        let rw2 = format!(
            "{BASE}{}",
            listener(name, start_at, &format!("  rewind: {{to: {{sequence: {}}}, id: fix-2}}\n", base + 9))
        );
        let r = apply(&server, &dir, &rw2, &[]);
        assert!(r.stdout.contains(&format!("Listener shop/{name} rewound to sequence {}", base + 9)), "{}", r.stdout);
        let (seqs, _) = drain(&c, true).await;
        assert_eq!(seqs, vec![base + 9, base + 10]);
    }
}

#[tokio::test]
async fn a_rewind_by_time_redelivers_what_was_stored_from_then_on() {
    let server = NatsServer::start();
    let dir = TempDir::new("rewind-time");
    let js = jetstream::new(server.client().await);
    let plain = format!("{BASE}{}", listener("history", "all", ""));
    assert_eq!(apply(&server, &dir, &plain, &[]).code, 0);
    publish(&js, "order.1", 3, "old").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&js, "order.2", 3, "new").await;
    let c = consumer(&js, "cw_shop_history").await;
    assert_eq!(drain(&c, true).await.0, vec![1, 2, 3, 4, 5, 6]);

    let rw = format!("{BASE}{}", listener("history", "all", &format!("  rewind: {{to: {{time: \"{t}\"}}, id: t1}}\n")));
    let r = apply(&server, &dir, &rw, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Listener shop/history rewound to sequence 4"), "{}", r.stdout);
    assert_eq!(drain(&c, true).await.0, vec![4, 5, 6], "only what was stored from then on");

    // A time after everything stored: nothing is redelivered, new events still are.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let rw =
        format!("{BASE}{}", listener("history", "all", &format!("  rewind: {{to: {{time: \"{later}\"}}, id: t2}}\n")));
    let r = apply(&server, &dir, &rw, &[]);
    assert!(r.stdout.contains("Listener shop/history rewound to sequence 7"), "{}", r.stdout);
    assert!(drain(&c, true).await.0.is_empty());
    publish(&js, "order.3", 1, "newest").await;
    assert_eq!(drain(&c, true).await.0, vec![7]);
}

#[tokio::test]
async fn an_ack_of_a_delivery_from_before_the_rewind_does_not_swallow_the_redelivery() {
    let server = NatsServer::start();
    let dir = TempDir::new("rewind-acks");
    let js = jetstream::new(server.client().await);
    for start_at in ["all", "new"] {
        let plain = format!("{BASE}{}", listener("history", start_at, ""));
        assert_eq!(apply(&server, &dir, &plain, &[]).code, 0);
        let base = js.get_stream("CW_ES_shop_orders").await.unwrap().info().await.unwrap().state.last_sequence;
        publish(&js, "order.1", 4, start_at).await;
        let c = consumer(&js, "cw_shop_history").await;
        // Delivered, not yet acked: an app is still working on them when the rewind comes.
        let (seqs, held) = drain(&c, false).await;
        assert_eq!(seqs.len(), 4);
        let rw = format!(
            "{BASE}{}",
            listener(
                "history",
                start_at,
                &format!("  rewind: {{to: {{sequence: {}}}, id: acks-{start_at}}}\n", base + 1)
            )
        );
        let r = apply(&server, &dir, &rw, &[]);
        assert!(r.stdout.contains("rewound"), "{r:?}");
        // The old deliveries are acked late (and one is naked, one termed).
        for (i, m) in held.into_iter().enumerate() {
            match i {
                0 => m.ack_with(AckKind::Nak(None)).await.unwrap(),
                1 => m.ack_with(AckKind::Term).await.unwrap(),
                _ => m.ack().await.unwrap(),
            }
        }
        let _ = js.get_stream("CW_ES_shop_orders").await.unwrap().info().await;
        let c = consumer(&js, "cw_shop_history").await;
        let (seqs, _) = drain(&c, true).await;
        assert_eq!(
            seqs,
            (base + 1..=base + 4).collect::<Vec<_>>(),
            "{start_at}: every event comes again after the rewind"
        );
        // Clean up for the next round.
        assert_eq!(
            causeway(&["apply", "--nats", &server.url, "--prune", "-f", &write_file(&dir, "m.yaml", BASE)]).code,
            0
        );
    }
}

#[tokio::test]
async fn a_dry_run_shows_the_rewind_and_moves_nothing() {
    let server = NatsServer::start();
    let dir = TempDir::new("rewind-dry");
    let js = jetstream::new(server.client().await);
    assert_eq!(apply(&server, &dir, &format!("{BASE}{}", listener("history", "all", "")), &[]).code, 0);
    publish(&js, "order.1", 3, "a").await;
    let c = consumer(&js, "cw_shop_history").await;
    assert_eq!(drain(&c, true).await.0, vec![1, 2, 3]);
    let rw = format!("{BASE}{}", listener("history", "all", "  rewind: {to: {sequence: 1}, id: d1}\n"));
    let r = apply(&server, &dir, &rw, &["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Listener shop/history would be rewound to sequence 1"), "{}", r.stdout);
    assert!(
        r.stdout.contains("consumer cw_shop_history: position delivered up to sequence 3 -> sequence 1"),
        "{}",
        r.stdout
    );
    assert!(drain(&c, true).await.0.is_empty(), "a dry run moved the consumer");
    assert!(record(&js, "history").await.rewound.is_none());
    // The real apply then does it.
    let r = apply(&server, &dir, &rw, &[]);
    assert!(r.stdout.contains("rewound to sequence 1"), "{}", r.stdout);
    assert_eq!(drain(&c, true).await.0, vec![1, 2, 3]);
}

#[tokio::test]
async fn bad_rewinds_are_refused_before_anything_is_written() {
    let server = NatsServer::start();
    let dir = TempDir::new("rewind-bad");
    let js = jetstream::new(server.client().await);
    assert_eq!(apply(&server, &dir, &format!("{BASE}{}", listener("history", "all", "")), &[]).code, 0);
    publish(&js, "order.1", 2, "a").await;
    let c = consumer(&js, "cw_shop_history").await;
    assert_eq!(drain(&c, true).await.0, vec![1, 2]);
    for (rewind, says) in [
        ("{to: {sequence: 0}, id: r}", "spec.rewind.to"),
        ("{to: {time: yesterday}, id: r}", "is not an RFC 3339 time"),
        ("{to: {sequence: 1}, id: \"\"}", "spec.rewind.id"),
        ("{to: {sequence: 1}, id: \"  \"}", "rewind.id must be a non-empty token"),
        ("{to: {}, id: r}", "exactly one of sequence or time"),
        ("{to: {sequence: 1, time: \"2026-01-01T00:00:00Z\"}, id: r}", "exactly one of sequence or time"),
        ("{to: {sequence: 1}}", "id"),
        ("{to: {seq: 1}, id: r}", "seq"),
    ] {
        let yaml = format!("{BASE}{}", listener("history", "all", &format!("  rewind: {rewind}\n")));
        let r = apply(&server, &dir, &yaml, &[]);
        assert_eq!(r.code, 2, "{rewind}: {r:?}");
        assert!(r.stderr.contains(says), "{rewind}: expected {says:?} in:\n{}", r.stderr);
        assert!(r.stderr.contains("nothing was applied"), "{}", r.stderr);
    }
    assert!(drain(&c, true).await.0.is_empty(), "a refused rewind moved the consumer");
    assert!(record(&js, "history").await.rewound.is_none());
}
