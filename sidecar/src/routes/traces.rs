//! `GET /v1/traces/{correlationId}`: the causal tree of one correlation in this namespace, from
//! its trace stream (see `causeway_api::trace`).

use causeway_api::{naming, trace::Trace, trace::TraceRecord};
use http::StatusCode;

use crate::{
    conditional::{Conditions, Support},
    error::{Error, Result},
    http::{Query, Resp, json},
    nats::{direct_batch, resilient},
    state::State,
};

/// Most records one trace reads; a larger one answers with `truncated: true`.
pub const MAX_RECORDS: usize = 10_000;

/// The trace of `correlation_id`, or 404 when nothing recorded it.
pub async fn get(state: &State, correlation_id: &str, req: &http::Request<hyper::body::Incoming>) -> Result<Resp> {
    Query::parse(req.uri().query(), &[])?;
    Conditions::parse(req.headers(), Support::None, "a trace takes no condition")?;
    if correlation_id.is_empty() || correlation_id.chars().any(char::is_control) {
        return Err(Error::InvalidQuery("the correlation id must be printable characters".into()));
    }
    let ns = &state.config.namespace;
    let stream = naming::trace_stream(ns);
    let filter = naming::trace_filter(ns, correlation_id);
    let mut records = Vec::new();
    let mut next = 1;
    let truncated = loop {
        let batch = resilient(&state.link, state.config.nats_wait, || {
            direct_batch(&state.client, &stream, &filter, next, 1000, 4 << 20)
        })
        .await?;
        let Some(last) = batch.messages.last().map(|m| m.sequence) else { break false };
        records.extend(batch.messages.iter().filter_map(|m| TraceRecord::decode(&m.payload)));
        if records.len() >= MAX_RECORDS {
            break true;
        }
        if batch.pending == 0 {
            break false;
        }
        next = last + 1;
    };
    let trace = Trace::build(correlation_id, &records);
    if trace.events == 0 {
        return Err(Error::TraceNotFound(correlation_id.to_owned()));
    }
    let mut body = serde_json::to_value(&trace).map_err(|e| Error::Internal(e.to_string()))?;
    body["truncated"] = truncated.into();
    Ok(json(StatusCode::OK, &body))
}
