//! `causeway-bench`: figures for bench/README.md, each a ratio against a floor or baseline
//! measured in the same run on the same nats-server (timings on shared machines are noisy;
//! ratios less so).
//!
//! ```sh
//! cargo build --profile dist -p causeway-sidecar && cargo build --profile dist -p causeway-cli -p causeway-bench
//! target/dist/causeway-bench perf            # every workload against its floor, one table
//! target/dist/causeway-bench perf --quick    # the same, small: a smoke test (CI runs it)
//! ```
#![forbid(unsafe_code)]

mod floor;
mod operator;
mod perf;
mod reconcile;
mod sidecar;
mod trace;

const USAGE: &str = "usage: causeway-bench <benchmark>

benchmarks:
  perf [--quick] [--sync default|always|both] [--only latency,send,batch,push,load,operator]
              every workload (latency, send, batch, push, load and live stream, resources,
              operator) against its floor, with default sync and with sync_interval: always
              (both unless --sync); --quick is a small smoke run that only checks every workload
              completes; --only runs some workloads
  sidecar     sequential latency of a send and an append against direct async-nats
  trace       what causal tracing adds to a send
  reconcile   the reconcile core's steady state against one STREAM.INFO per stream
  operator    the operator at scale (CAUSEWAY_BENCH_N, CAUSEWAY_BENCH_IDLE, CAUSEWAY_BENCH_RESYNC)
  all         reconcile and sidecar
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().cloned().unwrap_or_else(|| "all".into());
    if what == floor::COMMAND {
        // The bare HTTP floor runs as its own process, so its CPU is measured alone.
        floor::serve(&args[1..]);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        match what.as_str() {
            "perf" => match perf::Opts::parse(&args[1..]) {
                Ok(o) => perf::run(o).await,
                Err(e) => usage_error(&e),
            },
            "reconcile" => reconcile::run().await,
            "sidecar" => sidecar::run().await,
            "operator" => operator::run().await,
            "trace" => trace::run().await,
            "all" => {
                reconcile::run().await;
                sidecar::run().await;
            }
            "-h" | "--help" | "help" => print!("{USAGE}"),
            other => usage_error(&format!("unknown benchmark {other:?}")),
        }
    });
}

fn usage_error(what: &str) -> ! {
    eprintln!("causeway-bench: {what}\n\n{USAGE}");
    std::process::exit(64);
}

/// Median of durations in microseconds.
pub fn median_us(mut v: Vec<std::time::Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

/// A field of `/proc/<pid>/stat` after the command name (which is in parentheses and may hold
/// spaces), counted from 0 at the state field.
fn stat_field(pid: u32, i: usize) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().nth(i).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> f64 {
    (stat_field(pid, 11) + stat_field(pid, 12)) / 100.0
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
