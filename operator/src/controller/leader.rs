//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager): only the holder
//! reconciles. A replica that loses the lease, or cannot renew it for a whole lease duration,
//! stops and exits, so that it restarts with fresh caches and never reconciles beside a new
//! leader.

use std::time::{Duration, Instant};

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};

/// Where the lease lives and who we are.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// Lease name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How long before expiry it is renewed.
    pub grace: Duration,
}

/// A held or awaited lease.
pub struct Lease {
    manager: LeaseManager,
    duration: Duration,
}

impl Lease {
    /// Prepares the lease (creating it if missing).
    pub async fn new(client: kube::Client, o: &LeaseOptions) -> Result<Self, String> {
        let manager = LeaseManagerBuilder::new(client, &o.name)
            .with_namespace(&o.namespace)
            .with_identity(&o.identity)
            .with_duration(o.duration.as_secs().max(2))
            .with_grace(o.grace.as_secs().clamp(1, o.duration.as_secs().max(2) - 1))
            .with_field_manager("causeway-operator")
            .build()
            .await
            .map_err(|e| format!("lease {}/{}: {e}", o.namespace, o.name))?;
        Ok(Self { manager, duration: o.duration })
    }

    /// Resolves once this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.manager.changed().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot reach the lease; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Keeps the lease renewed; resolves when it is lost (taken, or not renewed for a whole
    /// lease duration).
    pub async fn lost(&self) {
        let mut failing_since: Option<Instant> = None;
        loop {
            match self.manager.changed().await {
                Ok(false) => return,
                Ok(true) => failing_since = None,
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(error = %e, "leader election: renewing the lease failed");
                    if since.elapsed() >= self.duration {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Gives the lease up, so another replica takes over at once.
    pub async fn release(&self) {
        if let Err(e) = self.manager.release().await {
            tracing::warn!(error = %e, "could not release the lease; it expires by itself");
        }
    }
}
