//! The sidecar-injection webhook end to end: the real `causeway operator` against the Kubernetes
//! API emulator. It creates its CA and certificate in a Secret (once, shared by every replica),
//! sets and keeps the MutatingWebhookConfiguration's caBundle (restoring it when it is wiped),
//! and answers an AdmissionReview POSTed over TLS with the expected patch. The sidecar's health
//! port serves the probes, and only them.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use causeway_tests::{KubeEmulator, NatsServer, OperatorOptions, eventually, free_port};
use serde_json::{Value, json};
use support::*;

const NS: &str = "causeway-system";
const MWC: &str = "causeway-sidecar-injector";
const SERVICE: &str = "causeway-webhook";

fn mwc_yaml() -> String {
    let hook = |name: &str| {
        format!(
            r#"- name: {name}
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  clientConfig:
    service: {{name: {SERVICE}, namespace: {NS}, path: /mutate-pods, port: 443}}
  rules:
  - {{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}}
"#
        )
    };
    format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {{name: {MWC}}}\nwebhooks:\n{}{}",
        hook("inject.causeway.dev"),
        hook("second.causeway.dev")
    )
}

fn bundles(emu: &KubeEmulator) -> Vec<Option<String>> {
    let mwc = emu.kubectl_json(&["get", "mutatingwebhookconfiguration", MWC]);
    mwc["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w["clientConfig"]["caBundle"].as_str().map(|b| String::from_utf8(STANDARD.decode(b).unwrap()).unwrap())
        })
        .collect()
}

fn secret_ca(emu: &KubeEmulator) -> String {
    let s = emu.kubectl_json(&["get", "secret", "causeway-webhook-tls", "-n", NS]);
    String::from_utf8(STANDARD.decode(s["data"]["ca.crt"].as_str().unwrap()).unwrap()).unwrap()
}

fn operator(emu: &KubeEmulator, nats: &str, webhook_port: u16, name: &str) -> causeway_tests::Operator {
    OperatorOptions::new(&emu.kubeconfig(), nats)
        .flag("--webhook-addr", &format!("127.0.0.1:{webhook_port}"))
        .flag("--webhook-service", SERVICE)
        .flag("--lease-namespace", NS)
        .flag("--sidecar-image", "registry.example/causeway:test")
        .flag("--sidecar-creds-secret", "nats-creds")
        .named(name)
        .start()
}

/// POSTs a review to the webhook over TLS, trusting only `ca` and checking the Service's name.
async fn post_review(port: u16, ca: &str, review: &Value) -> Value {
    let host = format!("{SERVICE}.{NS}.svc");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve(&host, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let r = client
        .post(format!("https://{host}:{port}/mutate-pods"))
        .json(review)
        .send()
        .await
        .expect("TLS handshake with the webhook");
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn review(node: &str) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
           "request": {"uid": "e2e-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                       "resource": {"group": "", "version": "v1", "resource": "pods"},
                       "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "e2e"},
                       "object": {"apiVersion": "v1", "kind": "Pod",
                                  "metadata": {"generateName": "inventory-", "namespace": "shop",
                                               "annotations": {"causeway.dev/node": node, "causeway.dev/app-port": "8080"}},
                                  "spec": {"containers": [{"name": "app", "image": "shop/inventory:1"}]}}}})
}

fn patch_of(answer: &Value) -> Value {
    let p = answer["response"]["patch"].as_str().expect("a base64 patch");
    serde_json::from_slice(&STANDARD.decode(p).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_keeps_the_ca_bundle_and_answers_reviews_over_tls() {
    let server = NatsServer::start();
    let emu = KubeEmulator::start();
    emu.create_namespace(NS);
    emu.create_namespace("shop");
    let r = emu.kubectl_apply_yaml(&mwc_yaml());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let port = free_port();
    let mut op = operator(&emu, &server.url, port, "operator-1");
    op.wait_ready(Duration::from_secs(30));

    let ca = secret_ca(&emu);
    assert!(ca.contains("BEGIN CERTIFICATE"));
    assert_eq!(bundles(&emu), vec![Some(ca.clone()), Some(ca.clone())], "every webhook carries the CA");

    // Wiped (e.g. by a GitOps tool re-applying the chart's empty caBundle): restored.
    let r = emu.kubectl_apply_yaml(&mwc_yaml());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let wiped = emu.kubectl(&[
        "patch",
        "mutatingwebhookconfiguration",
        MWC,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/webhooks/0/clientConfig/caBundle"},{"op":"replace","path":"/webhooks/1/clientConfig/caBundle","value":"Zm9v"}]"#,
    ]);
    assert_eq!(wiped.code, 0, "{}", wiped.stderr);
    eventually(Duration::from_secs(15), "the caBundle restored", || {
        let b = bundles(&emu);
        let ca = ca.clone();
        async move { (b == vec![Some(ca.clone()), Some(ca)]).then_some(()) }
    })
    .await;

    // A review over TLS, for a Node that does not exist yet: injected, with a warning.
    let answer = post_review(port, &ca, &review("inventory")).await;
    assert_eq!(
        (&answer["response"]["uid"], &answer["response"]["allowed"]),
        (&json!("e2e-1"), &json!(true)),
        "{answer}"
    );
    assert!(answer["response"]["warnings"][0].as_str().unwrap().contains("\"inventory\""), "{answer}");
    let patch = patch_of(&answer);
    assert_eq!(patch[0]["path"], "/spec/initContainers");
    let c = &patch[0]["value"][0];
    assert_eq!((&c["image"], &c["restartPolicy"]), (&json!("registry.example/causeway:test"), &json!("Always")));
    assert!(c["env"].as_array().unwrap().contains(&json!({"name": "CAUSEWAY_APP_PORT", "value": "8080"})));
    assert_eq!(
        patch[1]["value"],
        json!([{"name": "causeway-nats-creds", "secret": {"secretName": "nats-creds", "defaultMode": 0o444}}])
    );

    // Once the Node exists, no warning.
    apply(&server, SHOP).await;
    let node =
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: inventory, namespace: shop}\nspec: {}\n";
    assert_eq!(emu.kubectl_apply_yaml(node).code, 0);
    let answer = post_review(port, &ca, &review("inventory")).await;
    assert!(answer["response"]["warnings"].is_null(), "{answer}");

    // A second replica (not the leader) shares the CA and serves the webhook too.
    let port2 = free_port();
    let mut op2 = operator(&emu, &server.url, port2, "operator-2");
    op2.wait_ready(Duration::from_secs(30));
    assert_eq!(secret_ca(&emu), ca, "one CA for every replica");
    let answer = post_review(port2, &ca, &review("inventory")).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(op2.readyz().unwrap().1["leader"], false, "the webhook does not need the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_health_port_serves_probes_and_nothing_else() {
    let server = NatsServer::start();
    apply(&server, SHOP).await;
    let health = free_port();
    let sc = Sidecar::start(&server, "shop", "web", &[("CAUSEWAY_HEALTH_PORT", &health.to_string())]).await;
    let c = http();
    let at = |p: &str| format!("http://127.0.0.1:{health}{p}");
    // Probes from outside the pod come with the pod's address as Host.
    for p in ["/healthz", "/readyz", "/metrics"] {
        let r = c.get(at(p)).header("host", "10.1.2.3:4479").send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    for p in ["/v1/stores/orders", "/v1/openapi.json", "/v1/global/x"] {
        let r = c.get(at(p)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{p} is not served on the health port");
    }
    let r = c.post(at("/v1/nodes/inventory/events")).json(&json!({"type": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The API stays where it was.
    let (s, _) = post(&c, &sc.at("/v1/nodes/inventory/events"), &json!({"type": "x"})).await;
    assert_eq!(s, 202);
}

/// A webhook that cannot serve (here: its port is taken) stops the operator with an error and
/// exit code 1 (not ready), as a health port that cannot be bound does, instead of leaving a replica running
/// that never becomes ready and says why only on /readyz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_cannot_listen_stops_the_operator_with_an_error() {
    let server = NatsServer::start();
    let emu = KubeEmulator::start();
    emu.create_namespace(NS);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut op = OperatorOptions::new(&emu.kubeconfig(), &server.url)
        .flag("--webhook-addr", &format!("127.0.0.1:{port}"))
        .flag("--lease-namespace", NS)
        .named("operator-blocked")
        .spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while op.is_running() {
        assert!(std::time::Instant::now() < deadline, "still running with its webhook port taken:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(op.terminate(Duration::from_secs(1)), Some(1), "{}", op.log());
    let log = op.log();
    assert!(log.contains(&format!("cannot listen on 127.0.0.1:{port}")), "the error names the address:\n{log}");
    drop(taken);
}
