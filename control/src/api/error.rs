//! API errors: each variant says which HTTP status it becomes and why; the body is always
//! `{"error": "<what was wrong>", "code": "<stable code>"}`. Database and other internal
//! failures are logged with their detail and answered with a plain "internal error", never
//! with the detail.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_shared::VerifyError;

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no token, or a token that is unknown, expired or revoked, or whose user was
    /// removed.
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    /// 403: the user's role may not call this route.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request is malformed (body, query, path).
    #[error("{0}")]
    BadRequest(String),
    /// 409: it conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over the configured limit.
    #[error("bundle is too large: {0}")]
    PayloadTooLarge(String),
    /// 413: a JSON body over the API's body limit.
    #[error("the body is too large: {0}")]
    BodyTooLarge(String),
    /// 415: the body is not JSON where a route takes JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: the source was denied too often; it may try again after the given seconds.
    #[error("too many denied requests from {source_address}: try again in {retry_after_seconds} s")]
    TooManyRequests { source_address: String, retry_after_seconds: u64 },
    /// 422: the bundle failed verification; the reason names the check.
    #[error("bundle refused ({code}): {error}", code = .0.code(), error = .0)]
    BundleRefused(VerifyError),
    /// 422: the rollout plan failed verification against the server's trust root, or does not
    /// fit the device; the reason names the check.
    #[error("plan refused ({code}): {error}", code = .0.code(), error = .0)]
    PlanRefused(VerifyError),
    /// 503: the registry has no trust root to verify against.
    #[error("the registry accepts no bundles: the server has no trust root (set trust.root)")]
    RegistryDisabled,
    /// 500: logged, not sent.
    #[error("database: {0}")]
    Store(StoreError),
    /// 500: logged, not sent.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(reason) => ApiError::Conflict(reason),
            StoreError::Invalid(reason) => ApiError::BadRequest(reason),
            other => ApiError::Store(other),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) | ApiError::BodyTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BundleRefused(_) | ApiError::PlanRefused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::RegistryDisabled => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short stable code clients can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) | ApiError::BodyTooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::BundleRefused(error) | ApiError::PlanRefused(error) => error.code(),
            ApiError::RegistryDisabled => "registry_disabled",
            ApiError::Store(_) | ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Store(_) | ApiError::Internal(_) => {
                tracing::error!(error = %self, "request failed");
                "internal server error (details are in the server log)".to_string()
            }
            other => other.to_string(),
        };
        let body = serde_json::json!({ "error": message, "code": self.code() });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::TooManyRequests { retry_after_seconds, .. } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
        }
        response
    }
}
