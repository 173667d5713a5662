//! Typed events: optional JSON Schemas per event type, declared on an EventStore or a Node.
//!
//! - [`EventSchema`] is what a spec declares (`spec.schemas[]`): a type, a version, and the
//!   schema inline or in a ConfigMap.
//! - [`ResolvedSchema`] is what the registry record carries: the schema itself, whatever its
//!   source, so a sidecar never reads a ConfigMap.
//! - [`CompiledSchemas`] is what a sidecar validates with: every schema of one record compiled
//!   once (per registry revision), never per request.
//!
//! Schemas are self-contained: a `$ref` may point inside the schema, never to a URL or a file
//! (validation does no I/O).

use std::{collections::HashMap, fmt};

use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{check::FieldError, names::EventType};

/// Most bytes the resolved schemas of one object may take in its registry record (a record is one
/// KV value, and every sidecar of the namespace holds it).
pub const MAX_SCHEMAS_BYTES: usize = 256 * 1024;

/// Most failures reported for one event (a payload can fail in many places; the first few say
/// what is wrong).
pub const MAX_VIOLATIONS: usize = 16;

/// How many of a stream's last events the reconcile reads to find events a changed schema would
/// reject (see [`Narrowing`]).
pub const NARROWING_SAMPLE: u64 = 1000;

/// The JSON Schema of one event type, as a spec declares it: inline (`schema`) or from a
/// ConfigMap (`configMapRef`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.schema) != has(self.configMapRef)").message("give exactly one of schema or configMapRef"))]
pub struct EventSchema {
    /// The event type the schema applies to, e.g. order-placed. Events of other types are not
    /// checked.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The schema's version (default 1). Every event checked against it records it as
    /// schemaVersion. Raise it when the schema changes.
    #[serde(default = "default_version")]
    #[schemars(range(min = 1))]
    pub version: u32,
    /// The JSON Schema (draft 2020-12 unless it names another with $schema), inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub schema: Option<Value>,
    /// A ConfigMap key in the same namespace holding the schema as JSON (or YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
}

fn default_version() -> u32 {
    1
}

fn any_json(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "The JSON Schema (draft 2020-12 unless it names another with $schema), inline."
    })
}

/// A key of a ConfigMap in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// The ConfigMap's name.
    pub name: String,
    /// The key whose value is the schema.
    pub key: String,
}

/// A schema as the registry record carries it: resolved from its source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedSchema {
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Its version.
    pub version: u32,
    /// The schema.
    pub schema: Value,
    /// The ConfigMap key it was read from, when not inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
    /// A stored event this schema rejects, found when the schema last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrowed: Option<Narrowing>,
}

/// A stored event that a changed schema rejects: the change narrowed the type, where a change may
/// only widen it.
///
/// What is checked: when a type's schema (or version) differs from the one in the registry
/// record, or is new, the reconcile reads the last [`NARROWING_SAMPLE`] events of the stream
/// (batched direct gets: bounded work, no consumer) and validates every one of that type against
/// the new schema. The first failure is kept here, in the record, until the schema changes again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Narrowing {
    /// The stream it is stored in.
    pub stream: String,
    /// Its sequence.
    pub sequence: u64,
    /// The event's id.
    pub id: String,
    /// The schema version it was checked against when stored, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_version: Option<u32>,
    /// The first failure: JSON pointer into the payload.
    pub pointer: String,
    /// The first failure: what is wrong.
    pub message: String,
    /// Events of the type read in the sample.
    pub checked: u64,
}

impl fmt::Display for Narrowing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() { "(the payload)" } else { &self.pointer };
        write!(
            f,
            "event {} at {} sequence {} fails it at {at}: {}",
            self.id, self.stream, self.sequence, self.message
        )?;
        if let Some(v) = self.stored_version {
            write!(f, " (it was stored under version {v})")?;
        }
        Ok(())
    }
}

/// One failure of a payload against a schema.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// JSON pointer (RFC 6901) into the payload, `""` for the payload itself.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

/// Compiles a schema, or says why it is not a valid JSON Schema.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a JSON Schema is an object (or true/false)".into());
    }
    jsonschema::validator_for(schema).map_err(|e| {
        let at = e.instance_path().to_string();
        if at.is_empty() {
            format!("not a valid JSON Schema: {e}")
        } else {
            format!("not a valid JSON Schema at {at}: {e}")
        }
    })
}

/// The failures of `payload` against `validator`, the first [`MAX_VIOLATIONS`].
pub fn violations(validator: &jsonschema::Validator, payload: &Value) -> Vec<Violation> {
    validator
        .iter_errors(payload)
        .take(MAX_VIOLATIONS)
        .map(|e| Violation { pointer: e.instance_path().to_string(), message: e.to_string() })
        .collect()
}

/// Checks `spec.schemas` of a store or node: types unique, each inline schema a valid JSON
/// Schema. A ConfigMap-held schema is checked when it is resolved ([`check_resolved`]).
pub fn check_specs(schemas: &[EventSchema]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut seen = HashMap::new();
    for (i, s) in schemas.iter().enumerate() {
        let at = format!("spec.schemas[{i}]");
        if let Some(j) = seen.insert(s.event_type.as_str(), i) {
            errs.push(FieldError::new(
                &format!("{at}.type"),
                format!("type {} has a schema already (spec.schemas[{j}]): give each type one schema", s.event_type),
            ));
        }
        match (&s.schema, &s.config_map_ref) {
            (Some(_), Some(_)) | (None, None) => {
                errs.push(FieldError::new(&at, "give exactly one of schema or configMapRef"))
            }
            (Some(v), None) => {
                if let Err(e) = compile(v) {
                    errs.push(FieldError::new(&format!("{at}.schema"), e));
                }
            }
            (None, Some(_)) => {}
        }
        if s.version == 0 {
            errs.push(FieldError::new(&format!("{at}.version"), "version starts at 1"));
        }
    }
    errs
}

/// Checks resolved schemas: each compiles, and together they fit in a registry record.
pub fn check_resolved(schemas: &[ResolvedSchema]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, s) in schemas.iter().enumerate() {
        if let Err(e) = compile(&s.schema) {
            let from = s
                .config_map_ref
                .as_ref()
                .map(|r| format!(" (from ConfigMap {} key {})", r.name, r.key))
                .unwrap_or_default();
            errs.push(FieldError::new(&format!("spec.schemas[{i}]"), format!("type {}{from}: {e}", s.event_type)));
        }
    }
    let size: usize = schemas.iter().map(|s| serde_json::to_vec(&s.schema).map(|b| b.len()).unwrap_or(0)).sum();
    if size > MAX_SCHEMAS_BYTES {
        errs.push(FieldError::new(
            "spec.schemas",
            format!(
                "the schemas take {} KiB, more than the {} KiB a registry record holds: split types over stores, or remove descriptions and examples",
                size / 1024,
                MAX_SCHEMAS_BYTES / 1024
            ),
        ));
    }
    errs
}

/// Every schema of one record, compiled.
#[derive(Default)]
pub struct CompiledSchemas {
    by_type: HashMap<String, (u32, jsonschema::Validator)>,
}

impl fmt::Debug for CompiledSchemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.by_type.iter().map(|(t, (v, _))| format!("{t}@{v}")).collect();
        types.sort();
        f.debug_struct("CompiledSchemas").field("types", &types).finish()
    }
}

/// Why an event was refused: which schema, and where the payload fails it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The event type.
    pub event_type: String,
    /// The schema version it was checked against.
    pub version: u32,
    /// The failures.
    pub violations: Vec<Violation>,
}

impl CompiledSchemas {
    /// Compiles resolved schemas; one that does not compile is left out (the reconcile refuses
    /// such records, so this is only a record written behind Causeway's back) and named in the
    /// second part.
    pub fn compile(schemas: &[ResolvedSchema]) -> (Self, Vec<String>) {
        let mut by_type = HashMap::new();
        let mut bad = Vec::new();
        for s in schemas {
            match compile(&s.schema) {
                Ok(v) => {
                    by_type.insert(s.event_type.to_string(), (s.version, v));
                }
                Err(e) => bad.push(format!("{}: {e}", s.event_type)),
            }
        }
        (Self { by_type }, bad)
    }

    /// True when no type has a schema.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// Checks one payload: `Ok(None)` for a type without a schema, `Ok(Some(version))` when it
    /// passes, the refusal otherwise.
    pub fn check(&self, event_type: &str, payload: &Value) -> Result<Option<u32>, Refusal> {
        let Some((version, validator)) = self.by_type.get(event_type) else { return Ok(None) };
        if validator.is_valid(payload) {
            return Ok(Some(*version));
        }
        Err(Refusal {
            event_type: event_type.to_owned(),
            version: *version,
            violations: violations(validator, payload),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resolved(t: &str, v: u32, schema: Value) -> ResolvedSchema {
        ResolvedSchema {
            event_type: EventType::new(t).unwrap(),
            version: v,
            schema,
            config_map_ref: None,
            narrowed: None,
        }
    }

    #[test]
    fn check_passes_valid_refuses_invalid_with_pointers_and_ignores_other_types() {
        let s = json!({"type":"object","required":["orderId"],"properties":{"orderId":{"type":"string"},"qty":{"type":"integer","minimum":1}}});
        let (c, bad) = CompiledSchemas::compile(&[resolved("order-placed", 2, s)]);
        assert!(bad.is_empty());
        assert_eq!(c.check("order-placed", &json!({"orderId":"1","qty":2})), Ok(Some(2)));
        assert_eq!(c.check("other", &json!(7)), Ok(None));
        let r = c.check("order-placed", &json!({"qty":0})).unwrap_err();
        assert_eq!(r.version, 2);
        let pointers: Vec<&str> = r.violations.iter().map(|v| v.pointer.as_str()).collect();
        assert!(pointers.contains(&"") && pointers.contains(&"/qty"), "{r:?}");
        assert!(r.violations.iter().any(|v| v.message.contains("orderId")), "{r:?}");
    }

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(compile(&json!({"type":"no-such-type"})).is_err());
        assert!(compile(&json!({"minimum":"five"})).is_err());
        assert!(compile(&json!("string")).is_err());
        assert!(compile(&json!({"$ref":"https://example.com/s.json"})).is_err(), "no remote refs");
        assert!(compile(&json!({"type":"object"})).is_ok());
        let spec: Vec<EventSchema> = serde_json::from_value(json!([
            {"type":"a","schema":{"type":"object"}},
            {"type":"a","schema":{"type":"bogus"}},
            {"type":"b"},
        ]))
        .unwrap();
        let errs = check_specs(&spec);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.schemas[1].type", "spec.schemas[1].schema", "spec.schemas[2]"], "{errs:?}");
    }
}
