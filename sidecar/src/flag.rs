//! Waiting on boolean flags (`watch` channels) such as the shutdown signal.

use tokio::sync::watch;

/// Waits until a flag turns true (or its sender is gone). The guard `wait_for` returns is dropped
/// here, so callers can hold the future across awaits in `Send` tasks.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Waits until a flag turns false (or its sender is gone).
pub async fn until_false(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| !*v).await;
}
