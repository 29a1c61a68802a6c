//! The REST/JSON API of the control server, and the client the CLI uses to call it.
//!
//! - [`routes`]: the route table (path, method, roles): the single source of truth.
//! - [`auth`]: bearer tokens and role checks in one layer in front of every route; denials are
//!   recorded in the audit log.
//! - [`denials`]: denied requests limited per source and audited as counted records.
//! - [`users`]: users, roles and tokens (expiry, revocation, rotation).
//! - [`handlers`]: thin adapters to the store and to `outpost-shared` verification.
//! - [`input`]: the JSON body extractor, the control-character guard on paths and queries,
//!   and the bounds of the numbers routes take.
//! - [`drift`]: fleet drift per device or cohort from the stored aggregates.
//! - [`enroll`]: device enrollment and broker / control certificates from the fleet CA.
//! - [`rollouts`]: staged rollouts: create, approve (signatures), start, control, show.
//! - [`audit`]: audit records, exports with proofs, and the layer that records every
//!   mutating request.
//! - [`openapi`]: `/openapi.json`, generated from the route table.
//! - [`panic`]: a panicking request is answered 500 (and counted), never a dropped connection.
//! - [`error`]: [`ApiError`], each variant with its status; bodies are `{"error", "code"}`.
//! - [`client`]: the blocking HTTP client of `outpost model|devices|users` (ureq, rustls).

pub mod aggregates;
pub mod audit;
pub mod auth;
pub mod client;
pub mod denials;
pub mod drift;
pub mod enroll;
pub mod error;
pub mod handlers;
pub mod input;
pub mod openapi;
pub mod panic;
pub mod rollouts;
pub mod routes;
pub mod samples;
pub mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, get, post};
use outpost_shared::Verified;
use outpost_shared::trust::TrustRoot;

pub use error::ApiError;
use routes::{ROUTES, RouteId};

use crate::server::metrics::Metrics;
use crate::store::Store;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// `None`: the registry refuses pushes.
    pub trust_root: Option<Arc<Verified<TrustRoot>>>,
    pub max_bundle_bytes: u64,
    /// The control's MQTT client, for publishing assignments; `None` in API-only setups.
    pub mqtt: Option<rumqttc::AsyncClient>,
    /// The fleet CA in the data directory, loaded or created on first use.
    pub fleet_ca: Arc<crate::ca::FleetCaCell>,
    /// The Merkle audit log: checkpoints, proofs, exports.
    pub audit: Arc<crate::audit::log::AuditLog>,
    /// Wakes the rollout driver after a command changed a rollout.
    pub rollout_wake: Arc<tokio::sync::Notify>,
    /// The per-source limit on denied requests and their aggregated audit records.
    pub denials: Arc<denials::Denials>,
    /// Lifetimes of the tokens the API issues.
    pub tokens: users::TokenPolicy,
}

/// The handler of each route. The match is exhaustive, so every [`RouteId`] has one; that
/// each answers on its table method is checked by the authorization matrix test.
fn handler(id: RouteId) -> MethodRouter<ApiState> {
    use handlers::*;
    match id {
        RouteId::Health => get(health),
        RouteId::OpenApi => get(openapi),
        RouteId::Metrics => get(metrics),
        RouteId::WhoAmI => get(whoami),
        RouteId::CreateUser => post(users::create),
        RouteId::ListUsers => get(users::list),
        RouteId::SetUserRole => post(users::set_role),
        RouteId::RemoveUser => post(users::remove),
        RouteId::ListUserTokens => get(users::list_tokens),
        RouteId::IssueUserToken => post(users::issue_token),
        RouteId::RevokeToken => post(users::revoke_token),
        RouteId::RotateToken => post(users::rotate_token),
        // The push handler reads the body itself, with the registry's own limit.
        RouteId::PushModel => post(push_model).layer(DefaultBodyLimit::disable()),
        RouteId::ListModels => get(list_models),
        RouteId::ShowModel => get(show_model),
        RouteId::ShowModelVersion => get(show_model_version),
        RouteId::ListDevices => get(list_devices),
        RouteId::ShowDevice => get(show_device),
        RouteId::ListAuditEvents => get(audit::list),
        RouteId::ExportAudit => post(audit::export),
        RouteId::AuditCheckpoint => get(audit::checkpoint),
        RouteId::Aggregates => get(aggregates::aggregates),
        RouteId::Drift => get(drift::drift),
        RouteId::DriftOverview => get(drift::overview),
        RouteId::DriftAlerts => get(drift::alerts),
        RouteId::ReviewDriftAlert => post(drift::review),
        RouteId::RequestRetrain => post(drift::request_retrain),
        RouteId::RequestDeviceSamples => post(samples::request),
        RouteId::ListDeviceSamples => get(samples::list),
        RouteId::DeviceSamplesCsv => get(samples::csv),
        RouteId::Assign => post(crate::server::assign::assign),
        RouteId::Enroll => post(enroll::enroll),
        RouteId::ListEnrollments => get(enroll::list_enrollments),
        RouteId::RevokeDevice => post(enroll::revoke_device),
        RouteId::RevocationList => get(enroll::revocation_list),
        RouteId::IssueBrokerCertificate => post(enroll::issue_broker_certificate),
        RouteId::CreateRollout => post(rollouts::create),
        RouteId::ListRollouts => get(rollouts::list),
        RouteId::ShowRollout => get(rollouts::show),
        RouteId::ApproveRollout => post(rollouts::approve),
        RouteId::StartRollout => post(rollouts::start),
        RouteId::PauseRollout => post(rollouts::pause),
        RouteId::ResumeRollout => post(rollouts::resume),
        RouteId::AbortRollout => post(rollouts::abort),
        RouteId::RollbackRollout => post(rollouts::rollback),
        RouteId::AdvanceRollout => post(rollouts::advance),
    }
}

/// The API router: every route of [`ROUTES`], behind the authorization layer. From the
/// outside in: a panic guard, authorization, the audit layer, the control-character guard, a
/// second panic guard (so a handler's panic is a 500 the audit layer still records), the
/// handler.
pub fn router(state: ApiState) -> Router {
    let mut router: Router<ApiState> = Router::new();
    for route in ROUTES {
        router = router.route(route.path, handler(route.id));
    }
    if crate::panics::api_faults_injected() {
        router = router.route_layer(axum::middleware::from_fn(panic::inject_fault));
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), panic::catch_panic))
        .route_layer(axum::middleware::from_fn(input::refuse_control_characters))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit::record_unaudited))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authorize))
        .layer(axum::middleware::from_fn_with_state(state.clone(), panic::catch_panic))
        .with_state(state)
}
