//! Sampled raw inputs of a device (`docs/drift.md` "Input samples"): request an upload
//! (`drift.samples.request`, published at once on the device's retained `sampling` topic),
//! list the requests and their state, and read one upload as CSV (`drift.samples.read`).
//! The rows are personal-data-bearing: the route table gives these routes to admins and
//! operators only.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use outpost_shared::wire::DeviceId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::{ApiError, ApiState};
use crate::server::samples::{publish_sampling, sampling_state};
use crate::store::audit::NewAuditEvent;

fn device_id(device: &str) -> Result<DeviceId, ApiError> {
    DeviceId::new(device).map_err(|error| ApiError::BadRequest(error.to_string()))
}

/// `POST /v1/devices/{device}/samples`: asks the device to upload its input sample.
pub async fn request(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = device_id(&device)?;
    if state.store.device(&device).await?.is_none() {
        return Err(ApiError::NotFound(format!("no device {device} in the inventory")));
    }
    let mut random = [0u8; 8];
    getrandom::fill(&mut random)
        .map_err(|error| ApiError::Internal(format!("no randomness for a request id: {error}")))?;
    let request_id = format!("smp-{}", hex::encode(random));
    let request = state.store.create_sample_request(&device, &request_id, &caller.name).await?;
    let control = sampling_state(&state.store, &device).await?;
    let published = match &state.mqtt {
        Some(mqtt) => match publish_sampling(mqtt, &id, &control).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, %device, "request stored; published at the next interval");
                false
            }
        },
        None => false,
    };
    Ok(Json(json!({
        "request": request,
        "alert": control.alert,
        "published": published,
    })))
}

/// `GET /v1/devices/{device}/samples`: the device's upload requests, newest first.
pub async fn list(
    State(state): State<ApiState>,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    device_id(&device)?;
    let requests = state.store.sample_requests(&device).await?;
    Ok(Json(json!({ "device": device, "requests": requests })))
}

/// The query of `GET /v1/devices/{device}/samples/csv`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvQuery {
    /// A request id; default the newest complete upload.
    pub request: Option<String>,
}

/// `GET /v1/devices/{device}/samples/csv`: one complete upload as CSV (header = columns).
pub async fn csv(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(device): Path<String>,
    Query(query): Query<CsvQuery>,
) -> Result<Response, ApiError> {
    device_id(&device)?;
    let requests = state.store.sample_requests(&device).await?;
    let request = match &query.request {
        Some(id) => requests.into_iter().find(|r| &r.request_id == id).ok_or_else(|| {
            ApiError::NotFound(format!("no sample request {id} for device {device}"))
        })?,
        None => requests.into_iter().find(|r| r.state == "complete").ok_or_else(|| {
            ApiError::NotFound(format!("device {device} has no complete sample upload"))
        })?,
    };
    if request.state != "complete" {
        return Err(ApiError::Conflict(format!(
            "sample request {} is not complete yet ({} of {} parts)",
            request.request_id,
            request.received_parts,
            request.parts.map_or_else(|| "?".to_string(), |p| p.to_string())
        )));
    }
    let rows = state.store.sample_rows(&request.request_id).await?;
    let mut text = String::new();
    text.push_str(&request.columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
    text.push('\n');
    for row in &rows {
        text.push_str(&row.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","));
        text.push('\n');
    }
    state
        .store
        .record_audit_event(&NewAuditEvent {
            actor: caller.name.clone(),
            action: "drift.samples.read".into(),
            subject: format!("device {device} input sample request {}", request.request_id),
            outcome: "read".into(),
            reason: format!("{} rows", rows.len()),
            source: "api".into(),
            device: Some(device.clone()),
            model: request.model.as_ref().map(|m| format!("{}@{}", m.name, m.version)),
        })
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::HeaderName::from_static("x-outpost-sample-request"), request.request_id),
        ],
        text,
    )
        .into_response())
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
