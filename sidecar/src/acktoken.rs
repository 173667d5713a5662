//! Ack tokens of pull delivery: `POST /v1/listeners/{l}/fetch` hands one out per event, and
//! `POST /v1/acks` takes it back.
//!
//! A token is `<base64url(ack subject)>[.<base64url(context)>].<base64url(HMAC-SHA256)>`, the
//! MAC taken over everything before the last `.`, under a key this sidecar draws at start. So
//! only tokens this sidecar's own fetches handed out are accepted: a token naming another
//! consumer, an ack subject that was never delivered, a context that was never attached, or a
//! long string meant to break the NATS connection is refused with 400 before anything reaches
//! NATS. The ack subject inside is also parsed exactly (JetStream's `$JS.ACK.…` shape) and must
//! belong to one of this node's listeners. Tokens die with the sidecar that signed them: after a
//! restart the event is simply redelivered once its ack wait passes (delivery is at least once).
//!
//! The optional context is opaque here: what the ack needs that the ack subject does not hold
//! (the event's trace fields, see [`crate::trace::Traced`]), so the ack route keeps no state of
//! its own. It is at most [`MAX_CONTEXT_LEN`] bytes; a larger one is left out.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{hmac, rand::SecureRandom};

/// Longest token accepted. A real one is about 150 characters without a context and about 300
/// with the trace context of an event with ULID ids; the longest ids, type and subject the
/// sidecar accepts stay under this.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Largest context a token carries (bytes, before base64).
pub const MAX_CONTEXT_LEN: usize = 2048;

const NOT_OURS: &str = "the token is not one this sidecar handed out";

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
    /// Which delivery of the message this is (1 for the first).
    pub delivered: u64,
    /// The message's sequence in the stream.
    pub stream_sequence: u64,
}

/// What a verified token holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its ack subject.
    pub ack: AckSubject,
    /// The context it was issued with, if any.
    pub context: Option<Vec<u8>>,
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

    /// The token for a delivered message's ack subject, carrying `context` when it is given and
    /// at most [`MAX_CONTEXT_LEN`] bytes.
    pub fn issue(&self, ack_subject: &str, context: Option<&[u8]>) -> String {
        let mut body = URL_SAFE_NO_PAD.encode(ack_subject);
        if let Some(c) = context.filter(|c| c.len() <= MAX_CONTEXT_LEN) {
            body.push('.');
            URL_SAFE_NO_PAD.encode_string(c, &mut body);
        }
        let tag = hmac::sign(&self.key, body.as_bytes());
        body.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut body);
        body
    }

    /// The ack subject and context of a token this sidecar issued; `Err` says why not.
    pub fn verify(&self, token: &str) -> Result<Verified, &'static str> {
        if token.len() > MAX_TOKEN_LEN {
            return Err("the token is too long to be one this sidecar handed out");
        }
        let (body, tag) = token.rsplit_once('.').ok_or(NOT_OURS)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| NOT_OURS)?;
        hmac::verify(&self.key, body.as_bytes(), &tag)
            .map_err(|_| "the token was not handed out by this sidecar (or it restarted since): fetch again")?;
        let (subject, context) = match body.split_once('.') {
            Some((s, c)) => (s, Some(URL_SAFE_NO_PAD.decode(c).map_err(|_| "the token is damaged")?)),
            None => (body, None),
        };
        let subject = URL_SAFE_NO_PAD.decode(subject).map_err(|_| "the token is damaged")?;
        let subject = String::from_utf8(subject).map_err(|_| "the token is damaged")?;
        let ack = parse_ack_subject(&subject).ok_or("the token does not hold a JetStream ack subject")?;
        Ok(Verified { ack, context })
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
    if !(name_ok(stream) && name_ok(consumer) && numeric) {
        return None;
    }
    Some(AckSubject {
        subject: s.to_owned(),
        stream: stream.to_owned(),
        consumer: consumer.to_owned(),
        delivered: numbers[0].parse().ok()?,
        stream_sequence: numbers[1].parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "$JS.ACK.CW_ES_shop_orders.cw_shop_history.1.42.7.1732537200000000000.3";

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let t = AckTokens::new();
        let token = t.issue(REAL, None);
        let v = t.verify(&token).unwrap();
        let a = &v.ack;
        assert_eq!(
            (a.stream.as_str(), a.consumer.as_str(), a.subject.as_str(), a.delivered, a.stream_sequence),
            ("CW_ES_shop_orders", "cw_shop_history", REAL, 1, 42)
        );
        assert_eq!(v.context, None);
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
    fn a_context_travels_signed_and_bounded() {
        let t = AckTokens::new();
        let token = t.issue(REAL, Some(b"trace fields"));
        assert_eq!(token.matches('.').count(), 2, "{token}");
        let v = t.verify(&token).unwrap();
        assert_eq!((v.ack.subject.as_str(), v.context.as_deref()), (REAL, Some(&b"trace fields"[..])));
        // Another context under this token's tag, or none at all, does not verify.
        let (subject, rest) = token.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        let swapped = format!("{subject}.{}.{tag}", URL_SAFE_NO_PAD.encode(b"other fields"));
        assert!(t.verify(&swapped).is_err());
        assert!(t.verify(&format!("{subject}.{tag}")).is_err());
        // A context too large to carry is left out, and the token still acks.
        let big = vec![7u8; MAX_CONTEXT_LEN + 1];
        let v = t.verify(&t.issue(REAL, Some(&big))).unwrap();
        assert_eq!((v.ack.subject.as_str(), v.context), (REAL, None));
        let largest = t.issue(REAL, Some(&vec![7u8; MAX_CONTEXT_LEN]));
        assert!(largest.len() <= MAX_TOKEN_LEN, "{}", largest.len());
        assert_eq!(t.verify(&largest).unwrap().context.map(|c| c.len()), Some(MAX_CONTEXT_LEN));
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
