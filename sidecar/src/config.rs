//! Configuration, read only from the environment and checked before any port is bound.
//!
//! Every variable has a `pub const ENV_*` name here. A bad value makes the binary exit with
//! code 64 and one line saying which variable is wrong and what it should look like.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use causeway_api::{
    DnsLabel,
    quantity::{ByteSize, Duration as SpecDuration},
};

/// The node this sidecar serves (required).
pub const ENV_NODE: &str = "CAUSEWAY_NODE";
/// The namespace of the node (default `default`).
pub const ENV_NAMESPACE: &str = "CAUSEWAY_NAMESPACE";
/// NATS server URL(s), comma-separated (default `nats://127.0.0.1:4222`).
pub const ENV_NATS_URL: &str = "CAUSEWAY_NATS_URL";
/// Path of a NATS `.creds` file.
pub const ENV_NATS_CREDS: &str = "CAUSEWAY_NATS_CREDS";
/// How often the credentials file is checked for a renewed credential (default `10s`).
pub const ENV_NATS_CREDS_RELOAD: &str = "CAUSEWAY_NATS_CREDS_RELOAD";
/// NATS user name (with [`ENV_NATS_PASSWORD`]).
pub const ENV_NATS_USER: &str = "CAUSEWAY_NATS_USER";
/// NATS password.
pub const ENV_NATS_PASSWORD: &str = "CAUSEWAY_NATS_PASSWORD";
/// NATS token.
pub const ENV_NATS_TOKEN: &str = "CAUSEWAY_NATS_TOKEN";
/// PEM file of the CA that signed the NATS server certificate (turns TLS on).
pub const ENV_NATS_TLS_CA: &str = "CAUSEWAY_NATS_TLS_CA";
/// PEM client certificate for mutual TLS (with [`ENV_NATS_TLS_KEY`]).
pub const ENV_NATS_TLS_CERT: &str = "CAUSEWAY_NATS_TLS_CERT";
/// PEM client key for mutual TLS.
pub const ENV_NATS_TLS_KEY: &str = "CAUSEWAY_NATS_TLS_KEY";
/// `true` to require TLS even without a CA file.
pub const ENV_NATS_TLS_REQUIRED: &str = "CAUSEWAY_NATS_TLS_REQUIRED";
/// HTTP port (default 4480).
pub const ENV_PORT: &str = "CAUSEWAY_PORT";
/// A second port serving only `/healthz`, `/readyz` and `/metrics` on all interfaces, for
/// kubelet probes and Prometheus, which reach the pod's address, not its loopback (default: none).
pub const ENV_HEALTH_PORT: &str = "CAUSEWAY_HEALTH_PORT";
/// HTTP bind address (default `127.0.0.1`). Anything but loopback requires [`ENV_API_TOKEN`].
pub const ENV_BIND: &str = "CAUSEWAY_BIND";
/// Port of the app beside the sidecar; overrides the Node's `app.port`.
pub const ENV_APP_PORT: &str = "CAUSEWAY_APP_PORT";
/// Health path of the app; overrides the Node's `app.healthPath`.
pub const ENV_APP_HEALTH_PATH: &str = "CAUSEWAY_APP_HEALTH_PATH";
/// How often the app's health is checked (default `1s`).
pub const ENV_APP_HEALTH_INTERVAL: &str = "CAUSEWAY_APP_HEALTH_INTERVAL";
/// Bearer token the app must send (`Authorization: Bearer …`) on every `/v1` route.
pub const ENV_API_TOKEN: &str = "CAUSEWAY_API_TOKEN";
/// Largest request body accepted (default `8Mi`); larger ones get 413.
pub const ENV_MAX_BODY: &str = "CAUSEWAY_MAX_BODY";
/// API requests served at once (default 1024); more wait up to [`ENV_QUEUE_TIMEOUT`] for a slot,
/// then get 503. Health and metrics never need a slot.
pub const ENV_MAX_REQUESTS: &str = "CAUSEWAY_MAX_REQUESTS";
/// Open HTTP connections at once (default 4096); more wait in the kernel's accept backlog.
pub const ENV_MAX_CONNECTIONS: &str = "CAUSEWAY_MAX_CONNECTIONS";
/// How long a request may wait for a free slot before a 503 (default `5s`).
pub const ENV_QUEUE_TIMEOUT: &str = "CAUSEWAY_QUEUE_TIMEOUT";
/// How long a client may take to send a request's headers, and how long an idle keep-alive
/// connection stays open (default `30s`).
pub const ENV_HEADER_TIMEOUT: &str = "CAUSEWAY_HEADER_TIMEOUT";
/// How long a client may take to send a request's body (default `30s`; 408 beyond).
pub const ENV_BODY_TIMEOUT: &str = "CAUSEWAY_BODY_TIMEOUT";
/// `Host` names (with or without port) the API answers besides loopback names and the bind
/// address, comma-separated; `*` accepts any (default: none). Blocks DNS rebinding.
pub const ENV_ALLOWED_HOSTS: &str = "CAUSEWAY_ALLOWED_HOSTS";
/// How long a request waits for NATS to (re)connect before answering 503 (default `5s`).
pub const ENV_NATS_WAIT: &str = "CAUSEWAY_NATS_WAIT";
/// Live streams served at once (default 256); more get 503.
pub const ENV_MAX_STREAMS: &str = "CAUSEWAY_MAX_STREAMS";
/// How long a live-stream client may stall before it is dropped (default `10s`).
pub const ENV_STREAM_SEND_TIMEOUT: &str = "CAUSEWAY_STREAM_SEND_TIMEOUT";
/// Time allowed after SIGTERM to finish in-flight work (default `20s`).
pub const ENV_GRACE_PERIOD: &str = "CAUSEWAY_GRACE_PERIOD";
/// Largest load answer in bytes before it is cut with `"more": true` (default `16Mi`).
pub const ENV_MAX_LOAD_BYTES: &str = "CAUSEWAY_MAX_LOAD_BYTES";
/// Runtime worker threads (default 1: one thread does everything). A sidecar shares its pod's
/// CPU with the app; one thread spends no CPU waking others, and on loopback it keeps up with
/// what NATS acks. More threads (up to one per core) serve more at once when the pod has cores
/// to spare (bench/README.md measures both).
pub const ENV_WORKER_THREADS: &str = "CAUSEWAY_WORKER_THREADS";
/// [`ENV_WORKER_THREADS`] when it is not set.
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// Log filter, as `RUST_LOG` (default `info`).
pub const ENV_LOG: &str = "CAUSEWAY_LOG";
/// `json` for JSON log lines (default: plain text).
pub const ENV_LOG_FORMAT: &str = "CAUSEWAY_LOG_FORMAT";

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// How the sidecar authenticates to NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A `.creds` file (JWT and NKey seed).
    Creds(PathBuf),
    /// User and password.
    UserPassword(String, String),
    /// A token.
    Token(String),
}

/// TLS to NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// Require TLS.
    pub required: bool,
    /// CA bundle.
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The sidecar's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the node.
    pub namespace: DnsLabel,
    /// The node.
    pub node: DnsLabel,
    /// NATS URLs.
    pub nats_urls: Vec<String>,
    /// NATS credentials.
    pub nats_auth: NatsAuth,
    /// NATS TLS.
    pub nats_tls: NatsTls,
    /// HTTP bind address.
    pub bind: IpAddr,
    /// HTTP port.
    pub port: u16,
    /// Port of the probes-and-metrics listener on all interfaces.
    pub health_port: Option<u16>,
    /// App port override.
    pub app_port: Option<u16>,
    /// App health path override.
    pub app_health_path: Option<String>,
    /// App health check interval.
    pub app_health_interval: Duration,
    /// Bearer token for `/v1` routes.
    pub api_token: Option<String>,
    /// Request body limit in bytes.
    pub max_body: usize,
    /// Concurrent API requests.
    pub max_requests: usize,
    /// Open connections.
    pub max_connections: usize,
    /// Wait for a request slot.
    pub queue_timeout: Duration,
    /// Time to send the headers (and idle time of a keep-alive connection).
    pub header_timeout: Duration,
    /// Time to send the body.
    pub body_timeout: Duration,
    /// Extra `Host` names accepted (`None`: any).
    pub allowed_hosts: Option<Vec<String>>,
    /// How long a request waits for NATS to (re)connect.
    pub nats_wait: Duration,
    /// Concurrent live streams.
    pub max_streams: usize,
    /// Stall allowed to a live-stream client.
    pub stream_send_timeout: Duration,
    /// Shutdown grace period.
    pub grace_period: Duration,
    /// Byte budget of one load answer.
    pub max_load_bytes: usize,
    /// Runtime worker threads; 1 is a current-thread runtime.
    pub worker_threads: usize,
    /// How often the credentials file is checked for a change.
    pub creds_reload: Duration,
}

/// A configuration problem: the variable and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { var, message: message.into() }
}

impl Config {
    /// Reads the process environment.
    pub fn try_from_env() -> Result<Self, ConfigError> {
        Self::try_from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get` (the environment, or a map in tests).
    pub fn try_from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let label = |var: &'static str, v: String| DnsLabel::new(v).map_err(|e| bad(var, e.to_string()));
        let node = label(ENV_NODE, get(ENV_NODE).ok_or_else(|| bad(ENV_NODE, "is required: the name of this Node"))?)?;
        let namespace = label(ENV_NAMESPACE, get(ENV_NAMESPACE).unwrap_or_else(|| "default".into()))?;

        let nats_urls: Vec<String> = get(ENV_NATS_URL)
            .unwrap_or_else(|| "nats://127.0.0.1:4222".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        for u in &nats_urls {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| bad(ENV_NATS_URL, format!("{u:?} is not a NATS URL ({e}); use nats://host:4222")))?;
        }
        if nats_urls.is_empty() {
            return Err(bad(ENV_NATS_URL, "no URL given; use nats://host:4222"));
        }

        let file = |var: &'static str| -> Result<Option<PathBuf>, ConfigError> {
            match get(var) {
                None => Ok(None),
                Some(p) if std::path::Path::new(&p).is_file() => Ok(Some(PathBuf::from(p))),
                Some(p) => Err(bad(var, format!("{p:?} is not a readable file"))),
            }
        };
        let nats_auth = match (file(ENV_NATS_CREDS)?, get(ENV_NATS_USER), get(ENV_NATS_PASSWORD), get(ENV_NATS_TOKEN)) {
            (Some(c), None, None, None) => NatsAuth::Creds(c),
            (None, Some(u), Some(p), None) => NatsAuth::UserPassword(u, p),
            (None, Some(_), None, None) => {
                return Err(bad(ENV_NATS_PASSWORD, format!("is required with {ENV_NATS_USER}")));
            }
            (None, None, Some(_), None) => {
                return Err(bad(ENV_NATS_USER, format!("is required with {ENV_NATS_PASSWORD}")));
            }
            (None, None, None, Some(t)) => NatsAuth::Token(t),
            (None, None, None, None) => NatsAuth::None,
            _ => {
                return Err(bad(
                    ENV_NATS_CREDS,
                    format!("give one of {ENV_NATS_CREDS}, {ENV_NATS_USER}/{ENV_NATS_PASSWORD} or {ENV_NATS_TOKEN}"),
                ));
            }
        };
        let nats_tls = NatsTls {
            required: parse_bool(ENV_NATS_TLS_REQUIRED, get(ENV_NATS_TLS_REQUIRED))?.unwrap_or(false),
            ca: file(ENV_NATS_TLS_CA)?,
            client: match (file(ENV_NATS_TLS_CERT)?, file(ENV_NATS_TLS_KEY)?) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => return Err(bad(ENV_NATS_TLS_KEY, format!("is required with {ENV_NATS_TLS_CERT}"))),
                (None, Some(_)) => return Err(bad(ENV_NATS_TLS_CERT, format!("is required with {ENV_NATS_TLS_KEY}"))),
            },
        };

        let bind: IpAddr = match get(ENV_BIND) {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(b) => b.parse().map_err(|_| bad(ENV_BIND, format!("{b:?} is not an IP address, e.g. 127.0.0.1")))?,
        };
        let api_token = get(ENV_API_TOKEN);
        if !bind.is_loopback() && api_token.is_none() {
            return Err(bad(
                ENV_API_TOKEN,
                format!(
                    "is required when {ENV_BIND} is not a loopback address ({bind}), so only your app can call the sidecar"
                ),
            ));
        }
        let duration = |var: &'static str, default_secs: u64| -> Result<Duration, ConfigError> {
            Ok(parse_duration(var, get(var))?.unwrap_or(Duration::from_secs(default_secs)))
        };
        let port = parse_num::<u16>(ENV_PORT, get(ENV_PORT))?.unwrap_or(4480);
        let health_port = parse_num::<u16>(ENV_HEALTH_PORT, get(ENV_HEALTH_PORT))?;
        let app_port = parse_num::<u16>(ENV_APP_PORT, get(ENV_APP_PORT))?;
        if app_port == Some(0) {
            return Err(bad(ENV_APP_PORT, "must be a port between 1 and 65535"));
        }
        let app_health_path = get(ENV_APP_HEALTH_PATH);
        if let Some(p) = &app_health_path
            && (!p.starts_with('/') || p.contains(char::is_whitespace))
        {
            return Err(bad(ENV_APP_HEALTH_PATH, format!("{p:?} must be a path starting with '/', e.g. /healthz")));
        }
        let max_body = parse_bytes(ENV_MAX_BODY, get(ENV_MAX_BODY))?.unwrap_or(8 << 20);
        let max_load_bytes = parse_bytes(ENV_MAX_LOAD_BYTES, get(ENV_MAX_LOAD_BYTES))?.unwrap_or(16 << 20);
        let worker_threads =
            parse_num::<usize>(ENV_WORKER_THREADS, get(ENV_WORKER_THREADS))?.unwrap_or(DEFAULT_WORKER_THREADS);
        let max_requests = parse_num::<usize>(ENV_MAX_REQUESTS, get(ENV_MAX_REQUESTS))?.unwrap_or(1024);
        let max_streams = parse_num::<usize>(ENV_MAX_STREAMS, get(ENV_MAX_STREAMS))?.unwrap_or(256);
        let max_connections = parse_num::<usize>(ENV_MAX_CONNECTIONS, get(ENV_MAX_CONNECTIONS))?.unwrap_or(4096);
        for (var, v) in [
            (ENV_MAX_BODY, max_body),
            (ENV_MAX_REQUESTS, max_requests),
            (ENV_MAX_STREAMS, max_streams),
            (ENV_MAX_CONNECTIONS, max_connections),
            (ENV_WORKER_THREADS, worker_threads),
        ] {
            if v == 0 {
                return Err(bad(var, "must be greater than 0"));
            }
        }
        Ok(Self {
            namespace,
            node,
            nats_urls,
            nats_auth,
            nats_tls,
            bind,
            port,
            health_port,
            app_port,
            app_health_path,
            app_health_interval: parse_duration(ENV_APP_HEALTH_INTERVAL, get(ENV_APP_HEALTH_INTERVAL))?
                .unwrap_or(Duration::from_secs(1)),
            api_token,
            max_body,
            max_requests,
            max_connections,
            queue_timeout: duration(ENV_QUEUE_TIMEOUT, 5)?,
            header_timeout: duration(ENV_HEADER_TIMEOUT, 30)?,
            body_timeout: duration(ENV_BODY_TIMEOUT, 30)?,
            allowed_hosts: match get(ENV_ALLOWED_HOSTS) {
                Some(h) if h.trim() == "*" => None,
                Some(h) => {
                    Some(h.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect())
                }
                None => Some(Vec::new()),
            },
            nats_wait: duration(ENV_NATS_WAIT, 5)?,
            max_streams,
            stream_send_timeout: parse_duration(ENV_STREAM_SEND_TIMEOUT, get(ENV_STREAM_SEND_TIMEOUT))?
                .unwrap_or(Duration::from_secs(10)),
            grace_period: parse_duration(ENV_GRACE_PERIOD, get(ENV_GRACE_PERIOD))?.unwrap_or(Duration::from_secs(20)),
            max_load_bytes,
            worker_threads,
            creds_reload: parse_duration(ENV_NATS_CREDS_RELOAD, get(ENV_NATS_CREDS_RELOAD))?
                .unwrap_or(Duration::from_secs(10))
                .max(Duration::from_millis(50)),
        })
    }

    /// True when `host` (a `Host` header: name or address, with or without port) may be served.
    /// Loopback names and the bind address always are; others only when configured.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(extra) = &self.allowed_hosts else { return true };
        let host = host.trim().to_ascii_lowercase();
        let name = strip_port(&host);
        let bind = self.bind.to_string();
        let bracketed = format!("[{bind}]");
        matches!(name, "localhost" | "127.0.0.1" | "[::1]")
            || name.ends_with(".localhost")
            || name.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
            || name == bind
            || name == bracketed
            || extra.iter().any(|e| e == &host || e == name)
    }

    /// `<namespace>/<node>`: the sender of every event this sidecar writes.
    pub fn sender(&self) -> String {
        format!("{}/{}", self.namespace, self.node)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map(|i| &h[..=i]).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => h,
    }
}

fn parse_num<T: std::str::FromStr>(var: &'static str, v: Option<String>) -> Result<Option<T>, ConfigError> {
    v.map(|s| s.parse::<T>().map_err(|_| bad(var, format!("{s:?} is not a whole number in range")))).transpose()
}

fn parse_bool(var: &'static str, v: Option<String>) -> Result<Option<bool>, ConfigError> {
    v.map(|s| match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(bad(var, format!("{s:?} is not true or false"))),
    })
    .transpose()
}

fn parse_duration(var: &'static str, v: Option<String>) -> Result<Option<Duration>, ConfigError> {
    v.map(|s| {
        s.parse::<SpecDuration>()
            .map(|d| d.get())
            .map_err(|e| bad(var, e.to_string()))
            .and_then(|d| if d.is_zero() { Err(bad(var, "must be longer than 0s, e.g. 10s")) } else { Ok(d) })
    })
    .transpose()
}

fn parse_bytes(var: &'static str, v: Option<String>) -> Result<Option<usize>, ConfigError> {
    v.map(|s| {
        s.parse::<ByteSize>()
            .map_err(|e| bad(var, e.to_string()))
            .and_then(|b| usize::try_from(b.get()).map_err(|_| bad(var, "is too large")))
    })
    .transpose()
}

/// The runtime of a sidecar with `worker_threads` workers: a current-thread runtime for one,
/// a multi-thread runtime otherwise.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(worker_threads).enable_all().build()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::try_from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[(ENV_NODE, "inventory")]).unwrap();
        assert_eq!(c.namespace.as_str(), "default");
        assert_eq!(c.port, 4480);
        assert!(c.bind.is_loopback());
        assert_eq!(c.max_body, 8 << 20);
        assert_eq!(c.sender(), "default/inventory");
        assert_eq!(c.nats_auth, NatsAuth::None);
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(cfg(&[]).unwrap_err().var, ENV_NODE);
        assert_eq!(cfg(&[(ENV_NODE, "Bad_Name")]).unwrap_err().var, ENV_NODE);
        assert_eq!(cfg(&[(ENV_NODE, "a"), (ENV_PORT, "99999")]).unwrap_err().var, ENV_PORT);
        assert_eq!(cfg(&[(ENV_NODE, "a"), (ENV_BIND, "0.0.0.0")]).unwrap_err().var, ENV_API_TOKEN);
        assert!(cfg(&[(ENV_NODE, "a"), (ENV_BIND, "0.0.0.0"), (ENV_API_TOKEN, "t")]).is_ok());
        assert_eq!(cfg(&[(ENV_NODE, "a"), (ENV_MAX_BODY, "lots")]).unwrap_err().var, ENV_MAX_BODY);
        assert_eq!(cfg(&[(ENV_NODE, "a"), (ENV_GRACE_PERIOD, "0s")]).unwrap_err().var, ENV_GRACE_PERIOD);
        assert_eq!(cfg(&[(ENV_NODE, "a"), (ENV_NATS_USER, "u")]).unwrap_err().var, ENV_NATS_PASSWORD);
        assert_eq!(cfg(&[(ENV_NODE, "a"), (ENV_NATS_CREDS, "/nope")]).unwrap_err().var, ENV_NATS_CREDS);
        assert_eq!(cfg(&[(ENV_NODE, "a"), (ENV_APP_HEALTH_PATH, "health")]).unwrap_err().var, ENV_APP_HEALTH_PATH);
    }

    #[test]
    fn hosts() {
        let c = cfg(&[(ENV_NODE, "a")]).unwrap();
        for ok in ["127.0.0.1:4480", "localhost", "LOCALHOST:1", "[::1]:4480", "127.0.0.2", "app.localhost:80"] {
            assert!(c.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:4480", "127.0.0.1.evil.example", "10.0.0.1:4480", "localhost.evil"] {
            assert!(!c.host_allowed(bad), "{bad}");
        }
        let c = cfg(&[(ENV_NODE, "a"), (ENV_ALLOWED_HOSTS, "sidecar.internal, 10.0.0.7:4480")]).unwrap();
        assert!(c.host_allowed("sidecar.internal:4480") && c.host_allowed("10.0.0.7:4480"));
        assert!(!c.host_allowed("10.0.0.8:4480"));
        let c = cfg(&[(ENV_NODE, "a"), (ENV_ALLOWED_HOSTS, "*")]).unwrap();
        assert!(c.host_allowed("anything"));
    }

    #[test]
    fn sizes_and_durations() {
        let c = cfg(&[(ENV_NODE, "a"), (ENV_MAX_BODY, "1Mi"), (ENV_GRACE_PERIOD, "1500ms")]).unwrap();
        assert_eq!(c.max_body, 1 << 20);
        assert_eq!(c.grace_period, Duration::from_millis(1500));
    }
}
