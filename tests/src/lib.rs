//! Test harness: real `nats-server` processes on random loopback ports with temporary stores,
//! killed on drop, plus paths to the project's binaries.
//!
//! ```no_run
//! # async fn t() {
//! let server = causeway_tests::NatsServer::start();
//! let client = server.client().await;
//! # }
//! ```
#![forbid(unsafe_code)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The workspace root (where `Cargo.toml` and `.tools/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// Path of one of the project's binaries in the same profile as the tests.
///
/// The binaries are built by `cargo build --workspace --bins` (the test script does this first).
pub fn bin(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    // Tests run from target/<profile>/deps/, so the binaries sit next to that.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir =
        exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| target.join("debug"));
    let p = profile_dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The nats-server to run: `$NATS_SERVER_BIN`, else `.tools/bin/nats-server`, else `nats-server` on PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = workspace_root().join(".tools/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A free loopback TCP port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir.
    pub fn new(prefix: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// One real nats-server with JetStream on file storage.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    /// Client URL, `nats://127.0.0.1:PORT`.
    pub url: String,
    /// Client port.
    pub port: u16,
    /// Monitoring URL, `http://127.0.0.1:PORT`.
    pub monitor: String,
    name: String,
    cluster: Option<(u16, Vec<u16>)>,
}

impl NatsServer {
    /// A single server on random ports.
    pub fn start() -> Self {
        Self::spawn("n1".into(), TempDir::new("cw-nats"), 0, None)
    }

    /// A single server with `max_payload` set (bytes), for large-payload tests.
    pub fn start_with_max_payload(max_payload: usize) -> Self {
        let dir = TempDir::new("cw-nats");
        std::fs::write(dir.path().join("extra.conf"), format!("max_payload: {max_payload}\n")).expect("write conf");
        Self::spawn("n1".into(), dir, 0, None)
    }

    fn spawn(name: String, dir: TempDir, port: u16, cluster: Option<(u16, Vec<u16>)>) -> Self {
        let store = dir.path().join("js");
        let extra = std::fs::read_to_string(dir.path().join("extra.conf")).unwrap_or_default();
        let mut conf = format!(
            "server_name: {name}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n{extra}",
            store.display()
        );
        if let Some((cport, routes)) = &cluster {
            let routes: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
            conf.push_str(&format!(
                "cluster {{\n  name: cw\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).expect("write nats.conf");
        let ports_dir = dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let port_arg = if port == 0 { "-1".to_string() } else { port.to_string() };
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log file");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf_path)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-m", "-1", "--ports_file_dir"])
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; run scripts/setup.sh", nats_server_bin().display()));
        let pid = child.id();
        let ports_file = ports_dir.join(format!("nats-server_{pid}.ports"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let ports: serde_json::Value = loop {
            if let Ok(s) = std::fs::read_to_string(&ports_file)
                && let Ok(v) = serde_json::from_str(&s)
            {
                break v;
            }
            assert!(Instant::now() < deadline, "nats-server did not write its ports file");
            std::thread::sleep(Duration::from_millis(20));
        };
        let url = ports["nats"][0].as_str().expect("nats url").to_string();
        let monitor = ports["monitoring"][0].as_str().expect("monitoring url").to_string();
        let port = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        let s = Self { child: Some(child), dir, url, port, monitor, name, cluster };
        if s.cluster.is_none() {
            s.wait_healthy(Duration::from_secs(20));
        }
        s
    }

    /// Waits until `/healthz?js-enabled-only=true` answers 200.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(&self.monitor, "/healthz?js-enabled-only=true") {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("nats-server {} not healthy in {within:?}", self.name);
    }

    /// GET on the monitoring port; the parsed JSON body.
    pub fn monitor_json(&self, path: &str) -> serde_json::Value {
        let (_, body) = http_get(&self.monitor, path).expect("monitoring endpoint answers");
        serde_json::from_str(&body).expect("monitoring JSON")
    }

    /// A connected client.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.expect("connect to nats-server")
    }

    /// Stops the server with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM via `kill`) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the server again on the same port with the same store (after `kill` or `stop`).
    pub fn restart(&mut self) {
        self.kill();
        let dir = std::mem::replace(&mut self.dir, TempDir(PathBuf::new()));
        let again = Self::spawn(self.name.clone(), dir, self.port, self.cluster.clone());
        *self = again;
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.name))).unwrap_or_default()
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-node nats-server cluster on loopback.
#[derive(Debug)]
pub struct Cluster {
    /// The servers.
    pub nodes: Vec<NatsServer>,
}

impl Cluster {
    /// Starts three routed servers with JetStream and waits for a meta leader.
    pub fn start3() -> Self {
        let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes: Vec<NatsServer> = (0..3)
            .map(|i| {
                let routes: Vec<u16> = cports.iter().copied().filter(|p| *p != cports[i]).collect();
                NatsServer::spawn(format!("n{}", i + 1), TempDir::new("cw-nats"), 0, Some((cports[i], routes)))
            })
            .collect();
        let c = Self { nodes };
        for n in &c.nodes {
            n.wait_healthy(Duration::from_secs(30));
        }
        c
    }

    /// Client URLs of all nodes, comma-separated (for a client that fails over).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url.clone()).collect::<Vec<_>>().join(",")
    }

    /// A client that knows every node.
    pub async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> =
            self.nodes.iter().map(|n| n.url.parse().expect("server addr")).collect();
        async_nats::connect(addrs).await.expect("connect to cluster")
    }
}

/// A minimal blocking HTTP/1.0 GET, enough for monitoring endpoints. `None` when unreachable.
pub fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Polls `f` until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The result of running a binary to completion.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the `causeway` binary with `args` and waits for it.
pub fn causeway(args: &[&str]) -> Run {
    let out = Command::new(bin("causeway")).args(args).output().expect("run causeway");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    workspace_root().join("examples")
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write file");
    p.display().to_string()
}
