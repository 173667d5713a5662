//! Ack tokens of pull delivery: `POST /v1/listeners/{l}/fetch` hands one out per event, and
//! `POST /v1/acks` takes it back.
//!
//! A token is `<base64url(ack subject)>.<base64url(HMAC-SHA256)>` under a key this sidecar
//! draws at start. So only tokens this sidecar's own fetches handed out are accepted: a token
//! naming another consumer, an ack subject that was never delivered, or a long string meant to
//! break the NATS connection is refused with 400 before anything reaches NATS. The ack subject
//! inside is also parsed exactly (JetStream's `$JS.ACK.…` shape) and must belong to one of this
//! node's listeners. Tokens die with the sidecar that signed them: after a restart the event is
//! simply redelivered once its ack wait passes (delivery is at least once).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{hmac, rand::SecureRandom};

/// Longest token accepted (a real one is well under 300 characters).
pub const MAX_TOKEN_LEN: usize = 512;

/// The key that signs this sidecar's tokens.
#[derive(Debug)]
pub struct AckTokens {
    key: hmac::Key,
}

/// The parts of a JetStream ack subject that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckSubject {
    /// The whole subject, to publish the ack to.
    pub subject: String,
    /// Stream name.
    pub stream: String,
    /// Consumer name.
    pub consumer: String,
}

impl Default for AckTokens {
    fn default() -> Self {
        Self::new()
    }
}

impl AckTokens {
    /// A fresh random key.
    pub fn new() -> Self {
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, &bytes) }
    }

    /// The token for a delivered message's ack subject.
    pub fn issue(&self, ack_subject: &str) -> String {
        let tag = hmac::sign(&self.key, ack_subject.as_bytes());
        format!("{}.{}", URL_SAFE_NO_PAD.encode(ack_subject), URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The ack subject of a token this sidecar issued; `Err` says why not.
    pub fn verify(&self, token: &str) -> Result<AckSubject, &'static str> {
        if token.len() > MAX_TOKEN_LEN {
            return Err("the token is too long to be one this sidecar handed out");
        }
        let (subject, tag) = token.split_once('.').ok_or("the token is not one this sidecar handed out")?;
        let subject = URL_SAFE_NO_PAD.decode(subject).map_err(|_| "the token is not one this sidecar handed out")?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| "the token is not one this sidecar handed out")?;
        hmac::verify(&self.key, &subject, &tag)
            .map_err(|_| "the token was not handed out by this sidecar (or it restarted since): fetch again")?;
        let subject = String::from_utf8(subject).map_err(|_| "the token is damaged")?;
        parse_ack_subject(&subject).ok_or("the token does not hold a JetStream ack subject")
    }
}

/// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` and the newer
/// form with a domain and account hash (and an optional trailing token).
pub fn parse_ack_subject(s: &str) -> Option<AckSubject> {
    let rest = s.strip_prefix("$JS.ACK.")?;
    let t: Vec<&str> = rest.split('.').collect();
    let (stream, consumer, numbers) = match t.len() {
        7 => (t[0], t[1], &t[2..7]),
        9 | 10 => (t[2], t[3], &t[4..9]),
        _ => return None,
    };
    let name_ok = |n: &str| !n.is_empty() && n.len() <= 255 && !n.contains(['*', '>', ' ']);
    let numeric = numbers.iter().all(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()));
    (name_ok(stream) && name_ok(consumer) && numeric).then(|| AckSubject {
        subject: s.to_owned(),
        stream: stream.to_owned(),
        consumer: consumer.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "$JS.ACK.CW_ES_shop_orders.cw_shop_history.1.42.7.1732537200000000000.3";

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let t = AckTokens::new();
        let token = t.issue(REAL);
        let a = t.verify(&token).unwrap();
        assert_eq!(
            (a.stream.as_str(), a.consumer.as_str(), a.subject.as_str()),
            ("CW_ES_shop_orders", "cw_shop_history", REAL)
        );
        // Another sidecar's (or a restarted one's) key does not verify.
        assert!(AckTokens::new().verify(&token).is_err());
        // A raw ack subject, a forged subject with a copied tag, junk and giants are refused.
        assert!(t.verify(REAL).is_err());
        let (_, tag) = token.split_once('.').unwrap();
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(REAL.replace("cw_shop_history", "cw_shop_other")));
        assert!(t.verify(&forged).is_err());
        assert!(t.verify("x.y").is_err());
        assert!(t.verify(&"a".repeat(5000)).is_err());
    }

    #[test]
    fn ack_subjects_parse_exactly() {
        assert!(parse_ack_subject(REAL).is_some());
        let v2 = "$JS.ACK.hub.ACCHASH.CW_ES_shop_orders.cw_shop_history.1.42.7.1732537200000000000.3.rnd";
        assert_eq!(parse_ack_subject(v2).unwrap().consumer, "cw_shop_history");
        for bad in [
            "$JS.ACK.S.C.1.2.3.4",
            "$JS.ACK.S.C.1.2.3.4.x",
            "$JS.API.S.C.1.2.3.4.5",
            "$JS.ACK.S.*.1.2.3.4.5",
            "$JS.ACK..C.1.2.3.4.5",
        ] {
            assert!(parse_ack_subject(bad).is_none(), "{bad}");
        }
    }
}
