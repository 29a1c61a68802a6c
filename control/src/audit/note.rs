//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys, and the
//! `tlog-checkpoint` body (<https://c2sp.org/tlog-checkpoint>) carried in them.
//!
//! A note is UTF-8 text ending in a newline, a blank line, then signature lines
//! `— <key name> <base64(key hash || signature)>`; the key hash is the first 4 bytes of
//! `SHA-256(name || 0x0A || 0x01 || public key)` (0x01: Ed25519). Keys are written as
//! verifier keys `<name>+<hex key hash>+<base64(0x01 || public key)>` and signer keys
//! `PRIVATE+KEY+<name>+<hex key hash>+<base64(0x01 || seed)>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::merkle::Hash;

/// The signature algorithm byte of Ed25519 in C2SP keys.
const ED25519: u8 = 0x01;
/// The em dash that starts every signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// Largest note read.
pub const MAX_NOTE_BYTES: usize = 1 << 20;

/// Why a key or note was refused; the text says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(String),
    #[error("malformed note: {0}")]
    Malformed(String),
    /// No signature line of the expected key (name and key hash).
    #[error("the note carries no signature by key {0}")]
    NotSigned(String),
    /// A signature line of the expected key that does not verify.
    #[error("the signature by key {0} does not verify: the note was altered or forged")]
    BadSignature(String),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

/// The 4-byte key hash of an Ed25519 key named `name`.
pub fn key_hash(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ED25519]);
    hasher.update(public_key);
    let digest: Hash = hasher.finalize().into();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A public key that verifies notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
    hash: [u8; 4],
}

impl NoteVerifier {
    pub fn new(name: &str, key: VerifyingKey) -> Result<NoteVerifier, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key(format!("name `{name}` is empty or has `+` or spaces")));
        }
        Ok(NoteVerifier { name: name.into(), hash: key_hash(name, key.as_bytes()), key })
    }

    /// Parses `<name>+<hex hash>+<base64(0x01 || key)>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<NoteVerifier, NoteError> {
        let text = text.trim();
        // The base64 key may itself hold `+`.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("expected <name>+<key hash>+<key>".into()));
        };
        let bytes = B64.decode(key).map_err(|e| NoteError::Key(format!("key: {e}")))?;
        let raw: [u8; 32] = match bytes.split_first() {
            Some((&ED25519, rest)) => {
                rest.try_into().map_err(|_| NoteError::Key("an Ed25519 key is 32 bytes".into()))?
            }
            _ => return Err(NoteError::Key("not an Ed25519 key (algorithm byte 0x01)".into())),
        };
        let key = VerifyingKey::from_bytes(&raw)
            .map_err(|e| NoteError::Key(format!("not an Ed25519 point: {e}")))?;
        let verifier = NoteVerifier::new(name, key)?;
        if hash != hex::encode(verifier.hash) {
            return Err(NoteError::Key(format!(
                "key hash {hash} does not match the name and key ({})",
                hex::encode(verifier.hash)
            )));
        }
        Ok(verifier)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// `<name>+<hex hash>+<base64(0x01 || key)>`.
    pub fn to_vkey(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex::encode(self.hash), B64.encode(bytes))
    }

    /// The text of `note` when it carries a valid signature by this key.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let (text, signatures) = split_note(note)?;
        let mut found = false;
        for line in signatures {
            let (name, signature) = parse_signature_line(line)?;
            if name != self.name || signature.len() < 4 || signature[..4] != self.hash {
                continue;
            }
            found = true;
            let raw: [u8; 64] = signature[4..]
                .try_into()
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            let signature = ed25519_dalek::Signature::from_bytes(&raw);
            if self.key.verify_strict(text.as_bytes(), &signature).is_err() {
                return Err(NoteError::BadSignature(self.name.clone()));
            }
        }
        if !found {
            return Err(NoteError::NotSigned(self.to_vkey()));
        }
        Ok(text)
    }
}

/// The key names of the signature lines of `note`, for messages about foreign keys.
pub fn signer_names(note: &str) -> Vec<String> {
    let Ok((_, lines)) = split_note(note) else {
        return Vec::new();
    };
    lines.filter_map(|line| parse_signature_line(line).ok().map(|(name, _)| name.into())).collect()
}

/// Text (with its final newline) and the signature lines.
fn split_note(note: &str) -> Result<(&str, std::str::Lines<'_>), NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::Malformed(format!("longer than {MAX_NOTE_BYTES} bytes")));
    }
    if !note.ends_with('\n') {
        return Err(NoteError::Malformed("it does not end with a newline".into()));
    }
    let Some(split) = note.rfind("\n\n") else {
        return Err(NoteError::Malformed("no blank line before the signatures".into()));
    };
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    if signatures.is_empty() {
        return Err(NoteError::Malformed("no signature lines".into()));
    }
    Ok((text, signatures.lines()))
}

fn parse_signature_line(line: &str) -> Result<(&str, Vec<u8>), NoteError> {
    let rest = line.strip_prefix(SIGNATURE_PREFIX).ok_or_else(|| {
        NoteError::Malformed(format!("signature line `{line}` does not start with `— `"))
    })?;
    let (name, signature) = rest
        .split_once(' ')
        .ok_or_else(|| NoteError::Malformed(format!("signature line `{line}` has no signature")))?;
    let signature = B64
        .decode(signature)
        .map_err(|e| NoteError::Malformed(format!("signature of {name}: {e}")))?;
    Ok((name, signature))
}

/// An Ed25519 key that signs notes.
#[derive(Clone)]
pub struct NoteSigner {
    verifier: NoteVerifier,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("NoteSigner").field("verifier", &self.verifier.to_vkey()).finish()
    }
}

impl NoteSigner {
    /// A new random key named `name`.
    pub fn generate(name: &str) -> Result<NoteSigner, NoteError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| NoteError::Key(format!("randomness: {e}")))?;
        NoteSigner::from_seed(name, &seed)
    }

    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<NoteSigner, NoteError> {
        let key = SigningKey::from_bytes(seed);
        Ok(NoteSigner { verifier: NoteVerifier::new(name, key.verifying_key())?, key })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex hash>+<base64(0x01 || seed)>`.
    pub fn parse(text: &str) -> Result<NoteSigner, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::Key("a signer key starts with PRIVATE+KEY+".into()))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(hash), Some(seed)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::Key("expected PRIVATE+KEY+<name>+<hash>+<key>".into()));
        };
        let bytes = Zeroizing::new(B64.decode(seed).map_err(|_| NoteError::Key("key".into()))?);
        let seed: Zeroizing<[u8; 32]> = match bytes.split_first() {
            Some((&ED25519, rest)) => Zeroizing::new(
                rest.try_into()
                    .map_err(|_| NoteError::Key("an Ed25519 seed is 32 bytes".into()))?,
            ),
            _ => return Err(NoteError::Key("not an Ed25519 key (algorithm byte 0x01)".into())),
        };
        let signer = NoteSigner::from_seed(name, &seed)?;
        if hash != hex::encode(signer.verifier.hash) {
            return Err(NoteError::Key("the key hash does not match the name and key".into()));
        }
        Ok(signer)
    }

    /// The signer key text (secret).
    pub fn to_skey(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new(vec![ED25519]);
        bytes.extend_from_slice(self.key.as_bytes());
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.verifier.name,
            hex::encode(self.verifier.hash),
            B64.encode(bytes.as_slice())
        ))
    }

    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// The signed note of `text` (which must end with a newline and hold no blank line at its
    /// end).
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') || text.ends_with("\n\n") || text.len() > MAX_NOTE_BYTES / 2 {
            return Err(NoteError::Malformed("note text must end with exactly one newline".into()));
        }
        let signature = self.key.sign(text.as_bytes());
        let mut bytes = self.verifier.hash.to_vec();
        bytes.extend_from_slice(&signature.to_bytes());
        Ok(format!("{text}\n{SIGNATURE_PREFIX}{} {}\n", self.verifier.name, B64.encode(bytes)))
    }
}

/// A tlog checkpoint: origin, tree size, root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: `<origin>\n<size>\n<base64 root>\n`.
    pub fn to_text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Parses checkpoint text (extension lines after the root are allowed and ignored).
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |reason: &str| NoteError::Checkpoint(reason.into());
        let mut lines = text.split_terminator('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or_else(|| bad("no origin line"))?;
        let size = lines.next().ok_or_else(|| bad("no tree size line"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad("the tree size is not a decimal number"));
        }
        let size: u64 = size.parse().map_err(|_| bad("the tree size is too large"))?;
        let root = lines.next().ok_or_else(|| bad("no root hash line"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| bad("the root hash is not 32 bytes of base64"))?;
        if lines.any(str::is_empty) {
            return Err(bad("empty extension line"));
        }
        Ok(Checkpoint { origin: origin.into(), size, root })
    }

    /// The checkpoint of a signed note, after checking the signature by `verifier`.
    pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Checkpoint, NoteError> {
        Checkpoint::parse(verifier.open(note)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> NoteSigner {
        NoteSigner::from_seed("example.com/audit", &[7u8; 32]).expect("signer")
    }

    #[test]
    fn keys_round_trip_in_c2sp_form() {
        let signer = signer();
        let vkey = signer.verifier().to_vkey();
        assert!(vkey.starts_with("example.com/audit+"));
        assert_eq!(NoteVerifier::parse(&vkey).expect("vkey"), *signer.verifier());
        let reparsed = NoteSigner::parse(&signer.to_skey()).expect("skey");
        assert_eq!(reparsed.verifier(), signer.verifier());
        assert!(!format!("{signer:?}").contains("PRIVATE"));
        let mut wrong_hash = vkey.clone();
        let plus = wrong_hash.find('+').expect("plus") + 1;
        wrong_hash.replace_range(plus..plus + 8, "00000000");
        assert!(NoteVerifier::parse(&wrong_hash).is_err());
        assert!(NoteVerifier::parse("name+00000000").is_err());
        assert!(NoteVerifier::new("has space", *signer.verifier().public_key()).is_err());
    }

    /// The key hash and signature line of the Go `golang.org/x/mod/sumdb/note` test vector.
    #[test]
    fn the_go_reference_vector_verifies() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let verifier = NoteVerifier::parse(vkey).expect("Go test vector key");
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let text = verifier.open(note).expect("verifies");
        assert!(text.starts_with("If you think"));
        let signer = NoteSigner::parse(
            "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        )
        .expect("Go test vector signer key");
        assert_eq!(signer.verifier().to_vkey(), vkey);
        assert_eq!(signer.sign(text).expect("sign"), note, "byte for byte as the Go reference");
        let altered = note.replace("answer", "Answer");
        assert_eq!(verifier.open(&altered), Err(NoteError::BadSignature("PeterNeumann".into())));
    }

    #[test]
    fn checkpoints_sign_parse_and_refuse_tampering() {
        let signer = signer();
        let checkpoint =
            Checkpoint { origin: "example.com/audit".into(), size: 42, root: [9u8; 32] };
        let note = signer.sign(&checkpoint.to_text()).expect("sign");
        assert!(note.contains("\n\n\u{2014} example.com/audit "));
        assert_eq!(Checkpoint::open(&note, signer.verifier()).expect("open"), checkpoint);
        let forged = note.replace("\n42\n", "\n41\n");
        assert!(matches!(
            Checkpoint::open(&forged, signer.verifier()),
            Err(NoteError::BadSignature(_))
        ));
        let other = NoteSigner::from_seed("example.com/audit", &[8u8; 32]).expect("other");
        let foreign = other.sign(&checkpoint.to_text()).expect("sign");
        assert!(matches!(
            Checkpoint::open(&foreign, signer.verifier()),
            Err(NoteError::NotSigned(_))
        ));
        assert_eq!(signer_names(&foreign), ["example.com/audit"]);
        for bad in ["o\n01\nAAAA\n", "o\nx\n", "\n1\n", "o\n1\nAAAA\n"] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
        assert!(signer.sign("no newline").is_err());
        assert!(matches!(signer.verifier().open("text\n"), Err(NoteError::Malformed(_))));
    }
}
