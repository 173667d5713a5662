//! `causeway-sidecar`: the localhost HTTP bridge between an app and the Causeway event space.
//!
//! - [`config`]: configuration from the environment;
//! - [`server`]: the hyper server and router; [`routes`]: one file per resource;
//! - [`registry`]: name resolution through `CW_REGISTRY`;
//! - [`event`], [`publish`], [`blob`]: request → envelope → JetStream, and back;
//! - [`push`]: push delivery to the app;
//! - [`metrics`], [`error`], [`http`], [`state`]: the plumbing.
#![forbid(unsafe_code)]

pub mod blob;
pub mod clock;
pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod metrics;
pub mod publish;
pub mod push;
pub mod registry;
pub mod routes;
pub mod server;
pub mod state;

use std::sync::Arc;

use tokio::{net::TcpListener, sync::watch};

use crate::{config::Config, state::State};

/// Connects to NATS with the configured credentials. The first connection is retried in the
/// background, so the sidecar serves `/healthz` (and a failing `/readyz`) while NATS is away.
pub async fn connect(config: &Config) -> Result<async_nats::Client, String> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("causeway-sidecar {}", config.sender()))
        .retry_on_initial_connect()
        .max_reconnects(None);
    opts = match &config.nats_auth {
        config::NatsAuth::None => opts,
        config::NatsAuth::Creds(p) => {
            opts.credentials_file(p).await.map_err(|e| format!("{}: {e}", config::ENV_NATS_CREDS))?
        }
        config::NatsAuth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
        config::NatsAuth::Token(t) => opts.token(t.clone()),
    };
    if config.nats_tls.required {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &config.nats_tls.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.nats_tls.client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let addrs: Vec<async_nats::ServerAddr> = config.nats_urls.iter().filter_map(|u| u.parse().ok()).collect();
    opts.connect(addrs).await.map_err(|e| format!("NATS: {e}"))
}

/// Runs the sidecar on `listener` until `shutdown` turns true: the registry watch, the app's
/// health check, push delivery and the HTTP server. Returns after in-flight work has finished
/// or the grace period has passed.
pub async fn serve(config: Config, listener: TcpListener, shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let client = connect(&config).await?;
    let state = State::new(config, client, shutdown.clone());
    let registry = tokio::spawn(registry::follow(state.registry.clone(), state.js.clone(), shutdown.clone()));
    let health = tokio::spawn(push::watch_app_health(state.clone()));
    let pushing = tokio::spawn(push::supervise(state.clone()));
    let clock = tokio::spawn(clock::keep(state.clone()));
    let mut stop = shutdown.clone();
    server::run(listener, state.clone(), async move {
        let _ = crate::state::until_true(&mut stop).await;
    })
    .await;
    let _ = pushing.await;
    let _ = registry.await;
    let _ = health.await;
    let _ = clock.await;
    // Bounded: with NATS gone (e.g. stopped at the same moment as the sidecar), a flush waits
    // for a reconnect that may never come, and the sidecar would never exit.
    let _ = tokio::time::timeout(FINAL_FLUSH, state.client.flush()).await;
    Ok(())
}

/// How long the last flush before exit may take.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

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
