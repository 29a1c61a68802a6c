//! The audit API: listing records, exports with proofs (`POST /v1/audit/exports`), and the
//! layer that makes every mutating request leave an audit record.
//!
//! The layer ([`record_unaudited`]) runs inside authorization (denials are recorded there as
//! `auth.denied`). It runs the handler in an [`in_scope`] scope and, for every route that is
//! not a `GET`, records an event when the handler recorded none that committed: a refusal or
//! failure the handler did not record, or a success without its own event. The action is the
//! route's ([`route_action`]); the outcome is the HTTP status; the reason is the error text.

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::input::{self, JsonBody};
use super::routes::{self, Route};
use super::{ApiError, ApiState};
use crate::audit::export::{ExportAnswer, ExportFilters};
use crate::audit::key::LogKeyError;
use crate::audit::log::AuditError;
use crate::store::audit::{AuditFilter, NewAuditEvent, in_scope};

/// Largest error body read back to record its text.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest request path kept in a record's subject, in bytes.
const MAX_SUBJECT_PATH: usize = 1024;
/// Longest refusal text kept in a record's reason, in bytes.
const MAX_REASON: usize = 4096;
/// Longest text filter of an export or listing (actor, device, model, action), in bytes.
const MAX_FILTER_BYTES: usize = 256;

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
}

/// A text filter: absent when empty; refused when longer than any stored value can be.
fn text_filter(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value.filter(|value| !value.is_empty()) {
        Some(value) if value.len() > MAX_FILTER_BYTES => Err(ApiError::BadRequest(format!(
            "the {name} filter is {} bytes long, more than any recorded {name} ({MAX_FILTER_BYTES})",
            value.len()
        ))),
        other => Ok(other),
    }
}

/// The audit action of a route: its own event's action for the routes whose handlers record
/// one, else `api.<operationId>`.
pub fn route_action(route: &Route) -> String {
    let known = match route.operation_id {
        "createUser" => "user.create",
        "setUserRole" => "user.role",
        "removeUser" => "user.remove",
        "issueUserToken" => "token.create",
        "revokeToken" => "token.revoke",
        "rotateToken" => "token.rotate",
        "pushModel" => "model.publish",
        "reviewDriftAlert" => "drift.alert.review",
        "requestRetrain" => "drift.retrain.request",
        "assign" => "rollout.assign",
        "enrollDevice" => "device.enroll",
        "revokeDevice" => "device.revoke",
        "issueBrokerCertificate" => "certificate.issue",
        "exportAudit" => "audit.export",
        "requestDeviceSamples" => "drift.samples.request",
        other => return format!("api.{other}"),
    };
    known.to_string()
}

/// The value of path parameter `name` in `path` matched by `route`.
fn path_parameter(route: &Route, path: &str, name: &str) -> Option<String> {
    let wanted = format!("{{{name}}}");
    let position = route.path.split('/').position(|segment| segment == wanted)?;
    path.split('/').nth(position).map(str::to_string)
}

/// The layer; see the module documentation.
pub async fn record_unaudited(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return next.run(request).await;
    }
    let matched = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let route = matched.as_deref().and_then(|path| routes::find(method.as_str(), path));
    let actor = request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_string(), |Caller(user)| user.name.clone());
    let path = request.uri().path().to_string();
    let (response, committed, in_transaction) = in_scope(next.run(request)).await;
    let status = response.status();
    if committed || (status.is_success() && in_transaction) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let (reason, body) = if status.is_success() {
        (String::new(), body)
    } else {
        let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY).await.unwrap_or_default();
        let text = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|value| value.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(2000).collect());
        (text, Body::from(bytes))
    };
    let event = NewAuditEvent {
        actor,
        action: route.map_or_else(|| "api.unknown".to_string(), route_action),
        subject: format!("{method} {}", bounded(&path, MAX_SUBJECT_PATH)),
        outcome: status.as_u16().to_string(),
        reason: bounded(&reason, MAX_REASON).to_string(),
        source: "api".into(),
        // Only a well-formed device id goes into the indexed column; the subject keeps the
        // path as it was sent.
        device: route
            .and_then(|route| path_parameter(route, &path, "device"))
            .filter(|device| outpost_shared::wire::DeviceId::new(device.clone()).is_ok()),
        ..Default::default()
    };
    if let Err(error) = state.store.record_audit_event(&event).await {
        tracing::error!(%error, "cannot record an API request in the audit log");
    }
    Response::from_parts(parts, body)
}

/// The query of `GET /v1/audit/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub device: Option<String>,
    pub model: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: Option<u32>,
}

/// `GET /v1/audit/events`.
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let limit = input::limit("limit", query.limit, 100, 1000)?;
    let filter = AuditFilter {
        action: text_filter("action", query.action)?,
        actor: text_filter("actor", query.actor)?,
        device: text_filter("device", query.device)?,
        model: text_filter("model", query.model)?,
        from_ms: input::optional_time_ms("from_ms", query.from_ms)?,
        to_ms: input::optional_time_ms("to_ms", query.to_ms)?,
    };
    let events = state.store.audit_events_matching(&filter, limit).await?;
    Ok(Json(json!({ "events": events })))
}

/// `GET /v1/audit/checkpoint`: a fresh signed checkpoint of the whole log and the log's
/// verifier key, for auditors who keep checkpoints (to pass as `--previous` later) and pin the
/// key.
pub async fn checkpoint(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let (checkpoint, note) = state.audit.checkpoint().await.map_err(|error| match error {
        AuditError::Key(error @ LogKeyError::Mismatch(_)) => ApiError::Conflict(error.to_string()),
        AuditError::Store(error) => ApiError::from(error),
        other => ApiError::Internal(other.to_string()),
    })?;
    let vkey = state.audit.vkey().await.map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok(Json(json!({ "checkpoint": note, "tree_size": checkpoint.size, "vkey": vkey })))
}

/// The body of `POST /v1/audit/exports`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub actor: Option<String>,
    pub device: Option<String>,
    pub model: Option<String>,
    /// A signed checkpoint of this log seen before: the answer proves the log extends it.
    pub previous: Option<String>,
}

/// `POST /v1/audit/exports`: the export of the selected records with their proofs, a fresh
/// checkpoint, the signed manifest and the log key. Recorded as `audit.export`.
pub async fn export(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Result<JsonBody<ExportRequest>, ApiError>,
) -> Result<Json<ExportAnswer>, ApiError> {
    let JsonBody(request) = body?;
    let filters = ExportFilters {
        from_ms: input::optional_time_ms("from_ms", request.from_ms)?,
        to_ms: input::optional_time_ms("to_ms", request.to_ms)?,
        actor: text_filter("actor", request.actor)?,
        device: text_filter("device", request.device)?,
        model: text_filter("model", request.model)?,
    };
    let result = match (filters.from_ms, filters.to_ms) {
        (Some(from), Some(to)) if from >= to => Err(ApiError::BadRequest(format!(
            "the period is empty: from_ms {from} is not before to_ms {to}"
        ))),
        _ => state.audit.export(&filters, request.previous.as_deref()).await.map_err(|error| {
            match error {
                AuditError::Invalid(reason) | AuditError::TooLarge(reason) => {
                    ApiError::BadRequest(reason)
                }
                AuditError::Conflict(reason) => ApiError::Conflict(reason),
                // The instance's key is not the log's: say what to copy where.
                AuditError::Key(error @ LogKeyError::Mismatch(_)) => {
                    ApiError::Conflict(error.to_string())
                }
                AuditError::Store(error) => ApiError::from(error),
                other => ApiError::Internal(other.to_string()),
            }
        }),
    };
    let (outcome, reason) = match &result {
        Ok(answer) => ("ok".to_string(), format!("{} records", answer.records.len())),
        Err(error) => (error.status().as_u16().to_string(), error.to_string()),
    };
    let event = NewAuditEvent {
        actor: caller.name.clone(),
        action: "audit.export".into(),
        subject: format!("audit export {}", serde_json::to_string(&filters).unwrap_or_default()),
        outcome,
        reason,
        source: "api".into(),
        device: filters.device.clone(),
        model: filters.model.clone(),
    };
    if let Err(error) = state.store.record_audit_event(&event).await {
        tracing::error!(%error, "cannot record an audit export in the audit log");
        return Err(ApiError::from(error));
    }
    result.map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routes::{HttpMethod, ROUTES};

    #[test]
    fn every_mutating_route_has_an_audit_action_of_the_vocabulary_form() {
        for route in ROUTES.iter().filter(|route| route.method != HttpMethod::Get) {
            let action = route_action(route);
            assert!(
                action.contains('.') && !action.contains(' ') && !action.is_empty(),
                "{} {} → {action}",
                route.method.as_str(),
                route.path
            );
        }
        let revoke = ROUTES.iter().find(|r| r.operation_id == "revokeDevice").expect("route");
        assert_eq!(
            path_parameter(revoke, "/v1/enrollments/pump-1/revoke", "device").as_deref(),
            Some("pump-1")
        );
    }
}
