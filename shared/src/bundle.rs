//! Model bundles: a tar file holding `manifest.dsse.json`, `model.onnx`, `profile.json` and
//! `golden.json`, in that order.
//!
//! The container is canonical: ustar headers with mode 0644, owner 0, mtime 0, no other entries,
//! two zero blocks at the end. [`read`] rebuilds the container from the parsed entries and refuses
//! any difference, so every byte of a bundle is either covered by the manifest's digests and
//! signature or fixed by the format: a change anywhere is refused.
//!
//! [`verify`] is the only way to obtain a [`Verified<Bundle>`].

use time::OffsetDateTime;

use crate::dsse::{Envelope, MANIFEST_TYPE};
use crate::golden::Golden;
use crate::manifest::Manifest;
use crate::profile::Profile;
use crate::sha256_digest;
use crate::trust::{TrustRoot, rfc3339};
use crate::verify::{Role, Verified, VerifyError};

pub const MANIFEST_FILE: &str = "manifest.dsse.json";
pub const MODEL_FILE: &str = "model.onnx";
pub const PROFILE_FILE: &str = "profile.json";
pub const GOLDEN_FILE: &str = "golden.json";
/// Entry order in the container.
pub const FILES: [&str; 4] = [MANIFEST_FILE, MODEL_FILE, PROFILE_FILE, GOLDEN_FILE];

/// Largest bundle accepted.
pub const MAX_BUNDLE_BYTES: u64 = 512 * 1024 * 1024;

/// The entries of a bundle container, not yet verified.
#[derive(Debug, Clone, PartialEq)]
pub struct RawBundle {
    pub manifest: Envelope,
    pub model: Vec<u8>,
    pub profile: Vec<u8>,
    pub golden: Vec<u8>,
}

/// A bundle whose signature, digests and documents were checked; obtained from [`verify`].
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub model: Vec<u8>,
    pub profile: Profile,
    pub golden: Golden,
    /// `sha256:` digest of the whole bundle file, the name plans use for it.
    pub digest: String,
    pub size: u64,
}

impl RawBundle {
    /// The canonical container bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let manifest = self.manifest.to_vec();
        let contents: [&[u8]; 4] = [&manifest, &self.model, &self.profile, &self.golden];
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in FILES.iter().zip(contents) {
            let mut header = tar::Header::new_ustar();
            // Paths are short constants and sizes fit: these cannot fail.
            let _ = header.set_path(name);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            let _ = builder.append(&header, data);
        }
        builder.into_inner().unwrap_or_default()
    }

    /// Digest and size entries of the manifest for this bundle's files.
    pub fn file_entries(&self) -> Vec<crate::manifest::FileEntry> {
        [(MODEL_FILE, &self.model), (PROFILE_FILE, &self.profile), (GOLDEN_FILE, &self.golden)]
            .into_iter()
            .map(|(path, data)| crate::manifest::FileEntry {
                path: path.into(),
                sha256: sha256_digest(data),
                size: data.len() as u64,
            })
            .collect()
    }

    /// The manifest, read without checking its signature (for inspection and signing).
    pub fn manifest_unverified(&self) -> Result<Manifest, VerifyError> {
        parse_manifest(&self.manifest.payload_bytes()?)
    }
}

fn parse_manifest(payload: &[u8]) -> Result<Manifest, VerifyError> {
    let manifest: Manifest =
        serde_json::from_slice(payload).map_err(|e| VerifyError::malformed("manifest", e))?;
    manifest.validate()?;
    Ok(manifest)
}

/// Parses a bundle container, refusing anything that is not exactly the canonical form.
pub fn read(bytes: &[u8]) -> Result<RawBundle, VerifyError> {
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(VerifyError::Oversized {
            what: "bundle".into(),
            limit: MAX_BUNDLE_BYTES,
            actual: bytes.len() as u64,
        });
    }
    let mut archive = tar::Archive::new(bytes);
    let entries = archive.entries().map_err(|e| VerifyError::malformed("bundle", e))?;
    let mut contents: Vec<Vec<u8>> = Vec::with_capacity(4);
    for entry in entries {
        let mut entry = entry.map_err(|e| VerifyError::malformed("bundle", e))?;
        let index = contents.len();
        let path = entry.path_bytes().into_owned();
        let Some(expected) = FILES.get(index) else {
            return Err(VerifyError::malformed(
                "bundle",
                format!("unexpected extra entry {:?}", String::from_utf8_lossy(&path)),
            ));
        };
        if path != expected.as_bytes() {
            return Err(VerifyError::malformed(
                "bundle",
                format!(
                    "entry {index} is {:?}, expected {expected}",
                    String::from_utf8_lossy(&path)
                ),
            ));
        }
        let size = entry.header().size().map_err(|e| VerifyError::malformed("bundle", e))?;
        if size > bytes.len() as u64 {
            return Err(VerifyError::malformed(
                "bundle",
                format!("entry {expected} claims {size} bytes"),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut entry, &mut data)
            .map_err(|e| VerifyError::malformed("bundle", format!("reading {expected}: {e}")))?;
        contents.push(data);
    }
    if contents.len() != FILES.len() {
        return Err(VerifyError::malformed(
            "bundle",
            format!("missing {}", FILES[contents.len()..].join(", ")),
        ));
    }
    let golden = contents.pop().unwrap_or_default();
    let profile = contents.pop().unwrap_or_default();
    let model = contents.pop().unwrap_or_default();
    let manifest_bytes = contents.pop().unwrap_or_default();
    let manifest = Envelope::from_slice(&manifest_bytes)?;
    let raw = RawBundle { manifest, model, profile, golden };
    if raw.to_bytes() != bytes {
        return Err(VerifyError::malformed(
            "bundle",
            "container is not in canonical form (headers, padding or trailer were altered)",
        ));
    }
    Ok(raw)
}

/// Verifies a bundle against the trust root at time `now`: canonical container, trust root not
/// expired, manifest signed by enough publisher keys, manifest not expired, every file's size
/// and digest as the manifest states, profile and golden set well formed.
pub fn verify(
    bytes: &[u8],
    trust: &Verified<TrustRoot>,
    now: OffsetDateTime,
) -> Result<Verified<Bundle>, VerifyError> {
    let raw = read(bytes)?;
    trust.check_not_expired(now)?;
    let (payload, signers) = raw.manifest.verify(&trust.policy(Role::Publisher, MANIFEST_TYPE))?;
    let manifest = parse_manifest(&payload)?;
    if let Some(expires) = manifest.expires
        && now >= expires
    {
        return Err(VerifyError::Expired { what: "bundle manifest", expired_at: rfc3339(expires) });
    }
    let files =
        [(MODEL_FILE, &raw.model), (PROFILE_FILE, &raw.profile), (GOLDEN_FILE, &raw.golden)];
    if manifest.files.len() != files.len() {
        return Err(VerifyError::malformed(
            "manifest",
            "must list exactly model.onnx, profile.json, golden.json",
        ));
    }
    for (path, data) in files {
        let Some(entry) = manifest.file(path) else {
            return Err(VerifyError::malformed("manifest", format!("does not list {path}")));
        };
        if entry.size != data.len() as u64 {
            return Err(VerifyError::SizeMismatch {
                what: path.into(),
                expected: entry.size,
                actual: data.len() as u64,
            });
        }
        let actual = sha256_digest(data);
        if entry.sha256 != actual {
            return Err(VerifyError::DigestMismatch {
                what: path.into(),
                expected: entry.sha256.clone(),
                actual,
            });
        }
    }
    let profile: Profile =
        serde_json::from_slice(&raw.profile).map_err(|e| VerifyError::malformed("profile", e))?;
    profile.validate().map_err(|e| VerifyError::Malformed { what: "profile", reason: e })?;
    let golden: Golden =
        serde_json::from_slice(&raw.golden).map_err(|e| VerifyError::malformed("golden set", e))?;
    golden.validate().map_err(|e| VerifyError::Malformed { what: "golden set", reason: e })?;
    Ok(Verified::new(
        Bundle {
            manifest,
            model: raw.model,
            profile,
            golden,
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
        },
        signers,
    ))
}
