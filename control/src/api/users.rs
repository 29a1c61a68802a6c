//! Users, roles and tokens over the API: create and list users, change a user's role, remove a
//! user (every token revoked), list, issue and revoke a user's tokens, and rotate one's own
//! token. Each change is one store transaction with its audit record
//! ([`crate::store::users`]); the last admin can be neither removed nor demoted.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Caller, CallerToken};
use super::input::JsonBody;
use super::{ApiError, ApiState};
use crate::store::users::{
    self, ChangedBy, MAX_ROTATION_GRACE_SECONDS, NewToken, UserRole, validate_token_id,
    validate_user_name,
};

/// Lifetimes of the tokens the API issues (`[api]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Days a token is valid when the request names none.
    pub default_days: u32,
    /// The longest lifetime a request may ask for, in days.
    pub max_days: u32,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy { default_days: 90, max_days: 365 }
    }
}

impl TokenPolicy {
    /// The lifetime in milliseconds for `requested` days (the default when absent).
    fn lifetime_ms(&self, requested: Option<u32>) -> Result<i64, ApiError> {
        let days = requested.unwrap_or(self.default_days);
        if days > self.max_days {
            return Err(ApiError::BadRequest(format!(
                "expires_in_days {days} is over this server's limit of {} (api.max_token_lifetime_days)",
                self.max_days
            )));
        }
        users::lifetime_ms(days).map_err(ApiError::BadRequest)
    }
}

fn token_answer(token: &NewToken) -> Value {
    json!({
        "token": token.token,
        "token_id": token.id,
        "user": token.user,
        "expires_ms": token.expires_ms,
    })
}

fn user_name(name: &str) -> Result<(), ApiError> {
    validate_user_name(name).map_err(ApiError::BadRequest)
}

fn no_user(name: &str) -> ApiError {
    ApiError::NotFound(format!("no user {name}"))
}

/// The body of `POST /v1/users`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub name: String,
    pub role: UserRole,
    /// Days the user's first token is valid (default `api.token_lifetime_days`).
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// `POST /v1/users`.
pub async fn create(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    body: Result<JsonBody<CreateUserRequest>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let JsonBody(request) = body?;
    user_name(&request.name)?;
    let lifetime = state.tokens.lifetime_ms(request.expires_in_days)?;
    let token = state
        .store
        .create_user_with(&request.name, request.role, ChangedBy::api(&caller.name), lifetime)
        .await?;
    let mut answer = token_answer(&token);
    answer["name"] = json!(request.name);
    answer["role"] = json!(request.role);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `GET /v1/users`.
pub async fn list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "users": state.store.list_users().await? })))
}

/// The body of `POST /v1/users/{name}/role`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRoleRequest {
    pub role: UserRole,
}

/// `POST /v1/users/{name}/role`.
pub async fn set_role(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<JsonBody<SetRoleRequest>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    user_name(&name)?;
    let JsonBody(request) = body?;
    let previous = state
        .store
        .set_user_role(&name, request.role, ChangedBy::api(&caller.name))
        .await?
        .ok_or_else(|| no_user(&name))?;
    Ok(Json(json!({ "name": name, "role": request.role, "previous_role": previous })))
}

/// `POST /v1/users/{name}/remove`.
pub async fn remove(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    user_name(&name)?;
    let revoked = state
        .store
        .remove_user(&name, ChangedBy::api(&caller.name))
        .await?
        .ok_or_else(|| no_user(&name))?;
    Ok(Json(json!({ "name": name, "removed": true, "tokens_revoked": revoked })))
}

/// `GET /v1/users/{name}/tokens`.
pub async fn list_tokens(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    user_name(&name)?;
    let tokens = state.store.list_tokens(&name).await?.ok_or_else(|| no_user(&name))?;
    Ok(Json(json!({ "name": name, "tokens": tokens })))
}

/// The body of `POST /v1/users/{name}/tokens` (may be empty: `{}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueTokenRequest {
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// `POST /v1/users/{name}/tokens`.
pub async fn issue_token(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<JsonBody<IssueTokenRequest>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    user_name(&name)?;
    let JsonBody(request) = body?;
    let lifetime = state.tokens.lifetime_ms(request.expires_in_days)?;
    let token = state
        .store
        .issue_token(&name, ChangedBy::api(&caller.name), lifetime)
        .await?
        .ok_or_else(|| no_user(&name))?;
    Ok((StatusCode::CREATED, Json(token_answer(&token))))
}

/// `POST /v1/tokens/{id}/revoke`.
pub async fn revoke_token(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    validate_token_id(&id).map_err(ApiError::BadRequest)?;
    let (token, revoked_now) = state
        .store
        .revoke_token(&id, ChangedBy::api(&caller.name))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no token {id}")))?;
    Ok(Json(json!({ "token": token, "revoked_now": revoked_now })))
}

/// The body of `POST /v1/tokens/rotate` (may be empty: `{}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateTokenRequest {
    /// Days the new token is valid (default `api.token_lifetime_days`).
    #[serde(default)]
    pub expires_in_days: Option<u32>,
    /// Seconds the old token stays valid beside the new one (default 0: revoked at once; at
    /// most a day), so running scripts can switch over.
    #[serde(default)]
    pub grace_seconds: u32,
}

/// `POST /v1/tokens/rotate`: the caller's token is replaced by a new one.
pub async fn rotate_token(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Extension(current): Extension<CallerToken>,
    body: Result<JsonBody<RotateTokenRequest>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let JsonBody(request) = body?;
    if request.grace_seconds > MAX_ROTATION_GRACE_SECONDS {
        return Err(ApiError::BadRequest(format!(
            "grace_seconds {} must be at most {MAX_ROTATION_GRACE_SECONDS} (a day)",
            request.grace_seconds
        )));
    }
    let lifetime = state.tokens.lifetime_ms(request.expires_in_days)?;
    let grace_ms = i64::from(request.grace_seconds) * 1000;
    let token = state.store.rotate_token(&current.id, &caller.name, lifetime, grace_ms).await?;
    let mut answer = token_answer(&token);
    answer["previous_token_id"] = json!(current.id);
    Ok((StatusCode::CREATED, Json(answer)))
}
