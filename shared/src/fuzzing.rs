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

/// Seed inputs per fuzz target: valid signed documents built from the fixture keys, so the
/// fuzzer starts from inputs that reach deep into verification. The replay test checks that the
/// valid seeds verify, which keeps them meaningful.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use crate::bundle::RawBundle;
    use crate::dsse::{Envelope, MANIFEST_TYPE};
    use crate::golden::{Golden, GoldenCase};
    use crate::manifest::{Lineage, Manifest, Task};
    use crate::oip::{Tensor, TensorSpec};
    use crate::plan::{BundleRef, HealthPolicy, Plan};
    use crate::profile::{FeatureSource, ProfileBuilder, TensorView};

    let trust = fixture_trust_root();
    let root = SecretKey::from_seed(&[1; 32], "root", Role::Root);
    let a1 = SecretKey::from_seed(&[2; 32], "a1", Role::Approver);
    let a2 = SecretKey::from_seed(&[3; 32], "a2", Role::Approver);
    let publisher = SecretKey::from_seed(&[4; 32], "pub", Role::Publisher);

    let mut root_envelope = (*trust).to_envelope();
    let _ = root_envelope.sign(&root);

    let sources = vec![("f0".to_string(), FeatureSource::Element { tensor: "x".into(), index: 0 })];
    let mut builder = ProfileBuilder::new(sources, vec![], None, 4);
    for i in 0..8 {
        let x = [i as f32];
        builder.observe(&[TensorView { name: "x", shape: &[1, 1], data: &x }], &[]);
    }
    let profile =
        builder.finish().map(|p| serde_json::to_vec(&p).unwrap_or_default()).unwrap_or_default();
    let golden = serde_json::to_vec(&Golden {
        atol: 1e-4,
        rtol: 1e-3,
        cases: vec![GoldenCase {
            inputs: vec![Tensor::new("x", vec![1, 1], vec![1.0f32])],
            outputs: vec![Tensor::new("y", vec![1, 1], vec![2.0f32])],
        }],
    })
    .unwrap_or_default();
    let mut raw = RawBundle {
        manifest: Envelope::new(MANIFEST_TYPE, b""),
        model: b"model bytes".to_vec(),
        profile: profile.clone(),
        golden: golden.clone(),
    };
    let manifest = Manifest {
        v: 1,
        name: "seed".into(),
        version: "1".into(),
        created: time::macros::datetime!(2026-01-01 0:00 UTC),
        expires: None,
        files: raw.file_entries(),
        inputs: vec![TensorSpec { name: "x".into(), datatype: "FP32".into(), shape: vec![1, 1] }],
        outputs: vec![TensorSpec { name: "y".into(), datatype: "FP32".into(), shape: vec![1, 1] }],
        task: Task::Regression,
        lineage: Lineage::default(),
    };
    let manifest_json = serde_json::to_vec(&manifest).unwrap_or_default();
    raw.manifest = Envelope::new(MANIFEST_TYPE, &manifest_json);
    let _ = raw.manifest.sign(&publisher);
    let bundle = raw.to_bytes();

    let plan = Plan {
        v: 1,
        rollout: "seed".into(),
        seq: 1,
        bundle: BundleRef {
            name: "seed".into(),
            version: "1".into(),
            digest: crate::sha256_digest(&bundle),
            size: bundle.len() as u64,
        },
        fallback: None,
        cohort: "*".into(),
        health: HealthPolicy::default(),
        created: time::macros::datetime!(2026-01-01 0:00 UTC),
        expires: time::macros::datetime!(2099-01-01 0:00 UTC),
    };
    let plan_json = serde_json::to_vec(&plan).unwrap_or_default();
    let mut plan_envelope = plan.to_envelope();
    let _ = plan_envelope.sign(&a1);
    let _ = plan_envelope.sign(&a2);

    vec![
        ("envelope", "trust-root", root_envelope.to_vec()),
        ("envelope", "plan", plan_envelope.to_vec()),
        ("bundle", "bundle", bundle),
        ("documents", "plan-envelope", plan_envelope.to_vec()),
        ("documents", "manifest", manifest_json),
        ("documents", "plan", plan_json),
        ("documents", "profile", profile),
        ("documents", "golden", golden),
    ]
}
