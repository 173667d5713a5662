//! The one error type of the HTTP API. Every variant maps to a status and a snake_case code, and
//! is answered as `{"error":"code","message":"…"}` (plus a few fields where the contract names
//! them, such as `lastSequence` on a conflict). Bad input is always a 4xx, never a 500.

use causeway_api::names::NameError;
use http::StatusCode;
use serde_json::{Map, Value, json};

/// Result of a route.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not the JSON it should be.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The JSON is well-formed but is not an event (or batch of them).
    #[error("{0}")]
    InvalidEvent(String),
    /// A name, type or subject breaks the naming rules.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A query parameter is wrong.
    #[error("{0}")]
    InvalidQuery(String),
    /// A query parameter this route does not know (a misspelt condition must never turn into an
    /// unconditional write).
    #[error(
        "unknown query parameter{} {} for this route; allowed: {}",
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        list_static(allowed)
    )]
    UnknownParameter {
        /// What was given.
        names: Vec<String>,
        /// What the route accepts.
        allowed: &'static [&'static str],
    },
    /// A conditional header this route does not evaluate.
    #[error("{header} is not supported on this route; {supported}")]
    UnsupportedCondition {
        /// The header.
        header: &'static str,
        /// What the route supports instead.
        supported: &'static str,
    },
    /// A header is wrong.
    #[error("{0}")]
    InvalidHeader(String),
    /// A KV key is wrong.
    #[error("{0}")]
    InvalidKey(String),
    /// An ack entry is wrong.
    #[error("{0}")]
    InvalidAck(String),
    /// The `Host` header is not one this sidecar serves (DNS rebinding).
    #[error("Host {0:?} is not served here: use 127.0.0.1, localhost or [::1] (or set CAUSEWAY_ALLOWED_HOSTS)")]
    ForbiddenHost(String),
    /// A browser page of another origin.
    #[error("requests from origin {0:?} are refused: the sidecar serves its own pod, not web pages")]
    ForbiddenOrigin(String),
    /// The request body arrived too slowly.
    #[error("the request body did not arrive within {0}; send it at once")]
    RequestTimeout(String),
    /// The API token is missing or wrong.
    #[error("send the sidecar's API token as 'Authorization: Bearer <token>'")]
    Unauthorized,
    /// No such node.
    #[error("no node {name:?} is known in this namespace; known nodes: {}", list(known))]
    UnknownNode {
        /// What was asked for.
        name: String,
        /// What exists.
        known: Vec<String>,
    },
    /// No such store.
    #[error("no event store {name:?} is known in this namespace; known stores: {}", list(known))]
    UnknownStore {
        /// What was asked for.
        name: String,
        /// What exists.
        known: Vec<String>,
    },
    /// No such listener for this node.
    #[error("no listener {name:?} belongs to this node; its listeners: {}", list(known))]
    UnknownListener {
        /// What was asked for.
        name: String,
        /// What exists.
        known: Vec<String>,
    },
    /// No route.
    #[error("no route {method} {path}; GET /v1/openapi.json lists every route")]
    NoRoute {
        /// Method.
        method: String,
        /// Path.
        path: String,
    },
    /// Route exists, method does not.
    #[error("{method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed {
        /// Method.
        method: String,
        /// Allowed methods.
        allowed: &'static str,
    },
    /// KV key absent.
    #[error("key {0:?} does not exist")]
    KeyNotFound(String),
    /// No trace record of this correlation id.
    #[error(
        "no trace of correlation id {0:?} in this namespace (traces are kept 24 hours, and only for nodes with spec.trace.enabled)"
    )]
    TraceNotFound(String),
    /// Fetch on a push listener.
    #[error("listener {0:?} delivers by push; only pull listeners can be fetched")]
    NotPullListener(String),
    /// The listener has no `deadLetter`, so it has no dead letters to list or replay.
    #[error(
        "listener {0:?} has no deadLetter: give it spec.deadLetter {{store, subject}} to keep and replay the events it refuses"
    )]
    NoDeadLetter(String),
    /// No such dead letter of this listener.
    #[error(
        "listener {listener:?} has no dead letter {id:?}: give its sequence in the dead-letter store (GET /v1/listeners/{listener}/deadletters lists them) or an event id"
    )]
    UnknownDeadLetter {
        /// The listener.
        listener: String,
        /// What was asked for.
        id: String,
    },
    /// A dead letter that replaying cannot fix.
    #[error("{0}")]
    NotReplayable(String),
    /// The node's access policy does not allow this.
    #[error("{message}")]
    Forbidden {
        /// The policy that refused it: `<ns>/<node> spec.access.<list>`.
        policy: String,
        /// What was refused and how to allow it.
        message: String,
    },
    /// The event id is already stored elsewhere in the same stream.
    #[error(
        "event id {id:?} is already stored in {stream} on subject {subject:?} at sequence {sequence}; ids are unique per store (and inbox) within its duplicate window, so use a new id for a new event"
    )]
    IdConflict {
        /// The id.
        id: String,
        /// The stream.
        stream: String,
        /// Subject relative to the store or inbox where it lives.
        subject: String,
        /// Its sequence.
        sequence: u64,
    },
    /// Expected sequence did not match.
    #[error("the subject's last sequence is {last}, not the expected one; load the subject again and retry")]
    SequenceConflict {
        /// The subject's actual last sequence.
        last: u64,
    },
    /// A batch reused ids already stored.
    #[error(
        "event ids {ids:?} of this batch were already stored within the duplicate window; a batch is stored all or nothing, so send only new events"
    )]
    DuplicateInBatch {
        /// The ids found stored.
        ids: Vec<String>,
    },
    /// The target stream does not accept atomic batches.
    #[error("{0}")]
    BatchNotSupported(String),
    /// A payload fails the JSON Schema of its type.
    #[error("{}", schema_message(failures, *batch))]
    SchemaViolation {
        /// Each failing event: its index in the request, and why.
        failures: Vec<(usize, causeway_api::schema::Refusal)>,
        /// The request was a batch (an array).
        batch: bool,
    },
    /// KV precondition failed.
    #[error("{message}")]
    PreconditionFailed {
        /// Explanation.
        message: String,
        /// Current revision (0: no key).
        revision: Option<u64>,
    },
    /// Body over the limit.
    #[error("the body is larger than the sidecar's limit of {limit} bytes (set CAUSEWAY_MAX_BODY to raise it)")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Wrong content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The registry has not been read yet (NATS unreachable, or the sidecar is starting).
    #[error(
        "the sidecar has not read the registry yet ({0}); names cannot be resolved until it has, retry in a moment"
    )]
    NotSynced(String),
    /// Too many of something at once.
    #[error("{0}")]
    TooBusy(String),
    /// NATS or a JetStream object is not available.
    #[error("{0}")]
    Unavailable(String),
    /// NATS did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

fn list(v: &[String]) -> String {
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

fn list_static(v: &[&str]) -> String {
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

impl Error {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            InvalidJson(_)
            | InvalidEvent(_)
            | InvalidName(_)
            | InvalidQuery(_)
            | UnknownParameter { .. }
            | UnsupportedCondition { .. }
            | InvalidHeader(_)
            | InvalidKey(_)
            | InvalidAck(_) => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            ForbiddenHost(_) | ForbiddenOrigin(_) | Forbidden { .. } => StatusCode::FORBIDDEN,
            RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            UnknownNode { .. }
            | UnknownStore { .. }
            | UnknownListener { .. }
            | UnknownDeadLetter { .. }
            | NoRoute { .. }
            | KeyNotFound(_)
            | TraceNotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            NotPullListener(_)
            | NoDeadLetter(_)
            | NotReplayable(_)
            | IdConflict { .. }
            | SequenceConflict { .. }
            | DuplicateInBatch { .. } => StatusCode::CONFLICT,
            BatchNotSupported(_) | SchemaViolation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            NotSynced(_) | TooBusy(_) | Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The snake_case code in the body (also the metric label).
    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            InvalidJson(_) => "invalid_json",
            InvalidEvent(_) => "invalid_event",
            InvalidName(NameError::TokenPath { what: "event type", .. } | NameError::TypePattern { .. }) => {
                "invalid_type"
            }
            InvalidName(NameError::TokenPath { .. } | NameError::SubjectPattern { .. }) => "invalid_subject",
            InvalidName(NameError::DnsLabel { .. } | NameError::AccessRef { .. }) => "invalid_name",
            InvalidQuery(_) => "invalid_query",
            UnknownParameter { .. } => "unknown_parameter",
            UnsupportedCondition { .. } => "unsupported_condition",
            ForbiddenHost(_) => "forbidden_host",
            ForbiddenOrigin(_) => "forbidden_origin",
            RequestTimeout(_) => "request_timeout",
            IdConflict { .. } => "id_conflict",
            Forbidden { .. } => "forbidden",
            NotSynced(_) => "not_ready",
            InvalidHeader(_) => "invalid_header",
            InvalidKey(_) => "invalid_key",
            InvalidAck(_) => "invalid_ack",
            Unauthorized => "unauthorized",
            UnknownNode { .. } => "unknown_node",
            UnknownStore { .. } => "unknown_store",
            UnknownListener { .. } => "unknown_listener",
            NoRoute { .. } => "not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            KeyNotFound(_) => "key_not_found",
            TraceNotFound(_) => "trace_not_found",
            NotPullListener(_) => "not_pull_listener",
            NoDeadLetter(_) => "no_dead_letter",
            UnknownDeadLetter { .. } => "unknown_dead_letter",
            NotReplayable(_) => "not_replayable",
            SequenceConflict { .. } => "sequence_conflict",
            DuplicateInBatch { .. } => "duplicate_in_batch",
            BatchNotSupported(_) => "batch_not_supported",
            SchemaViolation { .. } => "schema_violation",
            PreconditionFailed { .. } => "precondition_failed",
            PayloadTooLarge { .. } => "payload_too_large",
            UnsupportedMediaType(_) => "unsupported_media_type",
            TooBusy(_) => "too_busy",
            Unavailable(_) => "unavailable",
            Timeout(_) => "timeout",
            Internal(_) => "internal",
        }
    }

    /// Seconds a client should wait before retrying: every 503 and 504 carries one.
    pub fn retry_after(&self) -> Option<u32> {
        match self.status() {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => Some(1),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("error".into(), self.code().into());
        m.insert("message".into(), self.to_string().into());
        match self {
            Error::SequenceConflict { last } => {
                m.insert("lastSequence".into(), json!(last));
            }
            Error::UnknownNode { known, .. }
            | Error::UnknownStore { known, .. }
            | Error::UnknownListener { known, .. } => {
                m.insert("known".into(), json!(known));
            }
            Error::DuplicateInBatch { ids } => {
                m.insert("ids".into(), json!(ids));
            }
            Error::UnknownParameter { names, allowed } => {
                m.insert("unknown".into(), json!(names));
                m.insert("allowed".into(), json!(allowed));
            }
            Error::IdConflict { stream, subject, sequence, .. } => {
                m.insert("stream".into(), json!(stream));
                m.insert("subject".into(), json!(subject));
                m.insert("sequence".into(), json!(sequence));
            }
            Error::Forbidden { policy, .. } => {
                m.insert("policy".into(), json!(policy));
            }
            Error::PreconditionFailed { revision: Some(r), .. } => {
                m.insert("revision".into(), json!(r));
            }
            Error::SchemaViolation { failures, .. } => {
                let one = |i: &usize, r: &causeway_api::schema::Refusal| json!({"index": i, "type": r.event_type, "schemaVersion": r.version, "violations": r.violations});
                if let Some((_, first)) = failures.first() {
                    m.insert("type".into(), json!(first.event_type));
                    m.insert("schemaVersion".into(), json!(first.version));
                    m.insert("violations".into(), json!(first.violations));
                }
                m.insert("failures".into(), failures.iter().map(|(i, r)| one(i, r)).collect());
            }
            _ => {}
        }
        Value::Object(m)
    }
}

fn schema_message(failures: &[(usize, causeway_api::schema::Refusal)], batch: bool) -> String {
    let Some((i, r)) = failures.first() else { return "the payload fails its schema".into() };
    let first = r.violations.first();
    let at = first.map(|v| if v.pointer.is_empty() { "the payload".to_owned() } else { v.pointer.clone() });
    let what = first.map(|v| v.message.as_str()).unwrap_or("invalid");
    let which = if batch { format!("event {i} of the batch") } else { "the event".to_owned() };
    let more =
        if failures.len() > 1 { format!(" ({} events fail; see failures)", failures.len()) } else { String::new() };
    let nothing = if batch { "nothing of the batch was stored" } else { "nothing was stored" };
    format!(
        "{which} (type {}) fails schema version {} at {}: {what}{more}; {nothing}: fix the payload, or the schema in spec.schemas",
        r.event_type,
        r.version,
        at.unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let e = Error::SequenceConflict { last: 7 };
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(e.body()["lastSequence"], 7);
        assert_eq!(e.body()["error"], "sequence_conflict");
        let e = Error::from(causeway_api::names::validate_event_type("a b").unwrap_err());
        assert_eq!((e.status(), e.code()), (StatusCode::BAD_REQUEST, "invalid_type"));
        let e = Error::from(causeway_api::names::validate_subject("a..b").unwrap_err());
        assert_eq!(e.code(), "invalid_subject");
        let e = Error::UnknownNode { name: "x".into(), known: vec!["a".into(), "b".into()] };
        assert!(e.to_string().contains("a, b"), "{e}");
        assert_eq!(e.body()["known"][1], "b");
    }
}
