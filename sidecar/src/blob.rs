//! Payloads too large for one NATS message live in the object store `CW_BLOB_<ns>`; the event
//! (or KV revision) carries a [`BlobRef`] instead. Reads put the payload back, so apps never
//! notice.
//!
//! Why this cannot alter what is stored:
//! - every write goes to an object name of its own (`<what>/<id>/<ULID>`), so no retry, refused
//!   request or reuse of an id in another stream ever writes over a blob an acknowledged event
//!   points to;
//! - the reference records the size and SHA-256 digest, and every read checks both, so a blob
//!   changed or damaged behind Causeway's back is reported, never served;
//! - a write that JetStream refuses (conflict, duplicate, a refused batch) deletes its own blob,
//!   so it leaves nothing behind. Only a crash between the blob and the event can leave an
//!   unreferenced blob (it is named after the event id it was written for).
//!
//! The layout is the NATS object store's (chunks on `$O.<bucket>.C.<nuid>`, metadata on
//! `$O.<bucket>.M.<name>`), so any object-store client can read the blobs. It is written and
//! read here with plain publishes and batched direct gets rather than through the client's
//! object store, which opens a consumer per read (a stream holds at most 1,000).

use async_nats::{HeaderMap, jetstream};
use base64::{Engine, engine::general_purpose::URL_SAFE};
use bytes::Bytes;
use causeway_api::envelope::{BlobRef, Envelope, blob_name};
use ring::digest::{SHA256, digest};
use serde::Deserialize;
use serde_json::json;

use crate::{
    error::{Error, Result},
    nats::{direct_batch, direct_last},
};

/// Room left in a message for headers and subject when deciding whether a payload fits.
pub const HEADROOM: usize = 1024;
/// Largest chunk written.
const MAX_CHUNK: usize = 1 << 20;

/// Why a blob could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob is gone (deleted or never written): the event cannot be served.
    #[error("its payload blob {0} is missing")]
    Missing(String),
    /// What was read does not match the reference: the event cannot be served.
    #[error("its payload blob {0} does not match its recorded size or digest")]
    Corrupt(String),
    /// NATS could not be asked: try again.
    #[error(transparent)]
    Unavailable(#[from] Error),
}

impl BlobError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, BlobError::Unavailable(_))
    }
}

/// A blob written by this request, to delete if the request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The reference stored with the event.
    pub blob: BlobRef,
    nuid: String,
}

/// The blob store of one namespace.
#[derive(Debug, Clone)]
pub struct Blobs {
    js: jetstream::Context,
    bucket: String,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    nuid: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    deleted: bool,
}

/// `SHA-256=<base64url>`, as the object store records digests.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("SHA-256={}", URL_SAFE.encode(digest(&SHA256, bytes)))
}

fn stream_of(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

fn meta_subject(bucket: &str, name: &str) -> String {
    format!("$O.{bucket}.M.{}", URL_SAFE.encode(name))
}

fn chunk_subject(bucket: &str, nuid: &str) -> String {
    format!("$O.{bucket}.C.{nuid}")
}

impl Blobs {
    /// Blobs in `bucket` (from `naming::blob_bucket`). The bucket is created by the reconcile.
    pub fn new(js: jetstream::Context, bucket: String) -> Self {
        Self { js, bucket }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Writes `bytes` as a new blob named after `what` and `id`, with a name no other write uses.
    pub async fn put(&self, what: &str, id: &str, bytes: &[u8], max_payload: usize) -> Result<Written> {
        let nonce = ulid::Ulid::new().to_string();
        let name = blob_name(what, id, &nonce);
        let nuid = nonce.clone();
        let chunk = max_payload.saturating_sub(HEADROOM).clamp(1024, MAX_CHUNK);
        let subject = chunk_subject(&self.bucket, &nuid);
        let fail = |e: &dyn std::fmt::Display| Error::Unavailable(format!("blob store {}: {e}", self.bucket));
        let written = async {
            // Publish every chunk, then wait for the acks: one round trip, not one per chunk.
            let mut acks = Vec::new();
            for c in bytes.chunks(chunk) {
                acks.push(self.js.publish(subject.clone(), Bytes::copy_from_slice(c)).await.map_err(|e| fail(&e))?);
            }
            for a in acks {
                a.await.map_err(|e| fail(&e))?;
            }
            let meta = json!({
                "name": name,
                "description": format!("Causeway payload of {what} {id}"),
                "bucket": self.bucket,
                "nuid": nuid,
                "size": bytes.len(),
                "chunks": bytes.len().div_ceil(chunk),
                "mtime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                "digest": digest_of(bytes),
                "options": {"max_chunk_size": chunk},
            });
            let mut h = HeaderMap::new();
            h.insert("Nats-Rollup", "sub");
            self.js
                .publish_with_headers(meta_subject(&self.bucket, &name), h, meta.to_string().into())
                .await
                .map_err(|e| fail(&e))?
                .await
                .map_err(|e| fail(&e))?;
            Ok::<_, Error>(())
        }
        .await;
        let w = Written {
            blob: BlobRef {
                bucket: self.bucket.clone(),
                name,
                size: bytes.len() as u64,
                digest: Some(digest_of(bytes)),
            },
            nuid,
        };
        match written {
            Ok(()) => Ok(w),
            Err(e) => {
                // Nothing points at it yet: take back what was written.
                self.delete(&w).await;
                Err(e)
            }
        }
    }

    /// Deletes a blob this request wrote and no stored event points to. Best effort: a failure
    /// leaves an unreferenced blob, never a broken event.
    pub async fn delete(&self, w: &Written) {
        let stream = stream_of(&w.blob.bucket);
        for filter in [chunk_subject(&w.blob.bucket, &w.nuid), meta_subject(&w.blob.bucket, &w.blob.name)] {
            if let Err(e) = self.purge(&stream, &filter).await {
                tracing::warn!(blob = %w.blob.name, error = %e, "could not delete an unused blob; it stays unreferenced");
            }
        }
    }

    /// Deletes a blob that a replaced KV value pointed to.
    pub async fn delete_ref(&self, r: &BlobRef) {
        let stream = stream_of(&r.bucket);
        match direct_last(&self.js.client(), &stream, &meta_subject(&r.bucket, &r.name)).await {
            Ok(Some(m)) => {
                if let Ok(meta) = serde_json::from_slice::<Meta>(&m.payload) {
                    self.delete(&Written { blob: r.clone(), nuid: meta.nuid }).await;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(blob = %r.name, error = %e, "could not delete a replaced blob"),
        }
    }

    async fn purge(&self, stream: &str, filter: &str) -> Result<()> {
        let body = json!({ "filter": filter });
        let answer: serde_json::Value = self
            .js
            .request(format!("STREAM.PURGE.{stream}"), &body)
            .await
            .map_err(|e| Error::Unavailable(format!("purge {filter}: {e}")))?;
        match answer.get("error") {
            Some(e) => Err(Error::Unavailable(format!("purge {filter}: {e}"))),
            None => Ok(()),
        }
    }

    /// Reads a blob, checking its size and digest.
    pub async fn fetch(&self, r: &BlobRef) -> std::result::Result<Vec<u8>, BlobError> {
        let client = self.js.client();
        let client = &client;
        let stream = stream_of(&r.bucket);
        let Some(m) = direct_last(client, &stream, &meta_subject(&r.bucket, &r.name)).await? else {
            return Err(BlobError::Missing(r.name.clone()));
        };
        let meta: Meta = serde_json::from_slice(&m.payload).map_err(|_| BlobError::Corrupt(r.name.clone()))?;
        if meta.deleted || meta.nuid.is_empty() {
            return Err(BlobError::Missing(r.name.clone()));
        }
        if meta.size != r.size {
            return Err(BlobError::Corrupt(r.name.clone()));
        }
        let subject = chunk_subject(&r.bucket, &meta.nuid);
        let mut buf = Vec::with_capacity(r.size as usize);
        let mut next = 1;
        loop {
            let want = (r.size as usize).saturating_sub(buf.len()).max(1);
            let b = direct_batch(client, &stream, &subject, next, 1024, want).await?;
            let Some(last) = b.messages.last().map(|m| m.sequence) else { break };
            for m in &b.messages {
                buf.extend_from_slice(&m.payload);
            }
            if buf.len() as u64 > r.size {
                return Err(BlobError::Corrupt(r.name.clone()));
            }
            if b.pending == 0 {
                break;
            }
            next = last + 1;
        }
        if buf.len() as u64 != r.size {
            return Err(if buf.is_empty() {
                BlobError::Missing(r.name.clone())
            } else {
                BlobError::Corrupt(r.name.clone())
            });
        }
        if let Some(d) = &r.digest
            && *d != digest_of(&buf)
        {
            return Err(BlobError::Corrupt(r.name.clone()));
        }
        Ok(buf)
    }

    /// Reads the payload of an event whose payload is in the blob store back into it. The error
    /// says whether it is permanent (the blob is gone or does not decode) or may pass (NATS);
    /// on an error the event is left as it was.
    pub async fn inline(&self, env: &mut Envelope) -> std::result::Result<(), (bool, String)> {
        let Some(r) = env.blob.take() else { return Ok(()) };
        let read = match self.fetch(&r).await {
            Ok(b) => rmp_serde::from_slice(&b)
                .map_err(|e| (true, format!("its payload blob {} does not decode: {e}", r.name))),
            Err(e) => Err((e.is_permanent(), e.to_string())),
        };
        match read {
            Ok(v) => {
                env.payload = v;
                Ok(())
            }
            Err(e) => {
                env.blob = Some(r);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_use_the_object_store_format() {
        // sha256("") in base64url.
        assert_eq!(digest_of(b""), "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_ne!(digest_of(b"a"), digest_of(b"b"));
    }

    #[test]
    fn names_are_per_write() {
        assert_eq!(
            meta_subject("CW_BLOB_shop", "event/x/1"),
            format!("$O.CW_BLOB_shop.M.{}", URL_SAFE.encode("event/x/1"))
        );
        assert_eq!(chunk_subject("CW_BLOB_shop", "N"), "$O.CW_BLOB_shop.C.N");
    }
}
