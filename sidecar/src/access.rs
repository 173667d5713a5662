//! The node's access policy (`spec.access` of its Node): whom it may send to, which stores it
//! may append to and read. The sidecar enforces it on every request, whatever NATS enforces;
//! where node credentials are issued, NATS holds the same rules, so a process that bypasses the
//! sidecar gains nothing.
//!
//! The policy is checked before the target is resolved, so a refused name is never confirmed to
//! exist, and the refusal needs no NATS round trip.

use std::sync::Arc;

use causeway_api::{
    crd::{AccessAction, NodeAccess},
    registry::{NodeRecord, StoreRecord},
};

use crate::{
    error::{Error, Result},
    state::State,
};

/// This node's policy: from its own Node record, or the default (its namespace) while the
/// record is not known.
fn policy(state: &State) -> NodeAccess {
    state.registry.own_node().map(|n| n.spec.access.clone()).unwrap_or_default()
}

/// 403 unless the policy allows `action` on `name` of namespace `ns`.
pub fn check(state: &State, action: AccessAction, ns: &str, name: &str) -> Result<()> {
    let own = state.config.namespace.as_str();
    let access = policy(state);
    if access.allows(own, action, ns, name) {
        return Ok(());
    }
    let entry = if ns == own { name.to_owned() } else { format!("{ns}/{name}") };
    let listed: Vec<String> = access.entries(action).iter().map(|r| format!("{:?}", r.as_str())).collect();
    let (verb, kind) = match action {
        AccessAction::Send => ("send to", "node"),
        AccessAction::Append => ("append to", "store"),
        AccessAction::Read => ("read", "store"),
    };
    let also = if action == AccessAction::Read { " (or to spec.access.append, which implies reading)" } else { "" };
    Err(Error::Forbidden {
        policy: format!("{} spec.access.{}", state.sender(), action.field()),
        message: format!(
            "node {} may not {verb} {kind} {ns}/{name}: its Node's spec.access.{} is [{}]; add \"{entry}\" to it{also} to allow this",
            state.sender(),
            action.field(),
            listed.join(", "),
        ),
    })
}

/// Resolves a send target (`name` or `namespace.name`) the policy allows.
pub async fn send_target(state: &State, target: &str) -> Result<Arc<NodeRecord>> {
    state.registry.ready()?;
    let (ns, name) = state.registry.split(target);
    check(state, AccessAction::Send, ns, name)?;
    state.registry.node(&state.client, &state.link, state.config.nats_wait, target).await
}

/// Resolves a store (`name` or `namespace.name`) the policy allows `action` on.
pub async fn store(state: &State, action: AccessAction, target: &str) -> Result<Arc<StoreRecord>> {
    state.registry.ready()?;
    let (ns, name) = state.registry.split(target);
    check(state, action, ns, name)?;
    state.registry.any_store(&state.client, &state.link, state.config.nats_wait, target).await
}
