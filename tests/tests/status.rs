//! `causeway status` in both worlds.
//!
//! NATS: against a real nats-server after applying manifests with the local driver — every
//! object ready with its figures and manager (apply and operator), a listener whose store is
//! gone is `SourceNotFound`, objects changed or deleted behind Causeway's back are `Drifted` or
//! `Missing`, filters select like kubectl, `-o json`/`-o yaml` carry the documented fields, the
//! exit codes, and not a single JetStream or KV write (watched on the wire).
//!
//! Kubernetes: against the in-memory API server, with statuses written by the operator's own
//! reconcile (server-side apply on the status subresource) — ready objects, a listener whose
//! store does not exist, a status older than the spec, an object with no status yet.

use std::{process::Command, sync::Arc, time::Duration};

use async_nats::jetstream;
use causeway_api::{
    crd::{EventStore, Listener, Node},
    registry::MANAGER_OPERATOR,
};
use causeway_operator::{
    controller::{Context, Options, kinds::Managed, metrics::Metrics, reconcile::reconcile},
    jetstream::{Mode, Reconciler},
    local, manifest,
};
use causeway_tests::{KubeEmulator, NatsServer, Run, TempDir, bin, causeway, examples_dir, free_port, write_file};
use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::events::Reporter,
};
use serde_json::{Value, json};

/// The examples as one multi-document YAML.
fn examples_yaml() -> String {
    let mut docs = Vec::new();
    for f in ["stores.yaml", "nodes.yaml", "listeners.yaml"] {
        docs.push(std::fs::read_to_string(examples_dir().join(f)).expect("read example"));
    }
    docs.join("\n---\n")
}

/// A server with `examples/` applied by the local driver (manager `apply`).
async fn shop() -> (NatsServer, async_nats::Client) {
    let server = NatsServer::start();
    let client = server.client().await;
    local::apply_yaml(&client, &examples_yaml()).await.expect("examples apply and are ready");
    (server, client)
}

fn status(server: &NatsServer, args: &[&str]) -> Run {
    let mut all = vec!["status", "--nats", &server.url];
    all.extend(args);
    causeway(&all)
}

fn json_of(r: &Run) -> Vec<Value> {
    serde_json::from_str::<Vec<Value>>(&r.stdout).unwrap_or_else(|e| panic!("not a JSON array ({e}): {r:?}"))
}

/// The item of `kind`/`name` in a JSON listing.
fn item<'a>(items: &'a [Value], kind: &str, name: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["kind"] == kind && i["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {items:#?}"))
}

/// The table's row for `kind/name` (e.g. `eventstore/orders`), split into cells.
fn row(r: &Run, kind_name: &str) -> Vec<String> {
    r.stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cells| cells.get(1).map(String::as_str) == Some(kind_name))
        .unwrap_or_else(|| panic!("no row {kind_name} in:\n{}", r.stdout))
}

fn kinds_and_names(items: &[Value]) -> Vec<String> {
    items.iter().map(|i| format!("{}/{}/{}", i["namespace"].as_str().unwrap(), i["kind"], i["name"])).collect()
}

const EXAMPLE_ROWS: [&str; 8] = [
    "eventstore/dead-letters",
    "eventstore/orders",
    "node/inventory",
    "node/orders",
    "node/shipping",
    "listener/order-history",
    "listener/reserve-stock",
    "listener/ship-order",
];

/// An EventStore applied by an operator (manager `operator`, with a generation), the way the
/// controller calls the core.
async fn operator_store(client: &async_nats::Client, ns: &str, name: &str) {
    let yaml = format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{}}\n"
    );
    let (mut objects, errs) = manifest::parse_str(&yaml, "<test>");
    assert!(errs.is_empty(), "{errs:?}");
    let mut obj = objects.remove(0).object;
    obj.meta.manager = MANAGER_OPERATOR.into();
    obj.meta.generation = Some(4);
    let o = Reconciler::new(client.clone(), MANAGER_OPERATOR).reconcile(&obj, Mode::Apply).await.unwrap();
    assert!(o.readiness.ready, "{o:?}");
}

#[tokio::test]
async fn nats_shows_every_object_ready_with_figures_and_its_manager() {
    let (server, client) = shop().await;
    operator_store(&client, "bank", "ledger").await;
    let js = jetstream::new(client.clone());
    for i in 0..3 {
        js.publish(format!("cw.shop.es.orders.order-{i}"), "x".into()).await.unwrap().await.unwrap();
    }

    let r = status(&server, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("node isolation: NOT enforced by NATS for shop/inventory, shop/orders, shop/shipping"),
        "the gap is stated plainly: {}",
        r.stderr
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAMESPACE", "KIND/NAME", "READY", "REASON", "TARGET", "EVENTS", "PENDING", "MANAGER"]);
    assert_eq!(lines.len(), 1 + EXAMPLE_ROWS.len() + 1, "{}", r.stdout);
    for kn in EXAMPLE_ROWS {
        let cells = row(&r, kn);
        assert_eq!(cells[0], "shop");
        assert_eq!((cells[2].as_str(), cells[3].as_str(), cells[7].as_str()), ("True", "Reconciled", "apply"), "{kn}");
    }
    assert_eq!(row(&r, "eventstore/orders")[4..7], ["CW_ES_shop_orders", "3", "-"]);
    assert_eq!(row(&r, "node/inventory")[4..7], ["CW_IN_shop_inventory", "0", "-"]);
    assert_eq!(row(&r, "listener/order-history")[4..7], ["cw_shop_order-history", "-", "3"], "pending: startAt all");
    assert_eq!(row(&r, "listener/reserve-stock")[4..7], ["cw_shop_reserve-stock", "-", "0"]);
    let ledger = row(&r, "eventstore/ledger");
    assert_eq!(ledger, ["bank", "eventstore/ledger", "True", "Reconciled", "CW_ES_bank_ledger", "0", "-", "operator"]);
    // Sorted by namespace, then kind (stores, nodes, listeners), then name.
    assert!(lines[1].starts_with("bank "), "{}", r.stdout);
    let order: Vec<String> = lines[2..].iter().map(|l| l.split_whitespace().nth(1).unwrap().to_string()).collect();
    assert_eq!(order, EXAMPLE_ROWS);

    // -o wide adds the message.
    let wide = status(&server, &["-o", "wide"]);
    assert_eq!(wide.code, 0, "{wide:?}");
    let header: Vec<&str> = wide.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[7..], ["MANAGER", "MESSAGE"], "{}", wide.stdout);
    assert!(wide.stdout.contains("stream CW_ES_shop_orders holds cw.shop.es.orders.>"), "{}", wide.stdout);
    assert!(wide.stdout.contains("consumer cw_shop_reserve-stock on stream CW_IN_shop_inventory ready"));

    // The same in JSON, with every figure.
    let j = status(&server, &["-o", "json"]);
    assert_eq!(j.code, 0, "{j:?}");
    let items = json_of(&j);
    assert_eq!(items.len(), 9);
    let orders = item(&items, "EventStore", "orders");
    assert_eq!(orders["figures"]["events"], 3);
    assert_eq!(orders["figures"]["firstSequence"], 1);
    assert_eq!(orders["figures"]["lastSequence"], 3);
    assert_eq!(orders["figures"]["consumers"], 1, "the order-history listener");
    assert_eq!(orders["figures"]["maxConsumers"], 1000);
    assert!(orders["figures"]["bytes"].as_u64().unwrap() > 0);
    let ledger = item(&items, "EventStore", "ledger");
    assert_eq!((&ledger["manager"], &ledger["generation"]), (&json!("operator"), &json!(4)));
    assert_eq!(item(&items, "Listener", "order-history")["figures"]["numPending"], 3);
}

#[tokio::test]
async fn a_listener_whose_store_is_deleted_behind_its_back_is_source_not_found() {
    let (server, client) = shop().await;
    let js = jetstream::new(client.clone());
    js.delete_stream("CW_ES_shop_orders").await.unwrap();

    let r = status(&server, &["-o", "wide"]);
    assert_eq!(r.code, 1, "{r:?}");
    let l = row(&r, "listener/order-history");
    assert_eq!(l[2..4], ["False", "SourceNotFound"], "{}", r.stdout);
    assert!(r.stdout.contains("store \"orders\" does not exist in namespace shop (stream CW_ES_shop_orders)"));
    let s = row(&r, "eventstore/orders");
    assert_eq!(s[2..7], ["False", "Missing", "CW_ES_shop_orders", "-", "-"], "{}", r.stdout);
    assert!(r.stdout.contains("stream CW_ES_shop_orders does not exist"), "{}", r.stdout);
    assert!(r.stdout.contains("`causeway apply` of its manifest restores it"), "{}", r.stdout);
    assert_eq!(row(&r, "listener/reserve-stock")[2], "True", "the rest is untouched");
    assert!(r.stderr.contains("2 of 8 object(s) not ready"), "{}", r.stderr);

    let j = status(&server, &["-o", "json", "cwl/order-history"]);
    assert_eq!(j.code, 1, "{j:?}");
    let items = json_of(&j);
    assert_eq!(items.len(), 1);
    let l = &items[0];
    assert_eq!((&l["ready"], &l["status"], &l["reason"]), (&json!(false), &json!("False"), &json!("SourceNotFound")));
    assert_eq!(l["target"], "cw_shop_order-history");
    assert_eq!(l["figures"], json!({"numPending": null, "numAckPending": null, "redelivered": null}));
    // Status reported it; it did not repair it.
    assert!(js.get_stream("CW_ES_shop_orders").await.is_err(), "status must not recreate the stream");
}

#[tokio::test]
async fn changes_behind_causeways_back_are_drifted_or_missing() {
    let (server, client) = shop().await;
    let js = jetstream::new(client.clone());
    let mut cfg = js.get_stream("CW_IN_shop_shipping").await.unwrap().info().await.unwrap().config.clone();
    cfg.max_age = Duration::from_secs(600);
    js.update_stream(cfg).await.unwrap();
    js.get_stream("CW_IN_shop_inventory").await.unwrap().delete_consumer("cw_shop_reserve-stock").await.unwrap();

    let r = status(&server, &["-o", "json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let items = json_of(&r);
    let node = item(&items, "Node", "shipping");
    assert_eq!((&node["ready"], &node["reason"]), (&json!(false), &json!("Drifted")));
    let msg = node["message"].as_str().unwrap();
    assert!(msg.contains("stream CW_IN_shop_shipping: max_age 10m -> unlimited"), "{msg}");
    assert_eq!(node["figures"]["events"], 0, "a drifted stream still has its figures");
    let l = item(&items, "Listener", "reserve-stock");
    assert_eq!((&l["ready"], &l["reason"]), (&json!(false), &json!("Missing")));
    assert!(l["message"].as_str().unwrap().contains("consumer cw_shop_reserve-stock on stream CW_IN_shop_inventory"));
    let ready: Vec<&str> = items.iter().filter(|i| i["ready"] == true).map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(ready.len(), 6, "{ready:?}");

    // What status calls drift, the next apply repairs; then status is all ready again.
    local::apply_yaml(&client, &examples_yaml()).await.unwrap();
    let again = status(&server, &[]);
    assert_eq!(again.code, 0, "{again:?}");
}

#[tokio::test]
async fn filters_select_like_kubectl() {
    let (server, client) = shop().await;
    operator_store(&client, "bank", "orders").await;
    let names = |args: &[&str]| {
        let mut all = vec!["-o", "json"];
        all.extend(args);
        let r = status(&server, &all);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        kinds_and_names(&json_of(&r))
    };
    assert_eq!(names(&["-n", "bank"]), ["bank/\"EventStore\"/\"orders\""]);
    assert_eq!(names(&["-A", "EventStores"]).len(), 3);
    for k in ["cwl", "listener", "Listeners", "LISTENER", "listeners.causeway.dev"] {
        assert_eq!(names(&["-n", "shop", k]).len(), 3, "{k}");
    }
    for k in ["cwnode", "node", "NODES"] {
        assert_eq!(names(&[k]).len(), 3, "{k}");
    }
    assert_eq!(names(&["cwes,cwnode", "orders"]).len(), 3, "stores shop/orders, bank/orders and node shop/orders");
    assert_eq!(names(&["cwes/orders"]), ["bank/\"EventStore\"/\"orders\"", "shop/\"EventStore\"/\"orders\""]);
    assert_eq!(names(&["-n", "shop", "cwes/orders", "Node/orders"]).len(), 2);
    assert_eq!(names(&["causeway"]).len(), 9);

    // Nothing matches: an empty table (kubectl's words), exit 0.
    let none = status(&server, &["-n", "nowhere"]);
    assert_eq!((none.code, none.stdout.as_str()), (0, ""), "{none:?}");
    assert!(none.stderr.contains("No resources found in nowhere namespace."), "{none:?}");

    // A named object that does not exist: exit 1 and says which.
    let missing = status(&server, &["-n", "shop", "cwl/nope", "cwes/orders"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("listener \"nope\" not found in namespace shop"), "{missing:?}");
    assert_eq!(row(&missing, "eventstore/orders")[2], "True", "what exists is still shown");

    // Bad filters and flags: exit 2, nothing looked at.
    for (args, says) in [
        (vec!["widgets"], "unknown kind \"widgets\""),
        (vec!["pods/x"], "unknown kind \"pods\""),
        (vec!["cwes/orders", "cwl"], "all must be"),
        (vec!["causeway/orders"], "exactly one kind"),
        (vec!["cwes/Not_A_Name"], "name \"Not_A_Name\""),
        (vec!["-n", "Bad_NS"], "namespace \"Bad_NS\""),
        (vec!["-o", "xml"], "invalid value 'xml'"),
        (vec!["-n", "shop", "-A"], "cannot be used with"),
        (vec!["--frobnicate"], "unexpected argument"),
    ] {
        let r = status(&server, &args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
}

#[tokio::test]
async fn json_and_yaml_carry_the_documented_fields() {
    let (server, _client) = shop().await;
    let j = status(&server, &["-o", "json"]);
    let y = status(&server, &["-o", "yaml"]);
    assert_eq!((j.code, y.code), (0, 0), "{j:?} {y:?}");
    let items = json_of(&j);
    let from_yaml: Vec<Value> = serde_yaml::from_str(&y.stdout).unwrap_or_else(|e| panic!("YAML ({e}): {}", y.stdout));
    assert_eq!(items, from_yaml, "-o yaml is -o json as YAML");
    assert_eq!(items.len(), 8);
    for i in &items {
        let keys: Vec<&str> = i.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "figures",
            "generation",
            "jetstream",
            "kind",
            "manager",
            "message",
            "name",
            "namespace",
            "ready",
            "reason",
            "status",
            "target",
        ];
        if i["kind"] == "Node" {
            want.extend(["credentials", "isolationEnforcedByNats"]);
        }
        want.sort();
        let mut keys = keys.clone();
        keys.sort();
        assert_eq!(keys, want, "{i:#}");
    }
    assert_eq!(
        *item(&items, "EventStore", "orders"),
        json!({
            "kind": "EventStore", "namespace": "shop", "name": "orders",
            "ready": true, "status": "True", "reason": "Reconciled",
            "message": "stream CW_ES_shop_orders holds cw.shop.es.orders.>",
            "target": "CW_ES_shop_orders",
            "jetstream": {"stream": "CW_ES_shop_orders", "subjects": "cw.shop.es.orders.>"},
            "figures": {"events": 0, "bytes": 0, "firstSequence": 0, "lastSequence": 0, "consumers": 1, "maxConsumers": 1000},
            "manager": "apply", "generation": null,
        })
    );
    let node = item(&items, "Node", "inventory");
    assert_eq!(
        node["jetstream"],
        json!({"inboxStream": "CW_IN_shop_inventory", "inboxSubjects": "cw.shop.to.inventory.>, cw.shop.in.inventory.>, cw.shop.replay.in.inventory.>",
               "stateBucket": "CW_ST_shop_inventory", "globalBucket": "CW_GL_shop"})
    );
    assert_eq!(node["target"], "CW_IN_shop_inventory");
    assert_eq!(
        (&node["credentials"], &node["isolationEnforcedByNats"]),
        (&json!("shared"), &json!(false)),
        "applied without issuing credentials"
    );
    let fig: Vec<&String> = node["figures"].as_object().unwrap().keys().collect();
    assert_eq!(fig, ["bytes", "consumers", "events", "lastSequence", "maxConsumers"]);
    let l = item(&items, "Listener", "ship-order");
    assert_eq!(l["jetstream"], json!({"stream": "CW_IN_shop_shipping", "consumer": "cw_shop_ship-order"}));
    assert_eq!(l["figures"], json!({"numPending": 0, "numAckPending": 0, "redelivered": 0}));

    // Nothing selected: an empty list, still valid JSON and YAML.
    let j = status(&server, &["-o", "json", "-n", "nowhere"]);
    assert_eq!((j.code, json_of(&j).len()), (0, 0), "{j:?}");
    let y = status(&server, &["-o", "yaml", "-n", "nowhere"]);
    assert_eq!(serde_yaml::from_str::<Vec<Value>>(&y.stdout).unwrap(), Vec::<Value>::new(), "{y:?}");
}

/// The whole command, healthy and broken objects alike, watched on the wire: JetStream API
/// requests (reads only: no create, update, delete or purge of anything, not even a consumer to
/// list the registry) and no KV write.
#[tokio::test]
async fn status_makes_no_jetstream_or_kv_writes() {
    let (server, client) = shop().await;
    operator_store(&client, "bank", "ledger").await;
    let js = jetstream::new(client.clone());
    // Broken ones too, so every path of the dry run is taken.
    js.delete_stream("CW_ES_shop_orders").await.unwrap();
    js.get_stream("CW_IN_shop_inventory").await.unwrap().delete_consumer("cw_shop_reserve-stock").await.unwrap();
    let registry_before = js.get_stream("KV_CW_REGISTRY").await.unwrap().info().await.unwrap().clone();

    let spy = server.client().await;
    let mut api = spy.subscribe("$JS.API.>").await.unwrap();
    let mut kv = spy.subscribe("$KV.>").await.unwrap();
    spy.flush().await.unwrap();
    for args in [vec![], vec!["-o", "json"], vec!["-n", "shop", "cwl"], vec!["cwes/orders"]] {
        let r = status(&server, &args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
    }
    spy.flush().await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), api.next()).await {
        seen.push(m.subject.to_string());
    }
    assert!(seen.len() > 30, "the spy should see status's reads: {seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("$JS.API.STREAM.INFO.KV_CW_REGISTRY")), "{seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("$JS.API.CONSUMER.INFO.")), "{seen:?}");
    let writes: Vec<&String> =
        seen.iter().filter(|s| ["CREATE", "UPDATE", "DELETE", "PURGE"].iter().any(|w| s.contains(w))).collect();
    assert!(writes.is_empty(), "status wrote: {writes:?}");
    let kv_writes = tokio::time::timeout(Duration::from_millis(200), kv.next()).await;
    assert!(kv_writes.is_err(), "status wrote a KV entry: {kv_writes:?}");

    // And the state agrees: the registry has the same messages and no new consumer, the
    // deleted stream and consumer are still gone.
    let registry_after = js.get_stream("KV_CW_REGISTRY").await.unwrap().info().await.unwrap().clone();
    assert_eq!(registry_after.state.last_sequence, registry_before.state.last_sequence);
    assert_eq!(registry_after.state.consumer_count, 0);
    assert!(js.get_stream("CW_ES_shop_orders").await.is_err());
    let inv = js.get_stream("CW_IN_shop_inventory").await.unwrap();
    assert!(inv.consumer_info("cw_shop_reserve-stock").await.is_err());
}

#[tokio::test]
async fn exit_codes_when_there_is_nothing_or_no_nats() {
    // A fresh server: no registry yet, nothing to show, nothing wrong.
    let server = NatsServer::start();
    let r = status(&server, &[]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
    assert!(r.stderr.contains("no registry (CW_REGISTRY)"), "{r:?}");
    let js = jetstream::new(server.client().await);
    assert!(js.get_stream("KV_CW_REGISTRY").await.is_err(), "status must not create the registry");

    // No NATS there: exit 1, naming the URL.
    let url = format!("nats://127.0.0.1:{}", free_port());
    let r = causeway(&["status", "--nats", &url]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&format!("cannot connect to NATS at {url}")), "{}", r.stderr);
    let r = causeway(&["status", "--nats", &url, "-o", "json"]);
    assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{r:?}");

    let help = causeway(&["status", "--help"]);
    assert_eq!(help.code, 0);
    for needle in [
        "--kubeconfig",
        "--kube",
        "--namespace",
        "-o, --output",
        "cwes",
        "cwnode",
        "cwl",
        "Exit codes",
        "Missing",
        "Drifted",
        "jetstream",
        "figures",
    ] {
        assert!(help.stdout.contains(needle), "--help lacks {needle:?}:\n{}", help.stdout);
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

fn kube_status(emu: &KubeEmulator, args: &[&str]) -> Run {
    let kc = emu.kubeconfig().display().to_string();
    let mut all = vec!["status", "--kubeconfig", &kc];
    all.extend(args);
    causeway(&all)
}

/// The operator's reconcile, as its controller runs it, for every object of kind `K` in
/// `shop` (twice: the first adds the finalizer, the second reconciles and writes the status by
/// server-side apply).
async fn operate<K: Managed>(ctx: &Arc<Context>) {
    let api: Api<K> = Api::namespaced(ctx.kube.clone(), "shop");
    for _ in 0..2 {
        for o in api.list(&ListParams::default()).await.unwrap() {
            reconcile(Arc::new(o), ctx.clone()).await.unwrap_or_else(|e| panic!("reconcile: {e}"));
        }
    }
}

async fn operator_context(emu: &KubeEmulator, nats: &NatsServer) -> Arc<Context> {
    let reporter = Reporter { controller: "causeway-operator".into(), instance: Some("test".into()) };
    let opts = Options { nats_timeout: Duration::from_secs(5), ..Options::default() };
    Arc::new(Context::new(
        emu.client().await,
        Reconciler::new(nats.client().await, MANAGER_OPERATOR),
        reporter,
        Arc::new(Metrics::default()),
        opts,
    ))
}

async fn operate_all(ctx: &Arc<Context>) {
    operate::<EventStore>(ctx).await;
    operate::<Node>(ctx).await;
    operate::<Listener>(ctx).await;
}

#[tokio::test]
async fn kubernetes_shows_the_status_the_operator_wrote() {
    let emu = KubeEmulator::start();
    emu.create_namespace("shop");
    let r = emu.kubectl(&["apply", "-f", &examples_dir().display().to_string()]);
    assert_eq!(r.code, 0, "{r:?}");
    let nats = NatsServer::start();
    let ctx = operator_context(&emu, &nats).await;
    operate_all(&ctx).await;
    let js = jetstream::new(nats.client().await);
    js.publish("cw.shop.es.orders.order-1", "x".into()).await.unwrap().await.unwrap();
    // The operator's next resync picks the figures up.
    operate_all(&ctx).await;

    let mark = emu.mark();
    let r = kube_status(&emu, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let header: Vec<&str> = r.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAMESPACE", "KIND/NAME", "READY", "REASON", "TARGET", "EVENTS", "PENDING", "AGE"]);
    for kn in EXAMPLE_ROWS {
        let cells = row(&r, kn);
        assert_eq!(cells[..4], ["shop".to_string(), kn.to_string(), "True".into(), "Reconciled".into()], "{kn}");
        assert!(cells[7].ends_with('s'), "AGE in seconds for a new object: {cells:?}");
    }
    assert_eq!(row(&r, "eventstore/orders")[4..7], ["CW_ES_shop_orders", "1", "-"]);
    assert_eq!(row(&r, "node/shipping")[4..7], ["CW_IN_shop_shipping", "0", "-"]);
    assert_eq!(row(&r, "listener/order-history")[4..7], ["cw_shop_order-history", "-", "1"]);
    let requests = emu.requests_since(mark);
    assert!(requests.iter().all(|q| q.method == "GET"), "status only reads: {requests:#?}");
    let lists: Vec<&str> = requests.iter().map(|q| q.path.as_str()).collect();
    for plural in ["eventstores", "nodes", "listeners"] {
        assert!(lists.contains(&format!("/apis/causeway.dev/v1alpha1/{plural}").as_str()), "{lists:?}");
    }

    let j = kube_status(&emu, &["-o", "json"]);
    assert_eq!(j.code, 0, "{j:?}");
    let items = json_of(&j);
    assert_eq!(items.len(), 8);
    let orders = item(&items, "EventStore", "orders");
    assert_eq!((&orders["ready"], &orders["status"]), (&json!(true), &json!("True")));
    assert_eq!(orders["jetstream"], json!({"stream": "CW_ES_shop_orders", "subjects": "cw.shop.es.orders.>"}));
    assert_eq!(orders["figures"]["events"], 1);
    assert_eq!(orders["figures"]["maxConsumers"], 1000);
    assert_eq!(orders["generation"], orders["observedGeneration"]);
    assert!(orders["creationTimestamp"].as_str().unwrap().ends_with('Z'), "{orders:#}");
    assert!(orders["age"].as_str().unwrap().ends_with('s'));
    assert!(orders.get("manager").is_none(), "manager is the NATS world's");
    let inv = item(&items, "Node", "inventory");
    assert_eq!(inv["jetstream"]["stateBucket"], "CW_ST_shop_inventory");
    let l = item(&items, "Listener", "reserve-stock");
    assert_eq!(l["message"], "consumer cw_shop_reserve-stock on stream CW_IN_shop_inventory ready");
    assert_eq!(l["figures"], json!({"numPending": 0, "numAckPending": 0, "redelivered": 0}));

    // Filters, as in the NATS world; YAML is the same list.
    let y = kube_status(&emu, &["-n", "shop", "cwl", "-o", "yaml"]);
    assert_eq!(y.code, 0, "{y:?}");
    let ls: Vec<Value> = serde_yaml::from_str(&y.stdout).unwrap();
    assert_eq!(ls.len(), 3);
    assert!(ls.iter().all(|i| i["kind"] == "Listener"));
    let one = kube_status(&emu, &["node/inventory", "-o", "wide"]);
    assert_eq!(one.code, 0, "{one:?}");
    assert_eq!(one.stdout.lines().count(), 2, "{}", one.stdout);
    assert!(one.stdout.contains("inbox CW_IN_shop_inventory and state bucket CW_ST_shop_inventory ready"));
    let none = kube_status(&emu, &["-n", "elsewhere"]);
    assert_eq!(none.code, 0, "{none:?}");
    let gone = kube_status(&emu, &["cwes/nope"]);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(gone.stderr.contains("eventstore \"nope\" not found in any namespace"), "{gone:?}");

    // --kube without a path: the configuration kube-rs infers ($KUBECONFIG here).
    let out = Command::new(bin("causeway"))
        .args(["status", "--kube", "cwes"])
        .env("KUBECONFIG", emu.kubeconfig())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("eventstore/dead-letters"), "{out:?}");
}

#[tokio::test]
async fn kubernetes_not_ready_stale_and_unreported_objects_exit_1() {
    let emu = KubeEmulator::start();
    emu.create_namespace("shop");
    let r = emu.kubectl(&["apply", "-f", &examples_dir().display().to_string()]);
    assert_eq!(r.code, 0, "{r:?}");
    // A listener whose store exists nowhere: the operator reports SourceNotFound.
    let orphan = "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {name: orphan, namespace: shop}\nspec:\n  node: orders\n  source: {store: nowhere}\n";
    assert_eq!(emu.kubectl_apply_yaml(orphan).code, 0);
    let nats = NatsServer::start();
    let ctx = operator_context(&emu, &nats).await;
    operate_all(&ctx).await;

    let r = kube_status(&emu, &["-o", "wide"]);
    assert_eq!(r.code, 1, "{r:?}");
    let o = row(&r, "listener/orphan");
    assert_eq!(o[2..5], ["False", "SourceNotFound", "cw_shop_orphan"], "{}", r.stdout);
    assert!(r.stdout.contains("store \"nowhere\" does not exist in namespace shop"), "{}", r.stdout);
    assert!(r.stderr.contains("1 of 9 object(s) not ready"), "{}", r.stderr);
    let only_ready = kube_status(&emu, &["-n", "shop", "cwl/reserve-stock", "cwl/ship-order"]);
    assert_eq!(only_ready.code, 0, "only what is shown counts: {only_ready:?}");

    // A spec changed after the last status: the status describes an older generation.
    let stores: Api<EventStore> = Api::namespaced(emu.client().await, "shop");
    let changed = stores
        .patch("orders", &PatchParams::default(), &Patch::Merge(json!({"spec": {"discard": "new"}})))
        .await
        .unwrap();
    let generation = changed.metadata.generation.unwrap();
    let j = kube_status(&emu, &["cwes/orders", "-o", "json"]);
    assert_eq!(j.code, 1, "{j:?}");
    let s = &json_of(&j)[0];
    assert_eq!((&s["ready"], &s["status"], &s["reason"]), (&json!(false), &json!("Unknown"), &json!("Reconciling")));
    assert_eq!((s["generation"].as_i64(), s["observedGeneration"].as_i64()), (Some(generation), Some(generation - 1)));
    assert!(s["message"].as_str().unwrap().contains("last reported: Ready=True, Reconciled"), "{s:#}");
    // The operator catches up: ready again.
    operate::<EventStore>(&ctx).await;
    assert_eq!(kube_status(&emu, &["cwes/orders"]).code, 0);

    // A status written by server-side apply like the operator's, saying NATS is away.
    let ssa = PatchParams::apply("causeway-operator").force();
    let body = json!({
        "apiVersion": "causeway.dev/v1alpha1", "kind": "Node",
        "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False", "reason": "NatsUnavailable",
            "message": "NATS did not answer within 20s; retrying with backoff", "observedGeneration": 1}],
            "inboxStream": "CW_IN_shop_shipping", "events": 7}
    });
    let nodes: Api<Node> = Api::namespaced(emu.client().await, "shop");
    nodes.patch_status("shipping", &ssa, &Patch::Apply(&body)).await.unwrap();
    let r = kube_status(&emu, &["node/shipping"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(row(&r, "node/shipping")[2..7], ["False", "NatsUnavailable", "CW_IN_shop_shipping", "7", "-"]);

    // An object the operator has not seen yet: no status at all.
    let fresh =
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {name: fresh, namespace: shop}\nspec: {}\n";
    assert_eq!(emu.kubectl_apply_yaml(fresh).code, 0);
    let j = kube_status(&emu, &["-o", "json", "eventstore/fresh"]);
    assert_eq!(j.code, 1, "{j:?}");
    let f = &json_of(&j)[0];
    assert_eq!((&f["status"], &f["reason"], &f["target"]), (&json!("Unknown"), &json!("Reconciling"), &Value::Null));
    assert!(f["message"].as_str().unwrap().contains("is `causeway operator` running?"), "{f:#}");
    let fresh = stores.get("fresh").await.unwrap();
    assert!(fresh.status.is_none() && fresh.finalizers().is_empty(), "status wrote nothing to Kubernetes");
}

#[test]
fn kubernetes_unreachable_or_misconfigured() {
    // A kubeconfig pointing at a closed port: exit 1, naming the URL.
    let dir = TempDir::new("cw-status");
    let port = free_port();
    let kc = write_file(
        &dir,
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    );
    let r = causeway(&["status", "--kubeconfig", &kc]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&format!("cannot reach Kubernetes at http://127.0.0.1:{port}/")), "{}", r.stderr);
    // No such kubeconfig: a bad flag.
    let r = causeway(&["status", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("kubeconfig /nonexistent/kubeconfig"), "{}", r.stderr);
    // --kube with nothing to infer from.
    let out = Command::new(bin("causeway"))
        .args(["status", "--kube"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Kubernetes configuration found"), "{out:?}");
}

#[tokio::test]
async fn kubernetes_without_the_crds_says_so() {
    let emu = causeway_tests::KubeEmulator::start_with(causeway_tests::KubeEmulatorOptions {
        crds: Vec::new(),
        ..Default::default()
    });
    let r = kube_status(&emu, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("does not serve eventstores.causeway.dev"), "{}", r.stderr);
    assert!(r.stderr.contains(&emu.url), "{} names {}", r.stderr, emu.url);
}
