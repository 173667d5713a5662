//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager): only the holder
//! reconciles. A replica that loses the lease, or cannot renew it for a whole lease duration,
//! stops and exits, so that it restarts with fresh caches and never reconciles beside a new
//! leader.
//!
//! A waiting replica also looks at the Lease every second: when its holder released it (a
//! leader stopped with SIGTERM), it takes it at once. kube-lease-manager alone reads the Lease
//! again only when the last renewal would have expired, so a graceful handover would take as long
//! as a crash.

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
    client: kube::Client,
    options: LeaseOptions,
}

/// What one step of waiting for the lease came to.
enum Waited {
    Leading,
    NotYet,
    Failed(String),
    Released,
}

impl Lease {
    /// Prepares the lease (creating it if missing).
    pub async fn new(client: kube::Client, o: &LeaseOptions) -> Result<Self, String> {
        let manager = Self::manager(client.clone(), o).await?;
        Ok(Self { manager, duration: o.duration, client, options: o.clone() })
    }

    async fn manager(client: kube::Client, o: &LeaseOptions) -> Result<LeaseManager, String> {
        LeaseManagerBuilder::new(client, &o.name)
            .with_namespace(&o.namespace)
            .with_identity(&o.identity)
            .with_duration(o.duration.as_secs().max(2))
            .with_grace(o.grace.as_secs().clamp(1, o.duration.as_secs().max(2) - 1))
            .with_field_manager("causeway-operator")
            .build()
            .await
            .map_err(|e| format!("lease {}/{}: {e}", o.namespace, o.name))
    }

    /// Resolves once this replica holds the lease; takes a released lease at once.
    pub async fn acquire(&mut self) {
        loop {
            let waited = tokio::select! {
                r = self.manager.changed() => match r {
                    Ok(true) => Waited::Leading,
                    Ok(false) => Waited::NotYet,
                    Err(e) => Waited::Failed(e.to_string()),
                },
                _ = self.released() => Waited::Released,
            };
            match waited {
                Waited::Leading => return,
                Waited::NotYet => {}
                Waited::Failed(e) => {
                    tracing::warn!(error = %e, "leader election: cannot reach the lease; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // The manager would sleep until the old holder's lease expires: start afresh
                // from what the Lease says now.
                Waited::Released => match Self::manager(self.client.clone(), &self.options).await {
                    Ok(m) => self.manager = m,
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: cannot reach the lease; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    }

    /// Resolves when the Lease has no holder (its holder released it), looking every second.
    async fn released(&self) {
        use k8s_openapi::api::coordination::v1::Lease as KubeLease;
        let api: kube::Api<KubeLease> = kube::Api::namespaced(self.client.clone(), &self.options.namespace);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(Some(l)) = api.get_opt(&self.options.name).await
                && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).is_none_or(str::is_empty)
            {
                return;
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
