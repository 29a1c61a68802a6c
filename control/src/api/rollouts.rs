//! `/v1/rollouts`: create, list, show, approve, start, pause, resume, abort, roll back and
//! advance staged rollouts ([`crate::rollout`]).
//!
//! Creation resolves the bundle (and fallback) in the registry, allocates the fleet-wide plan
//! sequence number and stores the unsigned plan. Approvers sign that plan where their key lives
//! (`outpost rollout approve`) and upload only the signature, which is checked against the trust
//! root's approver keys before it is kept. Start needs the trust root's k distinct valid
//! approvals: the signed plan is assembled and verified exactly as a device will verify it.
//! Every command goes through the lifecycle machine; a refused command (wrong state, too few
//! approvals, bad signature) is answered with the reason and recorded in the audit log too.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use outpost_shared::dsse::{Envelope, PLAN_TYPE, Signature};
use outpost_shared::plan::{BundleRef, Plan};
use outpost_shared::trust::TrustRoot;
use outpost_shared::verify::Role;
use outpost_shared::{Verified, VerifyError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::input::JsonBody;
use super::{ApiError, ApiState};
use crate::rollout::driver::shape_of;
use crate::rollout::machine::{Command, RolloutState};
use crate::rollout::spec::{RolloutSpec, WaveSize};
use crate::store::audit::NewAuditEvent;
use crate::store::now_ms;
use crate::store::registry::BundleRecord;
use crate::store::rollouts::{Change, RolloutRecord};

fn body<T>(body: Result<JsonBody<T>, ApiError>) -> Result<T, ApiError> {
    body.map(|JsonBody(value)| value)
}

fn trust(state: &ApiState) -> Result<&Verified<TrustRoot>, ApiError> {
    state.trust_root.as_deref().ok_or_else(|| {
        ApiError::Conflict(
            "the server has no trust root (set trust.root): no plan can be approved".into(),
        )
    })
}

async fn load(state: &ApiState, id: &str) -> Result<RolloutRecord, ApiError> {
    state.store.rollout(id).await?.ok_or_else(|| ApiError::NotFound(format!("no rollout {id}")))
}

/// Records a refused request in the audit log (successful ones are recorded with their
/// transition).
async fn audit_refusal(
    state: &ApiState,
    actor: &str,
    action: &str,
    subject: &str,
    error: &ApiError,
) {
    let outcome = match error {
        ApiError::Store(_) | ApiError::Internal(_) => "error".to_string(),
        other => other.status().as_u16().to_string(),
    };
    let event = NewAuditEvent {
        actor: actor.to_string(),
        action: action.to_string(),
        subject: subject.to_string(),
        outcome,
        reason: error.to_string(),
        source: "api".into(),
        ..Default::default()
    };
    if let Err(error) = state.store.record_audit_event(&event).await {
        tracing::error!(%error, "cannot record a refused rollout request in the audit log");
    }
}

/// A bundle named `name@version` or by digest, from the registry.
async fn resolve(state: &ApiState, what: &str, reference: &str) -> Result<BundleRecord, ApiError> {
    let found = if reference.starts_with("sha256:") {
        state.store.bundle_by_digest(reference).await?
    } else if let Some((name, version)) = reference.split_once('@') {
        state.store.bundle_version(name, version).await?
    } else {
        return Err(ApiError::BadRequest(format!(
            "{what} {reference:?}: name it as `name@version` or by its `sha256:` digest"
        )));
    };
    found.ok_or_else(|| {
        ApiError::Conflict(format!(
            "{what} {reference} is not in the registry: push it first (`outpost model push`)"
        ))
    })
}

fn bundle_ref(record: &BundleRecord) -> BundleRef {
    BundleRef {
        name: record.name.clone(),
        version: record.version.clone(),
        digest: record.digest.clone(),
        size: record.size,
    }
}

/// `POST /v1/rollouts`.
pub async fn create(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    request: Result<JsonBody<RolloutSpec>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let result = create_inner(&state, &caller.name, request).await;
    if let Err(error) = &result {
        audit_refusal(&state, &caller.name, "rollout.create", "rollout", error).await;
    }
    result
}

async fn create_inner(
    state: &ApiState,
    actor: &str,
    request: Result<JsonBody<RolloutSpec>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut spec = body(request)?;
    spec.validate().map_err(ApiError::BadRequest)?;
    trust(state)?;
    let bundle = resolve(state, "bundle", &spec.bundle).await?;
    let fallback = match &spec.fallback {
        Some(reference) => Some(resolve(state, "fallback", reference).await?),
        None => None,
    };
    let id = spec.id.clone().unwrap_or_else(|| {
        let clean: String = format!("{}-{}", bundle.name, bundle.version)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
            .collect();
        format!("{clean}-{}", now_ms())
    });
    crate::rollout::spec::check_id(&id).map_err(ApiError::BadRequest)?;
    spec.id = Some(id.clone());
    let created = time::OffsetDateTime::now_utc();
    // Checked as well as bounded by `validate`: date arithmetic never panics.
    let expires = created
        .checked_add(time::Duration::hours(i64::from(spec.expires_in_hours)))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "expires_in_hours {} reaches past the year 9999",
                spec.expires_in_hours
            ))
        })?;
    let plan_for = |seq: u64| -> Result<String, String> {
        let plan = Plan {
            v: 1,
            rollout: id.clone(),
            seq,
            bundle: bundle_ref(&bundle),
            fallback: fallback.as_ref().map(bundle_ref),
            cohort: spec.cohort.clone(),
            health: spec.health.clone(),
            created,
            expires,
        };
        plan.validate().map_err(|error| error.to_string())?;
        String::from_utf8(plan.to_envelope().to_vec()).map_err(|error| error.to_string())
    };
    let record = state.store.create_rollout(&id, &spec, &bundle.digest, actor, plan_for).await?;
    tracing::info!(rollout = %id, seq = record.plan_seq, "rollout created");
    Ok((StatusCode::CREATED, Json(view(state, &record, false).await?)))
}

/// Query of `GET /v1/rollouts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<String>,
}

/// `GET /v1/rollouts`.
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let filter = match query.state.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            RolloutState::parse(text)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown rollout state {text:?}")))?,
        ),
    };
    let mut rollouts = Vec::new();
    for record in state.store.list_rollouts(filter).await? {
        rollouts.push(view(&state, &record, false).await?);
    }
    Ok(Json(json!({ "rollouts": rollouts })))
}

/// `GET /v1/rollouts/{id}`.
pub async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = load(&state, &id).await?;
    Ok(Json(view(&state, &record, true).await?))
}

/// Which of `approvals` verify as approver signatures over the unsigned plan.
fn valid_approvals(
    trust: &Verified<TrustRoot>,
    unsigned: &Envelope,
    approvals: &[Signature],
) -> Vec<Signature> {
    approvals
        .iter()
        .filter(|signature| check_signature(trust, unsigned, signature).is_ok())
        .cloned()
        .collect()
}

/// Checks one signature as an approver's over `unsigned`.
fn check_signature(
    trust: &Verified<TrustRoot>,
    unsigned: &Envelope,
    signature: &Signature,
) -> Result<(), VerifyError> {
    let mut single = unsigned.clone();
    single.signatures = vec![signature.clone()];
    let mut policy = trust.policy(Role::Approver, PLAN_TYPE);
    policy.threshold = 1;
    single.verify(&policy).map(|_| ())
}

/// The body of `POST /v1/rollouts/{id}/approve`: one approver signature over the plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    pub keyid: String,
    /// Base64 ed25519 signature over the plan envelope's PAE.
    pub sig: String,
}

/// `POST /v1/rollouts/{id}/approve`.
pub async fn approve(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
    request: Result<JsonBody<ApproveRequest>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let result = approve_inner(&state, &caller.name, &id, request).await;
    if let Err(error) = &result {
        audit_refusal(&state, &caller.name, "rollout.approve", &format!("rollout {id}"), error)
            .await;
    }
    result
}

async fn approve_inner(
    state: &ApiState,
    actor: &str,
    id: &str,
    request: Result<JsonBody<ApproveRequest>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let request = body(request)?;
    let trust = trust(state)?;
    let record = load(state, id).await?;
    let unsigned = Envelope::from_slice(record.plan_envelope.as_bytes())
        .map_err(|error| ApiError::Internal(format!("stored plan of {id}: {error}")))?;
    let signature = Signature { keyid: request.keyid.clone(), sig: request.sig.clone() };
    check_signature(trust, &unsigned, &signature).map_err(ApiError::PlanRefused)?;
    if !matches!(record.state, RolloutState::AwaitingApproval | RolloutState::Approved) {
        return Err(ApiError::Conflict(format!(
            "cannot approve a rollout that is {}",
            record.state
        )));
    }
    state.store.add_rollout_approval(id, &request.keyid, &request.sig, actor).await?;
    let approvals = stored_signatures(state, id).await?;
    let valid = valid_approvals(trust, &unsigned, &approvals).len();
    let required = trust.approvers.threshold;
    let record = apply(
        state,
        record,
        Command::Approved { valid, required },
        actor,
        &format!("signature by {}", request.keyid),
        None,
    )
    .await?;
    Ok(Json(view(state, &record, false).await?))
}

async fn stored_signatures(state: &ApiState, id: &str) -> Result<Vec<Signature>, ApiError> {
    Ok(state
        .store
        .rollout_approvals(id)
        .await?
        .into_iter()
        .map(|a| Signature { keyid: a.keyid, sig: a.sig })
        .collect())
}

/// Applies `command` to `record` through the machine and stores the transition; a rollout
/// changed meanwhile is read again and the command applied to the new state.
async fn apply(
    state: &ApiState,
    mut record: RolloutRecord,
    command: Command,
    actor: &str,
    note: &str,
    signed_envelope: Option<&str>,
) -> Result<RolloutRecord, ApiError> {
    for _ in 0..5 {
        let shape = shape_of(&record.spec);
        let transition = record
            .progress()
            .command(&shape, command, now_ms())
            .map_err(|refused| ApiError::Conflict(refused.0))?;
        let reason = if note.is_empty() {
            transition.reason.clone()
        } else {
            format!("{} ({note})", transition.reason)
        };
        let change = Change {
            next: transition.next,
            action: transition.action,
            actor,
            reason: &reason,
            signed_envelope,
            gates: None,
            source: "api",
        };
        if state.store.change_rollout(&record.id, record.revision, record.state, &change).await? {
            state.rollout_wake.notify_one();
            return load(state, &record.id).await;
        }
        record = load(state, &record.id).await?;
    }
    Err(ApiError::Conflict(format!("rollout {} keeps changing; try again", record.id)))
}

/// `POST /v1/rollouts/{id}/start`.
pub async fn start(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let result = start_inner(&state, &caller.name, &id).await;
    if let Err(error) = &result {
        audit_refusal(&state, &caller.name, "rollout.start", &format!("rollout {id}"), error).await;
    }
    result
}

async fn start_inner(state: &ApiState, actor: &str, id: &str) -> Result<Json<Value>, ApiError> {
    let trust = trust(state)?;
    let record = load(state, id).await?;
    let unsigned = Envelope::from_slice(record.plan_envelope.as_bytes())
        .map_err(|error| ApiError::Internal(format!("stored plan of {id}: {error}")))?;
    let valid = valid_approvals(trust, &unsigned, &stored_signatures(state, id).await?);
    let required = trust.approvers.threshold;
    let mut signed = unsigned.clone();
    signed.signatures = valid.clone();
    if valid.len() >= required {
        // Exactly what a device will check: k distinct approvers, well formed, not expired.
        outpost_shared::plan::verify_envelope(&signed, trust, time::OffsetDateTime::now_utc())
            .map_err(ApiError::PlanRefused)?;
    }
    let signed_text = String::from_utf8(signed.to_vec())
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    let record = apply(
        state,
        record,
        Command::Start { valid: valid.len(), required },
        actor,
        "",
        Some(&signed_text),
    )
    .await?;
    Ok(Json(view(state, &record, false).await?))
}

/// A plain command: pause, resume, abort, rollback, advance.
async fn command(
    state: ApiState,
    actor: String,
    id: String,
    command: Command,
) -> Result<Json<Value>, ApiError> {
    let result = async {
        let record = load(&state, &id).await?;
        let record = apply(&state, record, command, &actor, "", None).await?;
        view(&state, &record, false).await
    }
    .await;
    match result {
        Ok(value) => Ok(Json(value)),
        Err(error) => {
            audit_refusal(&state, &actor, command.action(), &format!("rollout {id}"), &error).await;
            Err(error)
        }
    }
}

/// `POST /v1/rollouts/{id}/pause`.
pub async fn pause(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    command(state, caller.name, id, Command::Pause).await
}

/// `POST /v1/rollouts/{id}/resume`.
pub async fn resume(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    command(state, caller.name, id, Command::Resume).await
}

/// `POST /v1/rollouts/{id}/abort`.
pub async fn abort(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    command(state, caller.name, id, Command::Abort).await
}

/// `POST /v1/rollouts/{id}/rollback`.
pub async fn rollback(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    command(state, caller.name, id, Command::Rollback).await
}

/// `POST /v1/rollouts/{id}/advance`.
pub async fn advance(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    command(state, caller.name, id, Command::Advance).await
}

/// The JSON view of a rollout; `detail` adds the devices and the transitions.
async fn view(state: &ApiState, record: &RolloutRecord, detail: bool) -> Result<Value, ApiError> {
    let devices = state.store.rollout_devices(&record.id).await?;
    let approvals = state.store.rollout_approvals(&record.id).await?;
    let required = state.trust_root.as_ref().map(|t| t.approvers.threshold);
    let bundle = state.store.bundle_by_digest(&record.bundle_digest).await?;
    let eligible = devices.iter().filter(|d| !d.holdout).count() as u64;
    let waves: Vec<Value> = record
        .spec
        .waves
        .iter()
        .enumerate()
        .map(|(index, wave)| {
            let index32 = u32::try_from(index).unwrap_or(u32::MAX);
            // Wave sizes are cumulative: a wave's figure counts the devices of earlier waves.
            let admitted = devices
                .iter()
                .filter(|d| d.wave.is_some_and(|wave| wave <= index32) && !d.holdout)
                .count();
            let status = match (record.state, index32.cmp(&record.wave)) {
                (_, std::cmp::Ordering::Less) => "passed",
                (RolloutState::Completed, _) => "passed",
                (RolloutState::AwaitingApproval | RolloutState::Approved, _) => "pending",
                (_, std::cmp::Ordering::Equal) => record.wave_phase.as_str(),
                (_, std::cmp::Ordering::Greater) => "pending",
            };
            json!({
                "index": index,
                "size": wave.size,
                "target": size_target(wave.size, eligible),
                "admitted": admitted,
                "soak_seconds": wave.soak_seconds,
                "gates": wave.gates,
                "status": status,
            })
        })
        .collect();
    let holdout = devices.iter().filter(|d| d.holdout).count();
    let released = devices.iter().filter(|d| d.holdout && d.admitted_ms.is_some()).count();
    let mut value = json!({
        "id": record.id,
        "state": record.state,
        "reason": record.reason,
        "plan_seq": record.plan_seq,
        "bundle": {
            "digest": record.bundle_digest,
            "name": bundle.as_ref().map(|b| b.name.clone()),
            "version": bundle.as_ref().map(|b| b.version.clone()),
        },
        "cohort": record.spec.cohort,
        "wave": record.wave,
        "wave_phase": record.wave_phase.as_str(),
        "wave_started_ms": record.wave_started_ms,
        "waves": waves,
        "holdout": { "percent": record.spec.holdout_percent, "devices": holdout, "released": released },
        "devices_placed": devices.len(),
        "devices_admitted": devices.iter().filter(|d| d.admitted_ms.is_some()).count(),
        "devices_reverted": devices.iter().filter(|d| d.reverted_ms.is_some()).count(),
        "approvals": {
            "required": required,
            "keys": approvals.iter().map(|a| json!({"keyid": a.keyid, "by": a.approved_by, "ms": a.approved_ms})).collect::<Vec<_>>(),
        },
        "gates": record.gates,
        "advance": record.spec.advance,
        "on_gate_fail": record.spec.on_gate_fail,
        "spec": record.spec,
        "plan": record.plan_envelope,
        "signed": record.signed_envelope.is_some(),
        "created_by": record.created_by,
        "created_ms": record.created_ms,
        "updated_ms": record.updated_ms,
        "lease": { "owner": record.lease_owner, "expires_ms": record.lease_expires_ms },
    });
    if detail {
        value["devices"] = json!(devices);
        value["transitions"] = json!(state.store.rollout_transitions(&record.id).await?);
    }
    Ok(value)
}

fn size_target(size: WaveSize, eligible: u64) -> u64 {
    size.target(eligible)
}
