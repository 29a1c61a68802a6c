//! The layer that answers a panicking request with a 500 instead of a dropped connection:
//! the request's future runs inside [`crate::panics::catch_unwind`]; a panic is logged by the
//! panic hook (location, message), counted in `outpost_http_panics_total`, and answered with
//! the usual `{"error", "code": "internal"}` body. The API is layered so this runs inside the
//! audit layer: a mutating request that panicked is still recorded, with outcome `500`.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::server::metrics::bump;

/// The layer; see the module documentation.
pub async fn catch_panic(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match crate::panics::catch_unwind(next.run(request)).await {
        Ok(response) => response,
        Err(message) => {
            bump(&state.metrics.http_panics);
            tracing::error!(%method, %path, %message, "a request handler panicked; answered 500");
            ApiError::Internal(format!("the handler of {method} {path} panicked: {message}"))
                .into_response()
        }
    }
}

/// Test support (`OUTPOST_FAULT=panic:api:<operationId>`): the handler of that route panics.
/// [`super::router`] installs this layer only when the variable asks for it.
pub async fn inject_fault(request: Request, next: Next) -> Response {
    let matched = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .and_then(|path| super::routes::find(request.method().as_str(), path.as_str()));
    if let Some(route) = matched
        && crate::panics::fault_injected(&format!("api:{}", route.operation_id))
    {
        panic!("injected fault: the handler of {} panics", route.operation_id);
    }
    next.run(request).await
}
