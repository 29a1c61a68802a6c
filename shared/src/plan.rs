//! Rollout plans: which bundle (by digest) devices of a cohort should run, the fallback, the
//! health policy, a fleet-wide monotonically increasing sequence number and an expiry. Signed by
//! at least the trust root's threshold of distinct approver keys (k of n).
//!
//! [`verify`] checks signatures and expiry and yields a [`Verified<Plan>`]; [`Plan::admit`] adds
//! the device-side checks (cohort membership, replay). A control server can choose *when* a
//! device sees a plan, never *what* it says.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::dsse::{Envelope, PLAN_TYPE};
use crate::selector::{Selector, format_tags};
use crate::trust::{TrustRoot, rfc3339};
use crate::verify::{Role, Verified, VerifyError};

/// The plan document (the envelope's payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub v: u32,
    /// Rollout id this plan belongs to.
    pub rollout: String,
    /// Fleet-wide sequence number; a device accepts only plans above the last it accepted.
    pub seq: u64,
    pub bundle: BundleRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<BundleRef>,
    /// Device tag selector ([`Selector`] syntax).
    pub cohort: String,
    pub health: HealthPolicy,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}

/// A bundle named by the digest and size of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    pub name: String,
    pub version: String,
    /// `sha256:` of the whole bundle file.
    pub digest: String,
    pub size: u64,
}

/// How a device judges a newly activated model before committing to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthPolicy {
    /// How long to watch after activation before committing.
    pub watch_seconds: u64,
    /// Requests needed before the watch can judge; fewer at the end of the watch commits.
    pub min_requests: u64,
    /// Largest tolerated share of failed inferences.
    pub max_error_rate: f64,
    /// Largest tolerated p95 latency relative to the previous model's.
    pub max_p95_latency_ratio: f64,
    /// Largest tolerated output-distribution shift (PSI against the baseline), if judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_psi: Option<f64>,
    /// Optional shadow phase before activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowPolicy>,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            watch_seconds: 300,
            min_requests: 20,
            max_error_rate: 0.05,
            max_p95_latency_ratio: 2.0,
            max_output_psi: None,
            shadow: None,
        }
    }
}

/// The candidate runs beside the active model for this many requests or seconds, whichever
/// comes first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowPolicy {
    pub requests: u64,
    pub seconds: u64,
    /// Tolerance for regressors' agreement (absolute difference of outputs).
    pub tolerance: f64,
}

impl Plan {
    pub fn validate(&self) -> Result<(), VerifyError> {
        let bad = |reason: String| VerifyError::Malformed { what: "plan", reason };
        if self.v != 1 {
            return Err(bad(format!("unsupported v {}", self.v)));
        }
        Selector::parse(&self.cohort).map_err(|e| bad(e.to_string()))?;
        for r in std::iter::once(&self.bundle).chain(&self.fallback) {
            if !r.digest.starts_with("sha256:") || r.digest.len() != 71 {
                return Err(bad(format!("bundle digest {:?} is not sha256:<64 hex>", r.digest)));
            }
        }
        let h = &self.health;
        let rate_ok = (0.0..=1.0).contains(&h.max_error_rate);
        if !(rate_ok && h.max_p95_latency_ratio.is_finite() && h.max_p95_latency_ratio > 0.0) {
            return Err(bad("health policy thresholds out of range".into()));
        }
        Ok(())
    }

    /// An unsigned envelope holding this plan.
    pub fn to_envelope(&self) -> Envelope {
        Envelope::new(PLAN_TYPE, &serde_json::to_vec(self).unwrap_or_default())
    }

    /// Device-side admission: the device is in the cohort and the plan is newer than the last
    /// one it accepted.
    pub fn admit(
        &self,
        device: &str,
        tags: &BTreeMap<String, String>,
        last_accepted_seq: Option<u64>,
    ) -> Result<(), VerifyError> {
        if let Some(last) = last_accepted_seq
            && self.seq <= last
        {
            return Err(VerifyError::Replay { seq: self.seq, last_accepted: last });
        }
        let selector =
            Selector::parse(&self.cohort).map_err(|e| VerifyError::malformed("plan", e))?;
        if !selector.matches(tags) {
            return Err(VerifyError::NotInCohort {
                device: device.into(),
                selector: selector.to_string(),
                tags: format_tags(tags),
            });
        }
        Ok(())
    }
}

/// Reads a plan without checking signatures (for display and for adding signatures).
pub fn parse_unverified(envelope: &Envelope) -> Result<Plan, VerifyError> {
    if envelope.payload_type != PLAN_TYPE {
        return Err(VerifyError::WrongPayloadType {
            expected: PLAN_TYPE.into(),
            found: envelope.payload_type.clone(),
        });
    }
    let plan: Plan = serde_json::from_slice(&envelope.payload_bytes()?)
        .map_err(|e| VerifyError::malformed("plan", e))?;
    plan.validate()?;
    Ok(plan)
}

/// Verifies a stored plan envelope: k distinct approver signatures, well formed, not expired.
pub fn verify(
    bytes: &[u8],
    trust: &Verified<TrustRoot>,
    now: OffsetDateTime,
) -> Result<Verified<Plan>, VerifyError> {
    verify_envelope(&Envelope::from_slice(bytes)?, trust, now)
}

/// As [`verify`], for an envelope already parsed (for example from an `assign` message).
pub fn verify_envelope(
    envelope: &Envelope,
    trust: &Verified<TrustRoot>,
    now: OffsetDateTime,
) -> Result<Verified<Plan>, VerifyError> {
    trust.check_not_expired(now)?;
    let (payload, approvers) = envelope.verify(&trust.policy(Role::Approver, PLAN_TYPE))?;
    let plan: Plan =
        serde_json::from_slice(&payload).map_err(|e| VerifyError::malformed("plan", e))?;
    plan.validate()?;
    if now >= plan.expires {
        return Err(VerifyError::Expired { what: "plan", expired_at: rfc3339(plan.expires) });
    }
    Ok(Verified::new(plan, approvers))
}
