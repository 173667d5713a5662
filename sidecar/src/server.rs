//! The HTTP server: accept loop, routing, guards, metrics and graceful shutdown.
//!
//! [`run`] takes its listener and its shutdown signal as arguments, so tests can bind
//! `127.0.0.1:0` and stop it whenever they like.
//!
//! Resources are bounded so that no client can starve the others:
//! - connections: at most `CAUSEWAY_MAX_CONNECTIONS`; a client must send its headers within
//!   `CAUSEWAY_HEADER_TIMEOUT` (which also closes idle keep-alive connections);
//! - API requests: at most `CAUSEWAY_MAX_REQUESTS` at once. A request takes a slot only after its
//!   headers passed the guards (Host, Origin, token, content type), and gives it back when its
//!   answer starts; a body must arrive within `CAUSEWAY_BODY_TIMEOUT`. A request that waits
//!   longer than `CAUSEWAY_QUEUE_TIMEOUT` for a slot gets 503;
//! - `/healthz` and `/readyz` never need a slot and skip the Host check (kubelet probes send the
//!   pod's address), so they answer while every slot is taken.
//!
//! Guards against browsers: the `Host` must be a loopback name, the bind address or one of
//! `CAUSEWAY_ALLOWED_HOSTS` (DNS rebinding), an `Origin` must be too, and writes must carry a
//! JSON or CloudEvents content type (so no cross-site "simple" request can write).

use std::{convert::Infallible, future::Future, sync::Arc, time::Instant};

use http::{Method, Request};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    error::{Error, Result},
    http::{Resp, decode_segment, error},
    routes,
    state::State,
};

/// Serves HTTP on `listener` until `shutdown` completes, then lets open requests finish within
/// the grace period.
pub async fn run(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    // One permit per open connection, so a flood waits in the kernel's backlog instead of in
    // our memory. Requests in progress are bounded separately (see `guarded`).
    let connections = Arc::new(Semaphore::new(state.config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(state.config.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let st = state.clone();
        let svc = service_fn(move |req| handle(st.clone(), req));
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining open requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(state.config.grace_period) => tracing::warn!("grace period over; closing open requests"),
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let (route, result) = guarded(&state, req).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(route, error = %e, "request failed");
            }
            error(&e)
        }
    };
    // Nothing the API answers may be cached: it is live state.
    resp.headers_mut().entry(http::header::CACHE_CONTROL).or_insert(http::HeaderValue::from_static("no-store"));
    state.metrics.request(route, &method, resp.status().as_u16(), start.elapsed().as_secs_f64());
    Ok(resp)
}

/// Serves only `/healthz`, `/readyz` and `/metrics` (for kubelet probes and Prometheus, which
/// come from outside the pod) until `shutdown`. No API route is reachable here.
pub async fn run_health(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(state.config.header_timeout);
    tokio::pin!(shutdown);
    let connections = Arc::new(Semaphore::new(64));
    loop {
        let (stream, permit) = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => match connections.clone().try_acquire_owned() {
                    Ok(p) => (s, p),
                    Err(_) => continue,
                },
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let st = state.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let st = st.clone();
            async move {
                let probe = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
                let resp = if probe {
                    dispatch(&st, req).await.1.unwrap_or_else(|e| error(&e))
                } else {
                    error(&Error::NoRoute { method: req.method().to_string(), path: req.uri().path().to_owned() })
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

/// The checks every API request passes before it may take a slot, then the slot, then the route.
async fn guarded(state: &Arc<State>, req: Request<Incoming>) -> (&'static str, Result<Resp>) {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz") {
        return dispatch(state, req).await;
    }
    if let Err(e) = browser_guard(state, &req) {
        return ("forbidden", Err(e));
    }
    if path.starts_with("/v1/") || path == "/v1" {
        if let Err(e) = authorized(state, &req) {
            return ("unauthorized", Err(e));
        }
        if matches!(*req.method(), Method::POST | Method::PUT)
            && let Err(e) = crate::http::require_write_type(req.headers())
        {
            return ("unsupported_media_type", Err(e));
        }
    }
    if !path.starts_with("/v1") {
        // Metrics and unknown paths need no slot.
        return dispatch(state, req).await;
    }
    let slot = tokio::time::timeout(state.config.queue_timeout, state.requests.clone().acquire_owned()).await;
    let Ok(Ok(_slot)) = slot else {
        return (
            "too_busy",
            Err(Error::TooBusy(format!(
                "{} requests are in progress, the most allowed (CAUSEWAY_MAX_REQUESTS); retry shortly",
                state.config.max_requests
            ))),
        );
    };
    dispatch(state, req).await
}

/// `Host` and `Origin` must name this sidecar (DNS rebinding, cross-site pages).
fn browser_guard(state: &State, req: &Request<Incoming>) -> Result<()> {
    // HTTP/1.1 requires Host; an HTTP/1.0 client without one is not a browser.
    if let Some(host) = req.headers().get(http::header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !state.config.host_allowed(host) {
            return Err(Error::ForbiddenHost(host.to_owned()));
        }
    }
    if let Some(origin) = req.headers().get(http::header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        // `null` (sandboxed pages, file://) and any other site are refused.
        let host = origin.split_once("://").map(|(_, h)| h.trim_end_matches('/')).unwrap_or("");
        if host.is_empty() || !state.config.host_allowed(host) {
            return Err(Error::ForbiddenOrigin(origin.to_owned()));
        }
    }
    Ok(())
}

fn allowed(method: &Method, ok: &[Method], allowed: &'static str) -> Result<()> {
    if ok.contains(method) { Ok(()) } else { Err(Error::MethodNotAllowed { method: method.to_string(), allowed }) }
}

fn authorized(state: &State, req: &Request<Incoming>) -> Result<()> {
    let Some(token) = &state.config.api_token else { return Ok(()) };
    let given = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    match given.strip_prefix("Bearer ") {
        Some(t) if constant_time_eq(t.trim().as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(Error::Unauthorized),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn dispatch(state: &Arc<State>, req: Request<Incoming>) -> (&'static str, Result<Resp>) {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = req.method().clone();
    use routes::*;
    let seg = |i: usize| decode_segment(segs[i]);
    match segs.as_slice() {
        ["healthz"] => ("healthz", allowed(&m, &[Method::GET, Method::HEAD], "GET").map(|_| health::healthz())),
        ["readyz"] => (
            "readyz",
            match allowed(&m, &[Method::GET, Method::HEAD], "GET") {
                Ok(()) => Ok(health::readyz(state, req.uri().query())),
                Err(e) => Err(e),
            },
        ),
        ["metrics"] => ("metrics", allowed(&m, &[Method::GET], "GET").map(|_| health::metrics(state))),
        ["v1", "openapi.json"] => ("openapi", allowed(&m, &[Method::GET], "GET").map(|_| openapi::get())),
        ["v1", "nodes", _, "events"] => (
            "send",
            async {
                allowed(&m, &[Method::POST], "POST")?;
                nodes::send(state, &seg(2)?, req).await
            }
            .await,
        ),
        ["v1", "stores", _] => (
            "figures",
            async {
                allowed(&m, &[Method::GET], "GET")?;
                stores::figures(state, &seg(2)?, &req).await
            }
            .await,
        ),
        ["v1", "stores", _, "events"] => (
            "stream",
            async {
                allowed(&m, &[Method::GET], "GET")?;
                stream::live(state, &seg(2)?, req).await
            }
            .await,
        ),
        ["v1", "stores", _, "subjects", _, "events"] => {
            let (store, subject) = match (seg(2), seg(4)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => return ("append", Err(e)),
            };
            match m {
                Method::POST => ("append", stores::append(state, &store, &subject, req).await),
                Method::GET => ("load", stores::load(state, &store, &subject, &req).await),
                _ => ("append", Err(Error::MethodNotAllowed { method: m.to_string(), allowed: "GET, POST" })),
            }
        }
        ["v1", scope @ ("global" | "state"), rest @ ..] if !rest.is_empty() => {
            let key = match decode_segment(&rest.join("/")) {
                Ok(k) => k,
                Err(e) => return ("kv", Err(e)),
            };
            let scope = if *scope == "global" { kv::Scope::Global } else { kv::Scope::State };
            ("kv", kv::handle(state, scope, &key, req).await)
        }
        ["v1", "listeners"] => (
            "listeners",
            async {
                allowed(&m, &[Method::GET], "GET")?;
                listeners::list(state, &req).await
            }
            .await,
        ),
        ["v1", "listeners", _, "fetch"] => (
            "fetch",
            async {
                allowed(&m, &[Method::POST], "POST")?;
                listeners::fetch(state, &seg(2)?, &req).await
            }
            .await,
        ),
        ["v1", "traces", _] => (
            "trace",
            async {
                allowed(&m, &[Method::GET], "GET")?;
                traces::get(state, &seg(2)?, &req).await
            }
            .await,
        ),
        ["v1", "listeners", _, "deadletters"] => (
            "deadletters",
            async {
                allowed(&m, &[Method::GET], "GET")?;
                deadletters::list(state, &seg(2)?, &req).await
            }
            .await,
        ),
        ["v1", "listeners", _, "deadletters", "replay"] => (
            "deadletters_replay",
            async {
                allowed(&m, &[Method::POST], "POST")?;
                deadletters::replay_many(state, &seg(2)?, &req).await
            }
            .await,
        ),
        ["v1", "listeners", _, "deadletters", _] => (
            "deadletter",
            async {
                allowed(&m, &[Method::GET], "GET")?;
                deadletters::show(state, &seg(2)?, &seg(4)?, &req).await
            }
            .await,
        ),
        ["v1", "listeners", _, "deadletters", _, "replay"] => (
            "deadletter_replay",
            async {
                allowed(&m, &[Method::POST], "POST")?;
                deadletters::replay_one(state, &seg(2)?, &seg(4)?, &req).await
            }
            .await,
        ),
        ["v1", "acks"] => (
            "acks",
            async {
                allowed(&m, &[Method::POST], "POST")?;
                acks::post(state, req).await
            }
            .await,
        ),
        _ => ("not_found", Err(Error::NoRoute { method: m.to_string(), path: path.clone() })),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
