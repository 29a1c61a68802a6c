//! The outcome of verification: [`Verified`] wraps a document whose signatures and constraints
//! were checked, and [`VerifyError`] names every way a document can be refused (DESIGN §4).
//!
//! `Verified<T>` can only be built inside this crate, by the verification functions, so code
//! that takes a `Verified<Bundle>` cannot be handed something unchecked.

use std::fmt;
use std::ops::Deref;

/// A value whose signatures and constraints were checked by this crate, with the ids of the
/// keys whose valid signatures were counted.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    value: T,
    signers: Vec<String>,
}

impl<T> Verified<T> {
    pub(crate) fn new(value: T, signers: Vec<String>) -> Self {
        Self { value, signers }
    }

    /// Key ids of the distinct valid signatures that were counted.
    pub fn signers(&self) -> &[String] {
        &self.signers
    }

    /// The verified value, giving up the proof that it was verified.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// The role a key plays in the trust root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Root,
    Approver,
    Publisher,
}

impl Role {
    /// The role's name with its indefinite article, for messages: "an approver", "a root".
    pub fn with_article(self) -> &'static str {
        match self {
            Role::Root => "a root",
            Role::Approver => "an approver",
            Role::Publisher => "a publisher",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Root => "root",
            Role::Approver => "approver",
            Role::Publisher => "publisher",
        })
    }
}

/// Every reason a signed document, bundle or transfer is refused.
///
/// Messages name what was wrong so an operator can act on an event without a debugger.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("wrong document type: expected payload type {expected}, found {found}")]
    WrongPayloadType { expected: String, found: String },
    #[error("unknown key: {keyid} is not a {role} key of trust root version {root_version}")]
    UnknownKey { keyid: String, role: Role, root_version: u64 },
    #[error("bad signature: signature by {role} key {keyid} does not verify")]
    BadSignature { keyid: String, role: Role },
    #[error(
        "too few distinct {role} signatures: {valid} valid of {required} required{}",
        if ignored.is_empty() { String::new() } else { format!(" (not counted: {})", ignored.join(", ")) }
    )]
    TooFewSignatures { role: Role, required: usize, valid: usize, ignored: Vec<String> },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("{what} expired at {expired_at}")]
    Expired { what: &'static str, expired_at: String },
    #[error(
        "replayed plan: sequence {seq} is not above the last accepted sequence {last_accepted}"
    )]
    Replay { seq: u64, last_accepted: u64 },
    #[error("device {device} is not in the plan's cohort `{selector}` (device tags: {tags})")]
    NotInCohort { device: String, selector: String, tags: String },
    #[error("oversized {what}: {actual} bytes exceeds the limit of {limit}")]
    Oversized { what: String, limit: u64, actual: u64 },
    #[error("trust root rotation refused: {reason}")]
    Rotation { reason: String },
}

impl VerifyError {
    /// A short, stable code per rejection kind, used in device events and exit statuses.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed { .. } => "malformed",
            VerifyError::WrongPayloadType { .. } => "wrong_payload_type",
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::BadSignature { .. } => "bad_signature",
            VerifyError::TooFewSignatures { .. } => "too_few_signatures",
            VerifyError::DigestMismatch { .. } => "digest_mismatch",
            VerifyError::SizeMismatch { .. } => "size_mismatch",
            VerifyError::Expired { .. } => "expired",
            VerifyError::Replay { .. } => "replay",
            VerifyError::NotInCohort { .. } => "not_in_cohort",
            VerifyError::Oversized { .. } => "oversized",
            VerifyError::Rotation { .. } => "rotation",
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: impl fmt::Display) -> Self {
        VerifyError::Malformed { what, reason: reason.to_string() }
    }
}
