//! `causeway status`: what every EventStore, Node and Listener looks like now, as a table
//! like `kubectl get`, or as JSON or YAML.
//!
//! Two worlds:
//! - NATS (default): the registry's records are read, and each record's own spec is reconciled
//!   in [`Mode::DryRun`], which computes readiness and figures and writes nothing. The registry
//!   itself is listed without a consumer (stream info with subjects, then one direct get per
//!   key), so the whole command makes no JetStream or KV write at all and needs no permission
//!   to create anything.
//! - Kubernetes (`--kube` or `--kubeconfig`): the objects' `.status`, as the operator wrote it.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{self, context::GetStreamErrorKind};
use causeway_api::{
    DnsLabel, Kind,
    crd::{EventStore, Listener, Node},
    naming::{self, REGISTRY_BUCKET},
    registry::{MANAGER_OPERATOR, Record},
};
use causeway_operator::jetstream::{Action, Mode, Object, Outcome, Reconciler, Spec};
use clap::{Args, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use kube::{
    Resource,
    api::{Api, ApiResource, DynamicObject, ListParams},
};
use serde_json::{Map, Value, json};

use crate::{EXIT_INVALID, EXIT_NOT_READY, nats::NatsArgs, say};

/// Reason shown when a record's main JetStream object (stream or consumer) does not exist.
pub const REASON_MISSING: &str = "Missing";
/// Reason shown when JetStream differs from the record's spec (changed outside Causeway).
pub const REASON_DRIFTED: &str = "Drifted";
/// Reason shown when NATS failed while one object was being looked at.
pub const REASON_NATS_ERROR: &str = "NatsError";
/// Reason shown (Kubernetes) when the operator has not reported on the object's latest spec.
pub const REASON_RECONCILING: &str = "Reconciling";

const HELP: &str = "\
Worlds:
  NATS (default)   Reads the registry (CW_REGISTRY) and computes each object's readiness and
                   figures with a dry-run reconcile of the spec it was applied with. Writes
                   nothing (not even a consumer). Shows objects of every manager: `apply`
                   (causeway apply/dev) and `operator`.
  Kubernetes       --kube (in-cluster, else $KUBECONFIG or ~/.kube/config) or --kubeconfig PATH:
                   prints the .status the operator wrote on each object. NATS flags are ignored.

Selection (like kubectl get):
  causeway status                       everything, in all namespaces
  causeway status -n shop cwl           the listeners of namespace shop
  causeway status eventstore/orders     that store, in any namespace
  causeway status cwes,cwnode orders    the store and the node named orders
  KIND is eventstore|eventstores|cwes, node|nodes|cwnode, listener|listeners|cwl (any case),
  or causeway for all three.

Output:
  (default)  NAMESPACE  KIND/NAME  READY  REASON  TARGET  EVENTS  PENDING  MANAGER|AGE
             TARGET is the stream (EventStore), the inbox stream (Node) or the consumer
             (Listener); EVENTS counts a stream's events, PENDING a consumer's undelivered ones.
  -o wide    adds MESSAGE.
  -o json    a JSON array, -o yaml the same as YAML; one item per object with the fields
             kind, namespace, name, ready (bool), status (True|False|Unknown), reason, message,
             target, jetstream {stream, subjects | inboxStream, inboxSubjects, stateBucket,
             globalBucket | stream, consumer}, figures {events, bytes, firstSequence,
             lastSequence, consumers, maxConsumers | numPending, numAckPending, redelivered},
             and manager, generation (NATS) or generation, observedGeneration,
             creationTimestamp, age (Kubernetes); Nodes also carry credentials (node|shared)
             and isolationEnforcedByNats. Unknown values are null.

Node isolation: the table is followed by a line saying whether NATS enforces it (each node has
its own credential) or not (the sidecars share one credential and only they enforce the
Node's spec.access).

Reasons besides the reconcile's own (Reconciled, SourceNotFound, ImmutableFieldChanged, ...):
  Missing      NATS: the stream or consumer is gone (deleted outside Causeway)
  Drifted      NATS: JetStream differs from the spec; the message lists the fields
  NatsError    NATS: NATS failed while this object was read
  Reconciling  Kubernetes: no status yet, or a status for an older generation

Exit codes:
  0  everything shown is Ready (also when nothing matched a kind filter)
  1  something shown is not Ready, a named object does not exist, or NATS or Kubernetes
     cannot be reached (the message names the URL)
  2  bad flags or filters";

/// Flags of `causeway status`.
#[derive(Debug, Args)]
#[command(after_help = HELP)]
pub struct StatusArgs {
    /// What to show: KIND, KIND,KIND, KIND NAME..., or KIND/NAME... (default: every kind).
    #[arg(value_name = "KIND[/NAME]")]
    pub targets: Vec<String>,
    /// Only this namespace (default: all namespaces).
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// All namespaces (the default; for kubectl habits).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format: a table (default), wide (adds the message), json or yaml.
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,
    /// Read the objects' status from Kubernetes: in-cluster config, else $KUBECONFIG or
    /// ~/.kube/config.
    #[arg(long)]
    pub kube: bool,
    /// Read the objects' status from the Kubernetes cluster of this kubeconfig (implies --kube).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// Output formats of `causeway status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The table, plus the message.
    Wide,
    /// A JSON array of objects.
    Json,
    /// The same as YAML.
    Yaml,
}

/// What to show: a namespace, kinds, and maybe names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selection {
    namespace: Option<DnsLabel>,
    kinds: BTreeSet<Kind>,
    /// (kind, name) pairs; empty: every object of `kinds`.
    names: Vec<(Kind, DnsLabel)>,
}

impl Selection {
    fn wants(&self, ns: &str, kind: Kind, name: &str) -> bool {
        self.namespace.as_ref().is_none_or(|n| n.as_str() == ns)
            && self.kinds.contains(&kind)
            && (self.names.is_empty() || self.names.iter().any(|(k, n)| *k == kind && n.as_str() == name))
    }

    /// Errors for named objects that matched nothing.
    fn missing(&self, items: &[Item]) -> Vec<String> {
        let place = match &self.namespace {
            Some(ns) => format!("in namespace {ns}"),
            None => "in any namespace".into(),
        };
        self.names
            .iter()
            .filter(|(k, n)| !items.iter().any(|i| i.kind == *k && i.name == n.as_str()))
            .map(|(k, n)| format!("{} {:?} not found {place}", k.registry_token(), n.as_str()))
            .collect()
    }
}

/// Parses a kind as kubectl would: singular, plural or short name, any case, optionally
/// with the group. `causeway` (the CRDs' category) is all three.
fn parse_kinds(s: &str) -> Result<Vec<Kind>, String> {
    let mut out = Vec::new();
    for word in s.split(',') {
        let lower = word.trim().to_ascii_lowercase();
        let bare = lower.strip_suffix(".causeway.dev").unwrap_or(&lower);
        match bare {
            "eventstore" | "eventstores" | "cwes" => out.push(Kind::EventStore),
            "node" | "nodes" | "cwnode" => out.push(Kind::Node),
            "listener" | "listeners" | "cwl" => out.push(Kind::Listener),
            "causeway" => out.extend(Kind::ALL),
            _ => {
                return Err(format!(
                    "unknown kind {word:?}: use eventstore (eventstores, cwes), node (nodes, cwnode), listener (listeners, cwl) or causeway"
                ));
            }
        }
    }
    Ok(out)
}

fn label(what: &str, s: &str) -> Result<DnsLabel, String> {
    DnsLabel::new(s).map_err(|e| format!("{what} {s:?}: {e}"))
}

/// The selection from `-n` and the positional arguments (`KIND`, `KIND,KIND NAME...` or
/// `KIND/NAME...`).
fn selection(namespace: Option<&str>, targets: &[String]) -> Result<Selection, String> {
    let namespace = namespace.map(|n| label("namespace", n)).transpose()?;
    let mut kinds = BTreeSet::new();
    let mut names = Vec::new();
    if targets.is_empty() {
        kinds.extend(Kind::ALL);
    } else if targets.iter().any(|t| t.contains('/')) {
        for t in targets {
            let Some((k, n)) = t.split_once('/') else {
                return Err(format!(
                    "{t:?}: when one argument is KIND/NAME, all must be (there is no need to give a kind on its own)"
                ));
            };
            let ks = parse_kinds(k)?;
            if ks.len() != 1 {
                return Err(format!("{t:?}: KIND/NAME names exactly one kind"));
            }
            kinds.insert(ks[0]);
            names.push((ks[0], label("name", n)?));
        }
    } else {
        let ks = parse_kinds(&targets[0])?;
        kinds.extend(ks.iter().copied());
        for n in &targets[1..] {
            let n = label("name", n)?;
            names.extend(ks.iter().map(|k| (*k, n.clone())));
        }
    }
    Ok(Selection { namespace, kinds, names })
}

/// One object as shown.
#[derive(Debug, Clone)]
struct Item {
    kind: Kind,
    namespace: String,
    name: String,
    ready: bool,
    /// "True", "False" or "Unknown".
    status: String,
    reason: Option<String>,
    message: Option<String>,
    target: Option<String>,
    /// Resolved JetStream names, in the status's field names.
    jetstream: Map<String, Value>,
    /// Figures, in the status's field names; null when unknown.
    figures: Map<String, Value>,
    /// NATS: who wrote the record.
    manager: Option<String>,
    generation: Option<i64>,
    /// Kubernetes: the status's observedGeneration.
    observed_generation: Option<i64>,
    /// Kubernetes: creationTimestamp (RFC 3339) and its age in seconds.
    created: Option<(String, i64)>,
    /// Nodes: whether the node has a credential of its own, so that NATS enforces its isolation.
    own_credentials: Option<bool>,
}

impl Item {
    fn to_json(&self, kube: bool) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!(self.kind.as_str()));
        m.insert("namespace".into(), json!(self.namespace));
        m.insert("name".into(), json!(self.name));
        m.insert("ready".into(), json!(self.ready));
        m.insert("status".into(), json!(self.status));
        m.insert("reason".into(), json!(self.reason));
        m.insert("message".into(), json!(self.message));
        m.insert("target".into(), json!(self.target));
        m.insert("jetstream".into(), Value::Object(self.jetstream.clone()));
        m.insert("figures".into(), Value::Object(self.figures.clone()));
        m.insert("generation".into(), json!(self.generation));
        if let Some(own) = self.own_credentials {
            m.insert("credentials".into(), json!(if own { "node" } else { "shared" }));
            m.insert("isolationEnforcedByNats".into(), json!(own));
        }
        if kube {
            m.insert("observedGeneration".into(), json!(self.observed_generation));
            m.insert("creationTimestamp".into(), json!(self.created.as_ref().map(|c| &c.0)));
            m.insert("age".into(), json!(self.created.as_ref().map(|c| human_age(c.1))));
        } else {
            m.insert("manager".into(), json!(self.manager));
        }
        Value::Object(m)
    }
}

/// The figure fields of each kind, as in its CRD status.
fn figure_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::EventStore => &["events", "bytes", "firstSequence", "lastSequence", "consumers", "maxConsumers"],
        Kind::Node => &["events", "bytes", "lastSequence", "consumers", "maxConsumers"],
        Kind::Listener => &["numPending", "numAckPending", "redelivered"],
    }
}

/// The resolved-name fields of each kind, as in its CRD status.
fn name_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::EventStore => &["stream", "subjects"],
        Kind::Node => &["inboxStream", "inboxSubjects", "stateBucket", "globalBucket"],
        Kind::Listener => &["stream", "consumer"],
    }
}

/// The field that is the TARGET column.
fn target_field(kind: Kind) -> &'static str {
    match kind {
        Kind::EventStore => "stream",
        Kind::Node => "inboxStream",
        Kind::Listener => "consumer",
    }
}

/// Runs `causeway status`.
pub async fn run(a: StatusArgs) -> ExitCode {
    let sel = match selection(a.namespace.as_deref(), &a.targets) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let kube = a.kube || a.kubeconfig.is_some();
    let items = if kube { kube_items(a.kubeconfig.as_ref(), &sel).await } else { nats_items(&a.nats, &sel).await };
    let mut items = match items {
        Ok(i) => i,
        Err(Failure { code, message }) => {
            eprintln!("error: {message}");
            return ExitCode::from(code);
        }
    };
    items.sort_by(|x, y| (&x.namespace, x.kind, &x.name).cmp(&(&y.namespace, y.kind, &y.name)));
    let missing = sel.missing(&items);
    print(&items, a.output, kube, &sel);
    for m in &missing {
        eprintln!("error: {m}");
    }
    let not_ready = items.iter().filter(|i| !i.ready).count();
    if matches!(a.output, None | Some(Output::Wide)) {
        if let Some(note) = isolation_note(&items) {
            eprintln!("{note}");
        }
        if not_ready > 0 {
            eprintln!("{not_ready} of {} object(s) not ready", items.len());
        }
    }
    if not_ready == 0 && missing.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_READY) }
}

/// One line on node isolation for the nodes shown: who enforces it.
fn isolation_note(items: &[Item]) -> Option<String> {
    let nodes: Vec<&Item> = items.iter().filter(|i| i.own_credentials.is_some()).collect();
    if nodes.is_empty() {
        return None;
    }
    let shared: Vec<String> = nodes
        .iter()
        .filter(|i| i.own_credentials == Some(false))
        .map(|i| format!("{}/{}", i.namespace, i.name))
        .collect();
    Some(if shared.is_empty() {
        "node isolation: enforced by NATS (every node shown has a credential of its own)".into()
    } else {
        format!(
            "node isolation: NOT enforced by NATS for {}: their sidecars share one NATS credential, so only the sidecars enforce spec.access (issue per-node credentials: see docs/security.md)",
            shared.join(", ")
        )
    })
}

/// Why the command could not look: the message, and the exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn unreachable(message: impl Into<String>) -> Self {
        Self { code: EXIT_NOT_READY, message: message.into() }
    }
}

// ---------------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------------

/// How many objects are looked at at once.
const CONCURRENCY: usize = 16;

async fn nats_items(nats: &NatsArgs, sel: &Selection) -> Result<Vec<Item>, Failure> {
    let url = &nats.url;
    let client = nats.connect().await.map_err(Failure::unreachable)?;
    // The manager names who writes records; a dry run writes none, so either would do.
    let reconciler = Reconciler::new(client.clone(), MANAGER_OPERATOR);
    let js = reconciler.jetstream().clone();
    let keys = registry_keys(&js)
        .await
        .map_err(|e| {
            // NATS answers a request its permissions forbid with silence: say so with the timeout.
            let hint = if e.to_string().contains("timed out") && nats.creds.is_some() {
                " (a credential that may not read the registry also looks like this: status needs an account-wide one, not a Node's)"
            } else {
                ""
            };
            Failure::unreachable(format!("cannot read the registry from NATS at {url}: {e}{hint}"))
        })?;
    let Some(keys) = keys else {
        eprintln!("no registry ({REGISTRY_BUCKET}) at {url}: nothing has been applied to this NATS yet");
        return Ok(Vec::new());
    };
    let wanted: Vec<String> = keys
        .into_iter()
        .filter(|k| naming::parse_registry_key(k).is_some_and(|(ns, kind, name)| sel.wants(&ns, kind, &name)))
        .collect();
    let kv = js
        .get_key_value(REGISTRY_BUCKET)
        .await
        .map_err(|e| Failure::unreachable(format!("cannot open the registry at {url}: {e}")))?;
    let records: Vec<Option<Record>> = futures::stream::iter(wanted)
        .map(|key| {
            let kv = kv.clone();
            async move {
                match kv.get(&key).await {
                    Ok(Some(bytes)) => match Record::from_bytes(&bytes) {
                        Ok(r) => Ok(Some(r)),
                        Err(e) => {
                            eprintln!("warning: registry entry {key} is not a record this causeway understands: {e}");
                            Ok(None)
                        }
                    },
                    // Deleted since the listing.
                    Ok(None) => Ok(None),
                    Err(e) => Err(format!("cannot read registry entry {key} at {url}: {e}")),
                }
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await
        .map_err(Failure::unreachable)?;
    let items = futures::stream::iter(records.into_iter().flatten())
        .map(|r| {
            let reconciler = reconciler.clone();
            async move { record_item(&reconciler, r).await }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let _ = client.flush().await;
    Ok(items)
}

/// The registry's keys, read from the stream's subjects: no consumer, no write. `None` when
/// there is no registry.
async fn registry_keys(js: &jetstream::Context) -> Result<Option<Vec<String>>, String> {
    let stream = match js.get_stream(format!("KV_{REGISTRY_BUCKET}")).await {
        Ok(s) => s,
        Err(e) => {
            return match e.kind() {
                GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
                    Ok(None)
                }
                _ => Err(e.to_string()),
            };
        }
    };
    let prefix = format!("$KV.{REGISTRY_BUCKET}.");
    let subjects = stream.info_with_subjects(format!("{prefix}>")).await.map_err(|e| e.to_string())?;
    let subjects: Vec<(String, usize)> = subjects.try_collect().await.map_err(|e| e.to_string())?;
    // Pages may overlap when keys come and go while they are read.
    let keys: BTreeSet<String> =
        subjects.into_iter().filter_map(|(s, _)| s.strip_prefix(&prefix).map(str::to_string)).collect();
    Ok(Some(keys.into_iter().collect()))
}

/// The object a record was reconciled from.
fn object_of(r: &Record) -> Object {
    let (spec, schemas) = match r {
        Record::EventStore(s) => (Spec::EventStore(s.spec.clone()), s.schemas.as_slice()),
        Record::Node(n) => (Spec::Node(n.spec.clone()), n.schemas.as_slice()),
        Record::Listener(l) => (Spec::Listener(l.spec.clone()), &[][..]),
    };
    // The ConfigMaps as they were when the record was written: status compares JetStream with
    // the record, not with ConfigMaps it cannot read.
    let mut o = Object::new(r.meta().clone(), spec);
    o.config_maps = causeway_operator::jetstream::schemas::config_maps_of(schemas);
    o
}

/// The resolved names of a record, in the status's field names.
fn record_names(r: &Record) -> Map<String, Value> {
    let mut m = Map::new();
    match r {
        Record::EventStore(s) => {
            m.insert("stream".into(), json!(s.stream));
            m.insert("subjects".into(), json!(naming::join_subject(&s.subject_prefix, ">")));
        }
        Record::Node(n) => {
            m.insert("inboxStream".into(), json!(n.inbox_stream));
            m.insert(
                "inboxSubjects".into(),
                json!(naming::inbox_stream_subjects(&n.meta.namespace, &n.meta.name).join(", ")),
            );
            m.insert("stateBucket".into(), json!(n.state_bucket));
            m.insert("globalBucket".into(), json!(n.global_bucket));
        }
        Record::Listener(l) => {
            m.insert("stream".into(), json!(l.stream));
            m.insert("consumer".into(), json!(l.consumer));
        }
    }
    m
}

fn figures_of(kind: Kind, o: Option<&Outcome>) -> Map<String, Value> {
    let f = o.map(|o| o.figures.clone()).unwrap_or_default();
    figure_fields(kind)
        .iter()
        .map(|field| {
            let v = match *field {
                "events" => json!(f.events),
                "bytes" => json!(f.bytes),
                "firstSequence" => json!(f.first_sequence),
                "lastSequence" => json!(f.last_sequence),
                "consumers" => json!(f.consumers),
                "maxConsumers" => json!(f.max_consumers),
                "numPending" => json!(f.num_pending),
                "numAckPending" => json!(f.num_ack_pending),
                "redelivered" => json!(f.redelivered),
                _ => Value::Null,
            };
            ((*field).to_string(), v)
        })
        .collect()
}

/// What restores drift for this record's manager.
fn restorer(r: &Record) -> &'static str {
    if r.meta().manager == MANAGER_OPERATOR {
        "the operator's next reconcile restores it"
    } else {
        "`causeway apply` of its manifest restores it"
    }
}

/// One record's item: a dry-run reconcile of its own spec, read as "how it is now".
async fn record_item(reconciler: &Reconciler, r: Record) -> Item {
    let kind = r.kind();
    let meta = r.meta().clone();
    let jetstream = record_names(&r);
    let target = jetstream.get(target_field(kind)).and_then(Value::as_str).map(str::to_string);
    let outcome = reconciler.reconcile(&object_of(&r), Mode::DryRun).await;
    let (ready, reason, message) = match &outcome {
        Err(e) => (false, REASON_NATS_ERROR.to_string(), e.to_string()),
        Ok(o) if !o.readiness.ready => (false, o.readiness.reason.to_string(), o.readiness.message.clone()),
        // A dry run plans what an apply would do; for a record that exists, anything to do
        // means JetStream is not as the spec says.
        Ok(o) if o.action == Action::Created => {
            let what = match &r {
                Record::Listener(l) => format!("consumer {} on stream {}", l.consumer, l.stream),
                _ => format!("stream {}", target.clone().unwrap_or_default()),
            };
            (
                false,
                REASON_MISSING.into(),
                format!("{what} does not exist (deleted outside Causeway?): {}", restorer(&r)),
            )
        }
        Ok(o) if o.action == Action::Updated => {
            let mut what: Vec<String> = o.changes.iter().map(ToString::to_string).collect();
            if what.is_empty() {
                what = missing_buckets(reconciler.jetstream(), &r).await;
            }
            if what.is_empty() {
                what.push("a JetStream object it needs is missing or different".into());
            }
            (
                false,
                REASON_DRIFTED.into(),
                format!("JetStream differs from the spec: {}; {}", what.join("; "), restorer(&r)),
            )
        }
        Ok(o) => (true, o.readiness.reason.to_string(), o.readiness.message.clone()),
    };
    Item {
        kind,
        namespace: meta.namespace.to_string(),
        name: meta.name.to_string(),
        ready,
        status: if ready { "True" } else { "False" }.into(),
        reason: Some(reason),
        message: Some(message),
        target,
        jetstream,
        figures: figures_of(kind, outcome.as_ref().ok()),
        manager: Some(meta.manager.clone()),
        generation: meta.generation,
        observed_generation: None,
        created: None,
        own_credentials: match &r {
            Record::Node(n) => Some(!n.credentials.is_shared()),
            _ => None,
        },
    }
}

/// The buckets an object needs that do not exist (state, global, blob), named.
async fn missing_buckets(js: &jetstream::Context, r: &Record) -> Vec<String> {
    let ns = &r.meta().namespace;
    let mut streams = vec![
        (format!("KV_{}", naming::global_bucket(ns)), "global bucket"),
        (format!("OBJ_{}", naming::blob_bucket(ns)), "blob store"),
    ];
    if let Record::Node(n) = r {
        streams.push((format!("KV_{}", n.state_bucket), "state bucket"));
    }
    let mut out = Vec::new();
    for (stream, what) in streams {
        if let Err(e) = js.get_stream(&stream).await
            && matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
        {
            out.push(format!("{what} stream {stream} is missing"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<(kube::Client, String), Failure> {
    let config = match kubeconfig {
        Some(p) => {
            let invalid = |e: &dyn std::fmt::Display| Failure {
                code: EXIT_INVALID,
                message: format!("kubeconfig {}: {e}", p.display()),
            };
            let kc = kube::config::Kubeconfig::read_from(p).map_err(|e| invalid(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| invalid(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            Failure::unreachable(format!(
                "no Kubernetes configuration found (not in a cluster, no $KUBECONFIG, no ~/.kube/config): {e}"
            ))
        })?,
    };
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .map_err(|e| Failure::unreachable(format!("Kubernetes client for {url}: {e}")))?;
    Ok((client, url))
}

fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::EventStore => ApiResource::erase::<EventStore>(&()),
        Kind::Node => ApiResource::erase::<Node>(&()),
        Kind::Listener => ApiResource::erase::<Listener>(&()),
    }
}

fn plural(kind: Kind) -> String {
    match kind {
        Kind::EventStore => format!("{}.{}", EventStore::plural(&()), EventStore::group(&())),
        Kind::Node => format!("{}.{}", Node::plural(&()), Node::group(&())),
        Kind::Listener => format!("{}.{}", Listener::plural(&()), Listener::group(&())),
    }
}

async fn kube_items(kubeconfig: Option<&PathBuf>, sel: &Selection) -> Result<Vec<Item>, Failure> {
    let (client, url) = kube_client(kubeconfig).await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64;
    let mut items = Vec::new();
    for kind in sel.kinds.iter().copied() {
        let ar = api_resource(kind);
        let api: Api<DynamicObject> = match &sel.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let list = api.list(&ListParams::default()).await.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => Failure::unreachable(format!(
                "the cluster at {url} does not serve {} (are Causeway's CRDs installed? kubectl apply -f crds/)",
                plural(kind)
            )),
            kube::Error::Api(s) => Failure::unreachable(format!(
                "listing {} at {url}: {} ({}, {})",
                plural(kind),
                s.message,
                s.reason,
                s.code
            )),
            other => Failure::unreachable(format!("cannot reach Kubernetes at {url}: {other}")),
        })?;
        for o in list.items {
            let ns = o.metadata.namespace.clone().unwrap_or_default();
            let name = o.metadata.name.clone().unwrap_or_default();
            if sel.wants(&ns, kind, &name) {
                items.push(kube_item(kind, &o, now));
            }
        }
    }
    Ok(items)
}

fn kube_item(kind: Kind, o: &DynamicObject, now: i64) -> Item {
    let status = o.data.get("status").filter(|s| s.is_object());
    let field = |f: &str| status.and_then(|s| s.get(f)).filter(|v| !v.is_null()).cloned();
    let cond = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready")));
    let text = |c: Option<&Value>, f: &str| c.and_then(|c| c.get(f)).and_then(Value::as_str).map(str::to_string);
    let generation = o.metadata.generation;
    let observed = field("observedGeneration")
        .and_then(|v| v.as_i64())
        .or_else(|| cond.and_then(|c| c.get("observedGeneration")).and_then(Value::as_i64));
    let (mut state, mut reason, mut message) =
        (text(cond, "status").unwrap_or_else(|| "Unknown".into()), text(cond, "reason"), text(cond, "message"));
    if cond.is_none() {
        reason = Some(REASON_RECONCILING.into());
        message = Some(
            "no Ready condition yet: the operator has not reported on this object (is `causeway operator` running?)"
                .into(),
        );
    } else if let (Some(g), Some(seen)) = (generation, observed)
        && seen < g
    {
        let last =
            format!("Ready={state}, {}: {}", reason.as_deref().unwrap_or("-"), message.as_deref().unwrap_or("-"));
        state = "Unknown".into();
        reason = Some(REASON_RECONCILING.into());
        message = Some(format!(
            "the status is for generation {seen}, the spec is at generation {g}: the operator has not reconciled the change yet (last reported: {last})"
        ));
    }
    let jetstream: Map<String, Value> =
        name_fields(kind).iter().map(|f| ((*f).to_string(), field(f).unwrap_or(Value::Null))).collect();
    let figures: Map<String, Value> =
        figure_fields(kind).iter().map(|f| ((*f).to_string(), field(f).unwrap_or(Value::Null))).collect();
    let created = o.metadata.creation_timestamp.as_ref().map(|t| (t.0.to_string(), now - t.0.as_second()));
    Item {
        kind,
        namespace: o.metadata.namespace.clone().unwrap_or_default(),
        name: o.metadata.name.clone().unwrap_or_default(),
        ready: state == "True",
        status: state,
        reason,
        message,
        target: jetstream.get(target_field(kind)).and_then(Value::as_str).map(str::to_string),
        jetstream,
        figures,
        manager: None,
        generation,
        observed_generation: observed,
        created,
        own_credentials: (kind == Kind::Node).then(|| field("credentials").is_some_and(|c| c.get("secret").is_some())),
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn print(items: &[Item], output: Option<Output>, kube: bool, sel: &Selection) {
    match output {
        Some(Output::Json) => {
            let list: Vec<Value> = items.iter().map(|i| i.to_json(kube)).collect();
            say(&serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into()));
        }
        Some(Output::Yaml) => {
            let list: Vec<Value> = items.iter().map(|i| i.to_json(kube)).collect();
            let yaml = serde_yaml::to_string(&list).unwrap_or_else(|_| "[]\n".into());
            say(yaml.trim_end());
        }
        // Named objects that are missing get an error line of their own.
        None | Some(Output::Wide) if items.is_empty() && !sel.names.is_empty() => {}
        None | Some(Output::Wide) if items.is_empty() => match &sel.namespace {
            Some(ns) => eprintln!("No resources found in {ns} namespace."),
            None => eprintln!("No resources found"),
        },
        None | Some(Output::Wide) => {
            for line in table(items, output == Some(Output::Wide), kube) {
                say(&line);
            }
        }
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The table's lines, columns padded like kubectl's (three spaces apart).
fn table(items: &[Item], wide: bool, kube: bool) -> Vec<String> {
    let mut header = vec!["NAMESPACE", "KIND/NAME", "READY", "REASON", "TARGET", "EVENTS", "PENDING"];
    header.push(if kube { "AGE" } else { "MANAGER" });
    if wide {
        header.push("MESSAGE");
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for i in items {
        let mut row = vec![
            i.namespace.clone(),
            format!("{}/{}", i.kind.registry_token(), i.name),
            i.status.clone(),
            i.reason.clone().unwrap_or_else(|| "-".into()),
            i.target.clone().unwrap_or_else(|| "-".into()),
            if i.kind == Kind::Listener { "-".into() } else { cell(i.figures.get("events")) },
            if i.kind == Kind::Listener { cell(i.figures.get("numPending")) } else { "-".into() },
        ];
        row.push(if kube {
            i.created.as_ref().map(|c| human_age(c.1)).unwrap_or_else(|| "<unknown>".into())
        } else {
            i.manager.clone().unwrap_or_else(|| "-".into())
        });
        if wide {
            row.push(i.message.clone().unwrap_or_default().replace('\n', " "));
        }
        rows.push(row);
    }
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, v) in r.iter().enumerate() {
                if c + 1 == cols {
                    line.push_str(v);
                } else {
                    line.push_str(v);
                    line.push_str(&" ".repeat(widths[c] - v.chars().count() + 3));
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

/// An age as kubectl prints it (`45s`, `3m20s`, `5h`, `2d3h`, `400d`, `3y20d`).
fn human_age(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        return if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 { format!("{}d", h / 24) } else { format!("{}d{}h", h / 24, h % 24) };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let d = (h / 24) % 365;
        return if d == 0 { format!("{}y", h / 24 / 365) } else { format!("{}y{d}d", h / 24 / 365) };
    }
    format!("{}y", h / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(ns: Option<&str>, args: &[&str]) -> Result<Selection, String> {
        selection(ns, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn kinds_are_parsed_like_kubectl() {
        for (word, kind) in [
            ("eventstore", Kind::EventStore),
            ("EventStores", Kind::EventStore),
            ("CWES", Kind::EventStore),
            ("eventstores.causeway.dev", Kind::EventStore),
            ("node", Kind::Node),
            ("Nodes", Kind::Node),
            ("cwnode", Kind::Node),
            ("listener", Kind::Listener),
            ("LISTENERS", Kind::Listener),
            ("cwl", Kind::Listener),
        ] {
            assert_eq!(parse_kinds(word), Ok(vec![kind]), "{word}");
        }
        assert_eq!(parse_kinds("causeway").unwrap(), Kind::ALL.to_vec());
        assert!(parse_kinds("pods").unwrap_err().contains("unknown kind \"pods\""));
    }

    #[test]
    fn selections() {
        let all = sel(None, &[]).unwrap();
        assert_eq!(all.kinds, Kind::ALL.into_iter().collect());
        assert!(all.names.is_empty() && all.namespace.is_none());
        let one = sel(Some("shop"), &["cwes/orders", "listener/ship-order"]).unwrap();
        assert!(one.wants("shop", Kind::EventStore, "orders"));
        assert!(!one.wants("shop", Kind::Node, "orders"));
        assert!(!one.wants("bank", Kind::EventStore, "orders"));
        assert!(one.wants("shop", Kind::Listener, "ship-order"));
        let two = sel(None, &["cwes,cwnode", "orders"]).unwrap();
        assert!(two.wants("x", Kind::Node, "orders") && two.wants("y", Kind::EventStore, "orders"));
        assert!(!two.wants("x", Kind::Listener, "orders"));
        assert!(sel(None, &["cwes/orders", "cwl"]).is_err());
        assert!(sel(None, &["causeway/orders"]).is_err());
        assert!(sel(None, &["cwes/Not_A_Label"]).is_err());
        assert!(sel(Some("Bad_NS"), &[]).is_err());
        assert!(sel(None, &["widgets"]).is_err());
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (-5, "<invalid>"),
        ] {
            assert_eq!(human_age(s), want, "{s}");
        }
    }
}
