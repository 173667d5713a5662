//! `causeway-bench`: figures for bench/README.md, each a ratio against a baseline measured in
//! the same run on the same nats-server (timings on shared machines are noisy; ratios less so).
//!
//! ```sh
//! cargo run --release -p causeway-bench -- reconcile
//! ```
#![forbid(unsafe_code)]

mod reconcile;

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match what.as_str() {
        "reconcile" => reconcile::run().await,
        "all" => reconcile::run().await,
        other => {
            eprintln!("unknown benchmark {other:?}: use reconcile or all");
            std::process::exit(64);
        }
    }
}

/// Median of durations in microseconds.
pub fn median_us(mut v: Vec<std::time::Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}
