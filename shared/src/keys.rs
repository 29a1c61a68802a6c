//! Keys: ids, public key documents, and private keys encrypted at rest with a passphrase.
//!
//! A key id is `ed25519:` followed by the first 32 hex digits of the SHA-256 of the raw public
//! key. Ids are hints for finding the key; verification always uses the key bytes themselves.
//! Private keys are sealed with XChaCha20-Poly1305 under a key derived from the passphrase by
//! Argon2id; the key's id, name and role are the AEAD's associated data, so a file whose metadata
//! was edited no longer opens.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
#[cfg(feature = "keyfile")]
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::verify::Role;

/// Errors from key generation, parsing and decryption.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("malformed key file: {0}")]
    Malformed(String),
    #[error("key id {stated} does not match the public key (expected {computed})")]
    IdMismatch { stated: String, computed: String },
    #[error("wrong passphrase, or the key file was modified")]
    Decrypt,
    #[error("operating system randomness unavailable: {0}")]
    Random(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// The key id of an ed25519 public key.
pub fn key_id(public: &VerifyingKey) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(public.as_bytes());
    format!("ed25519:{}", &hex::encode(digest)[..32])
}

/// A public key with its id, a human name and its role: the `*.pub.json` file and the entries
/// of a trust root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    pub keyid: String,
    pub name: String,
    pub role: Role,
    /// Always `ed25519`.
    pub algorithm: String,
    /// Base64 of the 32 raw public key bytes.
    pub public: String,
}

impl PublicKey {
    pub fn new(name: &str, role: Role, key: &VerifyingKey) -> Self {
        Self {
            keyid: key_id(key),
            name: name.to_string(),
            role,
            algorithm: "ed25519".into(),
            public: B64.encode(key.as_bytes()),
        }
    }

    /// Parses a public key document and checks that its id matches its key.
    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyError> {
        let key: PublicKey =
            serde_json::from_slice(bytes).map_err(|e| KeyError::Malformed(e.to_string()))?;
        key.verifying_key()?;
        Ok(key)
    }

    /// The ed25519 key, after checking algorithm, encoding and id.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        if self.algorithm != "ed25519" {
            return Err(KeyError::Malformed(format!(
                "unsupported algorithm {:?} (only ed25519)",
                self.algorithm
            )));
        }
        let raw = B64
            .decode(&self.public)
            .map_err(|e| KeyError::Malformed(format!("public key is not base64: {e}")))?;
        let raw: [u8; 32] =
            raw.try_into().map_err(|_| KeyError::Malformed("public key is not 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|e| KeyError::Malformed(format!("not an ed25519 point: {e}")))?;
        let computed = key_id(&key);
        if computed != self.keyid {
            return Err(KeyError::IdMismatch { stated: self.keyid.clone(), computed });
        }
        Ok(key)
    }
}

/// A private signing key in memory, with the metadata of its public half.
pub struct SecretKey {
    signing: SigningKey,
    pub public: PublicKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SecretKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate(name: &str, role: Role) -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(&seed, name, role))
    }

    /// A key from a 32-byte seed; deterministic, for tests and fixtures.
    pub fn from_seed(seed: &[u8; 32], name: &str, role: Role) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let public = PublicKey::new(name, role, &signing.verifying_key());
        Self { signing, public }
    }

    pub fn keyid(&self) -> &str {
        &self.public.keyid
    }

    pub fn role(&self) -> Role {
        self.public.role
    }

    /// Signs raw bytes (callers sign DSSE pre-authentication encodings, see [`crate::dsse`]).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Seals this key under `passphrase` with the given KDF cost.
    #[cfg(feature = "keyfile")]
    pub fn encrypt(&self, passphrase: &str, cost: KdfCost) -> Result<EncryptedKey, KeyError> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut salt).map_err(|e| KeyError::Random(e.to_string()))?;
        getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
        let kdf = KdfParams {
            algorithm: "argon2id".into(),
            m_cost_kib: cost.m_cost_kib,
            t_cost: cost.t_cost,
            p_cost: 1,
            salt: B64.encode(salt),
        };
        let key = kdf.derive(passphrase)?;
        let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(key.as_ref())
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let aad = associated_data(&self.public);
        let nonce_array = chacha20poly1305::XNonce::try_from(&nonce[..])
            .map_err(|_| KeyError::Kdf("nonce length".into()))?;
        let ciphertext = cipher
            .encrypt(&nonce_array, Payload { msg: self.signing.as_bytes(), aad: &aad })
            .map_err(|_| KeyError::Kdf("encryption failed".into()))?;
        Ok(EncryptedKey {
            v: 1,
            public: self.public.clone(),
            kdf,
            cipher: "xchacha20poly1305".into(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }
}

#[cfg(feature = "keyfile")]
/// Argon2id cost. [`KdfCost::DEFAULT`] follows OWASP's recommendation (19 MiB, 2 passes).
#[derive(Debug, Clone, Copy)]
pub struct KdfCost {
    pub m_cost_kib: u32,
    pub t_cost: u32,
}

#[cfg(feature = "keyfile")]
impl KdfCost {
    pub const DEFAULT: KdfCost = KdfCost { m_cost_kib: 19 * 1024, t_cost: 2 };
}

#[cfg(feature = "keyfile")]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    pub algorithm: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt: String,
}

#[cfg(feature = "keyfile")]
impl KdfParams {
    fn derive(&self, passphrase: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        if self.algorithm != "argon2id" {
            return Err(KeyError::Malformed(format!("unsupported KDF {:?}", self.algorithm)));
        }
        // Refuse absurd parameters from a hostile file before allocating for them.
        if self.m_cost_kib > 4 * 1024 * 1024 || self.t_cost > 64 || self.p_cost > 16 {
            return Err(KeyError::Malformed("KDF parameters out of range".into()));
        }
        let salt = B64
            .decode(&self.salt)
            .map_err(|e| KeyError::Malformed(format!("salt is not base64: {e}")))?;
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), &salt, out.as_mut())
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(feature = "keyfile")]
/// The `*.key.json` file: a private key sealed under a passphrase, with its public half in clear.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedKey {
    pub v: u32,
    pub public: PublicKey,
    pub kdf: KdfParams,
    pub cipher: String,
    pub nonce: String,
    pub ciphertext: String,
}

#[cfg(feature = "keyfile")]
impl EncryptedKey {
    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyError> {
        let key: EncryptedKey =
            serde_json::from_slice(bytes).map_err(|e| KeyError::Malformed(e.to_string()))?;
        if key.v != 1 {
            return Err(KeyError::Malformed(format!("unsupported key file version {}", key.v)));
        }
        if key.cipher != "xchacha20poly1305" {
            return Err(KeyError::Malformed(format!("unsupported cipher {:?}", key.cipher)));
        }
        key.public.verifying_key()?;
        Ok(key)
    }

    /// Opens the key; fails with [`KeyError::Decrypt`] on a wrong passphrase or any edit.
    pub fn decrypt(&self, passphrase: &str) -> Result<SecretKey, KeyError> {
        let key = self.kdf.derive(passphrase)?;
        let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(key.as_ref())
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let nonce = B64.decode(&self.nonce).map_err(|_| KeyError::Decrypt)?;
        let nonce =
            chacha20poly1305::XNonce::try_from(&nonce[..]).map_err(|_| KeyError::Decrypt)?;
        let ciphertext = B64.decode(&self.ciphertext).map_err(|_| KeyError::Decrypt)?;
        let aad = associated_data(&self.public);
        let plain = Zeroizing::new(
            cipher
                .decrypt(&nonce, Payload { msg: &ciphertext, aad: &aad })
                .map_err(|_| KeyError::Decrypt)?,
        );
        let seed: [u8; 32] = plain.as_slice().try_into().map_err(|_| KeyError::Decrypt)?;
        let seed = Zeroizing::new(seed);
        let secret = SecretKey::from_seed(&seed, &self.public.name, self.public.role);
        if secret.public.keyid != self.public.keyid {
            return Err(KeyError::IdMismatch {
                stated: self.public.keyid.clone(),
                computed: secret.public.keyid.clone(),
            });
        }
        Ok(secret)
    }
}

#[cfg(feature = "keyfile")]
fn associated_data(public: &PublicKey) -> Vec<u8> {
    format!("outpost-key-v1\n{}\n{}\n{}", public.keyid, public.role, public.name).into_bytes()
}

#[cfg(all(test, feature = "keyfile"))]
mod tests {
    use super::*;

    const CHEAP: KdfCost = KdfCost { m_cost_kib: 64, t_cost: 1 };

    #[test]
    fn encrypted_key_round_trips_and_refuses_wrong_passphrase() {
        let key = SecretKey::from_seed(&[7; 32], "alice", Role::Approver);
        let sealed = key.encrypt("correct horse", CHEAP).expect("encrypt");
        let json = serde_json::to_vec(&sealed).expect("json");
        let parsed = EncryptedKey::from_json(&json).expect("parse");
        let opened = parsed.decrypt("correct horse").expect("decrypt");
        assert_eq!(opened.keyid(), key.keyid());
        assert!(matches!(parsed.decrypt("wrong"), Err(KeyError::Decrypt)));
    }

    #[test]
    fn edited_metadata_does_not_open() {
        let key = SecretKey::from_seed(&[7; 32], "alice", Role::Approver);
        let mut sealed = key.encrypt("pw", CHEAP).expect("encrypt");
        sealed.public.name = "mallory".into();
        assert!(matches!(sealed.decrypt("pw"), Err(KeyError::Decrypt)));
    }

    #[test]
    fn public_key_id_is_checked() {
        let key = SecretKey::from_seed(&[1; 32], "p", Role::Publisher);
        let mut public = key.public.clone();
        public.keyid = "ed25519:00000000000000000000000000000000".into();
        let json = serde_json::to_vec(&public).expect("json");
        assert!(matches!(PublicKey::from_json(&json), Err(KeyError::IdMismatch { .. })));
    }
}
