//! The Helm chart (`charts/causeway`), `deploy/nats-values.yaml` and the `Dockerfile`.
//!
//! Everything runs offline with the pinned `helm` and `kubernetes-validate` that
//! `scripts/setup.sh --test` installs into `.tools/bin`; without them these tests fail (they
//! never skip). What they prove:
//!
//! - `helm lint --strict` passes, for the default values and every other value set below;
//! - every value set renders, and every manifest passes `kubernetes-validate --strict` against
//!   Kubernetes 1.33 (the kinds of other projects' CRDs — ServiceMonitor, Certificate, Issuer —
//!   have no schema there: they are parsed and checked by hand instead);
//! - rendering is deterministic (no `lookup`, no generated certificates, nothing random);
//! - `values.schema.json` refuses bad values before anything is rendered;
//! - the RBAC has no wildcard and grants what docs/operator.md lists, the lease and Secret
//!   rules restricted by name;
//! - the chart's CRDs are byte-identical to `crds/`;
//! - the MutatingWebhookConfiguration, the Deployment's hardening, probes and flags; every
//!   flag and variable the chart sets is one `causeway operator --help` lists;
//! - the Dockerfile's structure (no Docker engine here to build it);
//! - deploy/nats-values.yaml turns on JetStream file storage with `sync_interval: always`, and
//!   raises `max_control_line` for node credentials.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use causeway_tests::{Run, TempDir, helm_bin, workspace_root};
use serde_yaml::Value;

const RELEASE: &str = "causeway";
const NAMESPACE: &str = "causeway-system";
/// Kinds served by other projects' CRDs: kubernetes-validate has no schema for them.
const FOREIGN_KINDS: [(&str, &str); 3] = [
    ("ServiceMonitor", "monitoring.coreos.com/v1"),
    ("Certificate", "cert-manager.io/v1"),
    ("Issuer", "cert-manager.io/v1"),
];
const SETUP: &str = "run scripts/setup.sh --test";

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/causeway")
}

fn run(bin: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {SETUP}", bin.display()));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm <args>` with the pinned helm in `.tools/bin`. Fails (never skips) without it.
fn helm(args: &[&str]) -> Run {
    let pinned = workspace_root().join(".tools/bin/helm");
    assert!(pinned.exists(), "{} is missing: {SETUP} (it installs the pinned helm)", pinned.display());
    run(&helm_bin(), args)
}

/// `kubernetes-validate --strict -k 1.33.0 <files>` from `.tools/bin`. Fails (never skips) without it.
fn kubernetes_validate(files: &[PathBuf]) -> Run {
    let bin = workspace_root().join(".tools/bin/kubernetes-validate");
    assert!(bin.exists(), "{} is missing: {SETUP} (it installs kubernetes-validate)", bin.display());
    let mut args = vec!["--strict".to_string(), "-k".into(), "1.33.0".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&bin, &args)
}

/// One set of values and what it is for.
struct Case {
    name: &'static str,
    values: &'static str,
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZmFrZSBjYSBmb3IgdGVzdHMwCgYIKoZIzj0EAwIwEjEQ\n-----END CERTIFICATE-----\n";

/// The value sets rendered, validated and linted; [`Case::values`] is YAML.
fn cases() -> Vec<Case> {
    vec![
        Case { name: "default", values: "{}" },
        Case { name: "cert-manager", values: "webhook:\n  certManager:\n    enabled: true\n" },
        Case {
            name: "cert-manager-issuer",
            values: "webhook:\n  certManager:\n    enabled: true\n    issuerRef:\n      name: corp-ca\n      kind: ClusterIssuer\n",
        },
        Case {
            name: "bring-your-own-tls",
            values: concat!(
                "webhook:\n  tls:\n    secretName: injector-tls\n    caBundle: |\n",
                "      -----BEGIN CERTIFICATE-----\n",
                "      MIIBszCCAVmgAwIBAgIUZmFrZSBjYSBmb3IgdGVzdHMwCgYIKoZIzj0EAwIwEjEQ\n",
                "      -----END CERTIFICATE-----\n",
            ),
        },
        Case {
            name: "watch-namespaces",
            values: "watchNamespaces: [shop, billing]\nresync: 30s\nconcurrency: 4\nleaseDuration: 20s\nlogLevel: debug\nlogFormat: text\n",
        },
        Case {
            name: "service-monitor",
            values: "serviceMonitor:\n  enabled: true\n  interval: 15s\n  labels:\n    release: prometheus\n",
        },
        Case { name: "one-replica", values: "replicas: 1\n" },
        Case {
            name: "node-credentials",
            values: concat!(
                "nats:\n  credentialsSecret:\n    name: causeway-nats\n    key: operator.creds\n",
                "nodeCredentials:\n  accountKeySecret:\n    name: causeway-account\n    key: signing.nk\n",
                "  account: ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA\n  ttl: 30m\n",
            ),
        },
        Case {
            name: "credentials",
            values: concat!(
                "nats:\n  url: tls://nats-0.nats:4222,tls://nats-1.nats:4222\n",
                "  credentialsSecret:\n    name: causeway-nats\n    key: operator.creds\n",
                "  tls:\n    secretName: nats-client-tls\n    ca: ca.crt\n    cert: tls.crt\n    key: tls.key\n",
                "registryReplicas: 3\n",
                "sidecar:\n  credentialsSecret: causeway-sidecar-nats\n  image: example.org/causeway:dev\n",
                "  natsUrl: tls://nats.nats:4222\n  logLevel: warn\n",
                "  resources:\n    requests: {cpu: 20m, memory: 48Mi}\n    limits: {cpu: 500m, memory: 256Mi}\n",
                "webhook:\n  timeoutSeconds: 8\n  objectSelector:\n    matchLabels:\n      causeway.dev/inject: \"true\"\n",
                "  namespaceSelector:\n    matchExpressions:\n      - {key: team, operator: In, values: [shop]}\n",
                "imagePullSecrets: [{name: regcred}]\n",
                "nodeSelector: {kubernetes.io/os: linux}\n",
                "tolerations: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]\n",
                "priorityClassName: system-cluster-critical\n",
                "podAnnotations: {example.org/team: platform}\n",
                "podLabels: {example.org/tier: control}\n",
            ),
        },
    ]
}

/// A rendered manifest: its source text and its parsed value.
#[derive(Debug, Clone)]
struct Doc {
    text: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// Splits `helm template` output into its documents (empty ones dropped).
fn split(rendered: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |text: &mut String| {
        let value: Value =
            serde_yaml::from_str(text).unwrap_or_else(|e| panic!("a rendered document is not YAML: {e}\n{text}"));
        if !value.is_null() {
            docs.push(Doc { text: std::mem::take(text), value });
        }
        text.clear();
    };
    for line in rendered.lines() {
        if line == "---" {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    docs
}

/// `helm template` of the chart with `values` (YAML) and extra args; the raw run.
fn template_run(values: &str, extra: &[&str]) -> Run {
    let dir = TempDir::new("cw-chart");
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).expect("write values");
    let chart = chart_dir().display().to_string();
    let file = file.display().to_string();
    let mut args =
        vec!["template", RELEASE, chart.as_str(), "--namespace", NAMESPACE, "--kube-version", "1.33.0", "-f", &file];
    args.extend_from_slice(extra);
    helm(&args)
}

/// `helm template` output for `values`; panics with helm's message when it fails.
fn template(values: &str, extra: &[&str]) -> String {
    let r = template_run(values, extra);
    assert_eq!(r.code, 0, "helm template failed for values\n{values}\n{}", r.stderr);
    r.stdout
}

fn render(values: &str) -> Vec<Doc> {
    split(&template(values, &[]))
}

fn case(name: &str) -> &'static str {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}")).values
}

fn one<'a>(docs: &'a [Doc], kind: &str) -> &'a Value {
    let found: Vec<&Doc> = docs.iter().filter(|d| d.kind() == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    &found[0].value
}

fn all<'a>(docs: &'a [Doc], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d.kind() == kind).map(|d| &d.value).collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn operator_container(docs: &[Doc]) -> &Value {
    let containers =
        one(docs, "Deployment")["spec"]["template"]["spec"]["containers"].as_sequence().expect("containers");
    containers.iter().find(|c| c["name"] == "operator").expect("a container named operator")
}

fn args(docs: &[Doc]) -> Vec<String> {
    strs(&operator_container(docs)["args"])
}

/// The value of `--flag=value` among the operator's args.
fn flag(docs: &[Doc], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    args(docs).iter().find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
}

fn env(docs: &[Doc]) -> BTreeMap<String, Value> {
    operator_container(docs)["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_owned();
            let value = if e["value"].is_null() { e["valueFrom"].clone() } else { e["value"].clone() };
            (name, value)
        })
        .collect()
}

fn env_str(docs: &[Doc], name: &str) -> Option<String> {
    env(docs).get(name).and_then(|v| v.as_str().map(str::to_owned))
}

fn mounts(docs: &[Doc]) -> BTreeMap<String, String> {
    operator_container(docs)["volumeMounts"]
        .as_sequence()
        .map(|m| {
            m.iter().map(|m| (m["name"].as_str().unwrap().to_owned(), m["mountPath"].as_str().unwrap().to_owned()))
        })
        .into_iter()
        .flatten()
        .collect()
}

/// The Secret behind the pod volume `name`.
fn volume_secret(docs: &[Doc], name: &str) -> Option<String> {
    one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        .as_sequence()?
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["secret"]["secretName"].as_str().map(str::to_owned))
}

fn webhook(docs: &[Doc]) -> &Value {
    let hooks = one(docs, "MutatingWebhookConfiguration")["webhooks"].as_sequence().expect("webhooks");
    assert_eq!(hooks.len(), 1, "one webhook");
    &hooks[0]
}

// ---------------------------------------------------------------------------------------------

#[test]
fn helm_lint_strict_passes_for_every_value_set() {
    let chart = chart_dir().display().to_string();
    let r = helm(&["lint", "--strict", &chart]);
    assert_eq!(r.code, 0, "helm lint --strict charts/causeway failed:\n{}{}", r.stdout, r.stderr);
    for c in cases() {
        let dir = TempDir::new("cw-lint");
        let file = dir.path().join("values.yaml");
        std::fs::write(&file, c.values).unwrap();
        let file = file.display().to_string();
        let r = helm(&["lint", "--strict", &chart, "--namespace", NAMESPACE, "-f", &file]);
        assert_eq!(r.code, 0, "helm lint --strict with values {:?} failed:\n{}{}", c.name, r.stdout, r.stderr);
    }
}

#[test]
fn every_value_set_renders_manifests_valid_for_kubernetes_1_33() {
    let dir = TempDir::new("cw-kv");
    let mut files = Vec::new();
    let mut foreign_seen = BTreeSet::new();
    for c in cases() {
        // The default set also with the CRDs, which Helm installs from crds/ before the rest.
        let extra: &[&str] = if c.name == "default" { &["--include-crds"] } else { &[] };
        let docs = split(&template(c.values, extra));
        assert!(docs.len() >= 8, "{}: only {} manifests rendered", c.name, docs.len());
        for (i, d) in docs.iter().enumerate() {
            assert!(
                !d.kind().is_empty() && !d.name().is_empty() && d.value["apiVersion"].as_str().is_some(),
                "{}: a manifest without apiVersion, kind or name:\n{}",
                c.name,
                d.text
            );
            if let Some((kind, api)) = FOREIGN_KINDS.iter().find(|(k, _)| *k == d.kind()) {
                // No schema in kubernetes-validate: parsed (above) and checked by hand.
                assert_eq!(d.value["apiVersion"].as_str(), Some(*api), "{}: {kind} apiVersion", c.name);
                assert_eq!(d.value["metadata"]["namespace"].as_str(), Some(NAMESPACE), "{}: {kind} namespace", c.name);
                assert!(d.value["spec"].is_mapping(), "{}: {kind} has no spec", c.name);
                foreign_seen.insert(*kind);
                continue;
            }
            let f = dir.path().join(format!("{}-{i:02}-{}.yaml", c.name, d.kind()));
            std::fs::write(&f, &d.text).unwrap();
            files.push(f);
        }
    }
    assert_eq!(
        foreign_seen,
        FOREIGN_KINDS.iter().map(|(k, _)| *k).collect::<BTreeSet<_>>(),
        "the value sets render every foreign kind"
    );
    let r = kubernetes_validate(&files);
    assert_eq!(r.code, 0, "kubernetes-validate --strict -k 1.33.0 refused a manifest:\n{}{}", r.stdout, r.stderr);
    let passed = r.stdout.lines().filter(|l| l.contains(" passed for resource ")).count();
    assert_eq!(passed, files.len(), "every file must be validated against a schema:\n{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("Couldn't find schema"), "a kind without a schema slipped through:\n{}", r.stdout);
}

#[test]
fn rendering_is_deterministic() {
    for c in cases() {
        let a = template(c.values, &["--include-crds"]);
        let b = template(c.values, &["--include-crds"]);
        assert!(a == b, "{}: two renders differ", c.name);
    }
    // And nothing that would make them differ on a cluster: no lookup, no generated
    // certificates or keys, no random values, no clock.
    let banned = [
        "lookup",
        "genCA",
        "genCAWithKey",
        "genPrivateKey",
        "genSelfSignedCert",
        "genSelfSignedCertWithKey",
        "genSignedCert",
        "genSignedCertWithKey",
        "randAlpha",
        "randAlphaNum",
        "randAscii",
        "randNumeric",
        "randBytes",
        "randInt",
        "uuidv4",
        "now",
        "htpasswd",
        "derivePassword",
        "encryptAES",
    ];
    for entry in std::fs::read_dir(chart_dir().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for action in text.split("{{").skip(1).map(|s| s.split("}}").next().unwrap_or_default()) {
            let code = action.trim_start_matches('-').trim_start();
            if code.starts_with("/*") {
                continue;
            }
            for word in code.split(|c: char| !c.is_ascii_alphanumeric()) {
                assert!(
                    !banned.contains(&word),
                    "{} uses {word}, which renders differently each time or needs a cluster",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn values_schema_refuses_bad_values() {
    let bad: [(&str, &str); 14] = [
        ("replicas: two\n", "/replicas"),
        ("replicas: 0\n", "/replicas"),
        ("logLevel: loud\n", "/logLevel"),
        ("logFormat: xml\n", "/logFormat"),
        ("nats:\n  url: http://x\n", "/nats/url"),
        ("nats:\n  url: nats://a:4222,http://b\n", "/nats/url"),
        ("bogus: 1\n", "bogus"),
        ("nats:\n  bogus: 1\n", "bogus"),
        ("webhook:\n  certManager:\n    bogus: true\n", "bogus"),
        ("webhook:\n  timeoutSeconds: 31\n", "/webhook/timeoutSeconds"),
        ("concurrency: -1\n", "/concurrency"),
        ("resync: soon\n", "/resync"),
        ("watchNamespaces: shop\n", "/watchNamespaces"),
        ("sidecar:\n  logLevel: chatty\n", "/sidecar/logLevel"),
    ];
    for (values, path) in bad {
        let r = template_run(values, &[]);
        assert_ne!(r.code, 0, "values accepted but should not be:\n{values}");
        assert!(
            r.stderr.contains("don't meet the specifications of the schema") && r.stderr.contains(path),
            "values\n{values}should fail the schema at {path}; helm said:\n{}",
            r.stderr
        );
    }
    // --set with a string for a number, as users type it.
    let chart = chart_dir().display().to_string();
    let r = helm(&["template", RELEASE, &chart, "--set", "replicas=two"]);
    assert!(r.code != 0 && r.stderr.contains("/replicas"), "--set replicas=two must fail:\n{}", r.stderr);

    // Contradictory webhook certificate settings fail with a message that says why.
    let r = template_run(
        "webhook:\n  certManager:\n    enabled: true\n  tls:\n    secretName: x\n    caBundle: not-a-pem\n",
        &[],
    );
    assert!(r.code != 0 && r.stderr.contains("exclude each other"), "{}", r.stderr);
    let r = template_run("webhook:\n  tls:\n    secretName: x\n", &[]);
    assert!(r.code != 0 && r.stderr.contains("needs webhook.tls.caBundle"), "{}", r.stderr);

    // additionalProperties: false at the top and in every section of the schema.
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap()).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    fn closed(path: &str, s: &serde_json::Value, open: &mut Vec<String>) {
        if let Some(props) = s["properties"].as_object() {
            if s["additionalProperties"] != serde_json::Value::Bool(false) {
                open.push(path.to_owned());
            }
            for (k, v) in props {
                closed(&format!("{path}/{k}"), v, open);
            }
        }
    }
    let mut open = Vec::new();
    closed("", &schema, &mut open);
    assert!(open.is_empty(), "schema sections without additionalProperties: false: {open:?}");
}

/// `(apiGroup, resource, verb, resourceName)` grants of a set of rules.
fn grants(rules: &Value) -> Vec<(String, String, String, Option<String>)> {
    let mut out = Vec::new();
    for r in rules.as_sequence().expect("rules") {
        let names = strs(&r["resourceNames"]);
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                for v in strs(&r["verbs"]) {
                    if names.is_empty() {
                        out.push((g.clone(), res.clone(), v.clone(), None));
                    }
                    for n in &names {
                        out.push((g.clone(), res.clone(), v.clone(), Some(n.clone())));
                    }
                }
            }
        }
    }
    out
}

fn has(g: &[(String, String, String, Option<String>)], group: &str, res: &str, verb: &str) -> bool {
    g.iter().any(|(gg, r, v, _)| gg == group && r == res && v == verb)
}

#[test]
fn rbac_is_least_privilege_and_grants_what_the_operator_needs() {
    for c in cases() {
        let docs = render(c.values);
        for kind in ["ClusterRole", "Role"] {
            for role in all(&docs, kind) {
                for rule in role["rules"].as_sequence().expect("rules") {
                    for field in ["verbs", "resources", "apiGroups", "resourceNames"] {
                        assert!(
                            !strs(&rule[field]).iter().any(|s| s.contains('*')),
                            "{}: {kind} {} has a wildcard in {field}: {rule:?}",
                            c.name,
                            role["metadata"]["name"].as_str().unwrap_or_default()
                        );
                    }
                }
            }
        }
    }

    let docs = render("{}");
    let cluster = grants(&one(&docs, "ClusterRole")["rules"]);
    let role = one(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"].as_str(), Some(NAMESPACE), "the Role is in the release namespace");
    let local = grants(&role["rules"]);

    // docs/operator.md, "Permissions" (plus update, which a status write by replace may use).
    for res in ["eventstores", "nodes", "listeners"] {
        for verb in ["get", "list", "watch", "patch", "update"] {
            assert!(has(&cluster, "causeway.dev", res, verb), "ClusterRole lacks {verb} on {res}");
        }
        for verb in ["get", "patch", "update"] {
            assert!(
                has(&cluster, "causeway.dev", &format!("{res}/status"), verb),
                "ClusterRole lacks {verb} on {res}/status"
            );
        }
    }
    for verb in ["create", "patch"] {
        assert!(has(&cluster, "events.k8s.io", "events", verb), "ClusterRole lacks {verb} on events.events.k8s.io");
    }
    // ConfigMaps of schemas: read, and watched so a change reconciles its store or node at once.
    for verb in ["get", "list", "watch"] {
        assert!(has(&cluster, "", "configmaps", verb), "ClusterRole lacks {verb} on configmaps");
    }
    // Leases: only in the release namespace, by name except create.
    let lease = flag(&docs, "--lease-name").expect("--lease-name");
    for verb in ["get", "patch", "update"] {
        assert!(
            local.contains(&("coordination.k8s.io".into(), "leases".into(), verb.into(), Some(lease.clone()))),
            "Role lacks {verb} on the lease {lease}"
        );
    }
    assert!(local.contains(&("coordination.k8s.io".into(), "leases".into(), "create".into(), None)));
    assert!(!has(&cluster, "coordination.k8s.io", "leases", "get"), "leases belong in the namespaced Role");
    assert!(
        local
            .iter()
            .filter(|(g, r, _, _)| g == "coordination.k8s.io" && r == "leases")
            .all(|(_, _, v, n)| v == "create" || n.is_some()),
        "every lease verb but create is restricted by name"
    );
    // The webhook: its own configuration by name, every verb (the operator lists and watches
    // it with a metadata.name field selector), and its own TLS Secret.
    let mwc = one(&docs, "MutatingWebhookConfiguration")["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(flag(&docs, "--webhook-config").as_deref(), Some(mwc.as_str()));
    for verb in ["get", "list", "watch", "patch"] {
        assert!(
            cluster.contains(&(
                "admissionregistration.k8s.io".into(),
                "mutatingwebhookconfigurations".into(),
                verb.into(),
                Some(mwc.clone())
            )),
            "ClusterRole lacks {verb} on the MutatingWebhookConfiguration {mwc}"
        );
    }
    for (g, r, v, n) in &cluster {
        if r == "mutatingwebhookconfigurations" {
            assert_eq!(n.as_deref(), Some(mwc.as_str()), "{v} on {g}/{r} must be restricted to {mwc}");
        }
    }
    let secret = flag(&docs, "--webhook-secret").expect("--webhook-secret");
    for verb in ["get", "update", "patch"] {
        assert!(
            local.contains(&("".into(), "secrets".into(), verb.into(), Some(secret.clone()))),
            "Role lacks {verb} on {secret}"
        );
    }
    for (_, r, v, n) in &local {
        if r == "secrets" {
            assert!(
                v == "create" || n.as_deref() == Some(secret.as_str()),
                "{v} on secrets must be restricted to {secret}"
            );
        }
    }
    assert!(!cluster.iter().any(|(_, r, _, _)| r == "secrets"), "no cluster-wide access to Secrets");
    assert!(!cluster.iter().chain(&local).any(|(_, _, v, _)| v == "delete"
        || v == "deletecollection"
        || v == "escalate"
        || v == "bind"
        || v == "impersonate"));

    // With cert-manager or a certificate of one's own, the operator touches neither.
    for name in ["cert-manager", "bring-your-own-tls"] {
        let docs = render(case(name));
        let cluster = grants(&one(&docs, "ClusterRole")["rules"]);
        let local = grants(&one(&docs, "Role")["rules"]);
        assert!(!cluster.iter().any(|(_, r, _, _)| r == "mutatingwebhookconfigurations"), "{name}: no MWC access");
        assert!(!local.iter().any(|(_, r, _, _)| r == "secrets"), "{name}: no Secret access");
    }

    // Both bindings give the roles to the Deployment's ServiceAccount.
    let sa = one(&docs, "ServiceAccount")["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(one(&docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"].as_str(), Some(sa.as_str()));
    for (binding, role_kind) in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")] {
        let b = one(&docs, binding);
        assert_eq!(b["roleRef"]["kind"].as_str(), Some(role_kind));
        assert_eq!(b["roleRef"]["name"], one(&docs, role_kind)["metadata"]["name"]);
        let subject = &b["subjects"][0];
        assert_eq!(subject["kind"].as_str(), Some("ServiceAccount"));
        assert_eq!(subject["name"].as_str(), Some(sa.as_str()));
        assert_eq!(subject["namespace"].as_str(), Some(NAMESPACE));
    }
}

#[test]
fn chart_crds_are_byte_identical_to_the_repository_crds() {
    let list = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect()
    };
    let repo = list(&workspace_root().join("crds"));
    let chart = list(&chart_dir().join("crds"));
    assert!(!repo.is_empty());
    assert_eq!(
        repo.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "charts/causeway/crds/ must hold the files of crds/: run scripts/sync-chart-crds.sh"
    );
    for (name, bytes) in &repo {
        assert!(
            &chart[name] == bytes,
            "charts/causeway/crds/{name} differs from crds/{name}: run scripts/sync-chart-crds.sh"
        );
    }
    let r = run(&workspace_root().join("scripts/sync-chart-crds.sh"), &["--check"]);
    assert_eq!(r.code, 0, "scripts/sync-chart-crds.sh --check: {}", r.stderr);
}

#[test]
fn mutating_webhook_configuration_is_strict_and_opt_in() {
    let docs = render("{}");
    let mwc = one(&docs, "MutatingWebhookConfiguration");
    assert_eq!(mwc["metadata"]["name"].as_str(), Some("causeway-sidecar-injector"));
    let w = webhook(&docs);
    assert_eq!(w["name"].as_str(), Some("inject.causeway.dev"));
    assert_eq!(w["failurePolicy"].as_str(), Some("Fail"));
    assert_eq!(w["sideEffects"].as_str(), Some("None"));
    assert_eq!(w["reinvocationPolicy"].as_str(), Some("IfNeeded"));
    assert_eq!(strs(&w["admissionReviewVersions"]), ["v1"]);
    let timeout = w["timeoutSeconds"].as_i64().expect("timeoutSeconds");
    assert!((1..=10).contains(&timeout), "timeoutSeconds {timeout} must be at most 10");
    let rules = w["rules"].as_sequence().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(strs(&rules[0]["operations"]), ["CREATE"]);
    assert_eq!(strs(&rules[0]["apiGroups"]), [""]);
    assert_eq!(strs(&rules[0]["apiVersions"]), ["v1"]);
    assert_eq!(strs(&rules[0]["resources"]), ["pods"]);

    // clientConfig: the chart's Service, port 443 to the container's 8443 named webhook.
    let svc_ref = &w["clientConfig"]["service"];
    assert_eq!(svc_ref["path"].as_str(), Some("/mutate-pods"));
    assert_eq!(svc_ref["namespace"].as_str(), Some(NAMESPACE));
    assert_eq!(svc_ref["port"].as_i64(), Some(443));
    let svc_name = svc_ref["name"].as_str().unwrap();
    assert_eq!(flag(&docs, "--webhook-service").as_deref(), Some(svc_name));
    let svc =
        all(&docs, "Service").into_iter().find(|s| s["metadata"]["name"] == svc_name).expect("the webhook Service");
    let port = &svc["spec"]["ports"][0];
    assert_eq!((port["port"].as_i64(), port["targetPort"].as_str()), (Some(443), Some("webhook")));
    assert_eq!(svc["spec"]["selector"], one(&docs, "Deployment")["spec"]["selector"]["matchLabels"]);
    let cport =
        operator_container(&docs)["ports"].as_sequence().unwrap().iter().find(|p| p["name"] == "webhook").cloned();
    assert_eq!(cport.and_then(|p| p["containerPort"].as_i64()), Some(8443));
    assert_eq!(flag(&docs, "--webhook-addr").as_deref(), Some("0.0.0.0:8443"));

    // Opt-in namespaces; never the release's own nor kube-system.
    let excluded = |w: &Value| -> Vec<String> {
        w["namespaceSelector"]["matchExpressions"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
            .flat_map(|e| strs(&e["values"]))
            .collect()
    };
    assert_eq!(w["namespaceSelector"]["matchLabels"]["causeway.dev/inject"].as_str(), Some("enabled"));
    let ex = excluded(w);
    assert!(ex.contains(&NAMESPACE.to_owned()) && ex.contains(&"kube-system".to_owned()), "{ex:?}");
    assert!(w["objectSelector"].is_null(), "no objectSelector by default (pods opt in by annotation)");

    // The operator fills and keeps the caBundle: empty in the template.
    assert!(w["clientConfig"]["caBundle"].is_null());
    assert!(mwc["metadata"]["annotations"].is_null());

    // A namespaceSelector of one's own keeps the exclusions; the objectSelector is passed on.
    let docs = render(case("credentials"));
    let w = webhook(&docs);
    let ex = excluded(w);
    assert!(ex.contains(&NAMESPACE.to_owned()) && ex.contains(&"kube-system".to_owned()), "{ex:?}");
    assert!(w["namespaceSelector"]["matchExpressions"].as_sequence().unwrap().iter().any(|e| e["key"] == "team"));
    assert_eq!(w["objectSelector"]["matchLabels"]["causeway.dev/inject"].as_str(), Some("true"));
    assert_eq!(w["timeoutSeconds"].as_i64(), Some(8));

    // cert-manager: the CA is injected from the chart's Certificate, served from its Secret.
    let docs = render(case("cert-manager"));
    let mwc = one(&docs, "MutatingWebhookConfiguration");
    let cert = one(&docs, "Certificate");
    let cert_name = cert["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str(),
        Some(format!("{NAMESPACE}/{cert_name}").as_str())
    );
    assert!(webhook(&docs)["clientConfig"]["caBundle"].is_null());
    assert!(strs(&cert["spec"]["dnsNames"]).contains(&format!("{svc_name}.{NAMESPACE}.svc")));
    assert_eq!(one(&docs, "Issuer")["spec"]["selfSigned"], Value::Mapping(Default::default()));
    assert_eq!(cert["spec"]["issuerRef"]["name"], one(&docs, "Issuer")["metadata"]["name"]);
    let secret = cert["spec"]["secretName"].as_str().unwrap();
    assert_eq!(volume_secret(&docs, "webhook-tls").as_deref(), Some(secret));
    assert_eq!(mounts(&docs).get("webhook-tls").map(String::as_str), Some("/var/run/causeway/webhook-tls"));
    assert_eq!(flag(&docs, "--webhook-cert-dir").as_deref(), Some("/var/run/causeway/webhook-tls"));
    let docs = render(case("cert-manager-issuer"));
    assert!(all(&docs, "Issuer").is_empty(), "no self-signed Issuer with an issuerRef");
    let cert = one(&docs, "Certificate");
    assert_eq!(cert["spec"]["issuerRef"]["name"].as_str(), Some("corp-ca"));
    assert_eq!(cert["spec"]["issuerRef"]["kind"].as_str(), Some("ClusterIssuer"));

    // Bring your own: the PEM, base64-encoded, and the user's Secret.
    let docs = render(case("bring-your-own-tls"));
    let ca = webhook(&docs)["clientConfig"]["caBundle"].as_str().expect("caBundle").to_owned();
    assert_eq!(ca, base64(PEM.as_bytes()));
    assert!(one(&docs, "MutatingWebhookConfiguration")["metadata"]["annotations"].is_null());
    assert!(all(&docs, "Certificate").is_empty());
    assert_eq!(volume_secret(&docs, "webhook-tls").as_deref(), Some("injector-tls"));
    assert_eq!(flag(&docs, "--webhook-cert-dir").as_deref(), Some("/var/run/causeway/webhook-tls"));
    assert_eq!(flag(&docs, "--webhook-secret").as_deref(), Some("injector-tls"));
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn deployment_is_hardened_probed_and_wired() {
    let docs = render("{}");
    let deploy = one(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"].as_i64(), Some(2));
    let pod = &deploy["spec"]["template"]["spec"];
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(psc["runAsUser"].as_i64(), Some(65532));
    assert_eq!(psc["runAsGroup"].as_i64(), Some(65532));
    assert_eq!(psc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    let c = operator_container(&docs);
    let csc = &c["securityContext"];
    assert_eq!(csc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(csc["runAsUser"].as_i64(), Some(65532));
    assert_eq!(csc["runAsGroup"].as_i64(), Some(65532));
    assert_eq!(csc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(csc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strs(&csc["capabilities"]["drop"]), ["ALL"]);
    assert!(csc["capabilities"]["add"].is_null());
    assert_eq!(csc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null());

    // Probes on the health port, which is the one --health-addr listens on.
    let health = c["ports"].as_sequence().unwrap().iter().find(|p| p["name"] == "health").expect("a port named health");
    assert_eq!(health["containerPort"].as_i64(), Some(8080));
    assert_eq!(flag(&docs, "--health-addr").as_deref(), Some("0.0.0.0:8080"));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert!(get["port"] == "health" || get["port"].as_i64() == Some(8080), "{probe} on the health port");
    }
    assert!(c["resources"]["requests"].is_mapping() && c["resources"]["limits"].is_mapping());

    // The command, leader election on, the downward API, the defaults.
    assert_eq!(strs(&c["command"]), ["/usr/local/bin/causeway", "operator"]);
    let a = args(&docs);
    assert!(!a.iter().any(|x| x.starts_with("--no-leader-election")), "leader election stays on");
    assert!(a.iter().all(|x| x.starts_with("--")), "every arg is a --flag: {a:?}");
    assert_eq!(flag(&docs, "--nats").as_deref(), Some("nats://nats.nats:4222"));
    assert_eq!(flag(&docs, "--resync").as_deref(), Some("60s"));
    assert_eq!(flag(&docs, "--concurrency").as_deref(), Some("8"));
    assert_eq!(flag(&docs, "--lease-duration").as_deref(), Some("15s"));
    assert_eq!(flag(&docs, "--webhook-secret").as_deref(), Some("causeway-webhook-tls"));
    assert_eq!(flag(&docs, "--webhook-cert-dir"), None, "the operator manages its certificate by default");
    assert_eq!(flag(&docs, "--namespaces"), None, "all namespaces by default");
    assert_eq!(flag(&docs, "--creds"), None);
    let e = env(&docs);
    for (name, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        assert_eq!(e[name]["fieldRef"]["fieldPath"].as_str(), Some(field), "{name} from the downward API");
    }
    assert_eq!(env_str(&docs, "CAUSEWAY_LOG").as_deref(), Some("info"));
    assert_eq!(env_str(&docs, "CAUSEWAY_LOG_FORMAT").as_deref(), Some("json"));
    let image = c["image"].as_str().unwrap();
    assert_eq!(image, "ghcr.io/causeway-dev/causeway:0.1.0");
    assert_eq!(
        env_str(&docs, "CAUSEWAY_SIDECAR_IMAGE").as_deref(),
        Some(image),
        "the sidecar comes from the same image"
    );
    assert_eq!(env_str(&docs, "CAUSEWAY_SIDECAR_IMAGE_PULL_POLICY").as_deref(), Some("IfNotPresent"));
    assert_eq!(env_str(&docs, "CAUSEWAY_SIDECAR_NATS_URL").as_deref(), Some("nats://nats.nats:4222"));
    assert_eq!(env_str(&docs, "CAUSEWAY_SIDECAR_CREDS_SECRET"), None);
    assert_eq!(env_str(&docs, "CAUSEWAY_SIDECAR_MEMORY_LIMIT").as_deref(), Some("128Mi"));
    assert_eq!(env_str(&docs, "CAUSEWAY_SIDECAR_LOG").as_deref(), Some("info"));
    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));
    assert_eq!(pdb["spec"]["selector"], deploy["spec"]["selector"]);

    // One replica: no budget (it would block node drains).
    let docs = render(case("one-replica"));
    assert_eq!(one(&docs, "Deployment")["spec"]["replicas"].as_i64(), Some(1));
    assert!(all(&docs, "PodDisruptionBudget").is_empty());

    // Watched namespaces, comma-joined; the other knobs.
    let docs = render(case("watch-namespaces"));
    assert_eq!(flag(&docs, "--namespaces").as_deref(), Some("shop,billing"));
    assert_eq!(flag(&docs, "--resync").as_deref(), Some("30s"));
    assert_eq!(flag(&docs, "--concurrency").as_deref(), Some("4"));
    assert_eq!(flag(&docs, "--lease-duration").as_deref(), Some("20s"));
    assert_eq!(env_str(&docs, "CAUSEWAY_LOG").as_deref(), Some("debug"));
    assert_eq!(env_str(&docs, "CAUSEWAY_LOG_FORMAT").as_deref(), Some("text"));
    assert_eq!(all(&docs, "ClusterRole").len(), 1, "still one ClusterRole");

    // Credentials and TLS: mounted Secrets, flags pointing into them; the sidecar defaults.
    let docs = render(case("credentials"));
    assert_eq!(flag(&docs, "--nats").as_deref(), Some("tls://nats-0.nats:4222,tls://nats-1.nats:4222"));
    assert_eq!(flag(&docs, "--creds").as_deref(), Some("/var/run/causeway/nats/operator.creds"));
    assert_eq!(volume_secret(&docs, "nats-creds").as_deref(), Some("causeway-nats"));
    assert_eq!(mounts(&docs).get("nats-creds").map(String::as_str), Some("/var/run/causeway/nats"));
    assert_eq!(flag(&docs, "--tls-ca").as_deref(), Some("/var/run/causeway/nats-tls/ca.crt"));
    assert_eq!(flag(&docs, "--tls-cert").as_deref(), Some("/var/run/causeway/nats-tls/tls.crt"));
    assert_eq!(flag(&docs, "--tls-key").as_deref(), Some("/var/run/causeway/nats-tls/tls.key"));
    assert_eq!(volume_secret(&docs, "nats-tls").as_deref(), Some("nats-client-tls"));
    assert_eq!(flag(&docs, "--registry-replicas").as_deref(), Some("3"));
    assert_eq!(env_str(&docs, "CAUSEWAY_SIDECAR_CREDS_SECRET").as_deref(), Some("causeway-sidecar-nats"));
    assert_eq!(env_str(&docs, "CAUSEWAY_SIDECAR_IMAGE").as_deref(), Some("example.org/causeway:dev"));
    assert_eq!(env_str(&docs, "CAUSEWAY_SIDECAR_NATS_URL").as_deref(), Some("tls://nats.nats:4222"));
    assert_eq!(env_str(&docs, "CAUSEWAY_SIDECAR_LOG").as_deref(), Some("warn"));
    for (name, value) in [
        ("CAUSEWAY_SIDECAR_CPU_REQUEST", "20m"),
        ("CAUSEWAY_SIDECAR_MEMORY_REQUEST", "48Mi"),
        ("CAUSEWAY_SIDECAR_CPU_LIMIT", "500m"),
        ("CAUSEWAY_SIDECAR_MEMORY_LIMIT", "256Mi"),
    ] {
        assert_eq!(env_str(&docs, name).as_deref(), Some(value), "{name}");
    }
    let pod = &one(&docs, "Deployment")["spec"]["template"];
    assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"].as_str(), Some("regcred"));
    assert_eq!(pod["spec"]["priorityClassName"].as_str(), Some("system-cluster-critical"));
    assert_eq!(pod["spec"]["nodeSelector"]["kubernetes.io/os"].as_str(), Some("linux"));
    assert_eq!(pod["spec"]["tolerations"][0]["key"].as_str(), Some("dedicated"));
    assert_eq!(pod["metadata"]["annotations"]["example.org/team"].as_str(), Some("platform"));
    assert_eq!(pod["metadata"]["labels"]["example.org/tier"].as_str(), Some("control"));

    // The ServiceMonitor scrapes the metrics Service's port, which reaches the health port.
    let docs = render(case("service-monitor"));
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"].as_str(), Some("prometheus"));
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    assert_eq!(endpoint["interval"].as_str(), Some("15s"));
    let selector = sm["spec"]["selector"]["matchLabels"].as_mapping().expect("matchLabels");
    let matching: Vec<&Value> = all(&docs, "Service")
        .into_iter()
        .filter(|s| selector.iter().all(|(k, v)| s["metadata"]["labels"][k.as_str().unwrap()] == *v))
        .collect();
    assert_eq!(matching.len(), 1, "the ServiceMonitor selects exactly the metrics Service");
    let port = matching[0]["spec"]["ports"].as_sequence().unwrap().iter().find(|p| p["name"] == endpoint["port"]);
    assert_eq!(port.and_then(|p| p["targetPort"].as_str()), Some("health"));
}

/// Every flag and environment variable the chart gives the operator is one `causeway operator`
/// reads (`--help` lists flags with their `[env: …]`; `CAUSEWAY_LOG`, `CAUSEWAY_LOG_FORMAT` are
/// read by the logger of every subcommand, `POD_*` are the lease flags' environment).
#[test]
fn chart_flags_and_env_are_read_by_causeway_operator() {
    let help = causeway_tests::causeway(&["operator", "--help"]);
    assert_eq!(help.code, 0, "causeway operator --help: {}", help.stderr);
    let mut flags = BTreeSet::new();
    let mut vars = BTreeSet::new();
    for c in cases() {
        let docs = render(c.values);
        flags.extend(args(&docs).iter().map(|a| a.split('=').next().unwrap().to_owned()));
        vars.extend(env(&docs).into_keys());
    }
    for f in flags {
        let listed = help.stdout.lines().any(|l| l.split([' ', ',', '=']).any(|w| w == f));
        assert!(listed, "the chart passes {f}, which `causeway operator --help` does not list:\n{}", help.stdout);
    }
    for v in vars {
        if ["CAUSEWAY_LOG", "CAUSEWAY_LOG_FORMAT"].contains(&v.as_str()) {
            continue;
        }
        assert!(
            help.stdout.contains(&format!("[env: {v}=")),
            "the chart sets {v}, which `causeway operator --help` does not list:\n{}",
            help.stdout
        );
    }
}

#[test]
fn dockerfile_builds_both_binaries_into_a_non_root_multi_stage_image() {
    let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).expect("Dockerfile at the repo root");
    // Instructions, with continuation lines joined and comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
        } else {
            pending.push_str(t);
            instructions.push(std::mem::take(&mut pending));
        }
    }
    let op = |i: &String| i.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
    let froms: Vec<&String> = instructions.iter().filter(|i| op(i) == "FROM").collect();
    assert!(froms.len() >= 2, "multi-stage: at least two FROM, got {froms:?}");
    for f in &froms {
        let image = f.split_whitespace().nth(1).expect("FROM image");
        let tagged = image.contains('@') || image.rsplit('/').next().is_some_and(|last| last.contains(':'));
        assert!(tagged, "{f}: pin a tag or digest");
        assert!(!image.ends_with(":latest"), "{f}: no latest tags");
    }
    // The exact toolchain: sidecar/link-order.txt names functions as this compiler mangles them.
    assert!(
        froms[0].contains("rust:1.95.0-bookworm") && froms[0].to_ascii_uppercase().contains(" AS "),
        "{}",
        froms[0]
    );
    let last_from = instructions.iter().rposition(|i| op(i) == "FROM").unwrap();
    let final_stage = &instructions[last_from..];
    let final_image = final_stage[0].split_whitespace().nth(1).unwrap();
    assert!(
        final_image == "gcr.io/distroless/cc-debian12:nonroot" || final_image.starts_with("debian:"),
        "final stage: distroless cc nonroot or debian-slim, got {final_image}"
    );
    for binary in ["/usr/local/bin/causeway", "/usr/local/bin/causeway-sidecar"] {
        assert!(
            final_stage.iter().any(|i| op(i) == "COPY" && i.contains("--from=") && i.trim_end().ends_with(binary)),
            "the final stage copies {binary} from the builder"
        );
    }
    let users: Vec<&String> = final_stage.iter().filter(|i| op(i) == "USER").collect();
    let user = users.last().expect("a USER in the final stage");
    let uid = user.split_whitespace().nth(1).unwrap().split(':').next().unwrap();
    assert!(uid != "root" && uid != "0" && !uid.is_empty(), "non-root USER, got {user}");
    assert_eq!(user.split_whitespace().nth(1), Some("65532:65532"));
    assert!(final_stage.iter().any(|i| i == r#"ENTRYPOINT ["causeway"]"#), "ENTRYPOINT [\"causeway\"]");
    assert!(final_stage.iter().any(|i| i == r#"CMD ["operator"]"#), "CMD [\"operator\"]");
    // Both binaries are built with the shipping profile (whole-program optimisation, see the
    // root Cargo.toml), locked to Cargo.lock, and the dependencies get their own layer (a build
    // before the sources are copied).
    let builds: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| op(i) == "RUN" && i.contains("cargo build") && i.contains("--profile dist"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(builds.len(), 2, "a dependency build and the real build");
    for &n in &builds {
        let i = &instructions[n];
        // The sidecar on its own: built with the CLI, it would share the CLI's features
        // (Kubernetes client, HTTP/2) and carry their code.
        assert!(
            i.contains("cargo build --profile dist --locked -p causeway-sidecar && cargo build --profile dist --locked -p causeway-cli"),
            "{i}"
        );
    }
    let first_source_copy =
        instructions.iter().position(|i| op(i) == "COPY" && i.contains("/src ")).expect("the sources are copied");
    assert!(builds[0] < first_source_copy && first_source_copy < builds[1], "dependency layer before the sources");
    assert!(instructions[builds[1]].contains("target/dist/causeway-sidecar"), "the image takes the dist binaries");
    // Every workspace member's manifest is copied before the dependency build.
    for m in workspace_members() {
        let copy = format!("{m}/Cargo.toml");
        let at = instructions.iter().position(|i| op(i) == "COPY" && i.contains(&copy));
        assert!(at.is_some_and(|at| at < builds[0]), "the Dockerfile copies {copy} before the dependency build");
    }
    // Every build script, and the sidecar's link order that its build script reads, is copied
    // before the real build.
    let mut build_inputs: Vec<String> = workspace_members()
        .into_iter()
        .map(|m| format!("{m}/build.rs"))
        .filter(|f| workspace_root().join(f).exists())
        .collect();
    build_inputs.push("sidecar/link-order.txt".into());
    for f in build_inputs {
        let at = instructions.iter().position(|i| op(i) == "COPY" && i.split_whitespace().any(|w| w == f));
        assert!(at.is_some_and(|at| at < builds[1]), "the Dockerfile copies {f} before the real build");
    }
    let ignore = std::fs::read_to_string(workspace_root().join(".dockerignore")).expect(".dockerignore");
    for must in ["target", ".git", ".tools"] {
        assert!(ignore.lines().any(|l| l.trim().trim_end_matches('/') == must), ".dockerignore leaves out {must}");
    }
}

/// The workspace members, from the root Cargo.toml's `members = [...]`.
fn workspace_members() -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let start = text.find("members").expect("workspace members");
    let open = start + text[start..].find('[').unwrap();
    let close = open + text[open..].find(']').unwrap();
    text[open + 1..close].split(',').map(|s| s.trim().trim_matches('"').to_owned()).filter(|s| !s.is_empty()).collect()
}

#[test]
fn nats_values_turn_on_durable_jetstream_for_the_official_chart() {
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/nats-values.yaml")).expect("deploy/nats-values.yaml");
    let v: Value = serde_yaml::from_str(&text).expect("YAML");
    let js = &v["config"]["jetstream"];
    assert_eq!(js["enabled"].as_bool(), Some(true));
    assert_eq!(js["fileStore"]["enabled"].as_bool(), Some(true));
    assert_eq!(js["fileStore"]["pvc"]["enabled"].as_bool(), Some(true));
    assert!(js["fileStore"]["pvc"]["size"].as_str().is_some());
    assert_eq!(js["merge"]["sync_interval"].as_str(), Some("always"), "config.jetstream.merge.sync_interval: always");
    assert_eq!(v["config"]["cluster"]["replicas"].as_i64(), Some(3), "the 3-server cluster option");
    // Node credentials name every readable store in the JWT of the CONNECT line
    // (docs/security.md, "How large a credential gets").
    assert!(v["config"]["merge"]["max_control_line"].as_i64() >= Some(65536), "config.merge.max_control_line");
    assert!(v["config"]["cluster"]["enabled"].as_bool().is_some());
    assert!(text.contains("https://nats-io.github.io/k8s/helm/charts/"), "says where the chart comes from");
}

/// Per-node credentials: the account key is mounted into the operator only and passed as a flag,
/// the operator may manage Secrets across namespaces (and only then), and the chart refuses a
/// shared sidecar credential at the same time.
#[test]
fn node_credentials_wire_the_account_key_and_secret_access() {
    let docs = render(case("node-credentials"));
    assert_eq!(flag(&docs, "--nats-account-key").as_deref(), Some("/var/run/causeway/account/signing.nk"));
    assert_eq!(
        flag(&docs, "--nats-account").as_deref(),
        Some("ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA")
    );
    assert_eq!(flag(&docs, "--credentials-ttl").as_deref(), Some("30m"));
    assert_eq!(mounts(&docs).get("nats-account-key").map(String::as_str), Some("/var/run/causeway/account"));
    assert_eq!(volume_secret(&docs, "nats-account-key").as_deref(), Some("causeway-account"));
    let cluster = grants(&one(&docs, "ClusterRole")["rules"]);
    for verb in ["get", "list", "watch", "create", "patch", "delete"] {
        assert!(has(&cluster, "", "secrets", verb), "ClusterRole lacks {verb} on secrets");
    }
    assert!(env_str(&docs, "CAUSEWAY_SIDECAR_CREDS_SECRET").is_none());
    // Without it, no Secret access beyond the webhook's own (checked above for the default).
    let plain = render(case("default"));
    assert!(flag(&plain, "--nats-account-key").is_none());
    let r = template_run(
        "nodeCredentials:\n  accountKeySecret:\n    name: a\nsidecar:\n  credentialsSecret: shared\n",
        &[],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("exclude each other"), "{}", r.stderr);
    let r = template_run("nodeCredentials:\n  account: not-a-key\n", &[]);
    assert_ne!(r.code, 0, "the schema checks the account key");
}
