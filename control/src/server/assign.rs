//! Direct assignment (`POST /v1/assign`, `outpost assign --device D --plan P.plan [--revert]`):
//! publishes a signed rollout plan to one device, retained on `outpost/v1/<dev>/assign`, for
//! operators and tests before the rollout engine exists. With `revert` the admission asks the
//! device to go back to the plan's fallback bundle.
//!
//! The server verifies the plan against its own trust root before publishing (k distinct
//! approver signatures, well formed, not expired), checks that the plan's bundle (and fallback)
//! is in the registry so the device can fetch it, and, when the device is in the inventory,
//! that it is in the plan's cohort and has not accepted this or a later plan already. A plan
//! that fails is refused with the verification's reason and code (422) and nothing is
//! published. The device verifies everything again itself: this check spares it a useless
//! download, it does not replace the device's own verification. Every assignment, published
//! or refused, is recorded in the audit log as `rollout.assign`.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use outpost_shared::dsse::{Envelope, MAX_ENVELOPE_BYTES};
use outpost_shared::wire::{
    Admission, AdmissionAction, Assign, DeviceId, ProtocolVersion, Publish,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::auth::Caller;
use crate::api::input::JsonBody;
use crate::api::{ApiError, ApiState};
use crate::store::audit::NewAuditEvent;
use crate::store::now_ms;

/// The body of `POST /v1/assign`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    pub device: String,
    /// The plan file's text exactly as signed (a compact DSSE envelope).
    pub plan: String,
    /// The wave recorded in the admission (0 when not part of a staged rollout).
    #[serde(default)]
    pub wave: u32,
    /// Ask the device to go back to the plan's fallback bundle instead of installing the
    /// plan's bundle (an operator's revert). The plan the device accepted last may be sent
    /// again for this.
    #[serde(default)]
    pub revert: bool,
}

/// `POST /v1/assign`.
pub async fn assign(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Result<JsonBody<AssignRequest>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let JsonBody(request) = body?;
    let result = assign_inner(&state, &request).await;
    let (outcome, reason) = match &result {
        Ok(answer) => ("ok".to_string(), format!("published {}", answer["topic"])),
        Err(error @ (ApiError::Store(_) | ApiError::Internal(_))) => {
            ("error".to_string(), error.to_string())
        }
        Err(error) => (error.status().as_u16().to_string(), error.to_string()),
    };
    let event = NewAuditEvent {
        actor: caller.name.clone(),
        action: "rollout.assign".into(),
        subject: format!("device {}", request.device),
        outcome,
        reason,
        source: "api".into(),
        ..Default::default()
    };
    if let Err(error) = state.store.record_audit_event(&event).await {
        tracing::error!(%error, "cannot record an assignment in the audit log");
    }
    if let Err(error) = &result {
        tracing::info!(user = %caller.name, device = %request.device, %error, "assignment refused");
    }
    result.map(|answer| (StatusCode::OK, Json(answer)))
}

async fn assign_inner(state: &ApiState, request: &AssignRequest) -> Result<Value, ApiError> {
    let device = DeviceId::new(request.device.clone())
        .map_err(|error| ApiError::BadRequest(format!("device: {error}")))?;
    let Some(trust_root) = state.trust_root.clone() else {
        return Err(ApiError::RegistryDisabled);
    };
    let Some(client) = state.mqtt.clone() else {
        return Err(ApiError::Internal("this server has no MQTT client".into()));
    };
    let bytes = request.plan.as_bytes();
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "the plan is {} bytes, over the limit of {MAX_ENVELOPE_BYTES}",
            bytes.len()
        )));
    }
    let envelope = Envelope::from_slice(bytes).map_err(ApiError::PlanRefused)?;
    let plan = outpost_shared::plan::verify_envelope(
        &envelope,
        &trust_root,
        time::OffsetDateTime::now_utc(),
    )
    .map_err(ApiError::PlanRefused)?;
    for bundle in std::iter::once(&plan.bundle).chain(&plan.fallback) {
        if state.store.bundle_by_digest(&bundle.digest).await?.is_none() {
            return Err(ApiError::Conflict(format!(
                "bundle {}@{} ({}) is not in the registry: push it first (`outpost model push`)",
                bundle.name, bundle.version, bundle.digest
            )));
        }
    }
    if request.revert && plan.fallback.is_none() {
        return Err(ApiError::BadRequest(format!(
            "plan {} seq {} names no fallback bundle to revert to",
            plan.rollout, plan.seq
        )));
    }
    let known = state.store.device(device.as_str()).await?;
    if let Some(record) = &known {
        let mut last_seq = record.last_plan_seq.and_then(|seq| u64::try_from(seq).ok());
        if request.revert {
            // A revert may name the plan the device accepted last, not an older one.
            last_seq = last_seq.and_then(|seq| seq.checked_sub(1));
        }
        plan.admit(device.as_str(), &record.tags, last_seq).map_err(ApiError::PlanRefused)?;
    }
    let action = if request.revert { AdmissionAction::Revert } else { AdmissionAction::Install };
    let assign = Assign {
        v: ProtocolVersion,
        plan: envelope,
        admission: Admission {
            rollout_id: plan.rollout.clone(),
            wave: request.wave,
            admitted_at_ms: u64::try_from(now_ms()).unwrap_or(0),
            action,
        },
    };
    let message = Publish::message(&device, &assign)
        .map_err(|error| ApiError::BadRequest(format!("cannot publish this plan: {error}")))?;
    client
        .publish(message.topic.clone(), rumqttc::QoS::AtLeastOnce, true, message.payload)
        .await
        .map_err(|error| ApiError::Internal(format!("cannot queue the assignment: {error}")))?;
    tracing::info!(%device, rollout = %plan.rollout, seq = plan.seq, "assignment published");
    Ok(json!({
        "device": device.as_str(),
        "known_device": known.is_some(),
        "rollout": plan.rollout,
        "seq": plan.seq,
        "action": if request.revert { "revert" } else { "install" },
        "bundle": if request.revert { plan.fallback.as_ref().unwrap_or(&plan.bundle) } else { &plan.bundle },
        "approvers": plan.signers(),
        "topic": message.topic,
        "retained": true,
    }))
}
