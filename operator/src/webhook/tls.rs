//! Webhook TLS without cert-manager, robust under `helm template` and GitOps (nothing is generated
//! at render time, so no tool can make a second CA).
//!
//! - The operator keeps its own CA and serving certificate in a Secret of its namespace. The first
//!   replica creates it; a replica that loses the race (409 AlreadyExists) reads it instead, so
//!   every replica serves a certificate of the same CA.
//! - The serving certificate is re-issued (same CA) [`RENEW_BEFORE`] before it expires, or when the
//!   Service's DNS names change; every replica re-reads the Secret every [`RELOAD_EVERY`] and
//!   swaps the certificate it serves through a reloading rustls resolver, without a restart.
//! - The MutatingWebhookConfiguration's `caBundle` is set and kept: the operator watches it and
//!   patches it back whenever it drifts; `/readyz` reports ready only once it matches.
//! - With `--webhook-cert-dir` (cert-manager, or a certificate you bring), the files there are
//!   served and reloaded when they change, and the `caBundle` is left to whoever issued them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::{ByteString, api::admissionregistration::v1::MutatingWebhookConfiguration, api::core::v1::Secret};
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// How long the serving certificate is valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long before expiry it is re-issued.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the CA is valid (it is not rotated automatically; see docs/install.md).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How often every replica re-reads the Secret (and renews when due).
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);

const CA_CN: &str = "causeway-webhook-ca";
const ANN_NOT_AFTER: &str = "causeway.dev/not-after";
const ANN_DNS_NAMES: &str = "causeway.dev/dns-names";

/// A CA and a serving certificate, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// CA certificate.
    pub ca: String,
    /// CA key.
    pub ca_key: String,
    /// Serving certificate.
    pub cert: String,
    /// Serving key.
    pub key: String,
    /// When the serving certificate expires.
    pub not_after: DateTime<Utc>,
    /// The names it is valid for.
    pub dns_names: Vec<String>,
}

/// The DNS names of the webhook Service: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

fn offset(d: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(d.timestamp()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A new CA: (certificate, key).
pub fn new_ca() -> Result<(String, String), String> {
    let key = KeyPair::generate().map_err(err)?;
    let mut p = ca_params();
    let now = Utc::now();
    p.not_before = offset(now - chrono::Duration::minutes(5));
    p.not_after = offset(now + chrono::Duration::from_std(CA_VALIDITY).map_err(err)?);
    let cert = p.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `dns_names`, signed by the CA whose key is `ca_key`.
pub fn issue(
    ca_key: &str,
    dns_names: &[String],
    now: DateTime<Utc>,
) -> Result<(String, String, DateTime<Utc>), String> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(dns_names.to_vec()).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, dns_names.first().cloned().unwrap_or_else(|| "causeway-webhook".into()));
    p.distinguished_name = dn;
    p.is_ca = IsCa::NoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let not_after = now + chrono::Duration::from_std(CERT_VALIDITY).map_err(err)?;
    p.not_before = offset(now - chrono::Duration::minutes(5));
    p.not_after = offset(not_after);
    let cert = p.signed_by(&key, &issuer).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// A CA and a first serving certificate.
pub fn new_bundle(dns_names: &[String]) -> Result<Bundle, String> {
    let (ca, ca_key) = new_ca()?;
    let (cert, key, not_after) = issue(&ca_key, dns_names, Utc::now())?;
    Ok(Bundle { ca, ca_key, cert, key, not_after, dns_names: dns_names.to_vec() })
}

/// The rustls key of a PEM certificate chain and key.
pub fn certified_key(cert: &str, key: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>().map_err(err)?;
    if chain.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(err)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(err)?;
    Ok(CertifiedKey::new(chain, signer))
}

/// Serves whatever certificate was stored last: swapped without a restart, without dropping a
/// connection.
#[derive(Debug)]
pub struct Resolver(ArcSwap<CertifiedKey>);

impl Resolver {
    /// Starts with `key`.
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self(ArcSwap::from_pointee(key)))
    }
    /// Serves `key` from now on.
    pub fn swap(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A rustls server config serving through `resolver`.
pub fn server_config(resolver: Arc<Resolver>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

fn text(s: &Secret, key: &str) -> Option<String> {
    s.data.as_ref()?.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

fn bundle_of(s: &Secret) -> Option<Bundle> {
    let ann = s.metadata.annotations.clone().unwrap_or_default();
    Some(Bundle {
        ca: text(s, "ca.crt")?,
        ca_key: text(s, "ca.key")?,
        cert: text(s, "tls.crt")?,
        key: text(s, "tls.key")?,
        not_after: ann.get(ANN_NOT_AFTER).and_then(|t| DateTime::parse_from_rfc3339(t).ok())?.with_timezone(&Utc),
        dns_names: ann.get(ANN_DNS_NAMES).map(|n| n.split(',').map(str::to_owned).collect()).unwrap_or_default(),
    })
}

fn secret_of(name: &str, namespace: &str, b: &Bundle) -> Secret {
    let data: BTreeMap<String, ByteString> =
        [("ca.crt", &b.ca), ("ca.key", &b.ca_key), ("tls.crt", &b.cert), ("tls.key", &b.key)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect();
    let annotations =
        [(ANN_NOT_AFTER.to_owned(), b.not_after.to_rfc3339()), (ANN_DNS_NAMES.to_owned(), b.dns_names.join(","))]
            .into_iter()
            .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            annotations: Some(annotations),
            labels: Some([("app.kubernetes.io/managed-by".to_owned(), "causeway-operator".to_owned())].into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Whether a serving certificate must be re-issued.
pub fn due(b: &Bundle, dns_names: &[String], now: DateTime<Utc>) -> bool {
    let renew = chrono::Duration::from_std(RENEW_BEFORE).unwrap_or_else(|_| chrono::Duration::days(30));
    b.not_after - now < renew || b.dns_names != dns_names
}

/// Reads the Secret, creating it (or re-issuing its serving certificate, same CA) when needed.
/// Races with other replicas resolve to whatever was stored first.
pub async fn ensure(api: &Api<Secret>, name: &str, namespace: &str, dns_names: &[String]) -> Result<Bundle, String> {
    for _ in 0..5 {
        match api.get_opt(name).await.map_err(err)? {
            None => {
                let b = new_bundle(dns_names)?;
                match api.create(&PostParams::default(), &secret_of(name, namespace, &b)).await {
                    Ok(_) => {
                        tracing::info!(secret = name, "created the webhook CA and certificate");
                        return Ok(b);
                    }
                    // Another replica was first: use theirs.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(err(e)),
                }
            }
            Some(s) => {
                let Some(current) = bundle_of(&s) else {
                    return Err(format!(
                        "Secret {namespace}/{name} exists but lacks ca.crt, ca.key, tls.crt, tls.key or the {ANN_NOT_AFTER} annotation; delete it to let the operator create it"
                    ));
                };
                if !due(&current, dns_names, Utc::now()) {
                    return Ok(current);
                }
                let (cert, key, not_after) = issue(&current.ca_key, dns_names, Utc::now())?;
                let renewed = Bundle { cert, key, not_after, dns_names: dns_names.to_vec(), ..current };
                let mut next = secret_of(name, namespace, &renewed);
                // Optimistic: if another replica renewed meanwhile, read theirs.
                next.metadata.resource_version = s.metadata.resource_version.clone();
                match api.replace(name, &PostParams::default(), &next).await {
                    Ok(_) => {
                        tracing::info!(secret = name, not_after = %renewed.not_after, "renewed the webhook certificate");
                        return Ok(renewed);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(err(e)),
                }
            }
        }
    }
    Err(format!("Secret {namespace}/{name} kept changing; retrying later"))
}

/// Keeps the served certificate current until `shutdown`: re-reads (and renews) the Secret.
pub async fn keep_secret(
    api: Api<Secret>,
    name: String,
    namespace: String,
    dns_names: Vec<String>,
    resolver: Arc<Resolver>,
    mut served: Bundle,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
            _ = &mut shutdown => return,
        }
        match ensure(&api, &name, &namespace, &dns_names).await {
            Ok(b) if b != served => match certified_key(&b.cert, &b.key) {
                Ok(k) => {
                    resolver.swap(k);
                    served = b;
                    tracing::info!("serving the webhook's new certificate");
                }
                Err(e) => tracing::warn!(error = %e, "the webhook Secret holds an unusable certificate"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the webhook Secret; serving the current certificate"),
        }
    }
}

/// Loads `tls.crt` and `tls.key` from a directory (cert-manager or your own certificate).
pub fn load_dir(dir: &Path) -> Result<(String, String), String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{}: {e}", dir.join(f).display()));
    Ok((read("tls.crt")?, read("tls.key")?))
}

/// Reloads the files of `dir` when they change, until `shutdown`.
pub async fn keep_dir(dir: PathBuf, resolver: Arc<Resolver>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut last = load_dir(&dir).ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = &mut shutdown => return,
        }
        let now = load_dir(&dir).ok();
        if now.is_some() && now != last {
            if let Some((c, k)) = &now {
                match certified_key(c, k) {
                    Ok(key) => {
                        resolver.swap(key);
                        tracing::info!(dir = %dir.display(), "serving the webhook's new certificate");
                    }
                    Err(e) => tracing::warn!(error = %e, "the certificate files are unusable; keeping the current one"),
                }
            }
            last = now;
        }
    }
}

/// Whether every webhook of `mwc` carries `ca` as its caBundle.
pub fn bundle_matches(mwc: &MutatingWebhookConfiguration, ca: &str) -> bool {
    let want = ca.as_bytes();
    let hooks = mwc.webhooks.as_deref().unwrap_or_default();
    !hooks.is_empty() && hooks.iter().all(|w| w.client_config.ca_bundle.as_ref().is_some_and(|b| b.0 == want))
}

/// The JSON Patch that sets every webhook's caBundle to `ca`.
pub fn bundle_patch(mwc: &MutatingWebhookConfiguration, ca: &str) -> Vec<serde_json::Value> {
    let encoded = STANDARD.encode(ca.as_bytes());
    (0..mwc.webhooks.as_deref().unwrap_or_default().len())
        .map(|i| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}))
        .collect()
}

/// Sets and keeps the caBundle of the MutatingWebhookConfiguration `name`: watches it and patches
/// it back on drift. `ready` says whether it matches now.
pub async fn keep_ca_bundle(
    client: kube::Client,
    name: String,
    ca: String,
    ready: impl Fn(Option<String>) + Send,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    tokio::pin!(shutdown);
    ready(Some(format!("the MutatingWebhookConfiguration {name} does not carry the webhook's CA yet")));
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), cfg).default_backoff().boxed();
    let mut seen = false;
    loop {
        let next = tokio::select! {
            n = events.next() => n,
            _ = &mut shutdown => return,
        };
        let mwc = match next {
            Some(Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m))) => {
                seen = true;
                m
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if !seen {
                    // Nothing to keep: the webhook is served but not registered (e.g. installed
                    // without the chart). Not a reason to keep the operator unready.
                    tracing::warn!(config = %name, "no such MutatingWebhookConfiguration: the webhook is served, but the API server will not call it");
                    ready(None);
                }
                continue;
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                seen = false;
                continue;
            }
            Some(Ok(watcher::Event::Init)) => {
                seen = false;
                continue;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "watching the MutatingWebhookConfiguration");
                continue;
            }
            None => return,
        };
        if bundle_matches(&mwc, &ca) {
            ready(None);
            continue;
        }
        ready(Some(format!("the MutatingWebhookConfiguration {name} does not carry the webhook's CA yet")));
        let ops = bundle_patch(&mwc, &ca);
        let patch: json_patch::Patch = match serde_json::from_value(serde_json::Value::Array(ops)) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "building the caBundle patch");
                continue;
            }
        };
        match api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch)).await {
            Ok(_) => tracing::info!(config = %name, "set the webhook's caBundle"),
            Err(e) => {
                tracing::warn!(config = %name, error = %e, "cannot set the webhook's caBundle; retrying on the next change")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_certificate_keeps_the_ca() {
        let names = service_names("causeway-webhook", "causeway-system");
        let b = new_bundle(&names).unwrap();
        assert!(certified_key(&b.cert, &b.key).is_ok());
        let (cert2, key2, _) = issue(&b.ca_key, &names, Utc::now()).unwrap();
        assert_ne!(cert2, b.cert);
        assert!(certified_key(&cert2, &key2).is_ok());
        assert!(!due(&b, &names, Utc::now()), "fresh");
        assert!(due(&b, &names, Utc::now() + chrono::Duration::days(340)), "within 30 days of expiry");
        assert!(due(&b, &service_names("other", "causeway-system"), Utc::now()), "names changed");
        let s = secret_of("tls", "ns", &b);
        assert_eq!(bundle_of(&s).unwrap().not_after.timestamp(), b.not_after.timestamp());
    }
}
