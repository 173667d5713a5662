//! The bare HTTP floor: a hyper server that reads each request's body and answers what the
//! sidecar answers a send (`202`, a JSON body of the same size), doing nothing else. Run as its
//! own process (`causeway-bench floor-http`), with the same runtime settings as the sidecar, so
//! its CPU is measured alone and compares like for like.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

/// The subcommand that runs the floor server.
pub const COMMAND: &str = "floor-http";

/// What the sidecar answers a send, byte for byte in size.
const ANSWER: &[u8] = br#"{"id":"01JQ5Z3W8B9N0PQRSTVWXYZ012","sequence":1234567,"duplicate":false}"#;

/// `floor-http PORT`: serves on 127.0.0.1:PORT until killed. `CAUSEWAY_WORKER_THREADS` sets the
/// runtime as it does for the sidecar (absent: one thread, the sidecar's default).
pub fn serve(args: &[String]) {
    let port: u16 = args.first().and_then(|p| p.parse().ok()).expect("floor-http PORT");
    use causeway_sidecar::config::{DEFAULT_WORKER_THREADS, ENV_WORKER_THREADS, runtime};
    let threads = std::env::var(ENV_WORKER_THREADS).ok().and_then(|t| t.parse().ok());
    let runtime = runtime(threads.unwrap_or(DEFAULT_WORKER_THREADS)).expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the floor server");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let _body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let mut r = Response::new(Full::new(Bytes::from_static(ANSWER)));
                    *r.status_mut() = hyper::StatusCode::ACCEPTED;
                    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}
