//! Node isolation enforced by NATS itself (docs/security.md, "What a Node's credential
//! allows"): a real nats-server in JWT mode, manifests applied with `causeway apply`'s driver,
//! each node's credential issued from `node_grants` over the records read back from the
//! registry, and plain NATS clients holding those credentials doing what a stolen sidecar
//! credential would try. Every refusal is checked twice: NATS reports the permission violation,
//! and the admin sees that nothing changed.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    Client, ConnectOptions,
    jetstream::{self, consumer::pull, stream},
};
use bytes::Bytes;
use causeway_api::{
    DnsLabel, Kind,
    grants::{Grants, node_grants},
    naming,
    registry::{ListenerRecord, NodeRecord, Record},
};
use causeway_operator::{identity::Credential, local::apply_yaml};
use causeway_tests::{NatsServer, eventually};
use futures::StreamExt;
use serde_json::{Value, json};

/// How long a refused request waits for the answer that never comes.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);

const MANIFESTS: &str = r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: audit, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: secret, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: dead, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: ledger, namespace: billing}
spec: {}
---
# a may send to every node of shop, append to orders, and read orders and audit; not secret,
# not dead (except through its listener's dead letter), nothing of billing.
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: a, namespace: shop}
spec:
  access:
    append: [orders]
    read: [audit]
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: b, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: x, namespace: billing}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: a-orders, namespace: shop}
spec:
  node: a
  source: {store: orders}
  startAt: all
  delivery: {mode: pull}
  deadLetter: {store: dead, subject: a-orders.failed}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: b-inbox, namespace: shop}
spec:
  node: b
  source: {inbox: b}
  startAt: all
  delivery: {mode: pull}
"#;

fn l(s: &str) -> DnsLabel {
    DnsLabel::new(s).expect("label")
}

/// Every record in the registry, as the operator or `causeway apply` wrote it.
async fn registry(admin: &Client) -> Vec<Record> {
    let js = jetstream::new(admin.clone());
    let kv = js.get_key_value(naming::REGISTRY_BUCKET).await.expect("registry bucket");
    let mut keys = kv.keys().await.expect("registry keys");
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.expect("key");
        if let Some(v) = kv.get(&k).await.expect("registry entry") {
            out.push(Record::from_bytes(&v).expect("a record"));
        }
    }
    out
}

/// The grants of node `ns/n`, from the records read back from the registry.
fn grants_from(records: &[Record], ns: &str, n: &str) -> Grants {
    let node: &NodeRecord = records
        .iter()
        .find_map(|r| match r {
            Record::Node(x) if x.meta.namespace.as_str() == ns && x.meta.name.as_str() == n => Some(x),
            _ => None,
        })
        .expect("the node's record");
    let listeners: Vec<ListenerRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Listener(x) => Some(x.clone()),
            _ => None,
        })
        .collect();
    let stores_of = |sns: &DnsLabel| {
        records
            .iter()
            .filter(|r| r.kind() == Kind::EventStore && r.meta().namespace == *sns)
            .map(|r| r.meta().name.clone())
            .collect()
    };
    node_grants(node, &listeners, &stores_of)
}

/// A plain NATS client holding a node's credential, as a sidecar (or a thief) would connect,
/// recording every event the connection reports (permission violations among them).
struct NodeClient {
    ns: String,
    n: String,
    client: Client,
    js: jetstream::Context,
    events: Arc<Mutex<Vec<String>>>,
}

async fn connect_as(server: &NatsServer, cred: &Credential, ns: &str, n: &str) -> NodeClient {
    try_connect_as(server, cred, ns, n).await.expect("a node connects with its own credential")
}

async fn try_connect_as(
    server: &NatsServer,
    cred: &Credential,
    ns: &str,
    n: &str,
) -> Result<NodeClient, async_nats::ConnectError> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let client = ConnectOptions::with_credentials(&cred.creds)
        .expect("creds parse")
        .custom_inbox_prefix(naming::reply_inbox_prefix(&l(ns), &l(n)))
        .request_timeout(Some(REFUSED_WITHIN))
        .max_reconnects(Some(3))
        .reconnect_delay_callback(|_| Duration::from_millis(200))
        .event_callback(move |e| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(e.to_string()) }
        })
        .connect(&server.url)
        .await?;
    let js = jetstream::ContextBuilder::new().timeout(REFUSED_WITHIN).build(client.clone());
    Ok(NodeClient { ns: ns.to_owned(), n: n.to_owned(), client, js, events })
}

impl NodeClient {
    /// Waits for the server's `Permissions Violation for <what> to "<subject>"` on this
    /// connection.
    async fn violation(&self, what: &str, subject: &str) {
        let want = format!("Permissions Violation for {what} to \"{subject}\"");
        let events = self.events.clone();
        eventually(Duration::from_secs(5), &format!("NATS to report {want}"), || {
            let found = events.lock().unwrap().iter().any(|e| e.contains(&want));
            async move { found.then_some(()) }
        })
        .await;
    }

    /// A request the server answers, so everything this connection sent before (a SUB) has
    /// been processed when it returns.
    async fn round_trip(&self) {
        let state = naming::kv_stream(&naming::state_bucket(&l(&self.ns), &l(&self.n)));
        self.client.request(naming::js_stream_info(&state), "".into()).await.expect("a round trip");
    }

    /// Every event so far that reports a permission violation.
    fn violations(&self) -> Vec<String> {
        self.events.lock().unwrap().iter().filter(|e| e.contains("Permissions Violation")).cloned().collect()
    }

    /// A core request that NATS must refuse: no answer, and a publish violation.
    async fn refused_request(&self, subject: &str, body: Value) {
        let r = self.client.request(subject.to_owned(), body.to_string().into()).await;
        assert!(r.is_err(), "{subject} was answered: {:?}", r.map(|m| m.payload));
        self.violation("Publish", subject).await;
    }

    /// A JetStream publish that NATS must refuse: no ack, and a publish violation.
    async fn refused_publish(&self, subject: &str) {
        let r = match self.js.publish(subject.to_owned(), Bytes::from_static(b"forged")).await {
            Ok(ack) => ack.await.map(|a| a.stream).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        assert!(r.is_err(), "{subject} was stored in {r:?}");
        self.violation("Publish", subject).await;
    }

    /// A subscription that NATS must refuse: a subscription violation, and nothing delivered
    /// when the admin publishes `probe` (a subject it covers).
    async fn refused_subscription(&self, admin: &Client, pattern: &str, probe: &str) {
        let mut sub = self.client.subscribe(pattern.to_owned()).await.expect("subscribe is sent");
        self.violation("Subscription", pattern).await;
        admin.publish(probe.to_owned(), "secret".into()).await.unwrap();
        admin.flush().await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
        assert!(!matches!(got, Ok(Some(_))), "{pattern} delivered {probe}: {got:?}");
    }

    /// A JetStream publish that must be stored in `stream`.
    async fn stored(&self, subject: &str, payload: &'static [u8], stream: &str) -> u64 {
        let ack = self.js.publish(subject.to_owned(), Bytes::from_static(payload)).await.expect("publish").await;
        let ack = ack.unwrap_or_else(|e| panic!("{subject} not stored: {e}; events {:?}", self.events.lock().unwrap()));
        assert_eq!(ack.stream, stream, "{subject}");
        ack.sequence
    }
}

/// A direct get by request body (as the sidecar reads): the payload, or `None` for 404.
async fn direct_get(client: &Client, stream: &str, body: Value) -> Option<Bytes> {
    let m = client.request(naming::js_direct_get(stream), body.to_string().into()).await.expect("direct get answered");
    match m.status.map(|s| s.as_u16()) {
        None | Some(200) => Some(m.payload),
        Some(404) => None,
        other => panic!("direct get on {stream}: {other:?} {:?}", m.description),
    }
}

async fn last_value(client: &Client, stream: &str, subject: &str) -> Option<Bytes> {
    direct_get(client, stream, json!({ "last_by_subj": subject })).await
}

async fn stream_info(admin: &Client, name: &str) -> stream::Info {
    let js = jetstream::new(admin.clone());
    js.get_stream(name).await.unwrap_or_else(|e| panic!("{name}: {e}")).info().await.expect("info").clone()
}

async fn stream_names(admin: &Client) -> Vec<String> {
    let js = jetstream::new(admin.clone());
    let mut names: Vec<String> = js.stream_names().map(|n| n.expect("name")).collect().await;
    names.sort();
    names
}

async fn consumer_info(admin: &Client, stream: &str, consumer: &str) -> async_nats::jetstream::consumer::Info {
    let js = jetstream::new(admin.clone());
    let mut c: jetstream::consumer::PullConsumer =
        js.get_consumer_from_stream(consumer, stream).await.unwrap_or_else(|e| panic!("{consumer}: {e}"));
    c.info().await.expect("consumer info").clone()
}

/// A secure server with the manifests applied, its admin client, and the records read back.
struct World {
    server: NatsServer,
    admin: Client,
    records: Vec<Record>,
}

impl World {
    async fn new() -> Self {
        let server = NatsServer::start_secure();
        let admin = server.client().await;
        apply_yaml(&admin, MANIFESTS).await.expect("manifests apply");
        let records = registry(&admin).await;
        Self { server, admin, records }
    }

    fn grants(&self, ns: &str, n: &str) -> Grants {
        grants_from(&self.records, ns, n)
    }

    async fn node(&self, ns: &str, n: &str) -> NodeClient {
        let cred = self.server.issue(&format!("{ns}/{n}"), &self.grants(ns, n), Duration::from_secs(600));
        connect_as(&self.server, &cred, ns, n).await
    }

    /// The admin stores `payload` at `subject` and returns the stream sequence.
    async fn admin_store(&self, subject: &str, payload: &'static [u8]) -> u64 {
        let js = jetstream::new(self.admin.clone());
        js.publish(subject.to_owned(), Bytes::from_static(payload)).await.unwrap().await.expect("admin stores").sequence
    }
}

#[tokio::test]
async fn other_nodes_state_and_other_namespaces_kv_are_out_of_reach() {
    let w = World::new().await;
    let a = w.node("shop", "a").await;
    let b_state = naming::state_bucket(&l("shop"), &l("b"));
    let billing_global = naming::global_bucket(&l("billing"));
    let b_key = naming::join_subject(&naming::kv_subject_prefix(&b_state), "k");
    let billing_key = naming::join_subject(&naming::kv_subject_prefix(&billing_global), "k");
    w.admin_store(&b_key, b"b's own").await;
    w.admin_store(&billing_key, b"billing's own").await;
    let before_b = stream_info(&w.admin, &naming::kv_stream(&b_state)).await.state.last_sequence;
    let before_billing = stream_info(&w.admin, &naming::kv_stream(&billing_global)).await.state.last_sequence;

    assert_eq!(b_key, "$KV.CW_ST_shop_b.k");
    a.refused_publish(&b_key).await;
    a.refused_publish(&billing_key).await;
    // Nor can a read them.
    a.refused_request(&naming::js_direct_get(&naming::kv_stream(&b_state)), json!({"last_by_subj": b_key})).await;
    a.refused_request(
        &naming::js_direct_get(&naming::kv_stream(&billing_global)),
        json!({"last_by_subj": billing_key}),
    )
    .await;
    a.refused_request(&naming::js_stream_info(&naming::kv_stream(&billing_global)), json!({})).await;
    // Nor another namespace's blobs.
    a.refused_publish("$O.CW_BLOB_billing.C.x").await;

    // Nothing changed.
    assert_eq!(last_value(&w.admin, &naming::kv_stream(&b_state), &b_key).await.as_deref(), Some(&b"b's own"[..]));
    assert_eq!(
        last_value(&w.admin, &naming::kv_stream(&billing_global), &billing_key).await.as_deref(),
        Some(&b"billing's own"[..])
    );
    assert_eq!(stream_info(&w.admin, &naming::kv_stream(&b_state)).await.state.last_sequence, before_b);
    assert_eq!(stream_info(&w.admin, &naming::kv_stream(&billing_global)).await.state.last_sequence, before_billing);
}

#[tokio::test]
async fn stores_outside_the_policy_cannot_be_read_or_written() {
    let w = World::new().await;
    let a = w.node("shop", "a").await;
    let secret = naming::store_stream(&l("shop"), &l("secret"));
    let ledger = naming::store_stream(&l("billing"), &l("ledger"));
    w.admin_store("cw.shop.es.secret.s1", b"shop secret").await;
    w.admin_store("cw.billing.es.ledger.l1", b"billing ledger").await;
    w.admin_store("cw.shop.es.audit.a1", b"audit entry").await;

    for stream in [&secret, &ledger] {
        a.refused_request(&naming::js_direct_get(stream), json!({"seq": 1})).await;
        a.refused_request(&naming::js_stream_info(stream), json!({})).await;
        a.refused_request(&naming::js_stream_msg_get(stream), json!({"seq": 1})).await;
    }
    // Live announcements of those stores are refused too.
    a.refused_subscription(&w.admin, "cw.shop.live.secret.>", "cw.shop.live.secret.s1").await;
    a.refused_subscription(&w.admin, "cw.billing.live.ledger.>", "cw.billing.live.ledger.l1").await;
    // audit is readable only: appending is refused; the dead-letter store takes only the
    // listener's own dead-letter subject.
    a.refused_publish("cw.shop.es.audit.forged").await;
    a.refused_publish("cw.shop.es.secret.forged").await;
    a.refused_publish("cw.billing.es.ledger.forged").await;
    a.refused_publish("cw.shop.es.dead.other-listener").await;

    // The data is there (the admin reads it), and nothing was added.
    assert_eq!(direct_get(&w.admin, &secret, json!({"seq": 1})).await.as_deref(), Some(&b"shop secret"[..]));
    assert_eq!(direct_get(&w.admin, &ledger, json!({"seq": 1})).await.as_deref(), Some(&b"billing ledger"[..]));
    for (stream, n) in [(&secret, 1), (&ledger, 1), (&naming::store_stream(&l("shop"), &l("audit")), 1)] {
        assert_eq!(stream_info(&w.admin, stream).await.state.messages, n, "{stream}");
    }
    assert_eq!(stream_info(&w.admin, &naming::store_stream(&l("shop"), &l("dead"))).await.state.messages, 0);
}

#[tokio::test]
async fn streams_and_consumers_cannot_be_created_or_deleted() {
    let w = World::new().await;
    let a = w.node("shop", "a").await;
    let orders = naming::store_stream(&l("shop"), &l("orders"));
    let b_inbox = naming::inbox_stream(&l("shop"), &l("b"));
    let b_consumer = naming::listener_consumer(&l("shop"), &l("b-inbox"));
    let streams_before = stream_names(&w.admin).await;
    let consumers_before = stream_info(&w.admin, &orders).await.state.consumer_count;

    let r = a
        .js
        .create_stream(stream::Config { name: "EVIL".into(), subjects: vec!["evil.>".into()], ..Default::default() })
        .await;
    assert!(r.is_err(), "created a stream");
    a.violation("Publish", "$JS.API.STREAM.CREATE.EVIL").await;

    let r = a.js.delete_stream(&orders).await;
    assert!(r.is_err(), "deleted a stream");
    a.violation("Publish", &format!("$JS.API.STREAM.DELETE.{orders}")).await;

    let r =
        a.js.create_consumer_on_stream(
            pull::Config { durable_name: Some("evil".into()), ..Default::default() },
            orders.as_str(),
        )
        .await;
    assert!(r.is_err(), "created a consumer");
    a.violation("Publish", &format!("$JS.API.CONSUMER.CREATE.{orders}.evil")).await;

    let r = a.js.delete_consumer_from_stream(&b_consumer, &b_inbox).await;
    assert!(r.is_err(), "deleted b's consumer");
    a.violation("Publish", &format!("$JS.API.CONSUMER.DELETE.{b_inbox}.{b_consumer}")).await;

    // Nothing changed.
    assert_eq!(stream_names(&w.admin).await, streams_before);
    assert_eq!(stream_info(&w.admin, &orders).await.state.consumer_count, consumers_before);
    consumer_info(&w.admin, &b_inbox, &b_consumer).await;
}

#[tokio::test]
async fn another_nodes_listener_cannot_be_fetched_from_or_acked() {
    let w = World::new().await;
    let a = w.node("shop", "a").await;
    let b_inbox = naming::inbox_stream(&l("shop"), &l("b"));
    let b_consumer = naming::listener_consumer(&l("shop"), &l("b-inbox"));
    w.admin_store("cw.shop.to.b.shop.b.hello", b"for b").await;

    // Fetch: a's pull request on b's consumer is refused, and the event still waits for b.
    let r = a.js.get_consumer_from_stream::<pull::Config, _, _>(&b_consumer, &b_inbox).await;
    assert!(r.is_err(), "a read b's consumer");
    a.violation("Publish", &naming::js_consumer_info(&b_inbox, &b_consumer)).await;
    let inbox = a.client.new_inbox();
    let mut replies = a.client.subscribe(inbox.clone()).await.unwrap();
    let next = naming::js_consumer_next(&b_inbox, &b_consumer);
    a.client
        .publish_with_reply(next.clone(), inbox, json!({"batch": 1, "expires": 500_000_000}).to_string().into())
        .await
        .unwrap();
    a.violation("Publish", &next).await;
    assert!(tokio::time::timeout(Duration::from_millis(800), replies.next()).await.is_err(), "a got an event of b");
    let info = consumer_info(&w.admin, &b_inbox, &b_consumer).await;
    assert_eq!((info.num_pending, info.delivered.consumer_sequence), (1, 0), "still waiting for b: {info:?}");

    // Ack: the admin takes the event as b's sidecar would and leaves it unacked; a's ack on it
    // is refused, so it stays pending (and would be redelivered to b).
    let js = jetstream::new(w.admin.clone());
    let c: jetstream::consumer::PullConsumer = js.get_consumer_from_stream(&b_consumer, &b_inbox).await.unwrap();
    let mut batch = c.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await.unwrap();
    let m = batch.next().await.expect("an event").expect("ok");
    let ack_subject = m.reply.clone().expect("a reply subject").to_string();
    assert!(ack_subject.starts_with(&naming::js_ack_prefix(&b_inbox, &b_consumer)), "{ack_subject}");
    a.client.publish(ack_subject.clone(), "+ACK".into()).await.unwrap();
    a.client.publish(ack_subject.clone(), "+TERM".into()).await.unwrap();
    a.violation("Publish", &ack_subject).await;
    a.client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = consumer_info(&w.admin, &b_inbox, &b_consumer).await;
    assert_eq!((info.num_ack_pending, info.ack_floor.consumer_sequence), (1, 0), "still unacked: {info:?}");
}

#[tokio::test]
async fn no_node_can_send_as_another_or_on_the_older_inbox_subjects() {
    let w = World::new().await;
    let a = w.node("shop", "a").await;
    let b_inbox = naming::inbox_stream(&l("shop"), &l("b"));
    let a_inbox = naming::inbox_stream(&l("shop"), &l("a"));

    // As b, into b's own inbox; as b into a's; as a node of billing.
    a.refused_publish("cw.shop.to.b.shop.b.x").await;
    a.refused_publish("cw.shop.to.a.shop.b.x").await;
    a.refused_publish("cw.shop.to.b.billing.x.x").await;
    // The older layout proves no sender: refused for every inbox, a's own included.
    a.refused_publish(&naming::join_subject(&naming::inbox_subject_prefix(&l("shop"), &l("b")), "x")).await;
    a.refused_publish(&naming::join_subject(&naming::inbox_subject_prefix(&l("shop"), &l("a")), "x")).await;
    // Another namespace's nodes are not in a's policy.
    a.refused_publish("cw.billing.to.x.shop.a.x").await;

    assert_eq!(stream_info(&w.admin, &b_inbox).await.state.messages, 0);
    assert_eq!(stream_info(&w.admin, &a_inbox).await.state.messages, 0);
    assert_eq!(stream_info(&w.admin, &naming::inbox_stream(&l("billing"), &l("x"))).await.state.messages, 0);
}

#[tokio::test]
async fn no_node_can_listen_to_another_nodes_replies() {
    let w = World::new().await;
    let a = w.node("shop", "a").await;
    a.refused_subscription(&w.admin, "_INBOX.>", "_INBOX.shop.b.reply1").await;
    a.refused_subscription(
        &w.admin,
        &naming::join_subject(&naming::reply_inbox_prefix(&l("shop"), &l("b")), ">"),
        "_INBOX.shop.b.reply2",
    )
    .await;
    a.refused_subscription(&w.admin, ">", "cw.anything").await;
    a.refused_subscription(&w.admin, "cw._registry.billing.>", "cw._registry.billing.node.x").await;

    // b, connected with its own credential (from a .creds file, as a sidecar reads it), does
    // get its replies.
    let path = w.server.write_creds("shop/b", &w.grants("shop", "b"));
    let b_client = ConnectOptions::new()
        .credentials_file(&path)
        .await
        .expect("a .creds file")
        .custom_inbox_prefix(naming::reply_inbox_prefix(&l("shop"), &l("b")))
        .connect(&w.server.url)
        .await
        .expect("b connects");
    let b = NodeClient {
        ns: "shop".into(),
        n: "b".into(),
        js: jetstream::new(b_client.clone()),
        client: b_client,
        events: Arc::default(),
    };
    let mut sub = b.client.subscribe("_INBOX.shop.b.mine.>").await.unwrap();
    b.round_trip().await;
    w.admin.publish("_INBOX.shop.b.mine.reply3", "yours".into()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(2), sub.next()).await.expect("b gets its reply").unwrap();
    assert_eq!(&m.payload[..], b"yours");
}

#[tokio::test]
async fn a_node_credential_does_what_the_sidecar_does() {
    let w = World::new().await;
    let a = w.node("shop", "a").await;
    let (shop, node_a) = (l("shop"), l("a"));

    // Send to b's inbox under a's own sender tokens: stored, acknowledged.
    let to_b = naming::join_subject(&naming::inbox_send_prefix(&shop, &l("b"), "shop", "a"), "x");
    assert_eq!(to_b, "cw.shop.to.b.shop.a.x");
    a.stored(&to_b, b"hello b", &naming::inbox_stream(&shop, &l("b"))).await;

    // Its state bucket and the namespace's global KV: raw $KV writes, body-form direct gets,
    // and opening the bucket (stream info), as a KV client does.
    for bucket in [naming::state_bucket(&shop, &node_a), naming::global_bucket(&shop)] {
        let key = naming::join_subject(&naming::kv_subject_prefix(&bucket), "greeting");
        a.stored(&key, b"hi", &naming::kv_stream(&bucket)).await;
        assert_eq!(last_value(&a.client, &naming::kv_stream(&bucket), &key).await.as_deref(), Some(&b"hi"[..]));
        a.js.get_key_value(&bucket).await.unwrap_or_else(|e| panic!("open {bucket}: {e}"));
    }

    // Blobs: a chunk and its metadata, read back, then purged as the sidecar deletes its own.
    let blobs = naming::blob_bucket(&shop);
    let blob_stream = naming::object_stream(&blobs);
    let chunk = naming::join_subject(&naming::object_subject_prefix(&blobs), "C.nuid1");
    let meta = naming::join_subject(&naming::object_subject_prefix(&blobs), "M.bmFtZQ==");
    a.stored(&chunk, b"chunk bytes", &blob_stream).await;
    a.stored(&meta, b"{\"nuid\":\"nuid1\"}", &blob_stream).await;
    assert_eq!(last_value(&a.client, &blob_stream, &chunk).await.as_deref(), Some(&b"chunk bytes"[..]));
    let purged =
        a.client.request(naming::js_stream_purge(&blob_stream), json!({"filter": chunk}).to_string().into()).await;
    let purged: Value = serde_json::from_slice(&purged.expect("purge answered").payload).unwrap();
    assert_eq!((purged["success"].as_bool(), purged["purged"].as_u64()), (Some(true), Some(1)), "{purged}");
    assert_eq!(last_value(&w.admin, &blob_stream, &chunk).await, None, "the admin sees it gone");

    // Append to an allowed store and read it back (direct get, the leader's message get, info).
    let orders = naming::store_stream(&shop, &l("orders"));
    let seq = a.stored("cw.shop.es.orders.o1", b"order one", &orders).await;
    assert_eq!(direct_get(&a.client, &orders, json!({"seq": seq})).await.as_deref(), Some(&b"order one"[..]));
    let msg = a
        .client
        .request(naming::js_stream_msg_get(&orders), json!({"last_by_subj": "cw.shop.es.orders.>"}).to_string().into());
    let msg: Value = serde_json::from_slice(&msg.await.expect("msg get answered").payload).unwrap();
    assert_eq!(msg["message"]["seq"].as_u64(), Some(seq), "{msg}");
    a.js.get_stream(&orders).await.expect("stream info of a readable store");
    // A store it may only read.
    let audit = naming::store_stream(&shop, &l("audit"));
    w.admin_store("cw.shop.es.audit.a1", b"audited").await;
    assert_eq!(direct_get(&a.client, &audit, json!({"seq": 1})).await.as_deref(), Some(&b"audited"[..]));

    // Live announcements of a readable store.
    let mut live = a.client.subscribe("cw.shop.live.orders.>").await.unwrap();
    a.round_trip().await;
    w.admin.publish("cw.shop.live.orders.o1", Bytes::new()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), live.next()).await.expect("announcement").unwrap();
    assert_eq!(m.subject.as_str(), "cw.shop.live.orders.o1");

    // The registry: its own namespace's change feed, and direct gets of any record.
    let mut changes = a.client.subscribe(naming::registry_changes_filter(&shop)).await.unwrap();
    a.round_trip().await;
    apply_yaml(
        &w.admin,
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: c, namespace: shop}\nspec: {}\n",
    )
    .await
    .expect("apply c");
    let m = tokio::time::timeout(Duration::from_secs(5), changes.next()).await.expect("a registry change").unwrap();
    assert_eq!(m.subject.as_str(), "cw._registry.shop.node.c");
    let key = naming::registry_kv_subject(&naming::registry_key(&shop, Kind::Node, &node_a));
    let rec = last_value(&a.client, &naming::kv_stream(naming::REGISTRY_BUCKET), &key).await.expect("a's record");
    assert!(matches!(Record::from_bytes(&rec).unwrap(), Record::Node(n) if n.meta.name == node_a));

    // Its own listener: consumer info, fetch, ack (confirmed by the server), and its dead letter.
    let consumer = naming::listener_consumer(&shop, &l("a-orders"));
    let c: jetstream::consumer::PullConsumer =
        a.js.get_consumer_from_stream(&consumer, &orders).await.expect("own consumer info");
    let mut batch = c.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await.expect("fetch");
    let m = batch.next().await.expect("an event").expect("ok");
    assert_eq!(&m.payload[..], b"order one");
    m.double_ack().await.expect("ack confirmed");
    let info = consumer_info(&w.admin, &orders, &consumer).await;
    assert_eq!((info.ack_floor.consumer_sequence, info.num_ack_pending), (1, 0), "{info:?}");
    a.stored("cw.shop.es.dead.a-orders.failed", b"dead letter", &naming::store_stream(&shop, &l("dead"))).await;

    assert!(a.violations().is_empty(), "{:?}", a.violations());
}

#[tokio::test]
async fn an_expired_credential_is_cut_off_and_refused() {
    let w = World::new().await;
    let cred = w.server.issue("shop/a", &w.grants("shop", "a"), Duration::from_secs(3));
    let a = connect_as(&w.server, &cred, "shop", "a").await;
    let key = naming::join_subject(&naming::kv_subject_prefix(&naming::state_bucket(&l("shop"), &l("a"))), "k");
    a.stored(&key, b"before expiry", "KV_CW_ST_shop_a").await;

    // Observed with nats-server 2.15.1: at the JWT's `exp` the server sends
    // `-ERR 'User Authentication Expired'` and closes the connection (async-nats reports
    // "server error: nats: User Authentication Expired"). `exp` has whole-second precision and
    // the server refuses a JWT only once the clock is past that second, so a reconnect within
    // the expiring second is still accepted and at once closed again with the same error; the
    // later ones are refused with `-ERR 'Authorization Violation'` (client: "authorization
    // violation"; server log: "authentication error").
    let events = a.events.clone();
    eventually(Duration::from_secs(10), "the server to cut the expired credential off", || {
        let seen = events.lock().unwrap().iter().any(|e| e.to_lowercase().contains("expired"));
        async move { seen.then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(10), "the reconnect to be refused", || {
        let seen = events.lock().unwrap().iter().any(|e| e.contains("authorization violation"));
        async move { seen.then_some(()) }
    })
    .await;
    assert!(std::time::SystemTime::now() >= std::time::SystemTime::from(cred.expires_at), "not before expiry");
    let r = a.js.publish(key.clone(), "after expiry".into()).await;
    let r = match r {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(r.is_err(), "an expired credential wrote");

    // A new connection with it is refused outright.
    let e = try_connect_as(&w.server, &cred, "shop", "a").await.err().expect("refused");
    assert!(e.to_string().contains("authorization violation"), "{e}");
    assert!(w.server.log().contains("authentication error"), "{}", w.server.log());
    assert_eq!(
        last_value(&w.admin, "KV_CW_ST_shop_a", &key).await.as_deref(),
        Some(&b"before expiry"[..]),
        "nothing written after expiry"
    );
}

/// A credential's JWT lists every store its node may read by name (no NATS wildcard can stand
/// for part of a stream name), so it grows with the namespace. nats-server reads the JWT in the
/// client's CONNECT line, which it refuses above `max_control_line` (4 KB by default);
/// `DevTrust::server_config` raises that limit, and docs/security.md states the bound.
#[tokio::test]
async fn a_namespace_with_many_stores_fits_in_a_credential() {
    const STORES: usize = 60;
    let server = NatsServer::start_secure();
    let admin = server.client().await;
    let mut yaml =
        String::from("apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: n, namespace: big}\nspec: {}\n");
    for i in 0..STORES {
        yaml.push_str(&format!(
            "---\napiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {{name: store-{i:02}, namespace: big}}\nspec: {{}}\n"
        ));
    }
    apply_yaml(&admin, &yaml).await.expect("apply");
    let records = registry(&admin).await;
    let g = grants_from(&records, "big", "n");
    let per_store = g.publish.iter().filter(|p| p.contains("CW_ES_big_store-07")).count();
    assert_eq!(per_store, 3, "direct get, message get, info: {:?}", g.publish);
    let cred = server.issue("big/n", &g, Duration::from_secs(600));
    println!("{STORES} readable stores: {} grants, JWT {} bytes", g.publish.len() + g.subscribe.len(), cred.jwt.len());
    assert!(cred.jwt.len() > 4096, "this test is about a JWT above the default control line");

    let n = connect_as(&server, &cred, "big", "n").await;
    let last = naming::store_stream(&l("big"), &l(&format!("store-{:02}", STORES - 1)));
    jetstream::new(admin.clone())
        .publish(format!("cw.big.es.store-{:02}.e", STORES - 1), "last".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(direct_get(&n.client, &last, json!({"seq": 1})).await.as_deref(), Some(&b"last"[..]));
    n.js.get_stream(&naming::store_stream(&l("big"), &l("store-00"))).await.expect("info of the first store");
    assert!(n.violations().is_empty(), "{:?}", n.violations());

    // The bound is real: on a server left at the default control line, the same credential
    // is refused at CONNECT, while a node reading a dozen stores still fits.
    let default_line = NatsServer::start_secure_with("max_control_line: 4096\n");
    let e = try_connect_as(&default_line, &cred, "big", "n").await.err().expect("refused at the default control line");
    assert!(e.to_string().contains("maximum control line exceeded"), "{e}");
    let few = |_: &DnsLabel| (0..12).map(|i| l(&format!("store-{i:02}"))).collect::<Vec<_>>();
    let node = records.iter().find_map(|r| if let Record::Node(x) = r { Some(x.clone()) } else { None }).unwrap();
    let small = default_line.issue("big/n", &node_grants(&node, &[], &few), Duration::from_secs(600));
    println!("12 readable stores: JWT {} bytes", small.jwt.len());
    connect_as(&default_line, &small, "big", "n").await;
}
