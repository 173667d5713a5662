//! The HTTP server: accept loop, routing, auth, metrics and graceful shutdown.
//!
//! [`run`] takes its listener and its shutdown signal as arguments, so tests can bind
//! `127.0.0.1:0` and stop it whenever they like.

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
    // One permit per open connection: HTTP/1 serves one request at a time on a connection, so
    // this also bounds the requests in progress, and a flood waits in the kernel's backlog
    // instead of in our memory.
    let connections = Arc::new(Semaphore::new(state.config.max_requests));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(30));
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
    let (route, result) = dispatch(&state, req).await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(route, error = %e, "request failed");
            }
            error(&e)
        }
    };
    let labels = vec![
        ("route", route.to_owned()),
        ("method", method.to_string()),
        ("status", resp.status().as_u16().to_string()),
    ];
    state.metrics.requests.get_or_create(&labels).inc();
    state.metrics.latency.get_or_create(&vec![("route", route.to_owned())]).observe(start.elapsed().as_secs_f64());
    Ok(resp)
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
    if segs.first() == Some(&"v1")
        && let Err(e) = authorized(state, &req)
    {
        return ("unauthorized", Err(e));
    }
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
                stores::figures(state, &seg(2)?).await
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
                Method::GET => ("load", stores::load(state, &store, &subject, req.uri().query()).await),
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
                listeners::list(state).await
            }
            .await,
        ),
        ["v1", "listeners", _, "fetch"] => (
            "fetch",
            async {
                allowed(&m, &[Method::POST], "POST")?;
                listeners::fetch(state, &seg(2)?, req.uri().query()).await
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
