//! Authentication (bearer tokens) and authorization (the route table's roles), as one layer in
//! front of every route. A denied request (401, 403, or 429 for a source denied too often) is
//! counted in the metrics and recorded in the audit log as `auth.denied`, aggregated per kind
//! and source by [`super::denials`].

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::denials::{Denial, source_of};
use super::routes::{self, Access, Route};
use super::{ApiError, ApiState};
use crate::server::metrics::bump;
use crate::store::now_ms;
use crate::store::users::{Authentication, User};

/// The authenticated caller, placed in the request's extensions for handlers.
#[derive(Debug, Clone)]
pub struct Caller(pub User);

/// The token the caller authenticated with, placed beside [`Caller`].
#[derive(Debug, Clone)]
pub struct CallerToken {
    pub id: String,
    pub expires_ms: Option<i64>,
    /// When a rotation's grace period ends it.
    pub revoked_ms: Option<i64>,
}

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
    /// A token the server does not know, or one that is no longer valid (the reason).
    Invalid(String),
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
        Credentials::Invalid(reason) => Decision::Unauthenticated(reason.clone()),
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

/// The layer: look the route up, hold back sources denied too often, authenticate, decide,
/// record denials.
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
    if route.access == Access::Public {
        return next.run(request).await;
    }
    let source =
        source_of(request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip()));
    let subject = format!("{} {}", route.method.as_str(), route.path);
    if let Err(retry_after_seconds) = state.denials.check(&source) {
        bump(&state.metrics.http_rate_limited);
        let refusal =
            ApiError::TooManyRequests { source_address: source.clone(), retry_after_seconds };
        let denial = Denial {
            actor: "anonymous".into(),
            subject,
            outcome: "429".into(),
            reason: "too many denied requests from this source".into(),
            source,
        };
        record(&state, denial).await;
        return refusal.into_response();
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().map(str::to_string).unwrap_or_default());
    let (credentials, token) = match credentials(&state, authorization).await {
        Ok(found) => found,
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
            if let Some(token) = token {
                request.extensions_mut().insert(token);
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
    let recorded = Denial {
        actor,
        subject,
        outcome: denial.status().as_u16().to_string(),
        reason: denial.to_string(),
        source,
    };
    record(&state, recorded).await;
    denial.into_response()
}

/// Counts a denial; writes its audit record now when it is the first of its kind.
async fn record(state: &ApiState, denial: Denial) {
    if let Some(event) = state.denials.record(denial, now_ms())
        && let Err(error) = state.store.record_audit_event(&event).await
    {
        tracing::error!(%error, "cannot record a denied request in the audit log");
    }
}

/// Authenticates the `Authorization` header's value (text; empty when it was not text).
async fn credentials(
    state: &ApiState,
    authorization: Option<String>,
) -> Result<(Credentials, Option<CallerToken>), ApiError> {
    let Some(value) = authorization else {
        return Ok((Credentials::Missing, None));
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return Ok((Credentials::Malformed, None));
    };
    Ok(match state.store.authenticate(token).await? {
        Authentication::Valid { user, token_id, expires_ms, revoked_ms } => {
            (Credentials::Valid(user), Some(CallerToken { id: token_id, expires_ms, revoked_ms }))
        }
        Authentication::Unknown => (Credentials::Invalid("the token is unknown".into()), None),
        Authentication::Expired { token_id, .. } => (
            Credentials::Invalid(format!(
                "token {token_id} has expired: ask an admin for a new one (`outpost tokens issue`)"
            )),
            None,
        ),
        Authentication::Revoked { token_id, .. } => {
            (Credentials::Invalid(format!("token {token_id} was revoked")), None)
        }
        Authentication::UserRemoved { token_id, .. } => {
            (Credentials::Invalid(format!("token {token_id} belongs to a removed user")), None)
        }
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
                decide(route, &Credentials::Invalid("unknown".into())),
                Decision::Allow | Decision::Unauthenticated(_)
            ));
        }
    }
}
