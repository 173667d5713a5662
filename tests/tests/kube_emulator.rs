//! The Kubernetes test harness itself: the in-memory API server (tests/kube/kube_emulator.py)
//! starts with our CRDs, kubectl and kube-rs work against it (apply, get by short name and
//! category, status subresource, watch), its write counter counts exactly the writes made, and
//! `printer_columns` evaluates every CRD's printer columns on live objects.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use causeway_api::crd::{Condition, EventStore, EventStoreStatus, Listener, Node};
use causeway_tests::{
    KubeEmulator, KubeEmulatorOptions, crds_dir, examples_dir, helm_bin, kubectl_bin, printer_columns, tools_python,
    workspace_root,
};
use futures::StreamExt;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
    runtime::watcher,
};
use serde_json::json;

const GROUP_PATH: &str = "/apis/causeway.dev/v1alpha1/namespaces/shop";

/// An emulator with the `shop` namespace and `examples/` applied.
fn shop() -> KubeEmulator {
    let emu = KubeEmulator::start();
    emu.create_namespace("shop");
    let r = emu.kubectl(&["apply", "-f", &examples_dir().display().to_string()]);
    assert_eq!(r.code, 0, "kubectl apply -f examples/: {}{}\n{}", r.stdout, r.stderr, emu.log());
    emu
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const EXAMPLE_OBJECTS: [&str; 8] = [
    "eventstore.causeway.dev/dead-letters",
    "eventstore.causeway.dev/orders",
    "listener.causeway.dev/order-history",
    "listener.causeway.dev/reserve-stock",
    "listener.causeway.dev/ship-order",
    "node.causeway.dev/inventory",
    "node.causeway.dev/orders",
    "node.causeway.dev/shipping",
];

#[test]
fn kubectl_and_helm_are_the_pinned_project_tools() {
    let tools = workspace_root().join(".tools/bin");
    assert_eq!(kubectl_bin(), tools.join("kubectl"), "no .tools/bin/kubectl: run scripts/setup.sh --test");
    assert_eq!(helm_bin(), tools.join("helm"), "no .tools/bin/helm: run scripts/setup.sh --test");
    let out = std::process::Command::new(kubectl_bin()).args(["version", "--client"]).output().expect("run kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.lines().any(|l| l == "Client Version: v1.35.2"), "{text}");
    let out = std::process::Command::new(helm_bin())
        .args(["version", "--template", "{{.Version}}"])
        .output()
        .expect("run helm");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v4.1.4");
}

#[test]
fn kubectl_applies_examples_and_lists_them_by_short_name_and_category() {
    let started = Instant::now();
    let emu = KubeEmulator::start();
    assert!(emu.url.starts_with("http://127.0.0.1:"), "{}", emu.url);
    let startup = started.elapsed();

    // Our three CRDs are registered, with their short names and category.
    let crds = emu.kubectl(&["get", "crds", "-o", "name"]);
    assert_eq!(
        lines(&crds.stdout),
        set(&[
            "customresourcedefinition.apiextensions.k8s.io/eventstores.causeway.dev",
            "customresourcedefinition.apiextensions.k8s.io/listeners.causeway.dev",
            "customresourcedefinition.apiextensions.k8s.io/nodes.causeway.dev",
        ]),
        "{}",
        crds.stderr
    );
    let res = emu.kubectl(&["api-resources", "--api-group=causeway.dev", "--no-headers"]);
    assert_eq!(res.code, 0, "{}", res.stderr);
    for (plural, short) in [("eventstores", "cwes"), ("nodes", "cwnode"), ("listeners", "cwl")] {
        assert!(
            res.stdout.lines().any(|l| l.split_whitespace().take(2).eq([plural, short])),
            "{plural} ({short}) missing from api-resources:\n{}",
            res.stdout
        );
    }

    // The emulator refuses `kubectl create ns` (protobuf); `apply` of a Namespace works.
    let refused = emu.kubectl(&["create", "namespace", "shop"]);
    assert_ne!(refused.code, 0, "kubectl create ns should fail on the emulator: {}", refused.stdout);
    emu.create_namespace("shop");

    let applied = emu.kubectl(&["apply", "-f", &examples_dir().display().to_string()]);
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    let created: BTreeSet<String> = EXAMPLE_OBJECTS.iter().map(|o| format!("{o} created")).collect();
    assert_eq!(lines(&applied.stdout), created);

    // Listed by short names, as JSON, with the manifests' specs as written.
    let list = emu.kubectl_json(&["get", "cwes,cwnode,cwl", "-n", "shop"]);
    let items = list["items"].as_array().expect("items");
    let got: BTreeSet<String> = items
        .iter()
        .map(|o| format!("{}.causeway.dev/{}", o["kind"].as_str().unwrap().to_lowercase(), o["metadata"]["name"]))
        .map(|s| s.replace('"', ""))
        .collect();
    assert_eq!(got, EXAMPLE_OBJECTS.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
    let by_name = |kind: &str, name: &str| {
        items
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} not listed"))
    };
    let reserve = by_name("Listener", "reserve-stock");
    assert_eq!(reserve["spec"]["deadLetter"], json!({"store": "dead-letters", "subject": "reserve-stock"}));
    assert_eq!(reserve["metadata"]["generation"], 1);
    assert!(reserve["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(by_name("Node", "inventory")["spec"]["app"]["port"], 5001);
    assert_eq!(by_name("EventStore", "orders")["spec"]["retention"]["maxAge"], "30d");
    assert!(by_name("EventStore", "orders").get("status").is_none(), "nothing reconciles here: no status");

    // The category finds all three kinds (as a table: NAME and AGE only, and as names).
    let table = emu.kubectl(&["get", "causeway", "-n", "shop"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    for o in EXAMPLE_OBJECTS {
        assert!(table.stdout.lines().any(|l| l.starts_with(&format!("{o} "))), "{o} missing:\n{}", table.stdout);
    }
    let names = emu.kubectl(&["get", "causeway", "-n", "shop", "-o", "name"]);
    assert_eq!(lines(&names.stdout), EXAMPLE_OBJECTS.iter().map(|s| s.to_string()).collect());
    let elsewhere = emu.kubectl(&["get", "causeway", "-n", "default", "-o", "name"]);
    assert_eq!((elsewhere.code, elsewhere.stdout.trim()), (0, ""), "{}", elsewhere.stderr);

    // Re-applying the same manifests changes nothing.
    let again = emu.kubectl(&["apply", "-f", &examples_dir().display().to_string()]);
    let unchanged: BTreeSet<String> = EXAMPLE_OBJECTS.iter().map(|o| format!("{o} unchanged")).collect();
    assert_eq!(lines(&again.stdout), unchanged, "{}", again.stderr);
    eprintln!("emulator startup {startup:?}, whole test {:?}", started.elapsed());
}

fn ready(status: &str, reason: &str) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: format!("test says {reason}"),
        last_transition_time: Some("2026-01-02T03:04:05Z".into()),
        observed_generation: Some(1),
    }
}

#[tokio::test]
async fn kube_rs_reads_patches_status_and_watches() {
    let emu = shop();
    let client = emu.client().await;
    let stores: Api<EventStore> = Api::namespaced(client.clone(), "shop");
    let nodes: Api<Node> = Api::namespaced(client.clone(), "shop");
    let listeners: Api<Listener> = Api::namespaced(client.clone(), "shop");

    // The examples deserialize into causeway-api's CRD types.
    let mut node_names: Vec<String> =
        nodes.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|n| n.metadata.name).collect();
    node_names.sort();
    assert_eq!(node_names, ["inventory", "orders", "shipping"]);
    let reserve = listeners.get("reserve-stock").await.unwrap();
    assert_eq!(reserve.spec.node.as_str(), "inventory");
    let orders = stores.get("orders").await.unwrap();
    assert_eq!(orders.metadata.generation, Some(1));
    assert_eq!(orders.status, None);
    assert!(stores.get_opt("no-such-store").await.unwrap().is_none(), "404 NotFound is None for get_opt");

    // A watcher: wait for its initial list, then change the object and see the change.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let stores = stores.clone();
        async move {
            let mut events = std::pin::pin!(watcher(stores, watcher::Config::default()));
            while let Some(ev) = events.next().await {
                if tx.send(ev.expect("watch event")).is_err() {
                    break;
                }
            }
        }
    });
    let within = Duration::from_secs(10);
    let mut initial = BTreeSet::new();
    loop {
        match tokio::time::timeout(within, rx.recv()).await.expect("watcher's initial list").expect("watcher alive") {
            watcher::Event::InitApply(s) => {
                initial.insert(s.metadata.name.unwrap());
            }
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, set(&["dead-letters", "orders"]));

    // The operator's way to write status: server-side apply on the status subresource.
    let status = EventStoreStatus {
        observed_generation: Some(1),
        conditions: vec![ready("True", "Reconciled")],
        stream: Some("CW_ES_shop_orders".into()),
        subjects: Some("cw.shop.es.orders.>".into()),
        events: Some(42),
        ..Default::default()
    };
    let ssa = PatchParams::apply("causeway-harness-test").force();
    let body = json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "EventStore", "status": status});
    let patched = stores.patch_status("orders", &ssa, &Patch::Apply(&body)).await.unwrap();
    assert_eq!(patched.status.as_ref(), Some(&status));
    assert_eq!(patched.metadata.generation, Some(1), "a status write does not bump generation");
    let rv = patched.metadata.resource_version.clone().unwrap();
    assert_ne!(orders.metadata.resource_version.as_deref(), Some(rv.as_str()));
    assert_eq!(stores.get("orders").await.unwrap().status, Some(status.clone()));

    let seen = loop {
        match tokio::time::timeout(within, rx.recv()).await.expect("watch sees the status change").unwrap() {
            watcher::Event::Apply(s) if s.metadata.name.as_deref() == Some("orders") => break s,
            _ => {}
        }
    };
    assert_eq!(seen.status, Some(status.clone()));
    assert_eq!(seen.metadata.resource_version.as_deref(), Some(rv.as_str()));

    // The same status again is a no-op: same resourceVersion, no watch event.
    let again = stores.patch_status("orders", &ssa, &Patch::Apply(&body)).await.unwrap();
    assert_eq!(again.metadata.resource_version.as_deref(), Some(rv.as_str()));

    // A spec change bumps generation, keeps the status, and the watch sees it (and nothing in
    // between, so the no-op above made no event).
    let spec = Patch::Merge(json!({"spec": {"discard": "new"}, "status": {"events": 0}}));
    let changed = stores.patch("orders", &PatchParams::default(), &spec).await.unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    assert_eq!(changed.status, Some(status), "a main-resource write does not change status");
    match tokio::time::timeout(within, rx.recv()).await.expect("watch sees the spec change").unwrap() {
        watcher::Event::Apply(s) => {
            assert_eq!(s.metadata.name.as_deref(), Some("orders"));
            assert_eq!(s.metadata.generation, Some(2));
        }
        other => panic!("expected the spec change, got {other:?}"),
    }
    watch.abort();
}

#[test]
fn write_counter_counts_apply_writes_and_none_while_idle() {
    let emu = KubeEmulator::start();

    let m = emu.mark();
    emu.create_namespace("shop");
    assert_eq!(emu.writes_since(m), BTreeMap::from([("/api/v1/namespaces".to_string(), 1)]));

    // kubectl apply of the examples: one POST per object, on its collection.
    let m = emu.mark();
    let r = emu.kubectl(&["apply", "-f", &examples_dir().display().to_string()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let expected = BTreeMap::from([
        (format!("{GROUP_PATH}/eventstores"), 2),
        (format!("{GROUP_PATH}/listeners"), 3),
        (format!("{GROUP_PATH}/nodes"), 3),
    ]);
    assert_eq!(emu.writes_since(m), expected);
    let writes: Vec<_> = emu.requests_since(m).into_iter().filter(|r| r.is_write()).collect();
    assert!(writes.iter().all(|r| r.method == "POST" && r.status == 201), "{writes:#?}");
    assert_eq!(emu.writes(), {
        let mut all = expected.clone();
        all.insert("/api/v1/namespaces".into(), 1);
        all
    });

    // Re-applying unchanged manifests reads but does not write.
    let m = emu.mark();
    let r = emu.kubectl(&["apply", "-f", &examples_dir().display().to_string()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(emu.requests_since(m).iter().any(|r| r.method == "GET"), "the log shows kubectl's reads");
    assert_eq!(emu.writes_since(m), BTreeMap::new());

    // A status patch is one PATCH on the status subresource.
    let m = emu.mark();
    let r = emu.kubectl(&[
        "patch",
        "cwes",
        "orders",
        "-n",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"stream":"CW_ES_shop_orders"}}"#,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.writes_since(m), BTreeMap::from([(format!("{GROUP_PATH}/eventstores/orders/status"), 1)]));

    // Idle, with readers around (a get, a watch that times out): no writes at all.
    let m = emu.mark();
    let r = emu.kubectl(&["get", "causeway", "-n", "shop", "-o", "name"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A watch is logged when it ends: this one ends itself after a second.
    let w = emu.kubectl(&["get", "--raw", &format!("{GROUP_PATH}/listeners?watch=true&timeoutSeconds=1")]);
    assert!(w.code == 0 && w.stdout.contains("reserve-stock"), "{}{}", w.stdout, w.stderr);
    std::thread::sleep(Duration::from_millis(500));
    let idle = emu.requests_since(m);
    assert!(idle.iter().any(|r| r.is_watch()), "the watch is logged: {idle:#?}");
    assert_eq!(emu.writes_since(m), BTreeMap::new(), "{idle:#?}");

    // And a delete after that is counted again.
    let m = emu.mark();
    let r = emu.kubectl(&["delete", "cwl", "ship-order", "-n", "shop"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.writes_since(m), BTreeMap::from([(format!("{GROUP_PATH}/listeners/ship-order"), 1)]));
}

fn crd(plural: &str) -> String {
    std::fs::read_to_string(crds_dir().join(format!("{plural}.causeway.dev.yaml"))).expect("CRD file")
}

fn patch_status(emu: &KubeEmulator, kind: &str, name: &str, status: serde_json::Value) {
    let body = json!({ "status": status }).to_string();
    let r = emu.kubectl(&["patch", kind, name, "-n", "shop", "--subresource=status", "--type=merge", "-p", &body]);
    assert_eq!(r.code, 0, "patch {kind} {name}: {}{}", r.stdout, r.stderr);
}

const READY_STATUS: &str = r#".status.conditions[?(@.type=="Ready")].status"#;
const READY_REASON: &str = r#".status.conditions[?(@.type=="Ready")].reason"#;

/// Checks every printer column of `plural`'s CRD on the live object `kind/name` against `expect`,
/// keyed by the column's JSONPath. `.metadata.creationTimestamp` is the object's own; with
/// `no_status`, every `.status` column must be empty. A column this test has no expectation for
/// fails, so a new column gets checked here too.
fn check_columns(emu: &KubeEmulator, plural: &str, kind: &str, name: &str, no_status: bool, expect: &[(&str, &str)]) {
    let obj = emu.kubectl_json(&["get", kind, name, "-n", "shop"]);
    let crd_yaml = crd(plural);
    let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml).unwrap();
    let paths: Vec<String> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| c["jsonPath"].as_str().unwrap().to_string())
        .collect();
    let mut want: BTreeMap<&str, Option<String>> = expect.iter().map(|(p, v)| (*p, Some(v.to_string()))).collect();
    want.insert(".metadata.creationTimestamp", obj["metadata"]["creationTimestamp"].as_str().map(str::to_string));
    let got = printer_columns(&crd_yaml, &obj);
    assert_eq!(got.len(), paths.len());
    for ((column, cell), path) in got.iter().zip(&paths) {
        let expected = match want.remove(path.as_str()) {
            Some(v) => v,
            None if no_status && path.starts_with(".status.") => None,
            None => panic!("{plural}: column {column} ({path}) has no expected value in this test: add one"),
        };
        assert_eq!(cell, &expected, "{kind} {name}: column {column} ({path})");
    }
    assert!(want.is_empty(), "{plural} has no printer column for {:?}", want.keys());
}

#[test]
fn printer_columns_of_every_crd_on_live_objects() {
    let emu = shop();
    let progressing = json!({"type": "Progressing", "status": "False", "reason": "Done", "message": ""});
    patch_status(
        &emu,
        "cwes",
        "orders",
        json!({"conditions": [ready("True", "Reconciled")], "stream": "CW_ES_shop_orders", "events": 42,
               "consumers": 3}),
    );
    patch_status(
        &emu,
        "cwnode",
        "inventory",
        json!({"conditions": [ready("False", "NatsUnavailable"), progressing], "inboxStream": "CW_IN_shop_inventory",
               "events": 5}),
    );
    patch_status(
        &emu,
        "cwl",
        "reserve-stock",
        json!({"conditions": [progressing, ready("True", "Reconciled")], "consumer": "cw_shop_reserve-stock",
               "numPending": 7}),
    );

    check_columns(
        &emu,
        "eventstores",
        "cwes",
        "orders",
        false,
        &[
            (READY_STATUS, "True"),
            (READY_REASON, "Reconciled"),
            (".status.stream", "CW_ES_shop_orders"),
            (".status.events", "42"),
            (".status.consumers", "3"),
        ],
    );
    check_columns(&emu, "eventstores", "cwes", "dead-letters", true, &[]);
    check_columns(
        &emu,
        "nodes",
        "cwnode",
        "inventory",
        false,
        &[
            (READY_STATUS, "False"),
            (READY_REASON, "NatsUnavailable"),
            (".status.inboxStream", "CW_IN_shop_inventory"),
            (".status.events", "5"),
        ],
    );
    check_columns(&emu, "nodes", "cwnode", "orders", true, &[]);
    check_columns(
        &emu,
        "listeners",
        "cwl",
        "reserve-stock",
        false,
        &[
            (READY_STATUS, "True"),
            (READY_REASON, "Reconciled"),
            (".spec.node", "inventory"),
            (".status.consumer", "cw_shop_reserve-stock"),
            (".status.numPending", "7"),
        ],
    );
    check_columns(&emu, "listeners", "cwl", "ship-order", true, &[(".spec.node", "shipping")]);
}

fn columns(cols: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    cols.iter().map(|(n, v)| (n.to_string(), v.map(str::to_string))).collect()
}

/// The evaluator on its own: the column types and JSONPath forms, without an emulator.
#[test]
fn printer_column_evaluator_types_and_paths() {
    let crd_yaml = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
spec:
  group: example.dev
  names: {kind: Thing}
  versions:
  - name: v1
    additionalPrinterColumns:
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: NotReady, type: string, jsonPath: ".status.conditions[?(@.status != 'True')].type"}
    - {name: Count, type: integer, jsonPath: .status.count}
    - {name: Ratio, type: number, jsonPath: .status.ratio}
    - {name: On, type: boolean, jsonPath: .spec.on}
    - {name: First, type: string, jsonPath: ".spec.items[0].name"}
    - {name: Any, type: string, jsonPath: "$.spec.items[*]['name']"}
    - {name: Obj, type: string, jsonPath: .spec.obj}
    - {name: When, type: date, jsonPath: .status.when}
    - {name: Gen, type: integer, jsonPath: '.status.conditions[?(@.observedGeneration==3)].observedGeneration'}
"#;
    let obj = json!({
        "apiVersion": "example.dev/v1", "kind": "Thing", "metadata": {"name": "t"},
        "spec": {"on": true, "items": [{"name": "a"}, {"name": "b"}], "obj": {"k": 1}},
        "status": {
            "conditions": [
                {"type": "Synced", "status": "False", "observedGeneration": 3},
                {"type": "Ready", "status": "True", "observedGeneration": 2}
            ],
            "count": "12", "ratio": 0.5, "when": "yesterday"
        }
    });
    assert_eq!(
        printer_columns(crd_yaml, &obj),
        columns(&[
            ("Ready", Some("True")),
            ("NotReady", Some("Synced")),
            ("Count", None), // a string is not an integer: kubectl shows <none>
            ("Ratio", Some("0.5")),
            ("On", Some("true")),
            ("First", Some("a")),
            ("Any", Some("a")), // the first match
            ("Obj", Some(r#"{"k":1}"#)),
            ("When", Some("<invalid>")),
            ("Gen", Some("3")),
        ])
    );
    let bare = json!({"apiVersion": "example.dev/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {}});
    assert!(printer_columns(crd_yaml, &bare).iter().all(|(_, v)| v.is_none()));
}

#[test]
#[should_panic(expected = "unsupported JSONPath")]
fn printer_column_evaluator_refuses_what_it_cannot_evaluate() {
    let crd_yaml = "spec:\n  group: example.dev\n  names: {kind: Thing}\n  versions:\n  - name: v1\n    \
                    additionalPrinterColumns:\n    - {name: X, type: string, jsonPath: '..name'}\n";
    printer_columns(crd_yaml, &json!({"apiVersion": "example.dev/v1", "kind": "Thing"}));
}

/// Without kmock the harness fails, loudly, telling what to run; it never skips.
#[test]
#[should_panic(expected = "run scripts/setup.sh --test. These tests never skip")]
fn emulator_without_kmock_fails_loudly() {
    // The project's Python without its site-packages (-S): no kmock, no PyYAML.
    let dir = causeway_tests::TempDir::new("cw-nokmock");
    let python = dir.path().join("python");
    std::fs::write(&python, format!("#!/bin/sh\nexec '{}' -S \"$@\"\n", tools_python().display())).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&python).status().unwrap();
    KubeEmulator::start_with(KubeEmulatorOptions { python, ..Default::default() });
}

/// An emulator that cannot start says why, with its log.
#[test]
#[should_panic(expected = "No such file or directory")]
fn emulator_that_exits_early_panics_with_its_log() {
    let missing = workspace_root().join("crds/no-such-crd.yaml");
    KubeEmulator::start_with(KubeEmulatorOptions { crds: vec![missing], ..Default::default() });
}

/// Dropping the harness stops the emulator.
#[test]
fn dropping_the_emulator_stops_it() {
    let emu = KubeEmulator::start();
    let hostport = emu.url.trim_start_matches("http://").to_string();
    assert!(std::net::TcpStream::connect(&hostport).is_ok(), "it serves");
    let dir = emu.dir().to_path_buf();
    drop(emu);
    assert!(std::net::TcpStream::connect(&hostport).is_err(), "still serving after drop");
    assert!(!dir.exists(), "its scratch directory is removed");
}
