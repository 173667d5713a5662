//! `causeway-sidecar`: the localhost HTTP bridge between an app and the Causeway event space.
//!
//! - [`config`]: configuration from the environment;
//! - [`server`]: the hyper server and router; [`routes`]: one file per resource;
//! - [`registry`]: name resolution through `CW_REGISTRY`;
//! - [`event`], [`publish`], [`blob`]: request → envelope → JetStream, and back;
//! - [`nats`]: the connection, resilient writes and batched direct gets; [`creds`]: the
//!   NATS credential, reloaded when it changes;
//! - [`conditional`]: RFC 9110 conditional requests; [`acktoken`]: signed ack tokens;
//! - [`push`]: push delivery to the app; [`access`]: the node's access policy;
//! - [`deadletters`]: list, show and replay a listener's dead letters, and `autoReplay`;
//! - [`schemas`]: typed events, checked against their JSON Schemas;
//! - [`metrics`], [`error`], [`http`], [`state`]: the plumbing.
#![forbid(unsafe_code)]

pub mod access;
pub mod acktoken;
pub mod blob;
pub mod clock;
pub mod conditional;
pub mod config;
pub mod creds;
pub mod deadletters;
pub mod error;
pub mod event;
pub mod flag;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod publish;
pub mod push;
pub mod registry;
pub mod routes;
pub mod schemas;
pub mod server;
pub mod state;
pub mod trace;

use std::sync::Arc;

use tokio::{net::TcpListener, sync::watch};

use crate::{config::Config, state::State};

/// Time after the grace period for the last naks and the final flush to NATS.
const TEARDOWN_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the sidecar on `listener` until `shutdown` turns true: the registry watch, the app's
/// health check, push delivery and the HTTP server. Returns after in-flight work has finished
/// or the grace period has passed, whatever NATS is doing.
pub async fn serve(config: Config, listener: TcpListener, shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let link = nats::Link::new();
    let creds = match &config.nats_auth {
        config::NatsAuth::Creds(p) => {
            Some(creds::Creds::load(p).map_err(|e| format!("{}: {e}", config::ENV_NATS_CREDS))?)
        }
        _ => None,
    };
    let client = nats::connect(&config, link.clone(), creds.clone()).await?;
    let grace = config.grace_period;
    let reload = config.creds_reload;
    let state = State::new(config, client.clone(), link.clone(), creds.clone(), shutdown.clone());
    if let Some(c) = creds {
        tokio::spawn(c.watch(client.clone(), reload, state.metrics.credentials_expiry.clone(), shutdown.clone()));
    }
    let registry =
        tokio::spawn(registry::follow(state.registry.clone(), client.clone(), link.clone(), shutdown.clone()));
    let health = tokio::spawn(push::watch_app_health(state.clone()));
    let pushing = tokio::spawn(push::supervise(state.clone()));
    let replaying = tokio::spawn(deadletters::auto_replay(state.clone()));
    let clock = tokio::spawn(clock::keep(state.clone()));
    let recording = tokio::spawn(trace::keep_flushing(state.clone()));
    let probes = match state.config.health_port {
        None => None,
        Some(port) => {
            // Dual-stack where the host has IPv6, else IPv4 only.
            let l = match TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)).await {
                Ok(l) => l,
                Err(_) => TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
                    .await
                    .map_err(|e| format!("cannot listen on the health port {port}: {e}"))?,
            };
            let mut stop = shutdown.clone();
            Some(tokio::spawn(server::run_health(l, state.clone(), async move { flag::until_true(&mut stop).await })))
        }
    };
    let mut stop = shutdown.clone();
    let signalled = Arc::new(std::sync::OnceLock::new());
    let at = signalled.clone();
    server::run(listener, state.clone(), async move {
        flag::until_true(&mut stop).await;
        let _ = at.set(std::time::Instant::now());
    })
    .await;
    let stopping = signalled.get().copied().unwrap_or_else(std::time::Instant::now);
    if let Some(p) = probes {
        p.abort();
    }
    // Push workers drain within the grace period (it started with the signal, as the server's
    // did), then nak what is left. Everything here talks to NATS, which may be unreachable: it
    // gets the grace period plus a little for those naks, never more.
    let left = (grace + TEARDOWN_MARGIN).saturating_sub(stopping.elapsed());
    let teardown = async {
        let _ = pushing.await;
        let _ = replaying.await;
        let _ = registry.await;
        let _ = health.await;
        let _ = clock.await;
        let _ = recording.await;
        // The last deliveries' records, written after the push workers stopped.
        state.traces.flush(&state.client).await;
        if state.nats_connected() {
            let _ = tokio::time::timeout(TEARDOWN_MARGIN, state.client.flush()).await;
        }
    };
    if tokio::time::timeout(left, teardown).await.is_err() {
        tracing::warn!("NATS did not let the sidecar finish in time; stopping anyway");
    }
    Ok(())
}

/// Turns SIGTERM and SIGINT into the shutdown signal.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let tx = Arc::new(tx);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}
