//! Admission of an `assign` message (DESIGN §4), sans IO: the signed plan is verified against
//! the installed trust root first (known approver keys, k distinct valid signatures, well
//! formed, not expired), then admitted for this device (cohort, sequence above the last
//! accepted, a size it may download, a fallback when asked to revert).
//!
//! The answer is a [`Decision`]. A refusal carries the [`VerifyError`] (whose `code()` goes
//! into the event) and, for the report only, what the message *claimed* (rollout, sequence,
//! bundle digest) read without trusting it; nothing claimed is ever acted on.

use std::collections::BTreeMap;

use outpost_shared::bundle::MAX_BUNDLE_BYTES;
use outpost_shared::plan::{self, Plan};
use outpost_shared::trust::TrustRoot;
use outpost_shared::wire::{AdmissionAction, Assign};
use outpost_shared::{Verified, VerifyError};
use time::OffsetDateTime;

use crate::store::{AgentState, InstallAction};

/// What to do with an assignment.
#[derive(Debug)]
pub enum Decision {
    /// A new plan: accept it (its sequence becomes the last accepted) and install.
    Admit {
        plan: Verified<Plan>,
        action: InstallAction,
    },
    /// The plan accepted last, delivered again (a retained message after a reconnect or a
    /// restart): resume its install if unfinished, otherwise nothing.
    Again {
        plan: Verified<Plan>,
        action: InstallAction,
    },
    Refuse(Refusal),
}

/// A refused assignment, with what it claimed (unverified, for the report only).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub error: VerifyError,
    /// The admission's rollout id (validated as an id by the wire layer).
    pub rollout: String,
    pub claimed_seq: Option<u64>,
    pub claimed_digest: Option<String>,
}

/// The device's view needed to admit a plan.
#[derive(Debug, Clone, Copy)]
pub struct DeviceView<'a> {
    pub device: &'a str,
    pub tags: &'a BTreeMap<String, String>,
    pub state: &'a AgentState,
}

/// Decides what to do with `assign` at time `now`.
pub fn decide(
    assign: &Assign,
    trust: &Verified<TrustRoot>,
    device: DeviceView<'_>,
    now: OffsetDateTime,
) -> Decision {
    let claimed = plan::parse_unverified(&assign.plan).ok();
    let refuse = |error: VerifyError| {
        Decision::Refuse(Refusal {
            error,
            rollout: assign.admission.rollout_id.clone(),
            claimed_seq: claimed.as_ref().map(|p| p.seq),
            claimed_digest: claimed.as_ref().map(|p| p.bundle.digest.clone()),
        })
    };
    let plan = match plan::verify_envelope(&assign.plan, trust, now) {
        Ok(plan) => plan,
        Err(error) => return refuse(error),
    };
    let action = match assign.admission.action {
        AdmissionAction::Install => InstallAction::Install,
        AdmissionAction::Revert => InstallAction::Revert,
    };
    let state = device.state;
    if state.last_plan_seq == Some(plan.seq)
        && let Some(install) = &state.install
        && install.plan_seq == plan.seq
        && install.rollout == plan.rollout
    {
        if install.action == action {
            return Decision::Again { plan, action };
        }
        if action == InstallAction::Revert {
            // An operator's revert of the plan accepted last: its fallback, by the same
            // signatures. Checked like a new plan except for the sequence.
            return match admit_checks(&plan, action, device, None) {
                Ok(()) => Decision::Admit { plan, action },
                Err(error) => refuse(error),
            };
        }
    }
    match admit_checks(&plan, action, device, state.last_plan_seq) {
        Ok(()) => Decision::Admit { plan, action },
        Err(error) => refuse(error),
    }
}

fn admit_checks(
    plan: &Verified<Plan>,
    action: InstallAction,
    device: DeviceView<'_>,
    last_accepted: Option<u64>,
) -> Result<(), VerifyError> {
    plan.admit(device.device, device.tags, last_accepted)?;
    let target = match action {
        InstallAction::Install => &plan.bundle,
        InstallAction::Revert => plan.fallback.as_ref().ok_or_else(|| VerifyError::Malformed {
            what: "plan",
            reason: "asked to revert, but the plan names no fallback bundle".into(),
        })?,
    };
    if target.size > MAX_BUNDLE_BYTES {
        return Err(VerifyError::Oversized {
            what: format!("bundle {}@{}", target.name, target.version),
            limit: MAX_BUNDLE_BYTES,
            actual: target.size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use outpost_shared::dsse::Envelope;
    use outpost_shared::keys::SecretKey;
    use outpost_shared::plan::{BundleRef, HealthPolicy};
    use outpost_shared::trust::{KeyGroup, TrustRoot};
    use outpost_shared::verify::Role;
    use outpost_shared::wire::{Admission, ProtocolVersion};
    use time::Duration;

    use super::*;
    use crate::store::{InstallPhase, InstallRecord, SlotRecord};

    struct Keys {
        trust: Verified<TrustRoot>,
        approvers: Vec<SecretKey>,
        stranger: SecretKey,
    }

    fn key(label: &str, role: Role) -> SecretKey {
        let mut seed = [0u8; 32];
        for (slot, byte) in seed.iter_mut().zip(label.bytes()) {
            *slot = byte;
        }
        SecretKey::from_seed(&seed, label, role)
    }

    fn keys() -> Keys {
        let root = key("root", Role::Root);
        let approvers: Vec<SecretKey> =
            ["alice", "bob", "carol"].iter().map(|n| key(n, Role::Approver)).collect();
        let publisher = key("ci", Role::Publisher);
        let document = TrustRoot {
            v: 1,
            version: 1,
            expires: OffsetDateTime::now_utc() + Duration::days(365),
            root: KeyGroup { threshold: 1, keys: vec![root.public.clone()] },
            approvers: KeyGroup {
                threshold: 2,
                keys: approvers.iter().map(|k| k.public.clone()).collect(),
            },
            publishers: KeyGroup { threshold: 1, keys: vec![publisher.public.clone()] },
        };
        let mut envelope = document.to_envelope();
        envelope.sign(&root).expect("sign root");
        let trust =
            outpost_shared::trust::verify_initial(&envelope.to_vec(), OffsetDateTime::now_utc())
                .expect("trust root");
        Keys { trust, approvers, stranger: key("mallory", Role::Approver) }
    }

    fn bundle(name: &str) -> BundleRef {
        BundleRef {
            name: name.into(),
            version: "1".into(),
            digest: outpost_shared::sha256_digest(name.as_bytes()),
            size: 1000,
        }
    }

    fn plan(seq: u64) -> Plan {
        let now = OffsetDateTime::now_utc();
        Plan {
            v: 1,
            rollout: "r1".into(),
            seq,
            bundle: bundle("new"),
            fallback: Some(bundle("old")),
            cohort: "site=berlin".into(),
            health: HealthPolicy::default(),
            created: now,
            expires: now + Duration::hours(1),
        }
    }

    fn assign(plan: &Plan, signers: &[&SecretKey], action: AdmissionAction) -> Assign {
        let mut envelope: Envelope = plan.to_envelope();
        for key in signers {
            envelope.sign(key).expect("sign plan");
        }
        Assign {
            v: ProtocolVersion,
            plan: envelope,
            admission: Admission {
                rollout_id: plan.rollout.clone(),
                wave: 0,
                admitted_at_ms: 0,
                action,
            },
        }
    }

    fn tags(site: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("site".to_string(), site.to_string())])
    }

    /// The refusal code, or `admit` / `again`.
    fn check(assign: &Assign, site: &str, state: &AgentState, keys: &Keys) -> String {
        let tags = tags(site);
        let view = DeviceView { device: "dev-1", tags: &tags, state };
        match decide(assign, &keys.trust, view, OffsetDateTime::now_utc()) {
            Decision::Admit { .. } => "admit".into(),
            Decision::Again { .. } => "again".into(),
            Decision::Refuse(refusal) => refusal.error.code().into(),
        }
    }

    fn accepted(seq: u64, action: InstallAction) -> AgentState {
        AgentState {
            last_plan_seq: Some(seq),
            install: Some(InstallRecord {
                rollout: "r1".into(),
                plan_seq: seq,
                action,
                bundle: SlotRecord {
                    name: "new".into(),
                    version: "1".into(),
                    digest: outpost_shared::sha256_digest(b"new"),
                    size: 1000,
                },
                slot: outpost_shared::wire::SlotName::B,
                phase: InstallPhase::Committed,
                reason: None,
            }),
            ..AgentState::default()
        }
    }

    #[test]
    fn every_refusal_of_design_section_4_has_its_code() {
        let keys = keys();
        let [alice, bob, _carol] = [&keys.approvers[0], &keys.approvers[1], &keys.approvers[2]];
        let fresh = AgentState::default();
        let install = AdmissionAction::Install;
        assert_eq!(
            check(&assign(&plan(5), &[alice, bob], install), "berlin", &fresh, &keys),
            "admit"
        );
        assert_eq!(
            check(&assign(&plan(5), &[alice], install), "berlin", &fresh, &keys),
            "too_few_signatures"
        );
        assert_eq!(
            check(&assign(&plan(5), &[alice, alice], install), "berlin", &fresh, &keys),
            "too_few_signatures",
            "the same approver twice counts once"
        );
        assert_eq!(
            check(&assign(&plan(5), &[&keys.stranger], install), "berlin", &fresh, &keys),
            "unknown_key"
        );
        let mut expired = plan(5);
        expired.expires = OffsetDateTime::now_utc() - Duration::minutes(1);
        expired.created = expired.expires - Duration::hours(1);
        assert_eq!(
            check(&assign(&expired, &[alice, bob], install), "berlin", &fresh, &keys),
            "expired"
        );
        assert_eq!(
            check(&assign(&plan(5), &[alice, bob], install), "paris", &fresh, &keys),
            "not_in_cohort"
        );
        let mut huge = plan(5);
        huge.bundle.size = MAX_BUNDLE_BYTES + 1;
        assert_eq!(
            check(&assign(&huge, &[alice, bob], install), "berlin", &fresh, &keys),
            "oversized"
        );
        // A flipped byte in the signed payload: the signatures no longer verify.
        let mut tampered = assign(&plan(5), &[alice, bob], install);
        let mut payload = tampered.plan.payload_bytes().expect("payload");
        let at = payload.len() / 2;
        payload[at] ^= 0x01;
        tampered.plan = tampered_envelope(&tampered.plan, &payload);
        let code = check(&tampered, "berlin", &fresh, &keys);
        assert!(code == "bad_signature" || code == "too_few_signatures", "{code}");
    }

    /// `original`'s signatures over another payload.
    fn tampered_envelope(original: &Envelope, payload: &[u8]) -> Envelope {
        let mut envelope = Envelope::new(&original.payload_type, payload);
        envelope.signatures = original.signatures.clone();
        envelope
    }

    #[test]
    fn sequence_numbers_protect_against_replay_and_allow_redelivery_and_revert() {
        let keys = keys();
        let signers = [&keys.approvers[0], &keys.approvers[2]];
        let state = accepted(5, InstallAction::Install);
        let install = AdmissionAction::Install;
        assert_eq!(check(&assign(&plan(4), &signers, install), "berlin", &state, &keys), "replay");
        assert_eq!(check(&assign(&plan(5), &signers, install), "berlin", &state, &keys), "again");
        assert_eq!(check(&assign(&plan(6), &signers, install), "berlin", &state, &keys), "admit");
        let revert = AdmissionAction::Revert;
        assert_eq!(check(&assign(&plan(5), &signers, revert), "berlin", &state, &keys), "admit");
        let reverted = accepted(5, InstallAction::Revert);
        assert_eq!(check(&assign(&plan(5), &signers, revert), "berlin", &reverted, &keys), "again");
        assert_eq!(
            check(&assign(&plan(5), &signers, install), "berlin", &reverted, &keys),
            "replay",
            "a reverted plan is not installed again"
        );
        let mut no_fallback = plan(7);
        no_fallback.fallback = None;
        assert_eq!(
            check(&assign(&no_fallback, &signers, revert), "berlin", &state, &keys),
            "malformed"
        );
    }
}
