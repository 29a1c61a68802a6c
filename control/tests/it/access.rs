//! Access against a real server: tokens expire (`outpost serve` under a clock two days
//! ahead), are revoked (also while a client keeps using one from several threads) and rotated
//! (with and without a grace period, once); users are removed (their tokens with them) and
//! change role; the last admin stays; every change is audited. Denied requests are limited per
//! source (a flood from one address, and from hundreds of loopback addresses) and recorded as
//! counted records whose counts add up to every request, in a log that verifies offline. On
//! SQLite and PostgreSQL where the database decides (revocation, removal, the last admin).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use outpost_control::api::client::{ApiClient, ClientError};
use outpost_control::store::users::UserRole;
use serde_json::{Value, json};

use crate::raw_http::{Connection, Request};
use crate::server::{Backend, Site, SiteOptions, free_port, show, wait_until};

fn client(site: &Site, token: &str) -> ApiClient {
    ApiClient::new(site.url(), Some(token.to_string()), None).expect("client")
}

/// The status of `GET /v1/whoami` with `token` (200, or the refusal's status).
fn whoami(site: &Site, token: &str) -> (u16, String) {
    match client(site, token).get_json("/v1/whoami", &[]) {
        Ok(answer) => (200, answer.to_string()),
        Err(ClientError::Refused { status, message, .. }) => (status, message),
        Err(other) => panic!("whoami: {other}"),
    }
}

fn actions(site: &Site, action: &str) -> Vec<Value> {
    let answer = client(site, &site.admin_token)
        .get_json("/v1/audit/events", &[("action", action.to_string()), ("limit", "1000".into())])
        .expect("audit events");
    answer["events"].as_array().cloned().unwrap_or_default()
}

fn token_line(output: &str) -> String {
    let token = output.trim().to_string();
    assert!(token.starts_with("outpost_") && !token.contains('\n'), "only the token: {output}");
    token
}

fn access_site(backend: Backend) -> Site {
    Site::start(
        backend,
        SiteOptions {
            // This suite's own 401s must not get its requests limited; flood tests below
            // use the default limits.
            environment: vec![("OUTPOST__API__DENIED_BURST".into(), "1000000".into())],
            ..SiteOptions::default()
        },
    )
}

fn users_tokens_and_roles(backend: Backend) {
    let site = access_site(backend);
    // Users and roles through the CLI.
    let alice = token_line(&site.outpost_ok(&["users", "add", "alice", "--role", "operator"]));
    let bob = token_line(&site.outpost_ok(&[
        "users",
        "add",
        "bob",
        "--role",
        "auditor",
        "--expires-in-days",
        "7",
    ]));
    let (status, me) = whoami(&site, &bob);
    assert_eq!(status, 200, "{me}");
    let me: Value = serde_json::from_str(&me).expect("json");
    let expires = me["token"]["expires_ms"].as_i64().expect("expiry");
    let week = 7 * 86_400_000;
    let now = outpost_control::store::now_ms();
    assert!((now + week - 60_000..=now + week + 60_000).contains(&expires), "{me}");
    let refused = site.outpost_refused(&[
        "users",
        "add",
        "carol",
        "--role",
        "auditor",
        "--expires-in-days",
        "400",
    ]);
    assert!(
        refused.contains("(400)") && refused.contains("api.max_token_lifetime_days"),
        "{refused}"
    );

    // Rotation without grace: the old token stops at once, the new one works.
    let rotated = site.outpost_as(&alice, &["tokens", "rotate"]);
    assert!(rotated.status.success(), "{}", show(&rotated));
    let alice_2 = token_line(&String::from_utf8_lossy(&rotated.stdout));
    let (status, message) = whoami(&site, &alice);
    assert_eq!(status, 401);
    assert!(message.contains("was revoked"), "{message}");
    assert_eq!(whoami(&site, &alice_2).0, 200);
    // With grace: both work until it ends; a token rotates once; an admin can end the grace.
    let graced = site.outpost_as(&alice_2, &["tokens", "rotate", "--grace-seconds", "3600"]);
    assert!(graced.status.success(), "{}", show(&graced));
    let alice_3 = token_line(&String::from_utf8_lossy(&graced.stdout));
    assert_eq!(whoami(&site, &alice_2).0, 200, "still valid during the grace");
    assert_eq!(whoami(&site, &alice_3).0, 200);
    let again = site.outpost_as(&alice_2, &["tokens", "rotate"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("rotated or revoked already"),
        "{}",
        show(&again)
    );
    let listed = site.outpost_json(&["tokens", "list", "alice"]);
    let tokens = listed["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 3, "{listed}");
    let graced_id = tokens
        .iter()
        .find(|token| token["state"] == "active" && token["revoked_ms"].is_i64())
        .and_then(|token| token["id"].as_str())
        .expect("the token in its grace")
        .to_string();
    let revoked = site.outpost_ok(&["tokens", "revoke", &graced_id]);
    assert!(revoked.contains(&format!("revoked token {graced_id} of user alice")), "{revoked}");
    assert_eq!(whoami(&site, &alice_2).0, 401, "revoked before its grace ended");
    assert_eq!(whoami(&site, &alice_3).0, 200);
    assert!(site.outpost_ok(&["tokens", "revoke", &graced_id]).contains("revoked already"));
    let table = site.outpost_ok(&["tokens", "list", "alice"]);
    assert!(table.contains("revoked") && table.contains("active"), "{table}");

    // An admin issues another token; the user keeps working with it.
    let issued =
        token_line(&site.outpost_ok(&["tokens", "issue", "bob", "--expires-in-days", "30"]));
    assert_eq!(whoami(&site, &issued).0, 200);

    // Role change: alice is an auditor now and may no longer create rollouts.
    let changed = site.outpost_ok(&["users", "set-role", "alice", "auditor"]);
    assert!(changed.contains("operator → auditor"), "{changed}");
    let denied = client(&site, &alice_3).post_json("/v1/rollouts", &json!({}));
    assert!(matches!(denied, Err(ClientError::Refused { status: 403, .. })), "{denied:?}");
    // The last admin can be neither demoted nor removed.
    let demote = site.outpost_refused(&["users", "set-role", "root-admin", "operator"]);
    assert!(demote.contains("(409)") && demote.contains("no admin"), "{demote}");
    let remove = site.outpost_refused(&["users", "remove", "root-admin"]);
    assert!(remove.contains("(409)") && remove.contains("no admin"), "{remove}");

    // Removing bob ends both his tokens at once; his name can be given again, fresh.
    let removed = site.outpost_ok(&["users", "remove", "bob"]);
    assert!(removed.contains("2 valid token(s) revoked"), "{removed}");
    for token in [&bob, &issued] {
        let (status, message) = whoami(&site, token);
        assert_eq!(status, 401);
        assert!(message.contains("removed user"), "{message}");
    }
    assert!(!site.outpost_ok(&["users", "list"]).contains("bob"));
    let bob_again = token_line(&site.outpost_ok(&["users", "add", "bob", "--role", "approver"]));
    assert_eq!(whoami(&site, &bob_again).0, 200);
    assert_eq!(whoami(&site, &bob).0, 401, "the old token stays dead");
    assert!(site.outpost_refused(&["users", "remove", "nobody"]).contains("(404)"));

    // Every change is in the audit log with who did it.
    for (action, actor, subject) in [
        ("user.create", "root-admin", "user alice"),
        ("token.rotate", "alice", "of user alice"),
        ("token.revoke", "root-admin", &format!("token {graced_id} of user alice") as &str),
        ("token.create", "root-admin", "of user bob"),
        ("user.role", "root-admin", "user alice"),
        ("user.remove", "root-admin", "user bob"),
    ] {
        let events = actions(&site, action);
        assert!(
            events.iter().any(|event| event["actor"] == actor
                && event["subject"].as_str().is_some_and(|s| s.contains(subject))
                && event["outcome"] == "ok"),
            "{action} by {actor} on {subject}: {events:?}"
        );
    }
    let refusals = actions(&site, "user.role");
    assert!(refusals.iter().any(|event| event["outcome"] == "409"), "refused change audited");

    revoked_token_used_concurrently(&site);
    last_admin_race(&site);
}

/// Several threads keep calling with one token while an admin revokes it: every request that
/// starts after the revocation answered is refused.
fn revoked_token_used_concurrently(site: &Site) {
    let token = site.token_for("busy", UserRole::Auditor);
    let start = Arc::new(Barrier::new(7));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (url, token, start, stop) =
                (site.url().to_string(), token.clone(), start.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = ApiClient::new(&url, Some(token), None).expect("client");
                let mut calls = Vec::new();
                start.wait();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let began = Instant::now();
                    let status = match client.get_json("/v1/whoami", &[]) {
                        Ok(_) => 200,
                        Err(ClientError::Refused { status, .. }) => status,
                        Err(other) => panic!("{other}"),
                    };
                    calls.push((began, Instant::now(), status));
                }
                calls
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(Duration::from_millis(300)); // load before the revocation, not a sync
    let id = outpost_control::store::users::token_id(&token);
    let revoking = Instant::now();
    site.outpost_ok(&["tokens", "revoke", &id]);
    let revoked = Instant::now();
    std::thread::sleep(Duration::from_millis(300)); // load after it
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls: Vec<_> =
        threads.into_iter().flat_map(|thread| thread.join().expect("thread")).collect();
    let before = calls.iter().filter(|(_, ended, _)| *ended < revoking).collect::<Vec<_>>();
    let after = calls.iter().filter(|(began, _, _)| *began > revoked).collect::<Vec<_>>();
    assert!(!before.is_empty() && !after.is_empty(), "load on both sides");
    assert!(before.iter().all(|call| call.2 == 200), "valid before");
    assert!(after.iter().all(|call| call.2 == 401), "refused after: {after:?}");
    assert!(calls.iter().all(|call| call.2 == 200 || call.2 == 401));
}

/// Two admins remove each other at the same moment: one wins, an admin remains.
fn last_admin_race(site: &Site) {
    let first = token_line(&site.outpost_ok(&["users", "add", "adm-a", "--role", "admin"]));
    let second = token_line(&site.outpost_ok(&["users", "add", "adm-b", "--role", "admin"]));
    site.outpost_ok(&["users", "remove", "root-admin"]);
    let barrier = Arc::new(Barrier::new(2));
    let race = |token: String, other: &'static str| {
        let (url, barrier) = (site.url().to_string(), barrier.clone());
        std::thread::spawn(move || {
            let client = ApiClient::new(&url, Some(token), None).expect("client");
            barrier.wait();
            match client.post_json(&format!("/v1/users/{other}/remove"), &json!({})) {
                Ok(_) => 200,
                Err(ClientError::Refused { status, .. }) => status,
                Err(error) => panic!("{error}"),
            }
        })
    };
    let a = race(first.clone(), "adm-b");
    let b = race(second.clone(), "adm-a");
    let mut outcomes = [a.join().expect("a"), b.join().expect("b")];
    outcomes.sort_unstable();
    assert!(outcomes == [200, 401] || outcomes == [200, 409], "one wins: {outcomes:?}");
    let survivor = if whoami(site, &first).0 == 200 { first } else { second };
    let users = client(site, &survivor).get_json("/v1/users", &[]).expect("users");
    let admins = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter(|user| user["role"] == "admin")
        .count();
    assert_eq!(admins, 1, "{users}");
}

#[test]
fn users_and_tokens_on_sqlite() {
    users_tokens_and_roles(Backend::Sqlite);
}

#[test]
fn users_and_tokens_on_postgres() {
    users_tokens_and_roles(Backend::Postgres);
}

/// `outpost serve` under a clock two days ahead: a one-day token has expired, and an admin
/// with the database gets a new one.
#[test]
fn tokens_expire_and_the_database_issues_a_new_one() {
    let directory = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = directory.path().join("control.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[broker]\nembedded_listen = \"127.0.0.1:0\"\n",
            directory.path().join("state").display()
        ),
    )
    .expect("config");
    let outpost = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("OUTPOST_SERVER")
            .env_remove("OUTPOST_TOKEN")
            .output()
            .expect("run outpost");
        assert!(output.status.success(), "{args:?}: {}", show(&output));
        token_line(&String::from_utf8_lossy(&output.stdout))
    };
    let short = outpost(&["users", "add", "boss", "--role", "admin", "--expires-in-days", "1"]);
    let long = outpost(&["tokens", "issue", "boss", "--expires-in-days", "30"]);
    let mut child = Command::new("faketime")
        .args(["-f", "+2d", env!("CARGO_BIN_EXE_outpost"), "serve", "--config"])
        .arg(&config)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn faketime outpost serve (Debian package faketime)");
    let url = format!("http://127.0.0.1:{port}");
    let anonymous = ApiClient::new(&url, None, None).expect("client");
    wait_until("the API to answer", Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("outpost serve exited early with {status}");
        }
        anonymous.get_json("/health", &[]).is_ok()
    });
    let call = |token: &str| {
        ApiClient::new(&url, Some(token.to_string()), None)
            .expect("client")
            .get_json("/v1/whoami", &[])
    };
    let expired = call(&short);
    let long_answer = call(&long);
    let listed = ApiClient::new(&url, Some(long.clone()), None)
        .expect("client")
        .get_json("/v1/users/boss/tokens", &[]);
    let _ = child.kill();
    let _ = child.wait();
    match expired {
        Err(ClientError::Refused { status: 401, message, .. }) => {
            assert!(message.contains("has expired"), "{message}");
        }
        other => panic!("a one-day token two days later: {other:?}"),
    }
    assert_eq!(long_answer.expect("the 30-day token works")["name"], "boss");
    let listed = listed.expect("tokens");
    let states: Vec<&str> = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect();
    let mut sorted = states.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["active", "expired"], "{listed}");
}

/// Sums the request counts of `auth.denied` records ("1 request …", "N more requests …").
fn denied_counts(events: &[Value]) -> u64 {
    events
        .iter()
        .filter_map(|event| event["reason"].as_str())
        .map(|reason| {
            reason
                .split(' ')
                .next()
                .and_then(|count| count.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("a counted reason: {reason}"))
        })
        .sum()
}

fn flood(site: &Site, source: Ipv4Addr, requests: usize) -> Vec<(u16, Option<String>)> {
    let address = site.server().api_address;
    site.runtime.block_on(async {
        let mut connection = Connection::open(address, Some(source)).await.expect("connect");
        let request = Request::post_json("/v1/users", r#"{"name":"x","role":"admin"}"#);
        let mut answers = Vec::with_capacity(requests);
        for _ in 0..requests {
            let answer = connection.send(&request).await.expect("answer");
            answers.push((answer.status, answer.header("retry-after").map(str::to_string)));
        }
        answers
    })
}

#[test]
fn a_flood_of_denied_requests_is_limited_and_leaves_few_counted_records_that_verify() {
    let site = Site::start(
        Backend::Sqlite,
        SiteOptions {
            environment: vec![("OUTPOST__API__DENIED_AUDIT_INTERVAL_SECONDS".into(), "1".into())],
            ..SiteOptions::default()
        },
    );
    // 20,000 unauthenticated requests from one address, on four connections in turn.
    let started = Instant::now();
    let floods: Vec<_> = (0..4).map(|_| flood(&site, Ipv4Addr::new(127, 0, 0, 9), 5_000)).collect();
    let seconds = started.elapsed().as_secs_f64();
    let answers: Vec<_> = floods.into_iter().flatten().collect();
    let unauthenticated = answers.iter().filter(|(status, _)| *status == 401).count();
    let limited = answers.iter().filter(|(status, _)| *status == 429).count();
    assert_eq!(unauthenticated + limited, 20_000);
    // The burst, plus what the sustained rate (30 a minute) allowed while the flood ran.
    let allowed = 30 + (seconds / 2.0).ceil() as usize + 1;
    assert!((30..=allowed).contains(&unauthenticated), "{unauthenticated} 401s in {seconds:.1} s");
    assert!(answers.iter().filter(|(status, _)| *status == 429).all(|(_, retry)| {
        retry.as_deref().and_then(|value| value.parse::<u64>().ok()).is_some_and(|s| s >= 1)
    }));
    // Another source is not limited: the admin works from 127.0.0.1.
    assert_eq!(whoami(&site, &site.admin_token).0, 200);

    // Every request is counted, in a few records.
    let mut events = Vec::new();
    wait_until("every denied request counted in the audit log", Duration::from_secs(30), || {
        events = actions(&site, "auth.denied");
        denied_counts(&events) == 20_000
    });
    let intervals = seconds.ceil() as usize + 2;
    assert!(events.len() <= 2 + 2 * intervals, "{} records for 20,000 requests", events.len());
    assert!(events.iter().all(|event| event["actor"] == "anonymous"
        && event["subject"] == "POST /v1/users"
        && event["reason"].as_str().is_some_and(|reason| reason.contains("from 127.0.0.9"))));
    let outcomes: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|event| event["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["401", "429"].into_iter().collect());
    let metrics = client(&site, &site.admin_token).get_json("/metrics", &[]).expect("metrics");
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains(&format!("outpost_http_denied_total{{status=\"429\"}} {limited}")),
        "{metrics}"
    );

    // The counted records are ordinary log records: an export of them verifies offline.
    let out = site.directory.path().join("denials-export");
    let exported = site.outpost_as(
        &site.admin_token,
        &["audit", "export", "--actor", "anonymous", "--out", out.to_str().expect("utf-8")],
    );
    assert!(exported.status.success(), "{}", show(&exported));
    let verified = site.outpost_as("", &["audit", "verify", out.to_str().expect("utf-8")]);
    assert!(verified.status.success(), "{}", show(&verified));
    let records = std::fs::read_to_string(out.join("records.jsonl")).expect("records");
    let exported: Vec<Value> = records
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("json")["record"].clone())
        .filter(|record| record["action"] == "auth.denied")
        .collect();
    assert_eq!(denied_counts(&exported), 20_000, "the export carries every count");
}

#[test]
fn a_flood_from_many_sources_is_limited_per_source_and_honest_clients_keep_working() {
    let site = Site::start(
        Backend::Sqlite,
        SiteOptions {
            environment: vec![
                ("OUTPOST__API__DENIED_AUDIT_INTERVAL_SECONDS".into(), "1".into()),
                ("OUTPOST__API__DENIED_BURST".into(), "5".into()),
            ],
            ..SiteOptions::default()
        },
    );
    let sources: Vec<Ipv4Addr> = (1..=200).map(|host| Ipv4Addr::new(127, 0, 1, host)).collect();
    let honest = site.token_for("honest", UserRole::Auditor);
    let mut honest_answers = Vec::new();
    let started = Instant::now();
    for (index, source) in sources.iter().enumerate() {
        let answers = flood(&site, *source, 20);
        let unauthenticated = answers.iter().filter(|(status, _)| *status == 401).count();
        // Each source has its own bucket: five denials, then 429 (a second's refill at most).
        assert!((5..=6).contains(&unauthenticated), "{source}: {unauthenticated}");
        if index % 20 == 0 {
            honest_answers.push(whoami(&site, &honest).0);
        }
    }
    assert!(honest_answers.iter().all(|status| *status == 200), "{honest_answers:?}");
    let intervals = started.elapsed().as_secs() as usize + 2;
    let mut events = Vec::new();
    wait_until("every denied request counted", Duration::from_secs(30), || {
        events = actions(&site, "auth.denied");
        denied_counts(&events) == 200 * 20
    });
    // Per source: the first 401 and the first 429 at once, their repeats counted (split in
    // two where a source's flood spans the end of an interval).
    assert!(events.len() <= 200 * 4 + 2 * intervals, "{} records for 4,000 requests", events.len());
    for source in ["127.0.1.1", "127.0.1.200"] {
        let from: Vec<Value> = events
            .iter()
            .filter(|event| {
                event["reason"].as_str().is_some_and(|r| r.contains(&format!("from {source} ")))
            })
            .cloned()
            .collect();
        assert_eq!(denied_counts(&from), 20, "{source}: {from:?}");
    }
}
