//! What the sidecar-injection webhook does to a pod: pure functions from an AdmissionReview to
//! the answer, so every rule is tested without a cluster.
//!
//! - A pod annotated `causeway.dev/node: <name>` gets the sidecar as a **native sidecar**: an
//!   init container with `restartPolicy: Always`, inserted first, with a startup probe on
//!   `/readyz` (so the app starts only once its sidecar is ready) and a liveness probe on
//!   `/healthz`, both on the sidecar's health port (kubelet reaches the pod's address, and the
//!   API itself stays on 127.0.0.1).
//! - The patch is a minimal list of JSON Patch operations against the pod as received: the pod is
//!   never re-serialised.
//! - Injection is idempotent: a pod that already has the sidecar gets no patch, so a reinvocation
//!   (`reinvocationPolicy: IfNeeded`) is safe.
//! - An unannotated pod passes untouched. An annotation that cannot work (a name that is not a
//!   DNS label, a bad port or resource quantity) is refused with a message saying what to fix,
//!   rather than admitted without a sidecar.

use std::collections::BTreeMap;

use causeway_api::DnsLabel;
use kube::core::{
    DynamicObject,
    admission::{AdmissionResponse, AdmissionReview},
};
use serde_json::{Value, json};

/// The annotation that asks for a sidecar: the Node the pod belongs to.
pub const NODE_ANNOTATION: &str = "causeway.dev/node";
/// The app's port, where push delivery POSTs (overrides the Node's `app.port`).
pub const APP_PORT_ANNOTATION: &str = "causeway.dev/app-port";
/// Per-pod sidecar resources: `causeway.dev/sidecar-cpu-request` and its three siblings.
pub const RESOURCE_ANNOTATIONS: [(&str, &str, &str); 4] = [
    ("causeway.dev/sidecar-cpu-request", "requests", "cpu"),
    ("causeway.dev/sidecar-memory-request", "requests", "memory"),
    ("causeway.dev/sidecar-cpu-limit", "limits", "cpu"),
    ("causeway.dev/sidecar-memory-limit", "limits", "memory"),
];
/// Name of the injected container; its presence marks an injected pod.
pub const SIDECAR_NAME: &str = "causeway-sidecar";
/// Volume holding the NATS credentials (mounted into the sidecar only).
pub const CREDS_VOLUME: &str = "causeway-nats-creds";
/// Where the credentials are mounted in the sidecar.
pub const CREDS_DIR: &str = "/var/run/causeway/nats";

/// How sidecars are injected (from the operator's flags, set by the Helm chart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// The sidecar image (it holds `causeway-sidecar`).
    pub image: String,
    /// Its pull policy, if set.
    pub image_pull_policy: Option<String>,
    /// NATS URL(s) the sidecar connects to.
    pub nats_url: String,
    /// Where the sidecar's NATS credential comes from.
    pub creds: CredsSource,
    /// The API port on 127.0.0.1.
    pub port: u16,
    /// The probes-and-metrics port on the pod's address.
    pub health_port: u16,
    /// Default resources: (requests|limits, cpu|memory) → quantity.
    pub resources: BTreeMap<(String, String), String>,
    /// The sidecar's log filter.
    pub log: Option<String>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        let mut resources = BTreeMap::new();
        resources.insert(("requests".into(), "cpu".into()), "10m".into());
        resources.insert(("requests".into(), "memory".into()), "32Mi".into());
        resources.insert(("limits".into(), "memory".into()), "128Mi".into());
        Self {
            image: "ghcr.io/causeway-dev/causeway:0.1.0".into(),
            image_pull_policy: None,
            nats_url: "nats://nats:4222".into(),
            creds: CredsSource::None,
            port: 4480,
            health_port: 4479,
            resources,
            log: None,
        }
    }
}

/// Where an injected sidecar's NATS credential comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredsSource {
    /// None (a NATS without authentication).
    #[default]
    None,
    /// One Secret shared by every sidecar, in the pod's namespace, with the credential under key
    /// `creds`. Node isolation is then not enforced by NATS.
    Shared(String),
    /// The Node's own Secret (`causeway-node-<node>`, key `nats.creds`) that the operator issues.
    PerNode,
}

impl CredsSource {
    /// The Secret and the file in it, for the sidecar of `node`.
    fn secret(&self, node: &str) -> Option<(String, &'static str)> {
        match self {
            CredsSource::None => None,
            CredsSource::Shared(s) => Some((s.clone(), "creds")),
            CredsSource::PerNode => {
                let node = causeway_api::DnsLabel::new(node).ok()?;
                Some((causeway_api::naming::node_secret(&node), causeway_api::naming::NODE_CREDS_KEY))
            }
        }
    }
}

/// What the webhook decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit as is.
    Untouched,
    /// Admit with these JSON Patch operations, checking that `node` exists.
    Inject {
        /// The operations.
        ops: Vec<Value>,
        /// The pod's namespace.
        namespace: String,
        /// The Node it asks for.
        node: String,
    },
    /// Refuse, saying why.
    Refuse(String),
}

fn annotations(pod: &Value) -> BTreeMap<String, String> {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

fn has_sidecar(pod: &Value) -> bool {
    ["/spec/initContainers", "/spec/containers"].iter().any(|p| {
        pod.pointer(p).and_then(Value::as_array).is_some_and(|cs| cs.iter().any(|c| c["name"] == SIDECAR_NAME))
    })
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`).
pub fn valid_quantity(q: &str) -> bool {
    let q = q.trim();
    let suffixes = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", ""];
    suffixes.iter().any(|s| {
        q.strip_suffix(s).is_some_and(|num| {
            let num = num.strip_prefix('+').unwrap_or(num);
            !num.is_empty()
                && num.parse::<f64>().is_ok_and(|n| n.is_finite() && n >= 0.0)
                && num.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'-')
        })
    })
}

/// Decides what to do with a pod being created in `namespace`.
pub fn decide(cfg: &InjectConfig, namespace: &str, operation: &str, pod: &Value) -> Decision {
    if operation != "CREATE" {
        return Decision::Untouched;
    }
    let ann = annotations(pod);
    let Some(node) = ann.get(NODE_ANNOTATION) else { return Decision::Untouched };
    if has_sidecar(pod) {
        return Decision::Untouched;
    }
    if let Err(e) = DnsLabel::new(node.trim()) {
        return Decision::Refuse(format!("annotation {NODE_ANNOTATION}: {e}; name a Node of namespace {namespace}"));
    }
    let node = node.trim().to_owned();
    let app_port = match ann.get(APP_PORT_ANNOTATION).map(|p| p.trim()) {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Decision::Refuse(format!(
                    "annotation {APP_PORT_ANNOTATION}: {p:?} is not a port; give the app's port, e.g. \"8080\""
                ));
            }
        },
    };
    let mut resources = cfg.resources.clone();
    for (key, kind, res) in RESOURCE_ANNOTATIONS {
        if let Some(q) = ann.get(key) {
            if !valid_quantity(q) {
                return Decision::Refuse(format!(
                    "annotation {key}: {q:?} is not a resource quantity, e.g. \"100m\" or \"64Mi\""
                ));
            }
            resources.insert((kind.into(), res.into()), q.trim().to_owned());
        }
    }
    let container = sidecar(cfg, namespace, &node, app_port, &resources);
    let mut ops = Vec::new();
    match pod.pointer("/spec/initContainers").and_then(Value::as_array) {
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container})),
        None => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]})),
    }
    if let Some((secret, _)) = cfg.creds.secret(&node) {
        // Readable by the sidecar's non-root user (the volume is mounted into the sidecar only).
        let volume = json!({"name": CREDS_VOLUME, "secret": {"secretName": secret, "defaultMode": 0o444}});
        match pod.pointer("/spec/volumes").and_then(Value::as_array) {
            Some(_) => ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume})),
            None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]})),
        }
    }
    Decision::Inject { ops, namespace: namespace.to_owned(), node }
}

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn sidecar(
    cfg: &InjectConfig,
    namespace: &str,
    node: &str,
    app_port: Option<u16>,
    resources: &BTreeMap<(String, String), String>,
) -> Value {
    let mut envs = vec![
        env("CAUSEWAY_NODE", node),
        env("CAUSEWAY_NAMESPACE", namespace),
        env("CAUSEWAY_NATS_URL", cfg.nats_url.clone()),
        env("CAUSEWAY_PORT", cfg.port.to_string()),
        env("CAUSEWAY_HEALTH_PORT", cfg.health_port.to_string()),
    ];
    if let Some(p) = app_port {
        envs.push(env("CAUSEWAY_APP_PORT", p.to_string()));
    }
    let creds = cfg.creds.secret(node);
    if let Some((_, file)) = &creds {
        envs.push(env("CAUSEWAY_NATS_CREDS", format!("{CREDS_DIR}/{file}")));
    }
    if let Some(l) = &cfg.log {
        envs.push(env("CAUSEWAY_LOG", l.clone()));
    }
    let mut res = json!({});
    for ((kind, name), q) in resources {
        res[kind][name] = json!(q);
    }
    let probe = |path: &str, period: u32, failures: u32| json!({"httpGet": {"path": path, "port": cfg.health_port}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2});
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": cfg.image,
        "command": ["causeway-sidecar"],
        "restartPolicy": "Always",
        "env": envs,
        "ports": [{"name": "cw-health", "containerPort": cfg.health_port, "protocol": "TCP"}],
        // The app starts only once this passes: NATS connected, registry read, clock restored.
        "startupProbe": probe("/readyz", 1, 300),
        "livenessProbe": probe("/healthz", 10, 3),
        // The app's own health is the app container's business, not the sidecar's readiness.
        "readinessProbe": probe("/readyz?app=ignore", 5, 3),
        "resources": res,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    });
    if let Some(p) = &cfg.image_pull_policy {
        c["imagePullPolicy"] = json!(p);
    }
    if creds.is_some() {
        // A whole-volume mount, never subPath: the kubelet then updates the file when the
        // operator renews the credential, and the sidecar reconnects with it.
        c["volumeMounts"] = json!([{"name": CREDS_VOLUME, "mountPath": CREDS_DIR, "readOnly": true}]);
    }
    c
}

/// The answer to a review that could not be read: well-formed, refusing, never a crash.
pub fn malformed(why: impl std::fmt::Display) -> AdmissionReview<DynamicObject> {
    AdmissionResponse::invalid(format!("the AdmissionReview could not be read: {why}")).into_review()
}

/// Parses an AdmissionReview body; its uid, namespace, operation and object.
pub fn parse(body: &[u8]) -> Result<(AdmissionReview<DynamicObject>, String, String, Value), String> {
    let raw: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(raw.clone()).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let req = raw.get("request").ok_or("the review has no request")?;
    let namespace = req.get("namespace").and_then(Value::as_str).unwrap_or("default").to_owned();
    let operation = req.get("operation").and_then(Value::as_str).unwrap_or("").to_owned();
    let object = req.get("object").cloned().unwrap_or(Value::Null);
    if !object.is_object() {
        return Err("the request has no object".into());
    }
    Ok((review, namespace, operation, object))
}

/// The JSON answer for a decision. `warning` is added to an admitted pod (e.g. a missing Node).
pub fn respond(
    review: AdmissionReview<DynamicObject>,
    decision: Decision,
    warning: Option<String>,
) -> AdmissionReview<DynamicObject> {
    let req = match review.try_into() {
        Ok(r) => r,
        Err(_) => return malformed("the review has no request"),
    };
    let mut resp = AdmissionResponse::from(&req);
    resp = match decision {
        Decision::Untouched => resp,
        Decision::Refuse(why) => resp.deny(why),
        Decision::Inject { ops, .. } => {
            let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
                Ok(p) => p,
                Err(e) => return AdmissionResponse::from(&req).deny(format!("internal: bad patch: {e}")).into_review(),
            };
            match resp.with_patch(patch) {
                Ok(r) => r,
                Err(e) => return AdmissionResponse::from(&req).deny(format!("internal: {e}")).into_review(),
            }
        }
    };
    if let Some(w) = warning {
        resp.warnings = Some(vec![w]);
    }
    resp.into_review()
}
