//! The NATS `.creds` file: a user JWT and its nkey seed, in the layout nats-server tools, the
//! NATS clients and `nsc` read and write. Also a reading of a user JWT's claims (expiry and
//! permissions) without verifying it: the server verifies; the sidecar only needs to know when
//! its credential expires and what it may publish.
//!
//! Pure: no I/O, no cryptography.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;

const JWT_BEGIN: &str = "-----BEGIN NATS USER JWT-----";
const JWT_END: &str = "------END NATS USER JWT------";
const SEED_BEGIN: &str = "-----BEGIN USER NKEY SEED-----";
const SEED_END: &str = "------END USER NKEY SEED------";

/// The text of a `.creds` file holding `jwt` and `seed`.
pub fn format_creds(jwt: &str, seed: &str) -> String {
    format!(
        "{JWT_BEGIN}\n{jwt}\n{JWT_END}\n\n************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n{SEED_BEGIN}\n{seed}\n{SEED_END}\n\n\
         *************************************************************\n"
    )
}

/// The JWT and the seed of a `.creds` file, or `None` when either block is missing or empty.
pub fn parse_creds(text: &str) -> Option<(String, String)> {
    Some((block(text, JWT_BEGIN, JWT_END)?, block(text, SEED_BEGIN, SEED_END)?))
}

fn block(text: &str, begin: &str, end: &str) -> Option<String> {
    let start = text.find(begin)? + begin.len();
    let rest = &text[start..];
    let inner = &rest[..rest.find(end)?];
    let v: String = inner.split_whitespace().collect();
    (!v.is_empty()).then_some(v)
}

/// What a user JWT says about its holder (read, not verified).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct UserClaims {
    /// The user's public key.
    #[serde(default)]
    pub sub: String,
    /// Friendly name.
    #[serde(default)]
    pub name: String,
    /// The public key that signed it (the account's, or one of its signing keys).
    #[serde(default, rename = "iss")]
    pub issuer: String,
    /// Expiry, in seconds since the Unix epoch.
    #[serde(default, rename = "exp")]
    pub expires: Option<i64>,
    /// Issued at, in seconds since the Unix epoch.
    #[serde(default, rename = "iat")]
    pub issued_at: Option<i64>,
    /// The NATS part.
    #[serde(default)]
    pub nats: NatsUserClaims,
}

/// The `nats` claims of a user JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NatsUserClaims {
    /// Publish permissions.
    #[serde(default, rename = "pub")]
    pub publish: SubjectPermission,
    /// Subscribe permissions.
    #[serde(default, rename = "sub")]
    pub subscribe: SubjectPermission,
}

/// Allowed and denied subject patterns; an empty allow list allows everything not denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SubjectPermission {
    /// Allowed patterns.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Denied patterns.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl SubjectPermission {
    /// True when `subject` passes these permissions, as nats-server decides it.
    pub fn permits(&self, subject: &str) -> bool {
        let hit = |l: &[String]| l.iter().any(|p| crate::names::subject_matches(p, subject));
        (self.allow.is_empty() || hit(&self.allow)) && !hit(&self.deny)
    }

    /// True when nothing is restricted.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// Reads the claims of a JWT without verifying its signature.
pub fn read_claims(jwt: &str) -> Option<UserClaims> {
    let body = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body.trim_end_matches('=')).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_round_trip() {
        let text = format_creds("eyJ.a.b", "SUAXYZ");
        assert_eq!(parse_creds(&text), Some(("eyJ.a.b".into(), "SUAXYZ".into())));
        assert_eq!(parse_creds("nothing"), None);
        assert_eq!(parse_creds(&format_creds("", "SUAXYZ")), None);
    }

    #[test]
    fn claims_and_permissions() {
        let claims = r#"{"sub":"UABC","exp":1700000000,"nats":{"pub":{"allow":["cw.shop.to.*.shop.a.>","$KV.CW_ST_shop_a.>"],"deny":["cw.shop.to.b.>"]},"type":"user"}}"#;
        let jwt = format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims));
        let c = read_claims(&jwt).unwrap();
        assert_eq!(c.sub, "UABC");
        assert_eq!(c.expires, Some(1_700_000_000));
        assert!(c.nats.publish.permits("cw.shop.to.c.shop.a.x"));
        assert!(!c.nats.publish.permits("cw.shop.to.b.shop.a.x"), "denied");
        assert!(!c.nats.publish.permits("cw.shop.to.c.shop.b.x"), "not allowed");
        assert!(c.nats.subscribe.is_open());
        assert!(c.nats.subscribe.permits("anything"));
        assert_eq!(read_claims("not-a-jwt"), None);
    }
}
