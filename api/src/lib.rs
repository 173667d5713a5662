//! `causeway-api`: the public contract of Causeway as types.
//!
//! - [`crd`]: the `EventStore`, `Node` and `Listener` custom resources;
//! - [`naming`]: the JetStream naming rules, one function each;
//! - [`names`]: validated names (DNS labels, event types, subjects, patterns);
//! - [`quantity`]: durations and byte sizes as manifests write them;
//! - [`envelope`]: the event on the wire (MessagePack) and at the app (JSON);
//! - [`causal`]: causal context and the Lamport clock;
//! - [`check`]: rules relating two spec fields;
//! - [`registry`]: the resolved records sidecars read from `CW_REGISTRY`;
//! - [`creds`]: the NATS `.creds` file and the claims of a user JWT;
//! - [`grants`]: what a Node's NATS credential may publish and subscribe to;
//! - [`schema`]: optional JSON Schemas per event type (typed events).
//!
//! Pure: no I/O.
#![forbid(unsafe_code)]

pub mod causal;
pub mod check;
pub mod crd;
pub mod creds;
pub mod envelope;
pub mod grants;
pub mod names;
pub mod naming;
pub mod quantity;
pub mod registry;
pub mod schema;
pub mod trace;

pub use names::DnsLabel;
pub use naming::Kind;
