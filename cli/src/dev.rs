//! `causeway dev`: the whole thing on a laptop.
//!
//! Starts a nats-server (JetStream on file storage under `./.causeway`, `sync_interval: always`),
//! applies `examples/`, starts one sidecar per Node and a demo app per Node that has an app
//! port, prints where everything listens, re-applies periodically (drift correction), and stops
//! everything cleanly on Ctrl-C or SIGTERM: apps and sidecars first, the server last. Its
//! children are tethered (see `tether.rs`): if `causeway dev` is killed outright, they get
//! SIGTERM and stop cleanly too.

use std::{
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::Duration,
};

use causeway_api::{crd::NodeSpec, quantity, registry::MANAGER_APPLY};
use causeway_operator::{
    jetstream::{Action, Reconciler, Spec},
    local::{self, LineResult, Options},
    manifest::{self, Loaded},
};
use clap::Args;
use tokio::process::Child;

use crate::{EXIT_INVALID, EXIT_NOT_READY, say, signal::shutdown_signal, tether};

/// Annotation on a Node: reply rules for its demo app, `TYPE=NODE:NEWTYPE,...`.
pub const DEMO_REPLY_ANNOTATION: &str = "causeway.dev/demo-reply";

/// Flags of `causeway dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Manifests to apply (files or directories).
    #[arg(short = 'f', long = "filename", default_value = "examples")]
    pub paths: Vec<PathBuf>,
    /// Where nats-server keeps its data and Causeway its logs.
    #[arg(long, default_value = ".causeway")]
    pub data: PathBuf,
    /// NATS client port.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// NATS monitoring port.
    #[arg(long, default_value_t = 8222)]
    pub monitor_port: u16,
    /// Port of the first sidecar; the next Nodes get the following ports.
    #[arg(long, default_value_t = 4480)]
    pub sidecar_port: u16,
    /// The nats-server binary (default: $NATS_SERVER_BIN, .tools/bin/nats-server, then PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Do not start the demo apps.
    #[arg(long)]
    pub no_demo_apps: bool,
    /// How often to re-apply the manifests (restores objects changed behind Causeway's back).
    #[arg(long, default_value = "30s")]
    pub resync: quantity::Duration,
    /// Run nats-server in JWT mode (an operator, an account and a system account generated into
    /// DATA/secure and kept across restarts) and give every sidecar its own Node's credential,
    /// so NATS itself enforces node isolation (docs/security.md).
    #[arg(long)]
    pub secure: bool,
    /// With --secure: lifetime of a node credential (issued again at half-life).
    #[arg(long, default_value = "1h")]
    pub credentials_ttl: quantity::Duration,
}

struct Proc {
    what: String,
    child: Child,
}

async fn stop_all(mut procs: Vec<Proc>) {
    use nix::{sys::signal, unistd::Pid};
    // Apps and sidecars first, the server last, so sidecars can nak in-flight work.
    procs.reverse();
    for p in &mut procs {
        if let Some(id) = p.child.id() {
            let _ = signal::kill(Pid::from_raw(id as i32), signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{} did not stop in 10s; killing it", p.what);
                let _ = p.child.kill().await;
            }
        }
    }
}

/// One resync: the batch check, then an apply that prints only what changed or is not ready.
async fn resync_once(reconciler: &Reconciler, objects: &[Loaded]) {
    match manifest::check_batch(reconciler, objects).await {
        Ok(errs) if !errs.is_empty() => {
            for e in &errs {
                eprintln!("error: {e}");
            }
            return;
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: resync: {e}");
            return;
        }
    }
    let applied = local::apply_each(reconciler, objects, Options::default(), |l| {
        let changed = match &l.result {
            LineResult::Applied(o) => o.action != Action::Unchanged || !o.readiness.ready,
            _ => true,
        };
        if changed {
            say(&format!("resync: {l}"));
        }
    })
    .await;
    if let Err(e) = applied {
        eprintln!("error: resync: {e}");
    }
}

/// Issues what is due (new nodes, changed rights, half-life) and says so.
async fn issue_credentials(reconciler: &Reconciler, files: &local::CredentialFiles, prefix: &str) {
    match files.sync(reconciler, |n| n.meta.manager == MANAGER_APPLY).await {
        Ok(issued) => {
            for f in issued {
                say(&format!("{prefix}credentials {} {} -> {}", f.node, f.reason, f.path.display()));
            }
        }
        Err(e) => eprintln!("error: issuing node credentials: {e}"),
    }
}

fn version_ok(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = text.trim().rsplit('v').next()?.to_owned();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next()?, parts.next()?);
    (major > 2 || (major == 2 && minor >= 11)).then_some(v)
}

/// Finds a nats-server >= 2.11.
pub fn find_nats_server(explicit: Option<&Path>) -> Result<(PathBuf, String), String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        candidates.push(p.into());
    }
    candidates.push(PathBuf::from(".tools/bin/nats-server"));
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/causeway → <repo>/.tools/bin/nats-server
        for dir in exe.ancestors().skip(1).take(4) {
            candidates.push(dir.join(".tools/bin/nats-server"));
        }
    }
    candidates.push(PathBuf::from("nats-server"));
    for c in &candidates {
        if let Some(v) = version_ok(c) {
            return Ok((c.clone(), v));
        }
    }
    Err("no nats-server >= 2.11 found (looked at --nats-server, $NATS_SERVER_BIN, .tools/bin and PATH): run scripts/setup.sh, which installs one into .tools/".into())
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn sibling_bin(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.join(name);
    p.exists().then_some(p)
}

async fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub async fn run(a: DevArgs) -> ExitCode {
    // From here on Ctrl-C and SIGTERM are caught: they stop the environment once it is up.
    let shutdown = shutdown_signal();
    let (objects, errs) = manifest::load(&a.paths);
    if !errs.is_empty() {
        for e in &errs {
            eprintln!("error: {e}");
        }
        if errs.iter().any(|e| e.document == 0) {
            eprintln!("hint: run causeway dev from the repository root, or pass -f DIR with your manifests");
        }
        return ExitCode::from(EXIT_INVALID);
    }
    // Every child is started through this binary's `__child`, so it dies with us.
    let causeway = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find the causeway binary itself: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    let (server, version) = match find_nats_server(a.nats_server.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    for (port, flag) in [(a.nats_port, "--nats-port"), (a.monitor_port, "--monitor-port")] {
        if !port_free(port) {
            eprintln!("error: port {port} is in use (another nats-server or causeway dev?): stop it or pass {flag}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    }
    let logs = a.data.join("logs");
    if let Err(e) = std::fs::create_dir_all(&logs) {
        eprintln!("error: cannot create {}: {e}", logs.display());
        return ExitCode::from(EXIT_NOT_READY);
    }
    let store = std::path::absolute(a.data.join("jetstream")).unwrap_or_else(|_| a.data.join("jetstream"));
    let conf = a.data.join("nats.conf");
    // sync_interval: always — acknowledged writes are on disk (see docs/durability.md).
    let mut conf_text = format!(
        "server_name: causeway-dev\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
        a.nats_port,
        a.monitor_port,
        store.display()
    );
    // --secure: a trust chain kept under DATA/secure, an admin credential for this process, and
    // one credential file per Node for its sidecar.
    let secure = if a.secure {
        let dir = a.data.join("secure");
        match causeway_operator::identity::DevTrust::load_or_create(&dir) {
            Ok(trust) => {
                conf_text.push_str(&trust.server_config());
                let admin = dir.join("admin.creds");
                if let Err(e) = local::write_private(&admin, &trust.admin_creds()) {
                    eprintln!("error: cannot write {}: {e}", admin.display());
                    return ExitCode::from(EXIT_NOT_READY);
                }
                let files = local::CredentialFiles::new(dir.join("creds"), trust.issuer(), a.credentials_ttl.get());
                Some((admin, files))
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_NOT_READY);
            }
        }
    } else {
        None
    };
    if let Err(e) = std::fs::write(&conf, conf_text) {
        eprintln!("error: cannot write {}: {e}", conf.display());
        return ExitCode::from(EXIT_NOT_READY);
    }
    let mut procs = Vec::new();
    let log_file = |name: &str| std::fs::File::create(logs.join(name)).map(Stdio::from).unwrap_or(Stdio::null());
    match tether::command(&causeway, &server)
        .arg("-c")
        .arg(&conf)
        .stdout(log_file("nats-server.log"))
        .stderr(log_file("nats-server.err.log"))
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => procs.push(Proc { what: "nats-server".into(), child }),
        Err(e) => {
            eprintln!("error: cannot start {}: {e}", server.display());
            return ExitCode::from(EXIT_NOT_READY);
        }
    }
    let url = format!("nats://127.0.0.1:{}", a.nats_port);
    if !wait_for_port(a.nats_port, Duration::from_secs(15)).await {
        eprintln!("error: nats-server did not start; see {}", logs.join("nats-server.err.log").display());
        stop_all(procs).await;
        return ExitCode::from(EXIT_NOT_READY);
    }
    let connected = match &secure {
        Some((admin, _)) => match async_nats::ConnectOptions::with_credentials_file(admin).await {
            Ok(o) => o.connect(&url).await,
            Err(e) => {
                eprintln!("error: {}: {e}", admin.display());
                stop_all(procs).await;
                return ExitCode::from(EXIT_NOT_READY);
            }
        },
        None => async_nats::connect(&url).await,
    };
    let client = match connected {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot connect to {url}: {e}");
            stop_all(procs).await;
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    let reconciler = Reconciler::new(client.clone(), MANAGER_APPLY).with_node_credentials(secure.is_some());
    println!(
        "nats-server v{version} on {url} (monitoring http://127.0.0.1:{}, data {})",
        a.monitor_port,
        store.display()
    );
    match manifest::check_batch(&reconciler, &objects).await {
        Ok(errs) if !errs.is_empty() => {
            for e in &errs {
                eprintln!("error: {e}");
            }
            eprintln!("{} invalid manifest problem(s); nothing was applied", errs.len());
            stop_all(procs).await;
            return ExitCode::from(EXIT_INVALID);
        }
        Ok(_) => {}
        Err(e) => eprintln!("error: cannot check the manifests against the registry: {e}"),
    }
    if let Err(e) = local::apply_each(&reconciler, &objects, Options::default(), |l| say(&format!("  {l}"))).await {
        eprintln!("error: apply failed: {e}");
    }

    if let Some((_, files)) = &secure {
        issue_credentials(&reconciler, files, "  ").await;
    }

    let nodes: Vec<(&Loaded, &NodeSpec)> = objects
        .iter()
        .filter_map(|l| match &l.object.spec {
            Spec::Node(n) => Some((l, n)),
            _ => None,
        })
        .collect();
    let sidecar = sibling_bin("causeway-sidecar");
    let mut table = Vec::new();
    for (i, (l, spec)) in nodes.iter().enumerate() {
        let (ns, name) = (&l.object.meta.namespace, &l.object.meta.name);
        let port = a.sidecar_port + i as u16;
        let mut line = format!("  sidecar {:<16} http://127.0.0.1:{port}", format!("{ns}/{name}"));
        if let Some(bin) = &sidecar {
            let mut cmd = tether::command(&causeway, bin);
            cmd.env("CAUSEWAY_NODE", name.as_str())
                .env("CAUSEWAY_NAMESPACE", ns.as_str())
                .env("CAUSEWAY_NATS_URL", &url)
                .env("CAUSEWAY_PORT", port.to_string())
                .stdout(log_file(&format!("sidecar-{ns}-{name}.log")))
                .stderr(log_file(&format!("sidecar-{ns}-{name}.err.log")))
                .kill_on_drop(true);
            if let Some(p) = spec.app.port {
                cmd.env("CAUSEWAY_APP_PORT", p.to_string());
            }
            if let Some((_, files)) = &secure {
                cmd.env("CAUSEWAY_NATS_CREDS", files.path(ns, name)).env("CAUSEWAY_NATS_CREDS_RELOAD", "2s");
            }
            match cmd.spawn() {
                Ok(child) => procs.push(Proc { what: format!("sidecar {ns}/{name}"), child }),
                Err(e) => line.push_str(&format!("  (failed to start: {e})")),
            }
        } else {
            line.push_str("  (not started: causeway-sidecar is not built next to causeway)");
        }
        if let Some(app_port) = spec.app.port {
            line.push_str(&format!("  -> app 127.0.0.1:{app_port}"));
            if !a.no_demo_apps {
                let rules = l.annotations.get(DEMO_REPLY_ANNOTATION).cloned().unwrap_or_default();
                let mut cmd = tether::command(&causeway, &causeway);
                cmd.args(["demo-app", "--name", &format!("{ns}/{name}"), "--port", &app_port.to_string()]);
                match crate::demo_app::parse_rules(&rules) {
                    Ok(rs) => {
                        for (t, n, nt) in rs {
                            cmd.arg("--reply").arg(format!("{t}={n}:{nt}"));
                        }
                    }
                    Err(e) => eprintln!("warning: {ns}/{name}: annotation {DEMO_REPLY_ANNOTATION}: {e}"),
                }
                cmd.kill_on_drop(true);
                match cmd.spawn() {
                    Ok(child) => {
                        procs.push(Proc { what: format!("demo app {ns}/{name}"), child });
                        line.push_str(" (demo app)");
                    }
                    Err(e) => line.push_str(&format!(" (demo app failed: {e})")),
                }
            }
        }
        table.push(line);
    }
    println!("Causeway dev is up. Ctrl-C stops everything. Logs in {}", logs.display());
    match &secure {
        Some(_) => println!(
            "Node isolation: enforced by NATS (JWT mode; each sidecar has its own Node's credential, in {})",
            a.data.join("secure/creds").display()
        ),
        None => println!(
            "Node isolation: not enforced by NATS (one shared connection); run with --secure to have NATS enforce it"
        ),
    }
    for l in &table {
        println!("{l}");
    }
    if !nodes.is_empty() {
        // Suggest a send that a listener of the manifests will deliver: its inbox and first type.
        let (target, event_type) = objects
            .iter()
            .find_map(|l| match &l.object.spec {
                Spec::Listener(s) => {
                    Some((s.source.inbox.clone()?.to_string(), s.types.first().map(|t| t.to_string())?))
                }
                _ => None,
            })
            .filter(|(_, t)| !t.ends_with(".*"))
            .unwrap_or_else(|| (nodes[0].0.object.meta.name.to_string(), "hello".into()));
        println!("Try:");
        println!(
            "  curl -s -XPOST localhost:{}/v1/nodes/{target}/events -H 'content-type: application/json' -d '{{\"type\":\"{event_type}\",\"payload\":{{\"orderId\":\"123\"}}}}'",
            a.sidecar_port
        );
    }
    let resync = a.resync.get().max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(resync);
    tick.tick().await;
    // One shutdown future for the whole run: a signal that came during start-up or a resync
    // is kept, not lost with a future dropped at the end of a select.
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                // Re-read the manifests so edits are picked up; invalid edits are reported and skipped.
                let (objs, errs) = manifest::load(&a.paths);
                for e in &errs { eprintln!("error: {e}"); }
                if errs.is_empty() { resync_once(&reconciler, &objs).await; }
                if let Some((_, files)) = &secure { issue_credentials(&reconciler, files, "resync: ").await; }
            }
        }
    }
    say("stopping…");
    stop_all(procs).await;
    say(&format!("stopped; data kept in {}", a.data.display()));
    ExitCode::SUCCESS
}
