//! The signals that stop a long-running subcommand (`dev`, `demo-app`).

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// A future that resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this
/// is called, not when the future is first polled: call it first thing and keep the future, so
/// a signal that comes during start-up or between polls is not lost (nor, before the handlers
/// exist, does it kill the process without cleaning up).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// A shutdown signal that many tasks can wait for (clone it freely).
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Installs the SIGINT/SIGTERM handlers now, and fires when either signal comes.
    pub fn install() -> Self {
        let signalled = shutdown_signal();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            signalled.await;
            tracing::info!("stop signal received; finishing in-flight work");
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// Resolves once the signal came.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}
