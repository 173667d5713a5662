//! `causeway dev`: starts nats-server with durable settings, applies the examples, resyncs,
//! stops everything on SIGTERM, takes its children with it when it is killed, and keeps the
//! data for the next start.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use async_nats::jetstream;
use causeway_tests::{TempDir, bin, examples_dir, free_port, write_file};

struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    /// The examples, without demo apps (their app ports are fixed).
    fn start(data: &TempDir, nats: u16, monitor: u16) -> Self {
        Self::start_with(&examples_dir(), data, nats, monitor, &["--no-demo-apps"])
    }

    fn start_with(manifests: &Path, data: &TempDir, nats: u16, monitor: u16, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("causeway"))
            .args(["dev", "-f"])
            .arg(manifests)
            .arg("--data")
            .arg(data.path())
            .args(["--nats-port", &nats.to_string(), "--monitor-port", &monitor.to_string()])
            .args(["--sidecar-port", &free_port().to_string(), "--resync", "1s"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start causeway dev");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {needle:?} in {within:?}; output so far:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn terminate(mut self) -> i32 {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(std::time::Instant::now() < deadline, "causeway dev did not stop within 30s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A failed test must not leave `causeway dev` running (and, through it, its children).
impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn dev_runs_resyncs_stops_cleanly_and_keeps_data() {
    let data = TempDir::new("cw-dev");
    let (nats, monitor) = (free_port(), free_port());
    let mut dev = Dev::start(&data, nats, monitor);
    dev.wait_for("Causeway dev is up", Duration::from_secs(60));
    dev.wait_for("Try:", Duration::from_secs(10));
    let applied = dev.seen.join("\n");
    assert!(applied.contains("EventStore shop/orders created"), "{applied}");
    assert!(applied.contains("Listener shop/reserve-stock created"), "{applied}");
    let conf = std::fs::read_to_string(data.path().join("nats.conf")).unwrap();
    assert!(conf.contains("sync_interval: always"), "{conf}");

    // One sidecar per Node, each serving on the port it printed.
    let sidecars: Vec<String> = dev
        .seen
        .iter()
        .filter(|l| l.trim_start().starts_with("sidecar shop/"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")).map(str::to_owned))
        .collect();
    assert_eq!(sidecars.len(), 3, "{:?}", dev.seen);
    let http = reqwest::Client::new();
    causeway_tests::eventually(Duration::from_secs(20), "the orders sidecar is ready", || {
        let (http, url) = (http.clone(), format!("{}/readyz", sidecars[0]));
        async move { http.get(url).send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    let r = http
        .post(format!("{}/v1/stores/orders/subjects/order-1/events", sidecars[0]))
        .json(&serde_json::json!({"type": "order-placed", "payload": {"orderId": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);

    let url = format!("nats://127.0.0.1:{nats}");
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    // Drift: a stream deleted behind Causeway's back comes back with the next resync.
    js.delete_stream("CW_ES_shop_dead-letters").await.unwrap();
    dev.wait_for("resync: EventStore shop/dead-letters created", Duration::from_secs(15));
    assert!(js.get_stream("CW_ES_shop_dead-letters").await.is_ok());

    assert_eq!(dev.terminate(), 0, "causeway dev exits 0 on SIGTERM");
    assert!(std::net::TcpStream::connect(("127.0.0.1", nats)).is_err(), "nats-server stopped with dev");

    let mut again = Dev::start(&data, nats, monitor);
    again.wait_for("Causeway dev is up", Duration::from_secs(60));
    let applied = again.seen.join("\n");
    assert!(applied.contains("EventStore shop/orders unchanged"), "{applied}");
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut s = js.get_stream("CW_ES_shop_orders").await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 1, "events survive a restart of dev");
    assert_eq!(again.terminate(), 0);
}

#[test]
fn dev_refuses_a_busy_port_with_a_clear_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let data = TempDir::new("cw-dev");
    let r = causeway_tests::causeway(&[
        "dev",
        "-f",
        &examples_dir().display().to_string(),
        "--data",
        &data.path().display().to_string(),
        "--nats-port",
        &port.to_string(),
        "--monitor-port",
        &free_port().to_string(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(&format!("port {port} is in use")) && r.stderr.contains("--nats-port"), "{}", r.stderr);
}

/// Children tethered with the parent-death signal, which is Linux's (as are /proc and subreapers).
#[cfg(target_os = "linux")]
mod killed {
    use std::time::Instant;

    use nix::{
        sys::{
            signal::Signal,
            wait::{WaitPidFlag, WaitStatus, waitpid},
        },
        unistd::Pid,
    };

    use super::*;

    /// `(pid, command line)` of the processes whose parent is `parent`.
    fn children_of(parent: u32) -> Vec<(u32, String)> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
                after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(parent)
            })
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                (pid, String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_owned())
            })
            .collect()
    }

    const KILL_SHOP: &str = "\
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: kill}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: front, namespace: kill}
spec:
  app: {port: APP_PORT}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: back, namespace: kill}
";

    #[tokio::test]
    async fn dev_killed_with_sigkill_takes_its_children_along_and_keeps_data() {
        // Orphans are re-parented to this process, so it sees them exit (and reaps them).
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let manifests = TempDir::new("cw-dev-manifests");
        let app_port = free_port();
        write_file(&manifests, "kill.yaml", &KILL_SHOP.replace("APP_PORT", &app_port.to_string()));
        let data = TempDir::new("cw-dev");
        let (nats, monitor) = (free_port(), free_port());
        let mut dev = Dev::start_with(manifests.path(), &data, nats, monitor, &[]);
        dev.wait_for("Causeway dev is up", Duration::from_secs(60));
        dev.wait_for("sidecar kill/back", Duration::from_secs(10));
        let sidecar_ports: Vec<u16> = dev
            .seen
            .iter()
            .filter(|l| l.trim_start().starts_with("sidecar kill/"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("http://127.0.0.1:")?.parse().ok()))
            .collect();
        assert_eq!(sidecar_ports.len(), 2, "{:?}", dev.seen);
        let url = format!("nats://127.0.0.1:{nats}");
        let js = jetstream::new(async_nats::connect(&url).await.unwrap());
        js.publish("cw.kill.es.orders.order-1", "kept".into()).await.unwrap().await.unwrap();

        // Its children, once each has replaced `causeway __child` with its program.
        let pid = dev.child.id();
        let conf = data.path().join("nats.conf").display().to_string();
        let children =
            causeway_tests::eventually(Duration::from_secs(20), "nats-server, 2 sidecars, 1 demo app", || {
                let c = children_of(pid);
                let servers = c.iter().filter(|(_, cmd)| cmd.contains("nats-server") && cmd.contains(&conf)).count();
                let sidecars = c.iter().filter(|(_, cmd)| cmd.ends_with("causeway-sidecar")).count();
                let apps = c
                    .iter()
                    .filter(|(_, cmd)| cmd.contains(&format!("demo-app --name kill/front --port {app_port}")))
                    .count();
                let ready = c.len() == 4 && (servers, sidecars, apps) == (1, 2, 1);
                async move { ready.then_some(c) }
            })
            .await;
        // Everything is up before the kill (a sidecar is ready once NATS, the registry and its app are).
        let http = reqwest::Client::new();
        for port in &sidecar_ports {
            causeway_tests::eventually(Duration::from_secs(20), &format!("sidecar on {port} ready"), || {
                let (http, url) = (http.clone(), format!("http://127.0.0.1:{port}/readyz"));
                async move { http.get(url).send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
            })
            .await;
        }

        dev.child.kill().unwrap(); // SIGKILL: no handler runs, no cleanup in causeway dev
        dev.child.wait().unwrap();
        // Every child gets SIGTERM from the kernel and stops on its own, cleanly.
        let deadline = Instant::now() + Duration::from_secs(10);
        for (child, cmd) in &children {
            let status = loop {
                match waitpid(Pid::from_raw(*child as i32), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {
                        assert!(
                            Instant::now() < deadline,
                            "{cmd} (pid {child}) still runs 10s after causeway dev was killed"
                        );
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(status) => break status,
                    Err(e) => panic!("{cmd} (pid {child}) is not ours to wait for: {e}"),
                }
            };
            assert!(
                matches!(status, WaitStatus::Exited(_, 0) | WaitStatus::Signaled(_, Signal::SIGTERM, _)),
                "{cmd} stopped with {status:?}, not by SIGTERM"
            );
        }
        for port in [nats, monitor, app_port].iter().chain(&sidecar_ports) {
            assert!(std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(), "port {port} is still served");
        }

        // The data survived: the same data dir and ports come up with the store and its event.
        let mut again = Dev::start_with(manifests.path(), &data, nats, monitor, &["--no-demo-apps"]);
        again.wait_for("Causeway dev is up", Duration::from_secs(60));
        let applied = again.seen.join("\n");
        assert!(applied.contains("EventStore kill/orders unchanged"), "{applied}");
        let js = jetstream::new(async_nats::connect(&url).await.unwrap());
        let mut s = js.get_stream("CW_ES_kill_orders").await.unwrap();
        assert_eq!(s.info().await.unwrap().state.messages, 1, "the event survives");
        assert_eq!(again.terminate(), 0);
    }
}

#[test]
fn dev_refuses_a_listener_its_node_cannot_serve_and_stops_its_server() {
    let manifests = TempDir::new("cw-dev-manifests");
    let f = write_file(
        &manifests,
        "bad.yaml",
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: inv, namespace: bad}\nspec:\n  delivery: {ackWait: 5s}\n---\napiVersion: causeway.dev/v1alpha1\nkind: Listener\nmetadata: {name: slow, namespace: bad}\nspec:\n  node: inv\n  source: {inbox: inv}\n",
    );
    let data = TempDir::new("cw-dev");
    let nats = free_port();
    let r = causeway_tests::causeway(&[
        "dev",
        "-f",
        &manifests.path().display().to_string(),
        "--data",
        &data.path().display().to_string(),
        "--nats-port",
        &nats.to_string(),
        "--monitor-port",
        &free_port().to_string(),
        "--no-demo-apps",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "{f}: document 2 (Listener bad/slow): spec.delivery.timeout: push timeout 10s must be shorter than ackWait 5s"
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("created"), "nothing is applied: {}", r.stdout);
    assert!(std::net::TcpStream::connect(("127.0.0.1", nats)).is_err(), "its nats-server is stopped");
}

/// `causeway dev --secure`: nats-server in JWT mode, every sidecar on its own Node's credential.
/// The examples work as before; a node's credential file cannot publish as another node; an
/// anonymous client is refused; a restart keeps the trust and the data.
#[tokio::test]
async fn dev_secure_runs_every_sidecar_on_its_own_credential() {
    let data = TempDir::new("cw-dev-secure");
    let (nats, monitor) = (free_port(), free_port());
    let mut dev = Dev::start_with(&examples_dir(), &data, nats, monitor, &["--no-demo-apps", "--secure"]);
    let up = dev.wait_for("Node isolation:", Duration::from_secs(60));
    assert!(up.contains("enforced by NATS"), "{up}");
    dev.wait_for("Try:", Duration::from_secs(10));
    let said = dev.seen.join("\n");
    for node in ["orders", "inventory", "shipping"] {
        assert!(said.contains(&format!("credentials shop/{node} Issued")), "{said}");
    }
    let conf = std::fs::read_to_string(data.path().join("nats.conf")).unwrap();
    assert!(conf.contains("resolver: MEMORY") && conf.contains("operator: "), "{conf}");
    let url = format!("nats://127.0.0.1:{nats}");
    assert!(async_nats::connect(&url).await.is_err(), "no anonymous access in JWT mode");

    let sidecars: Vec<String> = dev
        .seen
        .iter()
        .filter(|l| l.trim_start().starts_with("sidecar shop/"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")).map(str::to_owned))
        .collect();
    let http = reqwest::Client::new();
    causeway_tests::eventually(Duration::from_secs(20), "the orders sidecar is ready", || {
        let (http, url) = (http.clone(), format!("{}/readyz", sidecars[0]));
        async move { http.get(url).send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    for (path, body) in [
        ("/v1/stores/orders/subjects/order-1/events", serde_json::json!({"type": "order-placed"})),
        ("/v1/nodes/inventory/events", serde_json::json!({"type": "order-placed", "payload": {"orderId": "1"}})),
    ] {
        let r = http.post(format!("{}{path}", sidecars[0])).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 202, "{path}: {:?}", r.text().await);
    }

    // The orders node's own file: a send as itself is stored, one as inventory never is.
    let creds = data.path().join("secure/creds/shop/orders.creds");
    let c = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .unwrap()
        .custom_inbox_prefix("_INBOX.shop.orders")
        .connect(&url)
        .await
        .unwrap();
    let js = jetstream::new(c);
    assert!(js.publish("cw.shop.to.inventory.shop.orders.x", "{}".into()).await.unwrap().await.is_ok());
    let forged = tokio::time::timeout(
        Duration::from_secs(1),
        js.publish("cw.shop.to.inventory.shop.inventory.x", "{}".into()).await.unwrap(),
    )
    .await;
    assert!(!matches!(forged, Ok(Ok(_))), "{forged:?}");

    assert_eq!(dev.terminate(), 0);
    // The trust is kept: the same files work after a restart, and nothing is issued again.
    let mut again = Dev::start_with(&examples_dir(), &data, nats, monitor, &["--no-demo-apps", "--secure"]);
    again.wait_for("Causeway dev is up", Duration::from_secs(60));
    assert!(!again.seen.join("\n").contains("credentials shop/"), "{:?}", again.seen);
    let c = async_nats::ConnectOptions::with_credentials_file(&creds).await.unwrap().connect(&url).await;
    assert!(c.is_ok(), "the credential of the first run still works");
    assert_eq!(again.terminate(), 0);
}
