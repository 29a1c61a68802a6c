//! `GET /v1/aggregates`: the merged statistics of one model version for one device or cohort,
//! bucket by bucket, and their merge over the whole range (what drift reports start from).
//! Without `model`: the model digests that have statistics for the device or cohort.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState};
use crate::store::ingest::{AggregateKind, AggregateWindow};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateQuery {
    /// The bundle digest (`sha256:…`) of the model version; absent: list the models.
    pub model: Option<String>,
    pub device: Option<String>,
    /// `*` (the default) or `key=value`.
    pub cohort: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

pub async fn aggregates(
    State(state): State<ApiState>,
    query: Result<Query<AggregateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let (kind, key) = match (query.device, query.cohort) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest("give a device or a cohort, not both".into()));
        }
        (Some(device), None) => (AggregateKind::Device, device),
        (None, cohort) => (AggregateKind::Cohort, cohort.unwrap_or_else(|| "*".into())),
    };
    let kind_name = match kind {
        AggregateKind::Device => "device",
        AggregateKind::Cohort => "cohort",
    };
    let Some(model) = query.model else {
        let models = state.store.aggregate_models(kind, &key).await?;
        return Ok(Json(json!({ "kind": kind_name, "key": key, "models": models })));
    };
    let from_ms = super::input::optional_time_ms("from_ms", query.from_ms)?.unwrap_or(0);
    let to_ms = super::input::optional_time_ms("to_ms", query.to_ms)?.unwrap_or(i64::MAX);
    let buckets = state.store.aggregates(kind, &model, &key, from_ms, to_ms).await?;
    let total =
        AggregateWindow::merge_all(buckets.iter().map(|b| &b.aggregate)).map_err(|error| {
            ApiError::Conflict(format!("the buckets of this range do not merge: {error}"))
        })?;
    Ok(Json(json!({
        "model": model,
        "kind": kind_name,
        "key": key,
        "buckets": buckets,
        "total": total,
    })))
}
