//! `causeway apply` against a real nats-server: names and configs per docs/reference.md, idempotence
//! proven on the wire, immutability, drift, deletion policies, dry-run, invalid manifests
//! (alone and against each other), and lines printed as objects are done.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::DeliverPolicy, stream};
use causeway_api::registry::Record;
use causeway_tests::{NatsServer, TempDir, bin, causeway, examples_dir, write_file};
use futures::StreamExt;

fn apply(server: &NatsServer, paths: &[&str], extra: &[&str]) -> causeway_tests::Run {
    let mut args = vec!["apply", "--nats", &server.url];
    for p in paths {
        args.extend(["-f", p]);
    }
    args.extend(extra);
    causeway(&args)
}

fn examples() -> String {
    examples_dir().display().to_string()
}

async fn stream_info(js: &jetstream::Context, name: &str) -> stream::Info {
    js.get_stream(name).await.unwrap_or_else(|e| panic!("stream {name}: {e}")).info().await.unwrap().clone()
}

const OBJECTS: [&str; 8] = [
    "EventStore shop/orders",
    "EventStore shop/dead-letters",
    "Node shop/orders",
    "Node shop/inventory",
    "Node shop/shipping",
    "Listener shop/reserve-stock",
    "Listener shop/ship-order",
    "Listener shop/order-history",
];

#[tokio::test]
async fn examples_apply_created_then_unchanged_with_design_names_and_configs() {
    let server = NatsServer::start();
    let first = apply(&server, &[&examples()], &[]);
    assert_eq!(first.code, 0, "{first:?}");
    for o in OBJECTS {
        assert!(first.stdout.contains(&format!("{o} created\n")), "{o} not created:\n{}", first.stdout);
    }
    let second = apply(&server, &[&examples()], &[]);
    assert_eq!(second.code, 0, "{second:?}");
    for o in OBJECTS {
        assert!(second.stdout.contains(&format!("{o} unchanged\n")), "{o} not unchanged:\n{}", second.stdout);
    }

    let js = jetstream::new(server.client().await);
    // EventStore shop/orders → stream CW_ES_shop_orders on cw.shop.es.orders.>, and its
    // listeners' replayed dead letters on cw.shop.replay.es.orders.>
    let s = stream_info(&js, "CW_ES_shop_orders").await.config;
    assert_eq!(s.subjects, vec!["cw.shop.es.orders.>", "cw.shop.replay.es.orders.>"]);
    assert_eq!(s.storage, stream::StorageType::File);
    assert_eq!(s.retention, stream::RetentionPolicy::Limits);
    assert_eq!(s.max_age, Duration::from_secs(30 * 86400));
    assert_eq!(s.max_bytes, 1 << 30);
    assert_eq!(s.max_messages, -1);
    assert_eq!(s.duplicate_window, Duration::from_secs(120));
    assert_eq!(s.discard, stream::DiscardPolicy::Old);
    assert!(s.allow_atomic_publish);
    assert!(s.allow_direct);
    assert_eq!(s.num_replicas, 1);
    // … announcing what it stores, headers only, at cw.shop.live.orders.> for live streams.
    let rp = s.republish.expect("store announcements");
    assert_eq!(
        (rp.source.as_str(), rp.destination.as_str(), rp.headers_only),
        ("cw.shop.es.orders.>", "cw.shop.live.orders.>", true)
    );
    // Node shop/inventory → inbox, state bucket; namespace → global bucket.
    let inbox = stream_info(&js, "CW_IN_shop_inventory").await.config;
    assert_eq!(
        inbox.subjects,
        vec!["cw.shop.to.inventory.>", "cw.shop.in.inventory.>", "cw.shop.replay.in.inventory.>"]
    );
    assert!(inbox.republish.is_none(), "only stores announce");
    let state = js.get_key_value("CW_ST_shop_inventory").await.expect("state bucket");
    assert_eq!(state.status().await.unwrap().history(), 1);
    js.get_key_value("CW_GL_shop").await.expect("global bucket");
    js.get_object_store("CW_BLOB_shop").await.expect("blob store for large payloads");
    // Listener → durable consumer cw_shop_<l> with the filter from its types.
    let inbox_stream = js.get_stream("CW_IN_shop_inventory").await.unwrap();
    let c = inbox_stream.consumer_info("cw_shop_reserve-stock").await.unwrap().config.clone();
    assert_eq!(c.durable_name.as_deref(), Some("cw_shop_reserve-stock"));
    let filters: Vec<String> =
        if c.filter_subject.is_empty() { c.filter_subjects.clone() } else { vec![c.filter_subject.clone()] };
    assert_eq!(
        filters,
        vec![
            "cw.shop.to.inventory.*.*.order-placed",
            "cw.shop.in.inventory.order-placed",
            "cw.shop.replay.in.inventory.reserve-stock.>"
        ]
    );
    assert_eq!(c.max_deliver, 5);
    assert_eq!(c.max_ack_pending, 16, "maxInFlight from the node");
    assert_eq!(c.ack_wait, Duration::from_secs(30));
    assert_eq!(c.deliver_policy, DeliverPolicy::New);
    let orders = js.get_stream("CW_ES_shop_orders").await.unwrap();
    let h = orders.consumer_info("cw_shop_order-history").await.unwrap().config.clone();
    assert_eq!(h.deliver_policy, DeliverPolicy::All);
    let shipping = js.get_stream("CW_IN_shop_shipping").await.unwrap();
    let o = shipping.consumer_info("cw_shop_ship-order").await.unwrap().config.clone();
    assert_eq!(o.max_ack_pending, 1, "ordered delivery is one at a time");
    // Registry records under <ns>.<kind>.<name>, with everything a sidecar resolves.
    let reg = js.get_key_value("CW_REGISTRY").await.unwrap();
    let rec = Record::from_bytes(&reg.get("shop.listener.reserve-stock").await.unwrap().unwrap()).unwrap();
    let Record::Listener(l) = rec else { panic!("not a listener record") };
    assert_eq!(l.consumer, "cw_shop_reserve-stock");
    assert_eq!(l.stream, "CW_IN_shop_inventory");
    assert_eq!(l.delivery.backoff.iter().map(|d| d.to_string()).collect::<Vec<_>>(), ["1s", "5s", "30s"]);
    assert_eq!(l.dead_letter.unwrap().nats_subject, "cw.shop.es.dead-letters.reserve-stock");
    let node = Record::from_bytes(&reg.get("shop.node.inventory").await.unwrap().unwrap()).unwrap();
    let Record::Node(n) = node else { panic!() };
    assert_eq!((n.inbox_stream.as_str(), n.state_bucket.as_str()), ("CW_IN_shop_inventory", "CW_ST_shop_inventory"));
    assert_eq!(n.app.port, Some(5001));
    assert!(reg.get("shop.eventstore.orders").await.unwrap().is_some());
}

/// Every JetStream API request and registry write made while re-applying an unchanged set.
#[tokio::test]
async fn steady_state_makes_no_jetstream_writes() {
    let server = NatsServer::start();
    assert_eq!(apply(&server, &[&examples()], &[]).code, 0);
    let spy = server.client().await;
    let mut api = spy.subscribe("$JS.API.>").await.unwrap();
    let mut kv = spy.subscribe("$KV.>").await.unwrap();
    spy.flush().await.unwrap();
    let again = apply(&server, &[&examples()], &[]);
    assert_eq!(again.code, 0, "{again:?}");
    spy.flush().await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), api.next()).await {
        seen.push(m.subject.to_string());
    }
    assert!(seen.len() > 10, "the spy should see the reconciler's reads: {seen:?}");
    let writes: Vec<&String> =
        seen.iter().filter(|s| ["CREATE", "UPDATE", "DELETE", "PURGE"].iter().any(|w| s.contains(w))).collect();
    assert!(writes.is_empty(), "steady state wrote: {writes:?}");
    let kv_writes = tokio::time::timeout(Duration::from_millis(200), kv.next()).await;
    assert!(kv_writes.is_err(), "steady state wrote a KV entry: {kv_writes:?}");
}

const STORE: &str = "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {name: ledger, namespace: bank}\nspec:\n  retention: {maxAge: 7d}\n";

async fn publish_n(js: &jetstream::Context, subject: &str, n: usize) {
    for i in 0..n {
        js.publish(subject.to_string(), format!("e{i}").into()).await.unwrap().await.unwrap();
    }
}

#[tokio::test]
async fn immutable_change_is_refused_and_data_is_intact() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-apply");
    let f = write_file(&dir, "s.yaml", STORE);
    assert_eq!(apply(&server, &[&f], &[]).code, 0);
    let js = jetstream::new(server.client().await);
    publish_n(&js, "cw.bank.es.ledger.acct-1", 5).await;

    let f2 = write_file(&dir, "s2.yaml", &STORE.replace("spec:\n", "spec:\n  storage: memory\n"));
    let r = apply(&server, &[&f2], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("EventStore bank/ledger error: ImmutableFieldChanged"), "{}", r.stdout);
    assert!(r.stdout.contains("storage file -> memory"), "{}", r.stdout);
    assert!(r.stdout.contains("To migrate"), "{}", r.stdout);
    let info = stream_info(&js, "CW_ES_bank_ledger").await;
    assert_eq!(info.config.storage, stream::StorageType::File);
    assert_eq!(info.state.messages, 5);

    let f3 = write_file(&dir, "s3.yaml", &STORE.replace("{maxAge: 7d}", "{maxAge: 7d, kind: workQueue}"));
    let r = apply(&server, &[&f3], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("retention limits -> workqueue (immutable)"), "{}", r.stdout);
    assert_eq!(stream_info(&js, "CW_ES_bank_ledger").await.state.messages, 5);
    // A mutable change still goes through afterwards.
    let f4 = write_file(&dir, "s4.yaml", &STORE.replace("7d", "14d"));
    let r = apply(&server, &[&f4], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("EventStore bank/ledger updated"));
    assert_eq!(stream_info(&js, "CW_ES_bank_ledger").await.config.max_age, Duration::from_secs(14 * 86400));
}

#[tokio::test]
async fn drift_is_restored_by_the_next_apply() {
    let server = NatsServer::start();
    assert_eq!(apply(&server, &[&examples()], &[]).code, 0);
    let js = jetstream::new(server.client().await);
    js.delete_stream("CW_ES_shop_orders").await.unwrap();
    let mut cfg = stream_info(&js, "CW_IN_shop_shipping").await.config;
    cfg.max_age = Duration::from_secs(600);
    js.update_stream(cfg).await.unwrap();
    let inv = js.get_stream("CW_IN_shop_inventory").await.unwrap();
    inv.delete_consumer("cw_shop_reserve-stock").await.unwrap();

    let r = apply(&server, &[&examples()], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("EventStore shop/orders created"), "{}", r.stdout);
    assert!(r.stdout.contains("Node shop/shipping updated"), "{}", r.stdout);
    assert!(r.stdout.contains("Listener shop/reserve-stock created"), "{}", r.stdout);
    assert_eq!(stream_info(&js, "CW_IN_shop_shipping").await.config.max_age, Duration::ZERO);
    assert!(inv.consumer_info("cw_shop_reserve-stock").await.is_ok());
    // The store's listener got its consumer back with the stream.
    let orders = js.get_stream("CW_ES_shop_orders").await.unwrap();
    assert!(orders.consumer_info("cw_shop_order-history").await.is_ok());
    assert!(apply(&server, &[&examples()], &[]).stdout.lines().all(|l| l.ends_with("unchanged")));
}

#[tokio::test]
async fn prune_honours_deletion_policy() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-apply");
    let keep = write_file(&dir, "keep.yaml", STORE);
    let retained = write_file(&dir, "ret.yaml", &STORE.replace("ledger", "audit"));
    let deleted = write_file(
        &dir,
        "del.yaml",
        &STORE.replace("ledger", "scratch").replace("spec:\n", "spec:\n  deletionPolicy: Delete\n"),
    );
    assert_eq!(apply(&server, &[&keep, &retained, &deleted], &[]).code, 0);
    let js = jetstream::new(server.client().await);
    publish_n(&js, "cw.bank.es.audit.x", 3).await;
    publish_n(&js, "cw.bank.es.scratch.x", 3).await;

    // Without --prune nothing goes.
    let r = apply(&server, &[&keep], &[]);
    assert_eq!(r.code, 0);
    assert!(!r.stdout.contains("pruned"));
    // Dry-run prune shows the plan and deletes nothing.
    let r = apply(&server, &[&keep], &["--prune", "--dry-run"]);
    assert!(r.stdout.contains("EventStore bank/scratch pruned (dry run)"), "{}", r.stdout);
    assert!(js.get_stream("CW_ES_bank_scratch").await.is_ok());
    let r = apply(&server, &[&keep], &["--prune"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("EventStore bank/audit pruned (retained by deletionPolicy: stream CW_ES_bank_audit)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("EventStore bank/scratch pruned (deleted: stream CW_ES_bank_scratch"), "{}", r.stdout);
    assert_eq!(stream_info(&js, "CW_ES_bank_audit").await.state.messages, 3, "Retain keeps the data");
    assert!(js.get_stream("CW_ES_bank_scratch").await.is_err(), "Delete removes the stream");
    let reg = js.get_key_value("CW_REGISTRY").await.unwrap();
    assert!(reg.get("bank.eventstore.audit").await.unwrap().is_none());
    assert!(reg.get("bank.eventstore.ledger").await.unwrap().is_some());
    // A second prune has nothing left to do.
    assert!(!apply(&server, &[&keep], &["--prune"]).stdout.contains("pruned"));
}

#[tokio::test]
async fn dry_run_prints_a_field_level_plan_and_changes_nothing() {
    let server = NatsServer::start();
    let r = apply(&server, &[&examples()], &["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("EventStore shop/orders created (dry run)"), "{}", r.stdout);
    let js = jetstream::new(server.client().await);
    let names: Vec<String> = js.stream_names().collect::<Vec<_>>().await.into_iter().map(Result::unwrap).collect();
    assert!(names.is_empty(), "dry-run created {names:?}");

    assert_eq!(apply(&server, &[&examples()], &[]).code, 0);
    let dir = TempDir::new("cw-apply");
    let text =
        std::fs::read_to_string(examples_dir().join("stores.yaml")).unwrap().replace("maxAge: 30d", "maxAge: 60d");
    let f = write_file(&dir, "stores.yaml", &text);
    let r = apply(&server, &[&f], &["--dry-run"]);
    assert!(r.stdout.contains("EventStore shop/orders updated (dry run)"), "{}", r.stdout);
    assert!(r.stdout.contains("stream CW_ES_shop_orders: max_age 30d -> 60d"), "{}", r.stdout);
    assert_eq!(stream_info(&js, "CW_ES_shop_orders").await.config.max_age, Duration::from_secs(30 * 86400));
}

#[tokio::test]
async fn listener_without_source_waits_then_becomes_ready() {
    let server = NatsServer::start();
    let listeners = examples_dir().join("listeners.yaml").display().to_string();
    let r = apply(&server, &[&listeners], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("Listener shop/reserve-stock error: SourceNotFound: node \"inventory\" does not exist"),
        "{}",
        r.stdout
    );
    // The node alone is not enough for a store listener: the store is missing.
    let nodes = examples_dir().join("nodes.yaml").display().to_string();
    let r = apply(&server, &[&nodes, &listeners], &[]);
    assert!(
        r.stdout.contains("Listener shop/order-history error: SourceNotFound: store \"orders\" does not exist"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Listener shop/reserve-stock error: DeadLetterNotFound"), "{}", r.stdout);
    assert!(r.stdout.contains("Listener shop/ship-order created"), "{}", r.stdout);
    let r = apply(&server, &[&examples()], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Listener shop/order-history created"), "{}", r.stdout);
}

#[tokio::test]
async fn invalid_manifests_fail_precisely_and_create_nothing() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-apply");
    let listener = |spec: &str| {
        format!(
            "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {{name: l, namespace: shop}}\nspec:\n  node: inv\n{spec}"
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed", "kind: [Node\n".into(), "document 1: malformed YAML"),
        (
            "unknown-field",
            format!("{STORE}  storag: file\n"),
            "document 1 (EventStore bank/ledger): spec.storag: unknown field",
        ),
        (
            "wrong-kind",
            "apiVersion: causeway.dev/v1alpha1\nkind: Stream\nmetadata: {name: a}\n".into(),
            "document 1: kind: \"Stream\" is not a Causeway kind",
        ),
        ("bad-name", STORE.replace("ledger", "Ledger.1"), "metadata.name: \"Ledger.1\" is not a valid name"),
        (
            "space-subject",
            listener("  source: {store: s}\n  subjects: ['order 1']\n"),
            "spec.subjects[0]: \"order 1\" is not a valid subject pattern",
        ),
        ("gt-middle", listener("  source: {store: s}\n  subjects: ['a.>.b']\n"), "spec.subjects[0]"),
        ("empty-token", listener("  source: {store: s}\n  subjects: ['a..b']\n"), "spec.subjects[0]"),
        (
            "star-type",
            listener("  source: {store: s}\n  types: ['*']\n"),
            "spec.types[0]: \"*\" is not a valid type filter",
        ),
        ("negative-duration", STORE.replace("7d", "-7d"), "spec.retention.maxAge: \"-7d\" is not a duration"),
        (
            "bad-size",
            format!("{STORE}  duplicateWindow: 1m\n").replace("{maxAge: 7d}", "{maxBytes: lots}"),
            "spec.retention.maxBytes: \"lots\" is not a byte size",
        ),
        (
            "two-sources",
            listener("  source: {store: s, inbox: inv}\n"),
            "spec.source: source must name exactly one of store or inbox",
        ),
        (
            "order-by-with-ordered",
            listener("  source: {store: s}\n  delivery: {orderBy: subject, ordered: true}\n"),
            "spec.delivery.orderBy: orderBy and ordered: true exclude each other",
        ),
        (
            "order-by-pull",
            listener("  source: {store: s}\n  delivery: {orderBy: 'token:2', mode: pull}\n"),
            "spec.delivery.orderBy: orderBy needs mode: push",
        ),
        (
            "order-by-token-0",
            listener("  source: {store: s}\n  delivery: {orderBy: 'token:0'}\n"),
            "orderBy must be subject or token:N",
        ),
        (
            "order-by-word",
            listener("  source: {store: s}\n  delivery: {orderBy: type}\n"),
            "orderBy must be subject or token:N",
        ),
    ];
    for (name, text, expect) in &cases {
        let good = write_file(&dir, "good.yaml", &STORE.replace("ledger", "fine"));
        let bad = write_file(&dir, &format!("{name}.yaml"), text);
        let r = apply(&server, &[&good, &bad], &[]);
        assert_eq!(r.code, 2, "{name}: {r:?}");
        assert!(r.stderr.contains(&format!("{bad}: ")), "{name}: error must name the file: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{name}: expected {expect:?} in:\n{}", r.stderr);
        assert!(r.stdout.is_empty(), "{name}: nothing is applied: {}", r.stdout);
    }
    let js = jetstream::new(server.client().await);
    let names: Vec<String> = js.stream_names().collect::<Vec<_>>().await.into_iter().map(Result::unwrap).collect();
    assert!(names.is_empty(), "invalid input created {names:?}");
}

#[tokio::test]
async fn status_figures_come_from_the_server() {
    let server = NatsServer::start();
    assert_eq!(apply(&server, &[&examples()], &[]).code, 0);
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    publish_n(&js, "cw.shop.es.orders.order-1", 4).await;
    let reconciler = causeway_operator::jetstream::Reconciler::new(client, "apply");
    let (objs, errs) = causeway_operator::manifest::load(&[examples_dir()]);
    assert!(errs.is_empty());
    let store = objs.iter().find(|l| l.object.display() == "EventStore shop/orders").unwrap();
    let out = reconciler.reconcile(&store.object, causeway_operator::jetstream::Mode::Apply).await.unwrap();
    assert_eq!((out.figures.events, out.figures.last_sequence), (Some(4), Some(4)));
    assert!(out.figures.bytes.unwrap() > 0);
    let history = objs.iter().find(|l| l.object.display() == "Listener shop/order-history").unwrap();
    let out = reconciler.reconcile(&history.object, causeway_operator::jetstream::Mode::Apply).await.unwrap();
    assert_eq!(out.figures.num_pending, Some(4), "startAt: all sees the 4 events");
    assert_eq!(out.figures.num_ack_pending, Some(0));
    assert_eq!(out.readiness.reason, "Reconciled");
}

#[tokio::test]
async fn replicas_beyond_a_single_server_are_reported_not_crashed() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-apply");
    let f = write_file(&dir, "r3.yaml", &STORE.replace("spec:\n", "spec:\n  replicas: 3\n"));
    let r = apply(&server, &[&f], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("EventStore bank/ledger error: JetStreamRejected"), "{}", r.stdout);
}

#[tokio::test]
async fn r3_store_on_a_three_node_cluster() {
    let cluster = causeway_tests::Cluster::start3();
    let dir = TempDir::new("cw-apply");
    let f = write_file(&dir, "r3.yaml", &STORE.replace("spec:\n", "spec:\n  replicas: 3\n"));
    let url = cluster.urls();
    // Right after start the cluster has no meta leader yet: apply waits for JetStream, and
    // picks 3 replicas for the shared buckets on its own.
    let r = causeway(&["apply", "--nats", &url, "-f", &f]);
    assert_eq!(r.code, 0, "{r:?}");
    let js = jetstream::new(cluster.client().await);
    assert_eq!(stream_info(&js, "CW_ES_bank_ledger").await.config.num_replicas, 3);
    assert_eq!(stream_info(&js, "KV_CW_REGISTRY").await.config.num_replicas, 3);
    assert_eq!(stream_info(&js, "KV_CW_GL_bank").await.config.num_replicas, 3);
}

#[test]
fn unreachable_nats_fails_with_the_url_in_the_message() {
    let port = causeway_tests::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let r = causeway(&["apply", "--nats", &url, "-f", &examples()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&format!("cannot connect to NATS at {url}")), "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

async fn stream_names(js: &jetstream::Context) -> Vec<String> {
    let mut names: Vec<String> = js.stream_names().collect::<Vec<_>>().await.into_iter().map(Result::unwrap).collect();
    names.sort();
    names
}

/// A Node whose listeners inherit `ackWait: {ack_wait}` (push listeners default to a 10s timeout).
fn node(name: &str, ack_wait: &str) -> String {
    format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  delivery: {{ackWait: {ack_wait}}}\n"
    )
}

/// A push Listener of node `inv` on store `orders`, with `delivery` as given.
fn push_listener(name: &str, delivery: &str) -> String {
    format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  node: inv\n  source: {{store: orders}}\n  delivery: {delivery}\n"
    )
}

const ORDERS: &str = "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {name: orders, namespace: shop}\n";

#[tokio::test]
async fn listener_and_node_of_one_batch_are_checked_together_before_anything_is_created() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-apply");
    let store = write_file(&dir, "store.yaml", ORDERS);
    let nodes = write_file(&dir, "node.yaml", &node("inv", "5s"));
    // Each document is valid alone. With the node's ackWait 5s: document 1 is fine (timeout 2s),
    // document 2 keeps the default push timeout 10s, document 3 sets 7s, document 4 is fine
    // (its own ackWait 30s).
    let listeners = write_file(
        &dir,
        "listeners.yaml",
        &[
            push_listener("quick", "{timeout: 2s}"),
            push_listener("slow", "{}"),
            push_listener("late", "{timeout: 7s}"),
            push_listener("own", "{timeout: 20s, ackWait: 30s}"),
        ]
        .join("---\n"),
    );
    let js = jetstream::new(server.client().await);
    for extra in [&[][..], &["--dry-run"][..]] {
        let r = apply(&server, &[&store, &nodes, &listeners], extra);
        assert_eq!(r.code, 2, "{extra:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{extra:?}: nothing is applied: {}", r.stdout);
        assert!(
            r.stderr.contains(&format!(
                "{listeners}: document 2 (Listener shop/slow): spec.delivery.timeout: push timeout 10s must be shorter than ackWait 5s"
            )),
            "{extra:?}: {}",
            r.stderr
        );
        assert!(r.stderr.contains(&format!("(Node shop/inv in {nodes} document 1)")), "{}", r.stderr);
        assert!(
            r.stderr.contains("document 3 (Listener shop/late): spec.delivery.timeout: push timeout 7s must be shorter than ackWait 5s"),
            "{}",
            r.stderr
        );
        for good in ["shop/quick", "shop/own"] {
            assert!(!r.stderr.contains(good), "{good} is no problem: {}", r.stderr);
        }
        assert!(r.stderr.contains("2 invalid manifest problem(s); nothing was applied"), "{}", r.stderr);
        let names = stream_names(&js).await;
        assert!(
            !names.iter().any(|n| n.starts_with("CW_ES_") || n.starts_with("CW_IN_")),
            "{extra:?}: created {names:?}"
        );
        assert!(names.is_empty(), "{extra:?}: not even the registry: {names:?}");
    }
}

#[tokio::test]
async fn listener_is_checked_against_its_node_in_the_registry_before_anything_is_created() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-apply");
    let strict = write_file(&dir, "node.yaml", &node("inv", "5s"));
    let r = apply(&server, &[&strict], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let js = jetstream::new(server.client().await);
    let before = stream_names(&js).await;
    assert!(before.contains(&"CW_IN_shop_inv".to_string()), "{before:?}");

    let store = write_file(&dir, "store.yaml", ORDERS);
    let listener = write_file(&dir, "listener.yaml", &push_listener("slow", "{}"));
    for extra in [&[][..], &["--dry-run"][..]] {
        let r = apply(&server, &[&store, &listener], extra);
        assert_eq!(r.code, 2, "{extra:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{extra:?}: nothing is applied: {}", r.stdout);
        assert!(
            r.stderr.contains(&format!(
                "{listener}: document 1 (Listener shop/slow): spec.delivery.timeout: push timeout 10s must be shorter than ackWait 5s"
            )),
            "{extra:?}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("(Node shop/inv as applied earlier)"), "{}", r.stderr);
        assert_eq!(stream_names(&js).await, before, "{extra:?}: the store must not be created");
    }
    let reg = js.get_key_value("CW_REGISTRY").await.unwrap();
    assert!(reg.get("shop.listener.slow").await.unwrap().is_none());
    assert!(reg.get("shop.eventstore.orders").await.unwrap().is_none());

    // The batch's own Node wins over the registry's: with ackWait 30s the same listener is fine.
    let relaxed = write_file(&dir, "relaxed.yaml", &node("inv", "30s"));
    let r = apply(&server, &[&store, &relaxed, &listener], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Listener shop/slow created"), "{}", r.stdout);
    // And back: tightening the Node in the same batch as the listener is refused, whole.
    let r = apply(&server, &[&store, &strict, &listener], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(&format!("(Node shop/inv in {strict} document 1)")), "{}", r.stderr);
    let inbox = stream_info(&js, "CW_IN_shop_inv").await;
    assert_eq!(inbox.config.name, "CW_IN_shop_inv");
    let rec = Record::from_bytes(&reg.get("shop.node.inv").await.unwrap().unwrap()).unwrap();
    let Record::Node(n) = rec else { panic!("not a node record") };
    assert_eq!(n.spec.delivery.ack_wait.to_string(), "30s", "the refused batch changed nothing");
}

/// A TCP proxy in front of a nats-server that forwards the client's bytes until the first
/// `hold` (a subject), and from then on none: that request and every later one go unanswered,
/// so the client is stuck at a known point, however fast it is.
struct HoldingProxy {
    port: u16,
    held: Arc<AtomicBool>,
}

impl HoldingProxy {
    fn start(upstream: u16, hold: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(AtomicBool::new(false));
        let flag = held.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { break };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else { break };
                let (mut from_server, mut to_client) = (server.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut from_server, &mut to_client));
                let flag = flag.clone();
                std::thread::spawn(move || {
                    let (mut seen, mut buf) = (Vec::new(), vec![0u8; 64 * 1024]);
                    while let Ok(n) = client.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if flag.load(Ordering::SeqCst) {
                            continue; // held: read and drop, so the client never blocks on writing
                        }
                        let start = seen.len();
                        seen.extend_from_slice(&buf[..n]);
                        let Some(at) = seen.windows(hold.len()).position(|w| w == hold.as_bytes()) else {
                            let _ = server.write_all(&buf[..n]);
                            continue;
                        };
                        // Forward up to the line with the subject; the request itself stays here.
                        let line = seen[..at].windows(2).rposition(|w| w == b"\r\n").map_or(0, |i| i + 2);
                        if line > start {
                            let _ = server.write_all(&seen[start..line]);
                        }
                        flag.store(true, Ordering::SeqCst);
                    }
                });
            }
        });
        Self { port, held }
    }
}

/// Kills the process when dropped, so a failed assertion leaves nothing running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn each_line_is_printed_as_soon_as_its_object_is_done() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-apply");
    let docs: Vec<String> = (1..=60)
        .map(|i| {
            format!(
                "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {{name: s{i:02}, namespace: many}}\n"
            )
        })
        .collect();
    let f = write_file(&dir, "many.yaml", &docs.join("---\n"));
    // The apply gets stuck creating the 31st store, with 30 done.
    let proxy = HoldingProxy::start(server.port, "$JS.API.STREAM.CREATE.CW_ES_many_s31");
    let mut child = KillOnDrop(
        Command::new(bin("causeway"))
            .args(["apply", "--nats", &format!("nats://127.0.0.1:{}", proxy.port), "-f", &f])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines.len() < 30 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("only {} line(s) within 10s while the apply is stuck at s31: {lines:?}", lines.len()),
        }
    }
    // Line 30 comes before the request for s31 is sent: wait for the proxy to hold it.
    while !proxy.held.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the proxy never saw the request for s31");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Stuck at s31 (its request is not answered before 5s): still running, and silent about it.
    assert!(matches!(child.0.try_wait(), Ok(None)), "the apply is still running");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "no line for s31 while it is not done");
    // A run killed now has shown exactly what it did.
    drop(child);
    let expected: Vec<String> = (1..=30).map(|i| format!("EventStore many/s{i:02} created")).collect();
    assert_eq!(lines, expected);
    let js = jetstream::new(server.client().await);
    for i in 1..=60 {
        let exists = js.get_stream(format!("CW_ES_many_s{i:02}")).await.is_ok();
        assert_eq!(exists, i <= 30, "stream of s{i:02}: exists={exists}");
    }
}

#[test]
fn the_kubernetes_example_is_valid_and_names_a_node_of_the_examples() {
    let dir = examples_dir().join("kubernetes");
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    let validate = causeway_tests::workspace_root().join(".tools/bin/kubernetes-validate");
    assert!(validate.exists(), "{} is missing: run scripts/setup.sh --test", validate.display());
    let out = std::process::Command::new(validate).args(["--strict", "-k", "1.33.0"]).args(&files).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let deployment: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("inventory.yaml")).unwrap()).unwrap();
    let node = deployment["spec"]["template"]["metadata"]["annotations"]["causeway.dev/node"].as_str().unwrap();
    let m = causeway_operator::manifest::load_all(&[examples_dir()]);
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    assert!(m.objects.iter().any(|o| o.object.display() == format!("Node shop/{node}")), "the annotated Node exists");
    assert_eq!(m.skipped.len(), files.len(), "causeway apply passes over the Kubernetes manifests: {:?}", m.skipped);
}

#[tokio::test]
async fn a_listener_whose_store_was_deleted_is_not_ready_even_though_the_stream_was_kept() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-apply");
    let listener = "---\napiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: teller, namespace: bank}\nspec: {}\n---\napiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {name: audit-trail, namespace: bank}\nspec: {node: teller, source: {store: ledger}, delivery: {mode: pull}}\n";
    let store = write_file(&dir, "store.yaml", STORE);
    let rest = write_file(&dir, "rest.yaml", listener);
    assert_eq!(apply(&server, &[&store, &rest], &[]).code, 0);
    // The store goes (Retain: its stream stays); the listener that reads it is no longer ready.
    let r = apply(&server, &[&rest], &["--prune"]);
    assert!(r.stdout.contains("EventStore bank/ledger pruned (retained by deletionPolicy"), "{}", r.stdout);
    // (The prune runs after the listener's reconcile; the next pass, like the operator's watch on
    // the store, sees it gone.)
    let r = apply(&server, &[&rest], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("Listener bank/audit-trail error: SourceNotFound"), "{}", r.stdout);
    assert!(r.stdout.contains("kept by deletionPolicy Retain"), "{}", r.stdout);
    // Re-created, everything is ready again, on the same stream.
    assert_eq!(apply(&server, &[&store, &rest], &[]).code, 0);
}

/// `causeway apply --issue-credentials DIR --nats-account-key FILE` writes each applied Node its
/// own credential (mode 0600) that NATS accepts with exactly that node's rights, records that
/// nodes have credentials of their own, and leaves unchanged files alone on the next apply.
#[tokio::test]
async fn apply_issues_node_credentials_into_files() {
    let server = NatsServer::start_secure();
    let trust = server.trust().unwrap().clone();
    let dir = TempDir::new("cw-apply-creds");
    let admin = dir.path().join("admin.creds");
    std::fs::write(&admin, trust.admin_creds()).unwrap();
    let out = dir.path().join("creds");
    let key = trust.dir().join("account-signing.nk");
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = vec!["apply".into(), "-f".into(), examples_dir().display().to_string()];
        v.extend(["--nats".into(), server.url.clone(), "--creds".into(), admin.display().to_string()]);
        v.extend(["--issue-credentials".into(), out.display().to_string()]);
        v.extend(["--nats-account-key".into(), key.display().to_string(), "--nats-account".into(), trust.account()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a: Vec<String> = args(&[]);
    let r = causeway(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for node in ["orders", "inventory", "shipping"] {
        let f = out.join("shop").join(format!("{node}.creds"));
        assert!(r.stdout.contains(&format!("credentials shop/{node} -> {}", f.display())), "{}", r.stdout);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let f = out.join("shop/inventory.creds");
    let c = async_nats::ConnectOptions::with_credentials_file(&f)
        .await
        .unwrap()
        .custom_inbox_prefix("_INBOX.shop.inventory")
        .connect(&server.url)
        .await
        .unwrap();
    let js = jetstream::new(c);
    assert!(js.publish("cw.shop.to.shipping.shop.inventory.x", "{}".into()).await.unwrap().await.is_ok());
    let kv =
        tokio::time::timeout(Duration::from_secs(1), js.publish("$KV.CW_ST_shop_orders.k", "x".into()).await.unwrap())
            .await;
    assert!(!matches!(kv, Ok(Ok(_))), "another node's state: {kv:?}");
    // The registry says these nodes have credentials of their own.
    let s = causeway(&["status", "--nats", &server.url, "--creds", &admin.display().to_string(), "-o", "json"]);
    let items: Vec<serde_json::Value> = serde_json::from_str(&s.stdout).unwrap_or_default();
    let nodes: Vec<&serde_json::Value> = items.iter().filter(|i| i["kind"] == "Node").collect();
    assert_eq!(nodes.len(), 3, "{}", s.stdout);
    assert!(nodes.iter().all(|n| n["credentials"] == "node" && n["isolationEnforcedByNats"] == true), "{}", s.stdout);
    // ...and that is not drift: status cannot know who issues credentials, so it keeps the answer.
    assert!(nodes.iter().all(|n| n["ready"] == true && n["reason"] == "Reconciled"), "{}", s.stdout);
    assert_eq!(s.code, 0, "{}{}", s.stdout, s.stderr);

    let before = std::fs::read_to_string(&f).unwrap();
    let r = causeway(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("credentials "), "nothing changed, nothing issued: {}", r.stdout);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), before);

    // Without the key, --issue-credentials is refused before anything happens.
    let r = causeway(&["apply", "-f", "x", "--issue-credentials", "/tmp/x"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[tokio::test]
async fn order_by_turns_a_live_consumer_into_a_pinned_group_and_back_as_an_update() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-apply");
    let write = |delivery: &str| {
        let text = format!("{ORDERS}---\n{}---\n{}", node("inv", "30s"), push_listener("l", delivery));
        write_file(&dir, "m.yaml", &text)
    };
    let r = apply(&server, &[&write("{maxInFlight: 4}")], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let js = jetstream::new(server.client().await);
    let policy = || async {
        let mut c = js
            .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>("cw_shop_l", "CW_ES_shop_orders")
            .await
            .unwrap();
        let cfg = c.info().await.unwrap().config.clone();
        (cfg.priority_policy, cfg.priority_groups, cfg.priority_timeout)
    };
    let r = apply(&server, &[&write("{maxInFlight: 4, orderBy: subject}")], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Listener shop/l updated"), "{}", r.stdout);
    let (p, g, t) = policy().await;
    assert_eq!(p, jetstream::consumer::PriorityPolicy::PinnedClient);
    assert_eq!(g, vec!["cw".to_owned()]);
    assert_eq!(t, Duration::from_secs(45), "ackWait 30s + two pulls of 5s + 5s");
    let r = apply(&server, &[&write("{maxInFlight: 4, orderBy: subject}")], &[]);
    assert!(r.stdout.contains("Listener shop/l unchanged"), "{}", r.stdout);
    let r = apply(&server, &[&write("{maxInFlight: 4}")], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Listener shop/l updated"), "{}", r.stdout);
    assert_eq!(policy().await.0, jetstream::consumer::PriorityPolicy::None);
}
