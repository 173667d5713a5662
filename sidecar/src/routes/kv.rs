//! `GET/PUT/DELETE /v1/global/{key}` and `/v1/state/{key}`: the namespace's global bucket and the
//! node's own state bucket.
//!
//! Values are JSON at the app and MessagePack in the bucket. `ETag` is the revision;
//! `If-Match` makes a write compare-and-set, `If-None-Match: *` makes a put create-only, and a
//! failed precondition answers 412 with the current revision.

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    http::{Resp, etag, header_str, json, parse_etag, parse_json, read_body, require_json},
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

/// Keys starting with this are the sidecar's own (exactly-once marks).
pub const RESERVED_KEY_PREFIX: &str = "_cw";
const MAX_KEY_LEN: usize = 512;

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

/// Serves one KV request.
pub async fn handle(state: &State, scope: Scope, key: &str, req: Request<Incoming>) -> Result<Resp> {
    let m = req.method().clone();
    if !matches!(m, Method::GET | Method::HEAD | Method::PUT | Method::DELETE) {
        return Err(Error::MethodNotAllowed { method: m.to_string(), allowed: "GET, PUT, DELETE" });
    }
    validate_key(key)?;
    let bucket = match scope {
        Scope::Global => state.global_bucket(),
        Scope::State => state.state_bucket(),
    };
    let (parts, body) = req.into_parts();
    let if_match = header_str(&parts.headers, "if-match")?.map(|v| parse_etag("If-Match", v)).transpose()?;
    let if_none_match = header_str(&parts.headers, "if-none-match")?.map(str::to_owned);
    if let Some(v) = &if_none_match
        && v != "*"
    {
        return Err(Error::InvalidHeader("If-None-Match: only * (create only) is supported".into()));
    }
    if if_match.is_some() && if_none_match.is_some() {
        return Err(Error::InvalidHeader("give If-Match or If-None-Match, not both".into()));
    }
    match m {
        Method::PUT => {
            require_json(&parts.headers)?;
            let body = read_body(&parts.headers, body, state.config.max_body).await?;
            let value: Value = parse_json(&body)?;
            let bytes = Bytes::from(rmp_serde::to_vec_named(&value).map_err(|e| Error::Internal(e.to_string()))?);
            if bytes.len() + 1024 > state.max_payload() {
                return Err(Error::PayloadTooLarge { limit: state.max_payload().saturating_sub(1024) });
            }
            let kv = state.bucket(&bucket).await?;
            let (status, revision) = if if_none_match.is_some() {
                match kv.create(key, bytes).await {
                    Ok(r) => (StatusCode::CREATED, r),
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                        let rev = current_revision(&kv, key).await;
                        return Err(Error::PreconditionFailed {
                            message: format!("key {key:?} already exists (If-None-Match: *)"),
                            revision: rev,
                        });
                    }
                    Err(e) => return Err(kv_error(&bucket, e)),
                }
            } else if let Some(rev) = if_match {
                match kv.update(key, bytes, rev).await {
                    Ok(r) => (StatusCode::OK, r),
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                        return Err(precondition(&kv, key, rev).await);
                    }
                    Err(e) => return Err(kv_error(&bucket, e)),
                }
            } else {
                (StatusCode::OK, kv.put(key, bytes).await.map_err(|e| kv_error(&bucket, e))?)
            };
            let mut r = json(status, &json!({"key": key, "revision": revision}));
            r.headers_mut().insert(header::ETAG, etag(revision));
            Ok(r)
        }
        Method::DELETE => {
            let kv = state.bucket(&bucket).await?;
            match kv.delete_expect_revision(key, if_match).await {
                Ok(()) => Ok(crate::http::empty(StatusCode::NO_CONTENT)),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    Err(precondition(&kv, key, if_match.unwrap_or(0)).await)
                }
                Err(e) => Err(kv_error(&bucket, e)),
            }
        }
        _ => {
            let kv = state.bucket(&bucket).await?;
            let entry = kv.entry(key).await.map_err(|e| kv_error(&bucket, e))?;
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                return Err(Error::KeyNotFound(key.to_owned()));
            };
            let mut r = match rmp_serde::from_slice::<Value>(&entry.value) {
                Ok(v) => json(StatusCode::OK, &v),
                // Written by something other than the sidecar: hand the bytes over as they are.
                Err(_) => {
                    let mut r = Resp::new(crate::http::full(entry.value.clone()));
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                    r
                }
            };
            r.headers_mut().insert(header::ETAG, etag(entry.revision));
            Ok(r)
        }
    }
}

async fn current_revision(kv: &kv::Store, key: &str) -> Option<u64> {
    match kv.entry(key).await {
        Ok(Some(e)) if e.operation == Operation::Put => Some(e.revision),
        Ok(_) => Some(0),
        Err(_) => None,
    }
}

async fn precondition(kv: &kv::Store, key: &str, expected: u64) -> Error {
    let rev = current_revision(kv, key).await;
    let now = match rev {
        Some(0) => "it does not exist".to_owned(),
        Some(r) => format!("its revision is {r}"),
        None => "it has changed".to_owned(),
    };
    Error::PreconditionFailed {
        message: format!("key {key:?} is not at revision {expected}: {now}; read it again and retry"),
        revision: rev,
    }
}

fn kv_error(bucket: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("bucket {bucket}: {e}"))
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
