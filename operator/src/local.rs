//! The local driver: what `causeway apply` and `causeway dev` do with manifests from files.
//!
//! Same reconcile core as the operator; the registry records it writes carry manager `apply`,
//! which is how `--prune` knows which objects earlier applies created.

use std::{collections::BTreeSet, fmt};

use causeway_api::{
    Kind,
    crd::DeletionPolicy,
    registry::{MANAGER_APPLY, Record},
};

use crate::{
    Result,
    jetstream::{Batch, Mode, Object, Outcome, Reconciler},
    manifest::{self, Loaded},
};

/// Options of one apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Remove objects of earlier applies that are not in this one.
    pub prune: bool,
}

/// What happened to one object.
#[derive(Debug, Clone)]
pub enum LineResult {
    /// Reconciled.
    Applied(Box<Outcome>),
    /// Removed by `--prune`.
    Pruned {
        /// JetStream objects deleted.
        deleted: Vec<String>,
        /// JetStream objects retained.
        retained: Vec<String>,
    },
    /// A NATS failure.
    Failed(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Line {
    /// `Kind namespace/name`.
    pub object: String,
    /// Kind.
    pub kind: Kind,
    /// What happened.
    pub result: LineResult,
    /// Dry run?
    pub dry_run: bool,
}

impl Line {
    /// True when the object is applied and ready (or pruned).
    pub fn ok(&self) -> bool {
        match &self.result {
            LineResult::Applied(o) => o.readiness.ready,
            LineResult::Pruned { .. } => true,
            LineResult::Failed(_) => false,
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = if self.dry_run { " (dry run)" } else { "" };
        match &self.result {
            LineResult::Applied(o) if o.readiness.ready => {
                write!(f, "{} {}{suffix}", self.object, o.action.as_str())?;
                if let Some(rw) = &o.rewound {
                    let note = crate::jetstream::rewind_note(rw);
                    if self.dry_run {
                        write!(f, "\n{} would be {note} (dry run)", self.object)?;
                    } else {
                        write!(f, "\n{} {note}", self.object)?;
                    }
                }
            }
            LineResult::Applied(o) => {
                write!(f, "{} error: {}: {}", self.object, o.readiness.reason, o.readiness.message)?
            }
            LineResult::Pruned { deleted, retained } => {
                write!(f, "{} pruned{suffix}", self.object)?;
                if !retained.is_empty() {
                    write!(f, " (retained by deletionPolicy: {})", retained.join(", "))?;
                }
                if !deleted.is_empty() {
                    write!(f, " (deleted: {})", deleted.join(", "))?;
                }
            }
            LineResult::Failed(e) => write!(f, "{} error: NatsError: {e}", self.object)?,
        }
        if let LineResult::Applied(o) = &self.result
            && let Some(check) = &o.schemas
            && !check.narrowed.is_empty()
        {
            let (_, reason, message) = check.condition();
            write!(f, "\n    warning: {reason}: {message}")?;
        }
        if self.dry_run
            && let LineResult::Applied(o) = &self.result
        {
            for c in &o.changes {
                write!(f, "\n    {c}")?;
            }
        }
        Ok(())
    }
}

/// The whole report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One line per object, in apply order.
    pub lines: Vec<Line>,
}

impl Report {
    /// True when everything is applied and ready.
    pub fn ok(&self) -> bool {
        self.lines.iter().all(Line::ok)
    }
}

fn order(k: Kind) -> usize {
    Kind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

/// Reconciles validated objects: stores, then nodes, then listeners (which need both).
///
/// Validate first: [`manifest::load`] (or [`manifest::parse_str`]) for each document, then
/// [`manifest::check_batch`] for the rules between objects; apply only when both found nothing.
pub async fn apply(reconciler: &Reconciler, objects: &[Loaded], opts: Options) -> Result<Report> {
    apply_each(reconciler, objects, opts, |_| {}).await
}

/// [`apply`], handing each line to `on_line` as soon as its object is done, so a caller can
/// print progress and a run that is killed half-way has shown what it did. The lines come in
/// report order; the report returned holds them all.
pub async fn apply_each(
    reconciler: &Reconciler,
    objects: &[Loaded],
    opts: Options,
    mut on_line: impl FnMut(&Line),
) -> Result<Report> {
    let mode = if opts.dry_run { Mode::DryRun } else { Mode::Apply };
    let mut sorted: Vec<&Object> = objects.iter().map(|l| &l.object).collect();
    sorted.sort_by_key(|o| order(o.kind()));
    let batch = Batch::of(sorted.iter().copied());
    let mut report = Report::default();
    let mut done = |line: Line| {
        on_line(&line);
        report.lines.push(line);
    };
    for obj in sorted {
        let result = match reconciler.reconcile_in(obj, mode, &batch).await {
            Ok(o) => LineResult::Applied(Box::new(o)),
            Err(e) => LineResult::Failed(e.to_string()),
        };
        done(Line { object: obj.display(), kind: obj.kind(), result, dry_run: opts.dry_run });
    }
    if opts.prune {
        let keep: BTreeSet<String> = objects.iter().map(|l| l.object.key()).collect();
        let mut gone: Vec<Record> = reconciler
            .list_records()
            .await?
            .into_iter()
            .filter(|r| r.meta().manager == MANAGER_APPLY && !keep.contains(&r.key()))
            .collect();
        // Listeners first: they read from stores and inboxes.
        gone.sort_by_key(|r| std::cmp::Reverse(order(r.kind())));
        for r in gone {
            let policy = match &r {
                Record::EventStore(s) => s.spec.deletion_policy,
                Record::Node(n) => n.spec.deletion_policy,
                Record::Listener(_) => DeletionPolicy::Delete,
            };
            let m = r.meta();
            let result = match reconciler.cleanup(r.kind(), &m.namespace, &m.name, policy, mode).await {
                Ok(c) => LineResult::Pruned { deleted: c.deleted, retained: c.retained },
                Err(e) => LineResult::Failed(e.to_string()),
            };
            done(Line {
                object: format!("{} {}/{}", r.kind(), m.namespace, m.name),
                kind: r.kind(),
                result,
                dry_run: opts.dry_run,
            });
        }
    }
    Ok(report)
}

/// Parses YAML manifests and applies them, for tests and embedders: the lines of the report,
/// or every validation problem (then nothing is applied). Fails if anything is not ready.
pub async fn apply_yaml(client: &async_nats::Client, yaml: &str) -> std::result::Result<Vec<String>, String> {
    let (objects, errs) = manifest::parse_str(yaml, "<yaml>");
    let joined = |errs: &[manifest::ManifestError]| errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    if !errs.is_empty() {
        return Err(joined(&errs));
    }
    let reconciler = Reconciler::new(client.clone(), MANAGER_APPLY);
    let errs = manifest::check_batch(&reconciler, &objects).await.map_err(|e| e.to_string())?;
    if !errs.is_empty() {
        return Err(joined(&errs));
    }
    let report = apply(&reconciler, &objects, Options::default()).await.map_err(|e| e.to_string())?;
    let lines: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
    if report.ok() { Ok(lines) } else { Err(lines.join("\n")) }
}

/// Node credentials kept as files, for `causeway apply --issue-credentials DIR` and `causeway
/// dev --secure`: `DIR/<ns>/<node>.creds`, each holding exactly its node's grants (computed from
/// the registry, as the operator computes them from its caches).
///
/// A file is written again only when its node's grants change or less than half its lifetime
/// is left; it is replaced atomically (a sidecar never reads half a file) with mode 0600.
pub struct CredentialFiles {
    dir: std::path::PathBuf,
    issuer: crate::identity::Issuer,
    ttl: std::time::Duration,
    /// `(ns, node)` → fingerprint and expiry of the credential in its file.
    held: std::sync::Mutex<std::collections::HashMap<(String, String), HeldFile>>,
}

/// The fingerprint and expiry of a credential written to a file.
type HeldFile = (String, chrono::DateTime<chrono::Utc>);

/// Why a credential file was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFile {
    /// `ns/node`.
    pub node: String,
    /// Its file.
    pub path: std::path::PathBuf,
    /// `Issued`, `Renewed` or `PermissionsChanged`.
    pub reason: &'static str,
    /// When it expires.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl CredentialFiles {
    /// Files under `dir`, signed by `issuer`, each valid for `ttl`.
    pub fn new(dir: impl Into<std::path::PathBuf>, issuer: crate::identity::Issuer, ttl: std::time::Duration) -> Self {
        Self { dir: dir.into(), issuer, ttl, held: Default::default() }
    }

    /// The file of node `ns/node`.
    pub fn path(&self, ns: &str, node: &str) -> std::path::PathBuf {
        self.dir.join(ns).join(format!("{node}.creds"))
    }

    /// Issues what is due for the Node records in the registry that `want` selects.
    pub async fn sync(
        &self,
        reconciler: &Reconciler,
        want: impl Fn(&causeway_api::registry::NodeRecord) -> bool,
    ) -> std::result::Result<Vec<IssuedFile>, String> {
        use causeway_api::{DnsLabel, grants::node_grants, registry::ListenerRecord};
        let records = reconciler.list_records().await.map_err(|e| format!("reading the registry: {e}"))?;
        let listeners: Vec<ListenerRecord> = records
            .iter()
            .filter_map(|r| match r {
                Record::Listener(l) => Some(l.clone()),
                _ => None,
            })
            .collect();
        let stores_of = |ns: &DnsLabel| -> Vec<DnsLabel> {
            let mut v: Vec<DnsLabel> = records
                .iter()
                .filter_map(|r| match r {
                    Record::EventStore(s) if s.meta.namespace == *ns => Some(s.meta.name.clone()),
                    _ => None,
                })
                .collect();
            v.sort();
            v
        };
        let now = chrono::Utc::now();
        let half = chrono::Duration::from_std(self.ttl / 2).unwrap_or(chrono::Duration::MAX);
        let mut out = Vec::new();
        for r in &records {
            let Record::Node(n) = r else { continue };
            if !want(n) {
                continue;
            }
            let grants = node_grants(n, &listeners, &stores_of);
            let fp = crate::identity::fingerprint(&grants, &self.issuer);
            let key = (n.meta.namespace.to_string(), n.meta.name.to_string());
            let path = self.path(&key.0, &key.1);
            if !self.held.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&key)
                && let Some(exp) = self.still_good(&path, &grants)
            {
                // Written by an earlier run for exactly these grants: keep it.
                self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), (fp.clone(), exp));
            }
            let reason = match self.held.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
                _ if !path.exists() => "Issued",
                None => "Issued",
                Some((f, _)) if *f != fp => "PermissionsChanged",
                Some((_, exp)) if *exp - now <= half => "Renewed",
                Some(_) => continue,
            };
            let cred = self.issuer.issue(&format!("{}/{}", key.0, key.1), &grants, self.ttl);
            write_private(&path, &cred.creds).map_err(|e| format!("writing {}: {e}", path.display()))?;
            self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), (fp, cred.expires_at));
            out.push(IssuedFile { node: format!("{}/{}", key.0, key.1), path, reason, expires_at: cred.expires_at });
        }
        Ok(out)
    }
}

impl CredentialFiles {
    /// The expiry of the credential in `path` when it was signed by this issuer for exactly
    /// `grants` (so that a new run of `causeway apply` does not rewrite unchanged files).
    fn still_good(
        &self,
        path: &std::path::Path,
        grants: &causeway_api::grants::Grants,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = std::fs::read_to_string(path).ok()?;
        let (jwt, _) = causeway_api::creds::parse_creds(&text)?;
        let c = causeway_api::creds::read_claims(&jwt)?;
        let same = c.issuer == self.issuer.signing_key()
            && c.nats.publish.allow == grants.publish
            && c.nats.subscribe.allow == grants.subscribe;
        same.then(|| chrono::DateTime::from_timestamp(c.expires?, 0)).flatten()
    }
}

/// Writes `text` to `path` through a temporary file and a rename, mode 0600 (credentials).
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", ulid::Ulid::new()));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
