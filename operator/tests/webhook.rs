//! The sidecar-injection webhook: AdmissionReview fixtures in, exact JSON Patch out; the Node
//! check against a mocked API server; TLS with a rotated certificate.

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use causeway_operator::webhook::{
    inject::{CREDS_DIR, CREDS_VOLUME, CredsSource, InjectConfig, SIDECAR_NAME},
    review, serve, tls,
};
use http::{Request, Response};
use kube::client::Body;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

fn pod(annotations: Value, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "inventory-0", "namespace": "shop", "annotations": annotations},
           "spec": spec})
}

fn review_of(pod: &Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "uid-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "shop", "operation": operation, "userInfo": {"username": "test"},
                    "object": pod}
    }))
    .unwrap()
}

/// Runs the webhook on a review (no Node check) and returns the response and its decoded patch.
async fn answer(cfg: &InjectConfig, body: &[u8]) -> (Value, Option<Value>) {
    let out: Value = serde_json::from_slice(&review(cfg, None, body).await).unwrap();
    let resp = out["response"].clone();
    let patch = resp["patch"].as_str().map(|p| serde_json::from_slice(&STANDARD.decode(p).unwrap()).unwrap());
    (resp, patch)
}

fn apply_patch(pod: &Value, patch: &Value) -> Value {
    let mut doc = pod.clone();
    let p: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
    json_patch::patch(&mut doc, &p).expect("the patch applies to the pod as received");
    doc
}

fn app() -> Value {
    json!({"containers": [{"name": "app", "image": "shop/inventory:1"}]})
}

#[tokio::test]
async fn an_annotated_pod_gets_a_native_sidecar_first_with_probes_env_and_a_locked_down_context() {
    let cfg = InjectConfig::default();
    let p = pod(json!({"causeway.dev/node": "inventory"}), app());
    let (resp, patch) = answer(&cfg, &review_of(&p, "CREATE")).await;
    assert_eq!(
        (&resp["uid"], &resp["allowed"], &resp["patchType"]),
        (&json!("uid-1"), &json!(true), &json!("JSONPatch"))
    );
    let patch = patch.expect("a patch");
    let ops = patch.as_array().unwrap();
    assert_eq!(ops.len(), 1, "one operation, no re-serialised pod: {patch}");
    assert_eq!((&ops[0]["op"], &ops[0]["path"]), (&json!("add"), &json!("/spec/initContainers")));
    let injected = apply_patch(&p, &patch);
    assert_eq!(injected["spec"]["containers"], app()["containers"], "the app is untouched");
    let c = &injected["spec"]["initContainers"][0];
    assert_eq!((&c["name"], &c["restartPolicy"]), (&json!(SIDECAR_NAME), &json!("Always")));
    assert_eq!(c["command"], json!(["causeway-sidecar"]));
    assert_eq!(
        (&c["startupProbe"]["httpGet"]["path"], &c["livenessProbe"]["httpGet"]["path"]),
        (&json!("/readyz"), &json!("/healthz"))
    );
    assert_eq!(c["startupProbe"]["httpGet"]["port"], 4479);
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].as_str().unwrap().to_owned()))
        .collect();
    for (k, v) in [
        ("CAUSEWAY_NODE", "inventory"),
        ("CAUSEWAY_NAMESPACE", "shop"),
        ("CAUSEWAY_NATS_URL", "nats://nats:4222"),
        ("CAUSEWAY_HEALTH_PORT", "4479"),
    ] {
        assert!(env.contains(&(k.into(), v.into())), "{k}={v} in {env:?}");
    }
    assert!(!env.iter().any(|(k, _)| k == "CAUSEWAY_APP_PORT"), "no app port unless annotated");
    let sc = &c["securityContext"];
    assert_eq!(
        (&sc["runAsNonRoot"], &sc["readOnlyRootFilesystem"], &sc["allowPrivilegeEscalation"]),
        (&json!(true), &json!(true), &json!(false))
    );
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["resources"], json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}));
    assert!(resp["warnings"].is_null());
}

#[tokio::test]
async fn unannotated_pods_other_operations_and_already_injected_pods_pass_untouched() {
    let cfg = InjectConfig::default();
    // Unannotated, including a ReplicaSet's pod that has only generateName.
    let mut rs_pod = pod(json!({"other": "x"}), app());
    rs_pod["metadata"].as_object_mut().unwrap().remove("name");
    rs_pod["metadata"]["generateName"] = json!("inventory-7d9f-");
    for p in [pod(json!({}), app()), rs_pod.clone()] {
        let (resp, patch) = answer(&cfg, &review_of(&p, "CREATE")).await;
        assert_eq!(resp["allowed"], true);
        assert!(patch.is_none(), "{resp}");
    }
    // Annotated but UPDATE: not ours to change.
    let annotated = pod(json!({"causeway.dev/node": "inventory"}), app());
    let (resp, patch) = answer(&cfg, &review_of(&annotated, "UPDATE")).await;
    assert!(resp["allowed"] == true && patch.is_none());
    // Injected once: a second pass (reinvocationPolicy IfNeeded) changes nothing.
    let (_, patch) = answer(&cfg, &review_of(&annotated, "CREATE")).await;
    let once = apply_patch(&annotated, &patch.unwrap());
    let (resp, again) = answer(&cfg, &review_of(&once, "CREATE")).await;
    assert!(resp["allowed"] == true && again.is_none(), "never injected twice: {resp}");
    // A ReplicaSet's annotated pod with only generateName is injected like any other.
    rs_pod["metadata"]["annotations"] = json!({"causeway.dev/node": "inventory"});
    let (resp, patch) = answer(&cfg, &review_of(&rs_pod, "CREATE")).await;
    assert!(resp["allowed"] == true && patch.is_some());
}

#[tokio::test]
async fn existing_init_containers_and_volumes_keep_their_place_after_the_sidecar() {
    let cfg = InjectConfig { creds: CredsSource::Shared("nats-creds".into()), ..InjectConfig::default() };
    let spec = json!({
        "initContainers": [{"name": "migrate", "image": "shop/migrate:1"}],
        "containers": [{"name": "app", "image": "shop/inventory:1", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "emptyDir": {}}]
    });
    let p = pod(json!({"causeway.dev/node": "inventory"}), spec);
    let (_, patch) = answer(&cfg, &review_of(&p, "CREATE")).await;
    let patch = patch.unwrap();
    let paths: Vec<&str> = patch.as_array().unwrap().iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/spec/initContainers/0", "/spec/volumes/-"], "{patch}");
    let out = apply_patch(&p, &patch);
    let inits: Vec<&str> =
        out["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(inits, [SIDECAR_NAME, "migrate"], "the sidecar starts first");
    assert_eq!(
        out["spec"]["volumes"][1],
        json!({"name": CREDS_VOLUME, "secret": {"secretName": "nats-creds", "defaultMode": 0o444}}),
        "readable by the sidecar's non-root user"
    );
    // The credentials are mounted into the sidecar only, never into the app.
    assert_eq!(
        out["spec"]["initContainers"][0]["volumeMounts"],
        json!([{"name": CREDS_VOLUME, "mountPath": CREDS_DIR, "readOnly": true}])
    );
    assert_eq!(out["spec"]["containers"][0]["volumeMounts"], json!([{"name": "data", "mountPath": "/data"}]));
    assert!(out["spec"]["initContainers"][1].get("volumeMounts").is_none());
}

/// With per-node credentials, each Node's sidecars get that Node's own Secret, and nothing else.
#[tokio::test]
async fn per_node_credentials_mount_the_nodes_own_secret_into_the_sidecar_only() {
    let cfg = InjectConfig { creds: CredsSource::PerNode, ..InjectConfig::default() };
    for node in ["inventory", "billing"] {
        let p = pod(json!({"causeway.dev/node": node}), app());
        let (_, patch) = answer(&cfg, &review_of(&p, "CREATE")).await;
        let out = apply_patch(&p, &patch.unwrap());
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": CREDS_VOLUME, "secret": {"secretName": format!("causeway-node-{node}"), "defaultMode": 0o444}}])
        );
        let sidecar = &out["spec"]["initContainers"][0];
        assert!(
            sidecar["env"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "CAUSEWAY_NATS_CREDS", "value": format!("{CREDS_DIR}/nats.creds")})),
            "{sidecar}"
        );
        assert_eq!(sidecar["volumeMounts"], json!([{"name": CREDS_VOLUME, "mountPath": CREDS_DIR, "readOnly": true}]));
        assert!(
            sidecar["volumeMounts"][0].get("subPath").is_none(),
            "a subPath mount would never see a renewed credential"
        );
        assert!(out["spec"]["containers"][0].get("volumeMounts").is_none(), "never into the app");
    }
}

#[tokio::test]
async fn app_port_and_resource_annotations_apply_and_bad_ones_are_refused_with_the_fix() {
    let cfg = InjectConfig::default();
    let p = pod(
        json!({"causeway.dev/node": "inventory", "causeway.dev/app-port": "8080",
               "causeway.dev/sidecar-cpu-request": "50m", "causeway.dev/sidecar-memory-limit": "256Mi",
               "causeway.dev/sidecar-cpu-limit": "1"}),
        app(),
    );
    let (_, patch) = answer(&cfg, &review_of(&p, "CREATE")).await;
    let c = apply_patch(&p, &patch.unwrap())["spec"]["initContainers"][0].clone();
    assert!(c["env"].as_array().unwrap().contains(&json!({"name": "CAUSEWAY_APP_PORT", "value": "8080"})));
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}})
    );
    for (key, value, says) in [
        ("causeway.dev/app-port", "http", "is not a port"),
        ("causeway.dev/app-port", "70000", "is not a port"),
        ("causeway.dev/sidecar-memory-request", "lots", "resource quantity"),
        ("causeway.dev/node", "Inventory_1", "causeway.dev/node"),
    ] {
        let mut ann = json!({"causeway.dev/node": "inventory"});
        ann[key] = json!(value);
        let (resp, patch) = answer(&cfg, &review_of(&pod(ann, app()), "CREATE")).await;
        assert_eq!(resp["allowed"], false, "{key}={value}");
        assert!(patch.is_none());
        assert!(resp["status"]["message"].as_str().unwrap().contains(says), "{key}={value}: {resp}");
    }
}

#[tokio::test]
async fn malformed_reviews_get_a_well_formed_refusal() {
    let cfg = InjectConfig::default();
    for body in [
        b"".to_vec(),
        b"garbage".to_vec(),
        b"{}".to_vec(),
        br#"{"request": 5}"#.to_vec(),
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(),
        vec![0xff; 64],
    ] {
        let out: Value = serde_json::from_slice(&review(&cfg, None, &body).await).expect("always JSON");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["allowed"], false, "{out}");
        assert!(out["response"]["status"]["message"].as_str().unwrap().contains("could not be read"), "{out}");
    }
}

#[tokio::test]
async fn a_missing_node_is_admitted_with_a_warning_that_names_it() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        for exists in [false, true] {
            let (req, send) = h.next_request().await.expect("a Node lookup");
            assert_eq!(req.uri().path(), "/apis/causeway.dev/v1alpha1/namespaces/shop/nodes/inventory");
            let (status, body) = if exists {
                (
                    200,
                    json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "Node", "metadata": {"name": "inventory", "namespace": "shop"}, "spec": {}}),
                )
            } else {
                (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                )
            };
            send.send_response(
                Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap(),
            );
        }
    });
    let cfg = InjectConfig::default();
    let body = review_of(&pod(json!({"causeway.dev/node": "inventory"}), app()), "CREATE");
    let missing: Value = serde_json::from_slice(&review(&cfg, Some(&client), &body).await).unwrap();
    assert_eq!(missing["response"]["allowed"], true, "a missing Node does not block the pod");
    assert!(missing["response"]["patch"].is_string());
    let w = missing["response"]["warnings"][0].as_str().unwrap();
    assert!(w.contains("\"inventory\"") && w.contains("shop"), "{w}");
    let present: Value = serde_json::from_slice(&review(&cfg, Some(&client), &body).await).unwrap();
    assert!(present["response"]["warnings"].is_null(), "{present}");
    server.await.unwrap();
}

/// A TLS client that trusts only `ca` and checks `name`.
fn client_config(ca: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// POSTs a review over TLS; the certificate the server presented and the answer.
async fn post_tls(addr: std::net::SocketAddr, ca: &str, name: &str, body: &[u8]) -> (Vec<u8>, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(client_config(ca));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = connector.connect(server_name, tcp).await.expect("the certificate is trusted and names the service");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let head = format!(
        "POST /mutate-pods HTTP/1.1\r\nHost: {name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json = json.find('{').map(|i| &json[i..]).unwrap_or(json);
    let json = json.rfind('}').map(|i| &json[..=i]).unwrap_or(json);
    (presented, serde_json::from_str(json).unwrap_or(Value::Null))
}

#[tokio::test]
async fn tls_serves_the_secrets_certificate_and_picks_up_a_rotation_without_a_restart() {
    let names = tls::service_names("causeway-webhook", "causeway-system");
    let b = tls::new_bundle(&names).unwrap();
    let resolver = tls::Resolver::new(tls::certified_key(&b.cert, &b.key).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(serve(listener, tls::server_config(resolver.clone()), InjectConfig::default(), None, async {
            let _ = stop.await;
        }));
    let body = review_of(&pod(json!({"causeway.dev/node": "inventory"}), app()), "CREATE");
    let host = "causeway-webhook.causeway-system.svc";
    let (first, answer) = post_tls(addr, &b.ca, host, &body).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"]["patch"].is_string());

    // Rotate: a new certificate from the same CA, served from the next handshake on, while a
    // stream of requests keeps going.
    let (cert2, key2, _) = tls::issue(&b.ca_key, &names, chrono::Utc::now()).unwrap();
    let during = {
        let (ca, body) = (b.ca.clone(), body.clone());
        tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..20 {
                let (_, a) = post_tls(addr, &ca, host, &body).await;
                assert_eq!(a["response"]["allowed"], true);
                answered += 1;
            }
            answered
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    resolver.swap(tls::certified_key(&cert2, &key2).unwrap());
    assert_eq!(during.await.unwrap(), 20, "no request failed during the rotation");
    let (second, _) = post_tls(addr, &b.ca, host, &body).await;
    assert_ne!(first, second, "the rotated certificate is served");
    let want = rustls::pki_types::CertificateDer::pem_slice_iter(cert2.as_bytes()).next().unwrap().unwrap();
    assert_eq!(second, want.to_vec());

    // A client that trusts another CA is refused at the handshake.
    let other = tls::new_bundle(&names).unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&other.ca));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(connector.connect(rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap(), tcp).await.is_err());
    let _ = stop_tx.send(());
    server.await.unwrap();
}
