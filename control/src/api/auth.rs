//! Authentication (bearer tokens) and authorization (the route table's roles), as one layer in
//! front of every route. A denied request (401 or 403) is recorded in `audit_events` as
//! `auth.denied` with who, what and why, and counted in the metrics.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::routes::{self, Access, Route};
use super::{ApiError, ApiState};
use crate::server::metrics::bump;
use crate::store::audit::NewAuditEvent;
use crate::store::users::User;

/// The authenticated caller, placed in the request's extensions for handlers.
#[derive(Debug, Clone)]
pub struct Caller(pub User);

/// The decision for one request, made without IO from the route and the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401, with the reason.
    Unauthenticated(String),
    /// 403, with the reason.
    Forbidden(String),
}

/// What the credentials said.
#[derive(Debug)]
pub enum Credentials {
    Missing,
    Malformed,
    Unknown,
    Valid(User),
}

/// Decides whether `credentials` may call `route`.
pub fn decide(route: &Route, credentials: &Credentials) -> Decision {
    let Access::Roles(roles) = route.access else {
        return Decision::Allow;
    };
    match credentials {
        Credentials::Missing => {
            Decision::Unauthenticated("send an `Authorization: Bearer <token>` header".into())
        }
        Credentials::Malformed => {
            Decision::Unauthenticated("the Authorization header is not `Bearer <token>`".into())
        }
        Credentials::Unknown => Decision::Unauthenticated("the token is unknown or revoked".into()),
        Credentials::Valid(user) if roles.contains(&user.role) => Decision::Allow,
        Credentials::Valid(user) => Decision::Forbidden(format!(
            "role {} may not {} {}; allowed: {}",
            user.role,
            route.method.as_str(),
            route.path,
            roles.iter().map(|role| role.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The layer: look the route up, authenticate, decide, record denials.
pub async fn authorize(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_string();
    let matched = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_string());
    let Some(route) = matched.as_deref().and_then(|path| routes::find(&method, path)) else {
        // Fail closed: a route the table does not know is never served.
        tracing::error!(%method, path = ?matched, "route missing from the route table");
        return ApiError::Internal("route missing from the route table".into()).into_response();
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().map(str::to_string).unwrap_or_default());
    let credentials = match credentials(&state, authorization).await {
        Ok(credentials) => credentials,
        Err(error) => return error.into_response(),
    };
    let actor = match &credentials {
        Credentials::Valid(user) => user.name.clone(),
        _ => "anonymous".to_string(),
    };
    let denial = match decide(route, &credentials) {
        Decision::Allow => {
            if let Credentials::Valid(user) = credentials {
                request.extensions_mut().insert(Caller(user));
            }
            return next.run(request).await;
        }
        Decision::Unauthenticated(reason) => {
            bump(&state.metrics.http_unauthenticated);
            ApiError::Unauthenticated(reason)
        }
        Decision::Forbidden(reason) => {
            bump(&state.metrics.http_forbidden);
            ApiError::Forbidden(reason)
        }
    };
    let event = NewAuditEvent {
        actor,
        action: "auth.denied".into(),
        subject: format!("{} {}", route.method.as_str(), route.path),
        outcome: denial.status().as_u16().to_string(),
        reason: denial.to_string(),
        source: "api".into(),
        ..Default::default()
    };
    if let Err(error) = state.store.record_audit_event(&event).await {
        tracing::error!(%error, "cannot record a denied request in the audit log");
    }
    denial.into_response()
}

/// Authenticates the `Authorization` header's value (text; empty when it was not text).
async fn credentials(
    state: &ApiState,
    authorization: Option<String>,
) -> Result<Credentials, ApiError> {
    let Some(value) = authorization else {
        return Ok(Credentials::Missing);
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return Ok(Credentials::Malformed);
    };
    Ok(match state.store.user_for_token(token).await? {
        Some(user) => Credentials::Valid(user),
        None => Credentials::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routes::ROUTES;
    use crate::store::users::UserRole;

    fn user(role: UserRole) -> Credentials {
        Credentials::Valid(User {
            name: "u".into(),
            role,
            created_ms: 0,
            created_by: "test".into(),
        })
    }

    #[test]
    fn decisions_follow_the_table() {
        for route in ROUTES {
            for role in UserRole::ALL {
                let expected = route.access.allows(role);
                assert_eq!(
                    decide(route, &user(role)) == Decision::Allow,
                    expected,
                    "{role} {}",
                    route.path
                );
            }
            let anonymous = decide(route, &Credentials::Missing);
            assert_eq!(anonymous == Decision::Allow, route.access == Access::Public);
            assert!(matches!(
                decide(route, &Credentials::Unknown),
                Decision::Allow | Decision::Unauthenticated(_)
            ));
        }
    }
}
