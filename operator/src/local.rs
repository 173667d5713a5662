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
            LineResult::Applied(o) if o.readiness.ready => write!(f, "{} {}{suffix}", self.object, o.action.as_str())?,
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
