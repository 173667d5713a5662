//! `causeway-operator`: the reconcile core (spec → JetStream, idempotent, drift-correcting),
//! the local manifest driver behind `causeway apply` and `causeway dev`, and the Kubernetes glue.
#![forbid(unsafe_code)]

pub mod crdgen;
pub mod error;
pub mod jetstream;
pub mod local;
pub mod manifest;

pub use error::{Error, Result};
