//! Small HTTP helpers shared by the routes: bodies, JSON answers, query strings, ETags.

use std::{collections::HashMap, convert::Infallible};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use serde::Serialize;

use crate::error::{Error, Result};

/// The body type of every answer.
pub type Body = BoxBody<Bytes, Infallible>;
/// An answer.
pub type Resp = Response<Body>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON answer from bytes that are already JSON.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Resp {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The answer for an error.
pub fn error(e: &Error) -> Resp {
    let mut r = json(e.status(), &e.body());
    if let Error::MethodNotAllowed { allowed, .. } = e {
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    if let Some(secs) = e.retry_after() {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Error::PayloadTooLarge { .. } | Error::RequestTimeout(_) = e {
        // The rest of the body is not read, so the connection cannot carry another request;
        // saying so stops clients from reusing it and failing their next request.
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// An empty answer.
pub fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// Limits on reading a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Most bytes (413 beyond).
    pub max: usize,
    /// Longest time to receive it all (408 beyond): a client that trickles its body must not
    /// hold a request slot for ever.
    pub within: std::time::Duration,
}

/// Reads the whole body, refusing more than `limits.max` bytes with 413 and a body slower than
/// `limits.within` with 408.
pub async fn read_body(headers: &HeaderMap, body: Incoming, limits: BodyLimits) -> Result<Bytes> {
    let limit = limits.max;
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(Error::PayloadTooLarge { limit });
    }
    let collected = tokio::time::timeout(limits.within, Limited::new(body, limit).collect())
        .await
        .map_err(|_| Error::RequestTimeout(causeway_api::quantity::Duration::from(limits.within).to_string()))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(Error::PayloadTooLarge { limit })
        }
        Err(e) => Err(Error::InvalidEvent(format!("the request body could not be read: {e}"))),
    }
}

/// What a request body claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// No `Content-Type` at all.
    Missing,
    /// `application/json` or `application/*+json`.
    Json,
    /// `application/cloudevents+json` (structured mode).
    CloudEvent,
    /// `application/cloudevents-batch+json`.
    CloudEventBatch,
    /// Anything else.
    Other,
}

/// Classifies the `Content-Type` header.
pub fn media(headers: &HeaderMap) -> Media {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else { return Media::Missing };
    let Ok(ct) = ct.to_str() else { return Media::Other };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/cloudevents+json" => Media::CloudEvent,
        "application/cloudevents-batch+json" => Media::CloudEventBatch,
        "application/json" => Media::Json,
        e if e.starts_with("application/") && e.ends_with("+json") => Media::Json,
        _ => Media::Other,
    }
}

/// The content types a write may carry. A browser can send a cross-site POST without a CORS
/// preflight only as `text/plain`, a form or with no type at all, so requiring one of these keeps
/// web pages from writing through a developer's sidecar.
pub const WRITE_TYPES: &str = "application/json, application/cloudevents+json or application/cloudevents-batch+json";

/// Requires a JSON or CloudEvents content type on a write (POST, PUT), even one without a body.
pub fn require_write_type(headers: &HeaderMap) -> Result<()> {
    match media(headers) {
        Media::Json | Media::CloudEvent | Media::CloudEventBatch => Ok(()),
        // A CloudEvent in binary mode carries `ce-*` headers, which no cross-site page can send
        // without a CORS preflight (never granted here); its data is JSON.
        Media::Missing if headers.contains_key("ce-specversion") => Ok(()),
        Media::Missing => Err(Error::UnsupportedMediaType(format!(
            "a write needs a Content-Type: send {WRITE_TYPES} (it keeps web pages from writing through the sidecar)"
        ))),
        Media::Other => Err(Error::UnsupportedMediaType(format!(
            "Content-Type {:?} is not accepted: send {WRITE_TYPES}",
            headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("?")
        ))),
    }
}

/// Requires a plain JSON body (KV values, acks).
pub fn require_json(headers: &HeaderMap) -> Result<()> {
    match media(headers) {
        Media::Json => Ok(()),
        _ => Err(Error::UnsupportedMediaType(format!(
            "send Content-Type: application/json (got {:?})",
            headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("none")
        ))),
    }
}

/// Parses JSON, mapping errors to 400 `invalid_json`.
pub fn parse_json<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    if b.is_empty() {
        return Err(Error::InvalidJson("the body is empty".into()));
    }
    serde_json::from_slice(b).map_err(|e| Error::InvalidJson(e.to_string()))
}

/// A parsed query string, holding only parameters its route knows.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses `a=1&b=2`, refusing any parameter not in `allowed` (a misspelt condition such as
    /// `expectedsequence` must never be ignored) and any given twice.
    pub fn parse(q: Option<&str>, allowed: &'static [&'static str]) -> Result<Self> {
        let mut map = HashMap::new();
        let mut unknown = Vec::new();
        for (k, v) in
            q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect::<Vec<_>>()).unwrap_or_default()
        {
            if !allowed.contains(&k.as_str()) {
                if !unknown.contains(&k) {
                    unknown.push(k);
                }
                continue;
            }
            if map.contains_key(&k) {
                return Err(Error::InvalidQuery(format!("{k} is given twice; give it once")));
            }
            map.insert(k, v);
        }
        if !unknown.is_empty() {
            return Err(Error::UnknownParameter { names: unknown, allowed });
        }
        Ok(Self(map))
    }
    /// A raw value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    /// A number.
    pub fn u64(&self, k: &str) -> Result<Option<u64>> {
        self.get(k)
            .map(|v| v.parse::<u64>().map_err(|_| Error::InvalidQuery(format!("{k}={v:?} is not a whole number >= 0"))))
            .transpose()
    }
    /// A boolean (`true`/`false`/`1`/`0`).
    pub fn bool(&self, k: &str) -> Result<Option<bool>> {
        self.get(k)
            .map(|v| match v {
                "true" | "1" | "" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(Error::InvalidQuery(format!("{k}={v:?} is not true or false"))),
            })
            .transpose()
    }
}

/// A header as text, if present and printable.
pub fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => {
            v.to_str().map(|s| Some(s.trim())).map_err(|_| Error::InvalidHeader(format!("header {name} is not text")))
        }
    }
}

/// A quoted entity tag for a number.
pub fn etag(n: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{n}\"")).expect("digits are a valid header")
}

/// Decodes one `%`-encoded path segment.
pub fn decode_segment(s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Error::InvalidQuery(format!("path segment {s:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(etag(5), "\"5\"");
    }

    #[test]
    fn media_types() {
        let mut h = HeaderMap::new();
        assert_eq!(media(&h), Media::Missing);
        assert!(require_write_type(&h).is_err(), "a write without a content type is refused");
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        assert_eq!(media(&h), Media::Json);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json"));
        assert_eq!(media(&h), Media::CloudEvent);
        assert!(require_write_type(&h).is_ok());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(media(&h), Media::Other);
        assert!(require_json(&h).is_err());
        assert!(require_write_type(&h).is_err());
    }

    #[test]
    fn queries() {
        const ALLOWED: &[&str] = &["after", "follow", "subject"];
        let q = Query::parse(Some("after=3&follow=false&subject=a.%3E"), ALLOWED).unwrap();
        assert_eq!(q.u64("after").unwrap(), Some(3));
        assert_eq!(q.bool("follow").unwrap(), Some(false));
        assert_eq!(q.get("subject"), Some("a.>"));
        assert!(Query::parse(Some("after=x"), ALLOWED).unwrap().u64("after").is_err());
        let e = Query::parse(Some("after=1&expectedsequence=5&x"), ALLOWED).unwrap_err();
        assert_eq!(e.code(), "unknown_parameter");
        assert!(e.to_string().contains("expectedsequence") && e.to_string().contains("after, follow, subject"), "{e}");
        assert_eq!(Query::parse(Some("after=1&after=2"), ALLOWED).unwrap_err().code(), "invalid_query");
    }
}
