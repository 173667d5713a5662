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
    if let Error::PayloadTooLarge { .. } = e {
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

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(headers: &HeaderMap, body: Incoming, limit: usize) -> Result<Bytes> {
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(Error::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
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
    /// `application/json`, `*/*+json`, or no content type.
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
    let Some(ct) = headers.get(header::CONTENT_TYPE) else { return Media::Json };
    let Ok(ct) = ct.to_str() else { return Media::Other };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/cloudevents+json" => Media::CloudEvent,
        "application/cloudevents-batch+json" => Media::CloudEventBatch,
        "application/json" | "" => Media::Json,
        e if e.starts_with("application/") && e.ends_with("+json") => Media::Json,
        _ => Media::Other,
    }
}

/// Requires a JSON body.
pub fn require_json(headers: &HeaderMap) -> Result<()> {
    match media(headers) {
        Media::Json => Ok(()),
        _ => Err(Error::UnsupportedMediaType(format!(
            "send Content-Type: application/json (got {:?})",
            headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("?")
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

/// A parsed query string. Repeated keys keep the last value.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses `a=1&b=2`.
    pub fn parse(q: Option<&str>) -> Self {
        Self(q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default())
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

/// Parses an entity tag holding a number: `"42"`, `W/"42"` or `42`.
pub fn parse_etag(name: &str, v: &str) -> Result<u64> {
    let t = v.trim().trim_start_matches("W/").trim_matches('"');
    t.parse::<u64>().map_err(|_| {
        Error::InvalidHeader(format!(
            "{name}: {v:?} is not an entity tag of this API; use the ETag you were given, e.g. \"42\""
        ))
    })
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
        assert_eq!(parse_etag("If-Match", "\"42\"").unwrap(), 42);
        assert_eq!(parse_etag("If-Match", "W/\"7\"").unwrap(), 7);
        assert_eq!(parse_etag("If-Match", "3").unwrap(), 3);
        assert!(parse_etag("If-Match", "\"abc\"").is_err());
        assert_eq!(etag(5), "\"5\"");
    }

    #[test]
    fn media_types() {
        let mut h = HeaderMap::new();
        assert_eq!(media(&h), Media::Json);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        assert_eq!(media(&h), Media::Json);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json"));
        assert_eq!(media(&h), Media::CloudEvent);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(media(&h), Media::Other);
        assert!(require_json(&h).is_err());
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some("after=3&follow=false&subject=a.%3E"));
        assert_eq!(q.u64("after").unwrap(), Some(3));
        assert_eq!(q.bool("follow").unwrap(), Some(false));
        assert_eq!(q.get("subject"), Some("a.>"));
        assert!(Query::parse(Some("after=x")).u64("after").is_err());
    }
}
