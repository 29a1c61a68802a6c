//! An adversarial API client against a real server, on SQLite and on PostgreSQL: no input
//! gets a 5xx or stops the server. Three parts:
//!
//! - hostile requests as data ([`hostile_cases`]): numbers outside their type or their bounds
//!   in bodies and query strings (negative, huge, `NaN`, `1e999`), date arithmetic that would
//!   overflow (`expires_in_hours` at `u32::MAX`), bodies that are too big, too deep, not JSON,
//!   NUL in strings and in paths, path traversal in ids, unicode, lying headers; each with the
//!   status it must get and, for the interesting ones, words the answer must contain;
//! - property tests over every JSON request body type of the API: arbitrary values shaped like
//!   the type, each numeric field at its extremes, wrong types and unknown fields, sent to the
//!   real server: the answer is never a 5xx;
//! - every path and query parameter of the route table, filled with hostile values.
//!
//! Afterwards the server still answers, no handler panicked (`outpost_http_panics_total` is
//! 0) and the honest requests made along the way worked. A panic that does happen (injected
//! with `OUTPOST_FAULT` into a real `outpost serve` process) is a 500, a log line and a metric;
//! a background task that panics is restarted.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use outpost_control::api::routes::{HttpMethod, ROUTES};
use outpost_control::store::users::UserRole;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

use crate::raw_http::{self, Answer, Request};
use crate::server::{Backend, Fleet, Site, SiteOptions, free_port, show, wait_until};

/// A server with a trust root, a pushed bundle and a user of every role.
struct Target {
    site: Site,
    tokens: std::collections::HashMap<UserRole, String>,
    digest: String,
    /// The pushed bundle file.
    bundle: std::path::PathBuf,
}

impl Target {
    fn start(backend: Backend, fleet: &Fleet) -> Target {
        let site = Site::start(
            backend,
            SiteOptions {
                trust_root: Some(fleet.path("root.json")),
                // The suite's own 401s must not get its honest requests limited.
                environment: vec![("OUTPOST__API__DENIED_BURST".into(), "1000000".into())],
                ..SiteOptions::default()
            },
        );
        site.outpost_ok(&["model", "push", &fleet.path_text("good.bundle")]);
        let bytes = std::fs::read(fleet.path("good.bundle")).expect("bundle");
        let digest = outpost_shared::sha256_digest(&bytes);
        let mut tokens = std::collections::HashMap::new();
        tokens.insert(UserRole::Admin, site.admin_token.clone());
        for role in [UserRole::Operator, UserRole::Approver, UserRole::Auditor] {
            tokens.insert(role, site.token_for(&format!("hostile-{role}"), role));
        }
        Target { site, tokens, digest, bundle: fleet.path("good.bundle") }
    }

    fn admin(&self) -> &str {
        &self.tokens[&UserRole::Admin]
    }

    fn send(&self, request: &Request) -> Answer {
        let address = self.site.server().api_address;
        self.site.runtime.block_on(raw_http::send(address, request)).unwrap_or_else(|error| {
            panic!("{} {}: no answer: {error}", request.method, request.target)
        })
    }

    fn panics(&self) -> u64 {
        self.site.server().metrics().http_panics.load(Ordering::Relaxed)
    }
}

/// One hostile request and what it must get.
struct Case {
    request: Request,
    status: u16,
    /// Words the answer's text must contain (the field named, the bound, …).
    mentions: &'static [&'static str],
}

fn case(request: Request, status: u16, mentions: &'static [&'static str]) -> Case {
    Case { request, status, mentions }
}

fn rollout(fields: &str) -> String {
    format!(r#"{{"bundle":"fraud@1.0.0","waves":[{{"size":"100%"}}]{fields}}}"#)
}

fn hostile_cases(target: &Target) -> Vec<Case> {
    let admin = target.admin();
    let operator = &target.tokens[&UserRole::Operator];
    let post = |path: &str, body: &str, token: &str| Request::post_json(path, body).bearer(token);
    let get = |path: &str, token: &str| Request::get(path).bearer(token);
    let huge = format!(r#"{{"name":"{}","role":"auditor"}}"#, "a".repeat(3 * 1024 * 1024));
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let long_segment = "x".repeat(20_000);
    vec![
        // Date arithmetic: the request that used to abort the whole server.
        case(
            post("/v1/rollouts", &rollout(r#","expires_in_hours":4294967295"#), operator),
            400,
            &["expires_in_hours", "87600"],
        ),
        case(
            post("/v1/rollouts", &rollout(r#","expires_in_hours":4294967296"#), operator),
            400,
            &["expires_in_hours"],
        ),
        case(
            post("/v1/rollouts", &rollout(r#","expires_in_hours":-1"#), operator),
            400,
            &["expires_in_hours"],
        ),
        case(
            post("/v1/rollouts", &rollout(r#","expires_in_hours":1e999"#), operator),
            400,
            &["not valid JSON"],
        ),
        case(
            post("/v1/rollouts", &rollout(r#","expires_in_hours":NaN"#), operator),
            400,
            &["not valid JSON"],
        ),
        case(
            post("/v1/rollouts", &rollout(r#","expires_in_hours":2.5"#), operator),
            400,
            &["expires_in_hours"],
        ),
        case(
            post(
                "/v1/rollouts",
                &rollout(r#","device_timeout_seconds":18446744073709551615"#),
                operator,
            ),
            400,
            &["device_timeout_seconds"],
        ),
        case(
            post(
                "/v1/rollouts",
                &rollout(r#","holdout_percent":1.7976931348623157e308"#),
                operator,
            ),
            400,
            &["holdout_percent"],
        ),
        case(post("/v1/rollouts", &rollout(r#","holdout_percent":-0.0"#), operator), 201, &[]),
        case(
            post(
                "/v1/rollouts",
                r#"{"bundle":"fraud@1.0.0","waves":[{"size":18446744073709551615},{"size":"100%"}]}"#,
                operator,
            ),
            400,
            &["size"],
        ),
        case(
            post(
                "/v1/rollouts",
                r#"{"bundle":"fraud@1.0.0","waves":[{"size":"1e999%"}]}"#,
                operator,
            ),
            400,
            &["size"],
        ),
        case(
            post("/v1/rollouts", r#"{"bundle":"fraud@1.0.0","waves":[{"size":"NaN%"}]}"#, operator),
            400,
            &["size"],
        ),
        case(
            post(
                "/v1/rollouts",
                r#"{"bundle":"fraud@1.0.0","waves":[{"size":"100%","soak_seconds":18446744073709551615}]}"#,
                operator,
            ),
            400,
            &["soak_seconds"],
        ),
        case(
            post(
                "/v1/rollouts",
                r#"{"bundle":"fraud@1.0.0","waves":[{"size":"100%","gates":{"max_drift_psi":1e308,"min_requests":18446744073709551615}}]}"#,
                operator,
            ),
            400,
            &["wave 0"],
        ),
        case(
            post(
                "/v1/rollouts",
                &rollout(
                    r#","health":{"watch_seconds":18446744073709551615,"min_requests":1,"max_error_rate":0.1,"max_p95_latency_ratio":2}"#,
                ),
                operator,
            ),
            400,
            &["watch_seconds"],
        ),
        case(
            post(
                "/v1/rollouts",
                &rollout(
                    r#","health":{"watch_seconds":1,"min_requests":1,"max_error_rate":0.1,"max_p95_latency_ratio":2,"shadow":{"requests":1,"seconds":1,"tolerance":1e300}}"#,
                ),
                operator,
            ),
            400,
            &["tolerance"],
        ),
        case(
            post("/v1/rollouts", &rollout(r#","id":"../../etc/passwd""#), operator),
            400,
            &["rollout id"],
        ),
        case(post("/v1/rollouts", &rollout(r#","cohort":"site=\u0000""#), operator), 400, &["NUL"]),
        case(
            post("/v1/rollouts", &rollout(r#","cohort":"ünïcødé=🦀""#), operator),
            400,
            &["cohort"],
        ),
        // Bodies that are not what they claim, too big, too deep.
        case(post("/v1/users", &huge, admin), 413, &[]),
        case(post("/v1/users", &deep, admin), 400, &["recursion limit"]),
        case(post("/v1/users", "", admin), 400, &["not valid JSON"]),
        case(post("/v1/users", "null", admin), 400, &[]),
        case(
            post(
                "/v1/users",
                r#"{"name":"dup","name":"dup2","role":"auditor","role":"root"}"#,
                admin,
            ),
            400,
            &[],
        ),
        case(
            Request {
                method: "POST".into(),
                target: "/v1/users".into(),
                headers: vec![("Content-Type".into(), "text/plain".into())],
                body: br#"{"name":"x","role":"auditor"}"#.to_vec(),
            }
            .bearer(admin),
            415,
            &["application/json"],
        ),
        case(post("/v1/users", r#"{"name":"nul\u0000l","role":"auditor"}"#, admin), 400, &["NUL"]),
        case(
            post("/v1/users", r#"{"name":"ünïcødé","role":"auditor"}"#, admin),
            400,
            &["user name"],
        ),
        case(
            post(
                "/v1/users",
                r#"{"name":"big-days","role":"auditor","expires_in_days":4294967295}"#,
                admin,
            ),
            400,
            &["expires_in_days"],
        ),
        case(
            post(
                "/v1/users",
                r#"{"name":"zero-days","role":"auditor","expires_in_days":0}"#,
                admin,
            ),
            400,
            &["lifetime"],
        ),
        case(
            post(
                "/v1/users",
                r#"{"name":"neg-days","role":"auditor","expires_in_days":-5}"#,
                admin,
            ),
            400,
            &["expires_in_days"],
        ),
        case(
            post("/v1/tokens/rotate", r#"{"grace_seconds":4294967295}"#, admin),
            400,
            &["grace_seconds"],
        ),
        case(
            post(
                "/v1/enrollments",
                r#"{"device_id":"pump-1","csr_pem":"x","valid_days":4294967295}"#,
                admin,
            ),
            400,
            &[],
        ),
        case(post("/v1/enrollments", r#"{"device_id":"../../ca","csr_pem":"x"}"#, admin), 400, &[]),
        case(
            post(
                "/v1/broker/certificates",
                &format!(r#"{{"kind":"broker","hosts":{},"csr_pem":"x"}}"#, json!(vec!["h"; 1000])),
                admin,
            ),
            400,
            &["hosts"],
        ),
        case(
            post("/v1/assign", r#"{"device":"pump-1","plan":"{}","wave":4294967295}"#, operator),
            422,
            &[],
        ),
        case(
            post("/v1/assign", r#"{"device":"pump-1","plan":"{}","wave":4294967296}"#, operator),
            400,
            &["wave"],
        ),
        case(
            post(
                "/v1/drift/retrain-requests",
                &format!(
                    r#"{{"model":"{}","from_ms":-9223372036854775808,"to_ms":9223372036854775807}}"#,
                    target.digest
                ),
                operator,
            ),
            400,
            &["from_ms"],
        ),
        case(
            post(
                "/v1/drift/retrain-requests",
                &format!(r#"{{"model":"{}","from_ms":0,"to_ms":253402300800000}}"#, target.digest),
                operator,
            ),
            400,
            &["to_ms", "9999"],
        ),
        case(post("/v1/audit/exports", r#"{"from_ms":-1}"#, admin), 400, &["from_ms"]),
        case(
            post("/v1/audit/exports", &format!(r#"{{"device":"{}"}}"#, "d".repeat(100_000)), admin),
            400,
            &["device filter"],
        ),
        case(
            post("/v1/audit/exports", r#"{"previous":"not a checkpoint \u00e9"}"#, admin),
            400,
            &[],
        ),
        case(
            post("/v1/drift/alerts/99999999999999999999", r#"{"action":"acknowledge"}"#, operator),
            400,
            &["alert id"],
        ),
        case(post("/v1/drift/alerts/-1", r#"{"action":"acknowledge"}"#, operator), 404, &[]),
        case(
            post(
                "/v1/drift/alerts/1",
                &format!(r#"{{"action":"annotate","note":"{}"}}"#, "n".repeat(5000)),
                operator,
            ),
            400,
            &["note"],
        ),
        // Numbers in query strings.
        case(get("/v1/audit/events?limit=0", admin), 400, &["limit"]),
        case(get("/v1/audit/events?limit=-1", admin), 400, &["limit"]),
        case(get("/v1/audit/events?limit=99999999999999999999", admin), 400, &["limit"]),
        case(get("/v1/audit/events?limit=1e3", admin), 400, &["limit"]),
        case(get("/v1/audit/events?limit=NaN", admin), 400, &["limit"]),
        case(get("/v1/audit/events?from_ms=-9223372036854775808", admin), 400, &["from_ms"]),
        case(get("/v1/audit/events?to_ms=9223372036854775807", admin), 400, &["to_ms"]),
        case(get("/v1/audit/events?actor=%00", admin), 400, &["control character"]),
        case(get("/v1/audit/events?actor=%F0%9F%A6%80", admin), 200, &[]),
        case(
            get(&format!("/v1/audit/events?device={}", "d".repeat(4000)), admin),
            400,
            &["device filter"],
        ),
        case(get("/v1/aggregates?from_ms=NaN", admin), 400, &["from_ms"]),
        case(
            get("/v1/aggregates?model=sha256:x&from_ms=9223372036854775807", admin),
            400,
            &["from_ms"],
        ),
        case(get("/v1/aggregates?model=sha256:x&to_ms=-1", admin), 400, &["to_ms"]),
        case(get("/v1/drift?from_ms=-1&to_ms=-2", admin), 400, &["from_ms"]),
        case(
            get(
                &format!("/v1/drift?model={}&from_ms=0&to_ms=253402300799999", target.digest),
                admin,
            ),
            200,
            &[],
        ),
        case(get("/v1/drift/overview?from_ms=1e20", admin), 400, &["from_ms"]),
        case(get("/v1/drift/alerts?limit=4294967296", admin), 400, &["limit"]),
        case(get("/v1/drift/alerts?limit=10001", admin), 400, &["limit"]),
        case(get("/v1/devices?online=maybe", admin), 400, &["online"]),
        case(get("/v1/devices?selector=site%3D%00", admin), 400, &["control character"]),
        // Ids: NUL, traversal, unicode, very long.
        case(get("/v1/devices/%00", admin), 400, &["control character"]),
        case(get("/v1/devices/..%2F..%2Fetc%2Fpasswd", admin), 404, &[]),
        case(get("/v1/models/%2e%2e/versions/%2e%2e", admin), 404, &[]),
        case(get("/v1/rollouts/..%2F..%2F..%2Fetc%2Fshadow", admin), 404, &[]),
        case(get("/v1/rollouts/%E2%80%AE%F0%9F%A6%80", admin), 404, &[]),
        case(get(&format!("/v1/devices/{long_segment}"), admin), 404, &[]),
        case(post(&format!("/v1/devices/{long_segment}/samples"), "{}", operator), 400, &[]),
        case(post("/v1/tokens/..%2F..%2F/revoke", "{}", admin), 400, &["token id"]),
        case(post("/v1/tokens/0000000000000000/revoke", "{}", admin), 404, &[]),
        case(post("/v1/users/%00/remove", "{}", admin), 400, &["control character"]),
        case(post("/v1/users/no-such-user/role", r#"{"role":"admin"}"#, admin), 404, &[]),
        case(
            post("/v1/users/hostile-operator/role", r#"{"role":"root"}"#, admin),
            400,
            &["unknown variant"],
        ),
        // Credentials that are not.
        case(get("/v1/whoami", "").header("Authorization", "Bearer"), 401, &[]),
        case(get("/v1/whoami", &"x".repeat(16 * 1024)), 401, &["unknown"]),
        case(
            Request::get("/v1/whoami").header("Authorization", "Basic YWRtaW46YWRtaW4="),
            401,
            &["Bearer"],
        ),
        case(
            Request::get("/v1/whoami").header("Authorization", "Bearer outpost_\u{00e9}\u{00e9}"),
            401,
            &[],
        ),
    ]
}

fn check_hostile_cases(target: &Target) {
    for case in hostile_cases(target) {
        let answer = target.send(&case.request);
        let what = format!(
            "{} {}",
            case.request.method,
            case.request.target.chars().take(120).collect::<String>()
        );
        assert_eq!(answer.status, case.status, "{what}: {}", answer.text());
        let text = answer.text();
        for word in case.mentions {
            assert!(text.contains(word), "{what}: the answer does not mention {word:?}: {text}");
        }
        if answer.status >= 400 {
            assert!(
                answer.json()["code"].is_string(),
                "{what}: an error body {{error, code}}: {text}"
            );
        }
    }
}

/// Values for a JSON number field: each type's extremes and ordinary values.
fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => prop_oneof![
            Just(0u64), Just(1), Just(u64::from(u32::MAX)), Just(u64::from(u32::MAX) + 1),
            Just(i64::MAX as u64), Just(u64::MAX), Just(253_402_300_799_999), Just(253_402_300_800_000),
        ].prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        2 => (0u64..2000).prop_map(Value::from),
        1 => prop_oneof![Just(i64::MIN), Just(-1i64)].prop_map(Value::from),
        1 => prop_oneof![
            Just(f64::MAX), Just(f64::MIN), Just(f64::MIN_POSITIVE), Just(-0.0), Just(0.5),
            Just(1e-300), Just(100.0), Just(50.0), Just(1.0)
        ].prop_map(Value::from),
        1 => any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(Value::from),
    ]
    .boxed()
}

/// Values for a JSON string field: hostile text and, mostly, `good` (values that get further).
fn text(good: Vec<String>) -> BoxedStrategy<Value> {
    let good = proptest::sample::select(good);
    prop_oneof![
        3 => good.prop_map(Value::from),
        1 => ".{0,40}".prop_map(Value::from),
        1 => prop_oneof![
            Just(String::new()), Just("\u{0}".to_string()), Just("../../etc/passwd".to_string()),
            Just("🦀\u{202e}".to_string()), Just("a".repeat(70_000)), Just(" ".to_string()),
            Just("sha256:".to_string()), Just("name@".to_string()), Just("1e999%".to_string()),
        ].prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value of another shape (for type confusion).
fn wrong() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        Just(json!([1, "two", null])),
        Just(json!({"nested": {"deeper": [1]}})),
        Just(Value::from("text")),
        Just(Value::from(-1)),
    ]
    .boxed()
}

/// A field: absent, its kind of value, or the wrong kind.
fn field(
    name: &'static str,
    value: BoxedStrategy<Value>,
) -> BoxedStrategy<(String, Option<Value>)> {
    prop_oneof![
        1 => Just(None),
        6 => value.prop_map(Some),
        1 => wrong().prop_map(Some),
    ]
    .prop_map(move |value| (name.to_string(), value))
    .boxed()
}

/// An object of `fields`, sometimes with an unknown field, sometimes not an object at all.
fn object(fields: Vec<BoxedStrategy<(String, Option<Value>)>>) -> BoxedStrategy<Value> {
    let built = (fields, any::<bool>(), 0u8..20).prop_map(|(fields, extra, shape)| {
        let mut object = serde_json::Map::new();
        for (name, value) in fields {
            if let Some(value) = value {
                object.insert(name, value);
            }
        }
        if extra && shape == 0 {
            object.insert("unexpected".into(), json!(1));
        }
        Value::Object(object)
    });
    prop_oneof![12 => built, 1 => wrong()].boxed()
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

fn wave() -> BoxedStrategy<Value> {
    let size = prop_oneof![
        number(),
        text(strings(&["100%", "50%", "1", "0%", "-5%", "NaN%", "100.0000001%", "2"])),
    ]
    .boxed();
    let gates = object(vec![
        field("min_devices_reporting", number()),
        field("max_install_failure_rate", number()),
        field("max_error_rate", number()),
        field("max_p95_latency_ratio", number()),
        field("max_output_psi", number()),
        field("max_drift_psi", number()),
        field("max_prediction_drift_psi", number()),
        field("min_shadow_agreement", number()),
        field("min_requests", number()),
    ]);
    object(vec![field("size", size), field("soak_seconds", number()), field("gates", gates)])
}

fn rollout_spec(digest: &str) -> BoxedStrategy<Value> {
    let shadow = object(vec![
        field("requests", number()),
        field("seconds", number()),
        field("tolerance", number()),
    ]);
    let health = object(vec![
        field("watch_seconds", number()),
        field("min_requests", number()),
        field("max_error_rate", number()),
        field("max_p95_latency_ratio", number()),
        field("max_output_psi", number()),
        field("shadow", shadow),
    ]);
    // Mostly a valid bundle and a last wave of 100%, so the numbers reach the arithmetic.
    let bundle = prop_oneof![
        4 => Just(Value::from("fraud@1.0.0")),
        1 => Just(Value::from(digest.to_string())),
        1 => text(strings(&["fraud@9.9.9", "nothing"])),
    ]
    .boxed();
    let waves = prop_oneof![
        3 => (proptest::collection::vec(wave(), 0..3), number()).prop_map(|(mut waves, soak)| {
            waves.push(json!({"size": "100%", "soak_seconds": soak}));
            Value::Array(waves)
        }),
        1 => proptest::collection::vec(wave(), 0..4).prop_map(Value::Array),
    ]
    .boxed();
    object(vec![
        field("id", text(strings(&["prop-rollout", "r.1_x-2"]))),
        field("bundle", bundle),
        field("fallback", text(strings(&["fraud@1.0.0"]))),
        field("cohort", text(strings(&["*", "site=berlin", "hw=rpi4,site=x"]))),
        field("waves", waves),
        field("holdout_percent", number()),
        field("health", health),
        field("expires_in_hours", number()),
        field("advance", text(strings(&["auto", "manual"]))),
        field("on_gate_fail", text(strings(&["pause", "rollback"]))),
        field("device_timeout_seconds", number()),
    ])
}

fn role() -> BoxedStrategy<Value> {
    text(strings(&["admin", "operator", "approver", "auditor"]))
}

fn csr() -> String {
    let (_key, csr) = outpost_control::ca::new_key_and_csr("prop-device").expect("CSR");
    csr
}

/// Every JSON body type of the API, by route: (path, strategy).
fn body_strategies(target: &Target) -> Vec<(&'static str, String, BoxedStrategy<Value>)> {
    let digest = target.digest.clone();
    let csr = csr();
    let names = strings(&["prop-user", "prop.user_2", "hostile-auditor", "root-admin"]);
    vec![
        (
            "createUser",
            "/v1/users".into(),
            object(vec![
                field("name", text(names.clone())),
                field("role", role()),
                field("expires_in_days", number()),
            ]),
        ),
        (
            "setUserRole",
            "/v1/users/hostile-approver/role".into(),
            object(vec![field("role", role())]),
        ),
        (
            "issueUserToken",
            "/v1/users/hostile-auditor/tokens".into(),
            object(vec![field("expires_in_days", number())]),
        ),
        ("createRollout", "/v1/rollouts".into(), rollout_spec(&digest)),
        (
            "approveRollout",
            "/v1/rollouts/prop-rollout/approve".into(),
            object(vec![
                field("keyid", text(strings(&["ed25519:0123456789abcdef0123456789abcdef"]))),
                field("sig", text(strings(&["AAAA", "not base64"]))),
            ]),
        ),
        (
            "reviewDriftAlert",
            "/v1/drift/alerts/1".into(),
            object(vec![
                field("action", text(strings(&["acknowledge", "expected", "annotate"]))),
                field("note", text(strings(&["a note"]))),
            ]),
        ),
        (
            "requestRetrain",
            "/v1/drift/retrain-requests".into(),
            object(vec![
                field("model", text(vec![digest.clone()])),
                field("from_ms", number()),
                field("to_ms", number()),
                field("note", text(strings(&["retrain"]))),
            ]),
        ),
        (
            "exportAudit",
            "/v1/audit/exports".into(),
            object(vec![
                field("from_ms", number()),
                field("to_ms", number()),
                field("actor", text(strings(&["root-admin"]))),
                field("device", text(strings(&["pump-1"]))),
                field("model", text(strings(&["fraud@1.0.0"]))),
                field("previous", text(strings(&["outpost-audit/x\n1\nAAAA\n\n— x y\n"]))),
            ]),
        ),
        (
            "enrollDevice",
            "/v1/enrollments".into(),
            object(vec![
                field("device_id", text(strings(&["prop-device"]))),
                field(
                    "tags",
                    prop_oneof![
                        proptest::collection::btree_map(
                            "[a-z]{1,8}|.{0,70}",
                            "[a-z0-9]{1,8}|.{0,70}",
                            0..5
                        )
                        .prop_map(|tags| json!(tags)),
                        Just(json!(
                            (0..200).map(|i| (format!("k{i}"), "v")).collect::<BTreeMap<_, _>>()
                        )),
                    ]
                    .boxed(),
                ),
                field("csr_pem", text(vec![csr.clone()])),
                field("valid_days", number()),
                field(
                    "replace",
                    prop_oneof![Just(Value::from(true)), Just(Value::from(false))].boxed(),
                ),
            ]),
        ),
        (
            "issueBrokerCertificate",
            "/v1/broker/certificates".into(),
            object(vec![
                field("kind", text(strings(&["broker", "control"]))),
                field(
                    "hosts",
                    proptest::collection::vec(
                        text(strings(&["broker.example", "127.0.0.1"])),
                        0..4,
                    )
                    .prop_map(Value::Array)
                    .boxed(),
                ),
                field("instance", text(strings(&["ctl-1"]))),
                field("csr_pem", text(vec![csr])),
                field("valid_days", number()),
            ]),
        ),
        (
            "assign",
            "/v1/assign".into(),
            object(vec![
                field("device", text(strings(&["pump-1"]))),
                field(
                    "plan",
                    text(strings(&["{\"payloadType\":\"x\",\"payload\":\"\",\"signatures\":[]}"])),
                ),
                field("wave", number()),
                field(
                    "revert",
                    prop_oneof![Just(Value::from(true)), Just(Value::from(false))].boxed(),
                ),
            ]),
        ),
    ]
}

fn run_property(
    target: &Target,
    name: &str,
    cases: u32,
    strategy: BoxedStrategy<Value>,
    send: impl Fn(&Value) -> Answer,
) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let result = runner.run(&strategy, |body| {
        let answer = send(&body);
        if answer.status >= 500 || target.panics() > 0 {
            return Err(TestCaseError::fail(format!(
                "{name} answered {} to {body}: {}",
                answer.status,
                answer.text()
            )));
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{name}: {error}");
    }
}

fn check_body_properties(target: &Target, cases: u32) {
    for (operation, path, strategy) in body_strategies(target) {
        let token = target.admin().to_string();
        run_property(target, operation, cases, strategy, |body| {
            target.send(&Request::post_json(&path, body.to_string()).bearer(&token))
        });
    }
    // Bundle pushes take raw bytes: arbitrary ones, and the real bundle cut or with a byte
    // changed.
    let bundle = std::fs::read(&target.bundle).expect("bundle");
    let length = bundle.len();
    let pushed = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096),
        (0..length).prop_map(move |cut| bundle[..cut].to_vec()),
        (0..length, any::<u8>()).prop_map({
            let bundle = std::fs::read(&target.bundle).expect("bundle");
            move |(at, byte)| {
                let mut changed = bundle.clone();
                changed[at] ^= byte.max(1);
                changed
            }
        }),
    ]
    .prop_map(|bytes| Value::from(hex::encode(bytes)))
    .boxed();
    let operator = target.tokens[&UserRole::Operator].clone();
    run_property(target, "pushModel", cases, pushed, |bytes| {
        let body = hex::decode(bytes.as_str().unwrap_or_default()).expect("hex");
        let request = Request {
            method: "POST".into(),
            target: "/v1/models".into(),
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body,
        };
        target.send(&request.bearer(&operator))
    });
    // Rotation replaces the caller's token: a fresh user per case.
    let fresh = std::cell::Cell::new(0);
    let rotate = object(vec![field("expires_in_days", number()), field("grace_seconds", number())]);
    run_property(target, "rotateToken", cases, rotate, |body| {
        fresh.set(fresh.get() + 1);
        let token = target.site.token_for(&format!("rotator-{}", fresh.get()), UserRole::Auditor);
        target.send(&Request::post_json("/v1/tokens/rotate", body.to_string()).bearer(&token))
    });
}

/// A query-string value of `schema_type`, percent-encoded.
fn query_value(schema_type: &str) -> BoxedStrategy<String> {
    let numbers = prop_oneof![
        Just("-1".to_string()),
        Just("NaN".to_string()),
        Just("1e999".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("18446744073709551616".to_string()),
        Just("0x10".to_string()),
        Just("".to_string()),
        Just("0".to_string()),
        Just("253402300799999".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    let texts = prop_oneof![
        Just("%00".to_string()),
        Just("%F0%9F%A6%80".to_string()),
        Just("..%2F..%2F".to_string()),
        Just("a".repeat(3000)),
        Just("%zz".to_string()),
        Just("key%3Dvalue".to_string()),
        "[a-z=*,]{0,20}".prop_map(|text| text),
    ];
    match schema_type {
        "integer" => prop_oneof![3 => numbers, 1 => texts].boxed(),
        "boolean" => {
            prop_oneof![Just("true".to_string()), Just("maybe".to_string()), Just("1".to_string())]
                .boxed()
        }
        _ => prop_oneof![3 => texts, 1 => numbers].boxed(),
    }
}

fn check_query_properties(target: &Target, cases: u32) {
    for route in ROUTES.iter().filter(|route| !route.query.is_empty() && !route.path.contains('{'))
    {
        let parameters: Vec<BoxedStrategy<(String, Option<String>)>> = route
            .query
            .iter()
            .map(|parameter| {
                let name = parameter.name.to_string();
                proptest::option::of(query_value(parameter.schema_type))
                    .prop_map(move |value| (name.clone(), value))
                    .boxed()
            })
            .collect();
        let strategy = parameters
            .prop_map(|pairs| {
                let query: Vec<String> = pairs
                    .into_iter()
                    .filter_map(|(name, value)| value.map(|value| format!("{name}={value}")))
                    .collect();
                Value::from(query.join("&"))
            })
            .boxed();
        let admin = target.admin().to_string();
        run_property(target, route.operation_id, cases, strategy, |query| {
            let target_path = format!("{}?{}", route.path, query.as_str().unwrap_or_default());
            target.send(&Request::get(&target_path).bearer(&admin))
        });
    }
}

/// Every route with path parameters, each filled with hostile segments: never a 5xx.
fn check_path_parameters(target: &Target) {
    let segments = [
        "%00",
        "..",
        "..%2F..%2Fetc%2Fpasswd",
        "%F0%9F%A6%80",
        "%E2%80%AE",
        "%25",
        "-1",
        "99999999999999999999",
        "0",
        "a%0Ab",
        &"z".repeat(5000),
    ];
    for route in ROUTES.iter().filter(|route| route.path.contains('{')) {
        for segment in segments {
            let path: String = route
                .path
                .split('/')
                .map(|part| if part.starts_with('{') { segment } else { part })
                .collect::<Vec<_>>()
                .join("/");
            let request = match route.method {
                HttpMethod::Get => Request::get(&path),
                HttpMethod::Post => Request::post_json(&path, "{}"),
            }
            .bearer(target.admin());
            let answer = target.send(&request);
            assert!(
                answer.status < 500,
                "{} {path}: {} {}",
                route.method.as_str(),
                answer.status,
                answer.text()
            );
        }
    }
}

fn suite(backend: Backend, fleet: &Fleet, cases: u32) {
    let target = Target::start(backend, fleet);
    check_hostile_cases(&target);
    check_path_parameters(&target);
    check_body_properties(&target, cases);
    check_query_properties(&target, cases);
    // Still serving, no handler panicked, and honest requests work.
    assert_eq!(target.panics(), 0, "a handler panicked");
    let health = target.send(&Request::get("/health"));
    assert_eq!(health.status, 200);
    let whoami = target.send(&Request::get("/v1/whoami").bearer(target.admin()));
    assert_eq!(whoami.json()["name"], "root-admin", "{}", whoami.text());
    let listed = target.send(&Request::get("/v1/rollouts").bearer(target.admin()));
    assert_eq!(listed.status, 200, "{}", listed.text());
}

#[test]
fn hostile_input_never_gets_a_5xx_or_stops_the_server() {
    let fleet = Fleet::new();
    suite(Backend::Sqlite, &fleet, 48);
    suite(Backend::Postgres, &fleet, 16);
}

/// `outpost serve` as a process with panics injected into two handlers and a background task.
#[test]
fn a_panic_is_a_500_a_log_line_and_a_metric_and_the_server_keeps_serving() {
    let directory = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = directory.path().join("control.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[broker]\nembedded_listen = \"127.0.0.1:0\"\n[drift]\nevaluate_interval_seconds = 0.2\n",
            directory.path().join("state").display()
        ),
    )
    .expect("config");
    let made = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["users", "add", "boss", "--role", "admin", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(made.status.success(), "{}", show(&made));
    let token = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let log = directory.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("OUTPOST_FAULT", "panic:api:whoami,panic:api:createUser,panic:task:drift_monitor")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn outpost serve");
    let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let send = |request: Request| runtime.block_on(raw_http::send(address, &request));
    wait_until("the API to answer", Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("outpost serve exited early with {status}");
        }
        send(Request::get("/health")).is_ok_and(|answer| answer.status == 200)
    });

    let whoami = send(Request::get("/v1/whoami").bearer(&token)).expect("answer");
    assert_eq!(whoami.status, 500, "{}", whoami.text());
    assert_eq!(whoami.json()["code"], "internal");
    assert!(!whoami.text().contains("injected"), "no detail to the client: {}", whoami.text());
    let create =
        send(Request::post_json("/v1/users", r#"{"name":"x","role":"auditor"}"#).bearer(&token))
            .expect("answer");
    assert_eq!(create.status, 500);
    // The server lives on: other routes answer, the panicking ones keep answering 500.
    assert_eq!(send(Request::get("/health")).expect("health").status, 200);
    let users = send(Request::get("/v1/users").bearer(&token)).expect("users");
    assert_eq!(users.status, 200, "{}", users.text());
    assert_eq!(send(Request::get("/v1/whoami").bearer(&token)).expect("again").status, 500);
    // The panicking mutating request is still audited, with its status.
    let mut events = Value::Null;
    wait_until("the panicked request in the audit log", Duration::from_secs(30), || {
        events = send(Request::get("/v1/audit/events?action=user.create").bearer(&token))
            .expect("events")
            .json();
        events["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["outcome"] == "500"))
    });
    // Metrics: two handler panics, the drift monitor restarted once, every panic counted.
    let mut metrics = String::new();
    wait_until("the drift monitor restart in the metrics", Duration::from_secs(30), || {
        metrics = send(Request::get("/metrics").bearer(&token)).expect("metrics").text();
        metrics.contains("outpost_task_restarts_total{task=\"drift_monitor\"} 1")
    });
    assert!(metrics.contains("outpost_http_panics_total 3"), "{metrics}");
    let panics: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("outpost_panics_total "))
        .and_then(|value| value.parse().ok())
        .expect("outpost_panics_total");
    assert_eq!(panics, 4, "{metrics}");
    assert!(child.try_wait().expect("status").is_none(), "the process is alive");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.contains("panic") && log.contains("injected fault: the handler of whoami panics"),
        "{log}"
    );
    assert!(
        log.contains("background task panicked; restarting") && log.contains("drift_monitor"),
        "{log}"
    );
}

/// The release profile (which builds `outpost serve`) unwinds; the device profile aborts.
#[test]
fn the_server_is_built_to_unwind_and_devices_to_abort() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .expect("workspace manifest");
    let manifest: toml::Table = toml::from_str(&manifest).expect("TOML");
    let profile = |name: &str| manifest["profile"][name].as_table().cloned().unwrap_or_default();
    assert_eq!(profile("release").get("panic").and_then(|v| v.as_str()), Some("unwind"));
    assert_eq!(profile("device").get("panic").and_then(|v| v.as_str()), Some("abort"));
}
