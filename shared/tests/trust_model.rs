//! The trust model end to end on the library: every rejection of DESIGN §4 with its message,
//! k-of-n edge cases, trust root rotation, and single-byte tampering anywhere in a signed bundle
//! or plan.

use outpost_shared::bundle::{self, RawBundle};
use outpost_shared::dsse::{Envelope, MANIFEST_TYPE, PLAN_TYPE, Signature};
use outpost_shared::golden::{Golden, GoldenCase};
use outpost_shared::keys::SecretKey;
use outpost_shared::manifest::{Lineage, Manifest, Task};
use outpost_shared::oip::{Tensor, TensorSpec};
use outpost_shared::plan::{self, BundleRef, HealthPolicy, Plan};
use outpost_shared::profile::{FeatureSource, ProfileBuilder, TensorView};
use outpost_shared::selector::parse_tags;
use outpost_shared::trust::{self, KeyGroup, TrustRoot};
use outpost_shared::verify::Role;
use outpost_shared::{Verified, VerifyError, sha256_digest};
use proptest::prelude::*;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

fn key(seed: u8, name: &str, role: Role) -> SecretKey {
    SecretKey::from_seed(&[seed; 32], name, role)
}

struct Fleet {
    roots: Vec<SecretKey>,
    approvers: Vec<SecretKey>,
    publisher: SecretKey,
    trust: Verified<TrustRoot>,
    trust_bytes: Vec<u8>,
}

fn root_document(
    roots: &[&SecretKey],
    approvers: &[&SecretKey],
    publishers: &[&SecretKey],
    version: u64,
) -> TrustRoot {
    TrustRoot {
        v: 1,
        version,
        expires: NOW + Duration::days(365),
        root: KeyGroup { threshold: 2, keys: roots.iter().map(|k| k.public.clone()).collect() },
        approvers: KeyGroup {
            threshold: 2,
            keys: approvers.iter().map(|k| k.public.clone()).collect(),
        },
        publishers: KeyGroup {
            threshold: 1,
            keys: publishers.iter().map(|k| k.public.clone()).collect(),
        },
    }
}

fn signed(envelope: &mut Envelope, keys: &[&SecretKey]) -> Vec<u8> {
    for k in keys {
        envelope.sign(k).expect("sign");
    }
    envelope.to_vec()
}

/// Two of three root keys, two of three approvers, one publisher.
fn fleet() -> Fleet {
    let roots = vec![key(1, "r1", Role::Root), key(2, "r2", Role::Root), key(3, "r3", Role::Root)];
    let approvers = vec![
        key(11, "alice", Role::Approver),
        key(12, "bob", Role::Approver),
        key(13, "carol", Role::Approver),
    ];
    let publisher = key(21, "ci", Role::Publisher);
    let doc = root_document(
        &roots.iter().collect::<Vec<_>>(),
        &approvers.iter().collect::<Vec<_>>(),
        &[&publisher],
        1,
    );
    let trust_bytes = signed(&mut doc.to_envelope(), &[&roots[0], &roots[1]]);
    let trust = trust::verify_initial(&trust_bytes, NOW).expect("initial root verifies");
    Fleet { roots, approvers, publisher, trust, trust_bytes }
}

fn profile_json() -> Vec<u8> {
    let sources = vec![("f0".to_string(), FeatureSource::Element { tensor: "x".into(), index: 0 })];
    let mut builder = ProfileBuilder::new(sources, vec![], None, 4);
    for i in 0..20 {
        let x = [i as f32];
        builder.observe(&[TensorView { name: "x", shape: &[1, 1], data: &x }], &[]);
    }
    serde_json::to_vec(&builder.finish().expect("profile")).expect("json")
}

fn golden_json() -> Vec<u8> {
    serde_json::to_vec(&Golden {
        atol: 1e-4,
        rtol: 1e-3,
        cases: vec![GoldenCase {
            inputs: vec![Tensor::new("x", vec![1, 1], vec![1.0f32])],
            outputs: vec![Tensor::new("y", vec![1, 1], vec![2.0f32])],
        }],
    })
    .expect("json")
}

fn manifest_for(raw: &RawBundle, expires: Option<OffsetDateTime>) -> Manifest {
    Manifest {
        v: 1,
        name: "scorer".into(),
        version: "1.0.0".into(),
        created: NOW - Duration::days(1),
        expires,
        files: raw.file_entries(),
        inputs: vec![TensorSpec { name: "x".into(), datatype: "FP32".into(), shape: vec![1, 1] }],
        outputs: vec![TensorSpec { name: "y".into(), datatype: "FP32".into(), shape: vec![1, 1] }],
        task: Task::Regression,
        lineage: Lineage::default(),
    }
}

fn unsigned_raw() -> RawBundle {
    RawBundle {
        manifest: Envelope::new(MANIFEST_TYPE, b""),
        model: b"not really onnx, the verifier does not load models".repeat(3),
        profile: profile_json(),
        golden: golden_json(),
    }
}

fn bundle_with(manifest: &Manifest, mut raw: RawBundle, signers: &[&SecretKey]) -> Vec<u8> {
    raw.manifest = Envelope::new(MANIFEST_TYPE, &serde_json::to_vec(manifest).expect("json"));
    for k in signers {
        raw.manifest.sign(k).expect("sign");
    }
    raw.to_bytes()
}

fn good_bundle(f: &Fleet) -> Vec<u8> {
    let raw = unsigned_raw();
    bundle_with(&manifest_for(&raw, None), raw, &[&f.publisher])
}

fn plan_doc(bundle: &[u8], seq: u64, expires: OffsetDateTime) -> Plan {
    Plan {
        v: 1,
        rollout: "r-1".into(),
        seq,
        bundle: BundleRef {
            name: "scorer".into(),
            version: "1.0.0".into(),
            digest: sha256_digest(bundle),
            size: bundle.len() as u64,
        },
        fallback: None,
        cohort: "site=berlin".into(),
        health: HealthPolicy::default(),
        created: NOW - Duration::hours(1),
        expires,
    }
}

fn signed_plan(f: &Fleet, signers: &[&SecretKey]) -> Vec<u8> {
    let doc = plan_doc(&good_bundle(f), 7, NOW + Duration::hours(24));
    signed(&mut doc.to_envelope(), signers)
}

/// Asserts `result` failed with the rejection `code` and a message containing `needle`.
fn check<T: std::fmt::Debug>(result: Result<T, VerifyError>, code: &str, needle: &str) {
    let error = result.expect_err("must be rejected");
    assert_eq!(error.code(), code, "{error}");
    let message = error.to_string();
    assert!(message.contains(needle), "message `{message}` should contain `{needle}`");
}

#[test]
fn good_bundle_and_plan_are_accepted() {
    let f = fleet();
    let bytes = good_bundle(&f);
    let verified = bundle::verify(&bytes, &f.trust, NOW).expect("bundle accepted");
    assert_eq!(verified.manifest.id(), "scorer@1.0.0");
    assert_eq!(verified.digest, sha256_digest(&bytes));
    let plan = plan::verify(&signed_plan(&f, &[&f.approvers[0], &f.approvers[1]]), &f.trust, NOW)
        .expect("plan accepted");
    assert_eq!(
        plan.signers(),
        [f.approvers[0].keyid(), f.approvers[1].keyid()]
            .map(String::from)
            .as_slice()
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    plan.admit("dev-1", &parse_tags("site=berlin,hw=rpi4").expect("tags"), Some(6))
        .expect("admitted");
}

#[test]
fn unknown_key_is_rejected() {
    let f = fleet();
    let mallory = key(66, "mallory", Role::Publisher);
    let raw = unsigned_raw();
    let bytes = bundle_with(&manifest_for(&raw, None), raw, &[&mallory]);
    check(bundle::verify(&bytes, &f.trust, NOW), "unknown_key", mallory.keyid());
}

#[test]
fn too_few_distinct_approvers_is_rejected() {
    let f = fleet();
    let bytes = signed_plan(&f, &[&f.approvers[0]]);
    check(plan::verify(&bytes, &f.trust, NOW), "too_few_signatures", "1 valid of 2 required");
}

#[test]
fn bad_signature_is_rejected() {
    let f = fleet();
    // Replace the signed payload with another plan, keeping the signatures.
    let mut envelope =
        Envelope::from_slice(&signed_plan(&f, &[&f.approvers[0], &f.approvers[1]])).expect("parse");
    let mut other = plan_doc(&good_bundle(&f), 8, NOW + Duration::hours(24));
    other.cohort = "*".into();
    envelope.payload = other.to_envelope().payload;
    check(plan::verify(&envelope.to_vec(), &f.trust, NOW), "bad_signature", "does not verify");
}

#[test]
fn digest_mismatch_is_rejected() {
    let f = fleet();
    let mut raw = bundle::read(&good_bundle(&f)).expect("read");
    let middle = raw.model.len() / 2;
    raw.model[middle] ^= 0x20;
    check(bundle::verify(&raw.to_bytes(), &f.trust, NOW), "digest_mismatch", "model.onnx");
}

#[test]
fn size_mismatch_is_rejected() {
    let f = fleet();
    let raw = unsigned_raw();
    let mut manifest = manifest_for(&raw, None);
    manifest.files[0].size += 1;
    let bytes = bundle_with(&manifest, raw, &[&f.publisher]);
    check(bundle::verify(&bytes, &f.trust, NOW), "size_mismatch", "model.onnx");
}

#[test]
fn expired_plan_manifest_and_root_are_rejected() {
    let f = fleet();
    let doc = plan_doc(&good_bundle(&f), 7, NOW - Duration::minutes(1));
    let bytes = signed(&mut doc.to_envelope(), &[&f.approvers[0], &f.approvers[1]]);
    check(plan::verify(&bytes, &f.trust, NOW), "expired", "plan expired at");

    let raw = unsigned_raw();
    let manifest = manifest_for(&raw, Some(NOW - Duration::days(1)));
    let bytes = bundle_with(&manifest, raw, &[&f.publisher]);
    check(bundle::verify(&bytes, &f.trust, NOW), "expired", "bundle manifest expired");

    check(
        bundle::verify(&good_bundle(&f), &f.trust, NOW + Duration::days(400)),
        "expired",
        "trust root expired",
    );
}

#[test]
fn replayed_plan_is_rejected() {
    let f = fleet();
    let plan = plan::verify(&signed_plan(&f, &[&f.approvers[0], &f.approvers[2]]), &f.trust, NOW)
        .expect("plan");
    let tags = parse_tags("site=berlin").expect("tags");
    check(
        plan.admit("dev-1", &tags, Some(7)),
        "replay",
        "sequence 7 is not above the last accepted sequence 7",
    );
    check(plan.admit("dev-1", &tags, Some(9)), "replay", "last accepted sequence 9");
}

#[test]
fn device_outside_the_cohort_is_rejected() {
    let f = fleet();
    let plan = plan::verify(&signed_plan(&f, &[&f.approvers[0], &f.approvers[2]]), &f.trust, NOW)
        .expect("plan");
    let tags = parse_tags("site=paris").expect("tags");
    check(
        plan.admit("dev-9", &tags, None),
        "not_in_cohort",
        "device dev-9 is not in the plan's cohort `site=berlin`",
    );
}

#[test]
fn oversized_documents_are_rejected_before_parsing() {
    let f = fleet();
    let huge = vec![b' '; outpost_shared::dsse::MAX_ENVELOPE_BYTES + 1];
    check(plan::verify(&huge, &f.trust, NOW), "oversized", "exceeds the limit");
}

#[test]
fn malformed_documents_are_rejected() {
    let f = fleet();
    check(plan::verify(b"{not json", &f.trust, NOW), "malformed", "malformed envelope");
    check(
        bundle::verify(b"definitely not a tar file", &f.trust, NOW),
        "malformed",
        "malformed bundle",
    );
    // A signed payload that is not a plan.
    let bytes =
        signed(&mut Envelope::new(PLAN_TYPE, b"{\"v\":1}"), &[&f.approvers[0], &f.approvers[1]]);
    check(plan::verify(&bytes, &f.trust, NOW), "malformed", "malformed plan");
    // A manifest presented as a plan.
    let raw = bundle::read(&good_bundle(&f)).expect("read");
    check(plan::verify(&raw.manifest.to_vec(), &f.trust, NOW), "wrong_payload_type", PLAN_TYPE);
}

#[test]
fn k_of_n_edge_cases() {
    let f = fleet();
    let [alice, bob, _] = [&f.approvers[0], &f.approvers[1], &f.approvers[2]];
    // k accepted, k - 1 rejected: covered above; here the counting rules.
    // The same approver twice counts once.
    let mut envelope = Envelope::from_slice(&signed_plan(&f, &[alice])).expect("parse");
    let duplicate = envelope.signatures[0].clone();
    envelope.signatures.push(duplicate);
    check(plan::verify(&envelope.to_vec(), &f.trust, NOW), "too_few_signatures", "(duplicate)");
    // An unknown key is not counted.
    let stranger = key(77, "stranger", Role::Approver);
    let bytes = signed_plan(&f, &[alice, &stranger]);
    check(plan::verify(&bytes, &f.trust, NOW), "too_few_signatures", "unknown key");
    // A publisher key cannot approve.
    let bytes = signed_plan(&f, &[alice, &f.publisher]);
    check(plan::verify(&bytes, &f.trust, NOW), "too_few_signatures", f.publisher.keyid());
    check(
        plan::verify(&bytes, &f.trust, NOW),
        "too_few_signatures",
        "a publisher key, not an approver key",
    );
    // A root key cannot approve either.
    let bytes = signed_plan(&f, &[bob, &f.roots[0]]);
    check(plan::verify(&bytes, &f.trust, NOW), "too_few_signatures", "1 valid of 2");
    // An approver key cannot publish.
    let raw = unsigned_raw();
    let bytes = bundle_with(&manifest_for(&raw, None), raw, &[alice]);
    check(bundle::verify(&bytes, &f.trust, NOW), "unknown_key", "is not a publisher key");
    // All three approvers: accepted.
    plan::verify(&signed_plan(&f, &[alice, bob, &f.approvers[2]]), &f.trust, NOW)
        .expect("3 of 3 accepted");
    // A signature whose bytes are not a signature, by a known key, is a bad signature.
    let mut envelope = Envelope::from_slice(&signed_plan(&f, &[alice, bob])).expect("parse");
    envelope
        .signatures
        .push(Signature { keyid: f.approvers[2].keyid().into(), sig: "AAAA".into() });
    check(plan::verify(&envelope.to_vec(), &f.trust, NOW), "bad_signature", f.approvers[2].keyid());
}

#[test]
fn trust_root_rotation_needs_a_threshold_of_old_and_new_keys() {
    let f = fleet();
    let new_roots = [key(4, "r4", Role::Root), key(5, "r5", Role::Root)];
    let new_publisher = key(22, "ci-2", Role::Publisher);
    let approvers: Vec<&SecretKey> = f.approvers.iter().collect();
    let next = root_document(
        &[&new_roots[0], &new_roots[1]],
        &approvers,
        &[&f.publisher, &new_publisher],
        2,
    );

    let only_old = signed(&mut next.to_envelope(), &[&f.roots[0], &f.roots[1]]);
    check(
        trust::verify_rotation(&f.trust, &only_old, NOW),
        "rotation",
        "not signed by its own root keys",
    );
    let only_new = signed(&mut next.to_envelope(), &[&new_roots[0], &new_roots[1]]);
    check(
        trust::verify_rotation(&f.trust, &only_new, NOW),
        "rotation",
        "not signed by the current root keys",
    );
    let one_old = signed(&mut next.to_envelope(), &[&f.roots[0], &new_roots[0], &new_roots[1]]);
    check(trust::verify_rotation(&f.trust, &one_old, NOW), "rotation", "current root keys");

    let both =
        signed(&mut next.to_envelope(), &[&f.roots[0], &f.roots[2], &new_roots[0], &new_roots[1]]);
    let rotated = trust::verify_rotation(&f.trust, &both, NOW).expect("rotation accepted");
    assert_eq!(rotated.version, 2);

    // Not newer: refused even with every signature.
    let mut same_version = next.clone();
    same_version.version = 1;
    let bytes = signed(
        &mut same_version.to_envelope(),
        &[&f.roots[0], &f.roots[1], &new_roots[0], &new_roots[1]],
    );
    check(
        trust::verify_rotation(&f.trust, &bytes, NOW),
        "rotation",
        "not above the current version 1",
    );

    // The new publisher is trusted under the new root only.
    let raw = unsigned_raw();
    let bytes = bundle_with(&manifest_for(&raw, None), raw, &[&new_publisher]);
    check(bundle::verify(&bytes, &f.trust, NOW), "unknown_key", new_publisher.keyid());
    bundle::verify(&bytes, &rotated, NOW).expect("accepted under the rotated root");

    // A root signed by fewer than its own threshold is not a valid initial root.
    let lone = signed(&mut next.to_envelope(), &[&new_roots[0]]);
    check(trust::verify_initial(&lone, NOW), "too_few_signatures", "root signatures");
    // Keys listed twice or in the wrong group make a malformed root.
    let mut twice = next.clone();
    twice.publishers.keys.push(new_roots[0].public.clone());
    check(
        trust::verify_initial(
            &signed(&mut twice.to_envelope(), &new_roots.iter().collect::<Vec<_>>()),
            NOW,
        ),
        "malformed",
        "listed as a publisher key",
    );
    assert!(trust::verify_initial(&f.trust_bytes, NOW).is_ok());
}

/// Every single-byte change anywhere in a signed bundle or plan is refused.
#[test]
fn every_single_byte_flip_is_rejected() {
    let f = fleet();
    let bundle_bytes = good_bundle(&f);
    let plan_bytes = signed_plan(&f, &[&f.approvers[0], &f.approvers[1]]);
    for i in 0..bundle_bytes.len() {
        let mut copy = bundle_bytes.clone();
        copy[i] ^= 0x01;
        assert!(
            bundle::verify(&copy, &f.trust, NOW).is_err(),
            "bundle byte {i} flipped was accepted"
        );
    }
    for i in 0..plan_bytes.len() {
        let mut copy = plan_bytes.clone();
        copy[i] ^= 0x01;
        assert!(plan::verify(&copy, &f.trust, NOW).is_err(), "plan byte {i} flipped was accepted");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_byte_change_in_a_signed_bundle_is_rejected(position in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let f = fleet();
        let mut bytes = good_bundle(&f);
        let i = position.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        prop_assert!(bundle::verify(&bytes, &f.trust, NOW).is_err());
    }

    #[test]
    fn any_byte_change_in_a_signed_plan_is_rejected(position in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let f = fleet();
        let mut bytes = signed_plan(&f, &[&f.approvers[0], &f.approvers[1]]);
        let i = position.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        prop_assert!(plan::verify(&bytes, &f.trust, NOW).is_err());
    }

    #[test]
    fn truncation_and_appending_are_rejected(cut in any::<prop::sample::Index>(), extra in prop::collection::vec(any::<u8>(), 1..64)) {
        let f = fleet();
        let bytes = good_bundle(&f);
        let at = cut.index(bytes.len());
        prop_assert!(bundle::verify(&bytes[..at], &f.trust, NOW).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(bundle::verify(&longer, &f.trust, NOW).is_err());
    }
}
