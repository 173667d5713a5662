//! Per-node NATS credentials (docs/security.md, "Issuing credentials").
//!
//! NATS decentralized auth chains three keys: an *operator* vouches for *accounts* (account
//! JWTs signed by the operator), an account vouches for *users* (user JWTs signed by the
//! account or one of its signing keys). The server trusts the operator and learns accounts
//! from a resolver; a client proves it holds a user's key by signing the server's nonce.
//!
//! - [`Issuer`] holds an account key (or signing key) and issues a Node a user credential whose
//!   permissions are exactly its [`Grants`], with a short expiry.
//! - [`DevTrust`] is a whole operator/account/system-account trust chain kept in a directory,
//!   for `causeway dev --secure` and for tests: it writes the nats-server configuration that
//!   trusts it and issues an unrestricted admin credential.
//!
//! All signing is nkeys' ed25519; user JWTs are built with nats-jwt. Nothing here talks to a
//! server.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use causeway_api::{creds, grants::Grants};
use chrono::{DateTime, Utc};
use data_encoding::{BASE32HEX_NOPAD, BASE64URL_NOPAD};
use nats_jwt::Token;
use nkeys::{KeyPair, KeyPairType};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use causeway_api::creds::parse_creds;

/// Why a key could not be loaded or a trust chain not be kept.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The text is not an nkey seed.
    #[error("{what} is not a valid nkey seed ({source}); expected a seed starting with 'SA'")]
    BadSeed {
        /// Where the text came from.
        what: String,
        /// What nkeys said.
        #[source]
        source: nkeys::error::Error,
    },
    /// A seed of another kind of key than an account.
    #[error(
        "{what} is the seed of {kind} key, not of an account: give the seed (starting with 'SA') of the account or of one of its signing keys"
    )]
    NotAccountSeed {
        /// Where the seed came from.
        what: String,
        /// The kind it is.
        kind: String,
    },
    /// A seed of a trust chain's file is of the wrong kind.
    #[error("{path} holds the seed of {kind} key where {want} key belongs; remove the file to generate a new one")]
    WrongKeyKind {
        /// The file.
        path: PathBuf,
        /// The kind it should be.
        want: &'static str,
        /// The kind it is.
        kind: &'static str,
    },
    /// The account given is not an account public key.
    #[error("{value:?} is not an account public key: give the account's public key, starting with 'A'")]
    BadAccount {
        /// The rejected value.
        value: String,
    },
    /// A file holding no seed.
    #[error("{path} holds no nkey seed (a line starting with 'S')")]
    NoSeedInFile {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a credential was issued for: its grants and the key that signs it. Equal fingerprints
/// mean an issued credential still grants exactly what is wanted.
pub fn fingerprint(grants: &Grants, issuer: &Issuer) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (tag, list) in [(b"P", &grants.publish), (b"S", &grants.subscribe)] {
        for p in list {
            h.update(tag);
            h.update(p.as_bytes());
            h.update([0]);
        }
    }
    h.update(issuer.account().as_bytes());
    h.update(issuer.signing_key().as_bytes());
    data_encoding::HEXLOWER.encode(&h.finalize()[..16])
}

/// One issued user credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user JWT.
    pub jwt: String,
    /// The user's nkey seed (`SU…`): secret.
    pub seed: String,
    /// The user's public key (`U…`).
    pub user: String,
    /// When it was issued (the JWT's `iat`).
    pub issued_at: DateTime<Utc>,
    /// When NATS stops accepting it (the JWT's `exp`).
    pub expires_at: DateTime<Utc>,
    /// The `.creds` file text (JWT and seed) that NATS clients and tools read.
    pub creds: String,
}

impl std::fmt::Debug for Credential {
    // The seed is a secret: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("jwt_len", &self.jwt.len())
            .finish_non_exhaustive()
    }
}

/// Issues user credentials for one account: holds the account's key or one of its signing
/// keys.
#[derive(Clone)]
pub struct Issuer {
    key: KeyPair,
    account: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("account", &self.account).field("key", &self.key.public_key()).finish()
    }
}

impl Issuer {
    /// An issuer from the seed (`SA…`) of an account or of one of its signing keys. `account` is
    /// the account's public key (`A…`); it is needed when the seed is a signing key, and
    /// defaults to the seed's own public key.
    pub fn from_seed(seed: &str, account: Option<&str>) -> Result<Self, IdentityError> {
        Self::from_seed_named(seed, account, "the account key")
    }

    /// Like [`Issuer::from_seed`], reading the seed from a file (a bare seed as `nsc` writes it,
    /// or any text with the seed on a line of its own).
    pub fn from_seed_file(path: &Path, account: Option<&str>) -> Result<Self, IdentityError> {
        let seed = read_seed_file(path)?;
        Self::from_seed_named(&seed, account, &path.display().to_string())
    }

    fn from_seed_named(seed: &str, account: Option<&str>, what: &str) -> Result<Self, IdentityError> {
        let key = account_key(seed, what)?;
        let account = match account.map(str::trim) {
            None | Some("") => key.public_key(),
            Some(a) => {
                let ok = a.starts_with('A')
                    && KeyPair::from_public_key(a).is_ok_and(|k| k.key_pair_type() == KeyPairType::Account);
                if !ok {
                    return Err(IdentityError::BadAccount { value: a.to_owned() });
                }
                a.to_owned()
            }
        };
        Ok(Self { key, account })
    }

    /// The account's public key (`A…`) that issued users belong to.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The public key that signs (the account's own, or a signing key).
    pub fn signing_key(&self) -> String {
        self.key.public_key()
    }

    /// A new user named `name` that may publish and subscribe to exactly `grants`, for `ttl`
    /// (rounded up to whole seconds, at least one).
    pub fn issue(&self, name: &str, grants: &Grants, ttl: Duration) -> Credential {
        let user = KeyPair::new_user();
        let now = unix_now();
        let secs = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
        let exp = now + secs as i64;
        let mut token = Token::new_user(self.account.clone(), user.public_key()).name(name).expires(exp);
        // In a JWT an empty allow list means "everything": an empty grant must deny instead.
        if grants.publish.is_empty() {
            token = token.deny_publish(">");
        }
        if grants.subscribe.is_empty() {
            token = token.deny_subscribe(">");
        }
        for p in &grants.publish {
            token = token.allow_publish(p.clone());
        }
        for s in &grants.subscribe {
            token = token.allow_subscribe(s.clone());
        }
        self.finish(token.sign(&self.key), &user)
    }

    /// A user with no restrictions and no expiry (an administrator of the account: the
    /// operator itself, `causeway apply`, tests).
    pub fn issue_unrestricted(&self, name: &str) -> Credential {
        let user = KeyPair::new_user();
        let jwt = Token::new_user(self.account.clone(), user.public_key()).name(name).sign(&self.key);
        self.finish(jwt, &user)
    }

    fn finish(&self, jwt: String, user: &KeyPair) -> Credential {
        let seed = user.seed().expect("a generated key pair has a seed");
        let claims = creds::read_claims(&jwt).expect("a JWT just signed reads back");
        let at = |secs: Option<i64>| DateTime::from_timestamp(secs.unwrap_or(0), 0).unwrap_or_default();
        Credential {
            creds: creds::format_creds(&jwt, &seed),
            issued_at: at(claims.issued_at),
            // No expiry reads as the far future, so "is it expiring?" checks stay simple.
            expires_at: claims.expires.map_or(DateTime::<Utc>::MAX_UTC, |e| at(Some(e))),
            user: user.public_key(),
            seed,
            jwt,
        }
    }
}

/// The `exp` of a JWT (seconds since the Unix epoch), read without verifying it; `None` when
/// it has none or is not a JWT.
pub fn jwt_expiry(jwt: &str) -> Option<i64> {
    creds::read_claims(jwt)?.expires
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn key_from_seed(seed: &str, what: &str) -> Result<KeyPair, IdentityError> {
    KeyPair::from_seed(seed.trim()).map_err(|source| IdentityError::BadSeed { what: what.to_owned(), source })
}

fn account_key(seed: &str, what: &str) -> Result<KeyPair, IdentityError> {
    let key = key_from_seed(seed, what)?;
    match key.key_pair_type() {
        KeyPairType::Account => Ok(key),
        other => Err(IdentityError::NotAccountSeed { what: what.to_owned(), kind: kind_name(&other).to_owned() }),
    }
}

fn kind_name(k: &KeyPairType) -> &'static str {
    match k {
        KeyPairType::Server => "a server",
        KeyPairType::Cluster => "a cluster",
        KeyPairType::Operator => "an operator",
        KeyPairType::Account => "an account",
        KeyPairType::User => "a user",
        KeyPairType::Module => "a module",
        KeyPairType::Service => "a service",
        KeyPairType::Curve => "a curve (xkey)",
    }
}

fn read_seed_file(path: &Path) -> Result<String, IdentityError> {
    let text = fs::read_to_string(path).map_err(|source| IdentityError::Read { path: path.to_owned(), source })?;
    // A seed is one token starting with 'S' (nkeys checks the rest); decoration lines such as
    // "-----BEGIN … NKEY SEED-----" never start with 'S'.
    text.split_whitespace()
        .find(|t| t.starts_with('S') && t.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(str::to_owned)
        .ok_or_else(|| IdentityError::NoSeedInFile { path: path.to_owned() })
}

/// Signs a claim set as NATS JWTs are signed: header `{"typ":"JWT","alg":"ed25519-nkey"}`,
/// base64url without padding, `iss` the signer's public key, `iat` now, and `jti` the base32
/// of the SHA-256 of the claims written with an empty `jti` (as nats-jwt computes it).
///
/// nats-jwt 0.3 mints only user and account JWTs, and its account claims cannot carry
/// JetStream limits (without which the account has no JetStream) nor can it mint an operator
/// JWT at all; those two claim sets are written here with serde_json and signed the same way.
fn sign_claims(mut claims: Value, key: &KeyPair) -> String {
    claims["iat"] = json!(unix_now());
    claims["iss"] = json!(key.public_key());
    claims["jti"] = json!("");
    let body = serde_json::to_string(&claims).expect("claims serialise");
    claims["jti"] = json!(BASE32HEX_NOPAD.encode(&Sha256::digest(body.as_bytes())));
    let body = serde_json::to_string(&claims).expect("claims serialise");
    let half = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        BASE64URL_NOPAD.encode(body.as_bytes())
    );
    let sig = key.sign(half.as_bytes()).expect("a key pair from a seed signs");
    format!("{half}.{}", BASE64URL_NOPAD.encode(&sig))
}

/// The operator JWT (self-signed), naming the system account.
fn operator_jwt(operator: &KeyPair, name: &str, system_account: &str) -> String {
    sign_claims(
        json!({
            "sub": operator.public_key(),
            "name": name,
            "nats": {"system_account": system_account, "type": "operator", "version": 2},
        }),
        operator,
    )
}

/// An account JWT signed by the operator. With `jetstream`, every JetStream limit is
/// unlimited (-1), which is what enables JetStream for the account: nats-server enables it
/// only when `mem_storage` or `disk_storage` is not 0 (jwt v2 `OperatorLimits.IsJSEnabled`).
fn account_jwt(operator: &KeyPair, account: &str, name: &str, signing_keys: &[String], jetstream: bool) -> String {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1,
        "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for k in ["mem_storage", "disk_storage", "streams", "consumer", "max_ack_pending"] {
            limits[k] = json!(-1);
        }
    }
    let mut nats =
        json!({"limits": limits, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2});
    if !signing_keys.is_empty() {
        nats["signing_keys"] = json!(signing_keys);
    }
    sign_claims(json!({"sub": account, "name": name, "nats": nats}), operator)
}

/// A complete trust chain kept in a directory, for `causeway dev --secure` and tests: an
/// operator, an account `CAUSEWAY` with JetStream and a signing key that issues users, and a
/// system account. The keys are generated on first use and read back afterwards, so
/// credentials issued before a restart keep working; the JWTs are minted from them on load.
#[derive(Clone)]
pub struct DevTrust {
    dir: PathBuf,
    operator: KeyPair,
    account: KeyPair,
    signing: KeyPair,
    system: KeyPair,
}

impl std::fmt::Debug for DevTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevTrust")
            .field("dir", &self.dir)
            .field("operator", &self.operator.public_key())
            .field("account", &self.account.public_key())
            .field("system", &self.system.public_key())
            .finish()
    }
}

/// The `max_control_line` that [`DevTrust::server_config`] sets, and that docs/security.md
/// recommends wherever node credentials are issued: room for a JWT naming some 350 readable
/// stores (about 170 bytes each), where the server's default of 4 KB fits 14.
pub const SERVER_MAX_CONTROL_LINE: &str = "64KB";

/// File names of a [`DevTrust`]'s seeds.
const OPERATOR_SEED: &str = "operator.nk";
const ACCOUNT_SEED: &str = "account.nk";
const SIGNING_SEED: &str = "account-signing.nk";
const SYSTEM_SEED: &str = "system.nk";

impl DevTrust {
    /// Reads the trust chain kept in `dir`, creating what is missing (the directory with mode
    /// 0700, each seed file with mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| IdentityError::Write { path, source }
        };
        fs::create_dir_all(dir).map_err(write_err(dir))?;
        set_mode(dir, 0o700).map_err(write_err(dir))?;
        let key = |file: &str, new: fn() -> KeyPair| -> Result<KeyPair, IdentityError> {
            let path = dir.join(file);
            if path.exists() {
                let seed = read_seed_file(&path)?;
                return key_from_seed(&seed, &path.display().to_string());
            }
            let kp = new();
            write_secret(&path, &kp.seed().expect("a generated key pair has a seed")).map_err(write_err(&path))?;
            Ok(kp)
        };
        let trust = Self {
            operator: key(OPERATOR_SEED, KeyPair::new_operator)?,
            account: key(ACCOUNT_SEED, KeyPair::new_account)?,
            signing: key(SIGNING_SEED, KeyPair::new_account)?,
            system: key(SYSTEM_SEED, KeyPair::new_account)?,
            dir: dir.to_owned(),
        };
        for (k, want, file) in [
            (&trust.operator, KeyPairType::Operator, OPERATOR_SEED),
            (&trust.account, KeyPairType::Account, ACCOUNT_SEED),
            (&trust.signing, KeyPairType::Account, SIGNING_SEED),
            (&trust.system, KeyPairType::Account, SYSTEM_SEED),
        ] {
            if k.key_pair_type() != want {
                return Err(IdentityError::WrongKeyKind {
                    path: dir.join(file),
                    want: kind_name(&want),
                    kind: kind_name(&k.key_pair_type()),
                });
            }
        }
        Ok(trust)
    }

    /// Where the seeds are kept.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The public key of the account that Causeway uses (`A…`).
    pub fn account(&self) -> String {
        self.account.public_key()
    }

    /// The public key of the system account (`A…`).
    pub fn system_account(&self) -> String {
        self.system.public_key()
    }

    /// The operator's JWT.
    pub fn operator_jwt(&self) -> String {
        operator_jwt(&self.operator, "causeway-dev", &self.system_account())
    }

    /// The account's JWT: JetStream enabled without limits, one signing key.
    pub fn account_jwt(&self) -> String {
        account_jwt(&self.operator, &self.account(), "CAUSEWAY", &[self.signing.public_key()], true)
    }

    /// The system account's JWT.
    pub fn system_account_jwt(&self) -> String {
        account_jwt(&self.operator, &self.system_account(), "SYS", &[], false)
    }

    /// nats-server configuration lines that trust this chain: JWT mode with a memory resolver
    /// preloaded with both accounts. Append JetStream, ports and the rest.
    ///
    /// It also raises `max_control_line` to [`SERVER_MAX_CONTROL_LINE`]: a node's JWT names
    /// every store it may read and travels in the client's CONNECT line, which nats-server
    /// refuses above 4 KB by default (docs/security.md, "How large a credential gets").
    pub fn server_config(&self) -> String {
        format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n  {}: {}\n}}\nmax_control_line: {SERVER_MAX_CONTROL_LINE}\n",
            self.operator_jwt(),
            self.system_account(),
            self.account(),
            self.account_jwt(),
            self.system_account(),
            self.system_account_jwt(),
        )
    }

    /// Issues users of the account, signed with its signing key (as the operator in a cluster
    /// would hold it).
    pub fn issuer(&self) -> Issuer {
        Issuer { key: self.signing.clone(), account: self.account() }
    }

    /// `.creds` text of a user of the account with no restrictions and no expiry, for the
    /// operator, `causeway apply` and tests. A new user each call.
    pub fn admin_creds(&self) -> String {
        self.issuer().issue_unrestricted("causeway-admin").creds
    }
}

fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(jwt: &str) -> (Value, Value) {
        let mut it = jwt.split('.');
        let h = BASE64URL_NOPAD.decode(it.next().unwrap().as_bytes()).unwrap();
        let b = BASE64URL_NOPAD.decode(it.next().unwrap().as_bytes()).unwrap();
        (serde_json::from_slice(&h).unwrap(), serde_json::from_slice(&b).unwrap())
    }

    fn verify(jwt: &str, signer: &str) {
        let (half, sig) = jwt.rsplit_once('.').unwrap();
        let sig = BASE64URL_NOPAD.decode(sig.as_bytes()).unwrap();
        KeyPair::from_public_key(signer).unwrap().verify(half.as_bytes(), &sig).expect("signature verifies");
    }

    fn grants() -> Grants {
        Grants { publish: vec!["a.>".into(), "b".into()], subscribe: vec!["_INBOX.shop.a.>".into()] }
    }

    #[test]
    fn issues_a_user_with_exactly_its_grants() {
        let acc = KeyPair::new_account();
        let issuer = Issuer::from_seed(&acc.seed().unwrap(), None).unwrap();
        assert_eq!(issuer.account(), acc.public_key());
        let before = unix_now();
        let c = issuer.issue("shop/a", &grants(), Duration::from_secs(3600));
        let after = unix_now();
        verify(&c.jwt, &acc.public_key());
        let (h, b) = decode(&c.jwt);
        assert_eq!(h, json!({"typ": "JWT", "alg": "ed25519-nkey"}));
        assert_eq!(b["sub"], json!(c.user));
        assert_eq!(b["name"], json!("shop/a"));
        assert_eq!(b["iss"], json!(acc.public_key()));
        assert_eq!(b["nats"]["type"], json!("user"));
        assert_eq!(b["nats"]["issuer_account"], json!(acc.public_key()));
        assert_eq!(b["nats"]["pub"], json!({"allow": ["a.>", "b"]}));
        assert_eq!(b["nats"]["sub"], json!({"allow": ["_INBOX.shop.a.>"]}));
        assert!((before..=after).contains(&c.issued_at.timestamp()), "{c:?}");
        assert!((before + 3600..=after + 3600).contains(&c.expires_at.timestamp()), "{c:?}");
        assert_eq!(jwt_expiry(&c.jwt), Some(c.expires_at.timestamp()));
        assert!(c.user.starts_with('U'));
        assert!(c.seed.starts_with("SU"));
        assert_eq!(KeyPair::from_seed(&c.seed).unwrap().public_key(), c.user);
        assert_eq!(parse_creds(&c.creds), Some((c.jwt.clone(), c.seed.clone())));
        assert!(c.creds.starts_with("-----BEGIN NATS USER JWT-----\n"));
        assert!(!format!("{c:?}").contains(&c.seed), "no seed in Debug");
    }

    #[test]
    fn an_empty_grant_denies_rather_than_allows_everything() {
        let issuer = Issuer::from_seed(&KeyPair::new_account().seed().unwrap(), None).unwrap();
        let c = issuer.issue("x", &Grants::default(), Duration::from_secs(60));
        let (_, b) = decode(&c.jwt);
        assert_eq!(b["nats"]["pub"], json!({"deny": [">"]}));
        assert_eq!(b["nats"]["sub"], json!({"deny": [">"]}));
    }

    #[test]
    fn signing_keys_name_their_account() {
        let acc = KeyPair::new_account();
        let sk = KeyPair::new_account();
        let issuer = Issuer::from_seed(&sk.seed().unwrap(), Some(&acc.public_key())).unwrap();
        let before = unix_now();
        let c = issuer.issue("n", &grants(), Duration::from_millis(1500));
        let after = unix_now();
        verify(&c.jwt, &sk.public_key());
        let (_, b) = decode(&c.jwt);
        assert_eq!(b["iss"], json!(sk.public_key()));
        assert_eq!(b["nats"]["issuer_account"], json!(acc.public_key()));
        assert!((before + 2..=after + 2).contains(&c.expires_at.timestamp()), "rounded up: {c:?}");
    }

    #[test]
    fn refuses_what_is_not_an_account_key() {
        let user = KeyPair::new_user().seed().unwrap();
        let e = Issuer::from_seed(&user, None).unwrap_err();
        assert!(matches!(e, IdentityError::NotAccountSeed { .. }), "{e}");
        assert!(e.to_string().contains("a user key"), "{e}");
        let op = KeyPair::new_operator().seed().unwrap();
        assert!(Issuer::from_seed(&op, None).unwrap_err().to_string().contains("an operator key"));
        let e = Issuer::from_seed("SAnotaseed", None).unwrap_err();
        assert!(matches!(e, IdentityError::BadSeed { .. }), "{e}");
        let acc = KeyPair::new_account().seed().unwrap();
        for bad in ["UABC", &KeyPair::new_user().public_key(), &KeyPair::new_operator().public_key()] {
            let e = Issuer::from_seed(&acc, Some(bad)).unwrap_err();
            assert!(matches!(e, IdentityError::BadAccount { .. }), "{bad}: {e}");
        }
        let e = Issuer::from_seed_file(Path::new("/nonexistent/cw/key.nk"), None).unwrap_err();
        assert!(matches!(e, IdentityError::Read { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/cw/key.nk"), "{e}");
    }

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cw-identity-{name}-{}-{}", std::process::id(), unix_now()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn seed_files() {
        let dir = scratch("seed-files");
        fs::create_dir_all(&dir).unwrap();
        let acc = KeyPair::new_account();
        let plain = dir.join("plain.nk");
        fs::write(&plain, format!("{}\n", acc.seed().unwrap())).unwrap();
        assert_eq!(Issuer::from_seed_file(&plain, None).unwrap().account(), acc.public_key());
        let decorated = dir.join("decorated.nk");
        fs::write(
            &decorated,
            format!("-----BEGIN ACCOUNT NKEY SEED-----\n{}\n------END ACCOUNT NKEY SEED------\n", acc.seed().unwrap()),
        )
        .unwrap();
        assert_eq!(Issuer::from_seed_file(&decorated, None).unwrap().account(), acc.public_key());
        let empty = dir.join("empty.nk");
        fs::write(&empty, "-----BEGIN-----\n").unwrap();
        assert!(matches!(Issuer::from_seed_file(&empty, None), Err(IdentityError::NoSeedInFile { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dev_trust_is_created_once_and_read_back() {
        let dir = scratch("dev-trust");
        let a = DevTrust::load_or_create(&dir).unwrap();
        let b = DevTrust::load_or_create(&dir).unwrap();
        assert_eq!(a.account(), b.account());
        assert_eq!(a.system_account(), b.system_account());
        assert_eq!(a.operator.public_key(), b.operator.public_key());
        assert_ne!(a.account(), a.system_account());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [OPERATOR_SEED, ACCOUNT_SEED, SIGNING_SEED, SYSTEM_SEED] {
                let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{f}");
            }
            assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        }

        let op = a.operator_jwt();
        verify(&op, &a.operator.public_key());
        let (_, claims) = decode(&op);
        assert_eq!(claims["sub"], claims["iss"], "self-signed");
        assert_eq!(claims["nats"]["system_account"], json!(a.system_account()));
        assert_eq!(claims["jti"].as_str().unwrap().len(), 52, "base32 of a SHA-256");

        let acc = a.account_jwt();
        verify(&acc, &a.operator.public_key());
        let (_, claims) = decode(&acc);
        assert_eq!(claims["sub"], json!(a.account()));
        assert_eq!(claims["nats"]["limits"]["disk_storage"], json!(-1));
        assert_eq!(claims["nats"]["limits"]["mem_storage"], json!(-1));
        assert_eq!(claims["nats"]["signing_keys"], json!([a.signing.public_key()]));
        let (_, sys) = decode(&a.system_account_jwt());
        assert!(sys["nats"]["limits"].get("disk_storage").is_none(), "no JetStream for SYS");

        let conf = a.server_config();
        assert!(conf.starts_with("operator: eyJ"), "{conf}");
        assert!(conf.contains("resolver: MEMORY"));
        assert!(conf.contains("max_control_line: 64KB"));
        assert!(conf.contains(&format!("system_account: {}", a.system_account())));
        assert!(conf.contains(&format!("{}: eyJ", a.account())));

        let (jwt, _) = parse_creds(&a.admin_creds()).unwrap();
        verify(&jwt, &a.signing.public_key());
        let (_, claims) = decode(&jwt);
        assert!(claims.get("exp").is_none());
        assert!(claims["nats"].get("pub").is_none() && claims["nats"].get("sub").is_none(), "unrestricted");

        fs::write(dir.join(ACCOUNT_SEED), KeyPair::new_user().seed().unwrap()).unwrap();
        let e = DevTrust::load_or_create(&dir).unwrap_err();
        assert!(matches!(e, IdentityError::WrongKeyKind { .. }), "{e}");
        assert!(e.to_string().contains("a user key where an account key belongs"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
