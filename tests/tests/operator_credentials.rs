//! The operator issues every Node its own NATS credential (docs/security.md): a real JWT-mode
//! nats-server, the Kubernetes API emulator, the real `causeway operator` with an account
//! signing key, and the real sidecar running on the credential the operator put in the Secret.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::time::Duration;

use async_nats::ConnectOptions;
use base64::Engine;
use causeway_api::{DnsLabel, creds::read_claims, naming};
use causeway_tests::{KubeEmulator, NatsServer, OperatorOptions, TempDir, eventually};
use serde_json::{Value, json};
use support::{Sidecar, get, http, post};

const NS: &str = "shop";

const MANIFESTS: &str = r#"
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: web, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: inventory, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: reserve, namespace: shop}
spec:
  node: inventory
  source: {inbox: inventory}
  delivery: {mode: pull}
"#;

const WEB_LISTENER: &str = r#"
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: history, namespace: shop}
spec:
  node: web
  source: {store: orders}
  startAt: all
  delivery: {mode: pull}
"#;

struct Setup {
    nats: NatsServer,
    emu: KubeEmulator,
    dir: TempDir,
    operator: causeway_tests::Operator,
}

fn start() -> Setup {
    let nats = NatsServer::start_secure();
    let trust = nats.trust().expect("secure").clone();
    let emu = KubeEmulator::start();
    emu.create_namespace(NS);
    let dir = TempDir::new("cw-opcreds");
    let admin = dir.path().join("admin.creds");
    std::fs::write(&admin, trust.admin_creds()).unwrap();
    let mut operator = OperatorOptions::new(&emu.kubeconfig(), &nats.url)
        .flag("--creds", &admin.display().to_string())
        .flag("--nats-account-key", &trust.dir().join("account-signing.nk").display().to_string())
        .flag("--nats-account", &trust.account())
        .flag("--credentials-ttl", "10m")
        .flag("--resync", "5s")
        .switch("--no-leader-election")
        .switch("--no-webhook")
        .start();
    operator.wait_ready(Duration::from_secs(30));
    Setup { nats, emu, dir, operator }
}

impl Setup {
    fn secret(&self, node: &str) -> Option<Value> {
        let r = self.emu.kubectl(&["get", "secret", &format!("causeway-node-{node}"), "-n", NS, "-o", "json"]);
        (r.code == 0).then(|| serde_json::from_str(&r.stdout).unwrap())
    }

    /// The Secret's credential, once it exists.
    async fn creds(&self, node: &str) -> (String, Value) {
        eventually(Duration::from_secs(30), &format!("the Secret of node {node}"), || async {
            let s = self.secret(node)?;
            let b64 = s["data"][naming::NODE_CREDS_KEY].as_str()?;
            let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()?;
            Some((text, s))
        })
        .await
    }

    fn node_status(&self, node: &str) -> Value {
        let r = self.emu.kubectl(&["get", "node.causeway.dev", node, "-n", NS, "-o", "json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str::<Value>(&r.stdout).unwrap()["status"].clone()
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

async fn node_client(nats: &NatsServer, creds: &str, node: &str) -> async_nats::Client {
    let (ns, n) = (DnsLabel::new(NS).unwrap(), DnsLabel::new(node).unwrap());
    ConnectOptions::new()
        .credentials(creds)
        .unwrap()
        .custom_inbox_prefix(naming::reply_inbox_prefix(&ns, &n))
        .connect(&nats.url)
        .await
        .expect("a node credential connects")
}

/// Each Node gets a Secret with a credential that NATS accepts, whose permissions are its own:
/// it can send as itself and is refused sending as another node; the Node's status and an Event
/// say so; the real sidecar runs on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_gets_its_own_credential_and_the_sidecar_runs_on_it() {
    let s = start();
    let r = s.emu.kubectl_apply_yaml(MANIFESTS);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (web, secret) = s.creds("web").await;
    let (inventory, _) = s.creds("inventory").await;
    assert_ne!(web, inventory);
    assert_eq!(secret["metadata"]["labels"]["app.kubernetes.io/managed-by"], "causeway-operator");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "Node", "collected with its Node");
    let (jwt, _) = causeway_api::creds::parse_creds(&web).unwrap();
    let claims = read_claims(&jwt).unwrap();
    assert_eq!(claims.name, "shop/web");
    let ttl = claims.expires.unwrap() - claims.issued_at.unwrap();
    assert_eq!(ttl, 600, "--credentials-ttl 10m");
    assert!(claims.nats.publish.permits("cw.shop.to.inventory.shop.web.x"));
    assert!(!claims.nats.publish.permits("cw.shop.to.inventory.shop.inventory.x"), "never as another node");
    assert!(!claims.nats.publish.permits("$KV.CW_ST_shop_inventory.k"));

    // The status names it, Ready stays true, an Event tells.
    let status = eventually(Duration::from_secs(30), "web's status shows its credential", || async {
        let st = s.node_status("web");
        (st["credentials"]["secret"] == "causeway-node-web").then_some(st)
    })
    .await;
    assert_eq!(status["credentials"]["user"], json!(claims.sub));
    let ready = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["status"], "True", "{status}");
    let events = s.emu.kubectl_json(&["get", "events.events.k8s.io", "-n", NS, "-o", "json"]);
    assert!(events["items"].as_array().unwrap().iter().any(|e| e["reason"] == "CredentialsIssued"), "{events}");

    // NATS itself holds it to its rights.
    let c = node_client(&s.nats, &web, "web").await;
    let js = async_nats::jetstream::new(c.clone());
    let ack = js.publish("cw.shop.to.inventory.shop.web.order-placed", "{}".into()).await.unwrap().await;
    assert!(ack.is_ok(), "a send as itself is stored: {ack:?}");
    let forged = tokio::time::timeout(
        Duration::from_secs(1),
        js.publish("cw.shop.to.inventory.shop.inventory.order-placed", "{}".into()).await.unwrap(),
    )
    .await;
    assert!(!matches!(forged, Ok(Ok(_))), "a send as another node is never stored: {forged:?}");

    // The real sidecar runs on the Secret's credential.
    let path = s.write("web.creds", &web);
    let sc = Sidecar::spawn(&s.nats.url, NS, "web", &[("CAUSEWAY_NATS_CREDS", &path.display().to_string())]);
    sc.wait_ready().await;
    let http = http();
    let (st, a) = post(&http, &sc.at("/v1/nodes/inventory/events"), &json!({"type": "order-placed"})).await;
    assert_eq!(st, 202, "{a}");
    let (st, a) = post(&http, &sc.at("/v1/stores/orders/subjects/o-1/events"), &json!({"type": "order-placed"})).await;
    assert_eq!(st, 202, "{a}");
    let (st, a) = get(&http, &sc.at("/v1/stores/orders/subjects/o-1/events")).await;
    assert_eq!((st, a["events"].as_array().map(Vec::len)), (200, Some(1)), "{a}");
    let put = http.put(sc.at("/v1/state/k")).json(&json!({"v": 1})).send().await.unwrap();
    assert!(put.status().is_success(), "its own state bucket: {}", put.status());

    // `causeway status --kube` says NATS enforces isolation for these nodes.
    let out =
        causeway_tests::causeway(&["status", "--kubeconfig", &s.emu.kubeconfig().display().to_string(), "-n", NS]);
    assert!(out.stderr.contains("node isolation: enforced by NATS"), "{}\n{}", out.stdout, out.stderr);
    drop(s.operator);
}

/// A Listener added to a Node changes its rights: the credential is issued again at once, and
/// the sidecar, given the new file, reconnects with it and can read its listener. A deleted
/// Secret is restored; a deleted Node's Secret goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_rights_reissues_and_the_sidecar_picks_it_up_without_restart() {
    let s = start();
    assert_eq!(s.emu.kubectl_apply_yaml(MANIFESTS).code, 0);
    let (first, secret) = s.creds("web").await;
    let fp = secret["metadata"]["annotations"]["causeway.dev/grants-fingerprint"].clone();
    let path = s.write("web.creds", &first);
    let sc = Sidecar::spawn(
        &s.nats.url,
        NS,
        "web",
        &[("CAUSEWAY_NATS_CREDS", &path.display().to_string()), ("CAUSEWAY_NATS_CREDS_RELOAD", "100ms")],
    );
    sc.wait_ready().await;
    let http = http();

    assert_eq!(s.emu.kubectl_apply_yaml(WEB_LISTENER).code, 0);
    let second = eventually(Duration::from_secs(30), "web's credential is issued again", || async {
        let sec = s.secret("web")?;
        (sec["metadata"]["annotations"]["causeway.dev/grants-fingerprint"] != fp).then_some(())?;
        let b64 = sec["data"][naming::NODE_CREDS_KEY].as_str()?;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
    })
    .await;
    let next = "$JS.API.CONSUMER.MSG.NEXT.CW_ES_shop_orders.cw_shop_history";
    let (old, _) = causeway_api::creds::parse_creds(&first).unwrap();
    assert!(!read_claims(&old).unwrap().nats.publish.permits(next), "not a right web had before");
    let (jwt, _) = causeway_api::creds::parse_creds(&second).unwrap();
    assert!(read_claims(&jwt).unwrap().nats.publish.permits(next), "its new listener's consumer");
    // As the kubelet would: the mounted file changes.
    std::fs::write(&path, &second).unwrap();
    let (st, _) = post(&http, &sc.at("/v1/stores/orders/subjects/o-2/events"), &json!({"type": "t"})).await;
    assert_eq!(st, 202);
    let got = eventually(Duration::from_secs(20), "the new listener can be fetched from", || {
        let (http, url) = (http.clone(), sc.at("/v1/listeners/history/fetch?max=10&waitMs=200"));
        async move {
            let r = http.post(&url).json(&json!({})).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            (v["events"].as_array().is_some_and(|e| !e.is_empty())).then_some(v)
        }
    })
    .await;
    assert_eq!(got["events"][0]["subject"], "o-2");
    assert!(sc.logs().contains("the NATS credential changed; reconnecting with it"), "{}", sc.logs());

    // A Secret deleted by hand is restored.
    let uid = s.secret("web").unwrap()["metadata"]["uid"].clone();
    assert_eq!(s.emu.kubectl(&["delete", "secret", "causeway-node-web", "-n", NS]).code, 0);
    eventually(Duration::from_secs(30), "the Secret is restored", || async {
        s.secret("web").filter(|sec| sec["metadata"]["uid"] != uid).map(|_| ())
    })
    .await;

    // A deleted Node takes its Secret along.
    assert_eq!(s.emu.kubectl(&["delete", "node.causeway.dev", "web", "-n", NS]).code, 0);
    eventually(Duration::from_secs(30), "the Secret of the deleted node is gone", || async {
        s.secret("web").is_none().then_some(())
    })
    .await;
    assert!(s.secret("inventory").is_some(), "other nodes keep theirs");
}
