//! Payloads too large for one NATS message live in the object store `CW_BLOB_<ns>`; the envelope
//! carries a [`BlobRef`] and a `null` payload. Reads put the payload back, so apps never notice.

use async_nats::jetstream::{self, object_store::ObjectStore};
use causeway_api::envelope::{BlobRef, Envelope};
use tokio::{io::AsyncReadExt, sync::OnceCell};

use crate::error::{Error, Result};

/// Room left in a message for headers and subject when deciding whether a payload fits.
const HEADROOM: usize = 1024;

/// The blob store of one namespace.
pub struct Blobs {
    js: jetstream::Context,
    bucket: String,
    store: OnceCell<ObjectStore>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").field("bucket", &self.bucket).finish()
    }
}

impl Blobs {
    /// Blobs in `bucket` (from `naming::blob_bucket`).
    pub fn new(js: jetstream::Context, bucket: String) -> Self {
        Self { js, bucket, store: OnceCell::new() }
    }

    async fn store(&self) -> Result<&ObjectStore> {
        self.store
            .get_or_try_init(|| async {
                match self.js.get_object_store(&self.bucket).await {
                    Ok(s) => Ok(s),
                    Err(_) => self
                        .js
                        .create_object_store(jetstream::object_store::Config {
                            bucket: self.bucket.clone(),
                            description: Some("Causeway: event payloads larger than the server's max_payload".into()),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| Error::Unavailable(format!("blob store {}: {e}", self.bucket))),
                }
            })
            .await
    }

    /// Encodes the envelope, moving its payload to the blob store when the message would not fit.
    pub async fn encode(&self, env: &mut Envelope, max_payload: usize) -> Result<Vec<u8>> {
        let bytes = env.encode();
        if bytes.len() + HEADROOM <= max_payload {
            return Ok(bytes);
        }
        let payload = rmp_serde::to_vec_named(&env.payload).map_err(|e| Error::Internal(e.to_string()))?;
        let store = self.store().await?;
        let name = env.id.clone();
        store
            .put(
                jetstream::object_store::ObjectMetadata {
                    name: name.clone(),
                    // Chunks must fit in one message too.
                    chunk_size: Some((max_payload.saturating_sub(HEADROOM)).clamp(1024, 128 * 1024)),
                    ..Default::default()
                },
                &mut payload.as_slice(),
            )
            .await
            .map_err(|e| Error::Unavailable(format!("blob store {}: {e}", self.bucket)))?;
        env.blob = Some(BlobRef { bucket: self.bucket.clone(), name, size: payload.len() as u64 });
        env.payload = serde_json::Value::Null;
        let bytes = env.encode();
        if bytes.len() + HEADROOM > max_payload {
            return Err(Error::InvalidEvent(format!(
                "the event without its payload is still {} bytes, over the server's max_payload of {max_payload}; shorten its extensions",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Puts a blob-stored payload back into the envelope.
    pub async fn resolve(&self, env: &mut Envelope) -> Result<()> {
        let Some(r) = env.blob.take() else { return Ok(()) };
        let store = if r.bucket == self.bucket {
            self.store().await?.clone()
        } else {
            self.js.get_object_store(&r.bucket).await.map_err(|e| Error::Unavailable(format!("blob store: {e}")))?
        };
        let mut obj = store
            .get(r.name.as_str())
            .await
            .map_err(|e| Error::Unavailable(format!("blob {} of event {}: {e}", r.name, env.id)))?;
        let mut buf = Vec::with_capacity(r.size as usize);
        obj.read_to_end(&mut buf).await.map_err(|e| Error::Unavailable(format!("blob {}: {e}", r.name)))?;
        env.payload = rmp_serde::from_slice(&buf).map_err(|e| Error::Unavailable(format!("blob {}: {e}", r.name)))?;
        Ok(())
    }
}
