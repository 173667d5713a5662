//! The sidecar-injection webhook, `POST /mutate-pods`, served over TLS by every operator replica
//! whatever the leadership.
//!
//! - [`inject`]: what a pod gets (pure: AdmissionReview in, JSON Patch out);
//! - [`tls`]: the CA and serving certificate in a Secret, the reloading resolver, the caBundle
//!   keeper.
//!
//! Answers come well inside the API server's timeout: the only call made per review is a read of
//! the pod's Node (to warn when it does not exist), bounded by [`NODE_CHECK_TIMEOUT`]. A malformed
//! review gets a well-formed refusal; nothing a client sends can stop the server.

pub mod inject;
pub mod tls;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use causeway_api::crd::Node;
use futures::FutureExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::net::TcpListener;

use self::inject::{Decision, InjectConfig};

/// Longest the check that a pod's Node exists may take before the pod is admitted with a
/// warning that it could not be checked.
pub const NODE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest AdmissionReview read (pods with many containers are large, none is this large).
const MAX_REVIEW: usize = 4 << 20;

/// How the webhook is served.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where it listens (TLS).
    pub addr: SocketAddr,
    /// The Service in front of it (its DNS names go into the certificate).
    pub service: String,
    /// The operator's namespace (of the Service and the Secret).
    pub namespace: String,
    /// The Secret holding the CA and certificate.
    pub secret: String,
    /// The MutatingWebhookConfiguration whose caBundle is kept (None: not managed).
    pub config_name: Option<String>,
    /// Serve `tls.crt`/`tls.key` from this directory instead of managing a CA.
    pub cert_dir: Option<PathBuf>,
    /// What pods get.
    pub inject: InjectConfig,
}

/// Why the webhook is not ready, if it is not (shared with `/readyz`).
pub type Readiness = Arc<Mutex<Option<String>>>;

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// Answers one AdmissionReview body: never fails, never panics on input.
pub async fn review(cfg: &InjectConfig, client: Option<&kube::Client>, body: &[u8]) -> Vec<u8> {
    let answer = match inject::parse(body) {
        Err(e) => inject::malformed(e),
        Ok((review, namespace, operation, pod)) => {
            let decision = inject::decide(cfg, &namespace, &operation, &pod);
            let warning = match (&decision, client) {
                (Decision::Inject { namespace, node, .. }, Some(c)) => node_warning(c, namespace, node).await,
                _ => None,
            };
            let name = pod.pointer("/metadata/name").or(pod.pointer("/metadata/generateName"));
            match &decision {
                Decision::Inject { node, .. } => tracing::info!(namespace, pod = ?name, node, "injecting the sidecar"),
                Decision::Refuse(why) => tracing::info!(namespace, pod = ?name, why, "refusing a pod"),
                Decision::Untouched => tracing::debug!(namespace, pod = ?name, "pod left alone"),
            }
            inject::respond(review, decision, warning)
        }
    };
    encode(&answer)
}

/// The review as the API server reads it: the patch as base64, as Go encodes `[]byte`.
fn encode(answer: &kube::core::admission::AdmissionReview<kube::core::DynamicObject>) -> Vec<u8> {
    let mut v = serde_json::to_value(answer).unwrap_or_default();
    if let Some(patch) = v.pointer_mut("/response/patch")
        && let Some(bytes) =
            patch.as_array().map(|a| a.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect::<Vec<u8>>())
    {
        use base64::Engine;
        *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    serde_json::to_vec(&v)
        .unwrap_or_else(|_| br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec())
}

/// A warning when the pod's Node does not exist (admitted all the same: it may be created later).
async fn node_warning(client: &kube::Client, namespace: &str, node: &str) -> Option<String> {
    let api: Api<Node> = Api::namespaced(client.clone(), namespace);
    match tokio::time::timeout(NODE_CHECK_TIMEOUT, api.get_opt(node)).await {
        Ok(Ok(Some(_))) => None,
        Ok(Ok(None)) => Some(format!(
            "causeway.dev/node: Node {node:?} does not exist in namespace {namespace}; the sidecar starts, and serves once it is created"
        )),
        Ok(Err(e)) => Some(format!("causeway.dev/node: could not check that Node {node:?} exists: {e}")),
        Err(_) => Some(format!("causeway.dev/node: could not check in time that Node {node:?} exists")),
    }
}

async fn handle(
    cfg: Arc<InjectConfig>,
    client: Option<kube::Client>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::POST, "/mutate-pods") => {
            let body =
                tokio::time::timeout(Duration::from_secs(5), Limited::new(req.into_body(), MAX_REVIEW).collect()).await;
            let body = match body {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) => return Ok(reply(StatusCode::OK, encode(&inject::malformed(e)))),
                Err(_) => {
                    return Ok(reply(StatusCode::OK, encode(&inject::malformed("the body did not arrive in time"))));
                }
            };
            reply(StatusCode::OK, review(&cfg, client.as_ref(), &body).await)
        }
        (Method::GET, "/healthz") => reply(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
        _ => reply(StatusCode::NOT_FOUND, br#"{"error":"not_found","message":"POST /mutate-pods"}"#.to_vec()),
    })
}

/// Serves the webhook over TLS on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    inject: InjectConfig,
    client: Option<kube::Client>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let cfg = Arc::new(inject);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    while let Some(stream) = crate::controller::health::accept(&listener, &mut shutdown).await {
        let (acceptor, cfg, client, http) = (acceptor.clone(), cfg.clone(), client.clone(), http.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "webhook: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = service_fn(move |req| handle(cfg.clone(), client.clone(), req));
            let _ = http.serve_connection(TokioIo::new(tls), svc).await;
        });
    }
}

/// Sets up TLS (the Secret, or the certificate directory), then serves the webhook and keeps its
/// certificate and caBundle current until `shutdown`. `ready` reports why it is not ready.
pub async fn run(
    client: kube::Client,
    cfg: WebhookConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + 'static,
) -> Result<(), String> {
    let set = {
        let r = ready.clone();
        move |why: Option<String>| *r.lock().unwrap_or_else(|e| e.into_inner()) = why
    };
    set(Some("the webhook certificate is not loaded yet".into()));
    let listener =
        TcpListener::bind(cfg.addr).await.map_err(|e| format!("webhook: cannot listen on {}: {e}", cfg.addr))?;
    let resolver = match &cfg.cert_dir {
        Some(dir) => {
            let (c, k) = tls::load_dir(dir)?;
            let resolver = tls::Resolver::new(tls::certified_key(&c, &k)?);
            tokio::spawn(tls::keep_dir(dir.clone(), resolver.clone(), shutdown.clone()));
            set(None);
            resolver
        }
        None => {
            let names = tls::service_names(&cfg.service, &cfg.namespace);
            let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
            let bundle = loop {
                match tls::ensure(&api, &cfg.secret, &cfg.namespace, &names).await {
                    Ok(b) => break b,
                    Err(e) => {
                        set(Some(format!("webhook certificate: {e}")));
                        tracing::warn!(error = %e, "webhook certificate not ready; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            _ = shutdown.clone() => return Ok(()),
                        }
                    }
                }
            };
            let resolver = tls::Resolver::new(tls::certified_key(&bundle.cert, &bundle.key)?);
            let ca = bundle.ca.clone();
            tokio::spawn(tls::keep_secret(
                api,
                cfg.secret.clone(),
                cfg.namespace.clone(),
                names,
                resolver.clone(),
                bundle,
                shutdown.clone(),
            ));
            match &cfg.config_name {
                Some(name) => {
                    tokio::spawn(tls::keep_ca_bundle(client.clone(), name.clone(), ca, set, shutdown.clone().boxed()));
                }
                None => set(None),
            }
            resolver
        }
    };
    tracing::info!(addr = %cfg.addr, "serving the sidecar-injection webhook");
    serve(listener, tls::server_config(resolver), cfg.inject, Some(client), shutdown).await;
    Ok(())
}
