//! `causeway-bench`: figures for bench/README.md, each a ratio against a baseline measured in
//! the same run on the same nats-server (timings on shared machines are noisy; ratios less so).
//!
//! ```sh
//! cargo build --release -p causeway-sidecar -p causeway-bench && target/release/causeway-bench all
//! ```
#![forbid(unsafe_code)]

mod operator;
mod reconcile;
mod sidecar;
mod trace;

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match what.as_str() {
        "reconcile" => reconcile::run().await,
        "sidecar" => sidecar::run().await,
        "operator" => operator::run().await,
        "trace" => trace::run().await,
        "all" => {
            reconcile::run().await;
            sidecar::run().await;
        }
        other => {
            eprintln!("unknown benchmark {other:?}: use reconcile, sidecar, trace, operator or all");
            std::process::exit(64);
        }
    }
}

/// Median of durations in microseconds.
pub fn median_us(mut v: Vec<std::time::Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}
