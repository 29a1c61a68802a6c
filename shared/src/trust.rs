//! The trust root: which keys may sign what, and how many of them must.
//!
//! A trust root lists root keys with a threshold, approver keys with the k of k-of-n plan
//! approvals, and publisher keys for bundle manifests, plus a version and an expiry. It is a
//! DSSE envelope signed by its own root keys. A device installs one at enrollment (checked with
//! [`verify_initial`]) and afterwards accepts only a successor with a higher version that a
//! threshold of the *current* root keys and a threshold of the *new* root keys both signed
//! ([`verify_rotation`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::dsse::{Envelope, SignaturePolicy, TRUST_ROOT_TYPE};
use crate::keys::PublicKey;
use crate::verify::{Role, Verified, VerifyError};

/// The trust root document (the envelope's payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRoot {
    pub v: u32,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    pub root: KeyGroup,
    pub approvers: KeyGroup,
    pub publishers: KeyGroup,
}

/// Keys of one role and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyGroup {
    pub threshold: usize,
    pub keys: Vec<PublicKey>,
}

impl TrustRoot {
    /// Checks structure: version 1, thresholds between 1 and the number of keys, each key in the
    /// group of its role, valid, and present once across the whole document.
    pub fn validate(&self) -> Result<(), VerifyError> {
        if self.v != 1 {
            return Err(VerifyError::malformed("trust root", format!("unsupported v {}", self.v)));
        }
        let mut seen = BTreeSet::new();
        for (role, group) in self.groups() {
            if group.threshold == 0 || group.threshold > group.keys.len() {
                return Err(VerifyError::malformed(
                    "trust root",
                    format!(
                        "{role} threshold {} must be between 1 and the {} {role} keys",
                        group.threshold,
                        group.keys.len()
                    ),
                ));
            }
            for key in &group.keys {
                if key.role != role {
                    return Err(VerifyError::malformed(
                        "trust root",
                        format!(
                            "key {} has role {} but is listed as a {role} key",
                            key.keyid, key.role
                        ),
                    ));
                }
                key.verifying_key().map_err(|e| VerifyError::malformed("trust root", e))?;
                if !seen.insert(key.keyid.as_str()) {
                    return Err(VerifyError::malformed(
                        "trust root",
                        format!("key {} is listed more than once", key.keyid),
                    ));
                }
            }
        }
        Ok(())
    }

    fn groups(&self) -> [(Role, &KeyGroup); 3] {
        [
            (Role::Root, &self.root),
            (Role::Approver, &self.approvers),
            (Role::Publisher, &self.publishers),
        ]
    }

    /// The group of keys with `role`.
    pub fn group(&self, role: Role) -> &KeyGroup {
        match role {
            Role::Root => &self.root,
            Role::Approver => &self.approvers,
            Role::Publisher => &self.publishers,
        }
    }

    /// Who may sign a document of `payload_type` in `role`, and how many must.
    pub fn policy<'a>(&'a self, role: Role, payload_type: &'a str) -> SignaturePolicy<'a> {
        let group = self.group(role);
        let keys: BTreeMap<&str, _> = group
            .keys
            .iter()
            .filter_map(|k| k.verifying_key().ok().map(|vk| (k.keyid.as_str(), vk)))
            .collect();
        let other_roles = self
            .groups()
            .into_iter()
            .filter(|(other, _)| *other != role)
            .flat_map(|(other, group)| group.keys.iter().map(move |k| (k.keyid.as_str(), other)))
            .collect();
        SignaturePolicy {
            other_roles,
            payload_type,
            role,
            keys,
            threshold: group.threshold,
            root_version: self.version,
        }
    }

    /// An unsigned envelope holding this root.
    pub fn to_envelope(&self) -> Envelope {
        Envelope::new(TRUST_ROOT_TYPE, &serde_json::to_vec(self).unwrap_or_default())
    }

    /// Fails when the root has expired at `now`.
    pub fn check_not_expired(&self, now: OffsetDateTime) -> Result<(), VerifyError> {
        if now >= self.expires {
            return Err(VerifyError::Expired {
                what: "trust root",
                expired_at: rfc3339(self.expires),
            });
        }
        Ok(())
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Reads the payload of a trust root envelope without checking signatures. Only for
/// bootstrapping (the root's own keys are inside) and for display.
pub fn parse_unverified(envelope: &Envelope) -> Result<TrustRoot, VerifyError> {
    if envelope.payload_type != TRUST_ROOT_TYPE {
        return Err(VerifyError::WrongPayloadType {
            expected: TRUST_ROOT_TYPE.into(),
            found: envelope.payload_type.clone(),
        });
    }
    let root: TrustRoot = serde_json::from_slice(&envelope.payload_bytes()?)
        .map_err(|e| VerifyError::malformed("trust root", e))?;
    root.validate()?;
    Ok(root)
}

/// Verifies a trust root installed at enrollment: signed by a threshold of its own root keys
/// and not expired.
pub fn verify_initial(
    bytes: &[u8],
    now: OffsetDateTime,
) -> Result<Verified<TrustRoot>, VerifyError> {
    let envelope = Envelope::from_slice(bytes)?;
    let candidate = parse_unverified(&envelope)?;
    let (_, signers) = envelope.verify(&candidate.policy(Role::Root, TRUST_ROOT_TYPE))?;
    candidate.check_not_expired(now)?;
    Ok(Verified::new(candidate, signers))
}

/// Verifies a successor of `current`: a higher version, signed by a threshold of the current
/// root keys and by a threshold of its own root keys, not expired.
pub fn verify_rotation(
    current: &Verified<TrustRoot>,
    bytes: &[u8],
    now: OffsetDateTime,
) -> Result<Verified<TrustRoot>, VerifyError> {
    let envelope = Envelope::from_slice(bytes)?;
    envelope.verify(&current.policy(Role::Root, TRUST_ROOT_TYPE)).map_err(|e| {
        VerifyError::Rotation { reason: format!("not signed by the current root keys: {e}") }
    })?;
    let candidate = parse_unverified(&envelope)?;
    let (_, signers) =
        envelope.verify(&candidate.policy(Role::Root, TRUST_ROOT_TYPE)).map_err(|e| {
            VerifyError::Rotation { reason: format!("not signed by its own root keys: {e}") }
        })?;
    if candidate.version <= current.version {
        return Err(VerifyError::Rotation {
            reason: format!(
                "version {} is not above the current version {}",
                candidate.version, current.version
            ),
        });
    }
    candidate.check_not_expired(now)?;
    Ok(Verified::new(candidate, signers))
}
