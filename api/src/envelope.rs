//! The event: a MessagePack map on the wire, JSON at the app.
//!
//! The payload is the JSON value itself encoded as MessagePack (not a JSON string inside it),
//! so any MessagePack client can read it. Fields travel by name (`rmp_serde::to_vec_named`).

use serde::{Deserialize, Serialize};

/// NATS header carrying the event id (JetStream deduplication).
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// NATS header carrying the event type, so consumers can filter without decoding.
pub const HEADER_TYPE: &str = "Cw-Type";

/// One event as stored in JetStream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique, time-sortable id (a ULID unless the client gave one).
    pub id: String,
    /// Event type, e.g. `order-placed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The app's JSON value. `null` when the payload lives in the blob store (see `blob`).
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Subject relative to the store or inbox it was written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the event was created (RFC 3339, UTC).
    pub time: String,
    /// Who sent it: `<namespace>/<node>`.
    pub sender: String,
    /// The event that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The conversation this event belongs to.
    pub correlation_id: String,
    /// Hops `[sender, target]` from the start of the conversation, the last 32 kept.
    #[serde(default)]
    pub path: Vec<[String; 2]>,
    /// Lamport time of the sender when it sent the event.
    pub lamport: u64,
    /// Where the payload lives when it was too large for one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobRef>,
    /// Why the event was dead-lettered (only on events in a dead letter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterInfo>,
    /// Set when the event was replayed from a dead letter: which one, and how many times this
    /// event has been replayed. A reader that does not know the field skips it (fields travel
    /// by name, and unknown ones are ignored), so older sidecars still decode replayed events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<ReplayOf>,
    /// The version of its type's schema the payload was checked against when it was written
    /// (absent: the type had no schema, or a Causeway before typed events wrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    /// CloudEvents attributes that have no field of their own (`source`, extensions…).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

/// A payload stored in the `CW_BLOB_<ns>` object store.
///
/// Every blob is written under a name of its own that no other write ever uses, and is referenced
/// by exactly one stored event or KV revision. So a blob never changes once its event is
/// acknowledged, and a reader checks what it fetched against `size` and `digest`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlobRef {
    /// Object store bucket.
    pub bucket: String,
    /// Object name: unique per write (see [`blob_name`]).
    pub name: String,
    /// Size of the MessagePack-encoded payload in bytes.
    pub size: u64,
    /// `SHA-256=<base64url>` of those bytes, in the object store's own digest format. Absent
    /// only in blobs written by Causeway versions before digests were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// NATS header on a KV message whose value is a MessagePack [`BlobRef`] rather than the value
/// itself (a value larger than the server's `max_payload`).
pub const HEADER_BLOB: &str = "Cw-Blob";

/// The object name of a new blob: `<what>/<id>/<nonce>`. `nonce` is unique per write (a fresh
/// ULID), so no two writes, not even two retries of the same event, share an object.
pub fn blob_name(what: &str, id: &str, nonce: &str) -> String {
    format!("{what}/{id}/{nonce}")
}

/// What went wrong with a dead-lettered event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterInfo {
    /// The listener that gave up: `<namespace>/<listener>`.
    pub listener: String,
    /// Stream the event came from.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
    /// Delivery attempts made.
    pub attempts: u64,
    /// The app's HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The first bytes of the app's answer, or the transport error.
    pub error: String,
    /// When it was dead-lettered.
    pub time: String,
}

/// The dead letter a replayed event came from (`replayOf` on the wire and at the app).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplayOf {
    /// The dead-letter store's stream.
    pub stream: String,
    /// The dead letter's sequence in that stream.
    pub sequence: u64,
    /// How many times this event has been replayed, this replay included (1 for the first).
    pub count: u32,
    /// When it was replayed (RFC 3339, UTC).
    pub time: String,
}

/// Why bytes could not be decoded as an envelope.
#[derive(Debug, thiserror::Error)]
#[error("not a Causeway event: {0}")]
pub struct DecodeError(#[from] rmp_serde::decode::Error);

/// The buffer an encode starts with: the causal fields of an event take about 300 bytes.
const ENCODE_CAPACITY: usize = 1024;

impl Envelope {
    /// Encodes as a MessagePack map with named fields.
    pub fn encode(&self) -> Vec<u8> {
        // Sized for a typical event up front: growing from empty copies it about seven times.
        let mut out = Vec::with_capacity(ENCODE_CAPACITY);
        rmp_serde::encode::write_named(&mut out, self).expect("an envelope always encodes");
        out
    }

    /// Decodes what [`Envelope::encode`] wrote (or any MessagePack map of the same shape).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

/// The JSON an app sees: the envelope plus where it is stored.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EventView<'a> {
    /// The event.
    #[serde(flatten)]
    pub envelope: &'a Envelope,
    /// Stream it is stored in.
    pub stream: &'a str,
    /// Its sequence in that stream.
    pub sequence: u64,
}
