//! Causal traces end to end: real sidecars and apps, a three-hop flow with a retry and a dead
//! letter, read back as JSON from the sidecar, as a tree and JSON from `causeway trace`, and as
//! an SVG picture; a node with tracing off leaves no records of its own. A pull listener's acks,
//! naks and terms are recorded too.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use causeway_tests::{NatsServer, TempDir, causeway, eventually};
use serde_json::{Value, json};
use support::*;

fn manifests(shipping_trace: bool) -> String {
    format!(
        r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {{name: dead, namespace: tr}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: web, namespace: tr}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: inventory, namespace: tr}}
spec: {{delivery: {{ackWait: 5s, backoff: [100ms]}}}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: shipping, namespace: tr}}
spec: {{trace: {{enabled: {shipping_trace}}}}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: billing, namespace: tr}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: reserve, namespace: tr}}
spec: {{node: inventory, source: {{inbox: inventory}}, delivery: {{mode: push, timeout: 1s}}}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: ship, namespace: tr}}
spec: {{node: shipping, source: {{inbox: shipping}}, delivery: {{mode: push, timeout: 1s}}}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: bill, namespace: tr}}
spec:
  node: billing
  source: {{inbox: billing}}
  delivery: {{mode: push, timeout: 1s}}
  deadLetter: {{store: dead, subject: bill}}
"#
    )
}

/// The flow: web sends order-placed to inventory, whose app fails once (500) and then emits
/// stock-reserved to shipping, whose app emits shipped to billing, whose app refuses it (422).
struct Flow {
    server: NatsServer,
    web: Sidecar,
    _sidecars: Vec<Sidecar>,
    _apps: Vec<App>,
}

async fn flow(shipping_trace: bool) -> Flow {
    let server = NatsServer::start();
    apply(&server, &manifests(shipping_trace)).await;
    let tries = AtomicUsize::new(0);
    let inventory = App::start(move |_| {
        if tries.fetch_add(1, Ordering::SeqCst) == 0 {
            (500, json!({"error": "warming up"}))
        } else {
            (200, json!({"emit": [{"node": "shipping", "type": "stock-reserved", "payload": {}}]}))
        }
    })
    .await;
    let shipping =
        App::start(|_| (200, json!({"emit": [{"node": "billing", "type": "shipped", "payload": {}}]}))).await;
    let billing = App::start(|_| (422, json!({"error": "no invoice address"}))).await;
    let mut sidecars = Vec::new();
    for (node, app) in [("inventory", &inventory), ("shipping", &shipping), ("billing", &billing)] {
        let port = app.port.to_string();
        sidecars.push(Sidecar::start(&server, "tr", node, &[("CAUSEWAY_APP_PORT", &port)]).await);
    }
    let web = Sidecar::start(&server, "tr", "web", &[]).await;
    Flow { server, web, _sidecars: sidecars, _apps: vec![inventory, shipping, billing] }
}

async fn start(f: &Flow) -> String {
    let (s, a) = post(&http(), &f.web.at("/v1/nodes/inventory/events"), &json!({"type": "order-placed"})).await;
    assert_eq!(s, 202, "{a}");
    a["id"].as_str().unwrap().to_owned()
}

/// Waits until the trace read through `sc` satisfies `done`.
async fn trace_when(sc: &Sidecar, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let c = http();
    eventually(Duration::from_secs(20), "the whole trace", || {
        let (c, url) = (c.clone(), sc.at(&format!("/v1/traces/{id}")));
        let done = &done;
        async move {
            let (s, t) = get(&c, &url).await;
            (s == 200 && done(&t)).then_some(t)
        }
    })
    .await
}

fn admin_args(server: &NatsServer, dir: &TempDir) -> Vec<String> {
    let mut v = vec!["--nats".to_owned(), server.url.clone()];
    if let Some(trust) = server.trust() {
        let p = dir.path().join("admin.creds");
        std::fs::write(&p, trust.admin_creds()).unwrap();
        v.extend(["--creds".to_owned(), p.display().to_string()]);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_hop_flow_with_a_retry_and_a_dead_letter_yields_its_exact_tree() {
    let f = flow(true).await;
    let id = start(&f).await;
    let t = trace_when(&f.web, &id, |t| {
        t["events"] == 3 && t["roots"][0]["children"][0]["children"][0]["outcome"] == "deadLettered"
    })
    .await;
    assert_eq!((&t["correlationId"], &t["truncated"]), (&json!(id), &json!(false)));
    let roots = t["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "{t:#}");
    let placed = &roots[0];
    assert_eq!(
        (&placed["id"], &placed["type"], &placed["sender"], &placed["target"]),
        (&json!(id), &json!("order-placed"), &json!("tr/web"), &json!("node tr/inventory"))
    );
    assert_eq!(
        (&placed["stream"], &placed["sequence"], &placed["lamport"]),
        (&json!("CW_IN_tr_inventory"), &json!(1), &json!(1))
    );
    assert_eq!(placed["outcome"], "delivered", "{t:#}");
    assert_eq!(
        placed["deliveries"],
        json!([{"listener": "reserve", "state": "delivered", "attempts": 2, "status": 500,
                "error": placed["deliveries"][0]["error"].clone()}]),
        "{t:#}"
    );
    assert!(placed["deliveries"][0]["error"].as_str().unwrap().contains("warming up"), "the last failure: {t:#}");

    let reserved = &placed["children"][0];
    assert_eq!(placed["children"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&reserved["type"], &reserved["sender"], &reserved["target"], &reserved["causationId"]),
        (&json!("stock-reserved"), &json!("tr/inventory"), &json!("node tr/shipping"), &json!(id))
    );
    assert_eq!(reserved["deliveries"], json!([{"listener": "ship", "state": "delivered", "attempts": 1}]), "{t:#}");
    assert!(reserved["lamport"].as_u64() > placed["lamport"].as_u64());

    let shipped = &reserved["children"][0];
    assert_eq!(
        (&shipped["type"], &shipped["sender"], &shipped["target"], &shipped["causationId"]),
        (&json!("shipped"), &json!("tr/shipping"), &json!("node tr/billing"), &reserved["id"])
    );
    assert_eq!(shipped["outcome"], "deadLettered");
    let d = &shipped["deliveries"][0];
    assert_eq!(
        (&d["listener"], &d["state"], &d["attempts"], &d["status"]),
        (&json!("bill"), &json!("deadLettered"), &json!(1), &json!(422))
    );
    assert!(d["error"].as_str().unwrap().contains("no invoice address"), "{d}");
    assert_eq!(shipped["children"], json!([]));

    // The same trace from the CLI: as a tree, as JSON, and as a picture.
    let dir = TempDir::new("cw-trace");
    let svg = dir.path().join("trace.svg");
    let mut args =
        vec!["trace".to_owned(), id.clone(), "-n".into(), "tr".into(), "--svg".into(), svg.display().to_string()];
    args.extend(admin_args(&f.server, &dir));
    let r = causeway(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    assert_eq!(lines[0], format!("trace {id} in namespace tr: 3 event(s)"));
    assert!(
        lines[1].starts_with("order-placed  tr/web -> node tr/inventory  CW_IN_tr_inventory#1  lamport 1"),
        "{}",
        r.stdout
    );
    assert!(
        lines[1].contains("delivered to reserve after 2 attempts: 500") && lines[1].contains("warming up"),
        "{}",
        r.stdout
    );
    assert!(
        lines[2].starts_with("└─ stock-reserved  tr/inventory -> node tr/shipping")
            && lines[2].ends_with("delivered to ship"),
        "{}",
        r.stdout
    );
    assert!(lines[3].starts_with("   └─ shipped  tr/shipping -> node tr/billing"), "{}", r.stdout);
    assert!(lines[3].contains("dead-lettered by bill: 422") && lines[3].contains("no invoice address"), "{}", r.stdout);

    let mut json_args = vec!["trace".to_owned(), id.clone(), "-n".into(), "tr".into(), "-o".into(), "json".into()];
    json_args.extend(admin_args(&f.server, &dir));
    let r = causeway(&json_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut from_cli: Value = serde_json::from_str(&r.stdout).unwrap();
    from_cli["truncated"] = json!(false);
    assert_eq!(from_cli, t, "the CLI and the sidecar answer the same document");

    let checked = std::process::Command::new("python3")
        .args(["-c", "import sys, xml.dom.minidom as m; d = m.parse(sys.argv[1]); print(d.documentElement.tagName)"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(checked.status.success(), "well-formed SVG: {}", String::from_utf8_lossy(&checked.stderr));
    assert_eq!(String::from_utf8_lossy(&checked.stdout).trim(), "svg");
    let picture = std::fs::read_to_string(&svg).unwrap();
    for e in [placed, reserved, shipped] {
        let label = format!("{}  (id {})", e["type"].as_str().unwrap(), e["id"].as_str().unwrap());
        assert!(picture.contains(&label), "the picture names {label}");
    }
    assert_eq!(picture.matches("marker-end").count(), 2, "an arrow from each cause");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_traces_are_404_and_a_node_with_tracing_off_records_nothing() {
    let f = flow(false).await;
    let c = http();
    assert_error(get(&c, &f.web.at("/v1/traces/no-such-correlation")).await, 404, "trace_not_found");
    let dir = TempDir::new("cw-trace");
    let mut args = vec!["trace".to_owned(), "no-such-correlation".into(), "-n".into(), "tr".into()];
    args.extend(admin_args(&f.server, &dir));
    let r = causeway(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no trace of correlation id \"no-such-correlation\" in namespace tr"), "{}", r.stderr);
    let r = causeway(&["trace", "x", "-n", "Not_A_Label"]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    let id = start(&f).await;
    // Shipping records nothing: the stock-reserved event shows (its sender recorded it) but
    // stays pending, and the shipped event shows only through billing's dead-letter record.
    let t = trace_when(&f.web, &id, |t| {
        t["events"] == 3 && t["roots"][0]["children"][0]["children"][0]["outcome"] == "deadLettered"
    })
    .await;
    let reserved = &t["roots"][0]["children"][0];
    assert_eq!(
        (&reserved["type"], &reserved["outcome"], &reserved["deliveries"]),
        (&json!("stock-reserved"), &json!("pending"), &json!([])),
        "{t:#}"
    );
    // Nothing in the trace stream was written by shipping.
    let js = async_nats::jetstream::new(f.server.client().await);
    let stream = js.get_stream("CW_TR_tr").await.unwrap();
    let by_shipping = stream.direct_get_last_for_subject("cw.tr.trace.*.tr.shipping").await;
    assert!(by_shipping.is_err(), "shipping wrote a trace record: {by_shipping:?}");
    let by_billing = stream.direct_get_last_for_subject("cw.tr.trace.*.tr.billing").await;
    assert!(by_billing.is_ok(), "billing records as usual");
}

// ---------------------------------------------------------------------------------------------
// Pull listeners: the app's acks, naks and terms through `POST /v1/acks`.

fn pull_manifests(worker_trace: bool) -> String {
    format!(
        r#"
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: web, namespace: tp}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: worker, namespace: tp}}
spec: {{trace: {{enabled: {worker_trace}}}}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: work, namespace: tp}}
spec: {{node: worker, source: {{inbox: worker}}, delivery: {{mode: pull, ackWait: 30s, maxDeliver: 2}}}}
"#
    )
}

/// `web` sends into `worker`'s inbox; `worker`'s app fetches from pull listener `work`.
struct Pull {
    server: NatsServer,
    web: Sidecar,
    worker: Sidecar,
}

async fn pull_flow(worker_trace: bool) -> Pull {
    let server = NatsServer::start();
    apply(&server, &pull_manifests(worker_trace)).await;
    let web = Sidecar::start(&server, "tp", "web", &[]).await;
    let worker = Sidecar::start(&server, "tp", "worker", &[]).await;
    Pull { server, web, worker }
}

/// Sends one event to `worker`; its id, which is its correlation id.
async fn send_work(p: &Pull, event_type: &str) -> String {
    let (s, a) = post(&http(), &p.web.at("/v1/nodes/worker/events"), &json!({"type": event_type})).await;
    assert_eq!(s, 202, "{a}");
    a["id"].as_str().unwrap().to_owned()
}

/// Fetches exactly one event: `(id, ackToken, attempt)`.
async fn fetch_one(p: &Pull) -> (String, String, u64) {
    let (s, a) = post(&http(), &p.worker.at("/v1/listeners/work/fetch?max=1&waitMs=5000"), &Value::Null).await;
    assert_eq!(s, 200, "{a}");
    let e = &a["events"][0];
    assert!(e.is_object(), "one event: {a}");
    (e["id"].as_str().unwrap().into(), e["ackToken"].as_str().unwrap().into(), e["attempt"].as_u64().unwrap())
}

async fn answer(p: &Pull, entry: Value) {
    let (s, a) = post(&http(), &p.worker.at("/v1/acks"), &json!([entry])).await;
    assert_eq!((s, &a["processed"]), (200, &json!(1)), "{a}");
}

/// The one delivery of the single event of trace `id`, once it satisfies `done`.
async fn pulled_delivery(p: &Pull, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t = trace_when(&p.web, id, |t| t["events"] == 1 && done(&t["roots"][0])).await;
    let e = &t["roots"][0];
    assert_eq!((&e["id"], &e["target"]), (&json!(id), &json!("node tp/worker")), "{t:#}");
    assert_eq!(e["deliveries"].as_array().map(Vec::len), Some(1), "{t:#}");
    e.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_event_naked_once_then_acked_shows_retried_then_delivered() {
    let p = pull_flow(true).await;
    let id = send_work(&p, "job").await;
    let (got, token, attempt) = fetch_one(&p).await;
    assert_eq!((got.as_str(), attempt), (id.as_str(), 1));
    // Fetched but not answered yet: nobody has said what happened to it.
    let t = trace_when(&p.web, &id, |t| t["events"] == 1).await;
    assert_eq!(t["roots"][0]["outcome"], "pending", "{t:#}");

    answer(&p, json!({"token": token, "result": "nak", "delayMs": 0, "reason": "database busy"})).await;
    let e = pulled_delivery(&p, &id, |e| e["outcome"] == "retrying").await;
    assert_eq!(
        e["deliveries"][0],
        json!({"listener": "work", "state": "retrying", "attempts": 1, "error": "the app naked it: database busy"})
    );

    let (again, token, attempt) = fetch_one(&p).await;
    assert_eq!((again.as_str(), attempt), (id.as_str(), 2), "the nak let it come back at once");
    answer(&p, json!({"token": token, "result": "ack"})).await;
    let e = pulled_delivery(&p, &id, |e| e["outcome"] == "delivered").await;
    assert_eq!(
        e["deliveries"][0],
        json!({"listener": "work", "state": "delivered", "attempts": 2, "error": "the app naked it: database busy"}),
        "delivered on the second attempt, after the first one's failure"
    );
    assert_eq!(
        (&e["stream"], &e["sequence"], &e["type"], &e["sender"]),
        (&json!("CW_IN_tp_worker"), &json!(1), &json!("job"), &json!("tp/web"))
    );

    // The CLI tells the same.
    let dir = TempDir::new("cw-trace");
    let mut args = vec!["trace".to_owned(), id.clone(), "-n".into(), "tp".into()];
    args.extend(admin_args(&p.server, &dir));
    let r = causeway(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("delivered to work after 2 attempts: the app naked it: database busy"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_and_a_nak_on_the_last_attempt_show_as_given_up() {
    let p = pull_flow(true).await;
    let termed = send_work(&p, "bad-job").await;
    let (got, token, _) = fetch_one(&p).await;
    assert_eq!(got, termed);
    answer(&p, json!({"token": token, "result": "term", "reason": "no such customer"})).await;
    let e = pulled_delivery(&p, &termed, |e| e["outcome"] == "deadLettered").await;
    assert_eq!(
        e["deliveries"][0],
        json!({"listener": "work", "state": "deadLettered", "attempts": 1,
               "error": "the app terminated it: no such customer"})
    );

    // maxDeliver is 2: a nak on the second attempt ends it, as JetStream delivers it no more.
    let exhausted = send_work(&p, "flaky-job").await;
    let (_, token, _) = fetch_one(&p).await;
    answer(&p, json!({"token": token, "result": "nak"})).await;
    let e = pulled_delivery(&p, &exhausted, |e| e["outcome"] == "retrying").await;
    assert_eq!(e["deliveries"][0]["error"], "the app naked it");
    let (got, token, attempt) = fetch_one(&p).await;
    assert_eq!((got.as_str(), attempt), (exhausted.as_str(), 2));
    answer(&p, json!({"token": token, "result": "nak"})).await;
    let e = pulled_delivery(&p, &exhausted, |e| e["outcome"] == "deadLettered").await;
    assert_eq!(
        e["deliveries"][0],
        json!({"listener": "work", "state": "deadLettered", "attempts": 2,
               "error": "the app naked its last allowed attempt (maxDeliver 2)"})
    );
    let (s, a) = post(&http(), &p.worker.at("/v1/listeners/work/fetch?max=1&waitMs=1500"), &Value::Null).await;
    assert_eq!((s, &a["events"]), (200, &json!([])), "JetStream indeed delivers it no more: {a}");

    // A misspelt field is refused, not ignored.
    let id = send_work(&p, "job").await;
    let (got, token, _) = fetch_one(&p).await;
    assert_eq!(got, id);
    let (s, a) = post(&http(), &p.worker.at("/v1/acks"), &json!([{"token": token, "result": "nak", "why": "x"}])).await;
    assert_error((s, a), 400, "invalid_ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_listener_of_a_node_with_tracing_off_records_nothing() {
    let p = pull_flow(false).await;
    let id = send_work(&p, "job").await;
    let (_, token, _) = fetch_one(&p).await;
    assert_eq!(token.matches('.').count(), 1, "no trace fields ride in the token: {token}");
    answer(&p, json!({"token": token, "result": "nak", "delayMs": 0})).await;
    let (_, token, attempt) = fetch_one(&p).await;
    assert_eq!(attempt, 2);
    answer(&p, json!({"token": token, "result": "ack"})).await;

    // web recorded the send; worker recorded none of what its app did.
    let t = trace_when(&p.web, &id, |t| t["events"] == 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let js = async_nats::jetstream::new(p.server.client().await);
    let stream = js.get_stream("CW_TR_tp").await.unwrap();
    let by_worker = stream.direct_get_last_for_subject("cw.tp.trace.*.tp.worker").await;
    assert!(by_worker.is_err(), "worker wrote a trace record: {by_worker:?}");
    let (s, t2) = get(&http(), &p.web.at(&format!("/v1/traces/{id}"))).await;
    assert_eq!(s, 200);
    assert_eq!((&t2["roots"][0]["outcome"], &t2["roots"][0]["deliveries"]), (&json!("pending"), &json!([])), "{t:#}");
}

/// An inbox event whose `sender` disagrees with the sender its subject proves is never handed to
/// the app by a fetch: it is listed in `skipped` and traced as given up, as push delivery does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_pulled_event_shows_as_dead_lettered() {
    let p = pull_flow(true).await;
    let forged: causeway_api::envelope::Envelope = serde_json::from_value(json!({
        "id": "forged-1", "type": "job", "payload": {}, "time": "2026-11-25T12:00:00Z",
        "sender": "tp/billing", "correlationId": "forged-1", "lamport": 7
    }))
    .unwrap();
    let js = async_nats::jetstream::new(p.server.client().await);
    js.publish("cw.tp.to.worker.tp.web.job", forged.encode().into()).await.unwrap().await.unwrap();

    let (s, a) = post(&http(), &p.worker.at("/v1/listeners/work/fetch?max=1&waitMs=5000"), &Value::Null).await;
    assert_eq!((s, &a["events"]), (200, &json!([])), "{a}");
    assert!(a["skipped"][0]["error"].as_str().is_some_and(|e| e.starts_with("forged_sender")), "{a}");
    let e = pulled_delivery(&p, "forged-1", |e| e["outcome"] == "deadLettered").await;
    assert_eq!((&e["type"], &e["sender"], &e["lamport"]), (&json!("job"), &json!("tp/billing"), &json!(7)));
    let d = &e["deliveries"][0];
    assert_eq!((&d["listener"], &d["attempts"]), (&json!("work"), &json!(1)), "{d}");
    assert!(d["error"].as_str().is_some_and(|e| e.starts_with("forged_sender")), "{d}");
}
