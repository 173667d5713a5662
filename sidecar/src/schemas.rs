//! Typed events at the sidecar: every send, append and batch is checked against the JSON Schema
//! of its type, when the target (the node sent to, or the store appended to) declares one.
//!
//! Schemas come resolved in the target's registry record and are compiled once per record
//! revision, here, never per request. A target without schemas costs one `is_empty` check.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use causeway_api::{
    Kind, naming,
    registry::{NodeRecord, StoreRecord},
    schema::{CompiledSchemas, ResolvedSchema},
};
use serde_json::Value;

use crate::error::{Error, Result};

/// A record whose schemas were compiled: held so that its address cannot be reused by another
/// record while the cache compares addresses.
enum Holder {
    Store(Arc<StoreRecord>),
    Node(Arc<NodeRecord>),
}

impl Holder {
    fn schemas(&self) -> &[ResolvedSchema] {
        match self {
            Holder::Store(r) => &r.schemas,
            Holder::Node(r) => &r.schemas,
        }
    }
    fn addr(&self) -> usize {
        match self {
            Holder::Store(r) => Arc::as_ptr(r) as usize,
            Holder::Node(r) => Arc::as_ptr(r) as usize,
        }
    }
}

/// Compiled schemas by registry key.
#[derive(Default)]
pub struct SchemaCache {
    by_key: Mutex<HashMap<String, (Holder, Arc<CompiledSchemas>)>>,
}

impl std::fmt::Debug for SchemaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaCache").finish_non_exhaustive()
    }
}

impl SchemaCache {
    /// The compiled schemas of a store (`None`: it has none).
    pub fn store(&self, r: &Arc<StoreRecord>) -> Option<Arc<CompiledSchemas>> {
        if r.schemas.is_empty() {
            return None;
        }
        Some(
            self.get(naming::registry_key(&r.meta.namespace, Kind::EventStore, &r.meta.name), Holder::Store(r.clone())),
        )
    }

    /// The compiled schemas of a node (`None`: it has none).
    pub fn node(&self, r: &Arc<NodeRecord>) -> Option<Arc<CompiledSchemas>> {
        if r.schemas.is_empty() {
            return None;
        }
        Some(self.get(naming::registry_key(&r.meta.namespace, Kind::Node, &r.meta.name), Holder::Node(r.clone())))
    }

    fn get(&self, key: String, holder: Holder) -> Arc<CompiledSchemas> {
        let mut cache = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((held, compiled)) = cache.get_mut(&key) {
            if held.addr() == holder.addr() {
                return compiled.clone();
            }
            // A record read again (every resync) with the same schemas keeps its compilation.
            if held.schemas() == holder.schemas() {
                *held = holder;
                return compiled.clone();
            }
        }
        let (compiled, bad) = CompiledSchemas::compile(holder.schemas());
        for b in bad {
            tracing::warn!(target_record = %key, schema = %b, "a schema in the registry does not compile; its type is not checked");
        }
        let compiled = Arc::new(compiled);
        cache.insert(key, (holder, compiled.clone()));
        compiled
    }
}

/// Checks every payload of a request against `schemas`: the schema version each was checked
/// against (`None`: its type has no schema), or a 422 naming every failing event. Nothing is
/// stored when one fails, so a batch stays all or nothing.
pub fn check<'a>(
    schemas: Option<&CompiledSchemas>,
    events: impl ExactSizeIterator<Item = (&'a str, &'a Value)>,
    batch: bool,
) -> Result<Vec<Option<u32>>> {
    let Some(schemas) = schemas else { return Ok(vec![None; events.len()]) };
    let mut versions = Vec::with_capacity(events.len());
    let mut failures = Vec::new();
    for (i, (event_type, payload)) in events.enumerate() {
        match schemas.check(event_type, payload) {
            Ok(v) => versions.push(v),
            Err(r) => {
                versions.push(None);
                failures.push((i, r));
            }
        }
    }
    if failures.is_empty() { Ok(versions) } else { Err(Error::SchemaViolation { failures, batch }) }
}
