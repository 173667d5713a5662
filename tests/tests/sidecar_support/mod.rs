//! Shared by the sidecar tests: the real `causeway-sidecar` binary as a process, manifests
//! applied through the real reconcile core, and a small real HTTP app built on hyper.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use causeway_tests::{NatsServer, bin, eventually};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// The shop the sidecar tests share: store `orders`, nodes `web` and `inventory`. Tests append
/// their listeners with `concat!(SHOP, "---\n...")` or `format!`.
pub const SHOP: &str = r#"apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: web, namespace: shop}
spec: {}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: inventory, namespace: shop}
spec: {}
"#;

/// Applies manifests through the same reconcile core as `causeway apply`.
pub async fn apply(server: &NatsServer, yaml: &str) {
    let client = server.client().await;
    causeway_operator::local::apply_yaml(&client, yaml).await.unwrap_or_else(|e| panic!("apply failed:\n{e}"));
    // Under node isolation, the running sidecars get the rights the new objects imply.
    causeway_tests::refresh_secure_creds(&server.url);
}

/// A running sidecar process, killed on drop.
pub struct Sidecar {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stderr: Arc<Mutex<String>>,
}

impl Sidecar {
    /// Starts a sidecar for `ns/node` on a random port, with extra env, and waits for `/readyz`.
    pub async fn start(server: &NatsServer, ns: &str, node: &str, env: &[(&str, &str)]) -> Self {
        let s = Self::spawn(&server.url, ns, node, env);
        s.wait_ready().await;
        s
    }

    /// Starts a sidecar without waiting for readiness.
    pub fn spawn(nats_url: &str, ns: &str, node: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin("causeway-sidecar"));
        cmd.env_clear()
            .env("CAUSEWAY_NODE", node)
            .env("CAUSEWAY_NAMESPACE", ns)
            .env("CAUSEWAY_NATS_URL", nats_url)
            .env("CAUSEWAY_PORT", "0")
            .env("CAUSEWAY_APP_HEALTH_INTERVAL", "100ms")
            .env("CAUSEWAY_GRACE_PERIOD", "5s")
            .env("CAUSEWAY_LOG", "info,causeway_sidecar=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Under node isolation (CAUSEWAY_TEST_SECURE=1), each sidecar runs on its own Node's
        // credential, as the operator would issue it.
        if !env.iter().any(|(k, _)| *k == "CAUSEWAY_NATS_CREDS")
            && let Some(path) = causeway_tests::secure_node_creds(nats_url, ns, node)
        {
            cmd.env("CAUSEWAY_NATS_CREDS", path).env("CAUSEWAY_NATS_CREDS_RELOAD", "100ms");
        }
        let mut child = cmd.spawn().expect("start causeway-sidecar");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the sidecar's first line");
        let stderr_buf = Arc::new(Mutex::new(String::new()));
        let sink = stderr_buf.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                if s.len() < 4 << 20 {
                    s.push_str(&l);
                    s.push('\n');
                }
            }
        });
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in the sidecar's first line {line:?}"))
            .to_owned();
        Self { child: Some(child), url, stderr: stderr_buf }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.url);
        let logs = self.stderr.clone();
        eventually(Duration::from_secs(20), "sidecar ready", || {
            let url = url.clone();
            async move { reqwest::get(&url).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        let _ = logs;
    }

    /// A URL on this sidecar.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The sidecar's log so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process; its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok().and_then(|s| s.code())
    }

    /// Kills the process (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sidecar {} log ---\n{}", self.url, self.logs());
        }
        self.kill();
    }
}

/// What the test app received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Lower-cased headers.
    pub headers: HashMap<String, String>,
    /// The JSON body.
    pub body: Value,
}

type Handler = dyn Fn(&Received) -> (u16, Value) + Send + Sync;

/// A small real HTTP app: records every POST and answers with what the handler says.
/// `GET /healthz` answers 200 while `healthy` is true.
pub struct App {
    /// Its port.
    pub port: u16,
    /// Everything POSTed, in arrival order.
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Health flag.
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Starts on a random port.
    pub async fn start(handler: impl Fn(&Received) -> (u16, Value) + Send + Sync + 'static) -> Self {
        Self::start_on(0, Arc::new(handler)).await
    }

    /// Starts on `port` (0: random).
    pub async fn start_on(port: u16, handler: Arc<Handler>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind app");
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (rec, h) = (received.clone(), healthy.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { break };
                let (rec, h, handler) = (rec.clone(), h.clone(), handler.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (rec, h, handler) = (rec.clone(), h.clone(), handler.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            if req.method() == hyper::Method::GET {
                                let ok = h.load(std::sync::atomic::Ordering::SeqCst);
                                let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                                *r.status_mut() =
                                    if ok { hyper::StatusCode::OK } else { hyper::StatusCode::SERVICE_UNAVAILABLE };
                                return Ok::<_, Infallible>(r);
                            }
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                                .collect();
                            let bytes = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            let r = Received { path, headers, body };
                            let (status, answer) = handler(&r);
                            rec.lock().unwrap().push(r);
                            let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok(resp)
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { port, received, healthy, task }
    }

    /// Stops listening (connections refused from now on).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Ids of the events received, in order.
    pub fn ids(&self) -> Vec<String> {
        self.received.lock().unwrap().iter().map(|r| r.body["id"].as_str().unwrap_or("").to_owned()).collect()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap()
}

/// POSTs JSON; status and JSON answer.
pub async fn post(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// GETs JSON; status and JSON answer.
pub async fn get(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Loads every event of a store subject (pattern).
pub async fn load(c: &reqwest::Client, sc: &Sidecar, store: &str, subject: &str) -> Vec<Value> {
    let (s, v) = get(c, &sc.at(&format!("/v1/stores/{store}/subjects/{subject}/events?limit=10000"))).await;
    assert_eq!(s, 200, "{v}");
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Asserts an error answer: status, code, and a JSON body with a message.
pub fn assert_error(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "expected {status} {code}, got {}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    assert!(got.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", got.1);
}

/// Names of the live objects in a namespace's blob store, read with direct gets (the object
/// store client's `list` opens a consumer per call, and a stream holds at most 1,000).
pub async fn blob_names(server: &NatsServer, ns: &str) -> Vec<String> {
    let client = server.client().await;
    let stream = format!("OBJ_CW_BLOB_{ns}");
    let mut names = Vec::new();
    let mut next = 1;
    loop {
        let b =
            causeway_sidecar::nats::direct_batch(&client, &stream, &format!("$O.CW_BLOB_{ns}.M.>"), next, 256, 1 << 20)
                .await
                .expect("read the blob store");
        for m in &b.messages {
            let meta: Value = serde_json::from_slice(&m.payload).expect("object metadata");
            if meta["deleted"] != true {
                names.push(meta["name"].as_str().unwrap_or_default().to_owned());
            }
        }
        match b.messages.last() {
            Some(last) if b.pending > 0 => next = last.sequence + 1,
            _ => return names,
        }
    }
}
