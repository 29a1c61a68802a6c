//! DSSE envelopes (Dead Simple Signing Envelope) over ed25519.
//!
//! Signatures cover the pre-authentication encoding
//! `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, so the payload is
//! signed as bytes and nothing depends on canonical JSON. Envelopes are stored as compact JSON
//! and parsing requires exactly that form: any byte changed anywhere in a stored envelope is
//! either a signature failure or a malformed document, never silently accepted.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature as EdSignature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::keys::SecretKey;
use crate::verify::{Role, VerifyError};

/// Payload type of trust root documents.
pub const TRUST_ROOT_TYPE: &str = "application/vnd.outpost.trust-root+json";
/// Payload type of bundle manifests.
pub const MANIFEST_TYPE: &str = "application/vnd.outpost.bundle-manifest+json";
/// Payload type of rollout plans.
pub const PLAN_TYPE: &str = "application/vnd.outpost.rollout-plan+json";

/// Largest envelope accepted, before any parsing.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// The DSSE pre-authentication encoding of `payload_type` and `payload`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// One signature: the signer's key id and the base64 ed25519 signature over the PAE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

/// A signed document: payload type, base64 payload, signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<Signature>,
}

impl Envelope {
    /// An unsigned envelope around `payload`.
    pub fn new(payload_type: &str, payload: &[u8]) -> Self {
        Self { payload_type: payload_type.into(), payload: B64.encode(payload), signatures: vec![] }
    }

    /// Adds `key`'s signature. Signing twice with the same key replaces the earlier signature.
    pub fn sign(&mut self, key: &SecretKey) -> Result<(), VerifyError> {
        let payload = self.payload_bytes()?;
        let sig = key.sign(&pae(&self.payload_type, &payload));
        self.signatures.retain(|s| s.keyid != key.keyid());
        self.signatures.push(Signature { keyid: key.keyid().to_string(), sig: B64.encode(sig) });
        Ok(())
    }

    /// Parses a stored envelope. It must be the compact JSON that [`Envelope::to_vec`] writes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(VerifyError::Oversized {
                what: "signed document".into(),
                limit: MAX_ENVELOPE_BYTES as u64,
                actual: bytes.len() as u64,
            });
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| VerifyError::malformed("envelope", e))?;
        if envelope.to_vec() != bytes {
            return Err(VerifyError::malformed(
                "envelope",
                "not in canonical form (compact JSON as written by outpost)",
            ));
        }
        Ok(envelope)
    }

    /// The compact JSON form, the only form [`Envelope::from_slice`] accepts.
    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising a struct of strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The decoded payload bytes. Unverified: read signed fields only after [`Envelope::verify`].
    pub fn payload_bytes(&self) -> Result<Vec<u8>, VerifyError> {
        B64.decode(&self.payload)
            .map_err(|e| VerifyError::malformed("envelope", format!("payload is not base64: {e}")))
    }

    /// Verifies that at least `threshold` distinct keys of `keys` signed this envelope and
    /// returns the payload bytes with the ids of the keys that were counted.
    ///
    /// A signature by a key outside `keys` is not counted; a signature by a key inside `keys`
    /// that fails to verify is an error of its own (`BadSignature`), because it means the
    /// document was altered after signing.
    pub fn verify(
        &self,
        policy: &SignaturePolicy<'_>,
    ) -> Result<(Vec<u8>, Vec<String>), VerifyError> {
        if self.payload_type != policy.payload_type {
            return Err(VerifyError::WrongPayloadType {
                expected: policy.payload_type.into(),
                found: self.payload_type.clone(),
            });
        }
        let payload = self.payload_bytes()?;
        let message = pae(&self.payload_type, &payload);
        let mut valid: BTreeSet<&str> = BTreeSet::new();
        let mut bad: Option<String> = None;
        let mut ignored: Vec<String> = Vec::new();
        for signature in &self.signatures {
            let Some(key) = policy.keys.get(signature.keyid.as_str()) else {
                let why = match policy.other_roles.get(signature.keyid.as_str()) {
                    Some(role) => {
                        format!(
                            "{} key, not {} key",
                            role.with_article(),
                            policy.role.with_article()
                        )
                    }
                    None => "unknown key".to_string(),
                };
                ignored.push(format!("{} ({why})", signature.keyid));
                continue;
            };
            let verifies = B64
                .decode(&signature.sig)
                .ok()
                .and_then(|raw| <[u8; 64]>::try_from(raw.as_slice()).ok())
                .map(|raw| key.verify_strict(&message, &EdSignature::from_bytes(&raw)).is_ok())
                .unwrap_or(false);
            if verifies {
                if !valid.insert(signature.keyid.as_str()) {
                    ignored.push(format!("{} (duplicate)", signature.keyid));
                }
            } else if bad.is_none() {
                bad = Some(signature.keyid.clone());
            }
        }
        if let Some(keyid) = bad {
            return Err(VerifyError::BadSignature { keyid, role: policy.role });
        }
        if valid.len() >= policy.threshold {
            return Ok((payload, valid.into_iter().map(str::to_string).collect()));
        }
        if valid.is_empty()
            && let Some(first) = self.signatures.first()
            && !policy.keys.contains_key(first.keyid.as_str())
        {
            return Err(VerifyError::UnknownKey {
                keyid: first.keyid.clone(),
                role: policy.role,
                root_version: policy.root_version,
            });
        }
        Err(VerifyError::TooFewSignatures {
            role: policy.role,
            required: policy.threshold,
            valid: valid.len(),
            ignored,
        })
    }
}

/// Who may sign a document and how many of them must.
#[derive(Debug)]
pub struct SignaturePolicy<'a> {
    pub payload_type: &'a str,
    pub role: Role,
    pub keys: BTreeMap<&'a str, VerifyingKey>,
    pub threshold: usize,
    /// The trust root version the keys come from, for messages.
    pub root_version: u64,
    /// Keys the trust root holds in other roles, so messages can say why they do not count.
    pub other_roles: BTreeMap<&'a str, Role>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn non_canonical_envelopes_are_malformed() {
        let envelope = Envelope::new(PLAN_TYPE, b"{}");
        let mut pretty = serde_json::to_vec_pretty(&envelope).expect("json");
        assert!(matches!(Envelope::from_slice(&pretty), Err(VerifyError::Malformed { .. })));
        pretty = envelope.to_vec();
        pretty.push(b'\n');
        assert!(matches!(Envelope::from_slice(&pretty), Err(VerifyError::Malformed { .. })));
        assert_eq!(Envelope::from_slice(&envelope.to_vec()).expect("canonical"), envelope);
    }
}
