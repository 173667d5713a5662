//! Rules a spec must follow that the schema cannot express (they relate two fields).
//!
//! `causeway apply` and the operator both call these after the schema and CEL checks.

use crate::crd::{Compression, DeliveryMode, EventStoreSpec, ListenerSpec, NodeSpec, Retention, StorageType};
use crate::quantity::Duration;

/// A field-level problem with a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted path from the object root, e.g. `spec.delivery.timeout`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    /// A new error at `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_owned(), message: message.into() }
    }
}

fn check_retention(at: &str, r: &Retention, duplicate_window: Option<Duration>, errs: &mut Vec<FieldError>) {
    if let (Some(age), Some(dw)) = (r.max_age, duplicate_window)
        && !age.is_zero()
        && dw > age
    {
        errs.push(FieldError::new(
            &format!("{at}.maxAge"),
            format!("maxAge {age} is shorter than the duplicate window {dw}: raise maxAge or lower duplicateWindow"),
        ));
    }
}

/// Checks an EventStore spec.
pub fn check_store(spec: &EventStoreSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    check_retention("spec.retention", &spec.retention, Some(spec.duplicate_window), &mut errs);
    if spec.duplicate_window.is_zero() {
        errs.push(FieldError::new("spec.duplicateWindow", "duplicateWindow must be longer than 0s, e.g. 2m"));
    }
    if spec.compression == Compression::S2 && spec.storage == StorageType::Memory {
        errs.push(FieldError::new("spec.compression", "s2 compression needs file storage: use compression: none"));
    }
    errs.extend(crate::schema::check_specs(&spec.schemas));
    errs
}

/// Checks a Node spec.
pub fn check_node(spec: &NodeSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.delivery.backoff.is_empty() {
        errs.push(FieldError::new("spec.delivery.backoff", "backoff needs at least one delay, e.g. [1s, 5s, 30s]"));
    }
    if spec.delivery.ack_wait.is_zero() {
        errs.push(FieldError::new("spec.delivery.ackWait", "ackWait must be longer than 0s, e.g. 30s"));
    }
    errs.extend(crate::schema::check_specs(&spec.schemas));
    errs
}

/// Checks a Listener spec on its own (its node's defaults are checked when it is resolved).
pub fn check_listener(spec: &ListenerSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match (&spec.source.store, &spec.source.inbox) {
        (Some(_), Some(_)) | (None, None) => errs.push(FieldError::new(
            "spec.source",
            "source must name exactly one of store or inbox, e.g. {store: orders} or {inbox: inventory}",
        )),
        (None, Some(_)) if !spec.subjects.is_empty() && !spec.types.is_empty() => errs.push(FieldError::new(
            "spec.subjects",
            "an inbox's subject is the event type: give types or subjects, not both",
        )),
        _ => {}
    }
    if let (Some(t), Some(a)) = (spec.delivery.timeout, spec.delivery.ack_wait)
        && t >= a
    {
        errs.push(FieldError::new(
            "spec.delivery.timeout",
            format!(
                "timeout {t} must be shorter than ackWait {a}, or JetStream redelivers while the app is still working"
            ),
        ));
    }
    if spec.delivery.backoff.as_ref().is_some_and(|b| b.is_empty()) {
        errs.push(FieldError::new("spec.delivery.backoff", "backoff needs at least one delay, or leave it out"));
    }
    if spec.delivery.order_by.is_some() && spec.delivery.ordered {
        errs.push(FieldError::new(
            "spec.delivery.orderBy",
            "orderBy and ordered: true exclude each other: ordered delivers one event at a time for the whole listener, orderBy one at a time per key; keep one",
        ));
    }
    if spec.delivery.order_by.is_some() && spec.delivery.mode == DeliveryMode::Pull {
        errs.push(FieldError::new(
            "spec.delivery.orderBy",
            "orderBy needs mode: push (the sidecar keeps the order per key; a pull app fetches and acks on its own)",
        ));
    }
    if spec.delivery.ack_wait.is_some_and(Duration::is_zero) {
        errs.push(FieldError::new("spec.delivery.ackWait", "ackWait must be longer than 0s, e.g. 30s"));
    }
    if let Some(r) = &spec.rewind {
        if r.id.trim().is_empty() {
            errs.push(FieldError::new(
                "spec.rewind.id",
                "rewind.id must be a non-empty token (e.g. 2026-11-25-fix); a new id asks for a new rewind",
            ));
        }
        if let Err(e) = r.to.position() {
            errs.push(FieldError::new("spec.rewind.to", e));
        }
    }
    errs
}
