//! `causeway-operator`: the reconcile core (spec → JetStream, idempotent, drift-correcting),
//! and the local manifest driver behind `causeway apply` and `causeway dev`. The Kubernetes
//! controllers and the webhook will call the same core.
#![forbid(unsafe_code)]

pub mod crdgen;
pub mod error;
pub mod jetstream;
pub mod local;
pub mod manifest;

pub use error::{Error, Result};
