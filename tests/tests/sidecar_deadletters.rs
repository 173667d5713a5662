//! Dead letters replayed after a fix, through the real sidecar, the real `causeway` CLI and a
//! real app: every event handled exactly once, replays delivered once and only to their own
//! listener, filters, `deadLetter.autoReplay` with its delay and cap, and precise errors.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use causeway_tests::{NatsServer, causeway, eventually};
use serde_json::{Value, json};
use support::*;

/// Store `orders` read by two listeners of two nodes: `reserve` (inventory, with a dead
/// letter) and `audit-all` (audit, without one); `dead` keeps dead letters.
fn shop(auto: &str) -> String {
    format!(
        r#"{SHOP}---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {{name: dead, namespace: shop}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: audit, namespace: shop}}
spec: {{}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: reserve, namespace: shop}}
spec:
  node: inventory
  source: {{store: orders}}
  delivery: {{mode: push, path: /events, timeout: 1s, backoff: [100ms]}}
  deadLetter: {{store: dead, subject: reserve{auto}}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: audit-all, namespace: shop}}
spec:
  node: audit
  source: {{store: orders}}
  delivery: {{mode: push, path: /audit, timeout: 1s}}
"#
    )
}

/// A pull listener of node `inventory` on `source` (`store: X` or `inbox: N`) from its start,
/// with its dead letters on subject `dead_letter` of store `dead`, if given.
fn pull_listener(name: &str, source: &str, dead_letter: Option<&str>) -> String {
    let dl = dead_letter.map(|d| format!("\n  deadLetter: {{store: dead, subject: {d}}}")).unwrap_or_default();
    format!(
        "---\napiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  node: inventory\n  source: {{{source}}}\n  startAt: all\n  delivery: {{mode: pull}}{dl}\n"
    )
}

/// How many 2xx answers the app gave per event id.
fn handled(app: &App, ok: &dyn Fn(&Received) -> bool) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in app.received.lock().unwrap().iter().filter(|r| ok(r)) {
        *m.entry(r.body["id"].as_str().unwrap_or("").to_owned()).or_insert(0) += 1;
    }
    m
}

async fn append(c: &reqwest::Client, web: &Sidecar, subject: &str, body: Value) -> String {
    let (s, a) = post(c, &web.at(&format!("/v1/stores/orders/subjects/{subject}/events")), &body).await;
    assert_eq!(s, 202, "{a}");
    a["id"].as_str().unwrap().to_owned()
}

async fn dead_letters(c: &reqwest::Client, sc: &Sidecar, query: &str) -> Vec<Value> {
    let (s, v) = get(c, &sc.at(&format!("/v1/listeners/reserve/deadletters{query}"))).await;
    assert_eq!(s, 200, "{v}");
    v["deadLetters"].as_array().cloned().unwrap()
}

async fn wait_dead_letters(c: &reqwest::Client, sc: &Sidecar, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(15), &format!("{n} dead letters"), || async move {
        Some(dead_letters(c, sc, "").await).filter(|d| d.len() == n)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_fixed_after_422s_handles_every_event_once_after_replay() {
    let server = NatsServer::start();
    apply(&server, &shop("")).await;
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let app =
        App::start(
            move |_| {
                if b.load(Ordering::SeqCst) { (422, json!({"error": "no stock table"})) } else { (200, json!({})) }
            },
        )
        .await;
    let audit_app = App::start(|_| (200, json!({}))).await;
    let (p, ap) = (app.port.to_string(), audit_app.port.to_string());
    let inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &p)]).await;
    let audit = Sidecar::start(&server, "shop", "audit", &[("CAUSEWAY_APP_PORT", &ap)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();

    let mut ids = Vec::new();
    for i in 0..4 {
        let id = append(
            &c,
            &web,
            &format!("order-{i}"),
            json!({"type": "order-placed", "payload": {"n": i}, "correlationId": format!("corr-{i}")}),
        )
        .await;
        ids.push(id);
    }
    let dls = wait_dead_letters(&c, &inv, 4).await;
    assert!(dls.iter().all(|d| d["deadLetter"]["status"] == 422 && d["replayed"].is_null()), "{dls:?}");
    assert!(dls[0]["deadLetter"]["error"].as_str().unwrap().contains("no stock table"));
    eventually(Duration::from_secs(10), "audit got all four", || async { (audit_app.count() == 4).then_some(()) })
        .await;

    // The fix.
    broken.store(false, Ordering::SeqCst);
    let seqs: Vec<u64> = dls.iter().map(|d| d["sequence"].as_u64().unwrap()).collect();

    // Two through the route, the rest through the CLI.
    for s in &seqs[..2] {
        let (st, r) = post(&c, &inv.at(&format!("/v1/listeners/reserve/deadletters/{s}/replay")), &json!({})).await;
        assert_eq!(st, 202, "{r}");
        assert_eq!((&r["alreadyReplayed"], &r["stream"]), (&json!(false), &json!("CW_ES_shop_orders")), "{r}");
    }
    // Replaying again is a no-op, at once and after delivery.
    let (st, again) =
        post(&c, &inv.at(&format!("/v1/listeners/reserve/deadletters/{}/replay", seqs[0])), &json!({})).await;
    assert_eq!((st, &again["alreadyReplayed"]), (200, &json!(true)), "{again}");
    let run = causeway(&["deadletters", "replay", "-n", "shop", "reserve", "--all", "--nats", &server.url]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.stdout.matches(" replayed as CW_ES_shop_orders#").count(), 2, "{}", run.stdout);
    let run =
        causeway(&["deadletters", "replay", "-n", "shop", "reserve", &seqs[3].to_string(), "--nats", &server.url]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("already replayed"), "{}", run.stdout);

    let ok =
        |r: &Received| r.headers.get("cw-listener").is_some_and(|l| l == "reserve") && r.body["replayOf"].is_object();
    eventually(Duration::from_secs(15), "every event handled after replay", || async {
        (handled(&app, &ok).len() == 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = handled(&app, &ok);
    for id in &ids {
        assert_eq!(got.get(id), Some(&1), "event {id} handled exactly once: {got:?}");
    }
    // Replays keep the id and causal context, and say where they came from.
    let replays: Vec<Received> = app.received.lock().unwrap().iter().filter(|r| ok(r)).cloned().collect();
    for r in &replays {
        let i = ids.iter().position(|id| r.body["id"] == *id.as_str()).unwrap();
        assert_eq!(r.body["correlationId"], format!("corr-{i}"));
        assert_eq!(r.body["subject"], format!("order-{i}"));
        assert_eq!(r.body["replayOf"]["stream"], "CW_ES_shop_dead");
        assert_eq!(r.body["replayOf"]["count"], 1);
        assert!(seqs.contains(&r.body["replayOf"]["sequence"].as_u64().unwrap()));
        assert_eq!(r.headers["cw-delivery-attempt"], "1");
    }
    // Nobody else saw the replays: not the other listener, not a load of the store.
    assert_eq!(audit_app.count(), 4, "the other listener of the store gets no replay");
    assert!(audit_app.received.lock().unwrap().iter().all(|r| r.body["replayOf"].is_null()));
    assert_eq!(load(&c, &web, "orders", "%3E").await.len(), 4, "replays are not events of the store");
    // Marked, not deleted.
    assert_eq!(dead_letters(&c, &inv, "?replayed=false").await.len(), 0);
    let marked = dead_letters(&c, &inv, "?replayed=true").await;
    assert_eq!(marked.len(), 4);
    let by: Vec<&str> = marked.iter().map(|d| d["replayed"]["by"].as_str().unwrap()).collect();
    assert_eq!(by.iter().filter(|b| b.ends_with("API")).count(), 2, "{by:?}");
    assert_eq!(by.iter().filter(|b| **b == "causeway CLI").count(), 2, "{by:?}");
    drop((inv, audit, web));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_show_delete_and_precise_errors() {
    let server = NatsServer::start();
    let extra = pull_listener("plain", "store: orders", None);
    apply(&server, &format!("{}{extra}", shop(""))).await;
    let app = App::start(|r| match r.body["type"].as_str() {
        Some("order-placed") => (422, json!({"error": "no items"})),
        _ => (400, json!({"error": "malformed refund"})),
    })
    .await;
    let p = app.port.to_string();
    let inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &p)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let placed = append(&c, &web, "o-1", json!({"type": "order-placed"})).await;
    append(&c, &web, "o-2", json!({"type": "order-placed"})).await;
    append(&c, &web, "o-3", json!({"type": "refund.asked", "payload": {"big": "x".repeat(10)}})).await;
    let all = wait_dead_letters(&c, &inv, 3).await;

    // Filters.
    assert_eq!(dead_letters(&c, &inv, "?type=order-placed").await.len(), 2);
    assert_eq!(dead_letters(&c, &inv, "?type=refund.*").await.len(), 1);
    assert_eq!(dead_letters(&c, &inv, "?status=400").await.len(), 1);
    assert_eq!(dead_letters(&c, &inv, "?error=NO%20ITEMS").await.len(), 2);
    assert_eq!(dead_letters(&c, &inv, "?since=1h").await.len(), 3);
    assert_eq!(dead_letters(&c, &inv, "?until=1h").await.len(), 0);
    assert_eq!(dead_letters(&c, &inv, "?since=2999-01-01T00:00:00Z").await.len(), 0);
    assert_eq!(dead_letters(&c, &inv, "?limit=1").await.len(), 1);
    let after = all[0]["sequence"].as_u64().unwrap();
    assert_eq!(dead_letters(&c, &inv, &format!("?after={after}")).await.len(), 2);
    let url = &server.url;
    let run =
        causeway(&["deadletters", "list", "-n", "shop", "reserve", "--status", "422", "-o", "json", "--nats", url]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listed: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.len(), 2);
    let run = causeway(&["deadletters", "list", "-n", "shop", "reserve", "--type", "refund.*", "--nats", url]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("ID") && run.stdout.contains("malformed refund"), "{}", run.stdout);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);

    // Show, by sequence and by event id, whole.
    let (s, one) = get(&c, &inv.at(&format!("/v1/listeners/reserve/deadletters/{placed}"))).await;
    assert_eq!(s, 200, "{one}");
    assert_eq!((&one["id"], &one["sequence"]), (&json!(placed), &all[0]["sequence"]));
    assert_eq!(one["correlationId"], placed);
    let run = causeway(&["deadletters", "show", "-n", "shop", "reserve", &after.to_string(), "--nats", url]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("no items") && run.stdout.contains(&placed) && run.stdout.contains("Correlation:"),
        "{}",
        run.stdout
    );

    // Precise errors: route and CLI.
    let dl = |p: &str| inv.at(&format!("/v1/listeners/{p}"));
    assert_error(get(&c, &dl("nope/deadletters")).await, 404, "unknown_listener");
    assert_error(get(&c, &dl("plain/deadletters")).await, 409, "no_dead_letter");
    assert_error(get(&c, &dl("reserve/deadletters/999")).await, 404, "unknown_dead_letter");
    assert_error(get(&c, &dl("reserve/deadletters/not-an-id")).await, 404, "unknown_dead_letter");
    assert_error(post(&c, &dl("reserve/deadletters/999/replay"), &json!({})).await, 404, "unknown_dead_letter");
    assert_error(post(&c, &dl("plain/deadletters/replay"), &json!({})).await, 409, "no_dead_letter");
    assert_error(get(&c, &dl("reserve/deadletters?status=abc")).await, 400, "invalid_query");
    assert_error(get(&c, &dl("reserve/deadletters?since=yesterday")).await, 400, "invalid_query");
    assert_error(get(&c, &dl("reserve/deadletters?stauts=422")).await, 400, "unknown_parameter");
    assert_error(post(&c, &dl("reserve/deadletters/1/replay?delte=true"), &json!({})).await, 400, "unknown_parameter");
    let code = |args: &[&str]| {
        let mut a = vec!["deadletters"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--nats", url]);
        let r = causeway(&a);
        assert!(!r.stderr.is_empty() || r.code == 0);
        r.code
    };
    assert_eq!(code(&["list", "-n", "shop", "nope"]), 3);
    assert_eq!(code(&["list", "-n", "shop", "plain"]), 4);
    assert_eq!(code(&["show", "-n", "shop", "reserve", "999"]), 3);
    assert_eq!(code(&["replay", "-n", "shop", "reserve"]), 2, "a replay names what it replays");
    assert_eq!(code(&["list", "-n", "shop", "reserve", "--since", "yesterday"]), 2);
    assert_eq!(code(&["replay", "-n", "shop", "reserve", "999"]), 3);

    if causeway_tests::secure_suite() {
        // A node's own credential may not delete from a store (that right reaches every event
        // of it): refused up front with 403, and nothing is replayed.
        let (s, r) = post(&c, &dl("reserve/deadletters/replay?type=refund.*&delete=true"), &json!({})).await;
        assert_eq!((s, &r["error"]), (403, &json!("forbidden")), "{r}");
        assert!(r["message"].as_str().unwrap().contains("may not delete"), "{r}");
        let left = dead_letters(&c, &inv, "?type=refund.*").await;
        assert_eq!(left.len(), 1, "still there");
        assert_eq!(left[0]["replayed"], Value::Null, "not replayed: {}", left[0]);
        return;
    }
    // Replay by filter with delete: the dead letter is gone, the others stay.
    let (s, r) = post(&c, &dl("reserve/deadletters/replay?type=refund.*&delete=true"), &json!({})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["replayed"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["replayed"][0]["deleted"], true);
    let gone = r["replayed"][0]["deadLetter"].as_u64().unwrap();
    assert_error(get(&c, &dl(&format!("reserve/deadletters/{gone}"))).await, 404, "unknown_dead_letter");
    // It fails again (400): a new dead letter, whose replayOf says it was replayed once.
    let again = eventually(Duration::from_secs(10), "the replay dead-lettered again", || async {
        dead_letters(&c, &inv, "?type=refund.*").await.into_iter().next()
    })
    .await;
    assert_eq!(again["replayOf"]["count"], 1, "{again}");
    assert_eq!(again["replayOf"]["sequence"], gone);
    assert_eq!(again["payload"]["big"], "x".repeat(10));
    assert_eq!(dead_letters(&c, &inv, "?type=order-placed").await.len(), 2, "the others stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_replay_waits_for_the_delay_and_stops_at_the_cap() {
    let server = NatsServer::start();
    apply(&server, &shop(", autoReplay: {after: 2s, max: 2}")).await;
    // `later` fails its first delivery and succeeds after; `never` always fails.
    let seen_later = Arc::new(AtomicBool::new(false));
    let s = seen_later.clone();
    let app = App::start(move |r| match r.body["type"].as_str() {
        Some("later") if !s.swap(true, Ordering::SeqCst) => (422, json!({"error": "not yet"})),
        Some("later") => (200, json!({})),
        _ => (422, json!({"error": "never"})),
    })
    .await;
    let p = app.port.to_string();
    let inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &p)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let started = Instant::now();
    let later = append(&c, &web, "a", json!({"type": "later"})).await;
    let never = append(&c, &web, "b", json!({"type": "never"})).await;
    let times = |id: &str| app.received.lock().unwrap().iter().filter(|r| r.body["id"] == id).count();
    eventually(Duration::from_secs(5), "both tried once", || async {
        (times(&later) == 1 && times(&never) == 1).then_some(())
    })
    .await;
    // Not before the delay.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!((times(&later), times(&never)), (1, 1), "replayed before autoReplay.after");
    eventually(Duration::from_secs(10), "later handled on its replay", || async { (times(&later) == 2).then_some(()) })
        .await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    // `never`: first try plus two replays, then it stays in the dead letter.
    eventually(Duration::from_secs(20), "never tried three times", || async { (times(&never) == 3).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(times(&never), 3, "the cap holds");
    assert_eq!(times(&later), 2, "a handled event is not replayed again");
    let dls = dead_letters(&c, &inv, "?type=never").await;
    let counts: Vec<u64> = dls.iter().map(|d| d["replayOf"]["count"].as_u64().unwrap_or(0)).collect();
    assert_eq!(counts, vec![0, 1, 2], "{dls:?}");
    assert!(dls[2]["replayed"].is_null() && dls[0]["replayed"]["by"].as_str().unwrap().ends_with("autoReplay"));
    let pending = dead_letters(&c, &inv, "?replayed=false").await;
    assert_eq!(pending.len(), 1, "only the capped one is left: {pending:?}");
}

/// A pull listener's app that answers `term` gives the event up: it goes to the listener's dead
/// letter with the app's reason (once, however often the term is sent), can be replayed after a
/// fix and is then fetched again with its id and causal context; without a dead letter a term
/// only drops the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_term_dead_letters_the_event_for_replay() {
    let server = NatsServer::start();
    let extra = [
        pull_listener("picker", "store: orders", Some("picker")),
        pull_listener("plain", "store: orders", None),
        pull_listener("inbox-pull", "inbox: inventory", Some("inbox-pull")),
    ]
    .concat();
    apply(&server, &format!("{}{extra}", shop(""))).await;
    let app = App::start(|_| (200, json!({}))).await;
    let p = app.port.to_string();
    let inv = Sidecar::start(&server, "shop", "inventory", &[("CAUSEWAY_APP_PORT", &p)]).await;
    let web = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let bad = append(
        &c,
        &web,
        "o-1",
        json!({"type": "order-placed", "payload": {"sku": "zz-9"}, "correlationId": "corr-term"}),
    )
    .await;
    let good = append(&c, &web, "o-2", json!({"type": "order-placed", "payload": {"sku": "a-1"}})).await;
    let fetch = |l: &'static str| {
        let (c, url) = (c.clone(), inv.at(&format!("/v1/listeners/{l}/fetch?max=10&waitMs=2000")));
        async move {
            let (s, v) = post(&c, &url, &json!({})).await;
            assert_eq!(s, 200, "{v}");
            v["events"].as_array().cloned().unwrap()
        }
    };
    let token = |evs: &[Value], id: &str| {
        evs.iter().find(|e| e["id"] == id).unwrap_or_else(|| panic!("{id} fetched: {evs:?}"))["ackToken"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let evs = fetch("picker").await;
    assert_eq!(evs.len(), 2, "{evs:?}");
    let (t_bad, t_good) = (token(&evs, &bad), token(&evs, &good));
    let acks = json!([
        {"token": t_bad, "result": "term", "reason": "unknown sku zz-9"},
        {"token": t_good, "result": "ack"},
    ]);
    let (s, r) = post(&c, &inv.at("/v1/acks"), &acks).await;
    assert_eq!((s, &r["processed"]), (200, &json!(2)), "{r}");
    // The same term again (a client retrying) stores no second dead letter.
    let (s, r) = post(&c, &inv.at("/v1/acks"), &json!([{"token": t_bad, "result": "term"}])).await;
    assert_eq!(s, 200, "{r}");

    let list = |c: reqwest::Client, url: String| async move {
        let (s, v) = get(&c, &url).await;
        assert_eq!(s, 200, "{v}");
        v["deadLetters"].as_array().cloned().unwrap()
    };
    let dls = list(c.clone(), inv.at("/v1/listeners/picker/deadletters")).await;
    assert_eq!(dls.len(), 1, "one dead letter, for the termed event only: {dls:?}");
    let dl = &dls[0];
    assert_eq!(
        (&dl["id"], &dl["correlationId"], &dl["payload"]["sku"]),
        (&json!(bad), &json!("corr-term"), &json!("zz-9"))
    );
    let error = dl["deadLetter"]["error"].as_str().unwrap();
    assert!(error.contains("terminated") && error.contains("unknown sku zz-9"), "{error}");
    assert_eq!(dl["deadLetter"]["attempts"], 1, "{dl}");
    assert_eq!(dl["deadLetter"]["status"], Value::Null, "{dl}");
    assert!(fetch("picker").await.is_empty(), "termed and acked events are not fetched again");

    // After the fix: replayed, fetched again with its id and context, acked; marked replayed.
    let seq = dl["sequence"].as_u64().unwrap();
    let (s, r) = post(&c, &inv.at(&format!("/v1/listeners/picker/deadletters/{seq}/replay")), &json!({})).await;
    assert_eq!(s, 202, "{r}");
    let again = fetch("picker").await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((&again[0]["id"], &again[0]["correlationId"]), (&json!(bad), &json!("corr-term")));
    assert_eq!(again[0]["replayOf"]["sequence"], seq, "{}", again[0]);
    let (s, r) = post(&c, &inv.at("/v1/acks"), &json!([{"token": token(&again, &bad), "result": "ack"}])).await;
    assert_eq!(s, 200, "{r}");
    let dls = list(c.clone(), inv.at("/v1/listeners/picker/deadletters?replayed=true")).await;
    assert_eq!(dls.len(), 1, "marked replayed, not deleted: {dls:?}");

    // A listener without a dead letter: a term drops the event and writes nothing anywhere.
    let plain = fetch("plain").await;
    assert_eq!(plain.len(), 2, "{plain:?}");
    let (s, r) = post(&c, &inv.at("/v1/acks"), &json!([{"token": token(&plain, &bad), "result": "term"}])).await;
    assert_eq!(s, 200, "{r}");
    let all = list(c.clone(), inv.at("/v1/listeners/picker/deadletters")).await;
    assert_eq!(all.len(), 1, "the other listener's term wrote no dead letter: {all:?}");

    // An inbox source too (under node credentials: the node reads its own inbox back).
    let (s, sent) =
        post(&c, &web.at("/v1/nodes/inventory/events"), &json!({"type": "restock", "payload": {"n": 3}})).await;
    assert_eq!(s, 202, "{sent}");
    let evs = fetch("inbox-pull").await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    let id = sent["id"].as_str().unwrap();
    let (s, r) = post(&c, &inv.at("/v1/acks"), &json!([{"token": token(&evs, id), "result": "term"}])).await;
    assert_eq!(s, 200, "{r}");
    let dls = list(c.clone(), inv.at("/v1/listeners/inbox-pull/deadletters")).await;
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(
        (&dls[0]["id"], &dls[0]["sender"], &dls[0]["payload"]["n"]),
        (&json!(id), &json!("shop/web"), &json!(3))
    );
    assert_eq!(dls[0]["deadLetter"]["error"], "the app terminated it");
    drop((inv, web));
}
