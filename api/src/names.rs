//! Validated names: DNS-1123 labels, event types, subjects and subject patterns.
//!
//! Each rule lives here once. The CRD schema patterns, `causeway apply`, the operator and the
//! sidecar all call these functions, so a name is accepted or refused the same way everywhere.

use std::{borrow::Cow, fmt, ops::Deref};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

/// Longest event type or subject we accept, in bytes.
pub const MAX_TOKEN_PATH_LEN: usize = 256;
/// The CRD pattern for a DNS-1123 label.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// The CRD pattern for an event type or a concrete subject.
pub const TOKEN_PATH_PATTERN: &str = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$";
/// The CRD pattern for a subject pattern (`*` for one token, a final `>` for the rest).
pub const SUBJECT_PATTERN_PATTERN: &str = r"^([A-Za-z0-9_-]+|\*)(\.([A-Za-z0-9_-]+|\*))*(\.>)?$|^>$";
/// The CRD pattern for a type filter: an exact type or `prefix.*`.
pub const TYPE_PATTERN_PATTERN: &str = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?$";

/// The CRD pattern for an access-policy entry: `name`, `*`, `namespace/name` or `namespace/*`.
pub const ACCESS_REF_PATTERN: &str =
    r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?/(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$";

/// Why a name was refused. The message says what is wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a DNS-1123 label.
    #[error(
        "{value:?} is not a valid name: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    DnsLabel {
        /// The rejected text.
        value: String,
    },
    /// Not a valid event type or subject.
    #[error(
        "{value:?} is not a valid {what}: use tokens of letters, digits, '_' and '-' joined by '.', with no empty token, spaces, '*' or '>' (at most 256 characters)"
    )]
    TokenPath {
        /// "event type" or "subject".
        what: &'static str,
        /// The rejected text.
        value: String,
    },
    /// Not a valid subject pattern.
    #[error(
        "{value:?} is not a valid subject pattern: use tokens of letters, digits, '_' and '-' joined by '.', where a token may be '*' and the last may be '>'"
    )]
    SubjectPattern {
        /// The rejected text.
        value: String,
    },
    /// Not a valid access-policy entry.
    #[error(
        "{value:?} is not a valid access entry: use a name of this namespace (orders), '*' for all of this namespace, namespace/name (billing/ledger) or namespace/* (billing/*)"
    )]
    AccessRef {
        /// The rejected text.
        value: String,
    },
    /// Not a valid type filter.
    #[error(
        "{value:?} is not a valid type filter: use an exact event type such as order-placed, or a prefix such as order.*"
    )]
    TypePattern {
        /// The rejected text.
        value: String,
    },
}

fn is_token(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True when `s` is a DNS-1123 label.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Checks an event type: tokens of `[A-Za-z0-9_-]` joined by `.`.
pub fn validate_event_type(s: &str) -> Result<(), NameError> {
    validate_token_path(s, "event type")
}

/// Checks a concrete subject (relative to a store or inbox): tokens joined by `.`.
pub fn validate_subject(s: &str) -> Result<(), NameError> {
    validate_token_path(s, "subject")
}

fn validate_token_path(s: &str, what: &'static str) -> Result<(), NameError> {
    if s.len() <= MAX_TOKEN_PATH_LEN && s.split('.').all(is_token) {
        Ok(())
    } else {
        Err(NameError::TokenPath { what, value: s.to_owned() })
    }
}

/// Checks a subject pattern: concrete tokens, `*` tokens, and optionally a final `>`.
pub fn validate_subject_pattern(s: &str) -> Result<(), NameError> {
    let bad = || NameError::SubjectPattern { value: s.to_owned() };
    if s.len() > MAX_TOKEN_PATH_LEN {
        return Err(bad());
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        let last = i + 1 == tokens.len();
        if !(is_token(t) || *t == "*" || (last && *t == ">")) {
            return Err(bad());
        }
    }
    Ok(())
}

/// True when the NATS subject pattern `pattern` (`*` one token, a final `>` one or more)
/// matches the concrete subject `subject`, token by token as nats-server matches them.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

/// True when a subject pattern contains a wildcard.
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|t| t == "*" || t == ">")
}

/// Checks a type filter: an exact type, or `prefix.*` meaning every type under `prefix.`.
pub fn validate_type_pattern(s: &str) -> Result<(), NameError> {
    let exact = s.strip_suffix(".*").unwrap_or(s);
    validate_token_path(exact, "event type").map_err(|_| NameError::TypePattern { value: s.to_owned() })
}

/// True when an event type matches a type filter (`exact` or `prefix.*`).
pub fn type_matches(filter: &str, event_type: &str) -> bool {
    match filter.strip_suffix(".*") {
        Some(prefix) => {
            event_type.len() > prefix.len() + 1
                && event_type.starts_with(prefix)
                && event_type.as_bytes()[prefix.len()] == b'.'
        }
        None => filter == event_type,
    }
}

/// Checks an access-policy entry: `name`, `*`, `namespace/name` or `namespace/*`.
pub fn validate_access_ref(s: &str) -> Result<(), NameError> {
    let ok = |t: &str| t == "*" || is_dns_label(t);
    let valid = match s.split_once('/') {
        Some((ns, name)) => is_dns_label(ns) && ok(name),
        None => ok(s),
    };
    if valid { Ok(()) } else { Err(NameError::AccessRef { value: s.to_owned() }) }
}

/// A string that has passed one of the checks above. Deserialising validates it.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr, $pattern:expr, $max:expr, $desc:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                ($check)(&s)?;
                Ok(Self(s))
            }
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({"type": "string", "pattern": $pattern, "maxLength": $max, "description": $desc})
            }
        }
    };
}

checked_string!(
    /// A DNS-1123 label: the name of a namespace, store, node or listener.
    DnsLabel,
    |s: &str| if is_dns_label(s) { Ok(()) } else { Err(NameError::DnsLabel { value: s.to_owned() }) },
    DNS_LABEL_PATTERN,
    63,
    "A DNS-1123 label: at most 63 lower-case letters, digits and '-'."
);
checked_string!(
    /// An event type such as `order-placed` or `order.placed`.
    EventType,
    validate_event_type,
    TOKEN_PATH_PATTERN,
    MAX_TOKEN_PATH_LEN,
    "An event type: tokens of letters, digits, '_' and '-' joined by '.'."
);
checked_string!(
    /// A concrete subject inside a store, such as `order-123`.
    Subject,
    validate_subject,
    TOKEN_PATH_PATTERN,
    MAX_TOKEN_PATH_LEN,
    "A subject: tokens of letters, digits, '_' and '-' joined by '.'."
);
checked_string!(
    /// A NATS subject pattern relative to a source, such as `order-*` tokens, `orders.*` or `>`.
    SubjectPattern,
    validate_subject_pattern,
    SUBJECT_PATTERN_PATTERN,
    MAX_TOKEN_PATH_LEN,
    "A subject pattern relative to the source: tokens joined by '.', where a token may be '*' and the last may be '>'."
);
checked_string!(
    /// A type filter: an exact event type or `prefix.*`.
    TypePattern,
    validate_type_pattern,
    TYPE_PATTERN_PATTERN,
    MAX_TOKEN_PATH_LEN,
    "An exact event type, or 'prefix.*' for every type under 'prefix.'."
);

checked_string!(
    /// An access-policy entry: `name`, `*`, `namespace/name` or `namespace/*`.
    AccessRef,
    validate_access_ref,
    ACCESS_REF_PATTERN,
    127,
    "A name of this namespace, '*' for every one of this namespace, 'namespace/name', or 'namespace/*'."
);

impl AccessRef {
    /// The namespace and name this entry covers, seen from namespace `own`; `None` as the name
    /// means every one of that namespace.
    pub fn scope<'a>(&'a self, own: &'a str) -> (&'a str, Option<&'a str>) {
        let (ns, name) = self.0.split_once('/').unwrap_or((own, &self.0));
        (ns, (name != "*").then_some(name))
    }

    /// True when this entry covers `name` of namespace `ns`, seen from namespace `own`.
    pub fn covers(&self, own: &str, ns: &str, name: &str) -> bool {
        let (n, which) = self.scope(own);
        n == ns && which.is_none_or(|w| w == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_matching() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(">", "a"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
        assert!(subject_matches("$JS.API.DIRECT.GET.CW_ES_shop_orders", "$JS.API.DIRECT.GET.CW_ES_shop_orders"));
        assert!(!subject_matches("$JS.API.DIRECT.GET.CW_ES_shop_orders", "$JS.API.DIRECT.GET.CW_ES_shop_orders2"));
    }

    #[test]
    fn access_refs() {
        for ok in ["orders", "*", "billing/ledger", "billing/*"] {
            assert!(validate_access_ref(ok).is_ok(), "{ok}");
        }
        for bad in ["", "*/*", "*/x", "a/b/c", "A", "a/", "/a", "a b", "a.b"] {
            assert!(validate_access_ref(bad).is_err(), "{bad:?}");
        }
        let r = |s: &str| AccessRef::new(s).unwrap();
        assert!(r("*").covers("shop", "shop", "x"));
        assert!(!r("*").covers("shop", "billing", "x"));
        assert!(r("x").covers("shop", "shop", "x"));
        assert!(!r("x").covers("shop", "shop", "y"));
        assert!(r("billing/*").covers("shop", "billing", "y"));
        assert!(r("billing/ledger").covers("shop", "billing", "ledger"));
        assert!(!r("billing/ledger").covers("shop", "shop", "ledger"));
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "orders", "shop-1", "0", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "a b", &"a".repeat(64), "ü"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn types_and_subjects() {
        for ok in ["order-placed", "order.placed", "a_b.C-9"] {
            assert!(validate_event_type(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a.*", "a.>", ">", "a..b", ".a", "a.", "é", "a\nb", "a\0"] {
            assert!(validate_event_type(bad).is_err(), "{bad:?}");
            assert!(validate_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subject_patterns() {
        for ok in [">", "*", "order.*", "order.>", "*.x.>", "a"] {
            assert!(validate_subject_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", ">.a", "a.>.b", "a..b", "a b", "a*", "**", "a.>>"] {
            assert!(validate_subject_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn type_filters() {
        assert!(validate_type_pattern("order.*").is_ok());
        assert!(validate_type_pattern("order-placed").is_ok());
        assert!(validate_type_pattern("*").is_err());
        assert!(validate_type_pattern("order.>").is_err());
        assert!(type_matches("order.*", "order.placed"));
        assert!(type_matches("order.*", "order.placed.eu"));
        assert!(!type_matches("order.*", "order"));
        assert!(!type_matches("order.*", "orders.placed"));
        assert!(type_matches("order-placed", "order-placed"));
        assert!(!type_matches("order-placed", "order-placed.x"));
    }
}
