//! Typed spec values: durations (`30s`, `15m`, `7d`, `1h30m`) and byte quantities (`512Mi`, `1G`).
//!
//! Both accept exactly the grammar their CRD schema pattern states, so a manifest that
//! `causeway apply` accepts is one the API server accepts too, and the other way round.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration as StdDuration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The CRD pattern for durations. Units: `ms`, `s`, `m`, `h`, `d`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";
/// The CRD pattern for byte quantities (Kubernetes quantity suffixes, integers only).
pub const BYTES_PATTERN: &str = r"^[0-9]+(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

/// Why a duration or quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the grammar.
    #[error("{value:?} is not a duration: use a number and a unit (ms, s, m, h, d), e.g. 30s, 15m, 7d or 1h30m")]
    BadDuration {
        /// The rejected text.
        value: String,
    },
    /// Not a byte quantity.
    #[error(
        "{value:?} is not a byte size: use a whole number with an optional suffix (Ki, Mi, Gi, Ti, k, M, G, T), e.g. 512Mi or 10G"
    )]
    BadBytes {
        /// The rejected text.
        value: String,
    },
    /// Larger than JetStream can hold.
    #[error("{value:?} is too large")]
    TooLarge {
        /// The rejected text.
        value: String,
    },
}

/// A non-negative duration written as in a manifest (`30s`, `15m`, `7d`, `1h30m`, `250ms`).
///
/// It keeps its canonical text so that re-serialising a spec gives back the same bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(StdDuration);

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(StdDuration::from_millis(ms))
    }
    /// The std value.
    pub const fn get(self) -> StdDuration {
        self.0
    }
    /// The smaller of `self` and `other`, where an unset or zero `other` means no limit.
    pub fn min_nonzero(self, other: Option<Duration>) -> Duration {
        match other {
            Some(o) if !o.is_zero() => self.min(o),
            _ => self,
        }
    }
    /// True for `0s`.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        // Manifests only express whole milliseconds.
        Self(StdDuration::from_millis(d.as_millis() as u64))
    }
}

impl From<Duration> for StdDuration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || QuantityError::BadDuration { value: s.to_owned() };
        if s.is_empty() {
            return Err(bad());
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut total: u128 = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return Err(bad());
            }
            let n: u128 = s[start..i].parse().map_err(|_| QuantityError::TooLarge { value: s.to_owned() })?;
            let unit_ms: u128 = if s[i..].starts_with("ms") {
                i += 2;
                1
            } else {
                let unit = match bytes.get(i) {
                    Some(b's') => 1_000,
                    Some(b'm') => 60_000,
                    Some(b'h') => 3_600_000,
                    Some(b'd') => 86_400_000,
                    _ => return Err(bad()),
                };
                i += 1;
                unit
            };
            total = n
                .checked_mul(unit_ms)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| QuantityError::TooLarge { value: s.to_owned() })?;
        }
        // JetStream takes nanoseconds as i64.
        if total > (i64::MAX as u128) / 1_000_000 {
            return Err(QuantityError::TooLarge { value: s.to_owned() });
        }
        Ok(Self(StdDuration::from_millis(total as u64)))
    }
}

impl fmt::Display for Duration {
    /// Canonical form: the largest units first, e.g. `1h30m`, `7d`, `250ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: a number and a unit (ms, s, m, h, d), e.g. 30s, 15m, 7d or 1h30m."
        })
    }
}

/// A byte quantity written as in Kubernetes (`512Mi`, `10G`, `1048576`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(u64);

impl ByteSize {
    /// A size of `n` bytes.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }
    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(QuantityError::BadBytes { value: s.to_owned() });
        }
        let mult: u64 = match &s[digits..] {
            "" => 1,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "P" => 1_000_000_000_000_000,
            "E" => 1_000_000_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "Pi" => 1 << 50,
            "Ei" => 1 << 60,
            _ => {
                return Err(QuantityError::BadBytes { value: s.to_owned() });
            }
        };
        let too_large = || QuantityError::TooLarge { value: s.to_owned() };
        let n: u64 = s[..digits].parse().map_err(|_| too_large())?;
        let v = n.checked_mul(mult).ok_or_else(too_large)?;
        // JetStream takes sizes as i64.
        if v > i64::MAX as u64 {
            return Err(too_large());
        }
        Ok(Self(v))
    }
}

impl fmt::Display for ByteSize {
    /// Canonical form: the largest binary suffix that divides exactly, else plain bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (suffix, shift) in [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{suffix}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte size such as 512Mi, 10G or 1048576")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                if v < 0 {
                    return Err(E::custom(QuantityError::BadBytes { value: v.to_string() }));
                }
                self.visit_u64(v as u64)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": BYTES_PATTERN}],
            "description": "A byte size: a whole number with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E), e.g. 512Mi."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        for (text, ms, canon) in [
            ("30s", 30_000, "30s"),
            ("15m", 900_000, "15m"),
            ("7d", 604_800_000, "7d"),
            ("1h30m", 5_400_000, "1h30m"),
            ("90m", 5_400_000, "1h30m"),
            ("250ms", 250, "250ms"),
            ("0s", 0, "0s"),
            ("1m500ms", 60_500, "1m500ms"),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.get().as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), canon, "{text}");
        }
    }

    #[test]
    fn bad_durations_are_refused() {
        for text in ["", "-5s", "5", "s", "5 s", "1.5s", "5sec", "5y", "99999999999999999999d", "1h-3m"] {
            assert!(text.parse::<Duration>().is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!("512Mi".parse::<ByteSize>().unwrap().get(), 512 << 20);
        assert_eq!("10G".parse::<ByteSize>().unwrap().get(), 10_000_000_000);
        assert_eq!("1024".parse::<ByteSize>().unwrap().to_string(), "1Ki");
        for bad in ["", "-1", "1.5Gi", "12X", "Mi", "20Ei"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?}");
        }
        let v: ByteSize = serde_json::from_str("4096").unwrap();
        assert_eq!(v.get(), 4096);
        assert!(serde_json::from_str::<ByteSize>("-4").is_err());
    }
}
