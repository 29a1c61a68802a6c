//! Device identity over the API: enrolling a device (`POST /v1/enrollments`), listing the
//! enrolled devices, revoking a device and serving the CA's revocation list, and issuing the broker's server certificate and the control's client
//! certificate (`POST /v1/broker/certificates`). Every issue signs a CSR made where the key
//! lives ([`crate::ca::new_key_and_csr`]): private keys never reach the server.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use outpost_shared::selector::valid_token;
use outpost_shared::wire::DeviceId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::input::JsonBody;
use super::{ApiError, ApiState};
use crate::ca::{CaError, DEFAULT_VALID_DAYS, Identity, IssuedCertificate};
use crate::store::enrollment::IssuedRecord;

impl From<CaError> for ApiError {
    fn from(error: CaError) -> Self {
        match error {
            CaError::Request(reason) => ApiError::BadRequest(reason),
            CaError::Mismatch(reason) => ApiError::Conflict(reason),
            CaError::Store(error) => ApiError::from(error),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Most tags an enrollment records.
pub const MAX_ENROLL_TAGS: usize = 64;
/// Most host names of one broker certificate.
pub const MAX_BROKER_HOSTS: usize = 64;

/// The body of `POST /v1/enrollments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub device_id: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// PEM CSR of the device's key (ECDSA P-256).
    pub csr_pem: String,
    /// Days the certificate is valid (default five years).
    #[serde(default)]
    pub valid_days: Option<u32>,
    /// Re-enroll a device that is enrolled already; its earlier certificates are revoked.
    #[serde(default)]
    pub replace: bool,
}

/// The body of `POST /v1/broker/certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerCertificateRequest {
    /// `broker` (TLS server certificate for `hosts`) or `control` (client certificate of the
    /// control instance `instance`).
    pub kind: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub instance: Option<String>,
    pub csr_pem: String,
    #[serde(default)]
    pub valid_days: Option<u32>,
}

fn record_of(identity: &Identity, issued: &IssuedCertificate) -> IssuedRecord {
    IssuedRecord {
        kind: identity.kind().to_string(),
        common_name: issued.common_name.clone(),
        serial: issued.serial.clone(),
        fingerprint: issued.fingerprint.clone(),
        not_after_ms: i64::try_from(issued.not_after.unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX),
    }
}

fn body<T>(body: Result<JsonBody<T>, ApiError>) -> Result<T, ApiError> {
    body.map(|JsonBody(value)| value)
}

pub async fn enroll(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    request: Result<JsonBody<EnrollRequest>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = body(request)?;
    if request.tags.len() > MAX_ENROLL_TAGS {
        return Err(ApiError::BadRequest(format!(
            "{} tags: a device is enrolled with at most {MAX_ENROLL_TAGS}",
            request.tags.len()
        )));
    }
    let device = DeviceId::new(request.device_id.clone())
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    if let Some((key, value)) =
        request.tags.iter().find(|(key, value)| !valid_token(key) || !valid_token(value))
    {
        return Err(ApiError::BadRequest(format!(
            "tag `{key}={value}`: keys and values are 1-64 characters of A-Z a-z 0-9 . _ - / :"
        )));
    }
    if !request.replace && state.store.enrollment(device.as_str()).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "device {device} is already enrolled: re-enroll it with replace (--replace)"
        )));
    }
    let ca = state.fleet_ca.get(&state.store).await?;
    let identity = Identity::Device(device.clone());
    let issued = ca.issue(
        &identity,
        &request.csr_pem,
        request.valid_days.unwrap_or(DEFAULT_VALID_DAYS),
        time::OffsetDateTime::now_utc(),
    )?;
    let enrollment = state
        .store
        .record_enrollment(
            device.as_str(),
            &request.tags,
            &record_of(&identity, &issued),
            request.replace,
            &caller.name,
        )
        .await?;
    tracing::info!(
        %device,
        serial = %issued.serial,
        fingerprint = %issued.fingerprint,
        user = %caller.name,
        "device enrolled"
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "enrollment": enrollment,
            "certificate_pem": issued.certificate_pem,
            "ca_certificate_pem": ca.certificate_pem(),
            "ca_fingerprint": ca.fingerprint(),
        })),
    ))
}

pub async fn revoke_device(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let device = DeviceId::new(device).map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let Some(serials) = state.store.revoke_device(device.as_str(), &caller.name).await? else {
        return Err(ApiError::NotFound(format!(
            "device {device} is not enrolled and holds no valid certificate"
        )));
    };
    tracing::info!(%device, serials = %serials.join(","), user = %caller.name, "device revoked");
    Ok(Json(json!({ "device": device.as_str(), "revoked_serials": serials })))
}

pub async fn revocation_list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let ca = state.fleet_ca.get(&state.store).await?;
    let revoked = state
        .store
        .revoked_certificates()
        .await?
        .into_iter()
        .map(|(serial, ms)| {
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .map_err(|error| ApiError::Internal(format!("revocation time {ms}: {error}")))?;
            Ok((serial, at))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let crl_pem = ca.revocation_list(&revoked, time::OffsetDateTime::now_utc())?;
    Ok(Json(json!({
        "crl_pem": crl_pem,
        "revoked": revoked.len(),
        "ca_fingerprint": ca.fingerprint(),
    })))
}

pub async fn list_enrollments(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "enrollments": state.store.list_enrollments().await? })))
}

pub async fn issue_broker_certificate(
    State(state): State<ApiState>,
    Extension(Caller(caller)): Extension<Caller>,
    request: Result<JsonBody<BrokerCertificateRequest>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = body(request)?;
    if request.hosts.len() > MAX_BROKER_HOSTS {
        return Err(ApiError::BadRequest(format!(
            "{} hosts: a broker certificate names at most {MAX_BROKER_HOSTS}",
            request.hosts.len()
        )));
    }
    let identity = match (request.kind.as_str(), &request.instance) {
        ("broker", None) => Identity::broker(&request.hosts)?,
        ("control", Some(instance)) if request.hosts.is_empty() => Identity::control(instance)?,
        ("broker", Some(_)) => {
            return Err(ApiError::BadRequest(
                "a broker certificate takes hosts, not an instance".into(),
            ));
        }
        ("control", _) => {
            return Err(ApiError::BadRequest(
                "a control certificate takes an instance name, not hosts".into(),
            ));
        }
        (other, _) => {
            return Err(ApiError::BadRequest(format!(
                "kind `{other}`: it must be `broker` or `control`"
            )));
        }
    };
    let ca = state.fleet_ca.get(&state.store).await?;
    let issued = ca.issue(
        &identity,
        &request.csr_pem,
        request.valid_days.unwrap_or(DEFAULT_VALID_DAYS),
        time::OffsetDateTime::now_utc(),
    )?;
    let record = record_of(&identity, &issued);
    state.store.record_issued_certificate(&record, &caller.name).await?;
    tracing::info!(
        kind = identity.kind(),
        name = %issued.common_name,
        serial = %issued.serial,
        user = %caller.name,
        "certificate issued"
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "kind": record.kind,
            "common_name": record.common_name,
            "serial": record.serial,
            "fingerprint": record.fingerprint,
            "not_after_ms": record.not_after_ms,
            "certificate_pem": issued.certificate_pem,
            "ca_certificate_pem": ca.certificate_pem(),
            "ca_fingerprint": ca.fingerprint(),
        })),
    ))
}
