//! `GET /healthz`, `GET /readyz` and `GET /metrics` of the operator, served by every replica,
//! leader or not.

use std::{
    convert::Infallible,
    future::Future,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use super::{Caches, metrics::Metrics};

/// What the probes report.
pub struct Health {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// The NATS connection.
    pub nats: async_nats::Client,
    /// Why this replica is not ready (None: ready once NATS is connected).
    pub not_ready: Mutex<Option<String>>,
    /// Whether this replica leads.
    pub leading: Mutex<bool>,
    /// The controllers' caches, for the object counts.
    pub caches: Mutex<Caches>,
    /// Why the webhook is not ready (None: ready, or not served).
    pub webhook: crate::webhook::Readiness,
}

impl Health {
    /// Starts not ready, for `why`.
    pub fn new(metrics: Arc<Metrics>, nats: async_nats::Client, why: &str) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            nats,
            not_ready: Mutex::new(Some(why.to_owned())),
            leading: Mutex::new(false),
            caches: Mutex::default(),
            webhook: Arc::default(),
        })
    }

    /// Sets (or clears) the reason for not being ready.
    pub fn set_not_ready(&self, why: Option<String>) {
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Records leadership.
    pub fn set_leading(&self, leading: bool) {
        *self.leading.lock().unwrap_or_else(|e| e.into_inner()) = leading;
        self.metrics.leader.set(leading as i64);
    }

    fn nats_connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    fn readyz(&self) -> (StatusCode, serde_json::Value) {
        let nats = self.nats_connected();
        let why = self.not_ready.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let webhook = self.webhook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let why = why.or(webhook);
        let leading = *self.leading.lock().unwrap_or_else(|e| e.into_inner());
        let reason = if !nats { Some("NATS is not connected".to_owned()) } else { why };
        let status = if reason.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, json!({"ready": reason.is_none(), "reason": reason, "natsConnected": nats, "leader": leading}))
    }

    fn render_metrics(&self) -> String {
        self.metrics.nats_connected.set(self.nats_connected() as i64);
        self.caches.lock().unwrap_or_else(|e| e.into_inner()).count(&self.metrics);
        self.metrics.render()
    }
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

async fn handle(health: Arc<Health>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Ok(answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            r#"{"error":"method_not_allowed"}"#.into(),
        ));
    }
    Ok(match req.uri().path() {
        "/healthz" => answer(StatusCode::OK, "application/json", r#"{"status":"ok"}"#.into()),
        "/readyz" => {
            let (s, v) = health.readyz();
            answer(s, "application/json", v.to_string())
        }
        "/metrics" => answer(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            health.render_metrics(),
        ),
        _ => answer(StatusCode::NOT_FOUND, "application/json", r#"{"error":"not_found"}"#.into()),
    })
}

/// Serves the probes and metrics on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, health: Arc<Health>, shutdown: impl Future<Output = ()>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(10));
    tokio::pin!(shutdown);
    while let Some(stream) = accept(&listener, &mut shutdown).await {
        let h = health.clone();
        let conn = http.serve_connection(TokioIo::new(stream), service_fn(move |req| handle(h.clone(), req)));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// The next connection, or `None` once `shutdown` completes. A failed accept (e.g. too many open
/// files) is logged and retried after a pause, never fatal.
pub async fn accept<F: Future<Output = ()>>(
    listener: &TcpListener,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => return Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.as_mut() => return None,
        }
    }
}
