//! `GET/PUT/DELETE /v1/global/{key}` and `/v1/state/{key}`: the namespace's global bucket and the
//! node's own state bucket.
//!
//! - Values are JSON at the app and MessagePack in the bucket. A value too large for one NATS
//!   message is kept as a blob (see [`crate::blob`]) and the KV message holds its reference,
//!   marked by the `Cw-Blob` header; reads put the value back.
//! - `ETag` is the revision. `If-Match` (a revision or `*`) and `If-None-Match` (`*` or
//!   revisions) follow RFC 9110: a failed condition answers 412 on writes, and on GET 304
//!   (`If-None-Match`) or 412 (`If-Match`).
//! - Every write is compare-and-set against the revision it read, so a write knows exactly which
//!   value it replaced (and deletes that value's blob); writes carry a `Nats-Msg-Id`, so one that
//!   is sent again after a dropped connection is stored once.
//! - Answers are never cacheable (`Cache-Control: no-store`).

use async_nats::HeaderMap;
use bytes::Bytes;
use causeway_api::envelope::{BlobRef, HEADER_BLOB, HEADER_MSG_ID};
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::{
    blob::{BlobError, HEADROOM, Written},
    conditional::{Conditions, Support, Verdict},
    error::{Error, Result},
    http::{Resp, etag, json, parse_json, read_body, require_json},
    nats::{Stored, direct_last, request_ack, resilient},
    publish::ERR_WRONG_LAST_SEQUENCE,
    state::State,
};

/// Which bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `CW_GL_<ns>`.
    Global,
    /// `CW_ST_<ns>_<node>`.
    State,
}

/// Keys starting with this are the sidecar's own (exactly-once marks, the Lamport clock).
pub const RESERVED_KEY_PREFIX: &str = "_cw";
const MAX_KEY_LEN: usize = 512;
/// Compare-and-set rounds before a write to a key others keep writing gives up with 503.
const CAS_ROUNDS: usize = 16;
const KV_OPERATION: &str = "KV-Operation";

/// Checks a key: NATS KV key characters, no empty token.
pub fn validate_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'))
        && key.split('.').all(|t| !t.is_empty());
    if !ok {
        return Err(Error::InvalidKey(format!(
            "key {key:?} is not valid: use up to {MAX_KEY_LEN} letters, digits and - / _ = . (no empty part between dots)"
        )));
    }
    if key.starts_with(RESERVED_KEY_PREFIX) {
        return Err(Error::InvalidKey(format!(
            "keys starting with {RESERVED_KEY_PREFIX:?} are reserved for the sidecar"
        )));
    }
    Ok(())
}

/// The last message of a key.
struct Current {
    /// Its revision (also of a delete marker).
    revision: u64,
    /// False for a delete marker.
    live: bool,
    /// Where its value lives, when it is a blob.
    blob: Option<BlobRef>,
    msg: Stored,
}

impl Current {
    /// The ETag to evaluate conditions against: none for a deleted or absent key.
    fn tag(c: &Option<Current>) -> Option<u64> {
        c.as_ref().filter(|c| c.live).map(|c| c.revision)
    }
}

struct Bucket<'a> {
    state: &'a State,
    name: String,
    key: &'a str,
}

impl Bucket<'_> {
    fn stream(&self) -> String {
        format!("KV_{}", self.name)
    }

    fn subject(&self) -> String {
        format!("$KV.{}.{}", self.name, self.key)
    }

    async fn current(&self) -> Result<Option<Current>> {
        let (stream, subject) = (self.stream(), self.subject());
        let st = self.state;
        let m = resilient(&st.link, st.config.nats_wait, || direct_last(&st.client, &stream, &subject)).await?;
        Ok(m.map(|msg| {
            let op = msg.headers.get(KV_OPERATION).map(|v| v.to_string());
            let live = !matches!(op.as_deref(), Some("DEL" | "PURGE"));
            let blob = if live && msg.headers.get(HEADER_BLOB).is_some() {
                rmp_serde::from_slice::<BlobRef>(&msg.payload).ok()
            } else {
                None
            };
            Current { revision: msg.sequence, live, blob, msg }
        }))
    }

    /// Writes `payload` if the key's last revision is still `expected` (0: no message yet).
    /// `Ok(None)` when someone wrote in between.
    async fn write(&self, expected: u64, payload: Bytes, mut h: HeaderMap) -> Result<Option<u64>> {
        h.insert(HEADER_MSG_ID, ulid::Ulid::new().to_string().as_str());
        h.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        let st = self.state;
        let subject = self.subject();
        let ack =
            resilient(&st.link, st.config.nats_wait, || request_ack(&st.client, &subject, h.clone(), payload.clone()))
                .await?;
        match ack.error {
            None => Ok(Some(ack.seq)),
            Some(e) if e.err_code == ERR_WRONG_LAST_SEQUENCE => Ok(None),
            Some(e) => Err(Error::Unavailable(format!(
                "bucket {}: JetStream refused the write: {} (code {})",
                self.name, e.description, e.err_code
            ))),
        }
    }
}

/// Serves one KV request.
pub async fn handle(state: &State, scope: Scope, key: &str, req: Request<Incoming>) -> Result<Resp> {
    let m = req.method().clone();
    if !matches!(m, Method::GET | Method::HEAD | Method::PUT | Method::DELETE) {
        return Err(Error::MethodNotAllowed { method: m.to_string(), allowed: "GET, PUT, DELETE" });
    }
    crate::http::Query::parse(req.uri().query(), &[])?;
    validate_key(key)?;
    let name = match scope {
        Scope::Global => state.global_bucket(),
        Scope::State => state.state_bucket(),
    };
    let bucket = Bucket { state, name, key };
    let (parts, body) = req.into_parts();
    let conds = Conditions::parse(&parts.headers, Support::Tags, "")?;
    let mut r = match m {
        Method::PUT => {
            require_json(&parts.headers)?;
            let body = read_body(&parts.headers, body, state.body_limits()).await?;
            let value: Value = parse_json(&body)?;
            put(&bucket, &conds, &value).await?
        }
        Method::DELETE => delete(&bucket, &conds).await?,
        _ => get(&bucket, &conds, m == Method::HEAD).await?,
    };
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn precondition(key: &str, current: Option<u64>) -> Error {
    let now = match current {
        None => "it does not exist".to_owned(),
        Some(r) => format!("its revision is {r}"),
    };
    Error::PreconditionFailed {
        message: format!("the condition on key {key:?} does not hold: {now}; read it again and retry"),
        revision: Some(current.unwrap_or(0)),
    }
}

fn contended(key: &str) -> Error {
    Error::Unavailable(format!("key {key:?} kept changing while this write tried to land; retry"))
}

async fn put(b: &Bucket<'_>, conds: &Conditions, value: &Value) -> Result<Resp> {
    let st = b.state;
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| Error::Internal(e.to_string()))?;
    let max_payload = st.max_payload()?;
    let (payload, headers, blob) = if bytes.len() + HEADROOM > max_payload {
        st.link.connected(st.config.nats_wait).await?;
        let w = st.blobs.put("kv", &format!("{}/{}", b.name, b.key), &bytes, max_payload).await?;
        let mut h = HeaderMap::new();
        h.insert(HEADER_BLOB, "1");
        let r = rmp_serde::to_vec_named(&w.blob).map_err(|e| Error::Internal(e.to_string()))?;
        (Bytes::from(r), h, Some(w))
    } else {
        (Bytes::from(bytes), HeaderMap::new(), None)
    };
    let result = cas_loop(b, conds, payload, headers).await;
    finish(b, blob.as_ref(), &result).await;
    let (created, revision, _) = result?;
    let mut r =
        json(if created { StatusCode::CREATED } else { StatusCode::OK }, &json!({"key": b.key, "revision": revision}));
    r.headers_mut().insert(header::ETAG, etag(revision));
    Ok(r)
}

/// After a write: delete the blob the write replaced, or this write's own blob if it failed for
/// good. (After a 503 it may have landed, so its blob stays.)
async fn finish(b: &Bucket<'_>, mine: Option<&Written>, result: &Result<(bool, u64, Option<BlobRef>)>) {
    match result {
        Ok((_, _, Some(replaced))) => b.state.blobs.delete_ref(replaced).await,
        Ok(_) => {}
        Err(e) if e.status().is_client_error() => {
            if let Some(w) = mine {
                b.state.blobs.delete(w).await;
            }
        }
        Err(_) => {}
    }
}

/// Compare-and-set against what was read, until it lands or a condition fails. Returns whether
/// the key was created, the new revision, and the blob of the value it replaced.
async fn cas_loop(
    b: &Bucket<'_>,
    conds: &Conditions,
    payload: Bytes,
    headers: HeaderMap,
) -> Result<(bool, u64, Option<BlobRef>)> {
    for _ in 0..CAS_ROUNDS {
        let cur = b.current().await?;
        let tag = Current::tag(&cur);
        if conds.evaluate(tag, false) != Verdict::Proceed {
            return Err(precondition(b.key, tag));
        }
        let expected = cur.as_ref().map(|c| c.revision).unwrap_or(0);
        if let Some(rev) = b.write(expected, payload.clone(), headers.clone()).await? {
            return Ok((tag.is_none(), rev, cur.and_then(|c| c.blob)));
        }
    }
    Err(contended(b.key))
}

async fn delete(b: &Bucket<'_>, conds: &Conditions) -> Result<Resp> {
    let mut h = HeaderMap::new();
    h.insert(KV_OPERATION, "DEL");
    let mut outcome = Err(contended(b.key));
    for _ in 0..CAS_ROUNDS {
        let cur = b.current().await?;
        let tag = Current::tag(&cur);
        if conds.evaluate(tag, false) != Verdict::Proceed {
            return Err(precondition(b.key, tag));
        }
        let Some(cur) = cur.filter(|c| c.live) else {
            // Nothing to delete: deleting is idempotent.
            outcome = Ok(None);
            break;
        };
        if b.write(cur.revision, Bytes::new(), h.clone()).await?.is_some() {
            outcome = Ok(cur.blob);
            break;
        }
    }
    if let Some(blob) = outcome? {
        b.state.blobs.delete_ref(&blob).await;
    }
    Ok(crate::http::empty(StatusCode::NO_CONTENT))
}

async fn get(b: &Bucket<'_>, conds: &Conditions, head: bool) -> Result<Resp> {
    // A value held as a blob can be replaced (and its blob deleted) between reading the key and
    // reading the blob; then the key is read again.
    for _ in 0..CAS_ROUNDS {
        let cur = b.current().await?;
        let tag = Current::tag(&cur);
        match conds.evaluate(tag, true) {
            Verdict::Failed => return Err(precondition(b.key, tag)),
            Verdict::NotModified => {
                let mut r = crate::http::empty(StatusCode::NOT_MODIFIED);
                if let Some(t) = tag {
                    r.headers_mut().insert(header::ETAG, etag(t));
                }
                return Ok(r);
            }
            Verdict::Proceed => {}
        }
        let Some(cur) = cur.filter(|c| c.live) else { return Err(Error::KeyNotFound(b.key.to_owned())) };
        let bytes = match &cur.blob {
            None => cur.msg.payload.to_vec(),
            Some(r) => match b.state.blobs.fetch(r).await {
                Ok(v) => v,
                Err(BlobError::Unavailable(e)) => return Err(e),
                Err(e) => {
                    let again = b.current().await?;
                    if again.is_some_and(|a| a.revision != cur.revision) {
                        continue;
                    }
                    return Err(Error::Internal(format!("key {:?}: {e}; write the key again", b.key)));
                }
            },
        };
        let mut r = match rmp_serde::from_slice::<Value>(&bytes) {
            Ok(v) => json(StatusCode::OK, &v),
            // Written by something other than the sidecar: hand the bytes over as they are.
            Err(_) => {
                let mut r = Resp::new(crate::http::full(bytes));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                r
            }
        };
        if head {
            *r.body_mut() = crate::http::full(Bytes::new());
        }
        r.headers_mut().insert(header::ETAG, etag(cur.revision));
        return Ok(r);
    }
    Err(contended(b.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["a", "cart/42", "a.b", "x_y-z=1"] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", ".a", "a.", "a..b", "é", "_cw.handled", "a*", "a>"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
