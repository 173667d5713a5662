//! One reconcile, the same for every kind: the finalizer, then Apply (the core's reconcile,
//! then status and events) or Cleanup (the core's cleanup, bounded in time).
//!
//! - A status is written by server-side apply under one field manager, and only when it differs
//!   from the stored one; so an unchanged object causes no Kubernetes write, and the core makes no
//!   JetStream write either.
//! - A failing or hanging NATS call ends in `Ready=False` (`NatsUnavailable`) with the error, never
//!   an old `True`, and is retried with exponential backoff.
//! - Events are published when something happens (created, updated, a change refused, a failure),
//!   not on every resync.

use std::{sync::Arc, time::Instant};

use causeway_api::{
    DnsLabel,
    crd::{Condition, DeletionPolicy},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as Finalizer, finalizer},
    },
};
use serde_json::json;

use super::{
    context::{
        Context, Error, FIELD_MANAGER, FINALIZER, REASON_CREDENTIALS_FAILED, REASON_NATS_UNAVAILABLE,
        SKIP_CLEANUP_ANNOTATION,
    },
    kinds::{Managed, object_of},
};
use crate::jetstream::{self, Action as CoreAction, Figures, Mode, Readiness, reason};

/// `<Kind>/<ns>/<name>`: the key of an object in logs, backoff and metrics.
pub fn key_of<K: Managed>(o: &K) -> String {
    format!("{}/{}/{}", K::KIND, o.namespace().unwrap_or_default(), o.name_any())
}

/// Reconciles one object: adds the finalizer, then applies or cleans up.
pub async fn reconcile<K: Managed>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<K> = Api::namespaced(ctx.kube.clone(), &obj.namespace().unwrap_or_else(|| "default".into()));
    let started = Instant::now();
    let key = key_of(&*obj);
    let result = finalizer(&api, FINALIZER, obj, |ev| async {
        match ev {
            Finalizer::Apply(o) => apply(&api, o, &ctx).await,
            Finalizer::Cleanup(o) => cleanup(o, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match &result {
        Ok(_) => ctx.succeeded(&key),
        Err(e) => {
            ctx.metrics.failed(K::KIND.as_str(), e.metric_label());
            ctx.metrics.reconciled(K::KIND.as_str(), "error", started);
        }
    }
    result
}

/// After a failed reconcile: wait longer after each failure in a row.
pub fn error_policy<K: Managed>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&*obj);
    let wait = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %err, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The stored Ready condition, if any.
fn stored_ready(status: Option<&serde_json::Value>) -> Option<Condition> {
    let conditions = status?.get("conditions")?.as_array()?;
    conditions.iter().filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok()).find(|c| c.type_ == "Ready")
}

/// The Ready condition for `r`; its transition time moves only when its status changes.
pub fn ready_condition(previous: Option<&Condition>, r: &Readiness, generation: Option<i64>) -> Condition {
    let status = if r.ready { "True" } else { "False" };
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: r.reason.into(),
        message: r.message.clone(),
        last_transition_time,
        observed_generation: generation,
    }
}

async fn apply<K: Managed>(api: &Api<K>, obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let kind = K::KIND.as_str();
    let previous = obj.stored_status();
    let was = stored_ready(previous.as_ref());
    let (object, ns, name) = match object_of(&*obj) {
        Ok(x) => x,
        Err(e) => {
            // Cannot become anything; say so and wait for a change.
            let r = Readiness { ready: false, reason: reason::INVALID_SPEC, message: e };
            let ns = DnsLabel::new("invalid").expect("a label");
            let cond = ready_condition(was.as_ref(), &r, obj.meta().generation);
            let status = obj.status(&ns, &ns, cond, &Figures::default(), previous.as_ref());
            let status = strip_names(status);
            write_status(api, &*obj, previous.as_ref(), status).await?;
            ctx.metrics.reconciled(kind, "not_ready", started);
            return Ok(Action::await_change());
        }
    };
    let object = with_config_maps(ctx, object).await;
    let outcome = tokio::time::timeout(ctx.opts.nats_timeout, ctx.core.reconcile(&object, Mode::Apply)).await;
    let mut schema_check = None;
    let (readiness, figures, failure) = match outcome {
        Ok(Ok(o)) => {
            announce(ctx, &*obj, was.as_ref(), &o).await;
            schema_check = o.schemas.clone();
            (o.readiness, o.figures, None)
        }
        Ok(Err(e)) => {
            let msg = format!("NATS failed: {e}; retrying with backoff");
            (
                Readiness { ready: false, reason: REASON_NATS_UNAVAILABLE, message: msg.clone() },
                Figures::default(),
                Some(msg),
            )
        }
        Err(_) => {
            let msg = format!("NATS did not answer within {:?}; retrying with backoff", ctx.opts.nats_timeout);
            (
                Readiness { ready: false, reason: REASON_NATS_UNAVAILABLE, message: msg.clone() },
                Figures::default(),
                Some(msg),
            )
        }
    };
    // A Node's own NATS credential, when the operator issues them: a Kubernetes matter, done
    // whatever NATS said.
    let (readiness, held, failure) = match node_credentials(ctx, &*obj, &object).await {
        None => (readiness, None, failure),
        Some(Ok(h)) => (readiness, Some(h), failure),
        Some(Err(e)) => {
            let msg = format!("cannot issue the node's NATS credential: {e}; retrying with backoff");
            let r = Readiness { ready: false, reason: REASON_CREDENTIALS_FAILED, message: msg.clone() };
            (r, None, failure.or(Some(msg)))
        }
    };
    let cond = ready_condition(was.as_ref(), &readiness, obj.meta().generation);
    let mut status = obj.status(&ns, &name, cond.clone(), &figures, previous.as_ref());
    let narrowed = schemas_condition(&mut status, previous.as_ref(), schema_check.as_ref(), obj.meta().generation);
    if ctx.identity.is_some() && K::KIND == causeway_api::Kind::Node {
        let creds = match &held {
            Some(h) => serde_json::to_value(&h.status).ok(),
            None => previous.as_ref().and_then(|p| p.get("credentials")).cloned(),
        };
        if let (Some(c), Some(m)) = (creds, status.as_object_mut()) {
            m.insert("credentials".into(), c);
        }
    }
    write_status(api, &*obj, previous.as_ref(), status).await?;
    if let Some(note) = narrowed {
        publish(ctx, &*obj, EventType::Warning, reason::SCHEMA_NARROWED, "Reconcile", &note).await;
    }
    if let Some(h) = held.as_ref().filter(|h| h.issued.is_some()) {
        let note = format!(
            "{}: NATS user {} in Secret {}, expires {}",
            h.issued.unwrap_or_default(),
            h.status.user,
            h.status.secret,
            h.status.expires_at
        );
        publish(ctx, &*obj, EventType::Normal, "CredentialsIssued", "Issue", &note).await;
    }
    if let Some(msg) = failure {
        if was.as_ref().is_none_or(|w| w.reason != REASON_NATS_UNAVAILABLE) {
            publish(ctx, &*obj, EventType::Warning, REASON_NATS_UNAVAILABLE, "Reconcile", &msg).await;
        }
        return Err(Error::Nats(msg));
    }
    ctx.metrics.reconciled(kind, if cond.status == "True" { "ready" } else { "not_ready" }, started);
    let next = held.map(|h| h.renew_in.max(std::time::Duration::from_secs(1))).unwrap_or(ctx.opts.resync);
    Ok(Action::requeue(next.min(ctx.opts.resync)))
}

/// The object with the data of the ConfigMaps its `spec.schemas` refer to. One that cannot be
/// read is left out: the core then reports `SchemaNotResolved`, and the next resync (or a change
/// of the object) tries again.
async fn with_config_maps(ctx: &Context, mut object: jetstream::Object) -> jetstream::Object {
    use k8s_openapi::api::core::v1::ConfigMap;
    let names: std::collections::BTreeSet<String> =
        object.schema_specs().iter().filter_map(|s| s.config_map_ref.as_ref().map(|r| r.name.clone())).collect();
    if names.is_empty() {
        return object;
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.kube.clone(), object.meta.namespace.as_str());
    for n in names {
        match api.get_opt(&n).await {
            Ok(Some(cm)) => {
                object.config_maps.insert(n, cm.data.unwrap_or_default());
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(configmap = %n, error = %e, "cannot read a schema's ConfigMap"),
        }
    }
    object
}

/// Adds (or keeps, when the core said nothing this time) the `SchemasCompatible` condition.
/// Answers its message when it newly says `SchemaNarrowed` (it did not before, or named other
/// events): that is worth a Warning Event, once, not on every resync.
fn schemas_condition(
    status: &mut serde_json::Value,
    previous: Option<&serde_json::Value>,
    check: Option<&jetstream::SchemaCheck>,
    generation: Option<i64>,
) -> Option<String> {
    let stored = previous
        .and_then(|p| p.get("conditions"))
        .and_then(|c| c.as_array())
        .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(|t| t.as_str()) == Some(jetstream::SCHEMAS_CONDITION)))
        .and_then(|c| serde_json::from_value::<Condition>(c.clone()).ok());
    let cond = match check {
        Some(check) => {
            let (ok, reason, message) = check.condition();
            let status = if ok { "True" } else { "False" };
            let last_transition_time = match &stored {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            };
            Condition {
                type_: jetstream::SCHEMAS_CONDITION.into(),
                status: status.into(),
                reason: reason.into(),
                message,
                last_transition_time,
                observed_generation: generation,
            }
        }
        None => return None,
    };
    let narrowed = (cond.reason == reason::SCHEMA_NARROWED
        && stored.as_ref().is_none_or(|p| p.reason != cond.reason || p.message != cond.message))
    .then(|| cond.message.clone());
    if let Some(cs) = status.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        cs.push(serde_json::to_value(cond).unwrap_or_default());
    }
    narrowed
}

/// Issues (or keeps) a Node's NATS credential; `None` for other kinds, or when the operator
/// issues none.
async fn node_credentials<K: Managed>(
    ctx: &Context,
    obj: &K,
    object: &jetstream::Object,
) -> Option<Result<super::credentials::Held, Error>> {
    let (id, node, jetstream::Spec::Node(spec)) = (ctx.identity.as_ref()?, obj.as_node()?, &object.spec) else {
        return None;
    };
    let caches = ctx.caches.get()?;
    // Grants computed from half-filled caches would be withdrawn a moment later.
    caches.ready().await;
    let rec = causeway_api::registry::NodeRecord::resolve(object.meta.clone(), spec);
    let grants = super::credentials::grants_for(&rec, spec, caches);
    Some(super::credentials::ensure(ctx, id, node, &grants).await)
}

/// A status without the resolved names (for an object whose name is invalid).
fn strip_names(mut status: serde_json::Value) -> serde_json::Value {
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, _| matches!(k.as_str(), "observedGeneration" | "conditions"));
    }
    status
}

/// Writes `status` by server-side apply, unless it equals the stored one.
async fn write_status<K: Managed>(
    api: &Api<K>,
    obj: &K,
    previous: Option<&serde_json::Value>,
    status: serde_json::Value,
) -> Result<(), Error> {
    if previous == Some(&status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Kubernetes Events for what a reconcile did: created, updated, or a transition to not ready.
async fn announce<K: Managed>(ctx: &Context, obj: &K, was: Option<&Condition>, o: &jetstream::Outcome) {
    if let Some(rw) = &o.rewound {
        publish(ctx, obj, EventType::Normal, REASON_REWOUND, "Rewind", &jetstream::rewind_note(rw)).await;
    }
    let r = &o.readiness;
    match (o.action, r.ready) {
        (CoreAction::Created, true) => {
            publish(ctx, obj, EventType::Normal, "Created", "Create", &r.message).await;
        }
        (CoreAction::Updated, true) => {
            let note: Vec<String> = o.changes.iter().map(ToString::to_string).collect();
            let note = if note.is_empty() { r.message.clone() } else { note.join("; ") };
            publish(ctx, obj, EventType::Normal, "Updated", "Update", &note).await;
        }
        (_, false) if was.is_none_or(|w| w.reason != r.reason || w.status != "False") => {
            publish(ctx, obj, EventType::Warning, r.reason, "Reconcile", &r.message).await;
        }
        (_, true) if was.is_some_and(|w| w.status == "False") => {
            publish(ctx, obj, EventType::Normal, reason::RECONCILED, "Reconcile", &r.message).await;
        }
        _ => {}
    }
}

/// The Event reason of a listener's rewind.
pub const REASON_REWOUND: &str = "Rewound";

/// Publishes an event; a failure to publish is logged, never fails the reconcile.
async fn publish<K: Managed>(ctx: &Context, obj: &K, type_: EventType, reason: &str, action: &str, note: &str) {
    let note: String = note.chars().take(1000).collect();
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::debug!(object = %key_of(obj), error = %e, "could not publish an event");
    }
}

async fn cleanup<K: Managed>(obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let kind = K::KIND.as_str();
    let skip = obj.annotations().get(SKIP_CLEANUP_ANNOTATION).is_some_and(|v| v == "true");
    if skip {
        let note = format!(
            "{SKIP_CLEANUP_ANNOTATION} is set: the JetStream objects and the registry record are left as they are"
        );
        publish(ctx, &*obj, EventType::Warning, "CleanupSkipped", "Delete", &note).await;
        ctx.metrics.reconciled(kind, "cleanup", started);
        return Ok(Action::await_change());
    }
    let Ok((_, ns, name)) = object_of(&*obj) else {
        // Never reconciled (its name is not valid): nothing in NATS to clean up.
        return Ok(Action::await_change());
    };
    if ctx.identity.is_some()
        && K::KIND == causeway_api::Kind::Node
        && let Err(e) = super::credentials::remove(ctx, ns.as_str(), &name).await
    {
        // The Secret is owned by the Node, so Kubernetes collects it anyway.
        tracing::warn!(object = %key_of(&*obj), error = %e, "could not delete the node's credential Secret");
    }
    let policy = obj.deletion_policy();
    let done =
        tokio::time::timeout(ctx.opts.cleanup_timeout, ctx.core.cleanup(K::KIND, &ns, &name, policy, Mode::Apply))
            .await;
    let failure = match done {
        Ok(Ok(c)) => {
            let mut note = Vec::new();
            if !c.deleted.is_empty() {
                note.push(format!("deleted {}", c.deleted.join(", ")));
            }
            if !c.retained.is_empty() {
                note.push(format!("kept by deletionPolicy Retain: {}", c.retained.join(", ")));
            }
            if note.is_empty() {
                note.push("nothing to clean up".into());
            }
            publish(ctx, &*obj, EventType::Normal, "Deleted", "Delete", &note.join("; ")).await;
            ctx.metrics.reconciled(kind, "cleanup", started);
            return Ok(Action::await_change());
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("NATS did not answer within {:?}", ctx.opts.cleanup_timeout),
    };
    if policy == DeletionPolicy::Retain || K::KIND == causeway_api::Kind::Listener {
        // Nothing of the user's data is at stake: let the object go now. What is left (the
        // registry record, a listener's consumer) is removed by the operator's sweep once NATS
        // answers again.
        let note = format!(
            "{failure}; the object is released now and its registry record{} removed once NATS answers again",
            if K::KIND == causeway_api::Kind::Listener { " and consumer are" } else { " is" }
        );
        publish(ctx, &*obj, EventType::Warning, "CleanupDeferred", "Delete", &note).await;
        ctx.defer_cleanup(K::KIND, ns.as_str(), name.as_str());
        ctx.metrics.reconciled(kind, "cleanup", started);
        return Ok(Action::await_change());
    }
    let note = format!(
        "{failure}; deletionPolicy Delete keeps the object until its streams are deleted (retrying). To let it go without deleting them, annotate it {SKIP_CLEANUP_ANNOTATION}=true"
    );
    publish(ctx, &*obj, EventType::Warning, "CleanupFailed", "Delete", &note).await;
    Err(Error::Cleanup(note))
}
