//! `GET /v1/drift` (one device or cohort, per bucket and over the range) and
//! `GET /v1/drift/overview` (every device or every cohort with its verdict and the features it
//! flags): fleet drift of one model version against the baseline profile of its bundle,
//! computed from the stored aggregates by [`crate::fleet_drift`]. `GET /v1/drift/alerts` and
//! `POST /v1/drift/alerts/{id}`: the alerts the drift monitor opened, and their review
//! (acknowledge, mark as expected, annotate), each audited. `POST /v1/drift/retrain-requests`:
//! a retraining request for a model version and period, with what drifted, announced on
//! [`crate::fleet_drift::RETRAIN_TOPIC`] for training pipelines and audited.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use outpost_shared::drift::{Thresholds, Verdict};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::input::{self, JsonBody};
use super::{ApiError, ApiState};
use crate::fleet_drift::{self, WindowDrift};
use crate::store::drift::{AlertState, Review};
use crate::store::ingest::{AggregateKind, AggregateWindow};
use crate::store::now_ms;

/// The range used when a request gives none: the last 24 hours.
const DEFAULT_RANGE_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftQuery {
    /// Bundle digest (`sha256:…`) of the model version; absent: list the models with
    /// statistics.
    pub model: Option<String>,
    pub device: Option<String>,
    /// `*` (the default) or `key=value`.
    pub cohort: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    /// Bundle digest of the model version; absent: list the models with statistics.
    pub model: Option<String>,
    /// `device` (the default) or `cohort`.
    pub by: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

fn range(from_ms: Option<i64>, to_ms: Option<i64>) -> Result<(i64, i64), ApiError> {
    let from_ms = input::optional_time_ms("from_ms", from_ms)?;
    let to_ms = input::optional_time_ms("to_ms", to_ms)?;
    let to_ms = to_ms.unwrap_or_else(|| now_ms().saturating_add(1));
    let from_ms = from_ms.unwrap_or_else(|| to_ms.saturating_sub(DEFAULT_RANGE_MS));
    if from_ms >= to_ms {
        return Err(ApiError::BadRequest(format!(
            "from_ms ({from_ms}) must be before to_ms ({to_ms})"
        )));
    }
    Ok((from_ms, to_ms))
}

async fn profile(
    state: &ApiState,
    model: &str,
) -> Result<outpost_shared::profile::Profile, ApiError> {
    state.store.bundle_profile(model).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no bundle {model} in the registry: drift compares with the profile of a pushed bundle"
        ))
    })
}

fn merge_all<'a>(
    aggregates: impl IntoIterator<Item = &'a AggregateWindow>,
) -> Result<Option<AggregateWindow>, ApiError> {
    AggregateWindow::merge_all(aggregates).map_err(|error| {
        ApiError::Conflict(format!("the buckets of this range do not merge: {error}"))
    })
}

pub async fn drift(
    State(state): State<ApiState>,
    query: Result<Query<DriftQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let (kind, kind_name, key) = match (query.device, query.cohort) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest("give a device or a cohort, not both".into()));
        }
        (Some(device), None) => (AggregateKind::Device, "device", device),
        (None, cohort) => (AggregateKind::Cohort, "cohort", cohort.unwrap_or_else(|| "*".into())),
    };
    let (from_ms, to_ms) = range(query.from_ms, query.to_ms)?;
    let Some(model) = query.model else {
        return Ok(Json(json!({ "models": state.store.models_with_statistics().await? })));
    };
    let profile = profile(&state, &model).await?;
    let thresholds = Thresholds::default();
    let buckets = state.store.aggregates(kind, &model, &key, from_ms, to_ms).await?;
    let total = merge_all(buckets.iter().map(|b| &b.aggregate))?
        .map(|total| fleet_drift::compare(&profile, &total, &thresholds));
    let per_bucket: Vec<Value> = buckets
        .iter()
        .map(|bucket| {
            json!({
                "bucket_start_ms": bucket.bucket_start_ms,
                "bucket_ms": bucket.bucket_ms,
                "drift": fleet_drift::compare(&profile, &bucket.aggregate, &thresholds),
            })
        })
        .collect();
    Ok(Json(json!({
        "model": model,
        "kind": kind_name,
        "key": key,
        "from_ms": from_ms,
        "to_ms": to_ms,
        "verdict": total.as_ref().map_or(Verdict::Insufficient, WindowDrift::verdict),
        "total": total,
        "buckets": per_bucket,
    })))
}

pub async fn overview(
    State(state): State<ApiState>,
    query: Result<Query<OverviewQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let (kind, by) = match query.by.as_deref() {
        None | Some("device") => (AggregateKind::Device, "device"),
        Some("cohort") => (AggregateKind::Cohort, "cohort"),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "by must be `device` or `cohort`, not {other:?}"
            )));
        }
    };
    let (from_ms, to_ms) = range(query.from_ms, query.to_ms)?;
    let Some(model) = query.model else {
        return Ok(Json(json!({ "models": state.store.models_with_statistics().await? })));
    };
    let profile = profile(&state, &model).await?;
    let thresholds = Thresholds::default();
    let rows = state.store.aggregates_of_model(kind, &model, from_ms, to_ms).await?;
    let mut entries: Vec<(Verdict, &str, Value)> = Vec::new();
    for group in rows.chunk_by(|a, b| a.key == b.key) {
        let Some(total) = merge_all(group.iter().map(|row| &row.aggregate))? else {
            continue;
        };
        let drift = fleet_drift::compare(&profile, &total, &thresholds);
        let key = group[0].key.as_str();
        entries.push((
            drift.verdict(),
            key,
            json!({
                "key": key,
                "windows": drift.windows,
                "requests": drift.requests,
                "verdict": drift.verdict(),
                "inputs_verdict": drift.inputs.verdict,
                "outputs_verdict": drift.outputs.verdict,
                "alerting_inputs": drift.inputs_at(Verdict::Alert),
                "alerting_outputs": drift.outputs_at(Verdict::Alert),
                "warning_inputs": drift.inputs_at(Verdict::Warn),
                "warning_outputs": drift.outputs_at(Verdict::Warn),
            }),
        ));
    }
    // Worst first, then by name.
    entries.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let entries: Vec<Value> = entries.into_iter().map(|(_, _, entry)| entry).collect();
    Ok(Json(json!({
        "model": model,
        "by": by,
        "from_ms": from_ms,
        "to_ms": to_ms,
        "entries": entries,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// `open` (the default), `closed` or `all`.
    pub state: Option<String>,
    pub model: Option<String>,
    pub limit: Option<u32>,
}

pub async fn alerts(
    State(state): State<ApiState>,
    query: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let wanted = match query.state.as_deref() {
        None | Some("open") => AlertState::Open,
        Some("closed") => AlertState::Closed,
        Some("all") => AlertState::All,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "state must be `open`, `closed` or `all`, not {other:?}"
            )));
        }
    };
    let limit = input::limit("limit", query.limit, 500, 10_000)?;
    let alerts = state.store.drift_alerts(wanted, query.model.as_deref(), limit).await?;
    Ok(Json(json!({ "alerts": alerts })))
}

/// The body of `POST /v1/drift/alerts/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// `acknowledge`, `expected` (the shift is known and accepted) or `annotate` (a note only).
    pub action: String,
    pub note: Option<String>,
}

/// Longest note accepted, in bytes.
const MAX_NOTE_BYTES: usize = 4096;

pub async fn review(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<JsonBody<ReviewRequest>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("alert id must be a number, not {id:?}")))?;
    let JsonBody(request) = body?;
    let note = request.note.as_deref().map(str::trim).filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
        return Err(ApiError::BadRequest(format!("the note is over {MAX_NOTE_BYTES} bytes")));
    }
    let review = match request.action.as_str() {
        "acknowledge" => Some(Review::Acknowledged),
        "expected" => Some(Review::Expected),
        "annotate" if note.is_some() => None,
        "annotate" => return Err(ApiError::BadRequest("annotate needs a note".into())),
        other => {
            return Err(ApiError::BadRequest(format!(
                "action must be `acknowledge`, `expected` or `annotate`, not {other:?}"
            )));
        }
    };
    match state.store.review_drift_alert(id, review, note, &caller.name).await? {
        Some(alert) => Ok(Json(json!({ "alert": alert }))),
        None => Err(ApiError::NotFound(format!("no drift alert {id}"))),
    }
}

/// The body of `POST /v1/drift/retrain-requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainRequest {
    /// Bundle digest of the model version to retrain.
    pub model: String,
    pub from_ms: i64,
    pub to_ms: i64,
    #[serde(default)]
    pub note: String,
}

pub async fn request_retrain(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Result<JsonBody<RetrainRequest>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let JsonBody(request) = body?;
    if request.note.len() > MAX_NOTE_BYTES {
        return Err(ApiError::BadRequest(format!("the note is over {MAX_NOTE_BYTES} bytes")));
    }
    let (from_ms, to_ms) = range(Some(request.from_ms), Some(request.to_ms))?;
    let Some(bundle) = state.store.bundle_by_digest(&request.model).await? else {
        return Err(ApiError::NotFound(format!("no bundle {} in the registry", request.model)));
    };
    let profile = profile(&state, &request.model).await?;
    let buckets =
        state.store.aggregates(AggregateKind::Cohort, &request.model, "*", from_ms, to_ms).await?;
    let total = merge_all(buckets.iter().map(|b| &b.aggregate))?
        .map(|total| fleet_drift::compare(&profile, &total, &Thresholds::default()));
    let drifting = |level: Verdict| -> Vec<String> {
        total.as_ref().map_or_else(Vec::new, |t| {
            let mut names = t.inputs_at(level);
            names.extend(t.outputs_at(level));
            names
        })
    };
    let mut id_bytes = [0u8; 8];
    getrandom::fill(&mut id_bytes)
        .map_err(|error| ApiError::Internal(format!("no randomness for a request id: {error}")))?;
    let retrain = json!({
        "id": hex::encode(id_bytes),
        "model": { "name": bundle.name, "version": bundle.version, "digest": bundle.digest },
        "lineage": bundle.manifest.get("lineage").cloned().unwrap_or(Value::Null),
        "from_ms": from_ms,
        "to_ms": to_ms,
        "verdict": total.as_ref().map_or(Verdict::Insufficient, WindowDrift::verdict),
        "alerting": drifting(Verdict::Alert),
        "warning": drifting(Verdict::Warn),
        "windows": total.as_ref().map_or(0, |t| t.windows),
        "requests": total.as_ref().map_or(0, |t| t.requests),
        "note": request.note,
        "requested_by": caller.name,
        "requested_ms": now_ms(),
    });
    state
        .store
        .record_audit_event(&crate::store::audit::NewAuditEvent {
            actor: caller.name.clone(),
            action: "drift.retrain.request".into(),
            subject: format!("model {}@{} {}", bundle.name, bundle.version, bundle.digest),
            outcome: "requested".into(),
            reason: retrain.to_string(),
            source: "api".into(),
            ..Default::default()
        })
        .await?;
    let event = json!({ "v": 1, "event": "retrain_requested", "request": retrain });
    if let Some(mqtt) = &state.mqtt {
        let payload = serde_json::to_vec(&event)
            .map_err(|error| ApiError::Internal(format!("encoding the request: {error}")))?;
        mqtt.publish(fleet_drift::RETRAIN_TOPIC, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|error| ApiError::Internal(format!("announcing the request: {error}")))?;
    }
    Ok(Json(json!({ "request": retrain, "topic": fleet_drift::RETRAIN_TOPIC })))
}
