//! The operator at scale: N EventStores, N Nodes and 5·N Listeners (N = 1,000 by default) created
//! through the Kubernetes API emulator, reconciled by the release `causeway operator` against a
//! real nats-server. Reports the time until every object is Ready, the operator's peak RSS, its
//! reconciles per second, its CPU time against the emulator's, and the API-server and JetStream
//! writes during an idle period that follows.
//!
//! ```sh
//! cargo build --release -p causeway-cli -p causeway-bench
//! target/release/causeway-bench operator            # N=1000, 120 s idle
//! CAUSEWAY_BENCH_N=200 CAUSEWAY_BENCH_IDLE=30 target/release/causeway-bench operator
//! ```

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use causeway_api::crd::{EventStore, Listener, Node};
use causeway_tests::{KubeEmulator, KubeEmulatorOptions, NatsServer, bin, free_port, http_get};
use futures::StreamExt;
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Peak resident memory (VmHWM, MiB) and CPU seconds (user + system) of a process.
fn proc_figures(pid: u32) -> (f64, f64) {
    (crate::status_kib(pid, "VmHWM") as f64 / 1024.0, crate::cpu_secs(pid))
}

fn ready(o: &Value) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

async fn count_ready<K>(api: &Api<K>) -> (usize, usize)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let list = api.list(&ListParams::default()).await.expect("list");
    let n = list.items.len();
    let r = list.items.iter().filter(|o| ready(&serde_json::to_value(o).unwrap())).count();
    (r, n)
}

fn reconciles(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("causeway_operator_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Seconds from the first create until every object was Ready.
    pub ready_secs: f64,
    /// Reconciles per second until Ready.
    pub reconciles_per_sec: f64,
    /// Operator peak RSS (MiB) over the whole run.
    pub peak_rss_mib: f64,
    /// Operator CPU seconds until Ready.
    pub cpu_secs: f64,
    /// API-server writes during the idle period that were not Lease renewals.
    pub idle_api_writes: usize,
    /// JetStream writes during the idle period.
    pub idle_js_writes: usize,
}

pub async fn run() {
    let n = env_num("CAUSEWAY_BENCH_N", 1000) as usize;
    let idle = Duration::from_secs(env_num("CAUSEWAY_BENCH_IDLE", 120));
    let resync = env_num("CAUSEWAY_BENCH_RESYNC", 60);
    measure(&NatsServer::start(), n, idle, resync, true).await;
}

/// Runs the operator over `n` stores, `n` nodes and `5n` listeners on `server`, then watches it
/// for `idle` after one resync (`resync` seconds). `report` prints the figures as it goes.
pub async fn measure(server: &NatsServer, n: usize, idle: Duration, resync: u64, report: bool) -> Figures {
    let emu = KubeEmulator::start_with(KubeEmulatorOptions { verbose: true, ..Default::default() });
    emu.create_namespace("scale");
    let client = emu.client().await;
    let (stores, nodes, listeners): (Api<EventStore>, Api<Node>, Api<Listener>) = (
        Api::namespaced(client.clone(), "scale"),
        Api::namespaced(client.clone(), "scale"),
        Api::namespaced(client.clone(), "scale"),
    );

    let health = free_port();
    let mut op: Child = Command::new(bin("causeway"))
        .args(["operator", "--kubeconfig"])
        .arg(emu.kubeconfig())
        .args(["--nats", &server.url, "--health-addr", &format!("127.0.0.1:{health}")])
        .args(["--lease-namespace", "default", "--resync", &format!("{resync}s"), "--concurrency", "16"])
        .env("CAUSEWAY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start causeway operator (cargo build --release -p causeway-cli)");
    let base = format!("http://127.0.0.1:{health}");
    let t = Instant::now();
    while http_get(&base, "/readyz").is_none_or(|(s, _)| s != 200) {
        assert!(t.elapsed() < Duration::from_secs(30), "operator not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Create everything as fast as the API server takes it.
    let started = Instant::now();
    let pp = PostParams::default();
    let make = |kind: &str, name: String, spec: Value| json!({"apiVersion": "causeway.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "scale"}, "spec": spec});
    let creates = futures::stream::iter(0..n)
        .map(|i| {
            let (stores, nodes, pp) = (stores.clone(), nodes.clone(), pp.clone());
            let s: EventStore = serde_json::from_value(make("EventStore", format!("s{i}"), json!({}))).unwrap();
            let nd: Node = serde_json::from_value(make("Node", format!("n{i}"), json!({}))).unwrap();
            async move {
                stores.create(&pp, &s).await.expect("create store");
                nodes.create(&pp, &nd).await.expect("create node");
            }
        })
        .buffer_unordered(16);
    creates.collect::<Vec<_>>().await;
    let lcreates = futures::stream::iter(0..5 * n)
        .map(|i| {
            let (listeners, pp) = (listeners.clone(), pp.clone());
            let spec = if i % 2 == 0 {
                json!({"node": format!("n{}", i % n), "source": {"store": format!("s{}", i % n)}, "delivery": {"mode": "pull"}})
            } else {
                json!({"node": format!("n{}", i % n), "source": {"inbox": format!("n{}", i % n)}, "types": [format!("t{i}")]})
            };
            let l: Listener = serde_json::from_value(make("Listener", format!("l{i}"), spec)).unwrap();
            async move {
                listeners.create(&pp, &l).await.expect("create listener");
            }
        })
        .buffer_unordered(16);
    lcreates.collect::<Vec<_>>().await;
    let created = started.elapsed();
    let total = 7 * n;

    let mut last = 0;
    let all_ready = loop {
        let (a, _) = count_ready(&stores).await;
        let (b, _) = count_ready(&nodes).await;
        let (c, _) = count_ready(&listeners).await;
        let r = a + b + c;
        if r != last && report {
            eprintln!("  {:>6.1} s: {r}/{total} Ready", started.elapsed().as_secs_f64());
            last = r;
        }
        if r == total {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "not all Ready after 30 min: {r}/{total}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let (_, metrics) = http_get(&base, "/metrics").unwrap();
    let recs = reconciles(&metrics);
    let (rss_ready, op_cpu) = proc_figures(op.id());
    let emu_cpu = emu.pid().map(|p| proc_figures(p).1).unwrap_or(0.0);

    // Idle: what the operator writes when nothing changes.
    let spy = server.client().await;
    // One resync first: it refreshes figures that changed while objects were still being created
    // (a node's inbox gains its listeners' consumers after the node was reconciled).
    tokio::time::sleep(Duration::from_secs(resync + 5)).await;
    let mut js_api = spy.subscribe("$JS.API.>").await.unwrap();
    let mut kv = spy.subscribe("$KV.>").await.unwrap();
    spy.flush().await.unwrap();
    let mark = emu.mark();
    let (_, metrics) = http_get(&base, "/metrics").unwrap();
    let (idle_start_recs, idle_start) = (reconciles(&metrics), Instant::now());
    let mut js_writes = 0usize;
    let mut js_write_subjects: Vec<String> = Vec::new();
    let mut js_requests = 0usize;
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        tokio::select! {
            m = js_api.next() => {
                let Some(m) = m else { break };
                js_requests += 1;
                if ["CREATE", "UPDATE", "DELETE", "PURGE"].iter().any(|w| m.subject.contains(w)) {
                    js_writes += 1;
                    js_write_subjects.push(m.subject.to_string());
                }
            }
            m = kv.next() => {
                if let Some(m) = m {
                    js_writes += 1;
                    js_write_subjects.push(m.subject.to_string());
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let api_writes = emu.writes_since(mark);
    let lease_writes: usize = api_writes.iter().filter(|(p, _)| p.contains("/leases/")).map(|(_, c)| c).sum();
    let other_writes: Vec<(&String, &usize)> = api_writes.iter().filter(|(p, _)| !p.contains("/leases/")).collect();
    let (_, metrics) = http_get(&base, "/metrics").unwrap();
    let idle_recs = reconciles(&metrics) - idle_start_recs;
    let (rss_peak, _) = proc_figures(op.id());
    let _ = op.kill();
    let _ = op.wait();
    let figures = Figures {
        ready_secs: all_ready.as_secs_f64(),
        reconciles_per_sec: recs / all_ready.as_secs_f64(),
        peak_rss_mib: rss_peak.max(rss_ready),
        cpu_secs: op_cpu,
        idle_api_writes: other_writes.len(),
        idle_js_writes: js_writes,
    };
    if !report {
        return figures;
    }
    println!("operator scale: {n} EventStores, {n} Nodes, {} Listeners ({total} objects), resync {resync}s", 5 * n);
    println!("  created through the API in {:.1} s", created.as_secs_f64());
    println!("  every object Ready after {:.1} s (from the first create)", all_ready.as_secs_f64());
    println!(
        "  reconciles: {recs:.0} until Ready, {:.0}/s; {idle_recs:.0} during {:.0} s idle (resyncs)",
        recs / all_ready.as_secs_f64(),
        idle_start.elapsed().as_secs_f64()
    );
    println!("  CPU seconds until Ready: operator {op_cpu:.1}, Kubernetes API emulator {emu_cpu:.1}");
    println!("  operator peak RSS: {rss_ready:.1} MiB when all Ready, {rss_peak:.1} MiB after idle");
    println!(
        "  idle {:.0} s: API writes {} (Lease renewals) + {} other {:?}",
        idle.as_secs_f64(),
        lease_writes,
        other_writes.len(),
        other_writes
    );
    println!("  idle JetStream: {js_writes} writes of {js_requests} API requests");
    js_write_subjects.truncate(10);
    if !js_write_subjects.is_empty() {
        println!("    writes: {js_write_subjects:?}");
    }
    figures
}
