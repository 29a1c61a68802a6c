//! The authorization matrix: every route of the route table × every role, plus no token and an
//! unknown token. Allowed calls are not refused for authorization; denied ones answer 401 (no
//! or unknown token) or 403 (wrong role) and each is recorded in the audit log as
//! `auth.denied`. The OpenAPI document lists exactly the table's routes and roles.

use outpost_control::api::client::{ApiClient, ClientError};
use outpost_control::api::routes::{Access, HttpMethod, ROUTES, Route};
use outpost_control::store::users::UserRole;
use serde_json::json;

use crate::server::{Backend, Site, SiteOptions};

/// The status of calling `route` with `token` (a 2xx counts as 200).
fn call(site: &Site, route: &Route, token: Option<&str>, request_number: usize) -> u16 {
    let client = ApiClient::new(site.url(), token.map(str::to_string), None).expect("client");
    let path = route
        .path
        .replace("{name}", "no-such-model")
        .replace("{version}", "1.0")
        .replace("{device}", "no-such-device")
        .replace("{id}", "0000000000000000");
    let result = match (route.method, route.path) {
        (HttpMethod::Get, _) => client.get_json(&path, &[]),
        (HttpMethod::Post, "/v1/users") => client.post_json(
            &path,
            &json!({ "name": format!("made-{request_number}"), "role": "auditor" }),
        ),
        (HttpMethod::Post, _) => {
            client.post_bytes(&path, "application/octet-stream", b"not a bundle")
        }
    };
    match result {
        Ok(_) => 200,
        Err(ClientError::Refused { status, .. }) => status,
        Err(other) => panic!("{} {}: {other}", route.method.as_str(), route.path),
    }
}

#[test]
fn every_route_enforces_its_roles_and_denials_are_audited() {
    // Every denial here comes from one address; the limit on denied requests is not under test.
    let site = Site::start(
        Backend::Sqlite,
        SiteOptions {
            environment: vec![("OUTPOST__API__DENIED_BURST".into(), "1000000".into())],
            ..SiteOptions::default()
        },
    );
    let mut callers: Vec<(String, Option<UserRole>, Option<String>)> = vec![
        ("anonymous".into(), None, None),
        ("unknown token".into(), None, Some("outpost_not-a-real-token".into())),
    ];
    for role in UserRole::ALL {
        let name = format!("user-{role}");
        let token = site.token_for(&name, role);
        callers.push((name, Some(role), Some(token)));
    }
    let mut expected_denials = Vec::new();
    let mut request_number = 0;
    for route in ROUTES {
        for (caller, role, token) in &callers {
            request_number += 1;
            let status = call(&site, route, token.as_deref(), request_number);
            let what = format!("{caller} → {} {}", route.method.as_str(), route.path);
            let allowed = match (route.access, role) {
                (Access::Public, _) => true,
                (Access::Roles(_), None) => false,
                (Access::Roles(_), Some(role)) => route.access.allows(*role),
            };
            if allowed {
                assert!(status != 401 && status != 403, "{what}: allowed but got {status}");
                assert_ne!(status, 405, "{what}: the router does not serve the table's method");
                if !route.path.contains('{') && route.method == HttpMethod::Get {
                    assert_eq!(status, 200, "{what}");
                }
            } else {
                let expected = if role.is_none() { 401 } else { 403 };
                assert_eq!(status, expected, "{what}");
                let actor = if role.is_some() { caller.clone() } else { "anonymous".into() };
                expected_denials.push((
                    actor,
                    format!("{} {}", route.method.as_str(), route.path),
                    expected,
                ));
            }
        }
    }
    let mut recorded: Vec<(String, String, u16)> = site
        .runtime
        .block_on(site.store().audit_events(Some("auth.denied"), 1000))
        .expect("audit events")
        .into_iter()
        .map(|event| {
            assert!(!event.reason.is_empty());
            (event.actor, event.subject, event.outcome.parse().expect("status"))
        })
        .collect();
    recorded.sort();
    expected_denials.sort();
    assert_eq!(recorded, expected_denials, "every denial is recorded once, with actor and route");
}

#[test]
fn the_openapi_document_lists_every_route_with_its_roles() {
    let site = Site::start(Backend::Sqlite, SiteOptions::default());
    let client = ApiClient::new(site.url(), None, None).expect("client");
    let document = client.get_json("/openapi.json", &[]).expect("openapi");
    assert_eq!(document["openapi"], "3.0.3");
    let paths = document["paths"].as_object().expect("paths");
    let operations: usize =
        paths.values().map(|methods| methods.as_object().map_or(0, |m| m.len())).sum();
    assert_eq!(operations, ROUTES.len(), "no extra operations");
    for route in ROUTES {
        let operation = &document["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        assert_eq!(operation["operationId"], route.operation_id, "{}", route.path);
        let roles: Vec<String> = match route.access {
            Access::Public => vec!["public".into()],
            Access::Roles(roles) => roles.iter().map(|role| role.to_string()).collect(),
        };
        assert_eq!(operation["x-outpost-roles"], json!(roles), "{}", route.path);
    }
}
