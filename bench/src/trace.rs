//! What causal tracing adds to a send: two sidecars of the same namespace on the same
//! nats-server in the same run, one with `trace.enabled: true` (the default) and one with it
//! off, each sending the same events to the same inbox. Sequential latency (the two alternate),
//! throughput with concurrent clients, and each sidecar's CPU time per 1,000 sends.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use causeway_tests::NatsServer;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::{
    cpu_secs,
    sidecar::{CONCURRENCY, Http, PER_TASK, Proc, pct, post, sidecar_round, spawn_sidecar},
};

const N: usize = 3000;

async fn start(server: &NatsServer, node: &str) -> (Proc, u32, String) {
    let (proc, pid, base) = spawn_sidecar(&server.url, node, &[]).await;
    (proc, pid, format!("{base}/v1/nodes/sink/events"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One round of `CONCURRENCY` clients × `PER_TASK` sends through the sidecar: events/s.
async fn round(http: &Arc<Http>, url: &str, body: &Bytes) -> f64 {
    let t = Instant::now();
    sidecar_round(http, url, body).await;
    (CONCURRENCY * PER_TASK) as f64 / t.elapsed().as_secs_f64()
}

pub async fn run() {
    let server = NatsServer::start();
    let client = server.client().await;
    causeway_operator::local::apply_yaml(
        &client,
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: traced, namespace: bench}\n---\n\
         apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: quiet, namespace: bench}\nspec: {trace: {enabled: false}}\n---\n\
         apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: sink, namespace: bench}\n",
    )
    .await
    .expect("apply");
    let (_a, traced_pid, traced) = start(&server, "traced").await;
    let (_b, quiet_pid, quiet) = start(&server, "quiet").await;
    let http: Arc<Http> =
        Arc::new(Client::builder(TokioExecutor::new()).pool_max_idle_per_host(CONCURRENCY).build_http());
    let payload = serde_json::json!({"orderId": "123", "items": [{"sku": "a-1", "qty": 2}], "note": "x".repeat(200)});
    let body =
        Bytes::from(serde_json::to_vec(&serde_json::json!({"type": "order-placed", "payload": payload})).unwrap());
    for _ in 0..200 {
        assert_eq!(post(&http, &traced, body.clone(), None).await, 202);
        assert_eq!(post(&http, &quiet, body.clone(), None).await, 202);
    }

    // Sequential, alternating, with each sidecar's CPU over the same sends.
    let (mut on, mut off) = (Vec::with_capacity(N), Vec::with_capacity(N));
    let (cpu_on, cpu_off) = (cpu_secs(traced_pid), cpu_secs(quiet_pid));
    for _ in 0..N {
        let t = Instant::now();
        assert_eq!(post(&http, &traced, body.clone(), None).await, 202);
        on.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(post(&http, &quiet, body.clone(), None).await, 202);
        off.push(t.elapsed());
    }
    let cpu_on = (cpu_secs(traced_pid) - cpu_on) / N as f64 * 1e6;
    let cpu_off = (cpu_secs(quiet_pid) - cpu_off) / N as f64 * 1e6;
    let (on50, off50) = (pct(on.clone(), 0.5), pct(off.clone(), 0.5));
    let (on99, off99) = (pct(on, 0.99), pct(off, 0.99));
    println!("| send, {N} sequential | trace off | trace on | ratio on/off |");
    println!("|---|---|---|---|");
    println!("| p50 (µs) | {off50:.0} | {on50:.0} | {:.3} |", on50 / off50);
    println!("| p99 (µs) | {off99:.0} | {on99:.0} | {:.3} |", on99 / off99);
    println!("| sidecar CPU ms per 1,000 sequential sends | {cpu_off:.1} | {cpu_on:.1} | {:.3} |", cpu_on / cpu_off);
    // Throughput and CPU under load: rounds alternate, so drift in the machine's load hits both
    // alike, and each figure is the median of its rounds, so one disturbed round does not
    // decide it.
    const ROUNDS: usize = 7;
    let sends = (CONCURRENCY * PER_TASK) as f64;
    let (mut rate, mut cpu) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..ROUNDS {
        for (i, (pid, url)) in [(quiet_pid, &quiet), (traced_pid, &traced)].into_iter().enumerate() {
            let c = cpu_secs(pid);
            rate[i].push(round(&http, url, &body).await);
            cpu[i].push((cpu_secs(pid) - c) / sends * 1e6);
        }
    }
    let [r_off, r_on] = rate.map(median);
    let [c_off, c_on] = cpu.map(median);
    println!(
        "| throughput, {CONCURRENCY} concurrent clients (events/s), median of {ROUNDS} rounds | {r_off:.0} | {r_on:.0} | {:.3} |",
        r_on / r_off
    );
    println!(
        "| sidecar CPU ms per 1,000 sends under that load, median of {ROUNDS} rounds | {c_off:.1} | {c_on:.1} | {:.3} |",
        c_on / c_off
    );
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream("CW_TR_bench").await.expect("trace stream");
    let st = s.info().await.expect("trace stream info").state.clone();
    println!();
    println!(
        "trace stream CW_TR_bench: {} records, {:.0} bytes per record stored",
        st.messages,
        st.bytes as f64 / st.messages.max(1) as f64
    );
}
