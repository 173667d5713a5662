//! The NATS credential of a sidecar, reloaded when its file changes.
//!
//! A Node's credential is short-lived: the operator issues a new one before the old expires and
//! Kubernetes updates the mounted Secret file. NATS cannot re-authenticate a live connection, so
//! the sidecar signs every (re)connect with whatever the file holds at that moment, and when the
//! file changes it reconnects on purpose. Requests in flight are resent on the new connection by
//! [`crate::nats::resilient`] and answered once, so a rotation drops nothing.
//!
//! The credential's own permissions are read from its JWT so the sidecar knows, without asking
//! the server and waiting for a refusal, whether it may read a stream (see
//! [`Creds::may_publish`]).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use async_nats::{Auth, AuthError};
use causeway_api::creds::{UserClaims, parse_creds, read_claims};
use tokio::sync::watch;

/// One loaded credential.
struct Loaded {
    text: String,
    jwt: String,
    key: Arc<nkeys::KeyPair>,
    claims: UserClaims,
}

/// The sidecar's credential file and what it holds now.
pub struct Creds {
    path: PathBuf,
    current: ArcSwap<Loaded>,
}

impl Creds {
    /// Reads and checks the credential at `path`.
    pub fn load(path: &Path) -> Result<Arc<Self>, String> {
        let loaded = read(path)?;
        Ok(Arc::new(Self { path: path.to_owned(), current: ArcSwap::from_pointee(loaded) }))
    }

    /// Signs the server's nonce with the current credential, for a (re)connect.
    pub fn auth(&self, nonce: &[u8]) -> Result<Auth, AuthError> {
        let c = self.current.load();
        let signature = c.key.sign(nonce).map_err(|e| AuthError::new(format!("signing the NATS nonce: {e}")))?;
        let mut auth = Auth::new();
        auth.jwt = Some(c.jwt.clone());
        auth.signature = Some(signature);
        Ok(auth)
    }

    /// When the current credential expires (seconds since the Unix epoch), if it does.
    pub fn expires(&self) -> Option<i64> {
        self.current.load().claims.expires
    }

    /// True when the current credential lets this sidecar publish to `subject` (a JetStream API
    /// request is a publish). Unrestricted credentials allow everything.
    pub fn may_publish(&self, subject: &str) -> bool {
        self.current.load().claims.nats.publish.permits(subject)
    }

    /// Reloads the file when it changes, and then reconnects `client` so the new credential is
    /// used at once. Runs until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        client: async_nats::Client,
        every: Duration,
        expiry: prometheus_client::metrics::gauge::Gauge,
        mut shutdown: watch::Receiver<bool>,
    ) {
        expiry.set(self.expires().unwrap_or(0));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::flag::until_true(&mut shutdown) => return,
            }
            let text = match std::fs::read_to_string(&self.path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read the NATS credential; keeping the current one");
                    continue;
                }
            };
            if text == self.current.load().text {
                continue;
            }
            match parse(&self.path, text) {
                Ok(next) => {
                    tracing::info!(path = %self.path.display(), user = %next.claims.sub, expires = ?next.claims.expires,
                        "the NATS credential changed; reconnecting with it");
                    expiry.set(next.claims.expires.unwrap_or(0));
                    self.current.store(Arc::new(next));
                    if let Err(e) = client.force_reconnect().await {
                        tracing::warn!(error = %e, "cannot reconnect to NATS with the new credential");
                    }
                }
                // A half-written file (a Secret update is an atomic symlink swap, but a file
                // written by hand may not be): try again at the next tick.
                Err(e) => {
                    tracing::warn!(error = %e, "the changed NATS credential is not usable yet; keeping the current one")
                }
            }
        }
    }
}

impl std::fmt::Debug for Creds {
    /// Never prints the credential itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.current.load();
        f.debug_struct("Creds")
            .field("path", &self.path)
            .field("user", &c.claims.sub)
            .field("expires", &c.claims.expires)
            .finish()
    }
}

fn read(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(path, text)
}

fn parse(path: &Path, text: String) -> Result<Loaded, String> {
    let bad = |what: &str| format!("{} is not a NATS credentials file: {what}", path.display());
    let (jwt, seed) = parse_creds(&text).ok_or_else(|| bad("it needs a user JWT block and a user nkey seed block"))?;
    let key = nkeys::KeyPair::from_seed(&seed).map_err(|e| bad(&format!("the nkey seed is invalid ({e})")))?;
    let claims = read_claims(&jwt).ok_or_else(|| bad("the JWT cannot be read"))?;
    Ok(Loaded { text, jwt, key: Arc::new(key), claims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    fn creds_text(claims: &str) -> String {
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let jwt = format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims));
        causeway_api::creds::format_creds(&jwt, &seed)
    }

    #[test]
    fn loads_signs_and_reads_permissions() {
        let dir = std::env::temp_dir().join(format!("cw-creds-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("nats.creds");
        std::fs::write(&p, creds_text(r#"{"sub":"U1","exp":5,"nats":{"pub":{"allow":["a.>"]}}}"#)).unwrap();
        let c = Creds::load(&p).unwrap();
        assert_eq!(c.expires(), Some(5));
        assert!(c.may_publish("a.b"));
        assert!(!c.may_publish("b"));
        let auth = c.auth(b"nonce").unwrap();
        assert_eq!(auth.signature.unwrap().len(), 64, "an ed25519 signature");
        std::fs::write(&p, "garbage").unwrap();
        assert!(Creds::load(&p).unwrap_err().contains("not a NATS credentials file"));
        assert!(Creds::load(&dir.join("missing")).unwrap_err().contains("cannot read"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
