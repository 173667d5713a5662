//! Test harness: real `nats-server` processes on random loopback ports with temporary stores,
//! killed on drop, plus paths to the project's binaries.
//!
//! ```no_run
//! # async fn t() {
//! let server = causeway_tests::NatsServer::start();
//! let client = server.client().await;
//! // In JWT mode, with per-node credentials (`client()` connects as the account's admin):
//! let secure = causeway_tests::NatsServer::start_secure();
//! let admin = secure.client().await;
//! # }
//! ```
#![forbid(unsafe_code)]

use causeway_api::grants::Grants;
use causeway_operator::identity::{Credential, DevTrust};
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
    // Tests run from target/<profile>/deps/, so the binaries sit next to that; a binary such as
    // causeway-bench runs from target/<profile>/ itself.
    let exe = std::env::current_exe().expect("current exe");
    let beside = exe.parent().map(|d| d.join(name)).filter(|p| p.exists());
    let profile_dir =
        exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| target.join("debug"));
    let p = beside.unwrap_or_else(|| profile_dir.join(name));
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
    trust: Option<DevTrust>,
    /// Client URL, `nats://127.0.0.1:PORT`.
    pub url: String,
    /// Client port.
    pub port: u16,
    /// Monitoring URL, `http://127.0.0.1:PORT`.
    pub monitor: String,
    name: String,
    cluster: Option<(u16, Vec<u16>)>,
}

/// Marker file in a server's directory: run it with the default `sync_interval`.
const DEFAULT_SYNC: &str = "default-sync";

impl NatsServer {
    /// A single server on random ports. With `CAUSEWAY_TEST_SECURE=1` it is a secure one
    /// ([`NatsServer::start_secure`]), and the sidecars of the tests run on their own Node's
    /// credential ([`secure_node_creds`]): the sidecar suite then runs under node isolation.
    pub fn start() -> Self {
        if secure_suite() {
            return Self::start_secure();
        }
        Self::spawn("n1".into(), TempDir::new("cw-nats"), 0, None)
    }

    /// A single server with `max_payload` set (bytes), for large-payload tests.
    pub fn start_with_max_payload(max_payload: usize) -> Self {
        if secure_suite() {
            return Self::start_secure_with(&format!("max_payload: {max_payload}\n"));
        }
        let dir = TempDir::new("cw-nats");
        std::fs::write(dir.path().join("extra.conf"), format!("max_payload: {max_payload}\n")).expect("write conf");
        Self::spawn("n1".into(), dir, 0, None)
    }

    /// A single server with nats-server's default `sync_interval` (2 min: acknowledged writes are
    /// in the OS page cache, fsynced in the background) instead of the harness's `always`. For
    /// benchmarks that measure what is not disk-bound.
    pub fn start_default_sync() -> Self {
        let dir = TempDir::new("cw-nats");
        std::fs::write(dir.path().join(DEFAULT_SYNC), "").expect("write marker");
        Self::spawn("n1".into(), dir, 0, None)
    }

    /// A single server in JWT mode (decentralized auth, memory resolver) trusting a
    /// [`DevTrust`] generated into its directory: every connection needs a user credential of
    /// the trust's account. [`NatsServer::client`] connects with an unrestricted one, so every
    /// helper that takes `server.client()` works unchanged; [`NatsServer::issue`] and
    /// [`NatsServer::write_creds`] give restricted ones.
    pub fn start_secure() -> Self {
        Self::start_secure_with("")
    }

    /// Like [`NatsServer::start_secure`], with `extra` configuration lines after the trust's
    /// (a later setting overrides an earlier one).
    pub fn start_secure_with(extra: &str) -> Self {
        let dir = TempDir::new("cw-nats");
        let trust = DevTrust::load_or_create(&dir.path().join(TRUST_DIR)).expect("create the dev trust");
        std::fs::write(dir.path().join("extra.conf"), format!("{}{extra}", trust.server_config())).expect("write conf");
        Self::spawn("n1".into(), dir, 0, None)
    }

    fn spawn(name: String, dir: TempDir, port: u16, cluster: Option<(u16, Vec<u16>)>) -> Self {
        let store = dir.path().join("js");
        let extra = std::fs::read_to_string(dir.path().join("extra.conf")).unwrap_or_default();
        // A secure server keeps its trust in its directory, so a restart trusts the same keys.
        let trust_dir = dir.path().join(TRUST_DIR);
        let trust = trust_dir.exists().then(|| DevTrust::load_or_create(&trust_dir).expect("read the dev trust"));
        // Every acknowledged write on disk before its ack, unless the server was started with
        // the default sync (a marker in its directory, so a restart keeps it).
        let sync = if dir.path().join(DEFAULT_SYNC).exists() { "" } else { "  sync_interval: always\n" };
        let mut conf =
            format!("server_name: {name}\njetstream {{\n  store_dir: {:?}\n{sync}}}\n{extra}", store.display());
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
        if let Some(t) = &trust {
            let creds = dir.path().join("node-creds");
            std::fs::create_dir_all(&creds).expect("node creds dir");
            SECURE.lock().unwrap_or_else(|e| e.into_inner()).entry(url.clone()).or_insert_with(|| SecureServer {
                trust: t.clone(),
                dir: creds,
                nodes: Default::default(),
            });
        }
        let s = Self { child: Some(child), dir, trust, url, port, monitor, name, cluster };
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

    /// A connected client; on a secure server, as an unrestricted user of the account.
    pub async fn client(&self) -> async_nats::Client {
        match &self.trust {
            None => async_nats::connect(&self.url).await.expect("connect to nats-server"),
            Some(t) => async_nats::ConnectOptions::with_credentials(&t.admin_creds())
                .expect("admin creds parse")
                .connect(&self.url)
                .await
                .expect("connect to nats-server as admin"),
        }
    }

    /// The trust a secure server ([`NatsServer::start_secure`]) runs with; `None` otherwise.
    pub fn trust(&self) -> Option<&DevTrust> {
        self.trust.as_ref()
    }

    /// A credential of the secure server's account named `name` with exactly `grants`, valid
    /// for `ttl`. Panics on a server without trust.
    pub fn issue(&self, name: &str, grants: &Grants, ttl: Duration) -> Credential {
        self.trust.as_ref().expect("a secure server (start_secure)").issuer().issue(name, grants, ttl)
    }

    /// Writes a `.creds` file for `grants` (valid for an hour) into the server's directory and
    /// returns its path, for binaries that take a credentials file.
    pub fn write_creds(&self, name: &str, grants: &Grants) -> PathBuf {
        let c = self.issue(name, grants, Duration::from_secs(3600));
        let file =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect::<String>();
        let p = self.dir.path().join(format!("{file}-{}.creds", nanos()));
        std::fs::write(&p, c.creds).expect("write creds");
        p
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

/// Where a secure server keeps its [`DevTrust`], inside its directory.
const TRUST_DIR: &str = "trust";

/// True when the suite runs under node isolation (`CAUSEWAY_TEST_SECURE=1`).
pub fn secure_suite() -> bool {
    std::env::var("CAUSEWAY_TEST_SECURE").is_ok_and(|v| v == "1")
}

/// Secure servers by URL: their trust, and the node credential files handed to sidecars.
static SECURE: std::sync::Mutex<BTreeMap<String, SecureServer>> = std::sync::Mutex::new(BTreeMap::new());

struct SecureServer {
    trust: DevTrust,
    dir: PathBuf,
    /// `(ns, node)` of every sidecar started with a credential file.
    nodes: std::collections::BTreeSet<(String, String)>,
}

/// For a sidecar of node `ns/node` on the secure server at `url`: a credential file with exactly
/// that node's grants (computed from the registry as the operator would; a node not applied yet
/// gets the grants of a default Node). `None` when `url` is not a secure server. The file is
/// rewritten by [`refresh_secure_creds`] when the registry changes what the node may do.
pub fn secure_node_creds(url: &str, ns: &str, node: &str) -> Option<PathBuf> {
    let (trust, dir) = {
        let mut g = SECURE.lock().unwrap_or_else(|e| e.into_inner());
        let s = g.get_mut(url)?;
        s.nodes.insert((ns.to_owned(), node.to_owned()));
        (s.trust.clone(), s.dir.clone())
    };
    let path = dir.join(format!("{ns}.{node}.creds"));
    write_node_creds(url, &trust, &[(ns.to_owned(), node.to_owned())], &dir);
    Some(path)
}

/// The administrator's credential file of the secure server at `url`, written on first use;
/// `None` for other servers.
pub fn secure_admin_creds(url: &str) -> Option<PathBuf> {
    let (trust, dir) =
        SECURE.lock().unwrap_or_else(|e| e.into_inner()).get(url).map(|s| (s.trust.clone(), s.dir.clone()))?;
    let path = dir.join("admin.creds");
    if !path.exists() {
        std::fs::write(&path, trust.admin_creds()).expect("write the admin credential");
    }
    Some(path)
}

/// Rewrites the credential files of the secure server at `url` (after an apply), so running
/// sidecars reload the grants the registry now implies. Does nothing for other servers.
pub fn refresh_secure_creds(url: &str) {
    let Some((trust, dir, nodes)) = SECURE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(url)
        .map(|s| (s.trust.clone(), s.dir.clone(), s.nodes.iter().cloned().collect::<Vec<_>>()))
    else {
        return;
    };
    write_node_creds(url, &trust, &nodes, &dir);
}

fn write_node_creds(url: &str, trust: &DevTrust, nodes: &[(String, String)], dir: &Path) {
    use causeway_api::{
        DnsLabel,
        grants::node_grants,
        registry::{Meta, NodeRecord, Record},
    };
    // Called from async tests: the registry is read on a runtime of its own.
    let (url, trust, nodes, dir) = (url.to_owned(), trust.clone(), nodes.to_vec(), dir.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let admin = async_nats::ConnectOptions::with_credentials(&trust.admin_creds())
                .expect("admin creds")
                .connect(&url)
                .await
                .expect("connect as admin");
            let reconciler = causeway_operator::jetstream::Reconciler::new(admin, "apply");
            let records = reconciler.list_records().await.unwrap_or_default();
            let listeners: Vec<_> = records
                .iter()
                .filter_map(|r| if let Record::Listener(l) = r { Some(l.clone()) } else { None })
                .collect();
            let stores_of = |ns: &DnsLabel| -> Vec<DnsLabel> {
                records
                    .iter()
                    .filter_map(|r| match r {
                        Record::EventStore(s) if s.meta.namespace == *ns => Some(s.meta.name.clone()),
                        _ => None,
                    })
                    .collect()
            };
            for (ns, node) in nodes {
                let found = records.iter().find_map(|r| match r {
                    Record::Node(n) if n.meta.namespace.as_str() == ns && n.meta.name.as_str() == node => {
                        Some(n.clone())
                    }
                    _ => None,
                });
                let rec = found.unwrap_or_else(|| {
                    let meta = Meta {
                        namespace: DnsLabel::new(ns.as_str()).expect("namespace"),
                        name: DnsLabel::new(node.as_str()).expect("node"),
                        generation: None,
                        manager: "apply".into(),
                    };
                    NodeRecord::resolve(meta, &serde_json::from_value(serde_json::json!({})).expect("default spec"))
                });
                let grants = node_grants(&rec, &listeners, &stores_of);
                let path = dir.join(format!("{ns}.{node}.creds"));
                let wanted = causeway_operator::identity::fingerprint(&grants, &trust.issuer());
                let fp = dir.join(format!("{ns}.{node}.fingerprint"));
                if std::fs::read_to_string(&fp).is_ok_and(|f| f == wanted) {
                    continue;
                }
                let cred = trust.issuer().issue(&format!("{ns}/{node}"), &grants, Duration::from_secs(3600));
                causeway_operator::local::write_private(&path, &cred.creds).expect("write node creds");
                std::fs::write(&fp, wanted).expect("write fingerprint");
            }
        });
    })
    .join()
    .expect("issue node credentials");
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

/// Runs the `causeway` binary with `args` and waits for it. Pointed (`--nats URL`) at a secure
/// server of this suite without `--creds`, it connects as that server's administrator, as an
/// operator or a platform team would.
pub fn causeway(args: &[&str]) -> Run {
    let mut cmd = Command::new(bin("causeway"));
    cmd.args(args);
    if !args.contains(&"--creds")
        && let Some(url) = args.iter().position(|a| *a == "--nats").and_then(|i| args.get(i + 1))
        && let Some(creds) = secure_admin_creds(url)
    {
        cmd.env("CAUSEWAY_NATS_CREDS", creds);
    }
    let out = cmd.output().expect("run causeway");
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

// ---------------------------------------------------------------------------------------------
// Kubernetes: the in-memory API server (tests/kube/kube_emulator.py), kubectl, helm, and the
// CRDs' printer columns.
// ---------------------------------------------------------------------------------------------

use std::collections::BTreeMap;

/// A project-local tool, `.tools/bin/<name>` (installed by `scripts/setup.sh --test`), else
/// `<name>` to be found on PATH.
fn tool_bin(name: &str) -> PathBuf {
    let local = workspace_root().join(".tools/bin").join(name);
    if local.exists() { local } else { PathBuf::from(name) }
}

/// kubectl: `.tools/bin/kubectl` (pinned, installed by `scripts/setup.sh --test`), else `kubectl`
/// on PATH.
pub fn kubectl_bin() -> PathBuf {
    tool_bin("kubectl")
}

/// helm: `.tools/bin/helm` (pinned, installed by `scripts/setup.sh --test`), else `helm` on PATH.
pub fn helm_bin() -> PathBuf {
    tool_bin("helm")
}

/// The Python that runs the Kubernetes API emulator: `.tools/bin/python`, which
/// `scripts/setup.sh --test` creates with kmock==0.8 and PyYAML.
pub fn tools_python() -> PathBuf {
    workspace_root().join(".tools/bin/python")
}

/// The emulator's script, `tests/kube/kube_emulator.py`.
pub fn kube_emulator_script() -> PathBuf {
    workspace_root().join("tests/kube/kube_emulator.py")
}

/// The repository's `crds/` directory.
pub fn crds_dir() -> PathBuf {
    workspace_root().join("crds")
}

/// How to start a [`KubeEmulator`].
#[derive(Debug, Clone)]
pub struct KubeEmulatorOptions {
    /// Log every request to its stderr (`-v`), which [`KubeEmulator::requests_since`] and
    /// [`KubeEmulator::writes_since`] read. Default true.
    pub verbose: bool,
    /// CRD files or directories to register (`--crds`). Default: the repository's `crds/`.
    pub crds: Vec<PathBuf>,
    /// The kubeconfig context's namespace (created). Default `default`.
    pub namespace: Option<String>,
    /// The Python interpreter. Default [`tools_python`].
    pub python: PathBuf,
    /// How long to wait for it to serve. Default 30 s.
    pub ready_within: Duration,
}

impl Default for KubeEmulatorOptions {
    fn default() -> Self {
        Self {
            verbose: true,
            crds: vec![crds_dir()],
            namespace: None,
            python: tools_python(),
            ready_within: Duration::from_secs(30),
        }
    }
}

/// One request from the emulator's `-v` log: `METHOD PATH?QUERY -> STATUS`, in the order the
/// emulator finished them (a watch is logged when it ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// GET, POST, PUT, PATCH, DELETE, ...
    pub method: String,
    /// The URL path, without the query.
    pub path: String,
    /// The query string (without `?`), maybe empty.
    pub query: String,
    /// The HTTP status answered.
    pub status: u16,
}

impl ApiRequest {
    /// True for POST, PUT, PATCH and DELETE: requests that may change the API's state (whatever
    /// their outcome, so a refused write in a loop still shows).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }

    /// True for a watch (`GET ...?watch=true`).
    pub fn is_watch(&self) -> bool {
        self.method == "GET" && self.query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1")
    }
}

/// A position in the emulator's request log (see [`KubeEmulator::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestMark(usize);

/// An in-memory Kubernetes API server (`tests/kube/kube_emulator.py`, on kmock) on a random
/// loopback port, with the repository's CRDs registered, a kubeconfig for kubectl and kube-rs,
/// and (by default) a request log to count the API writes of whatever talks to it. Killed on
/// drop.
///
/// It is not a real apiserver: no validation, defaulting or admission, server-side apply is a
/// merge patch, JSON only (`kubectl create ns` fails: use [`KubeEmulator::create_namespace`]),
/// no garbage collection, and kubectl prints only NAME and AGE (use [`printer_columns`]). The
/// full list is at the top of `tests/kube/kube_emulator.py`.
///
/// Fails loudly (panics, telling to run `scripts/setup.sh --test`) when `.tools/bin/python`
/// lacks kmock: these tests never skip.
#[derive(Debug)]
pub struct KubeEmulator {
    child: Option<Child>,
    dir: TempDir,
    verbose: bool,
    /// Its URL, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl KubeEmulator {
    /// Its process id while it runs (for CPU and memory figures).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts one with the default options (the repository's CRDs, request log on).
    pub fn start() -> Self {
        Self::start_with(KubeEmulatorOptions::default())
    }

    /// Starts one with `opts` and waits until it serves.
    pub fn start_with(opts: KubeEmulatorOptions) -> Self {
        check_emulator_python(&opts.python);
        let dir = TempDir::new("cw-kube");
        let ready = dir.path().join("ready");
        let log = std::fs::File::create(dir.path().join("emulator.log")).expect("emulator log file");
        let mut cmd = Command::new(&opts.python);
        cmd.arg(kube_emulator_script()).args(["--port", "0", "--host", "127.0.0.1"]);
        for c in &opts.crds {
            cmd.arg("--crds").arg(c);
        }
        cmd.arg("--kubeconfig").arg(dir.path().join("kubeconfig")).arg("--ready-file").arg(&ready);
        if let Some(ns) = &opts.namespace {
            cmd.args(["--namespace", ns]);
        }
        if opts.verbose {
            cmd.arg("-v");
        }
        let child = cmd
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; run scripts/setup.sh --test", opts.python.display()));
        let mut emu = Self { child: Some(child), dir, verbose: opts.verbose, url: String::new() };
        let deadline = Instant::now() + opts.ready_within;
        loop {
            if let Ok(s) = std::fs::read_to_string(&ready)
                && s.ends_with('\n')
            {
                emu.url = s.trim().to_string();
                break;
            }
            if let Some(Ok(Some(status))) = emu.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the Kubernetes API emulator exited before serving ({status}); \
                     run scripts/setup.sh --test if a module is missing. Its log:\n{}",
                    emu.log()
                );
            }
            if Instant::now() >= deadline {
                emu.kill();
                panic!(
                    "the Kubernetes API emulator did not serve within {:?}. Its log:\n{}",
                    opts.ready_within,
                    emu.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        emu
    }

    /// The kubeconfig it wrote (plain http, no auth, context `kube-emulator`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Its scratch directory (kubeconfig, log, kubectl's cache).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `kubectl --kubeconfig <ours> <args>` ([`kubectl_bin`]), with its own discovery cache
    /// and a 30 s request timeout (a later `--request-timeout` in `args` wins).
    pub fn kubectl(&self, args: &[&str]) -> Run {
        self.kubectl_with_stdin(args, None)
    }

    /// `kubectl apply -f -` with `yaml` on stdin.
    pub fn kubectl_apply_yaml(&self, yaml: &str) -> Run {
        self.kubectl_with_stdin(&["apply", "-f", "-"], Some(yaml))
    }

    /// Runs kubectl with `args` plus `-o json`, asserts that it succeeded and parses its output.
    pub fn kubectl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let r = self.kubectl(&all);
        assert_eq!(r.code, 0, "kubectl {all:?} failed: {}{}", r.stdout, r.stderr);
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("kubectl {all:?}: not JSON ({e}): {}", r.stdout))
    }

    /// Creates namespace `name` with `kubectl apply` (the emulator refuses `kubectl create ns`,
    /// which sends protobuf) and asserts that it worked.
    pub fn create_namespace(&self, name: &str) {
        let r = self.kubectl_apply_yaml(&format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"));
        assert_eq!(r.code, 0, "kubectl apply namespace {name}: {}{}", r.stdout, r.stderr);
    }

    fn kubectl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        kubectl_at(&self.kubeconfig(), &self.dir.path().join("kube-cache"), args, stdin)
    }

    /// A kube-rs client for it (from its kubeconfig).
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("read the emulator's kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kube config from the emulator's kubeconfig");
        kube::Client::try_from(config).expect("kube client")
    }

    /// Its stderr so far: startup lines, errors and, with `verbose`, one line per request.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }

    /// Every request it has finished, from its `-v` log. Panics when started without `verbose`.
    pub fn requests(&self) -> Vec<ApiRequest> {
        assert!(self.verbose, "start the KubeEmulator with verbose: true to read its requests");
        self.log().lines().filter_map(parse_request_line).collect()
    }

    /// The current end of the request log: pass it to [`Self::requests_since`] or
    /// [`Self::writes_since`].
    ///
    /// A request is logged just before its answer is sent, so whatever a finished kubectl or an
    /// awaited kube-rs call did is in the log.
    pub fn mark(&self) -> RequestMark {
        RequestMark(self.requests().len())
    }

    /// Requests finished after `mark`.
    pub fn requests_since(&self, mark: RequestMark) -> Vec<ApiRequest> {
        self.requests().into_iter().skip(mark.0).collect()
    }

    /// Write requests (POST, PUT, PATCH, DELETE) finished after `mark`, counted by URL path
    /// (without the query), e.g. `/apis/causeway.dev/v1alpha1/namespaces/shop/eventstores/orders/status`.
    /// Empty when nothing was written: "no writes while idle" is
    /// `assert!(emu.writes_since(mark).is_empty())`. Every write counts, including no-ops (the
    /// emulator keeps the resourceVersion but the request was made), refused ones, Lease renewals
    /// of leader election (`/apis/coordination.k8s.io/...`) and Events: filter the map by path
    /// to leave out what a test allows.
    pub fn writes_since(&self, mark: RequestMark) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.requests_since(mark).into_iter().filter(ApiRequest::is_write) {
            *out.entry(r.path).or_insert(0) += 1;
        }
        out
    }

    /// All write requests since it started, counted by URL path.
    pub fn writes(&self) -> BTreeMap<String, usize> {
        self.writes_since(RequestMark(0))
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for KubeEmulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `METHOD PATH?QUERY -> STATUS`, as `Emulator.__call__` logs it with `-v`.
fn parse_request_line(line: &str) -> Option<ApiRequest> {
    let (req, status) = line.rsplit_once(" -> ")?;
    let (method, target) = req.split_once(' ')?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(ApiRequest {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        status: status.trim().parse().ok()?,
    })
}

/// Panics, telling to run `scripts/setup.sh --test`, unless `python` is Python >= 3.11 with
/// kmock 0.8 and PyYAML (what the emulator needs).
fn check_emulator_python(python: &Path) {
    const CHECK: &str = "import sys, importlib.util, importlib.metadata as m\n\
        missing = [n for n in ('kmock', 'yaml', 'aiohttp', 'jsonpatch') if importlib.util.find_spec(n) is None]\n\
        if sys.version_info < (3, 11): sys.exit(f'Python {sys.version.split()[0]} is older than 3.11')\n\
        if missing: sys.exit('missing modules: ' + ', '.join(missing))\n\
        if m.version('kmock') != '0.8': sys.exit('kmock ' + m.version('kmock') + ' is installed, not 0.8')\n";
    let out = Command::new(python).args(["-c", CHECK]).stdin(Stdio::null()).output();
    let why = match out {
        Ok(o) if o.status.success() => return,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run it: {e}"),
    };
    panic!(
        "the Kubernetes tests need {} with kmock==0.8 and pyyaml to run tests/kube/kube_emulator.py \
         ({why}): run scripts/setup.sh --test. These tests never skip.",
        python.display()
    );
}

/// The `additionalPrinterColumns` of a CRD (`crd_yaml`, e.g. a file of `crds/`) evaluated on
/// `object` (a live object of that CRD, e.g. from `kubectl get -o json`): `(column name, cell)`
/// per column, in order, `None` where kubectl would print `<none>`. The emulator renders no
/// tables, so this is how a test checks what `kubectl get` would show.
///
/// Cells are what the apiserver puts in its table: the first JSONPath match, checked against the
/// column's type (`integer`, `number`, `boolean`: `None` when the value is not of that type;
/// `string`: strings as they are, other values as JSON). A `date` cell is the timestamp itself
/// (kubectl would print its age), or `<invalid>` when it is not RFC 3339.
///
/// Every column is returned, also those with `priority` > 0 that kubectl shows only with
/// `-o wide`.
///
/// JSONPath forms understood: `.a.b`, `['a']`, `[N]`, `[*]` and filters
/// `[?(@.a.b == "x")]` / `!=` with a string, number or boolean, or `[?(@.a)]`. Anything else
/// panics, so a column no test can evaluate does not pass silently.
pub fn printer_columns(crd_yaml: &str, object: &serde_json::Value) -> Vec<(String, Option<String>)> {
    let crd: serde_json::Value = serde_yaml::from_str(crd_yaml).expect("CRD YAML");
    let spec = &crd["spec"];
    let api_version = object["apiVersion"].as_str().expect("object has an apiVersion");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    assert_eq!(group, spec["group"].as_str().unwrap_or_default(), "object {api_version} is not of this CRD's group");
    assert_eq!(object["kind"], spec["names"]["kind"], "object is not of this CRD's kind");
    let versions = spec["versions"].as_array().expect("CRD spec.versions");
    let ver =
        versions.iter().find(|v| v["name"] == version).unwrap_or_else(|| panic!("the CRD serves no version {version}"));
    let columns = ver["additionalPrinterColumns"]
        .as_array()
        .or_else(|| spec["additionalPrinterColumns"].as_array())
        .cloned()
        .unwrap_or_default();
    columns
        .iter()
        .map(|c| {
            let name = c["name"].as_str().expect("column name").to_string();
            let path = c["jsonPath"].as_str().expect("column jsonPath");
            let ty = c["type"].as_str().expect("column type");
            let cell = jsonpath(path, object).first().and_then(|v| printer_cell(ty, v));
            (name, cell)
        })
        .collect()
}

fn printer_cell(ty: &str, v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (ty, v) {
        (_, Value::Null) => None,
        ("integer", Value::Number(n)) => {
            // The apiserver truncates a float to an integer.
            n.as_i64()
                .map(|i| i.to_string())
                .or_else(|| n.as_u64().map(|u| u.to_string()))
                .or_else(|| n.as_f64().map(|f| (f as i64).to_string()))
        }
        ("number", Value::Number(n)) => Some(n.to_string()),
        ("boolean", Value::Bool(b)) => Some(b.to_string()),
        ("date", Value::String(s)) => {
            Some(if chrono::DateTime::parse_from_rfc3339(s).is_ok() { s.clone() } else { "<invalid>".to_string() })
        }
        ("string", Value::String(s)) => Some(s.clone()),
        ("string", other) => Some(other.to_string()),
        ("integer" | "number" | "boolean" | "date", _) => None,
        (other, _) => panic!("printer column type {other:?} is not one of string, integer, number, boolean, date"),
    }
}

/// One step of a JSONPath.
#[derive(Debug)]
enum PathStep {
    Field(String),
    Index(usize),
    All,
    Filter { path: Vec<String>, test: Option<(bool, serde_json::Value)> },
}

/// Evaluates the simple JSONPath forms of [`printer_columns`]; every match, in order.
fn jsonpath<'a>(path: &str, root: &'a serde_json::Value) -> Vec<&'a serde_json::Value> {
    let steps = parse_jsonpath(path).unwrap_or_else(|why| panic!("unsupported JSONPath {path:?}: {why}"));
    let mut cur = vec![root];
    for step in &steps {
        let mut next = Vec::new();
        for v in cur {
            match step {
                PathStep::Field(f) => next.extend(v.get(f.as_str())),
                PathStep::Index(i) => next.extend(v.get(*i)),
                PathStep::All => match v {
                    serde_json::Value::Array(a) => next.extend(a.iter()),
                    serde_json::Value::Object(o) => next.extend(o.values()),
                    _ => {}
                },
                PathStep::Filter { path, test } => {
                    for item in v.as_array().into_iter().flatten() {
                        let mut at = Some(item);
                        for f in path {
                            at = at.and_then(|x| x.get(f.as_str()));
                        }
                        let keep = match (at, test) {
                            (None, _) => false,
                            (Some(_), None) => true,
                            (Some(x), Some((eq, lit))) => json_eq(x, lit) == *eq,
                        };
                        if keep {
                            next.push(item);
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn parse_jsonpath(path: &str) -> Result<Vec<PathStep>, String> {
    let mut s = path.trim();
    if let Some(inner) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
        s = inner.trim();
    }
    s = s.strip_prefix('$').unwrap_or(s);
    let mut steps = Vec::new();
    while !s.is_empty() {
        if let Some(rest) = s.strip_prefix('.') {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let name = &rest[..end];
            if name.is_empty() {
                return Err("empty field name (recursive descent `..` is not supported)".into());
            }
            steps.push(if name == "*" { PathStep::All } else { PathStep::Field(name.to_string()) });
            s = &rest[end..];
        } else if let Some(rest) = s.strip_prefix("[?(") {
            let end = rest.find(")]").ok_or("unclosed filter")?;
            steps.push(parse_filter(rest[..end].trim())?);
            s = &rest[end + 2..];
        } else if let Some(rest) = s.strip_prefix('[') {
            let end = rest.find(']').ok_or("unclosed [")?;
            let inner = rest[..end].trim();
            steps.push(if inner == "*" {
                PathStep::All
            } else if let Ok(i) = inner.parse::<usize>() {
                PathStep::Index(i)
            } else if let Some(q) = unquote(inner) {
                PathStep::Field(q)
            } else {
                return Err(format!("unsupported subscript [{inner}]"));
            });
            s = &rest[end + 1..];
        } else {
            return Err(format!("unexpected {s:?}"));
        }
    }
    Ok(steps)
}

fn parse_filter(expr: &str) -> Result<PathStep, String> {
    let (lhs, test) = match expr.find(['=', '!']) {
        Some(i) if expr[i..].starts_with("==") => (&expr[..i], Some((true, &expr[i + 2..]))),
        Some(i) if expr[i..].starts_with("!=") => (&expr[..i], Some((false, &expr[i + 2..]))),
        Some(_) => return Err(format!("unsupported operator in filter {expr:?}")),
        None => (expr, None),
    };
    let lhs = lhs.trim().strip_prefix("@.").ok_or_else(|| format!("filter {expr:?} does not start with @."))?;
    let path: Vec<String> = lhs.split('.').map(str::to_string).collect();
    if path.iter().any(|p| p.is_empty() || p.contains(['[', ']', ' ', '<', '>', '&', '|'])) {
        return Err(format!("unsupported filter {expr:?}"));
    }
    let test = match test {
        None => None,
        Some((eq, lit)) => {
            let lit = lit.trim();
            let value = if let Some(q) = unquote(lit) {
                serde_json::Value::String(q)
            } else {
                serde_json::from_str(lit).map_err(|_| format!("unsupported literal {lit:?} in filter"))?
            };
            Some((eq, value))
        }
    };
    Ok(PathStep::Filter { path, test })
}

fn unquote(s: &str) -> Option<String> {
    let b = s.as_bytes();
    (b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0]).then(|| s[1..s.len() - 1].to_string())
}

// ---------------------------------------------------------------------------------------------
// The operator as a process: `causeway operator` against a kubeconfig (the emulator's or a real
// cluster's) and a nats-server, with its health endpoint, metrics and log.
// ---------------------------------------------------------------------------------------------

/// Runs `kubectl --kubeconfig <kubeconfig> --cache-dir <cache_dir> --request-timeout=30s <args>`
/// ([`kubectl_bin`]) with `stdin`, for any cluster (e.g. a real one); [`KubeEmulator::kubectl`] is
/// the same for the emulator.
pub fn kubectl_at(kubeconfig: &Path, cache_dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache_dir)
        .arg("--request-timeout=30s")
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {}: {e}; run scripts/setup.sh --test (it installs kubectl)", kubectl_bin().display())
    });
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("kubectl stdin");
        pipe.write_all(text.as_bytes()).expect("write kubectl stdin");
    }
    let out = child.wait_with_output().expect("wait for kubectl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A kube-rs client from a kubeconfig file (the emulator's, or a real cluster's).
pub async fn kube_client_at(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kube config from {}: {e}", kubeconfig.display()));
    kube::Client::try_from(config).expect("kube client")
}

/// How to start an [`Operator`]: the flags of `causeway operator`, in order. Build with
/// [`OperatorOptions::new`], change with [`OperatorOptions::flag`] / [`OperatorOptions::switch`],
/// then [`OperatorOptions::start`].
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// `(flag, value)`; a switch has no value. A later [`Self::flag`] replaces an earlier one.
    pub flags: Vec<(String, Option<String>)>,
    /// `CAUSEWAY_LOG` (default `info`).
    pub log_filter: String,
    /// A name for its log in failure messages (default `operator`).
    pub name: String,
}

impl OperatorOptions {
    /// `--kubeconfig <kubeconfig> --nats <nats>`, everything else at its default (leader election
    /// on, resync 60s...). Unless `--health-addr` / `--webhook-addr` are set, each
    /// [`Self::start`] picks a free loopback port for the health address and lets the system
    /// pick the webhook's, so one set of options can start several replicas side by side.
    pub fn new(kubeconfig: &Path, nats: &str) -> Self {
        let o = Self { flags: Vec::new(), log_filter: "info".into(), name: "operator".into() };
        o.flag("--kubeconfig", &kubeconfig.display().to_string()).flag("--nats", nats)
    }

    /// Sets `name value`, replacing an earlier value of `name`.
    pub fn flag(mut self, name: &str, value: &str) -> Self {
        self.flags.retain(|(n, _)| n != name);
        self.flags.push((name.to_string(), Some(value.to_string())));
        self
    }

    /// Adds the switch `name` (e.g. `--no-leader-election`).
    pub fn switch(mut self, name: &str) -> Self {
        self.flags.retain(|(n, _)| n != name);
        self.flags.push((name.to_string(), None));
        self
    }

    /// Sets the name used in failure messages.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.flags.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }

    /// Starts it and waits until its health endpoint answers (not until it is ready: see
    /// [`Operator::wait_ready`]). Panics, with its log, if it exits or does not serve in 30 s.
    pub fn start(&self) -> Operator {
        let mut op = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = http_get(&op.health, "/healthz") {
                // Another process could answer on that port: make sure ours still runs.
                std::thread::sleep(Duration::from_millis(50));
                assert!(op.is_running(), "{} exited; its log:\n{}", op.name, op.log());
                return op;
            }
            if !op.is_running() {
                panic!("{} exited before serving /healthz; its log:\n{}", op.name, op.log());
            }
            assert!(Instant::now() < deadline, "{} did not serve /healthz in 30 s; its log:\n{}", op.name, op.log());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts it and returns at once, for a test of how it fails to start.
    pub fn spawn(&self) -> Operator {
        let dir = TempDir::new("cw-operator");
        let log_path = dir.path().join("operator.log");
        let log = std::fs::File::create(&log_path).expect("operator log file");
        let mut flags = self.flags.clone();
        if self.get("--health-addr").is_none() {
            flags.push(("--health-addr".into(), Some(format!("127.0.0.1:{}", free_port()))));
        }
        // A test that does not call the webhook lets the system pick its port: a port found free
        // a moment ago may be taken by a parallel test before the operator binds it.
        if self.get("--webhook-addr").is_none() {
            flags.push(("--webhook-addr".into(), Some("127.0.0.1:0".into())));
        }
        let health_addr =
            flags.iter().find(|(n, _)| n == "--health-addr").and_then(|(_, v)| v.clone()).unwrap_or_default();
        let mut cmd = Command::new(bin("causeway"));
        cmd.arg("operator");
        for (n, v) in &flags {
            cmd.arg(n);
            if let Some(v) = v {
                cmd.arg(v);
            }
        }
        for var in ["KUBECONFIG", "POD_NAME", "POD_NAMESPACE", "CAUSEWAY_LOG_FORMAT"] {
            cmd.env_remove(var);
        }
        let child = cmd
            .env("CAUSEWAY_LOG", &self.log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start causeway operator");
        Operator {
            child: Some(child),
            dir,
            log_path,
            health: format!("http://{health_addr}"),
            name: self.name.clone(),
            options: self.clone(),
        }
    }
}

/// A running `causeway operator` ([`OperatorOptions::start`]): SIGKILLed on drop, and its log's
/// tail printed when the test is panicking.
#[derive(Debug)]
pub struct Operator {
    child: Option<Child>,
    dir: TempDir,
    log_path: PathBuf,
    /// `http://127.0.0.1:PORT` of /healthz, /readyz and /metrics.
    pub health: String,
    /// Its name in failure messages.
    pub name: String,
    /// How it was started (to start another like it).
    pub options: OperatorOptions,
}

impl Operator {
    /// `GET /readyz`: status code and JSON body; `None` when it does not answer.
    pub fn readyz(&self) -> Option<(u16, serde_json::Value)> {
        let (code, body) = http_get(&self.health, "/readyz")?;
        Some((code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)))
    }

    /// Waits until `/readyz` answers 200; panics with its log after `within`.
    pub fn wait_ready(&mut self, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let last = self.readyz();
            if let Some((200, v)) = last {
                return v;
            }
            assert!(self.is_running(), "{} exited; its log:\n{}", self.name, self.log());
            assert!(Instant::now() < deadline, "{} not ready within {within:?}: last /readyz {last:?}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /metrics` (OpenMetrics text); empty when it does not answer.
    pub fn metrics(&self) -> String {
        http_get(&self.health, "/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// The value of the sample `series` (a metric name with its labels as rendered, e.g.
    /// `causeway_operator_leader` or `causeway_operator_objects{kind="Listener",ready="true"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL (a crash: no lease release, reconciles cut off), and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits up to `within` for it to exit (then SIGKILL). Its exit code, `None`
    /// when it had to be killed.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Its scratch directory (its log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(300);
            eprintln!(
                "----- {} ({}) log, last {} of {} lines -----\n{}\n----- end of {} log -----",
                self.name,
                self.health,
                lines.len() - from,
                lines.len(),
                lines[from..].join("\n"),
                self.name
            );
        }
    }
}

/// The value of the sample `series` in Prometheus/OpenMetrics `text` (see [`Operator::metric`]).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
