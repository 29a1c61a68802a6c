//! Field types and checks shared by every message: the protocol version field, content digests,
//! and the length and character rules for ids and free text.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::WireError;

/// The protocol version every JSON payload carries as `"v"`.
pub const PROTOCOL_VERSION: u64 = 1;

/// Longest id (rollout id, request id, capability, error kind, event code): 128 bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest short text (model name and version, agent version, arch, feature name): 256 bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest human-readable message (event message, fetch error message): 4 KiB.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// Longest tag key or value, the same rule as [`crate::selector`]: 64 characters.
pub const MAX_TAG_BYTES: usize = 64;

/// The `"v": 1` field. It serializes as [`PROTOCOL_VERSION`] and refuses any other number when
/// deserialized, so even a caller that bypasses [`super::decode`] cannot read another version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ProtocolVersion;

impl Serialize for ProtocolVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(PROTOCOL_VERSION)
    }
}

impl<'de> Deserialize<'de> for ProtocolVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let found = u64::deserialize(deserializer)?;
        if found == PROTOCOL_VERSION {
            Ok(ProtocolVersion)
        } else {
            Err(D::Error::custom(format_args!(
                "unsupported protocol version {found}, this build speaks version {PROTOCOL_VERSION}"
            )))
        }
    }
}

/// A content digest as written everywhere in Outpost: `sha256:` and 64 lowercase hex digits.
///
/// Digests from the wire end up in database keys and file names, so the format is checked when
/// the value is built, not where it is used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// Why a string is not a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{found}` is not a digest: expected `sha256:` followed by 64 lowercase hex digits")]
pub struct DigestError {
    /// The refused text, cut to a readable length.
    pub found: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let valid = text.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if valid { Ok(Digest(text.to_string())) } else { Err(DigestError { found: bounded(text) }) }
    }

    /// The SHA-256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(crate::sha256_digest(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Digest::parse(&text)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Digest::parse(text)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Cuts untrusted text to at most 120 characters so error messages and events stay readable
/// and bounded whatever a peer sent.
pub(crate) fn bounded(text: impl fmt::Display) -> String {
    cut(text.to_string(), 120)
}

/// A parser's error message, which may quote the input, cut to at most 400 characters: room
/// for the parser's own explanation plus a bounded quote.
pub(crate) fn parse_failure(error: impl fmt::Display) -> String {
    cut(error.to_string(), 400)
}

fn cut(text: String, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// Builds [`WireError::Invalid`].
pub(crate) fn invalid(
    message: &'static str,
    field: &'static str,
    reason: impl Into<String>,
) -> WireError {
    WireError::Invalid { message, field, reason: reason.into() }
}

/// An id: 1 to [`MAX_ID_BYTES`] bytes, no whitespace or control characters.
pub(crate) fn check_id(
    message: &'static str,
    field: &'static str,
    value: &str,
) -> Result<(), WireError> {
    if value.is_empty() {
        return Err(invalid(message, field, "must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(invalid(
            message,
            field,
            format!("{} bytes, the limit is {MAX_ID_BYTES}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            message,
            field,
            format!(
                "`{}` contains {c:?}; ids have no whitespace or control characters",
                bounded(value)
            ),
        ));
    }
    Ok(())
}

/// Free text: at most `max` bytes, no control characters other than newline and tab, and not
/// empty unless `may_be_empty`.
pub(crate) fn check_text(
    message: &'static str,
    field: &'static str,
    value: &str,
    max: usize,
    may_be_empty: bool,
) -> Result<(), WireError> {
    if value.is_empty() && !may_be_empty {
        return Err(invalid(message, field, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(message, field, format!("{} bytes, the limit is {max}", value.len())));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() && !matches!(c, '\n' | '\t')) {
        return Err(invalid(message, field, format!("contains the control character {c:?}")));
    }
    Ok(())
}

/// A tag key or value, the same rule as device tag selectors: 1 to 64 characters of
/// `A-Z a-z 0-9 . _ - / :`, so every tag a device reports can be selected by a rollout cohort.
pub(crate) fn check_tag(
    message: &'static str,
    field: &'static str,
    value: &str,
) -> Result<(), WireError> {
    if crate::selector::valid_token(value) {
        Ok(())
    } else {
        Err(invalid(
            message,
            field,
            format!(
                "`{}`: tag keys and values are 1-64 characters of A-Z a-z 0-9 . _ - / :",
                bounded(value)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_lowercase_hex() {
        let good = Digest::of(b"outpost");
        assert_eq!(Digest::parse(good.as_str()), Ok(good.clone()));
        assert_eq!(good.hex().len(), 64);
        for bad in [
            "",
            "sha256:",
            "sha512:0000000000000000000000000000000000000000000000000000000000000000",
            "sha256:000000000000000000000000000000000000000000000000000000000000000",
            "sha256:00000000000000000000000000000000000000000000000000000000000000000",
            "sha256:ABCDEF0000000000000000000000000000000000000000000000000000000000",
            "sha256:g000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn version_field_refuses_other_versions() {
        assert_eq!(serde_json::to_string(&ProtocolVersion).expect("serialize"), "1");
        assert!(serde_json::from_str::<ProtocolVersion>("1").is_ok());
        let error = serde_json::from_str::<ProtocolVersion>("2").expect_err("v2 accepted");
        assert!(error.to_string().contains("unsupported protocol version 2"), "{error}");
        assert!(serde_json::from_str::<ProtocolVersion>("\"1\"").is_err());
    }

    #[test]
    fn bounded_cuts_long_text_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(500);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), 121);
        assert!(cut.ends_with('…'));
    }
}
