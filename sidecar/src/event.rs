//! From a request to envelopes, and from stored messages back to the JSON an app sees.
//!
//! A send or append body is one of:
//! - a Causeway event: `{"type","payload","id"?,"causationId"?,"correlationId"?,"extensions"?}`,
//!   or a JSON array of them (a batch);
//! - a CloudEvent in structured mode (`application/cloudevents+json`, or the batch form);
//! - a CloudEvent in binary mode (`ce-*` headers, the JSON data as the body).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use causeway_api::{
    causal::{self, Cause, Given, LamportClock},
    envelope::{Envelope, EventView},
    names::validate_event_type,
};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    http::{Media, header_str, media},
};

/// Header an app sets to name the event that caused the ones it sends.
pub const HEADER_CAUSATION: &str = "cw-causation-id";
/// Header an app sets to name the conversation of the events it sends.
pub const HEADER_CORRELATION: &str = "cw-correlation-id";
/// Most events in one batch (the JetStream atomic batch limit).
pub const MAX_BATCH: usize = 1000;
/// Longest event id accepted.
pub const MAX_ID_LEN: usize = 128;
/// Ids starting with this are reserved for the sidecar's own probes.
pub const RESERVED_ID_PREFIX: &str = "cw-probe";

/// An event as the app described it, before the sidecar fills in the causal context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    /// Client-chosen id.
    pub id: Option<String>,
    /// Event type (validated).
    pub event_type: String,
    /// The JSON payload.
    pub payload: Value,
    /// Client-given causation id.
    pub causation_id: Option<String>,
    /// Client-given correlation id.
    pub correlation_id: Option<String>,
    /// Creation time given by a CloudEvent.
    pub time: Option<String>,
    /// Other CloudEvents attributes.
    pub extensions: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NativeEvent {
    #[serde(rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    payload: Value,
    id: Option<String>,
    causation_id: Option<String>,
    correlation_id: Option<String>,
    #[serde(default)]
    extensions: Map<String, Value>,
}

/// Checks a client-given event id.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && !id.starts_with(RESERVED_ID_PREFIX);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidEvent(format!(
            "id {id:?} is not valid: use 1 to {MAX_ID_LEN} letters, digits, '-', '_', '.' or ':' (ids starting with {RESERVED_ID_PREFIX:?} are reserved), or leave it out to get a ULID"
        )))
    }
}

fn check_causal_id(what: &str, id: &Option<String>) -> Result<()> {
    match id {
        Some(s) if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control) => {
            Err(Error::InvalidEvent(format!("{what} must be 1 to {MAX_ID_LEN} printable characters")))
        }
        _ => Ok(()),
    }
}

impl Draft {
    fn checked(self) -> Result<Self> {
        validate_event_type(&self.event_type)?;
        if let Some(id) = &self.id {
            validate_id(id)?;
        }
        check_causal_id("causationId", &self.causation_id)?;
        check_causal_id("correlationId", &self.correlation_id)?;
        if let Some(t) = &self.time
            && chrono::DateTime::parse_from_rfc3339(t).is_err()
        {
            return Err(Error::InvalidEvent(format!("time {t:?} is not RFC 3339, e.g. 2026-11-25T12:00:00Z")));
        }
        Ok(self)
    }

    /// A draft from a native event object (also used for `emit` entries).
    pub fn from_native(v: Value, index: Option<usize>) -> Result<Self> {
        let at = index.map(|i| format!("event [{i}]: ")).unwrap_or_default();
        if !v.is_object() {
            return Err(Error::InvalidEvent(format!("{at}an event is a JSON object with at least a \"type\"")));
        }
        let n: NativeEvent = serde_json::from_value(v).map_err(|e| Error::InvalidEvent(format!("{at}{e}")))?;
        let event_type = n
            .event_type
            .ok_or_else(|| Error::InvalidEvent(format!("{at}\"type\" is required, e.g. \"order-placed\"")))?;
        Draft {
            id: n.id,
            event_type,
            payload: n.payload,
            causation_id: n.causation_id,
            correlation_id: n.correlation_id,
            time: None,
            extensions: n.extensions,
        }
        .checked()
    }

    fn from_structured(v: Value, index: Option<usize>) -> Result<Self> {
        let at = index.map(|i| format!("event [{i}]: ")).unwrap_or_default();
        let Value::Object(mut m) = v else {
            return Err(Error::InvalidEvent(format!("{at}a structured CloudEvent is a JSON object")));
        };
        let mut take_str = |k: &str| -> Result<Option<String>> {
            match m.remove(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(Error::InvalidEvent(format!("{at}CloudEvents attribute {k:?} must be a string"))),
            }
        };
        let spec = take_str("specversion")?;
        if spec.as_deref() != Some("1.0") {
            return Err(Error::InvalidEvent(format!("{at}\"specversion\" must be \"1.0\"")));
        }
        let id = take_str("id")?.ok_or_else(|| Error::InvalidEvent(format!("{at}CloudEvents \"id\" is required")))?;
        let event_type =
            take_str("type")?.ok_or_else(|| Error::InvalidEvent(format!("{at}CloudEvents \"type\" is required")))?;
        let time = take_str("time")?;
        let causation_id = take_str("causationid")?;
        let correlation_id = take_str("correlationid")?;
        if m.contains_key("data_base64") {
            return Err(Error::UnsupportedMediaType(format!(
                "{at}data_base64 is not supported: Causeway events carry JSON data"
            )));
        }
        if let Some(Value::String(ct)) = m.get("datacontenttype")
            && !is_json_type(ct)
        {
            return Err(Error::UnsupportedMediaType(format!("{at}datacontenttype {ct:?} is not JSON")));
        }
        let payload = m.remove("data").unwrap_or(Value::Null);
        Draft { id: Some(id), event_type, payload, causation_id, correlation_id, time, extensions: m }.checked()
    }
}

fn is_json_type(ct: &str) -> bool {
    let e = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    e == "application/json" || e == "text/json" || (e.starts_with("application/") && e.ends_with("+json"))
}

/// Parses a send or append request. Returns the drafts and whether it was a batch.
pub fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<Draft>, bool)> {
    let binary = headers.contains_key("ce-specversion");
    // A binary-mode CloudEvent without a content type carries JSON data.
    let m = match media(headers) {
        Media::Missing if binary => Media::Json,
        m => m,
    };
    let (mut drafts, batch) = match m {
        Media::Other if binary => {
            return Err(Error::UnsupportedMediaType(
                "a binary-mode CloudEvent must carry JSON data: send Content-Type: application/json".into(),
            ));
        }
        Media::Other | Media::Missing => {
            return Err(Error::UnsupportedMediaType(format!(
                "send Content-Type: application/json (a Causeway event), application/cloudevents+json or CloudEvents binary mode; got {:?}",
                header_str(headers, "content-type").ok().flatten().unwrap_or("none")
            )));
        }
        Media::CloudEvent => (vec![Draft::from_structured(crate::http::parse_json(body)?, None)?], false),
        Media::CloudEventBatch => {
            let Value::Array(items) = crate::http::parse_json(body)? else {
                return Err(Error::InvalidEvent("a CloudEvents batch is a JSON array".into()));
            };
            check_batch_len(items.len())?;
            let d: Result<Vec<_>> =
                items.into_iter().enumerate().map(|(i, v)| Draft::from_structured(v, Some(i))).collect();
            (d?, true)
        }
        Media::Json if binary => (vec![from_binary(headers, body)?], false),
        Media::Json => match crate::http::parse_json(body)? {
            Value::Array(items) => {
                check_batch_len(items.len())?;
                let d: Result<Vec<_>> =
                    items.into_iter().enumerate().map(|(i, v)| Draft::from_native(v, Some(i))).collect();
                (d?, true)
            }
            v @ Value::Object(_) => (vec![Draft::from_native(v, None)?], false),
            _ => return Err(Error::InvalidEvent("send a JSON object (one event) or a JSON array (a batch)".into())),
        },
    };
    let causation = header_str(headers, HEADER_CAUSATION)?.map(str::to_owned);
    let correlation = header_str(headers, HEADER_CORRELATION)?.map(str::to_owned);
    check_causal_id(HEADER_CAUSATION, &causation)?;
    check_causal_id(HEADER_CORRELATION, &correlation)?;
    let mut seen = std::collections::HashSet::new();
    for d in &mut drafts {
        if d.causation_id.is_none() {
            d.causation_id = causation.clone();
        }
        if d.correlation_id.is_none() {
            d.correlation_id = correlation.clone();
        }
        if let Some(id) = &d.id
            && !seen.insert(id.clone())
        {
            return Err(Error::InvalidEvent(format!("id {id:?} appears twice in this batch")));
        }
    }
    Ok((drafts, batch))
}

fn check_batch_len(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidEvent("the batch is empty: send at least one event".into()));
    }
    if n > MAX_BATCH {
        return Err(Error::InvalidEvent(format!("a batch holds at most {MAX_BATCH} events, not {n}")));
    }
    Ok(())
}

fn from_binary(headers: &HeaderMap, body: &[u8]) -> Result<Draft> {
    let mut ext = Map::new();
    let get = |name: &str| -> Result<Option<String>> {
        header_str(headers, name)?
            .map(|v| crate::http::decode_segment(v).map_err(|_| Error::InvalidHeader(format!("{name} is not UTF-8"))))
            .transpose()
    };
    if get("ce-specversion")?.as_deref() != Some("1.0") {
        return Err(Error::InvalidHeader("ce-specversion must be 1.0".into()));
    }
    let id =
        get("ce-id")?.ok_or_else(|| Error::InvalidHeader("ce-id is required in CloudEvents binary mode".into()))?;
    let event_type =
        get("ce-type")?.ok_or_else(|| Error::InvalidHeader("ce-type is required in CloudEvents binary mode".into()))?;
    let time = get("ce-time")?;
    let causation_id = get("ce-causationid")?;
    let correlation_id = get("ce-correlationid")?;
    for (k, v) in headers {
        let k = k.as_str();
        let Some(attr) = k.strip_prefix("ce-") else { continue };
        if matches!(attr, "specversion" | "id" | "type" | "time" | "causationid" | "correlationid") {
            continue;
        }
        let v = v.to_str().map_err(|_| Error::InvalidHeader(format!("{k} is not text")))?;
        ext.insert(attr.to_owned(), Value::String(crate::http::decode_segment(v)?));
    }
    let payload = if body.is_empty() { Value::Null } else { crate::http::parse_json(body)? };
    Draft { id: Some(id), event_type, payload, causation_id, correlation_id, time, extensions: ext }.checked()
}

/// A bounded memory of recently delivered events' causal context, so that an app which names one
/// of them in `Cw-Causation-Id` gets its correlation and path inherited.
#[derive(Debug)]
pub struct Causes {
    cap: usize,
    inner: Mutex<(HashMap<String, Cause>, VecDeque<String>)>,
}

impl Causes {
    /// Remembers at most `cap` events.
    pub fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), inner: Mutex::default() }
    }
    /// Remembers a delivered event.
    pub fn remember(&self, e: &Envelope) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.contains_key(&e.id) {
            return;
        }
        if order.len() >= self.cap
            && let Some(old) = order.pop_front()
        {
            map.remove(&old);
        }
        order.push_back(e.id.clone());
        map.insert(e.id.clone(), cause_of(e));
    }
    /// The context of a remembered event.
    pub fn get(&self, id: &str) -> Option<Cause> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.get(id).cloned()
    }
}

/// The parts of an event that its effects inherit.
pub fn cause_of(e: &Envelope) -> Cause {
    Cause { id: e.id.clone(), correlation_id: e.correlation_id.clone(), path: e.path.clone() }
}

/// Fills in the causal context of a draft: id, correlation, causation, path and Lamport time.
///
/// `cause` is the event being handled (push replies); otherwise the draft's causation id is
/// looked up among recently delivered events.
pub fn build(
    d: Draft,
    cause: Option<&Cause>,
    causes: &Causes,
    clock: &LamportClock,
    sender: &str,
    target: &str,
    subject: &str,
) -> Envelope {
    let remembered;
    let cause = match cause {
        Some(c) => Some(c),
        None => {
            remembered = d.causation_id.as_deref().and_then(|id| causes.get(id));
            remembered.as_ref()
        }
    };
    let ctx = causal::context(
        Given { id: d.id, correlation_id: d.correlation_id, causation_id: d.causation_id },
        cause,
        sender,
        target,
    );
    Envelope {
        id: ctx.id,
        event_type: d.event_type,
        payload: d.payload,
        subject: Some(subject.to_owned()),
        time: d.time.unwrap_or_else(causal::now_rfc3339),
        sender: sender.to_owned(),
        causation_id: ctx.causation_id,
        correlation_id: ctx.correlation_id,
        path: ctx.path,
        lamport: clock.tick(),
        blob: None,
        dead_letter: None,
        replay_of: None,
        schema_version: None,
        extensions: d.extensions,
    }
}

/// A stored message, read back.
#[derive(Debug)]
pub enum Decoded {
    /// The event and the JSON an app sees.
    Event(Box<Envelope>, Vec<u8>),
    /// Its payload blob is larger than the room left in the answer (it was not fetched).
    TooLarge,
    /// It cannot be served (not a Causeway event, or its blob is gone or damaged): skip it and
    /// report why. Retrying cannot help.
    Skipped(String),
}

/// Decodes a stored message into the JSON an app sees, fetching a blob-stored payload (unless
/// it is larger than `room`) and advancing the Lamport clock. `Err` only when NATS could not be
/// asked (retry); a message that can never be served is [`Decoded::Skipped`].
pub async fn decode_stored(
    state: &crate::state::State,
    payload: &[u8],
    stream: &str,
    seq: u64,
    room: Option<usize>,
) -> Result<Decoded> {
    let mut env = match Envelope::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(stream, seq, error = %e, "skipping a message that is not a Causeway event");
            return Ok(Decoded::Skipped(format!("{stream}#{seq} is not a Causeway event: {e}")));
        }
    };
    if let Some(r) = env.blob.take() {
        if room.is_some_and(|room| r.size as usize > room) {
            return Ok(Decoded::TooLarge);
        }
        match state.blobs.fetch(&r).await {
            Ok(bytes) => match rmp_serde::from_slice(&bytes) {
                Ok(v) => env.payload = v,
                Err(e) => {
                    return Ok(Decoded::Skipped(format!(
                        "event {} ({stream}#{seq}): its payload blob does not decode: {e}",
                        env.id
                    )));
                }
            },
            Err(crate::blob::BlobError::Unavailable(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(stream, seq, error = %e, "skipping an event whose payload cannot be read");
                return Ok(Decoded::Skipped(format!("event {} ({stream}#{seq}): {e}", env.id)));
            }
        }
    }
    state.clock.observe(env.lamport);
    let v = view_json(&env, stream, seq);
    Ok(Decoded::Event(Box::new(env), v))
}

/// The JSON an app sees for a stored event.
pub fn view_json(e: &Envelope, stream: &str, sequence: u64) -> Vec<u8> {
    serde_json::to_vec(&EventView { envelope: e, stream, sequence }).unwrap_or_else(|_| b"{}".to_vec())
}

/// The JSON an app sees, as a value (to add fields such as `ackToken`).
pub fn view_value(e: &Envelope, stream: &str, sequence: u64) -> Value {
    serde_json::to_value(EventView { envelope: e, stream, sequence }).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("content-type", HeaderValue::from_static("application/json"));
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn native_single_and_batch() {
        let (d, batch) = parse_request(&h(&[]), br#"{"type":"order-placed","payload":{"a":1}}"#).unwrap();
        assert!(!batch);
        assert_eq!(d[0].event_type, "order-placed");
        assert_eq!(d[0].payload["a"], 1);
        let (d, batch) =
            parse_request(&h(&[("cw-causation-id", "c1")]), br#"[{"type":"a"},{"type":"b","causationId":"x"}]"#)
                .unwrap();
        assert!(batch);
        assert_eq!(d[0].causation_id.as_deref(), Some("c1"));
        assert_eq!(d[1].causation_id.as_deref(), Some("x"));
    }

    #[test]
    fn native_errors() {
        let e = |b: &[u8]| parse_request(&h(&[]), b).unwrap_err().code();
        assert_eq!(e(b"{"), "invalid_json");
        assert_eq!(e(b""), "invalid_json");
        assert_eq!(e(b"42"), "invalid_event");
        assert_eq!(e(b"[]"), "invalid_event");
        assert_eq!(e(br#"{"payload":1}"#), "invalid_event");
        assert_eq!(e(br#"{"type":"a","paylod":1}"#), "invalid_event");
        assert_eq!(e(br#"{"type":"a b"}"#), "invalid_type");
        assert_eq!(e(br#"{"type":"a","id":"has space"}"#), "invalid_event");
        assert_eq!(e(br#"[{"type":"a","id":"x"},{"type":"a","id":"x"}]"#), "invalid_event");
        let e = parse_request(&h(&[("content-type", "text/plain")]), b"{}").unwrap_err();
        assert_eq!(e.code(), "unsupported_media_type");
        let e = parse_request(&HeaderMap::new(), br#"{"type":"a"}"#).unwrap_err();
        assert_eq!(e.code(), "unsupported_media_type", "no content type is refused, not read as JSON");
    }

    #[test]
    fn cloudevents_structured_and_binary() {
        let body = br#"{"specversion":"1.0","id":"ce-1","type":"order.placed","source":"/web","data":{"x":1},"causationid":"c9"}"#;
        let (d, _) = parse_request(&h(&[("content-type", "application/cloudevents+json")]), body).unwrap();
        assert_eq!(d[0].id.as_deref(), Some("ce-1"));
        assert_eq!(d[0].payload["x"], 1);
        assert_eq!(d[0].extensions["source"], "/web");
        assert_eq!(d[0].causation_id.as_deref(), Some("c9"));
        let hs = h(&[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "b-1"),
            ("ce-type", "t"),
            ("ce-source", "/x%20y"),
        ]);
        let (d, _) = parse_request(&hs, br#"{"k":"v"}"#).unwrap();
        assert_eq!((d[0].id.as_deref(), d[0].event_type.as_str()), (Some("b-1"), "t"));
        assert_eq!(d[0].extensions["source"], "/x y");
        let hs = h(&[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-type", "t"), ("ce-time", "yesterday")]);
        assert_eq!(parse_request(&hs, b"{}").unwrap_err().code(), "invalid_event");
        let hs = h(&[("content-type", "application/json"), ("ce-specversion", "1.0"), ("ce-type", "t")]);
        assert_eq!(parse_request(&hs, b"{}").unwrap_err().code(), "invalid_header");
        let hs = h(&[("content-type", "text/plain"), ("ce-specversion", "1.0")]);
        assert_eq!(parse_request(&hs, b"x").unwrap_err().code(), "unsupported_media_type");
    }

    #[test]
    fn build_inherits_from_remembered_cause() {
        let causes = Causes::new(2);
        let clock = LamportClock::new(5);
        let mut cause =
            build(Draft { event_type: "a".into(), ..Default::default() }, None, &causes, &clock, "s/a", "s/b", "a");
        assert_eq!(cause.lamport, 6);
        cause.path = vec![["s/x".into(), "s/a".into()]];
        causes.remember(&cause);
        let d = Draft { event_type: "b".into(), causation_id: Some(cause.id.clone()), ..Default::default() };
        let e = build(d, None, &causes, &clock, "s/b", "s/c", "b");
        assert_eq!(e.correlation_id, cause.correlation_id);
        assert_eq!(e.causation_id.as_deref(), Some(cause.id.as_str()));
        assert_eq!(e.path.len(), 2);
        // Bounded: old entries fall out.
        for i in 0..3 {
            let mut x = cause.clone();
            x.id = format!("x{i}");
            causes.remember(&x);
        }
        assert!(causes.get(&cause.id).is_none());
    }
}
