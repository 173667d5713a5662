//! The sidecar's shutdown is bounded even when NATS is gone: `causeway dev` killed outright
//! sends SIGTERM to nats-server and the sidecars at the same moment.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use causeway_tests::NatsServer;
use support::*;

#[tokio::test]
async fn sigterm_exits_promptly_when_nats_is_gone() {
    let mut server = NatsServer::start();
    apply(&server, SHOP).await;
    let mut web = Sidecar::start(&server, "shop", "web", &[]).await;
    server.kill();
    // terminate() waits up to 20s, then kills: a hang shows as a slow or unclean exit.
    let started = Instant::now();
    let code = web.terminate();
    let took = started.elapsed();
    assert_eq!(code, Some(0), "clean exit:\n{}", web.logs());
    assert!(took < Duration::from_secs(10), "exit took {took:?}:\n{}", web.logs());
}
