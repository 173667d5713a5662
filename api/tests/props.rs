//! Property tests: naming rules and the envelope under arbitrary (including hostile) input.

use causeway_api::{
    DnsLabel, Kind,
    envelope::Envelope,
    names::{self, validate_event_type, validate_subject, validate_subject_pattern},
    naming,
};
use proptest::prelude::*;

/// Valid JetStream stream/consumer/bucket name: no whitespace, `.`, `*`, `>`, path separators.
fn valid_js_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9-]{0,70}",
        "[ .*>_\\-a-z\\t\\n\\u{0}/\\\\é]{0,20}",
        Just(String::new()),
        Just(">".to_string()),
        Just("a.b".to_string()),
        Just("a b".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Only DNS labels get through, and every name built from them is a valid JetStream name
    /// whose subject prefix has exactly the expected tokens.
    #[test]
    fn naming_is_safe_for_any_input(ns in hostile(), name in hostile()) {
        let (Ok(ns), Ok(name)) = (DnsLabel::new(ns.clone()), DnsLabel::new(name.clone())) else {
            prop_assert!(!names::is_dns_label(&ns) || !names::is_dns_label(&name));
            return Ok(());
        };
        for n in [
            naming::store_stream(&ns, &name),
            naming::inbox_stream(&ns, &name),
            naming::state_bucket(&ns, &name),
            naming::global_bucket(&ns),
            naming::blob_bucket(&ns),
            naming::listener_consumer(&ns, &name),
        ] {
            prop_assert!(valid_js_name(&n), "{n}");
        }
        let prefix = naming::store_subject_prefix(&ns, &name);
        prop_assert_eq!(prefix.split('.').collect::<Vec<_>>(), vec!["cw", ns.as_str(), "es", name.as_str()]);
        let key = naming::registry_key(&ns, Kind::Listener, &name);
        prop_assert_eq!(naming::parse_registry_key(&key), Some((ns, Kind::Listener, name)));
    }

    /// Distinct (namespace, name) pairs never share a stream name.
    #[test]
    fn stream_names_are_injective(a in "[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", b in "[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?",
                                  c in "[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", d in "[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?") {
        let l = |s: &str| DnsLabel::new(s).unwrap();
        if (a.as_str(), b.as_str()) != (c.as_str(), d.as_str()) {
            prop_assert_ne!(naming::store_stream(&l(&a), &l(&b)), naming::store_stream(&l(&c), &l(&d)));
        }
    }

    /// An accepted type or subject is a single NATS token path: no wildcards, spaces or empty tokens.
    #[test]
    fn accepted_subjects_are_literal(s in hostile()) {
        if validate_subject(&s).is_ok() {
            prop_assert!(!s.is_empty());
            prop_assert!(s.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"));
            prop_assert!(!s.chars().any(char::is_whitespace));
            prop_assert!(validate_subject_pattern(&s).is_ok());
        }
        prop_assert_eq!(validate_event_type(&s).is_ok(), validate_subject(&s).is_ok());
    }

    /// Any JSON payload and any strings survive the MessagePack round trip unchanged.
    #[test]
    fn envelope_round_trips(id in any::<String>(), ty in any::<String>(), subject in proptest::option::of(any::<String>()),
                            sender in any::<String>(), cause in proptest::option::of(any::<String>()),
                            lamport in any::<u64>(), payload in json(), hops in proptest::collection::vec((any::<String>(), any::<String>()), 0..40)) {
        let e = Envelope {
            id, event_type: ty, payload, subject, time: "2026-11-25T12:00:00.000Z".into(), sender,
            causation_id: cause, correlation_id: "c".into(), path: hops.into_iter().map(|(a, b)| [a, b]).collect(),
            lamport, blob: None, dead_letter: None, replay_of: None, schema_version: None, extensions: Default::default(),
        };
        let bytes = e.encode();
        prop_assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        // A map at the top level, fields by name.
        prop_assert!(bytes[0] & 0xf0 == 0x80 || bytes[0] == 0xde || bytes[0] == 0xdf);
    }

    /// Garbage never panics the decoder.
    #[test]
    fn decoding_garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Envelope::decode(&bytes);
    }
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e15f64..1e15).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn payload_is_native_messagepack_not_a_json_string() {
    let e = Envelope {
        id: "1".into(),
        event_type: "t".into(),
        payload: serde_json::json!({"orderId": "123", "qty": 2}),
        subject: None,
        time: "t".into(),
        sender: "s".into(),
        causation_id: None,
        correlation_id: "1".into(),
        path: vec![],
        lamport: 1,
        blob: None,
        dead_letter: None,
        replay_of: None,
        schema_version: None,
        extensions: Default::default(),
    };
    let v: rmpv::Value = rmp_serde::from_slice(&e.encode()).unwrap();
    let payload = v.as_map().unwrap().iter().find(|(k, _)| k.as_str() == Some("payload")).unwrap().1.clone();
    assert!(payload.is_map(), "payload must be a MessagePack map, got {payload:?}");
}
