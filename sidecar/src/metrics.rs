//! Prometheus metrics, served at `GET /metrics`.
//!
//! Label values come from a closed set (route names, outcomes, listener names from the registry),
//! never from request paths, so the number of series stays bounded. The labels counted on every
//! request are static strings and numbers, so counting allocates nothing.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;
/// One static label.
type Static1 = [(&'static str, &'static str); 1];
/// Two static labels.
type Static2 = [(&'static str, &'static str); 2];

/// The labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's name.
    pub route: &'static str,
    /// The method (`other` for one the API does not use).
    pub method: &'static str,
    /// The answer's status code.
    pub status: u16,
}

/// A method's name without allocating.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The outcomes a delivery is counted under.
const OUTCOMES: [&str; 5] = ["ack", "skipped", "skipped_handled", "nak", "term"];

/// One listener's delivery metrics (handles into the families of [`Metrics`]).
#[derive(Debug)]
pub struct ListenerMetrics {
    /// Pushes in flight.
    pub in_flight: Gauge,
    /// Time the app took to answer a push.
    pub latency: Histogram,
    /// Its name, and the family its outcome counters live in.
    name: String,
    family: Family<Labels, Counter>,
    /// One counter per outcome of [`OUTCOMES`], made when first counted (so a series shows only
    /// once something happened, as Prometheus users of this metric expect).
    outcomes: [std::sync::OnceLock<Counter>; 5],
}

impl ListenerMetrics {
    /// Counts a delivery outcome (one of `ack`, `skipped`, `skipped_handled`, `nak`, `term`).
    pub fn delivery(&self, outcome: &'static str) {
        let make = || {
            self.family.get_or_create(&vec![("listener", self.name.clone()), ("outcome", outcome.to_owned())]).clone()
        };
        match OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => self.outcomes[i].get_or_init(make).inc(),
            None => make().inc(),
        };
    }
}

/// All metrics of the sidecar.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// HTTP request latency by route.
    pub latency: Family<Static1, Histogram>,
    /// Events written, by kind (send, append, emit, dead_letter) and duplicate.
    pub events: Family<Static2, Counter>,
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
    pub undecodable: Family<Static1, Counter>,
    /// Inbox events refused because their `sender` or type disagrees with what their subject
    /// proves, by listener.
    pub forged: Family<Labels, Counter>,
    /// Trace records dropped because too many were waiting to be written (NATS away).
    pub trace_dropped: Counter,
    /// Each listener's delivery metrics, looked up by name without allocating.
    listeners: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<ListenerMetrics>>>,
    /// When the NATS credential expires (Unix seconds; 0 without one, or one that never does).
    pub credentials_expiry: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("causeway_sidecar");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<Static1, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let events = Family::<Static2, Counter>::default();
        let deliveries = Family::<Labels, Counter>::default();
        let in_flight = Family::<Labels, Gauge>::default();
        let push_latency = Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let streams = Gauge::default();
        let streams_dropped = Counter::default();
        let app_healthy = Gauge::default();
        let nats_connected = Gauge::default();
        let undecodable = Family::<Static1, Counter>::default();
        let forged = Family::<Labels, Counter>::default();
        let credentials_expiry = Gauge::default();
        let trace_dropped = Counter::default();
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
            "trace_records_dropped",
            "Trace records dropped because too many were waiting to be written (NATS away)",
            trace_dropped.clone(),
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
            trace_dropped,
            listeners: Default::default(),
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

    /// A listener's delivery metrics: its series are found once, and every later event of the
    /// listener counts without building label strings.
    pub fn listener(&self, name: &str) -> std::sync::Arc<ListenerMetrics> {
        if let Some(m) = self.listeners.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return m.clone();
        }
        let label = || vec![("listener", name.to_owned())];
        let m = std::sync::Arc::new(ListenerMetrics {
            in_flight: self.in_flight.get_or_create(&label()).clone(),
            latency: self.push_latency.get_or_create(&label()).clone(),
            name: name.to_owned(),
            family: self.deliveries.clone(),
            outcomes: Default::default(),
        });
        self.listeners.write().unwrap_or_else(|e| e.into_inner()).entry(name.to_owned()).or_insert(m).clone()
    }

    /// Counts a stored message that could not be served.
    pub fn undecodable(&self, place: &'static str) {
        self.undecodable.get_or_create(&[("where", place)]).inc();
    }

    /// Counts an inbox event refused for a forged sender.
    pub fn forged(&self, listener: &str) {
        self.forged.get_or_create(&vec![("listener", listener.to_owned())]).inc();
    }

    /// Counts events written.
    pub fn written(&self, kind: &'static str, duplicate: bool, n: u64) {
        let duplicate = if duplicate { "true" } else { "false" };
        self.events.get_or_create(&[("kind", kind), ("duplicate", duplicate)]).inc_by(n);
    }

    /// Counts an HTTP request and observes its latency.
    pub fn request(&self, route: &'static str, method: &http::Method, status: u16, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { route, method: method_label(method), status }).inc();
        self.latency.get_or_create(&[("route", route)]).observe(seconds);
    }
}
