//! `POST /v1/nodes/{node}/events`: send one event, or an all-or-nothing batch, to a node's inbox.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::{
    conditional::{Conditions, Support},
    error::Result,
    event::{build, parse_request},
    http::{Query, Resp, json, read_body},
    publish::{Outgoing, publish_batch, publish_one},
    state::State,
};

/// Sends the body's event(s) to `node` (`name` or `namespace.name`). Answers 202 after the
/// JetStream ack: `{"id","sequence","duplicate"}`, or an array of those for a batch.
pub async fn send(state: &State, node: &str, req: Request<Incoming>) -> Result<Resp> {
    let (parts, body) = req.into_parts();
    Query::parse(parts.uri.query(), &[])?;
    Conditions::parse(
        &parts.headers,
        Support::None,
        "a send takes no condition (conditions apply to appends: POST /v1/stores/{store}/subjects/{subject}/events)",
    )?;
    let body = read_body(&parts.headers, body, state.body_limits()).await?;
    let (drafts, batch) = parse_request(&parts.headers, &body)?;
    let target = crate::access::send_target(state, node).await?;
    let target_name = format!("{}/{}", target.meta.namespace, target.meta.name);
    // Checked before anything else happens (not even a tick of the clock) for a refused request.
    let versions = crate::schemas::check(
        state.schemas.node(&target).as_deref(),
        drafts.iter().map(|d| (d.event_type.as_str(), &d.payload)),
        batch,
    )?;
    let sender = state.sender();
    let outs: Vec<Outgoing> = drafts
        .into_iter()
        .zip(versions)
        .map(|(d, version)| {
            // In an inbox the subject is the event type, so listeners filter by type on the server.
            let subject = d.event_type.clone();
            let mut env = build(d, None, &state.causes, &state.clock, sender, &target_name, &subject);
            env.schema_version = version;
            Outgoing::to_inbox(state, &target, env)
        })
        .collect();
    if batch {
        let acks = publish_batch(state, outs).await?;
        state.metrics.written("send", acks.iter().all(|a| a.duplicate), acks.len() as u64);
        Ok(json(StatusCode::ACCEPTED, &acks))
    } else {
        let ack = publish_one(state, outs.into_iter().next().expect("one event")).await?;
        state.metrics.written("send", ack.duplicate, 1);
        Ok(json(StatusCode::ACCEPTED, &ack))
    }
}
