//! `causeway demo-app`: the smallest possible Causeway app, for the demo and for trying things.
//!
//! It prints every event the sidecar pushes (with its causal context) and, for the types given
//! with `--reply`, answers with an `emit` so the sidecar sends a follow-up event.

use std::{convert::Infallible, net::SocketAddr, process::ExitCode, sync::Arc};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// Flags of `causeway demo-app`.
#[derive(Debug, Args)]
pub struct DemoAppArgs {
    /// Name shown on every line.
    #[arg(long, default_value = "app")]
    pub name: String,
    /// Address to listen on (0.0.0.0 in a pod, so kubelet's probes reach it).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long)]
    pub port: u16,
    /// Reply rule `TYPE=NODE:NEWTYPE`: on an event of TYPE, emit NEWTYPE to NODE with the same payload.
    #[arg(long = "reply", value_parser = parse_rule)]
    pub replies: Vec<(String, String, String)>,
}

fn parse_rule(s: &str) -> Result<(String, String, String), String> {
    let (t, rest) = s.split_once('=').ok_or("use TYPE=NODE:NEWTYPE")?;
    let (n, nt) = rest.split_once(':').ok_or("use TYPE=NODE:NEWTYPE")?;
    Ok((t.to_owned(), n.to_owned(), nt.to_owned()))
}

/// Parses a `causeway.dev/demo-reply` annotation: rules separated by commas or spaces.
pub fn parse_rules(s: &str) -> Result<Vec<(String, String, String)>, String> {
    s.split([',', ' ']).filter(|r| !r.is_empty()).map(parse_rule).collect()
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

/// Environment variable naming a file: while it exists, the demo app answers every event 422.
pub const DEMO_REFUSE_FILE: &str = "CAUSEWAY_DEMO_REFUSE_FILE";

async fn handle(args: Arc<DemoAppArgs>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == hyper::Method::GET {
        return Ok(respond(StatusCode::OK, json!({"status": "ok"})));
    }
    let attempt = req.headers().get("cw-delivery-attempt").and_then(|v| v.to_str().ok()).unwrap_or("1").to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(respond(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}))),
    };
    let Ok(ev) = serde_json::from_slice::<Value>(&body) else {
        return Ok(respond(StatusCode::BAD_REQUEST, json!({"error": "not JSON"})));
    };
    let s = |k: &str| ev.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    println!(
        "[{}] received {} id={} from={} causationId={} correlationId={} lamport={} attempt={} payload={}",
        args.name,
        s("type"),
        s("id"),
        s("sender"),
        s("causationId"),
        s("correlationId"),
        ev.get("lamport").unwrap_or(&Value::Null),
        attempt,
        ev.get("payload").unwrap_or(&Value::Null)
    );
    // A demo of failure and fix: while the file named by CAUSEWAY_DEMO_REFUSE_FILE exists, every
    // event is refused for good (422), so it goes to the listener's dead letter.
    if let Some(f) = std::env::var_os(DEMO_REFUSE_FILE).filter(|f| std::path::Path::new(f).exists()) {
        println!("[{}]   refusing it with 422 ({} exists)", args.name, f.to_string_lossy());
        return Ok(respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": format!("refused: {} exists", f.to_string_lossy())}),
        ));
    }
    let event_type = s("type");
    let emit: Vec<Value> = args
        .replies
        .iter()
        .filter(|(t, _, _)| *t == event_type)
        .map(|(_, node, new_type)| json!({"node": node, "type": new_type, "payload": ev.get("payload").cloned().unwrap_or(Value::Null)}))
        .collect();
    for e in &emit {
        println!("[{}]   replying with {} to {}", args.name, e["type"], e["node"]);
    }
    Ok(respond(StatusCode::OK, json!({"emit": emit})))
}

pub async fn run(args: DemoAppArgs) -> ExitCode {
    let shutdown = crate::signal::shutdown_signal();
    tokio::pin!(shutdown);
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::from(crate::EXIT_NOT_READY);
        }
    };
    let args = Arc::new(args);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let args = args.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(args.clone(), req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            _ = &mut shutdown => return ExitCode::SUCCESS,
        }
    }
}
