//! `GET /healthz`, `GET /readyz` and `GET /metrics`.

use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use crate::{
    http::{Resp, full, json},
    state::State,
};

/// Liveness: the process serves HTTP.
pub fn healthz() -> Resp {
    json(StatusCode::OK, &json!({"status": "ok"}))
}

/// Readiness: NATS connected, registry synced, the Lamport clock restored, and the app healthy.
///
/// The app only counts once its health check has passed at least once: a native sidecar's
/// startup probe must pass before Kubernetes starts the app at all. `?app=ignore` skips it.
pub fn readyz(state: &State, query: Option<&str>) -> Resp {
    let nats = state.nats_connected();
    let registry = state.registry.is_synced();
    let ignore_app = match crate::http::Query::parse(query, &["app"]) {
        Ok(q) => q.get("app") == Some("ignore"),
        Err(e) => return crate::http::error(&e),
    };
    let app_healthy = *state.app_healthy.borrow();
    let app_seen = *state.app_seen.borrow();
    let app_ok = ignore_app || app_healthy || !app_seen;
    let clock = *state.clock_restored.borrow();
    let ready = nats && registry && clock && app_ok;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut r = json(
        status,
        &json!({
            "ready": ready,
            "natsConnected": nats,
            "registrySynced": registry,
            "clockRestored": clock,
            "appHealthy": app_healthy,
            "appSeen": app_seen,
        }),
    );
    if !ready {
        // Like every other 503 of the sidecar: a client polling readiness learns when to ask again.
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u32));
    }
    r
}

/// Prometheus metrics in the OpenMetrics text format.
pub fn metrics(state: &State) -> Resp {
    state.metrics.nats_connected.set(state.nats_connected() as i64);
    let mut r = Resp::new(full(state.metrics.render()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}
