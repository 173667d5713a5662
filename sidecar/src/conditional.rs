//! Conditional requests as RFC 9110 (§13) defines them, for the API's numeric ETags.
//!
//! Every ETag this API gives is strong and quoted: a subject's last sequence, or a KV key's
//! revision (`"42"`). So:
//! - `If-Match` and `If-None-Match` take `*` or a list of such tags; a weak tag (`W/"42"`) or an
//!   unquoted or non-numeric one is refused with 400, never read as something else;
//! - `If-Match` is evaluated first, then `If-None-Match` (§13.2.2);
//! - on GET, a failed `If-None-Match` answers 304, a failed `If-Match` 412;
//! - date conditions (`If-Modified-Since`, `If-Unmodified-Since`, `If-Range`) are refused: the
//!   API gives no `Last-Modified`, so they could only be misunderstood;
//! - a route that evaluates no condition refuses them all, so a condition can never be silently
//!   ignored and a write never turns unconditional.

use http::{HeaderMap, header};

use crate::error::{Error, Result};

/// `*` or a list of strong entity tags holding numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tags {
    /// `*`: any current representation.
    Any,
    /// `"1", "2"`.
    List(Vec<u64>),
}

impl Tags {
    /// True when `current` (None: the resource does not exist) matches.
    pub fn matches(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (_, None) => false,
            (Tags::Any, Some(_)) => true,
            (Tags::List(l), Some(c)) => l.contains(&c),
        }
    }

    /// The single tag of a one-element list.
    pub fn single(&self) -> Option<u64> {
        match self {
            Tags::List(l) if l.len() == 1 => Some(l[0]),
            _ => None,
        }
    }
}

/// Which conditions a route evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// None: every conditional header is refused.
    None,
    /// `If-Match` and `If-None-Match`.
    Tags,
}

/// The conditional headers of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// `If-Match`.
    pub if_match: Option<Tags>,
    /// `If-None-Match`.
    pub if_none_match: Option<Tags>,
}

/// What evaluating the conditions decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the request.
    Proceed,
    /// 412 Precondition Failed.
    Failed,
    /// 304 Not Modified (GET with a matching `If-None-Match`).
    NotModified,
}

const DATE_CONDITIONS: [(&str, &str); 3] = [
    ("if-modified-since", "If-Modified-Since"),
    ("if-unmodified-since", "If-Unmodified-Since"),
    ("if-range", "If-Range"),
];

impl Conditions {
    /// Reads the conditional headers, refusing the ones `support` does not cover.
    pub fn parse(headers: &HeaderMap, support: Support, route: &'static str) -> Result<Self> {
        for (name, shown) in DATE_CONDITIONS {
            if headers.contains_key(name) {
                return Err(Error::UnsupportedCondition {
                    header: shown,
                    supported: match support {
                        Support::None => route,
                        Support::Tags => "use If-Match or If-None-Match with the ETag this API gave you",
                    },
                });
            }
        }
        let if_match = parse_tags(headers, header::IF_MATCH, "If-Match")?;
        let if_none_match = parse_tags(headers, header::IF_NONE_MATCH, "If-None-Match")?;
        if support == Support::None {
            let given = if if_match.is_some() {
                Some("If-Match")
            } else if if_none_match.is_some() {
                Some("If-None-Match")
            } else {
                None
            };
            if let Some(header) = given {
                return Err(Error::UnsupportedCondition { header, supported: route });
            }
        }
        Ok(Self { if_match, if_none_match })
    }

    /// True when no condition was given.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// Evaluates against the current tag (`None`: the resource does not exist), in RFC 9110
    /// order. `read` is true for GET and HEAD.
    pub fn evaluate(&self, current: Option<u64>, read: bool) -> Verdict {
        self.evaluate_by(|t| t.matches(current), read)
    }

    /// Evaluates against a subject whose last sequence is `last`: its ETag is `"<last>"`, `"0"`
    /// when it is empty, and `*` means "holds at least one event".
    pub fn evaluate_subject(&self, last: u64, read: bool) -> Verdict {
        self.evaluate_by(
            |t| match t {
                Tags::Any => last > 0,
                Tags::List(l) => l.contains(&last),
            },
            read,
        )
    }

    fn evaluate_by(&self, matches: impl Fn(&Tags) -> bool, read: bool) -> Verdict {
        if let Some(m) = &self.if_match
            && !matches(m)
        {
            return Verdict::Failed;
        }
        if let Some(n) = &self.if_none_match
            && matches(n)
        {
            return if read { Verdict::NotModified } else { Verdict::Failed };
        }
        Verdict::Proceed
    }
}

fn parse_tags(headers: &HeaderMap, name: header::HeaderName, shown: &'static str) -> Result<Option<Tags>> {
    let values: Vec<_> = headers.get_all(&name).iter().collect();
    if values.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for v in values {
        let v = v.to_str().map_err(|_| Error::InvalidHeader(format!("{shown} is not text")))?;
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(v);
    }
    parse_tag_list(shown, &text).map(Some)
}

/// Parses `*` or `"1", "2"` (RFC 9110 entity-tag lists), refusing weak and malformed tags.
pub fn parse_tag_list(shown: &str, text: &str) -> Result<Tags> {
    let t = text.trim();
    if t == "*" {
        return Ok(Tags::Any);
    }
    let bad = |why: &str| {
        Error::InvalidHeader(format!(
            "{shown}: {text:?} {why}; send * or the ETag exactly as this API gave it, e.g. \"42\" (with the quotes)"
        ))
    };
    let mut tags = Vec::new();
    for part in t.split(',') {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        if p == "*" {
            return Err(bad("mixes * with tags"));
        }
        if p.starts_with("W/") || p.starts_with("w/") {
            return Err(bad("is a weak tag, and this API gives and compares only strong tags"));
        }
        let Some(inner) = p.strip_prefix('"').and_then(|p| p.strip_suffix('"')) else {
            return Err(bad("is not a quoted entity tag"));
        };
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("is not an entity tag of this API (they are numbers)"));
        }
        tags.push(inner.parse::<u64>().map_err(|_| bad("is out of range"))?);
    }
    if tags.is_empty() {
        return Err(bad("holds no tag"));
    }
    Ok(Tags::List(tags))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn parses_strong_tags_and_star() {
        assert_eq!(parse_tag_list("If-Match", "*").unwrap(), Tags::Any);
        assert_eq!(parse_tag_list("If-Match", "\"42\"").unwrap(), Tags::List(vec![42]));
        assert_eq!(parse_tag_list("If-Match", " \"1\" , \"2\"").unwrap(), Tags::List(vec![1, 2]));
        for bad in ["W/\"1\"", "42", "\"abc\"", "\"\"", "\"1\", *", "\"-1\"", "\"1", "", ","] {
            assert!(parse_tag_list("If-Match", bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn repeated_headers_form_one_list() {
        let c = Conditions::parse(&h(&[("if-match", "\"1\""), ("if-match", "\"2\"")]), Support::Tags, "x").unwrap();
        assert_eq!(c.if_match, Some(Tags::List(vec![1, 2])));
    }

    #[test]
    fn evaluation_follows_rfc_9110() {
        let c = |m: Option<Tags>, n: Option<Tags>| Conditions { if_match: m, if_none_match: n };
        let list = |v: &[u64]| Some(Tags::List(v.to_vec()));
        assert_eq!(c(list(&[3]), None).evaluate(Some(3), false), Verdict::Proceed);
        assert_eq!(c(list(&[3]), None).evaluate(Some(4), false), Verdict::Failed);
        assert_eq!(c(Some(Tags::Any), None).evaluate(None, false), Verdict::Failed);
        assert_eq!(c(Some(Tags::Any), None).evaluate(Some(1), false), Verdict::Proceed);
        assert_eq!(c(None, Some(Tags::Any)).evaluate(None, false), Verdict::Proceed);
        assert_eq!(c(None, Some(Tags::Any)).evaluate(Some(1), false), Verdict::Failed);
        assert_eq!(c(None, list(&[5])).evaluate(Some(5), true), Verdict::NotModified);
        assert_eq!(c(None, list(&[5])).evaluate(Some(6), true), Verdict::Proceed);
        // If-Match is evaluated first: its failure wins over a 304.
        assert_eq!(c(list(&[1]), list(&[5])).evaluate(Some(5), true), Verdict::Failed);
        // Subjects: "0" is the empty subject's tag, and * means "has events".
        assert_eq!(c(list(&[0]), None).evaluate_subject(0, false), Verdict::Proceed);
        assert_eq!(c(Some(Tags::Any), None).evaluate_subject(0, false), Verdict::Failed);
        assert_eq!(c(Some(Tags::Any), None).evaluate_subject(3, false), Verdict::Proceed);
        assert_eq!(c(None, list(&[3])).evaluate_subject(3, true), Verdict::NotModified);
    }

    #[test]
    fn unsupported_conditions_are_refused() {
        for (k, v) in [("if-match", "\"1\""), ("if-none-match", "*"), ("if-unmodified-since", "x")] {
            let e = Conditions::parse(&h(&[(k, v)]), Support::None, "sends take no condition").unwrap_err();
            assert_eq!(e.code(), "unsupported_condition", "{k}");
        }
        let e = Conditions::parse(&h(&[("if-modified-since", "x")]), Support::Tags, "x").unwrap_err();
        assert_eq!(e.code(), "unsupported_condition");
        assert!(Conditions::parse(&h(&[]), Support::None, "x").unwrap().is_empty());
    }
}
