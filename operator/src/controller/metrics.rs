//! Prometheus metrics of the operator, served at `GET /metrics`.

use std::time::Instant;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;

/// All metrics of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by kind and result (`ready`, `not_ready`, `error`, `cleanup`).
    pub reconciles: Family<Labels, Counter>,
    /// Failures by kind and reason (`nats`, `kube`, `cleanup`, `finalizer`).
    pub failures: Family<Labels, Counter>,
    /// Reconcile duration by kind.
    pub duration: Family<Labels, Histogram>,
    /// Objects by kind and Ready state (`true`, `false`, `unknown`), counted at scrape time.
    pub objects: Family<Labels, Gauge>,
    /// 1 while this replica holds the leader lease (or runs without leader election).
    pub leader: Gauge,
    /// 1 while NATS is connected.
    pub nats_connected: Gauge,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("causeway_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let failures = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let objects = Family::<Labels, Gauge>::default();
        let leader = Gauge::default();
        let nats_connected = Gauge::default();
        registry.register("reconciles", "Reconciles by kind and result", reconciles.clone());
        registry.register("failures", "Reconcile failures by kind and reason", failures.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration by kind", duration.clone());
        registry.register("objects", "Objects by kind and Ready state", objects.clone());
        registry.register("leader", "1 while this replica leads", leader.clone());
        registry.register("nats_connected", "1 while NATS is connected", nats_connected.clone());
        Self { registry, reconciles, failures, duration, objects, leader, nats_connected }
    }
}

impl Metrics {
    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }

    /// Counts a reconcile and its duration.
    pub fn reconciled(&self, kind: &str, result: &'static str, started: Instant) {
        self.reconciles.get_or_create(&vec![("kind", kind.to_owned()), ("result", result.to_owned())]).inc();
        self.duration.get_or_create(&vec![("kind", kind.to_owned())]).observe(started.elapsed().as_secs_f64());
    }

    /// Counts a failure.
    pub fn failed(&self, kind: &str, reason: &'static str) {
        self.failures.get_or_create(&vec![("kind", kind.to_owned()), ("reason", reason.to_owned())]).inc();
    }

    /// Sets the number of objects of `kind` in each Ready state.
    pub fn set_objects(&self, kind: &str, ready: u64, not_ready: u64, unknown: u64) {
        for (state, n) in [("true", ready), ("false", not_ready), ("unknown", unknown)] {
            self.objects.get_or_create(&vec![("kind", kind.to_owned()), ("ready", state.to_owned())]).set(n as i64);
        }
    }
}
