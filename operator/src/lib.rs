//! `causeway-operator`: the reconcile core (spec → JetStream, idempotent, drift-correcting),
//! the Kubernetes controllers that call it ([`controller`]), and the local manifest driver
//! behind `causeway apply` and `causeway dev`; and the issuing of per-node NATS credentials
//! ([`identity`]).
#![forbid(unsafe_code)]

pub mod controller;
pub mod crdgen;
pub mod error;
pub mod identity;
pub mod jetstream;
pub mod local;
pub mod manifest;
pub mod webhook;

pub use error::{Error, Result};
