//! The route handlers: thin adapters from HTTP to the store and to `outpost-shared`
//! verification. Authorization already happened in [`super::auth`].

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use outpost_shared::selector::Selector;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::{ApiError, ApiState};
use crate::server::metrics::bump;
use crate::store::inventory::DeviceFilter;
use crate::store::registry::{BundleRecord, PushOutcome};

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

pub async fn metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let online = state.store.count_online_devices().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(online),
    ))
}

pub async fn whoami(
    Extension(Caller(user)): Extension<Caller>,
    token: Option<Extension<super::auth::CallerToken>>,
) -> Json<Value> {
    let token = token.map(|Extension(token)| {
        json!({ "id": token.id, "expires_ms": token.expires_ms, "revoked_ms": token.revoked_ms })
    });
    Json(json!({ "name": user.name, "role": user.role, "token": token }))
}

/// Reads the bundle body with the configured limit, verifies it off the async threads, stores it.
pub async fn push_model(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let result = push_model_inner(&state, &caller.name, &headers, body).await;
    match &result {
        Ok((StatusCode::CREATED, _)) => bump(&state.metrics.bundles_stored),
        Ok(_) => {}
        Err(ApiError::Store(_) | ApiError::Internal(_)) => {}
        Err(_) => bump(&state.metrics.bundles_refused),
    }
    if let Err(error) = &result {
        tracing::info!(user = %caller.name, %error, "bundle push refused");
    }
    result
}

async fn push_model_inner(
    state: &ApiState,
    pushed_by: &str,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(trust_root) = state.trust_root.clone() else {
        return Err(ApiError::RegistryDisabled);
    };
    let limit = state.max_bundle_bytes;
    let too_large = |size: String| {
        ApiError::PayloadTooLarge(format!(
            "{size}, over the registry limit of {limit} bytes (registry.max_bundle_bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(declared) = declared
        && declared > limit
    {
        return Err(too_large(format!("{declared} bytes")));
    }
    let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|_| too_large("the body is larger".into()))?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("the request body is empty: send the bundle file".into()));
    }
    let verification_bytes = bytes.clone();
    let verified = tokio::task::spawn_blocking(move || {
        outpost_shared::bundle::verify(
            &verification_bytes,
            &trust_root,
            time::OffsetDateTime::now_utc(),
        )
    })
    .await
    .map_err(|error| ApiError::Internal(format!("verification task failed: {error}")))?
    .map_err(ApiError::BundleRefused)?;
    let outcome = state.store.store_bundle(&verified, &bytes, pushed_by).await?;
    Ok(match outcome {
        PushOutcome::Stored(record) => {
            tracing::info!(user = pushed_by, bundle = %format!("{}@{}", record.name, record.version), digest = %record.digest, "bundle stored");
            (StatusCode::CREATED, Json(json!({ "stored": true, "bundle": record })))
        }
        PushOutcome::AlreadyStored(record) => {
            (StatusCode::OK, Json(json!({ "stored": false, "bundle": record })))
        }
    })
}

/// A bundle as listed (without the manifest's file list).
fn version_summary(record: &BundleRecord) -> Value {
    json!({
        "version": record.version,
        "digest": record.digest,
        "size": record.size,
        "task": record.task,
        "pushed_ms": record.pushed_ms,
        "pushed_by": record.pushed_by,
        "lineage": record.manifest.get("lineage"),
        "profile_summary": record.profile_summary,
    })
}

pub async fn list_models(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let mut models: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in state.store.list_bundles(None).await? {
        models.entry(record.name.clone()).or_default().push(json!({
            "version": record.version,
            "digest": record.digest,
            "size": record.size,
            "pushed_ms": record.pushed_ms,
        }));
    }
    let models: Vec<Value> = models
        .into_iter()
        .map(|(name, versions)| json!({ "name": name, "versions": versions }))
        .collect();
    Ok(Json(json!({ "models": models })))
}

pub async fn show_model(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let versions = state.store.list_bundles(Some(&name)).await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!("no model named {name} in the registry")));
    }
    Ok(Json(json!({
        "name": name,
        "versions": versions.iter().map(version_summary).collect::<Vec<_>>(),
    })))
}

pub async fn show_model_version(
    State(state): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    match state.store.bundle_version(&name, &version).await? {
        Some(record) => Ok(Json(json!({ "bundle": record }))),
        None => Err(ApiError::NotFound(format!("no model {name}@{version} in the registry"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    pub selector: Option<String>,
    pub online: Option<bool>,
    pub model: Option<String>,
}

pub async fn list_devices(
    State(state): State<ApiState>,
    query: Result<Query<DeviceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let selector = query
        .selector
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let filter = DeviceFilter {
        selector,
        online_only: query.online.unwrap_or(false),
        model: query.model.filter(|model| !model.is_empty()),
    };
    let devices = state.store.list_devices(&filter).await?;
    Ok(Json(json!({ "devices": devices })))
}

pub async fn show_device(
    State(state): State<ApiState>,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.device(&device).await? {
        Some(record) => Ok(Json(json!({ "device": record }))),
        None => Err(ApiError::NotFound(format!("no device {device} in the inventory"))),
    }
}
