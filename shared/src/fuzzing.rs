//! Entry points shared by the cargo-fuzz targets (`shared/fuzz/`) and the corpus replay test:
//! each feeds arbitrary bytes to a parser or verifier that must never panic.

use time::OffsetDateTime;

use crate::keys::SecretKey;
use crate::trust::{KeyGroup, TrustRoot};
use crate::verify::{Role, Verified};

/// A fixed trust root for fuzzing: one root, two approvers (k = 2), one publisher, from
/// constant seeds, valid until 2100.
pub fn fixture_trust_root() -> Verified<TrustRoot> {
    let root = SecretKey::from_seed(&[1; 32], "root", Role::Root);
    let a1 = SecretKey::from_seed(&[2; 32], "a1", Role::Approver);
    let a2 = SecretKey::from_seed(&[3; 32], "a2", Role::Approver);
    let publisher = SecretKey::from_seed(&[4; 32], "pub", Role::Publisher);
    Verified::new(
        TrustRoot {
            v: 1,
            version: 1,
            expires: time::macros::datetime!(2100-01-01 0:00 UTC),
            root: KeyGroup { threshold: 1, keys: vec![root.public] },
            approvers: KeyGroup { threshold: 2, keys: vec![a1.public, a2.public] },
            publishers: KeyGroup { threshold: 1, keys: vec![publisher.public] },
        },
        vec![],
    )
}

fn now() -> OffsetDateTime {
    time::macros::datetime!(2026-06-01 0:00 UTC)
}

/// DSSE envelope parsing and trust root bootstrap.
pub fn envelope(data: &[u8]) {
    let _ = crate::dsse::Envelope::from_slice(data);
    let _ = crate::trust::verify_initial(data, now());
}

/// Bundle container parsing and full verification.
pub fn bundle(data: &[u8]) {
    let trust = fixture_trust_root();
    if let Ok(raw) = crate::bundle::read(data) {
        let _ = raw.manifest_unverified();
    }
    let _ = crate::bundle::verify(data, &trust, now());
}

/// Manifest, plan, profile and golden documents from raw JSON, and signed plans.
pub fn documents(data: &[u8]) {
    let trust = fixture_trust_root();
    let _ = serde_json::from_slice::<crate::manifest::Manifest>(data).map(|m| m.validate());
    let _ = serde_json::from_slice::<crate::plan::Plan>(data).map(|p| p.validate());
    let _ = serde_json::from_slice::<crate::profile::Profile>(data).map(|p| p.validate());
    let _ = serde_json::from_slice::<crate::golden::Golden>(data).map(|g| g.validate());
    if let Ok(plan) = crate::plan::verify(data, &trust, now()) {
        let _ = plan.admit("dev-1", &Default::default(), Some(0));
    }
}

/// Every target in one, for corpus replay.
pub fn all(data: &[u8]) {
    envelope(data);
    bundle(data);
    documents(data);
}
