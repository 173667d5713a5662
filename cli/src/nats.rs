//! How the CLI connects to NATS: one set of flags for every subcommand.

use std::path::PathBuf;

use clap::Args;

/// NATS connection flags.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long = "nats", env = "CAUSEWAY_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// NATS credentials file (JWT + nkey).
    #[arg(long, env = "CAUSEWAY_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// NATS user (with --password).
    #[arg(long, env = "CAUSEWAY_NATS_USER")]
    pub user: Option<String>,
    /// NATS password.
    #[arg(long, env = "CAUSEWAY_NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// NATS token.
    #[arg(long, env = "CAUSEWAY_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify the server's TLS certificate.
    #[arg(long, env = "CAUSEWAY_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --tls-key).
    #[arg(long, env = "CAUSEWAY_NATS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS (with --tls-cert).
    #[arg(long, env = "CAUSEWAY_NATS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// Connects, failing fast (no endless retry) with a message naming the URL.
    pub async fn connect(&self) -> Result<async_nats::Client, String> {
        let o = self.options().await?;
        self.dial(o).await
    }

    /// Connects in the background: returns at once, and keeps (re)connecting for ever. For
    /// long-running processes that must not crash-loop while NATS is away.
    pub async fn connect_retrying(&self) -> Result<async_nats::Client, String> {
        let o = self.options().await?.retry_on_initial_connect().max_reconnects(None);
        self.dial(o).await
    }

    async fn options(&self) -> Result<async_nats::ConnectOptions, String> {
        let mut o =
            async_nats::ConnectOptions::new().name("causeway").connection_timeout(std::time::Duration::from_secs(5));
        if let Some(c) = &self.creds {
            o = o.credentials_file(c).await.map_err(|e| format!("cannot read credentials {}: {e}", c.display()))?;
        }
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(o)
    }

    async fn dial(&self, o: async_nats::ConnectOptions) -> Result<async_nats::Client, String> {
        let addrs: Vec<async_nats::ServerAddr> = self
            .url
            .split(',')
            .map(|u| u.trim().parse().map_err(|e| format!("{u:?} is not a NATS URL: {e}")))
            .collect::<Result<_, _>>()?;
        o.connect(addrs).await.map_err(|e| format!("cannot connect to NATS at {}: {e}", self.url))
    }
}
