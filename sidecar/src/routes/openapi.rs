//! `GET /v1/openapi.json`: the OpenAPI 3.0 document of every route.

use std::sync::OnceLock;

use http::StatusCode;
use serde_json::{Value, json};

use crate::http::{Resp, json_bytes};

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

/// Serves the document.
pub fn get() -> Resp {
    json_bytes(StatusCode::OK, serde_json::to_vec(document()).unwrap_or_default())
}

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok_json(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

fn path_param(name: &str, desc: &str, pattern: Option<&str>) -> Value {
    let mut schema = json!({"type": "string"});
    if let Some(p) = pattern {
        schema["pattern"] = p.into();
    }
    json!({"name": name, "in": "path", "required": true, "description": desc, "schema": schema})
}

fn query(name: &str, desc: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": desc, "schema": schema})
}

fn header_schema(name: &str, desc: &str, schema: Value) -> Value {
    json!({"name": name, "in": "header", "required": false, "description": desc, "schema": schema})
}

/// `*` or a list of strong entity tags holding numbers (RFC 9110): `"42"` or `"1", "2"`. Weak
/// and unquoted tags are refused.
const ETAG_PATTERN: &str = r#"^(\*|"[0-9]{1,19}"( *, *"[0-9]{1,19}")*)$"#;
/// A KV key: parts of `[-/_=A-Za-z0-9]` joined by single dots (keys starting with `_cw` are
/// reserved, which the pattern does not say).
const KEY_PATTERN: &str = r"^[-/_=A-Za-z0-9]+(\.[-/_=A-Za-z0-9]+)*$";
/// A causation or correlation id in a header: printable ASCII without spaces.
const CAUSAL_HEADER_PATTERN: &str = "^[!-~]{1,128}$";
/// An event id the client chooses.
const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// The listener path parameter and the dead-letter filters, plus `extra` of `replayed`, `after`,
/// `limit` and `delete`.
fn dead_letter_filters(extra: &[&str]) -> Value {
    let mut v = vec![
        path_param("listener", "Listener name", None),
        query(
            "since",
            "Dead-lettered at or after: RFC 3339, or a duration ago (10m, 2h, 7d)",
            json!({"type": "string"}),
        ),
        query("until", "Dead-lettered before: RFC 3339, or a duration ago", json!({"type": "string"})),
        query("type", "Event types, comma-separated: exact, or prefix.*", json!({"type": "string"})),
        query("error", "A substring of the error (case-insensitive)", json!({"type": "string"})),
        query("status", "The app's HTTP status", json!({"type": "integer", "minimum": 100, "maximum": 599})),
    ];
    for e in extra {
        v.push(match *e {
            "replayed" => query(
                "replayed",
                "true: only replayed ones; false: only those not replayed yet",
                json!({"type": "boolean"}),
            ),
            "after" => query(
                "after",
                "Only dead letters after this sequence (page on with lastSequence)",
                json!({"type": "integer", "minimum": 0}),
            ),
            "limit" => query(
                "limit",
                "At most this many (default 100)",
                json!({"type": "integer", "minimum": 1, "maximum": 1000}),
            ),
            _ => query(
                "delete",
                "Delete each dead letter once replayed (default: keep it, marked)",
                json!({"type": "boolean"}),
            ),
        });
    }
    Value::Array(v)
}

/// Answers every `/v1` route can give: bad input, refused browsers, slow bodies, temporary
/// trouble (503 and 504 with Retry-After).
fn add_common_answers(doc: &mut Value) {
    let retry =
        json!({"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}});
    let common = [
        ("400", "Invalid input; unknown_parameter and unsupported_condition list what is allowed"),
        ("401", "Missing or wrong API token (when CAUSEWAY_API_TOKEN is set)"),
        ("403", "forbidden_host or forbidden_origin: not a request from this pod"),
        ("408", "The body did not arrive within CAUSEWAY_BODY_TIMEOUT"),
        ("413", "The body is over CAUSEWAY_MAX_BODY"),
        ("415", "Writes need Content-Type application/json or a CloudEvents type"),
        ("503", "Temporary: NATS unreachable, registry not read yet, too busy; retry after Retry-After"),
        ("504", "JetStream did not answer in time; the request may or may not be stored, retry it unchanged"),
    ];
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/v1/") || path == "/v1/openapi.json" {
            continue;
        }
        for method in ["get", "post", "put", "delete"] {
            let Some(responses) =
                item.get_mut(method).and_then(|op| op.get_mut("responses")).and_then(Value::as_object_mut)
            else {
                continue;
            };
            for (code, desc) in common {
                if code == "415" && matches!(method, "get" | "delete") {
                    continue;
                }
                let e = responses.entry(code).or_insert_with(|| err(desc));
                if code == "503" || code == "504" {
                    e["headers"] = retry.clone();
                }
            }
        }
    }
}

fn build() -> Value {
    let mut doc = build_paths();
    add_common_answers(&mut doc);
    doc
}

fn build_paths() -> Value {
    let uint = json!({"type": "integer", "minimum": 0, "maximum": u64::MAX});
    let etag = json!({"type": "string", "pattern": ETAG_PATTERN});
    let causal = json!({"type": "string", "pattern": CAUSAL_HEADER_PATTERN});
    let event_body = json!({
        "required": true,
        "content": {
            "application/json": {"schema": {"oneOf": [
                {"$ref": "#/components/schemas/EventInput"},
                {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/EventInput"}}
            ]}},
            "application/cloudevents+json": {"schema": {"$ref": "#/components/schemas/CloudEvent"}},
            "application/cloudevents-batch+json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/CloudEvent"}}}
        }
    });
    let accepted = ok_json(
        "Stored in JetStream (after the ack). An array of results for a batch.",
        json!({"oneOf": [{"$ref": "#/components/schemas/Ack"}, {"type": "array", "items": {"$ref": "#/components/schemas/Ack"}}]}),
    );
    let store = path_param("store", "EventStore name", Some(causeway_api::names::DNS_LABEL_PATTERN));
    let kv_ops = |scope: &str| {
        let key =
            path_param("key", "Key: letters, digits and - / _ = . (no empty part between dots)", Some(KEY_PATTERN));
        json!({
            "parameters": [key],
            "get": {
                "summary": format!("Read a key of the {scope} bucket"),
                "parameters": [header_schema("If-None-Match", "304 when the revision is one of these (or * and the key exists)", etag.clone()),
                               header_schema("If-Match", "412 unless the revision is one of these (or * and the key exists)", etag.clone())],
                "responses": {
                    "200": {"description": "The JSON value; ETag is its revision. Never cacheable.", "headers": {"ETag": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {}}}},
                    "304": {"description": "Not modified (If-None-Match)"},
                    "404": err("No such key"), "412": err("If-Match does not hold")
                }
            },
            "put": {
                "summary": format!("Write a key of the {scope} bucket"),
                "parameters": [header_schema("If-Match", "Compare-and-set: the revision (ETag) you read, or * (the key must exist)", etag.clone()),
                               header_schema("If-None-Match", "* to create only", etag.clone())],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {}}}},
                "responses": {
                    "200": ok_json("Written", json!({"$ref": "#/components/schemas/KvWrite"})),
                    "201": ok_json("Created", json!({"$ref": "#/components/schemas/KvWrite"})),
                    "412": err("Precondition failed")
                }
            },
            "delete": {
                "summary": format!("Delete a key of the {scope} bucket"),
                "parameters": [header_schema("If-Match", "Delete only at this revision (or * if it exists)", etag.clone()),
                               header_schema("If-None-Match", "Delete only if not at this revision", etag.clone())],
                "responses": {"204": {"description": "Deleted (or already absent)"}, "412": err("Precondition failed")}
            }
        })
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Causeway sidecar",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Localhost HTTP API of the Causeway sidecar: send and receive events, append to and load from event stores, live streams, key-value state. Errors are always {\"error\",\"message\"} with a 4xx for bad input."
        },
        "servers": [{"url": "http://127.0.0.1:4480"}],
        "paths": {
            "/v1/nodes/{node}/events": {
                "post": {
                    "summary": "Send one event, or an all-or-nothing batch, to a node's inbox",
                    "parameters": [path_param("node", "Node name, or namespace.name", None),
                                   header_schema("Cw-Causation-Id", "The event that caused this one", causal.clone()),
                                   header_schema("Cw-Correlation-Id", "The conversation", causal.clone())],
                    "requestBody": event_body,
                    "responses": {"202": accepted, "404": err("Unknown node"),
                                  "409": err("id_conflict (the id is stored with another type) or duplicate_in_batch"),
                                  "422": err("schema_violation (a payload fails the JSON Schema of its type, declared by the target node: type, schemaVersion, violations [{pointer, message}], failures per event; nothing stored) or batch_not_supported")}
                }
            },
            "/v1/stores/{store}": {
                "get": {
                    "summary": "Offsets and figures of an event store",
                    "parameters": [store],
                    "responses": {"200": ok_json("Figures", json!({"$ref": "#/components/schemas/StoreFigures"})), "404": err("Unknown store")}
                }
            },
            "/v1/stores/{store}/subjects/{subject}/events": {
                "parameters": [store],
                "post": {
                    "summary": "Append one event (or an all-or-nothing batch) to a subject, optionally at an expected sequence",
                    "parameters": [path_param("subject", "Subject", Some(causeway_api::names::TOKEN_PATH_PATTERN)),
                                   query("expectedSequence", "The subject's last sequence you expect (0: empty)", uint.clone()),
                                   header_schema("If-Match", "\"<seq>\": same as expectedSequence; *: the subject must hold events", etag.clone()),
                                   header_schema("If-None-Match", "*: the subject must be empty", json!({"type": "string", "enum": ["*"]})),
                                   header_schema("Cw-Causation-Id", "The event that caused this one", causal.clone())],
                    "requestBody": event_body,
                    "responses": {"202": accepted, "404": err("Unknown store"),
                                  "409": err("sequence_conflict (with lastSequence), id_conflict (the id is stored on another subject) or duplicate_in_batch"),
                                  "422": err("schema_violation (a payload fails the JSON Schema of its type, declared by the store: type, schemaVersion, violations [{pointer, message}], failures per event; nothing stored) or batch_not_supported (the store does not accept batches)")}
                },
                "get": {
                    "summary": "Load the events of a subject or pattern",
                    "parameters": [path_param("subject", "Subject, or a pattern with * tokens and a final >", Some(causeway_api::names::SUBJECT_PATTERN_PATTERN)),
                                   query("after", "Only events after this sequence", uint.clone()),
                                   query("upTo", "Only events up to this sequence", uint.clone()),
                                   query("limit", "At most this many events (default 1000, at most 10000)", json!({"type": "integer", "minimum": 1, "maximum": 10000})),
                                   header_schema("If-None-Match", "One subject only: 304 when its last sequence is one of these", etag.clone()),
                                   header_schema("If-Match", "One subject only: 412 unless its last sequence is one of these", etag.clone())],
                    "responses": {"200": ok_json("Events in order; ETag is the subject's last sequence when the answer reaches its end", json!({"$ref": "#/components/schemas/Load"})),
                                  "304": {"description": "Not modified (If-None-Match)"},
                                  "404": err("Unknown store"), "412": err("If-Match does not hold")}
                }
            },
            "/v1/stores/{store}/events": {
                "get": {
                    "summary": "Live stream: stored events after `after`, a caughtUp marker, then new events (SSE or NDJSON by Accept)",
                    "parameters": [store,
                                   query("subject", "Subject pattern (default >)", json!({"type": "string", "pattern": causeway_api::names::SUBJECT_PATTERN_PATTERN})),
                                   query("after", "Start after this sequence", uint.clone()),
                                   query("follow", "Keep following after caughtUp (default true)", json!({"type": "boolean"})),
                                   header_schema("Last-Event-ID", "Resume after this sequence (SSE reconnect)", json!({"type": "string", "pattern": "^[0-9]{1,19}$"}))],
                    "responses": {
                        "200": {"description": "text/event-stream: `id: <sequence>` and `data: <event>`; `event: caughtUp`. application/x-ndjson: one event per line, then {\"caughtUp\":true}.",
                                "content": {"text/event-stream": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": {"type": "string"}}}},
                        "404": err("Unknown store"), "503": err("Too many live streams, or NATS or the store's stream is not reachable")
                    }
                }
            },
            "/v1/global/{key}": kv_ops("namespace's global"),
            "/v1/state/{key}": kv_ops("node's state"),
            "/v1/traces/{correlationId}": {
                "get": {
                    "summary": "The causal tree of one correlation in this namespace: every event with sender, target, stream and sequence, and what each listener did with it",
                    "parameters": [path_param("correlationId", "The correlation id (any printable characters, percent-encoded)", None)],
                    "responses": {"200": ok_json("The trace", json!({"type": "object", "properties": {
                                      "correlationId": {"type": "string"}, "events": {"type": "integer"}, "truncated": {"type": "boolean"},
                                      "roots": {"type": "array", "items": {"type": "object", "description": "id, type, sender, target, stream, sequence, subject, causationId, lamport, time, outcome (pending|delivered|retrying|deadLettered), deliveries [{listener,state,attempts,status,error}], children"}}}})),
                                  "404": err("Nothing recorded this correlation id (traces are kept 24 hours)"),
                                  "503": err("NATS or the trace stream is not reachable")}
                }
            },
            "/v1/listeners": {
                "get": {"summary": "This node's listeners with consumer figures",
                        "responses": {"200": ok_json("Listeners", json!({"type": "object", "properties": {"listeners": {"type": "array", "items": {"type": "object"}}}}))}}
            },
            "/v1/listeners/{listener}/fetch": {
                "post": {
                    "summary": "Pull events of a pull listener; ack them with POST /v1/acks",
                    "parameters": [path_param("listener", "Listener name", None),
                                   query("max", "At most this many events (default 10)", json!({"type": "integer", "minimum": 1, "maximum": 1000})),
                                   query("waitMs", "Wait this long for events (default 0)", json!({"type": "integer", "minimum": 0, "maximum": 30000}))],
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {}}}},
                    "responses": {"200": ok_json("Events with ackToken; skipped lists events that could not be decoded (dead-lettered)", json!({"type": "object", "properties": {
                                      "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                                      "skipped": {"type": "array", "items": {"$ref": "#/components/schemas/Skipped"}}}})),
                                  "404": err("Unknown listener"), "409": err("Not a pull listener")}
                }
            },
            "/v1/listeners/{listener}/deadletters": {
                "get": {
                    "summary": "This listener's dead letters, oldest first, with the error and whether each was replayed",
                    "parameters": dead_letter_filters(&["replayed", "after", "limit"]),
                    "responses": {"200": ok_json("Dead letters; sequence is each one's sequence in the dead-letter store, its id here", json!({"type": "object", "properties": {
                                      "deadLetters": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}},
                                      "store": {"type": "string"}, "subject": {"type": "string"},
                                      "lastSequence": {"type": "integer"}, "more": {"type": "boolean"}}})),
                                  "404": err("unknown_listener"), "409": err("no_dead_letter: the listener has no deadLetter")}
                }
            },
            "/v1/listeners/{listener}/deadletters/replay": {
                "post": {
                    "summary": "Replay every selected dead letter not replayed yet into the listener's source, for this listener only",
                    "parameters": dead_letter_filters(&["after", "limit", "delete"]),
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {}}}},
                    "responses": {"200": ok_json("What was replayed; notReplayable lists dead letters a replay cannot fix (forged sender, undecodable)", json!({"type": "object", "properties": {
                                      "replayed": {"type": "array", "items": {"$ref": "#/components/schemas/Replayed"}},
                                      "notReplayable": {"type": "array", "items": {"$ref": "#/components/schemas/Skipped"}},
                                      "more": {"type": "boolean"}}})),
                                  "404": err("unknown_listener"), "409": err("no_dead_letter, or not_replayable: the listener's record predates replay")}
                }
            },
            "/v1/listeners/{listener}/deadletters/{id}": {
                "get": {
                    "summary": "One dead letter, whole: the event, its error (deadLetter), its causal context, and replayed",
                    "parameters": [path_param("listener", "Listener name", None), path_param("id", "The dead letter's sequence in the dead-letter store, or an event id (its latest dead letter)", None)],
                    "responses": {"200": ok_json("The dead letter", json!({"$ref": "#/components/schemas/DeadLetter"})),
                                  "404": err("unknown_listener or unknown_dead_letter"), "409": err("no_dead_letter")}
                }
            },
            "/v1/listeners/{listener}/deadletters/{id}/replay": {
                "post": {
                    "summary": "Replay one dead letter: its event, with its id and causal context and replayOf, is delivered again to this listener only",
                    "parameters": [path_param("listener", "Listener name", None), path_param("id", "The dead letter's sequence, or an event id", None),
                                   query("delete", "Delete the dead letter once replayed (default: keep it, marked)", json!({"type": "boolean"}))],
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {}}}},
                    "responses": {"202": ok_json("Replayed now", json!({"$ref": "#/components/schemas/Replayed"})),
                                  "200": ok_json("Replayed before: nothing was published again", json!({"$ref": "#/components/schemas/Replayed"})),
                                  "404": err("unknown_listener or unknown_dead_letter"),
                                  "409": err("no_dead_letter, or not_replayable (forged sender, undecodable bytes)")}
                }
            },
            "/v1/acks": {
                "post": {
                    "summary": "Ack, nak or term fetched events (a term writes the event to the listener's dead letter first, when it has one)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["token", "result"], "additionalProperties": false,
                        "properties": {"token": {"type": "string"}, "result": {"type": "string", "enum": ["ack", "nak", "term"]}, "delayMs": {"type": "integer", "minimum": 0},
                                       "reason": {"type": "string", "description": "Why it was naked or terminated: shown in the event's trace (first 500 characters) and, for a term, in its dead letter"}}}}}}},
                    "responses": {"200": ok_json("Applied", json!({"type": "object", "properties": {"processed": {"type": "integer"}}}))}
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: NATS connected, registry synced, app healthy",
                                "parameters": [query("app", "ignore: leave the app's health out", json!({"type": "string", "enum": ["ignore"]}))],
                                "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OpenMetrics text"}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0"}}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error", "message"], "properties": {
                "error": {"type": "string", "description": "snake_case code"},
                "message": {"type": "string"},
                "lastSequence": {"type": "integer"}, "known": {"type": "array", "items": {"type": "string"}},
                "revision": {"type": "integer"}, "ids": {"type": "array", "items": {"type": "string"}},
                "allowed": {"type": "array", "items": {"type": "string"}}, "unknown": {"type": "array", "items": {"type": "string"}},
                "stream": {"type": "string"}, "subject": {"type": "string"}, "sequence": {"type": "integer"},
                "type": {"type": "string", "description": "schema_violation: the first failing event's type"},
                "schemaVersion": {"type": "integer", "description": "schema_violation: the version of its schema"},
                "violations": {"type": "array", "items": {"$ref": "#/components/schemas/Violation"}},
                "failures": {"type": "array", "description": "schema_violation: every failing event of the request",
                    "items": {"type": "object", "properties": {"index": {"type": "integer"}, "type": {"type": "string"},
                        "schemaVersion": {"type": "integer"}, "violations": {"type": "array", "items": {"$ref": "#/components/schemas/Violation"}}}}}}},
            "Violation": {"type": "object", "required": ["pointer", "message"], "properties": {
                "pointer": {"type": "string", "description": "JSON pointer into the payload (empty: the payload itself)"},
                "message": {"type": "string"}}},
            "DeadLetter": {"type": "object", "description": "A dead-lettered event as the app would see it; stream and sequence name the dead letter", "properties": {
                "id": {"type": "string"}, "type": {"type": "string"}, "payload": {}, "subject": {"type": "string"},
                "time": {"type": "string"}, "sender": {"type": "string"}, "causationId": {"type": "string"},
                "correlationId": {"type": "string"}, "path": {"type": "array"}, "lamport": {"type": "integer"},
                "stream": {"type": "string"}, "sequence": {"type": "integer"},
                "deadLetter": {"type": "object", "properties": {"listener": {"type": "string"}, "stream": {"type": "string"},
                    "sequence": {"type": "integer"}, "attempts": {"type": "integer"}, "status": {"type": "integer"},
                    "error": {"type": "string"}, "time": {"type": "string"}}},
                "replayOf": {"$ref": "#/components/schemas/ReplayOf"},
                "replayed": {"nullable": true, "type": "object", "properties": {"stream": {"type": "string"}, "sequence": {"type": "integer"},
                    "time": {"type": "string"}, "by": {"type": "string"}, "count": {"type": "integer"}}}}},
            "ReplayOf": {"type": "object", "description": "On a replayed event: the dead letter it came from and the event's replay count", "properties": {
                "stream": {"type": "string"}, "sequence": {"type": "integer"}, "count": {"type": "integer"}, "time": {"type": "string"}}},
            "Replayed": {"type": "object", "properties": {
                "deadLetter": {"type": "integer"}, "id": {"type": "string"}, "stream": {"type": "string"},
                "sequence": {"type": "integer"}, "alreadyReplayed": {"type": "boolean"}, "deleted": {"type": "boolean"}}},
            "EventInput": {"type": "object", "required": ["type"], "additionalProperties": false, "properties": {
                "type": {"type": "string", "pattern": causeway_api::names::TOKEN_PATH_PATTERN, "maxLength": 256},
                "payload": {},
                "id": {"type": "string", "pattern": ID_PATTERN},
                "causationId": {"type": "string", "minLength": 1, "maxLength": 128},
                "correlationId": {"type": "string", "minLength": 1, "maxLength": 128},
                "extensions": {"type": "object"}}},
            "CloudEvent": {"type": "object", "required": ["specversion", "id", "type"], "properties": {
                "specversion": {"type": "string", "enum": ["1.0"]}, "id": {"type": "string", "pattern": ID_PATTERN},
                "type": {"type": "string", "pattern": causeway_api::names::TOKEN_PATH_PATTERN, "maxLength": 256},
                "source": {"type": "string"}, "subject": {"type": "string"},
                "time": {"type": "string", "format": "date-time"}, "data": {}}},
            "Ack": {"type": "object", "required": ["id", "sequence", "duplicate"], "properties": {
                "id": {"type": "string"}, "sequence": {"type": "integer"}, "duplicate": {"type": "boolean"}}},
            "Event": {"type": "object", "properties": {
                "id": {"type": "string"}, "type": {"type": "string"}, "payload": {}, "subject": {"type": "string"},
                "time": {"type": "string"}, "sender": {"type": "string"}, "causationId": {"type": "string"},
                "correlationId": {"type": "string"}, "path": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
                "lamport": {"type": "integer"}, "stream": {"type": "string"}, "sequence": {"type": "integer"},
                "schemaVersion": {"type": "integer", "description": "The version of its type's schema it was checked against"},
                "ackToken": {"type": "string"}, "attempt": {"type": "integer"}}},
            "Load": {"type": "object", "required": ["events", "lastSequence", "more"], "properties": {
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                "lastSequence": {"type": "integer"}, "more": {"type": "boolean"},
                "skipped": {"type": "array", "items": {"$ref": "#/components/schemas/Skipped"}}}},
            "Skipped": {"type": "object", "description": "A stored message that cannot be served (not a Causeway event, or its payload blob is gone or damaged)",
                "properties": {"sequence": {"type": "integer"}, "error": {"type": "string"}}},
            "StoreFigures": {"type": "object", "properties": {
                "store": {"type": "string"}, "stream": {"type": "string"}, "firstSequence": {"type": "integer"},
                "lastSequence": {"type": "integer"}, "events": {"type": "integer"}, "bytes": {"type": "integer"},
                "consumers": {"type": "integer"}, "maxConsumers": {"type": "integer"}}},
            "KvWrite": {"type": "object", "properties": {"key": {"type": "string"}, "revision": {"type": "integer"}}}
        }}
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn documents_every_route() {
        let d = super::document();
        for p in [
            "/v1/nodes/{node}/events",
            "/v1/stores/{store}/subjects/{subject}/events",
            "/v1/stores/{store}/events",
            "/v1/stores/{store}",
            "/v1/global/{key}",
            "/v1/state/{key}",
            "/v1/listeners",
            "/v1/listeners/{listener}/fetch",
            "/v1/listeners/{listener}/deadletters",
            "/v1/listeners/{listener}/deadletters/replay",
            "/v1/listeners/{listener}/deadletters/{id}",
            "/v1/listeners/{listener}/deadletters/{id}/replay",
            "/v1/acks",
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/openapi.json",
        ] {
            assert!(d["paths"][p].is_object(), "{p} is not documented");
        }
        // Every API operation documents temporary trouble, with Retry-After.
        for (path, item) in d["paths"].as_object().unwrap() {
            if !path.starts_with("/v1/") || path == "/v1/openapi.json" {
                continue;
            }
            for (method, op) in item.as_object().unwrap().iter().filter(|(m, _)| *m != "parameters") {
                let r = &op["responses"]["503"];
                assert!(r["headers"]["Retry-After"].is_object(), "{method} {path} lacks a 503 with Retry-After");
            }
        }
    }

    #[test]
    fn the_etag_pattern_takes_strong_tags_only() {
        let re = |s: &str| {
            // The pattern is simple enough to check by hand: * or quoted numbers.
            let t = s.trim();
            t == "*" || crate::conditional::parse_tag_list("x", t).is_ok()
        };
        assert!(super::ETAG_PATTERN.starts_with("^(\\*|"));
        for ok in ["*", "\"1\"", "\"1\", \"2\""] {
            assert!(re(ok), "{ok}");
        }
        for bad in ["W/\"1\"", "1"] {
            assert!(!re(bad), "{bad}");
        }
    }
}
