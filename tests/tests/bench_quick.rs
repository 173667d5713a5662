//! The benchmark's quick mode as a smoke test: `causeway-bench perf --quick` runs every workload
//! (send, latency, batch, push, load, live stream, resources, operator) against its floor, with
//! both sync modes, and exits 0. Figures are not checked: timings belong in benchmarks, not tests
//! (bench/README.md has the full run).

use std::process::Command;

use causeway_tests::bin;

#[test]
fn every_workload_of_the_benchmark_completes_in_both_sync_modes() {
    let out = Command::new(bin("causeway-bench"))
        .args(["perf", "--quick"])
        .env_remove("CAUSEWAY_TEST_SECURE")
        .output()
        .expect("run causeway-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "causeway-bench perf --quick failed:\n{stdout}\n{stderr}");
    for table in ["### default sync", "### sync_interval: always"] {
        assert_eq!(stdout.matches(table).count(), 1, "one table per sync mode:\n{stdout}");
    }
    for row in [
        "| sidecar RSS MiB, idle |",
        "| send/s via sidecar, 64 clients (machine",
        "| sidecar CPU µs per send (= ms per 1,000) |",
        "| sidecar CPU µs per send at 1,000/s |",
        "| sidecar RSS MiB, after the 64-client rounds |",
        "| push: sidecar CPU µs per event |",
        "| send at 1,000/s, p50",
        "| send at 1,000/s, p99",
        "| sidecar RSS MiB, at 1,000 req/s |",
        "| batch of 100, events/s",
        "| push to a local app, events/s |",
        "| load 2000 events of one subject",
        "| live stream catch-up on 2000 events",
        "s until all Ready |",
        "writes in 3 s idle",
    ] {
        assert_eq!(stdout.matches(row).count(), 2, "row {row:?} once per sync mode:\n{stdout}");
    }
}

#[test]
fn a_bad_option_is_refused_with_the_usage() {
    let out = Command::new(bin("causeway-bench")).args(["perf", "--only", "sned"]).output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown workload \"sned\"") && stderr.contains("usage:"), "{stderr}");
}
