//! Device tag selectors: `site=berlin,hw=rpi4` selects devices whose tags match every term.
//!
//! Terms are `key=value`, `key!=value`, `key` (tag present) and `!key` (tag absent); `*` or an
//! empty selector selects every device. Tags are `key=value` pairs in the same syntax.

use std::collections::BTreeMap;
use std::fmt;

/// Why a selector or tag list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{input}`: {reason}")]
pub struct SelectorError {
    pub what: &'static str,
    pub input: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Present(String),
    Absent(String),
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    source: String,
    terms: Vec<Term>,
}

/// Whether `s` is a valid tag key or value: 1-64 characters of `A-Z a-z 0-9 . _ - / :`.
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':'))
}

impl Selector {
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let error =
            |reason: String| SelectorError { what: "selector", input: input.into(), reason };
        let trimmed = input.trim();
        let mut terms = Vec::new();
        if !(trimmed.is_empty() || trimmed == "*") {
            for raw in trimmed.split(',') {
                let raw = raw.trim();
                let term = if let Some((k, v)) = raw.split_once("!=") {
                    Term::NotEquals(k.trim().into(), v.trim().into())
                } else if let Some((k, v)) = raw.split_once('=') {
                    Term::Equals(k.trim().into(), v.trim().into())
                } else if let Some(k) = raw.strip_prefix('!') {
                    Term::Absent(k.trim().into())
                } else {
                    Term::Present(raw.into())
                };
                let tokens_ok = match &term {
                    Term::Equals(k, v) | Term::NotEquals(k, v) => valid_token(k) && valid_token(v),
                    Term::Present(k) | Term::Absent(k) => valid_token(k),
                };
                if !tokens_ok {
                    return Err(error(format!(
                        "term `{raw}`: keys and values are 1-64 characters of A-Z a-z 0-9 . _ - / :"
                    )));
                }
                terms.push(term);
            }
        }
        Ok(Self { source: trimmed.to_string(), terms })
    }

    /// Whether a device with `tags` is selected.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|term| match term {
            Term::Equals(k, v) => tags.get(k) == Some(v),
            Term::NotEquals(k, v) => tags.get(k) != Some(v),
            Term::Present(k) => tags.contains_key(k),
            Term::Absent(k) => !tags.contains_key(k),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.source.is_empty() { "*" } else { &self.source })
    }
}

/// Parses device tags `key=value,key=value`.
pub fn parse_tags(input: &str) -> Result<BTreeMap<String, String>, SelectorError> {
    let mut tags = BTreeMap::new();
    for raw in input.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, v)) = raw.split_once('=') else {
            return Err(SelectorError {
                what: "tags",
                input: input.into(),
                reason: format!("`{raw}` is not key=value"),
            });
        };
        let (k, v) = (k.trim(), v.trim());
        if !valid_token(k) || !valid_token(v) {
            return Err(SelectorError {
                what: "tags",
                input: input.into(),
                reason: format!(
                    "`{raw}`: keys and values are 1-64 characters of A-Z a-z 0-9 . _ - / :"
                ),
            });
        }
        tags.insert(k.to_string(), v.to_string());
    }
    Ok(tags)
}

/// Formats tags as `key=value,key=value`.
pub fn format_tags(tags: &BTreeMap<String, String>) -> String {
    tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(selector: &str, tags: &str, expected: bool) {
        let s = Selector::parse(selector).expect("selector");
        let t = parse_tags(tags).expect("tags");
        assert_eq!(s.matches(&t), expected, "{selector} against {tags}");
    }

    #[test]
    fn selector_cases() {
        check("site=berlin,hw=rpi4", "site=berlin,hw=rpi4,ring=1", true);
        check("site=berlin,hw=rpi4", "site=berlin,hw=jetson", false);
        check("site!=berlin", "site=paris", true);
        check("site!=berlin", "", true);
        check("canary", "canary=yes", true);
        check("!canary", "canary=yes", false);
        check("*", "", true);
        check("", "site=x", true);
    }

    #[test]
    fn malformed_selectors_and_tags_are_refused() {
        assert!(Selector::parse("site=").is_err());
        assert!(Selector::parse("si te=x").is_err());
        assert!(Selector::parse("a=b,,c=d").is_err());
        assert!(parse_tags("site").is_err());
        assert!(parse_tags("site=ber lin").is_err());
    }
}
