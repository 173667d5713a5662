//! Typed events in the reconcile core: resolving `spec.schemas` (inline, or from the ConfigMaps
//! the driver read) into the registry record, and finding stored events a changed schema would
//! reject.
//!
//! The drivers fetch ConfigMaps (the operator from the API server, `causeway apply` from the
//! same batch of manifests) and hand their data over in [`super::Object::config_maps`]; from
//! there on the operator and `causeway apply` share every rule below.

use std::{collections::BTreeMap, time::Duration};

use causeway_api::{
    envelope::Envelope,
    schema::{self, EventSchema, NARROWING_SAMPLE, Narrowing, ResolvedSchema},
};
use futures::StreamExt;

use crate::error::{Error, Result};

/// ConfigMap data by ConfigMap name, then key: what a driver read for one object's
/// `configMapRef`s (only the ConfigMaps it refers to).
pub type ConfigMaps = BTreeMap<String, BTreeMap<String, String>>;

/// Why schemas could not be resolved: the condition reason, and what to fix.
pub type Unresolved = (&'static str, String);

/// Resolves `spec.schemas` against the ConfigMaps read for it.
pub fn resolve(specs: &[EventSchema], config_maps: &ConfigMaps, ns: &str) -> Result<Vec<ResolvedSchema>, Unresolved> {
    let mut out = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let schema = match (&s.schema, &s.config_map_ref) {
            (Some(v), _) => v.clone(),
            (None, Some(r)) => {
                let Some(data) = config_maps.get(&r.name) else {
                    return Err((
                        super::reason::SCHEMA_NOT_RESOLVED,
                        format!(
                            "spec.schemas[{i}] (type {}): ConfigMap {ns}/{} does not exist (or cannot be read): create it, then this becomes ready",
                            s.event_type, r.name
                        ),
                    ));
                };
                let Some(text) = data.get(&r.key) else {
                    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
                    keys.sort();
                    return Err((
                        super::reason::SCHEMA_NOT_RESOLVED,
                        format!(
                            "spec.schemas[{i}] (type {}): ConfigMap {ns}/{} has no key {:?} (it has: {})",
                            s.event_type,
                            r.name,
                            r.key,
                            keys.join(", ")
                        ),
                    ));
                };
                parse_text(text).map_err(|e| {
                    (
                        super::reason::INVALID_SPEC,
                        format!(
                            "spec.schemas[{i}] (type {}): ConfigMap {ns}/{} key {:?}: {e}",
                            s.event_type, r.name, r.key
                        ),
                    )
                })?
            }
            (None, None) => {
                return Err((super::reason::INVALID_SPEC, format!("spec.schemas[{i}]: give schema or configMapRef")));
            }
        };
        out.push(ResolvedSchema {
            event_type: s.event_type.clone(),
            version: s.version,
            schema,
            config_map_ref: s.config_map_ref.clone(),
            narrowed: None,
        });
    }
    let errs = schema::check_resolved(&out);
    if !errs.is_empty() {
        let msg = errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        return Err((super::reason::INVALID_SPEC, msg));
    }
    Ok(out)
}

/// A ConfigMap value as a schema: JSON, or YAML (a superset).
pub fn parse_text(text: &str) -> std::result::Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(json) => serde_yaml::from_str::<serde_json::Value>(text)
            .map_err(|yaml| format!("neither JSON ({json}) nor YAML ({yaml})")),
    }
}

/// The ConfigMaps a record's schemas came from, with the resolved schemas as their values: what
/// lets a record be reconciled again (dry-run) without reading the ConfigMaps.
pub fn config_maps_of(schemas: &[ResolvedSchema]) -> ConfigMaps {
    let mut out = ConfigMaps::new();
    for s in schemas {
        if let Some(r) = &s.config_map_ref {
            out.entry(r.name.clone()).or_default().insert(r.key.clone(), s.schema.to_string());
        }
    }
    out
}

/// Keeps what the previous record found for schemas that did not change, and returns the
/// indices of those that did (or are new): only those are checked against stored events.
pub fn carry_over(previous: &[ResolvedSchema], schemas: &mut [ResolvedSchema]) -> Vec<usize> {
    let mut changed = Vec::new();
    for (i, s) in schemas.iter_mut().enumerate() {
        match previous.iter().find(|p| p.event_type == s.event_type) {
            Some(p) if p.version == s.version && p.schema == s.schema => s.narrowed = p.narrowed.clone(),
            _ => changed.push(i),
        }
    }
    changed
}

/// Checks the schemas at `changed` against `events` (sequence, envelope), oldest first: the
/// first event of each type its schema rejects is recorded in `narrowed`.
pub fn find_narrowing(stream: &str, events: &[(u64, Envelope)], schemas: &mut [ResolvedSchema], changed: &[usize]) {
    for &i in changed {
        let s = &mut schemas[i];
        let Ok(validator) = schema::compile(&s.schema) else { continue };
        let mut checked = 0;
        let mut found = None;
        for (seq, env) in events.iter().filter(|(_, e)| e.event_type == s.event_type.as_str()) {
            // A payload held in the blob store is not fetched here (bounded work).
            if env.blob.is_some() {
                continue;
            }
            checked += 1;
            if found.is_none()
                && let Some(v) = schema::violations(&validator, &env.payload).into_iter().next()
            {
                found = Some(Narrowing {
                    stream: stream.to_owned(),
                    sequence: *seq,
                    id: env.id.clone(),
                    stored_version: env.schema_version,
                    pointer: v.pointer,
                    message: v.message,
                    checked: 0,
                });
            }
        }
        s.narrowed = found.map(|n| Narrowing { checked, ..n });
    }
}

/// The last [`NARROWING_SAMPLE`] events of `stream` (ending at `last`), with one batched direct
/// get: no consumer, any replica answers. Messages that are not Causeway events are passed over.
pub async fn sample(client: &async_nats::Client, stream: &str, first: u64, last: u64) -> Result<Vec<(u64, Envelope)>> {
    if last == 0 || last < first {
        return Ok(Vec::new());
    }
    let start = last.saturating_sub(NARROWING_SAMPLE - 1).max(first).max(1);
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.map_err(|e| nats_error(stream, e))?;
    let body = serde_json::json!({"seq": start, "next_by_subj": ">", "batch": NARROWING_SAMPLE, "max_bytes": 32 << 20});
    client
        .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, body.to_string().into())
        .await
        .map_err(|e| nats_error(stream, e))?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await else { break };
        match m.status.map(|s| s.as_u16()) {
            None | Some(200) => {
                let seq = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Sequence"))
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                if let (Some(seq), Ok(env)) = (seq, Envelope::decode(&m.payload)) {
                    out.push((seq, env));
                }
            }
            _ => break, // 204 end of batch, 404 nothing, anything else: what was read is the sample
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(out)
}

fn nats_error(stream: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::nats(format!("sampling {stream} for schema checks"))(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Vec<EventSchema> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn config_map_schemas_resolve_from_json_or_yaml_and_missing_ones_are_named() {
        let specs = spec(json!([
            {"type":"a","configMapRef":{"name":"s","key":"a.json"}},
            {"type":"b","version":3,"configMapRef":{"name":"s","key":"b.yaml"}},
        ]));
        let mut cms = ConfigMaps::new();
        cms.entry("s".into()).or_default().insert("a.json".into(), r#"{"type":"object"}"#.into());
        cms.entry("s".into()).or_default().insert("b.yaml".into(), "type: string\nmaxLength: 3\n".into());
        let r = resolve(&specs, &cms, "shop").unwrap();
        assert_eq!(r[1].schema, json!({"type":"string","maxLength":3}));
        assert_eq!(config_maps_of(&r).len(), 1);
        let (reason, msg) = resolve(&specs, &ConfigMaps::new(), "shop").unwrap_err();
        assert_eq!(reason, "SchemaNotResolved");
        assert!(msg.contains("ConfigMap shop/s does not exist"), "{msg}");
        cms.get_mut("s").unwrap().insert("b.yaml".into(), "type: nonsense".into());
        let (reason, msg) = resolve(&specs, &cms, "shop").unwrap_err();
        assert_eq!(reason, "InvalidSpec");
        assert!(msg.contains("not a valid JSON Schema"), "{msg}");
    }
}
