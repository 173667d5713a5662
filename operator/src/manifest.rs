//! Manifests from files: YAML (multi-document) or JSON → validated [`Object`]s.
//!
//! Every document is checked whole before anything is applied, with the same rules the API
//! server applies to the CRDs (schema via the typed specs, the CRDs' own CEL rules evaluated
//! client-side, and the cross-field checks of `causeway_api::check`). Each problem names the
//! file, the document and the field; a document with any problem produces no object.
//!
//! Rules between objects (a Listener against its Node) need the whole batch and the registry:
//! [`check_batch`] checks them, also before anything is written.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use causeway_api::{
    DnsLabel, Kind,
    check::FieldError,
    crd::{API_VERSION, EventStore, EventStoreSpec, Listener, ListenerSpec, Node, NodeSpec},
    naming,
    registry::{ListenerRecord, MANAGER_APPLY, Meta, Record},
};
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::jetstream::{Object, Reconciler, Spec};

/// The namespace of a manifest without `metadata.namespace`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One problem with one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// File path as given (or `-` for stdin).
    pub file: String,
    /// 1-based document index within the file (0 when the file itself is the problem).
    pub document: usize,
    /// `Kind namespace/name` when known.
    pub object: Option<String>,
    /// Dotted field path, e.g. `spec.retention.maxAge`.
    pub field: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// A parsed document with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The object.
    pub object: Object,
    /// File it came from.
    pub file: String,
    /// Document index in that file (1-based).
    pub document: usize,
    /// `metadata.annotations` (e.g. `causeway.dev/demo-reply`, read by `causeway dev`).
    pub annotations: BTreeMap<String, String>,
}

/// Files below `paths`: files as given, directories searched recursively for `.yaml`, `.yml`
/// and `.json`, in sorted order.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<ManifestError>> {
    let mut files = Vec::new();
    let mut errs = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            files.push(p.clone());
        } else if p.is_dir() {
            walk(p, &mut files, &mut errs);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            errs.push(file_error(p, "no such file or directory"));
        }
    }
    if errs.is_empty() { Ok(files) } else { Err(errs) }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, errs: &mut Vec<ManifestError>) {
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            errs.push(file_error(dir, &e.to_string()));
            return;
        }
    };
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, files, errs);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            files.push(p);
        }
    }
}

fn file_error(p: &Path, message: &str) -> ManifestError {
    ManifestError { file: p.display().to_string(), document: 0, object: None, field: None, message: message.into() }
}

/// Everything read from some manifests.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Valid Causeway objects, in file order.
    pub objects: Vec<Loaded>,
    /// Every problem found (nothing is partially accepted: callers apply only when empty).
    pub errors: Vec<ManifestError>,
    /// Documents of built-in Kubernetes kinds (a Deployment, a Namespace…) that are not ours and
    /// were passed over: `Kind namespace/name (file)`. `kubectl apply` takes those.
    pub skipped: Vec<String>,
    /// The data of the ConfigMaps among them, by namespace and name: where `configMapRef`
    /// schemas are read from (`causeway apply` has no API server to read them from).
    pub config_maps: BTreeMap<(String, String), BTreeMap<String, String>>,
}

/// True for an `apiVersion` of Kubernetes itself (`v1`, `apps/v1`, `*.k8s.io/…`): a document that
/// sits beside Causeway's in a directory of app manifests, not a misspelt Causeway one.
pub fn is_builtin_api_version(api_version: &str) -> bool {
    match api_version.split_once('/') {
        None => api_version == "v1",
        Some((group, _)) => !group.contains('.') || group.ends_with(".k8s.io"),
    }
}

/// Reads and validates every document under `paths`. Objects come back in file order; errors
/// list every problem found (nothing is partially accepted: callers apply only when empty).
pub fn load(paths: &[PathBuf]) -> (Vec<Loaded>, Vec<ManifestError>) {
    let m = load_all(paths);
    (m.objects, m.errors)
}

/// [`load`], and the documents of built-in kinds it passed over.
pub fn load_all(paths: &[PathBuf]) -> Manifests {
    let files = match collect_files(paths) {
        Ok(f) => f,
        Err(e) => return Manifests { errors: e, ..Default::default() },
    };
    let mut objects = Vec::new();
    let mut errs = Vec::new();
    let mut skipped = Vec::new();
    let mut config_maps = BTreeMap::new();
    for f in files {
        let name = f.display().to_string();
        let text = if f.as_os_str() == "-" {
            let mut s = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                Ok(_) => s,
                Err(e) => {
                    errs.push(file_error(&f, &e.to_string()));
                    continue;
                }
            }
        } else {
            match std::fs::read_to_string(&f) {
                Ok(s) => s,
                Err(e) => {
                    errs.push(file_error(&f, &e.to_string()));
                    continue;
                }
            }
        };
        let m = parse_str_all(&text, &name);
        objects.extend(m.objects);
        errs.extend(m.errors);
        skipped.extend(m.skipped);
        config_maps.extend(m.config_maps);
    }
    check_duplicates(&objects, &mut errs);
    let mut m = Manifests { objects, errors: errs, skipped, config_maps };
    attach_config_maps(&mut m);
    m
}

/// Hands every object the ConfigMaps its `spec.schemas` refer to, from the same batch, and
/// checks the schemas they hold: a ConfigMap that is not in the batch, a missing key or a value
/// that is not a valid JSON Schema is a problem of the object's document (nothing is applied).
pub fn attach_config_maps(m: &mut Manifests) {
    for l in &mut m.objects {
        let ns = l.object.meta.namespace.to_string();
        let mut data = crate::jetstream::schemas::ConfigMaps::new();
        for s in l.object.schema_specs() {
            if let Some(r) = &s.config_map_ref
                && let Some(d) = m.config_maps.get(&(ns.clone(), r.name.clone()))
            {
                data.insert(r.name.clone(), d.clone());
            }
        }
        if let Err((_, message)) = crate::jetstream::schemas::resolve(l.object.schema_specs(), &data, &ns) {
            let message = if message.contains("does not exist") {
                format!(
                    "{message}. causeway apply reads ConfigMaps from the manifests it is given: add the ConfigMap's manifest to this apply"
                )
            } else {
                message
            };
            m.errors.push(ManifestError {
                file: l.file.clone(),
                document: l.document,
                object: Some(l.object.display()),
                field: Some("spec.schemas".into()),
                message,
            });
        }
        l.object.config_maps = data;
    }
}

fn check_duplicates(objects: &[Loaded], errs: &mut Vec<ManifestError>) {
    let mut seen: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for l in objects {
        if let Some((file, doc)) = seen.insert(l.object.key(), (l.file.clone(), l.document)) {
            errs.push(ManifestError {
                file: l.file.clone(),
                document: l.document,
                object: Some(l.object.display()),
                field: Some("metadata.name".into()),
                message: format!("defined twice: also in {file} document {doc}; give each object its own name"),
            });
        }
    }
}

/// Checks the rules between objects for a whole batch of valid documents, before anything is
/// written: every Listener is resolved against its Node — the Node of the same batch if there
/// is one (it is applied before the listener), else the Node already in the registry (read
/// only). A Listener whose Node is in neither place is no problem here: it reconciles as
/// `SourceNotFound` until the Node exists. Problems name the listener's file, document and field.
pub async fn check_batch(reconciler: &Reconciler, objects: &[Loaded]) -> crate::Result<Vec<ManifestError>> {
    let in_batch: HashMap<String, (&Loaded, &NodeSpec)> = objects
        .iter()
        .filter_map(|l| match &l.object.spec {
            Spec::Node(n) => Some((l.object.key(), (l, n))),
            _ => None,
        })
        .collect();
    // Many listeners share a node: read each registry record once.
    let mut registry: HashMap<String, Option<NodeSpec>> = HashMap::new();
    let mut errs = Vec::new();
    for l in objects {
        let Spec::Listener(spec) = &l.object.spec else { continue };
        let ns = &l.object.meta.namespace;
        let key = naming::registry_key(ns, Kind::Node, &spec.node);
        let node_name = format!("Node {ns}/{}", spec.node);
        let (node, origin) = match in_batch.get(&key) {
            Some((n, s)) => ((*s).clone(), format!("{node_name} in {} document {}", n.file, n.document)),
            None => {
                if !registry.contains_key(&key) {
                    let found = match reconciler.read_record(ns, Kind::Node, &spec.node).await? {
                        Some(Record::Node(r)) => Some(r.spec),
                        _ => None,
                    };
                    registry.insert(key.clone(), found);
                }
                match &registry[&key] {
                    Some(s) => (s.clone(), format!("{node_name} as applied earlier")),
                    None => continue,
                }
            }
        };
        errs.extend(listener_against_node(&l.object.meta, spec, &node).into_iter().map(|e| ManifestError {
            file: l.file.clone(),
            document: l.document,
            object: Some(l.object.display()),
            field: Some(e.field),
            message: format!("{} ({origin})", e.message),
        }));
    }
    Ok(errs)
}

/// The problems of a Listener resolved against its Node: exactly the rules the reconcile core
/// applies (`ListenerRecord::resolve`), so a batch check and a reconcile cannot disagree.
pub fn listener_against_node(meta: &Meta, spec: &ListenerSpec, node: &NodeSpec) -> Vec<FieldError> {
    ListenerRecord::resolve(meta.clone(), spec, node).err().unwrap_or_default()
}

/// Parses one file's text (YAML, one or more documents; JSON is YAML too).
pub fn parse_str(text: &str, file: &str) -> (Vec<Loaded>, Vec<ManifestError>) {
    let mut m = parse_str_all(text, file);
    attach_config_maps(&mut m);
    (m.objects, m.errors)
}

/// [`parse_str`], and the documents of built-in kinds it passed over.
pub fn parse_str_all(text: &str, file: &str) -> Manifests {
    let mut objects = Vec::new();
    let mut errs = Vec::new();
    let mut skipped = Vec::new();
    let mut config_maps = BTreeMap::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let err = |object: Option<String>, field: Option<&str>, message: String| ManifestError {
            file: file.to_owned(),
            document,
            object,
            field: field.map(str::to_owned),
            message,
        };
        let value: serde_yaml::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errs.push(err(None, None, format!("malformed YAML: {e}")));
                // After a syntax error the rest of the stream cannot be trusted.
                break;
            }
        };
        if value.is_null() {
            continue; // empty document, e.g. a trailing `---`
        }
        let value: Value = match serde_json::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                errs.push(err(None, None, format!("not representable as JSON: {e}")));
                continue;
            }
        };
        // A built-in kind (Deployment, Namespace…) is passed over; a document named like ours
        // with a Kubernetes apiVersion is a mistake worth an error.
        let ours = value.get("kind").and_then(Value::as_str).and_then(Kind::from_manifest_kind).is_some();
        if let Some(v) = value.get("apiVersion").and_then(Value::as_str)
            && is_builtin_api_version(v)
            && !ours
        {
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or("?");
            let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
            let who = match value.pointer("/metadata/namespace").and_then(Value::as_str) {
                Some(ns) => format!("{ns}/{name}"),
                None => name.to_owned(),
            };
            if kind == "ConfigMap" && v == "v1" {
                let ns = value.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(DEFAULT_NAMESPACE);
                let data: BTreeMap<String, String> = value
                    .get("data")
                    .and_then(Value::as_object)
                    .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
                    .unwrap_or_default();
                config_maps.insert((ns.to_owned(), name.to_owned()), data);
            }
            skipped.push(format!("{kind} {who} ({file} document {document})"));
            continue;
        }
        let annotations = value
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
            .unwrap_or_default();
        match parse_value(value) {
            Ok(object) => objects.push(Loaded { object, file: file.to_owned(), document, annotations }),
            Err((object, problems)) => {
                errs.extend(problems.into_iter().map(|(field, message)| err(object.clone(), field.as_deref(), message)))
            }
        }
    }
    Manifests { objects, errors: errs, skipped, config_maps }
}

type Problems = Vec<(Option<String>, String)>;

/// Validates one document as JSON. On failure: the object's display name if known, and the problems.
pub fn parse_value(mut v: Value) -> Result<Object, (Option<String>, Problems)> {
    let Some(map) = v.as_object_mut() else {
        return Err((
            None,
            vec![(None, "a manifest must be a mapping with apiVersion, kind, metadata and spec".into())],
        ));
    };
    let mut problems: Problems = Vec::new();
    for k in map.keys() {
        if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            problems
                .push((Some(k.clone()), "unknown field; a manifest has apiVersion, kind, metadata and spec".into()));
        }
    }
    let kind_text = map.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    let Some(kind) = Kind::from_manifest_kind(&kind_text) else {
        let msg = if kind_text.is_empty() {
            "missing: set kind to EventStore, Node or Listener".to_string()
        } else {
            format!("{kind_text:?} is not a Causeway kind: use EventStore, Node or Listener")
        };
        problems.push((Some("kind".into()), msg));
        return Err((None, problems));
    };
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(other) => {
            problems.push((Some("apiVersion".into()), format!("{other:?} is not served: use {API_VERSION}")))
        }
        None => problems.push((Some("apiVersion".into()), format!("missing: set apiVersion: {API_VERSION}"))),
    }
    let meta = map.get("metadata").cloned().unwrap_or(Value::Null);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or(DEFAULT_NAMESPACE).to_owned();
    let display = format!("{kind} {namespace}/{name}");
    let name = match DnsLabel::new(name.clone()) {
        Ok(n) => Some(n),
        Err(e) if name.is_empty() => {
            let _ = e;
            problems.push((Some("metadata.name".into()), "missing: every object needs a name".into()));
            None
        }
        Err(e) => {
            problems.push((Some("metadata.name".into()), e.to_string()));
            None
        }
    };
    let namespace = match DnsLabel::new(namespace) {
        Ok(n) => Some(n),
        Err(e) => {
            problems.push((Some("metadata.namespace".into()), e.to_string()));
            None
        }
    };
    let spec_value = match map.get("spec") {
        Some(Value::Null) | None if kind == Kind::Listener => {
            problems.push((Some("spec".into()), "missing: a Listener needs spec.node and spec.source".into()));
            return Err((Some(display), problems));
        }
        Some(Value::Null) | None => Value::Object(Default::default()),
        Some(s) => s.clone(),
    };
    let spec = match kind {
        Kind::EventStore => {
            typed::<EventStoreSpec>(spec_value, &EventStore::crd(), &mut problems).map(Spec::EventStore)
        }
        Kind::Node => typed::<NodeSpec>(spec_value, &Node::crd(), &mut problems).map(Spec::Node),
        Kind::Listener => typed::<ListenerSpec>(spec_value, &Listener::crd(), &mut problems).map(Spec::Listener),
    };
    let (Some(spec), Some(name), Some(namespace)) = (spec, name, namespace) else {
        return Err((Some(display), problems));
    };
    let object = Object::new(Meta { namespace, name, generation: None, manager: MANAGER_APPLY.into() }, spec);
    problems.extend(cel_problems(&object));
    problems.extend(object.check().into_iter().map(|e| (Some(e.field), e.message)));
    if problems.is_empty() { Ok(object) } else { Err((Some(display), problems)) }
}

/// Deserialises a spec, reporting the failing field's path and every unknown field.
fn typed<T: DeserializeOwned>(v: Value, crd: &k8s_crd::CustomResourceDefinition, problems: &mut Problems) -> Option<T> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(v, &mut track);
    let result: Result<T, _> = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
    for path in unknown {
        let path = clean_path(&path);
        let known = known_fields(crd, &path);
        let hint = if known.is_empty() { String::new() } else { format!("; known fields here: {}", known.join(", ")) };
        problems.push((Some(format!("spec.{path}")), format!("unknown field{hint}")));
    }
    match result {
        Ok(t) => Some(t),
        Err(e) => {
            let path = track.path().to_string();
            let field =
                if path == "." || path.is_empty() { "spec".to_string() } else { format!("spec.{}", clean_path(&path)) };
            problems.push((Some(field), e.to_string()));
            None
        }
    }
}

mod k8s_crd {
    pub use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
}

/// serde_ignored writes `Some` levels as `?`; drop them.
fn clean_path(p: &str) -> String {
    p.split('.').filter(|s| *s != "?").collect::<Vec<_>>().join(".")
}

/// The property names the CRD schema allows next to an unknown field at `path` (below spec).
fn known_fields(crd: &k8s_crd::CustomResourceDefinition, path: &str) -> Vec<String> {
    let Some(schema) =
        crd.spec.versions.first().and_then(|v| v.schema.as_ref()).and_then(|s| s.open_api_v3_schema.as_ref())
    else {
        return Vec::new();
    };
    let Ok(mut node) = serde_json::to_value(schema) else { return Vec::new() };
    node = node["properties"]["spec"].clone();
    let segments: Vec<&str> = path.split('.').collect();
    for seg in &segments[..segments.len().saturating_sub(1)] {
        node = if seg.parse::<usize>().is_ok() { node["items"].clone() } else { node["properties"][*seg].clone() };
    }
    node["properties"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// Evaluates the CRDs' own CEL rules (the ones the API server runs) on the defaulted object.
fn cel_problems(obj: &Object) -> Problems {
    let meta = kube::core::ObjectMeta {
        name: Some(obj.meta.name.to_string()),
        namespace: Some(obj.meta.namespace.to_string()),
        ..Default::default()
    };
    let result = match &obj.spec {
        Spec::EventStore(s) => EventStore { metadata: meta, spec: s.clone(), status: None }.validate_cel(),
        Spec::Node(s) => Node { metadata: meta, spec: s.clone(), status: None }.validate_cel(),
        Spec::Listener(s) => Listener { metadata: meta, spec: s.clone(), status: None }.validate_cel(),
    };
    match result {
        Ok(()) => Vec::new(),
        Err(errs) => errs
            .iter()
            .map(|e| {
                (
                    Some(if e.field_path.is_empty() { "metadata".into() } else { e.field_path.clone() }),
                    e.message.clone(),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(yaml: &str) -> Result<Object, Vec<String>> {
        let (mut o, e) = parse_str(yaml, "t.yaml");
        if e.is_empty() { Ok(o.remove(0).object) } else { Err(e.iter().map(ToString::to_string).collect()) }
    }

    const STORE: &str =
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {name: orders, namespace: shop}\n";

    #[test]
    fn defaults_apply() {
        let o = one(STORE).unwrap();
        let Spec::EventStore(s) = o.spec else { panic!() };
        assert_eq!(s.duplicate_window.to_string(), "2m");
        assert!(s.allow_atomic_batch);
        assert_eq!(o.meta.namespace.as_str(), "shop");
        let o = one("apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: n}\n").unwrap();
        assert_eq!(o.meta.namespace.as_str(), "default");
    }

    #[test]
    fn errors_name_document_and_field() {
        let yaml = format!("{STORE}spec:\n  retention:\n    maxAge: -5s\n");
        let e = one(&yaml).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.yaml: document 1 (EventStore shop/orders): spec.retention.maxAge: "), "{}", e[0]);
        assert!(e[0].contains("not a duration"), "{}", e[0]);
    }

    #[test]
    fn unknown_fields_are_named_with_known_ones() {
        let e = one(&format!("{STORE}spec:\n  retention:\n    maxAgee: 5s\n")).unwrap_err();
        assert!(e[0].contains("spec.retention.maxAgee: unknown field; known fields here: kind, maxAge"), "{e:?}");
        let e = one(&format!("{STORE}specs: {{}}\n")).unwrap_err();
        assert!(e[0].contains(": specs: unknown field"), "{e:?}");
    }

    #[test]
    fn listener_two_sources_is_refused_by_cel_and_check() {
        let y = "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {name: l, namespace: shop}\nspec:\n  node: inv\n  source: {store: orders, inbox: inv}\n";
        let e = one(y).unwrap_err();
        assert!(e.iter().any(|m| m.contains("spec.source") && m.contains("exactly one of store or inbox")), "{e:?}");
    }

    #[test]
    fn start_at_forms() {
        let base = "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {name: l}\nspec:\n  node: inv\n  source: {store: orders}\n";
        for ok in ["new", "all", "last", "{sequence: 5}", "{time: '2026-01-01T00:00:00Z'}"] {
            one(&format!("{base}  startAt: {ok}\n")).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for bad in ["first", "{sequence: 0}", "{sequence: -1}", "{time: yesterday}", "{sequence: 1, time: x}", "7"] {
            let e = one(&format!("{base}  startAt: {bad}\n")).unwrap_err();
            assert!(e.iter().any(|m| m.contains("spec.startAt")), "{bad}: {e:?}");
        }
    }

    #[test]
    fn built_in_kinds_are_passed_over_and_misspelt_causeway_ones_are_not() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: inventory, namespace: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: inventory, namespace: shop}\n";
        let m = parse_str_all(text, "app.yaml");
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        assert_eq!(m.objects.len(), 1);
        assert_eq!(
            m.skipped,
            ["Deployment shop/inventory (app.yaml document 1)", "Namespace shop (app.yaml document 2)"]
        );
        for v in ["v1", "apps/v1", "networking.k8s.io/v1", "policy/v1"] {
            assert!(is_builtin_api_version(v), "{v}");
        }
        for v in ["causeway.dev/v1alpha1", "causway.dev/v1alpha1", "example.com/v1", "v2"] {
            assert!(!is_builtin_api_version(v), "{v}");
        }
        let m = parse_str_all("apiVersion: causway.dev/v1alpha1\nkind: Node\nmetadata: {name: a}\n", "x.yaml");
        assert_eq!(m.errors.len(), 1, "a misspelt group is an error, not skipped");
    }

    #[test]
    fn bad_names_kinds_and_subjects() {
        let e = one("apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {name: Orders_1}\n").unwrap_err();
        assert!(e[0].contains("metadata.name") && e[0].contains("not a valid name"), "{e:?}");
        let e = one("apiVersion: causeway.dev/v1alpha1\nkind: Stream\nmetadata: {name: a}\n").unwrap_err();
        assert!(e[0].contains("kind: \"Stream\" is not a Causeway kind"), "{e:?}");
        let e = one("apiVersion: v1\nkind: Node\nmetadata: {name: a}\n").unwrap_err();
        assert!(e[0].contains("apiVersion"), "{e:?}");
        let base = "apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {name: l}\nspec:\n  node: inv\n  source: {store: orders}\n";
        for bad in ["'a b'", "'a.>.b'", "'a..b'", "''"] {
            let e = one(&format!("{base}  subjects: [{bad}]\n")).unwrap_err();
            assert!(e[0].contains("spec.subjects[0]") || e[0].contains("spec.subjects.0"), "{bad}: {e:?}");
        }
        let e = one(&format!("{base}  types: ['order placed']\n")).unwrap_err();
        assert!(e[0].contains("spec.types"), "{e:?}");
    }

    #[test]
    fn sizes_and_durations() {
        let e = one(&format!("{STORE}spec:\n  retention:\n    maxBytes: 12XB\n")).unwrap_err();
        assert!(e[0].contains("spec.retention.maxBytes") && e[0].contains("not a byte size"), "{e:?}");
        let o = one(&format!("{STORE}spec:\n  retention:\n    maxBytes: 512Mi\n    maxAge: 7d\n")).unwrap();
        let Spec::EventStore(s) = o.spec else { panic!() };
        assert_eq!(s.retention.max_bytes.unwrap().get(), 512 << 20);
        let e = one(&format!("{STORE}spec:\n  replicas: 2\n")).unwrap_err();
        assert!(e[0].contains("spec.replicas") && e[0].contains("1, 3 or 5"), "{e:?}");
    }

    #[test]
    fn listener_against_node_is_the_reconcile_rule() {
        let node = |y: &str| match one(&format!(
            "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {{name: inv}}\n{y}"
        ))
        .unwrap()
        .spec
        {
            Spec::Node(n) => n,
            _ => panic!("not a node"),
        };
        let listener = |delivery: &str| {
            let o = one(&format!("apiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {{name: l}}\nspec:\n  node: inv\n  source: {{store: s}}\n  delivery: {delivery}\n")).unwrap();
            let Spec::Listener(s) = o.spec else { panic!("not a listener") };
            (o.meta, s)
        };
        let strict = node("spec:\n  delivery: {ackWait: 5s}\n");
        let (meta, push) = listener("{}");
        let e = listener_against_node(&meta, &push, &strict);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "spec.delivery.timeout");
        assert!(e[0].message.contains("push timeout 10s must be shorter than ackWait 5s"), "{e:?}");
        assert!(listener_against_node(&meta, &push, &node("")).is_empty(), "the default ackWait is 30s");
        for fine in ["{mode: pull}", "{timeout: 4s}", "{ackWait: 60s}"] {
            let (meta, s) = listener(fine);
            assert!(listener_against_node(&meta, &s, &strict).is_empty(), "{fine}");
        }
    }

    #[test]
    fn malformed_yaml_and_multi_docs() {
        let (o, e) = parse_str("a: [b\n", "bad.yaml");
        assert!(o.is_empty());
        assert!(e[0].to_string().starts_with("bad.yaml: document 1: malformed YAML"), "{e:?}");
        let two = format!("{STORE}---\n{}---\n", STORE.replace("orders", "payments"));
        let (o, e) = parse_str(&two, "two.yaml");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(o.len(), 2);
        assert_eq!(o[1].document, 2);
    }
}
