//! One file per resource of the HTTP API (see docs/sidecar.md).

pub mod acks;
pub mod deadletters;
pub mod health;
pub mod kv;
pub mod listeners;
pub mod nodes;
pub mod openapi;
pub mod stores;
pub mod stream;
pub mod traces;
