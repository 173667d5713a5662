//! Prometheus metrics, served at `GET /metrics`.
//!
//! Label values come from a closed set (route names, outcomes, listener names from the registry),
//! never from request paths, so the number of series stays bounded.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;

/// All metrics of the sidecar.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route, method and status.
    pub requests: Family<Labels, Counter>,
    /// HTTP request latency by route.
    pub latency: Family<Labels, Histogram>,
    /// Events written, by kind (send, append, emit, dead_letter) and duplicate.
    pub events: Family<Labels, Counter>,
    /// Push deliveries by listener and outcome (ack, nak, term, skipped, dead_letter).
    pub deliveries: Family<Labels, Counter>,
    /// Pushes in flight by listener.
    pub in_flight: Family<Labels, Gauge>,
    /// Push latency to the app by listener.
    pub push_latency: Family<Labels, Histogram>,
    /// Open live streams.
    pub streams: Gauge,
    /// Live-stream clients dropped for being too slow.
    pub streams_dropped: Counter,
    /// 1 while the app's health check passes.
    pub app_healthy: Gauge,
    /// 1 while NATS is connected.
    pub nats_connected: Gauge,
    /// Stored messages that could not be served (not a Causeway event, or a payload blob gone
    /// or damaged), by where they were met: load, stream, fetch, push.
    pub undecodable: Family<Labels, Counter>,
    /// Inbox events refused because their `sender` or type disagrees with what their subject
    /// proves, by listener.
    pub forged: Family<Labels, Counter>,
    /// When the NATS credential expires (Unix seconds; 0 without one, or one that never does).
    pub credentials_expiry: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("causeway_sidecar");
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let events = Family::<Labels, Counter>::default();
        let deliveries = Family::<Labels, Counter>::default();
        let in_flight = Family::<Labels, Gauge>::default();
        let push_latency = Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let streams = Gauge::default();
        let streams_dropped = Counter::default();
        let app_healthy = Gauge::default();
        let nats_connected = Gauge::default();
        let undecodable = Family::<Labels, Counter>::default();
        let forged = Family::<Labels, Counter>::default();
        let credentials_expiry = Gauge::default();
        registry.register("http_requests", "HTTP requests by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by route", latency.clone());
        registry.register("events_written", "Events written to JetStream by kind", events.clone());
        registry.register("push_deliveries", "Push deliveries by listener and outcome", deliveries.clone());
        registry.register("push_in_flight", "Pushes in flight by listener", in_flight.clone());
        registry.register("push_duration_seconds", "Time the app took to answer a push", push_latency.clone());
        registry.register("live_streams", "Open live streams", streams.clone());
        registry.register(
            "live_streams_dropped",
            "Live-stream clients dropped for being too slow",
            streams_dropped.clone(),
        );
        registry.register("app_healthy", "1 while the app's health check passes", app_healthy.clone());
        registry.register("nats_connected", "1 while NATS is connected", nats_connected.clone());
        registry.register(
            "undecodable_events",
            "Stored messages skipped because they cannot be served, by where they were met",
            undecodable.clone(),
        );
        registry.register(
            "forged_events",
            "Inbox events refused because their sender or type disagrees with their subject, by listener",
            forged.clone(),
        );
        registry.register(
            "credentials_expiry_timestamp_seconds",
            "When the NATS credential expires (Unix seconds; 0 without one or when it never expires)",
            credentials_expiry.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            events,
            deliveries,
            in_flight,
            push_latency,
            streams,
            streams_dropped,
            app_healthy,
            nats_connected,
            undecodable,
            forged,
            credentials_expiry,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }

    /// Counts a delivery outcome.
    pub fn delivery(&self, listener: &str, outcome: &'static str) {
        self.deliveries.get_or_create(&vec![("listener", listener.to_owned()), ("outcome", outcome.to_owned())]).inc();
    }

    /// Counts a stored message that could not be served.
    pub fn undecodable(&self, place: &'static str) {
        self.undecodable.get_or_create(&vec![("where", place.to_owned())]).inc();
    }

    /// Counts an inbox event refused for a forged sender.
    pub fn forged(&self, listener: &str) {
        self.forged.get_or_create(&vec![("listener", listener.to_owned())]).inc();
    }

    /// Counts events written.
    pub fn written(&self, kind: &'static str, duplicate: bool, n: u64) {
        self.events.get_or_create(&vec![("kind", kind.to_owned()), ("duplicate", duplicate.to_string())]).inc_by(n);
    }
}
