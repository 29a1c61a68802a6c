//! The route table: every API route, who may call it, and what it documents.
//!
//! This table is the single source of truth for authorization: the router is built from it
//! ([`super::router`] matches exhaustively on [`RouteId`], so a route without an entry cannot
//! exist), the authorization layer looks each request's route up here, the OpenAPI document is
//! generated from it, and the authorization matrix test iterates it.

use crate::store::users::UserRole;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// A bearer token of a user with one of these roles.
    Roles(&'static [UserRole]),
}

impl Access {
    /// Whether a user with `role` may call the route.
    pub fn allows(self, role: UserRole) -> bool {
        match self {
            Access::Public => true,
            Access::Roles(roles) => roles.contains(&role),
        }
    }
}

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
        }
    }
}

/// Every route, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteId {
    Health,
    OpenApi,
    Metrics,
    WhoAmI,
    CreateUser,
    ListUsers,
    SetUserRole,
    RemoveUser,
    ListUserTokens,
    IssueUserToken,
    RevokeToken,
    RotateToken,
    PushModel,
    ListModels,
    ShowModel,
    ShowModelVersion,
    ListDevices,
    ShowDevice,
    ListAuditEvents,
    ExportAudit,
    AuditCheckpoint,
    Aggregates,
    Drift,
    DriftOverview,
    DriftAlerts,
    ReviewDriftAlert,
    RequestRetrain,
    RequestDeviceSamples,
    ListDeviceSamples,
    DeviceSamplesCsv,
    Assign,
    Enroll,
    ListEnrollments,
    RevokeDevice,
    RevocationList,
    IssueBrokerCertificate,
    CreateRollout,
    ListRollouts,
    ShowRollout,
    ApproveRollout,
    StartRollout,
    PauseRollout,
    ResumeRollout,
    AbortRollout,
    RollbackRollout,
    AdvanceRollout,
}

/// A query parameter, for the OpenAPI document.
#[derive(Debug, Clone, Copy)]
pub struct QueryParameter {
    pub name: &'static str,
    pub schema_type: &'static str,
    pub description: &'static str,
}

/// The scope of statistics and drift queries: one device, or one cohort.
const DEVICE_SCOPE: QueryParameter = QueryParameter {
    name: "device",
    schema_type: "string",
    description: "A device id (instead of a cohort).",
};
const COHORT_SCOPE: QueryParameter = QueryParameter {
    name: "cohort",
    schema_type: "string",
    description: "`*` (every device, the default) or a `key=value` tag.",
};
/// The time range of statistics and drift queries, by bucket start.
const BUCKETS_FROM: QueryParameter = QueryParameter {
    name: "from_ms",
    schema_type: "integer",
    description: "Buckets starting at or after this time (unix ms).",
};
const BUCKETS_TO: QueryParameter = QueryParameter {
    name: "to_ms",
    schema_type: "integer",
    description: "Buckets starting before this time (unix ms).",
};

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub id: RouteId,
    pub method: HttpMethod,
    /// axum / OpenAPI path syntax: `/v1/models/{name}`.
    pub path: &'static str,
    pub access: Access,
    pub operation_id: &'static str,
    pub summary: &'static str,
    /// Content type of the request body, if the route takes one.
    pub request_body: Option<&'static str>,
    pub query: &'static [QueryParameter],
    /// Status of a successful answer.
    pub success_status: u16,
    /// Content type of a successful answer.
    pub response_type: &'static str,
}

use UserRole::{Admin, Approver, Auditor, Operator};

const EVERY_ROLE: &[UserRole] = &[Admin, Operator, Approver, Auditor];
const ADMIN_ONLY: &[UserRole] = &[Admin];
const ADMIN_AND_AUDITOR: &[UserRole] = &[Admin, Auditor];
const PUBLISHERS: &[UserRole] = &[Admin, Operator];
const MONITORS: &[UserRole] = &[Admin, Operator, Auditor];
/// Who creates and controls rollouts.
const ROLLOUT_OPERATORS: &[UserRole] = &[Admin, Operator];
/// Who approves rollouts.
const APPROVERS: &[UserRole] = &[Admin, Approver];

const JSON: &str = "application/json";

/// The API.
pub const ROUTES: &[Route] = &[
    Route {
        id: RouteId::Health,
        method: HttpMethod::Get,
        path: "/health",
        access: Access::Public,
        operation_id: "health",
        summary: "Liveness: answers while the server runs.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::OpenApi,
        method: HttpMethod::Get,
        path: "/openapi.json",
        access: Access::Public,
        operation_id: "openapi",
        summary: "This OpenAPI 3 document.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::Metrics,
        method: HttpMethod::Get,
        path: "/metrics",
        access: Access::Roles(MONITORS),
        operation_id: "metrics",
        summary: "Prometheus metrics (text exposition format).",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: "text/plain; version=0.0.4",
    },
    Route {
        id: RouteId::WhoAmI,
        method: HttpMethod::Get,
        path: "/v1/whoami",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "whoami",
        summary: "The user the bearer token belongs to, its role, and the token's id and \
                  expiry.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::CreateUser,
        method: HttpMethod::Post,
        path: "/v1/users",
        access: Access::Roles(ADMIN_ONLY),
        operation_id: "createUser",
        summary: "Create a user: `{\"name\", \"role\", \"expires_in_days\"}` (the last \
                  optional). The answer holds the user's first token, shown only once.",
        request_body: Some(JSON),
        query: &[],
        success_status: 201,
        response_type: JSON,
    },
    Route {
        id: RouteId::ListUsers,
        method: HttpMethod::Get,
        path: "/v1/users",
        access: Access::Roles(ADMIN_AND_AUDITOR),
        operation_id: "listUsers",
        summary: "Every user (not removed), role and number of valid tokens (never tokens).",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::SetUserRole,
        method: HttpMethod::Post,
        path: "/v1/users/{name}/role",
        access: Access::Roles(ADMIN_ONLY),
        operation_id: "setUserRole",
        summary: "Change a user's role: `{\"role\"}`. 409 when it would leave no admin. \
                  Recorded as `user.role`.",
        request_body: Some(JSON),
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::RemoveUser,
        method: HttpMethod::Post,
        path: "/v1/users/{name}/remove",
        access: Access::Roles(ADMIN_ONLY),
        operation_id: "removeUser",
        summary: "Remove a user: every token of it is revoked at once. 409 when it is the last \
                  admin. Recorded as `user.remove`.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ListUserTokens,
        method: HttpMethod::Get,
        path: "/v1/users/{name}/tokens",
        access: Access::Roles(ADMIN_AND_AUDITOR),
        operation_id: "listUserTokens",
        summary: "A user's tokens, newest first: id, created, expires, revoked (when and by \
                  whom), last used, state (`active`, `expired`, `revoked`). Never the token.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::IssueUserToken,
        method: HttpMethod::Post,
        path: "/v1/users/{name}/tokens",
        access: Access::Roles(ADMIN_ONLY),
        operation_id: "issueUserToken",
        summary: "Issue another token for a user: `{\"expires_in_days\"}` (optional; default \
                  and limit from `api.token_lifetime_days` / `api.max_token_lifetime_days`). \
                  The answer holds the token, shown only once. Recorded as `token.create`.",
        request_body: Some(JSON),
        query: &[],
        success_status: 201,
        response_type: JSON,
    },
    Route {
        id: RouteId::RevokeToken,
        method: HttpMethod::Post,
        path: "/v1/tokens/{id}/revoke",
        access: Access::Roles(ADMIN_ONLY),
        operation_id: "revokeToken",
        summary: "Revoke a token by its id at once (also one whose rotation grace is running). \
                  Recorded as `token.revoke`.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::RotateToken,
        method: HttpMethod::Post,
        path: "/v1/tokens/rotate",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "rotateToken",
        summary: "Replace the caller's token with a new one: `{\"expires_in_days\", \
                  \"grace_seconds\"}` (both optional; the old token stays valid for the grace, \
                  at most a day, default none). A token rotates once. Recorded as \
                  `token.rotate`.",
        request_body: Some(JSON),
        query: &[],
        success_status: 201,
        response_type: JSON,
    },
    Route {
        id: RouteId::PushModel,
        method: HttpMethod::Post,
        path: "/v1/models",
        access: Access::Roles(PUBLISHERS),
        operation_id: "pushModel",
        summary: "Push a signed bundle (the request body is the bundle file). Verified against the \
                  server's trust root; 201 when stored, 200 when the same bundle was already \
                  stored, 409 when name@version holds a different bundle, 413 when too large, \
                  422 when verification refuses it.",
        request_body: Some("application/octet-stream"),
        query: &[],
        success_status: 201,
        response_type: JSON,
    },
    Route {
        id: RouteId::ListModels,
        method: HttpMethod::Get,
        path: "/v1/models",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "listModels",
        summary: "Every model with its versions and digests.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ShowModel,
        method: HttpMethod::Get,
        path: "/v1/models/{name}",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "showModel",
        summary: "One model: every version with digest, lineage and profile summary.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ShowModelVersion,
        method: HttpMethod::Get,
        path: "/v1/models/{name}/versions/{version}",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "showModelVersion",
        summary: "One model version: manifest, lineage, signers, profile summary.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ListDevices,
        method: HttpMethod::Get,
        path: "/v1/devices",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "listDevices",
        summary: "The fleet inventory, optionally filtered.",
        request_body: None,
        query: &[
            QueryParameter {
                name: "selector",
                schema_type: "string",
                description: "Tag selector, e.g. `site=berlin,hw=rpi4`.",
            },
            QueryParameter {
                name: "online",
                schema_type: "boolean",
                description: "Only devices whose last state is online.",
            },
            QueryParameter {
                name: "model",
                schema_type: "string",
                description: "Active model `name` or `name@version`.",
            },
        ],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ShowDevice,
        method: HttpMethod::Get,
        path: "/v1/devices/{device}",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "showDevice",
        summary: "One device of the inventory.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ListAuditEvents,
        method: HttpMethod::Get,
        path: "/v1/audit/events",
        access: Access::Roles(ADMIN_AND_AUDITOR),
        operation_id: "listAuditEvents",
        summary: "Recent audit events, newest first (including denied requests).",
        request_body: None,
        query: &[
            QueryParameter {
                name: "action",
                schema_type: "string",
                description: "Only events of this action, e.g. `auth.denied`.",
            },
            QueryParameter {
                name: "actor",
                schema_type: "string",
                description: "Only events of this actor (user name or device id).",
            },
            QueryParameter {
                name: "device",
                schema_type: "string",
                description: "Only events concerning this device.",
            },
            QueryParameter {
                name: "model",
                schema_type: "string",
                description: "Only events concerning this model (`name@version`).",
            },
            QueryParameter {
                name: "from_ms",
                schema_type: "integer",
                description: "Events at or after this time (unix ms).",
            },
            QueryParameter {
                name: "to_ms",
                schema_type: "integer",
                description: "Events before this time (unix ms).",
            },
            QueryParameter {
                name: "limit",
                schema_type: "integer",
                description: "At most this many events (default 100, at most 1000).",
            },
        ],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ExportAudit,
        method: HttpMethod::Post,
        path: "/v1/audit/exports",
        access: Access::Roles(ADMIN_AND_AUDITOR),
        operation_id: "exportAudit",
        summary: "Export audit records for offline verification: `{\"from_ms\", \"to_ms\", \
                  \"actor\", \"device\", \"model\", \"previous\"}` (all optional; `previous` \
                  a signed checkpoint seen before). The answer holds the records in log order \
                  with inclusion proofs, a fresh signed checkpoint, a manifest signed by the log \
                  key, the log key and, with `previous`, a consistency proof. Recorded as \
                  `audit.export`.",
        request_body: Some(JSON),
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::AuditCheckpoint,
        method: HttpMethod::Get,
        path: "/v1/audit/checkpoint",
        access: Access::Roles(ADMIN_AND_AUDITOR),
        operation_id: "auditCheckpoint",
        summary: "A fresh signed checkpoint of the whole audit log (C2SP tlog-checkpoint in a \
                  signed note) and the log's verifier key.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::Aggregates,
        method: HttpMethod::Get,
        path: "/v1/aggregates",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "aggregates",
        summary: "Merged statistics windows of one model version (bundle digest) for one device \
                  or cohort, per time bucket, and their merge over the range; without `model`, \
                  the model digests that have statistics for the device or cohort.",
        request_body: None,
        query: &[
            QueryParameter {
                name: "model",
                schema_type: "string",
                description: "Bundle digest `sha256:…` of the model version.",
            },
            DEVICE_SCOPE,
            COHORT_SCOPE,
            BUCKETS_FROM,
            BUCKETS_TO,
        ],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::Drift,
        method: HttpMethod::Get,
        path: "/v1/drift",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "drift",
        summary: "Drift of one model version (bundle digest) for one device or cohort against \
                  the baseline profile of its bundle: PSI, Jensen-Shannon, chi-square (exact \
                  from the merged windows), KS bounds and the normed mean shift per input \
                  feature, per output and for the predicted classes, with verdicts; over the \
                  range and per time bucket. Default range: the last 24 hours.",
        request_body: None,
        query: &[
            QueryParameter {
                name: "model",
                schema_type: "string",
                description: "Bundle digest `sha256:…` of the model version; without it, the \
                                  digests that have statistics.",
            },
            DEVICE_SCOPE,
            COHORT_SCOPE,
            BUCKETS_FROM,
            BUCKETS_TO,
        ],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::DriftOverview,
        method: HttpMethod::Get,
        path: "/v1/drift/overview",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "driftOverview",
        summary: "Every device (or cohort) that reported on one model version in the range, \
                  worst first: its drift verdict and the features and outputs that alert or \
                  warn. Default range: the last 24 hours.",
        request_body: None,
        query: &[
            QueryParameter {
                name: "model",
                schema_type: "string",
                description: "Bundle digest `sha256:…` of the model version; without it, the \
                                  digests that have statistics.",
            },
            QueryParameter {
                name: "by",
                schema_type: "string",
                description: "`device` (the default) or `cohort`.",
            },
            BUCKETS_FROM,
            BUCKETS_TO,
        ],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::DriftAlerts,
        method: HttpMethod::Get,
        path: "/v1/drift/alerts",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "driftAlerts",
        summary: "Drift alerts the drift monitor opened (with hysteresis): series (model, \
                  device or cohort, feature), when opened and closed, the metrics at opening, \
                  the review and the notes. Newest first.",
        request_body: None,
        query: &[
            QueryParameter {
                name: "state",
                schema_type: "string",
                description: "`open` (the default), `closed` or `all`.",
            },
            QueryParameter {
                name: "model",
                schema_type: "string",
                description: "Only alerts of this bundle digest.",
            },
            QueryParameter {
                name: "limit",
                schema_type: "integer",
                description: "At most this many (default 500).",
            },
        ],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ReviewDriftAlert,
        method: HttpMethod::Post,
        path: "/v1/drift/alerts/{id}",
        access: Access::Roles(PUBLISHERS),
        operation_id: "reviewDriftAlert",
        summary: "Review a drift alert: `{\"action\": \"acknowledge\" | \"expected\" | \
                  \"annotate\", \"note\": \"…\"}`. Recorded in the audit log with the user.",
        request_body: Some(JSON),
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::RequestRetrain,
        method: HttpMethod::Post,
        path: "/v1/drift/retrain-requests",
        access: Access::Roles(PUBLISHERS),
        operation_id: "requestRetrain",
        summary: "Request retraining of a model version: `{\"model\": digest, \"from_ms\", \
                  \"to_ms\", \"note\"}`. The request carries the model's lineage and the \
                  features and outputs drifting in the period (whole fleet), is recorded as \
                  `drift.retrain.request` and announced on `outpost/v1/retrain/requests`.",
        request_body: Some(JSON),
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::RequestDeviceSamples,
        method: HttpMethod::Post,
        path: "/v1/devices/{device}/samples",
        access: Access::Roles(PUBLISHERS),
        operation_id: "requestDeviceSamples",
        summary: "Ask a device to upload its sample of raw inputs (kept only while it is in \
                  drift alert and sampling is enabled in its config). Recorded as \
                  `drift.samples.request`; published on the device's retained `sampling` \
                  topic. The rows are personal-data-bearing (docs/drift.md).",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ListDeviceSamples,
        method: HttpMethod::Get,
        path: "/v1/devices/{device}/samples",
        access: Access::Roles(PUBLISHERS),
        operation_id: "listDeviceSamples",
        summary: "A device's input-sample upload requests, newest first: who asked, when, \
                  state (`requested`, `complete`), parts received, columns and model.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::DeviceSamplesCsv,
        method: HttpMethod::Get,
        path: "/v1/devices/{device}/samples/csv",
        access: Access::Roles(PUBLISHERS),
        operation_id: "deviceSamplesCsv",
        summary: "One complete input-sample upload as CSV (the newest unless `request` names \
                  one); 409 while parts are missing. Each read is recorded as \
                  `drift.samples.read`.",
        request_body: None,
        query: &[QueryParameter {
            name: "request",
            schema_type: "string",
            description: "A sample request id (default: the newest complete upload).",
        }],
        success_status: 200,
        response_type: "text/csv",
    },
    Route {
        id: RouteId::Assign,
        method: HttpMethod::Post,
        path: "/v1/assign",
        access: Access::Roles(PUBLISHERS),
        operation_id: "assign",
        summary: "Publish a signed rollout plan to one device (retained assign topic). The plan \
                  is verified against the server's trust root first: 422 with the reason when \
                  it does not verify or does not fit the device, 409 when its bundle is not in \
                  the registry.",
        request_body: Some(JSON),
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::Enroll,
        method: HttpMethod::Post,
        path: "/v1/enrollments",
        access: Access::Roles(ADMIN_ONLY),
        operation_id: "enrollDevice",
        summary: "Enroll a device: the fleet CA signs the CSR of the device's key (made where \
                  the key lives; ECDSA P-256) into a certificate whose CN is the device id, and \
                  the device is recorded with its tags. 409 when already enrolled (unless \
                  `replace`), 400 when the id, tags or CSR are refused. The CA is created on \
                  first use.",
        request_body: Some(JSON),
        query: &[],
        success_status: 201,
        response_type: JSON,
    },
    Route {
        id: RouteId::ListEnrollments,
        method: HttpMethod::Get,
        path: "/v1/enrollments",
        access: Access::Roles(ADMIN_AND_AUDITOR),
        operation_id: "listEnrollments",
        summary: "Every enrolled device: tags, certificate serial and fingerprint, expiry, \
                  when and by whom.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::RevokeDevice,
        method: HttpMethod::Post,
        path: "/v1/enrollments/{device}/revoke",
        access: Access::Roles(ADMIN_ONLY),
        operation_id: "revokeDevice",
        summary: "Revoke every certificate issued to the device and remove its enrollment; the \
                  broker refuses the device once it has the new revocation list \
                  (`/v1/ca/crl`). 404 when the device has no enrollment and no valid \
                  certificate.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::RevocationList,
        method: HttpMethod::Get,
        path: "/v1/ca/crl",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "revocationList",
        summary: "The fleet CA's certificate revocation list (PEM, signed by the CA) for the \
                  broker's `crlfile`, listing every revoked certificate that has not expired.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::IssueBrokerCertificate,
        method: HttpMethod::Post,
        path: "/v1/broker/certificates",
        access: Access::Roles(ADMIN_ONLY),
        operation_id: "issueBrokerCertificate",
        summary: "Sign a CSR into the broker's TLS server certificate (`kind: broker`, with \
                  `hosts`) or a control instance's broker client certificate (`kind: control`, \
                  with `instance`; CN `outpost-control:<instance>`).",
        request_body: Some(JSON),
        query: &[],
        success_status: 201,
        response_type: JSON,
    },
    Route {
        id: RouteId::CreateRollout,
        method: HttpMethod::Post,
        path: "/v1/rollouts",
        access: Access::Roles(ROLLOUT_OPERATORS),
        operation_id: "createRollout",
        summary: "Create a staged rollout: `{bundle, fallback?, cohort, waves: [{size: N | \"P%\", soak_seconds, gates}], holdout_percent, health, expires_in_hours, advance: auto|manual, on_gate_fail: pause|rollback, device_timeout_seconds}`. The server allocates the fleet-wide plan sequence number and stores the unsigned plan for approvers to sign.",
        request_body: Some(JSON),
        query: &[],
        success_status: 201,
        response_type: JSON,
    },
    Route {
        id: RouteId::ListRollouts,
        method: HttpMethod::Get,
        path: "/v1/rollouts",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "listRollouts",
        summary: "Every rollout, newest first, with its state, wave and gate results.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ShowRollout,
        method: HttpMethod::Get,
        path: "/v1/rollouts/{id}",
        access: Access::Roles(EVERY_ROLE),
        operation_id: "showRollout",
        summary: "One rollout: per-wave progress, each gate's value against its threshold, approvals, the unsigned plan, placed devices and every transition.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ApproveRollout,
        method: HttpMethod::Post,
        path: "/v1/rollouts/{id}/approve",
        access: Access::Roles(APPROVERS),
        operation_id: "approveRollout",
        summary: "Add an approver's signature over the rollout's plan (`{keyid, sig}`, made where the key lives); 422 when it is not a valid signature by an approver key of the trust root.",
        request_body: Some(JSON),
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::StartRollout,
        method: HttpMethod::Post,
        path: "/v1/rollouts/{id}/start",
        access: Access::Roles(ROLLOUT_OPERATORS),
        operation_id: "startRollout",
        summary: "Start a rollout: 409 unless the plan carries the trust root's k distinct valid approvals.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::PauseRollout,
        method: HttpMethod::Post,
        path: "/v1/rollouts/{id}/pause",
        access: Access::Roles(ROLLOUT_OPERATORS),
        operation_id: "pauseRollout",
        summary: "Pause a running rollout: no more admissions or judgements until resumed.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::ResumeRollout,
        method: HttpMethod::Post,
        path: "/v1/rollouts/{id}/resume",
        access: Access::Roles(ROLLOUT_OPERATORS),
        operation_id: "resumeRollout",
        summary: "Resume a paused rollout; an admitted wave soaks again before it is judged.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::AbortRollout,
        method: HttpMethod::Post,
        path: "/v1/rollouts/{id}/abort",
        access: Access::Roles(ROLLOUT_OPERATORS),
        operation_id: "abortRollout",
        summary: "Abort a rollout; devices keep what they run.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::RollbackRollout,
        method: HttpMethod::Post,
        path: "/v1/rollouts/{id}/rollback",
        access: Access::Roles(ROLLOUT_OPERATORS),
        operation_id: "rollbackRollout",
        summary: "Roll a rollout back: every admitted device is sent to the plan's fallback bundle.",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
    Route {
        id: RouteId::AdvanceRollout,
        method: HttpMethod::Post,
        path: "/v1/rollouts/{id}/advance",
        access: Access::Roles(ROLLOUT_OPERATORS),
        operation_id: "advanceRollout",
        summary: "Start the next wave of a rollout whose current wave passed its gates (manual advance).",
        request_body: None,
        query: &[],
        success_status: 200,
        response_type: JSON,
    },
];

/// The route `method path` (with the path as matched, e.g. `/v1/models/{name}`).
pub fn find(method: &str, matched_path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|route| route.method.as_str() == method && route.path == matched_path)
}

/// The names of a path's parameters: `/v1/models/{name}` → `["name"]`.
pub fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_listed_once() {
        for (index, route) in ROUTES.iter().enumerate() {
            let duplicates = ROUTES
                .iter()
                .skip(index + 1)
                .filter(|other| {
                    other.id == route.id
                        || (other.method == route.method && other.path == route.path)
                        || other.operation_id == route.operation_id
                })
                .count();
            assert_eq!(duplicates, 0, "{} {} is listed twice", route.method.as_str(), route.path);
        }
    }

    #[test]
    fn only_documentation_and_liveness_are_public() {
        let public: Vec<_> = ROUTES
            .iter()
            .filter(|route| route.access == Access::Public)
            .map(|route| route.path)
            .collect();
        assert_eq!(public, ["/health", "/openapi.json"]);
        assert!(ROUTES.iter().all(|route| route.access.allows(UserRole::Admin)));
    }
}
