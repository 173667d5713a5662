//! On a real cluster only: an annotated Deployment gets its sidecar, the sidecar is ready before
//! the app starts, and events go out and come back in through it.
//!
//! No Kubernetes API emulator runs pods, so this needs a cluster (kind, k3d, a test cluster)
//! with Causeway installed by its Helm chart and a NATS with JetStream (see the README, "Install
//! on Kubernetes"), and the kubeconfig in `CAUSEWAY_E2E_KUBECONFIG`:
//!
//! ```sh
//! CAUSEWAY_E2E_KUBECONFIG=$HOME/.kube/kind-config \
//!   cargo nextest run -p causeway-tests --test cluster_injection --run-ignored all
//! ```
//!
//! `CAUSEWAY_E2E_IMAGE` names the image with the `causeway` binary for the app (default: the
//! chart's `ghcr.io/causeway-dev/causeway:0.1.0`). Without `CAUSEWAY_E2E_KUBECONFIG` the test is
//! ignored, and `scripts/test.sh` says so on its output.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use causeway_tests::{Run, TempDir, free_port, kubectl_at};
use serde_json::Value;

struct Cluster {
    kubeconfig: PathBuf,
    cache: TempDir,
    ns: String,
}

impl Cluster {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Run {
        kubectl_at(&self.kubeconfig, self.cache.path(), args, stdin)
    }
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let r = self.kubectl(args, stdin);
        assert_eq!(r.code, 0, "kubectl {args:?}: {}", r.stderr);
        r.stdout
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a, None)).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.kubectl(&["delete", "namespace", &self.ns, "--wait=false"], None);
    }
}

fn manifests(ns: &str, image: &str) -> String {
    format!(
        r#"apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {{name: inventory, namespace: {ns}}}
spec:
  app: {{port: 8080, healthPath: /healthz}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {{name: reserve-stock, namespace: {ns}}}
spec:
  node: inventory
  source: {{inbox: inventory}}
  types: [order-placed]
  delivery: {{mode: push, path: /events}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: inventory, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: inventory}}}}
  template:
    metadata:
      labels: {{app: inventory}}
      annotations:
        causeway.dev/node: inventory
        causeway.dev/app-port: "8080"
    spec:
      containers:
        - name: app
          image: {image}
          args: ["demo-app", "--bind", "0.0.0.0", "--port", "8080", "--name", "{ns}/inventory"]
          readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}}}
"#
    )
}

fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("not a time: {v}"))
}

#[test]
#[ignore = "needs a real cluster with Causeway installed: set CAUSEWAY_E2E_KUBECONFIG and run with --run-ignored"]
fn an_annotated_deployment_gets_a_ready_sidecar_before_its_app_and_exchanges_events_through_it() {
    let kubeconfig = std::env::var_os("CAUSEWAY_E2E_KUBECONFIG").map(PathBuf::from).expect(
        "CAUSEWAY_E2E_KUBECONFIG must name the kubeconfig of a cluster with Causeway installed (see this file's header)",
    );
    let image = std::env::var("CAUSEWAY_E2E_IMAGE").unwrap_or_else(|_| "ghcr.io/causeway-dev/causeway:0.1.0".into());
    let ns = format!("cw-inject-{}", std::process::id());
    let c = Cluster { kubeconfig, cache: TempDir::new("cw-kubectl"), ns: ns.clone() };
    c.ok(&["create", "namespace", &ns], None);
    c.ok(&["label", "namespace", &ns, "causeway.dev/inject=enabled"], None);
    c.ok(&["apply", "-f", "-"], Some(&manifests(&ns, &image)));
    c.ok(&["-n", &ns, "wait", "--for=condition=Ready", "node.causeway.dev/inventory", "--timeout=60s"], None);
    c.ok(&["-n", &ns, "rollout", "status", "deployment/inventory", "--timeout=240s"], None);

    let pods = c.json(&["-n", &ns, "get", "pods", "-l", "app=inventory"]);
    let pod = &pods["items"][0];
    let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    // The sidecar is a native sidecar, first.
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(
        (&init["name"], &init["restartPolicy"]),
        (&Value::from("causeway-sidecar"), &Value::from("Always")),
        "{init}"
    );
    assert!(init["startupProbe"]["httpGet"]["path"] == "/readyz");
    // It was started (and its startup probe passed) before the app container started.
    let sidecar = &pod["status"]["initContainerStatuses"][0];
    let app = pod["status"]["containerStatuses"].as_array().unwrap().iter().find(|s| s["name"] == "app").unwrap();
    assert_eq!(sidecar["started"], true);
    assert!(
        time(&sidecar["state"]["running"]["startedAt"]) <= time(&app["state"]["running"]["startedAt"]),
        "the app started before its sidecar: {sidecar} {app}"
    );
    // The app's containers do not see the NATS credentials.
    let app_spec = pod["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "app").unwrap();
    assert!(!app_spec.to_string().contains("causeway-nats-creds"), "{app_spec}");

    // Send through the sidecar (its API is on the pod's loopback, which port-forward reaches) and
    // see the event pushed back to the app.
    let port = free_port();
    let mut forward = std::process::Command::new(causeway_tests::kubectl_bin())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["-n", &ns, "port-forward", &format!("pod/{name}"), &format!("{port}:4480")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let sent = loop {
        let body = r#"{"type":"order-placed","payload":{"orderId":"e2e-1"}}"#;
        let answer = std::process::Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import urllib.request as u; r=u.urlopen(u.Request('http://127.0.0.1:{port}/v1/nodes/inventory/events', data=b'{body}', headers={{'content-type':'application/json'}}), timeout=10); print(r.status)"
                ),
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&answer.stdout).trim() == "202" {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = forward.kill();
    let _ = forward.wait();
    assert!(sent, "the sidecar accepted the event");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = c.ok(&["-n", &ns, "logs", &format!("pod/{name}"), "-c", "app"], None);
        if logs.contains("received order-placed") && logs.contains("e2e-1") {
            break;
        }
        assert!(Instant::now() < deadline, "the app never received the event; its log:\n{logs}");
        std::thread::sleep(Duration::from_secs(1));
    }
}
