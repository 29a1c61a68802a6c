//! The audit trail end to end: records from the API, denials and device events enter the
//! Merkle log; `outpost audit export` (the real binary, through the API) writes an export
//! that `outpost audit verify` accepts offline, and every kind of tampering (an altered,
//! deleted, reordered, inserted or forged record, truncation, a forged checkpoint, the wrong
//! key) makes it fail naming the record. On SQLite and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Output;

use outpost_control::api::client::ApiClient;
use outpost_control::api::routes::{HttpMethod, ROUTES};
use outpost_control::audit::note::NoteSigner;
use outpost_control::store::audit::NewAuditEvent;
use outpost_control::store::users::UserRole;

use crate::server::{Backend, Site, SiteOptions, show};

fn device_event(device: &str, kind: &str, seq: u32) -> NewAuditEvent {
    NewAuditEvent {
        actor: device.into(),
        action: format!("device.{kind}"),
        subject: format!("device {device} seq {seq}"),
        outcome: "ok".into(),
        reason: format!("{kind} of classifier@1.0"),
        source: "mqtt".into(),
        device: Some(device.into()),
        model: Some("classifier@1.0".into()),
    }
}

/// A site with some history: users created through the CLI, a denied request, device events.
fn site_with_history(backend: Backend) -> (Site, String) {
    let site = Site::start(backend, SiteOptions::default());
    let auditor = site.token_for("audrey", UserRole::Auditor);
    site.outpost_ok(&["users", "add", "olga", "--role", "operator"]);
    let denied = site.outpost_as(&auditor, &["users", "add", "mallory", "--role", "admin"]);
    assert!(!denied.status.success(), "an auditor may not create users: {}", show(&denied));
    for seq in 0..4 {
        for device in ["pump-1", "pump-2"] {
            site.runtime
                .block_on(site.store().record_audit_event(&device_event(device, "install", seq)))
                .expect("device event");
        }
    }
    // A device event as the MQTT path stores it: its audit record joins the log as well.
    let event: outpost_shared::wire::Event = serde_json::from_value(serde_json::json!({
        "v": 1, "device": "pump-9", "seq": 1, "ts_ms": 1_700_000_000_000u64,
        "kind": "rolled_back", "outcome": "ok", "message": "health watch failed",
    }))
    .expect("event");
    let device = outpost_shared::wire::DeviceId::new("pump-9").expect("id");
    site.runtime
        .block_on(site.store().record_device_event(&device, &event, 1_700_000_000_500))
        .expect("device event stored");
    (site, auditor)
}

fn export(site: &Site, token: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["audit", "export", "--out", out.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    site.outpost_as(token, &args)
}

fn verify(site: &Site, directory: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["audit", "verify", directory.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    // Offline: no server variables needed, but they do no harm either.
    site.outpost_as("", &args)
}

fn verify_fails(site: &Site, directory: &Path, extra: &[&str], expected: &[&str]) {
    let output = verify(site, directory, extra);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "verify must fail: {}", show(&output));
    for text in expected {
        assert!(stderr.contains(text), "`{text}` missing from: {stderr}");
    }
}

fn copy_export(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
    to.to_path_buf()
}

fn lines(directory: &Path) -> Vec<String> {
    std::fs::read_to_string(directory.join("records.jsonl"))
        .expect("records")
        .lines()
        .map(str::to_string)
        .collect()
}

fn leaf_index(line: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(line).expect("json");
    value["leaf_index"].as_u64().expect("leaf index")
}

/// Rewrites records.jsonl (and records.csv to match, so the CSV check is not what fails).
fn rewrite(directory: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(directory.join("records.jsonl"), text).expect("write records");
    let records: Vec<outpost_control::audit::export::ExportedRecord> =
        lines.iter().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let csv = outpost_control::audit::export::csv_text(&records).expect("csv");
    std::fs::write(directory.join("records.csv"), csv).expect("write csv");
}

fn tampering_is_detected(site: &Site, good: &Path, work: &Path) {
    let original = lines(good);
    assert!(original.len() >= 6, "enough records to tamper with: {}", original.len());

    // An altered record: its inclusion proof no longer holds.
    let altered = copy_export(good, &work.join("altered"));
    let mut records = original.clone();
    records[2] = records[2].replacen("\"outcome\":\"", "\"outcome\":\"x", 1);
    assert_ne!(records[2], original[2]);
    rewrite(&altered, &records);
    let index = leaf_index(&original[2]).to_string();
    verify_fails(site, &altered, &[], &["line 3", &format!("leaf index {index}"), "altered"]);

    // A deleted record: the signed manifest lists it.
    let deleted = copy_export(good, &work.join("deleted"));
    let mut records = original.clone();
    let gone = records.remove(3);
    rewrite(&deleted, &records);
    verify_fails(
        site,
        &deleted,
        &[],
        &[&format!("leaf index {} (manifest entry 4) is missing", leaf_index(&gone)), "deleted"],
    );

    // Reordered records.
    let reordered = copy_export(good, &work.join("reordered"));
    let mut records = original.clone();
    records.swap(1, 2);
    rewrite(&reordered, &records);
    verify_fails(
        site,
        &reordered,
        &[],
        &["line 2", &format!("leaf index {}", leaf_index(&original[2])), "out of order"],
    );

    // An inserted, forged record (a copy of a real one under another id).
    let inserted = copy_export(good, &work.join("inserted"));
    let mut records = original.clone();
    let forged = records[0].replacen("\"id\":", "\"id\":9", 1);
    records.insert(1, forged);
    rewrite(&inserted, &records);
    verify_fails(site, &inserted, &[], &["line 2", "forged"]);

    let manifest = std::fs::read_to_string(good.join("manifest")).expect("manifest");

    // Truncated records.
    let truncated = copy_export(good, &work.join("truncated"));
    let mut records = original.clone();
    let last = records.pop().expect("last");
    rewrite(&truncated, &records);
    verify_fails(
        site,
        &truncated,
        &[],
        &[
            &format!("leaf index {} (manifest entry {})", leaf_index(&last), original.len()),
            "truncated",
        ],
    );

    // A forged checkpoint: another size under the same signature.
    let forged_checkpoint = copy_export(good, &work.join("forged-checkpoint"));
    let checkpoint = std::fs::read_to_string(good.join("checkpoint")).expect("checkpoint");
    let mut parts = checkpoint.splitn(3, '\n');
    let (origin, size, rest) =
        (parts.next().expect("origin"), parts.next().expect("size"), parts.next().expect("rest"));
    let bigger: u64 = size.parse::<u64>().expect("size") + 1;
    std::fs::write(forged_checkpoint.join("checkpoint"), format!("{origin}\n{bigger}\n{rest}"))
        .expect("write");
    verify_fails(site, &forged_checkpoint, &[], &["checkpoint", "signature does not verify"]);

    // The wrong key: everything re-signed with another key verifies against itself only.
    let resigned = copy_export(good, &work.join("resigned"));
    let vkey = std::fs::read_to_string(good.join("log.vkey")).expect("vkey");
    let name = vkey.split('+').next().expect("name");
    let other = NoteSigner::generate(name).expect("other key");
    let text_of = |note: &str| note[..note.rfind("\n\n").expect("note") + 1].to_string();
    std::fs::write(resigned.join("checkpoint"), other.sign(&text_of(&checkpoint)).expect("sign"))
        .expect("write");
    std::fs::write(resigned.join("manifest"), other.sign(&text_of(&manifest)).expect("sign"))
        .expect("write");
    std::fs::write(resigned.join("log.vkey"), format!("{}\n", other.verifier().to_vkey()))
        .expect("write");
    std::fs::write(resigned.join("log.pub"), other.verifier().public_key().as_bytes())
        .expect("write");
    let trusted = good.join("log.vkey");
    let trusted = trusted.to_str().expect("utf-8");
    assert!(verify(site, good, &["--key", trusted]).status.success());
    verify_fails(site, &resigned, &["--key", trusted], &["wrong key"]);
    // Only the checkpoint swapped: its signature is by a key the export does not name.
    let swapped = copy_export(good, &work.join("swapped"));
    std::fs::copy(resigned.join("checkpoint"), swapped.join("checkpoint")).expect("copy");
    verify_fails(site, &swapped, &[], &["checkpoint", "wrong key"]);
}

fn full_scenario(backend: Backend) {
    let (site, auditor) = site_with_history(backend);
    let work = tempfile::tempdir().expect("tempdir");
    let first = work.path().join("first");
    let output = export(&site, &auditor, &first, &[]);
    assert!(output.status.success(), "export: {}", show(&output));
    for file in ["records.jsonl", "records.csv", "checkpoint", "manifest", "log.vkey", "log.pub"] {
        assert!(first.join(file).is_file(), "{file} in the export");
    }
    let output = verify(&site, &first, &[]);
    assert!(output.status.success(), "verify: {}", show(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("verified"));
    let all = lines(&first);
    let actions: Vec<String> = all
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("json");
            value["record"]["action"].as_str().expect("action").to_string()
        })
        .collect();
    assert!(
        all.iter().any(|line| line.contains("\"action\":\"device.rolled_back\"")
            && line.contains("\"device\":\"pump-9\"")),
        "the device event is in the log"
    );
    for action in ["user.create", "auth.denied", "device.install"] {
        assert!(actions.iter().any(|a| a == action), "{action} in {actions:?}");
    }
    let indices: Vec<u64> = all.iter().map(|line| leaf_index(line)).collect();
    assert_eq!(indices, (0..indices.len() as u64).collect::<Vec<_>>(), "dense, in log order");
    let csv = std::fs::read_to_string(first.join("records.csv")).expect("csv");
    assert_eq!(csv.lines().count(), all.len() + 1, "a CSV row per record plus the header");

    tampering_is_detected(&site, &first, work.path());

    // A filtered export (one device) verifies on its own and holds only that device.
    let pump = work.path().join("pump-1");
    let output = export(&site, &auditor, &pump, &["--device", "pump-1"]);
    assert!(output.status.success(), "filtered export: {}", show(&output));
    let output = verify(&site, &pump, &[]);
    assert!(output.status.success(), "filtered verify: {}", show(&output));
    let pump_lines = lines(&pump);
    assert_eq!(pump_lines.len(), 4);
    assert!(pump_lines.iter().all(|line| line.contains("\"device\":\"pump-1\"")));
    // Dropping one of its records is detected from the manifest alone.
    let pump_deleted = copy_export(&pump, &work.path().join("pump-deleted"));
    let mut records = pump_lines.clone();
    records.remove(1);
    rewrite(&pump_deleted, &records);
    verify_fails(&site, &pump_deleted, &[], &["manifest entry 2", "missing"]);

    // The export was itself audited.
    let exports = site.runtime.block_on(site.store().audit_events(Some("audit.export"), 10));
    let exports = exports.expect("audit");
    assert!(exports.len() >= 2 && exports.iter().all(|e| e.actor == "audrey" && e.outcome == "ok"));
    assert!(exports.iter().any(|e| e.device.as_deref() == Some("pump-1")));

    // A checkpoint kept on its own (`outpost audit checkpoint`) serves as --previous too.
    let kept = work.path().join("kept-checkpoint");
    let kept_key = work.path().join("kept.vkey");
    let output = site.outpost_as(
        &auditor,
        &["audit", "checkpoint", "--out", path(&kept), "--key-out", path(&kept_key)],
    );
    assert!(output.status.success(), "checkpoint: {}", show(&output));
    assert_eq!(
        std::fs::read_to_string(&kept_key).expect("key"),
        std::fs::read_to_string(first.join("log.vkey")).expect("key")
    );

    // Consistency: a later export proves it extends the first one's checkpoint.
    site.runtime
        .block_on(site.store().record_audit_event(&device_event("pump-3", "rollback", 9)))
        .expect("event");
    let second = work.path().join("second");
    let previous = first.join("checkpoint");
    let previous = previous.to_str().expect("utf-8");
    let output = export(&site, &auditor, &second, &["--previous", previous]);
    assert!(output.status.success(), "export with --previous: {}", show(&output));
    assert!(second.join("consistency.json").is_file());
    let output = verify(&site, &second, &["--previous", previous]);
    assert!(output.status.success(), "consistent: {}", show(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("consistent with the previous"));
    let after_kept = work.path().join("after-kept");
    let output = export(&site, &auditor, &after_kept, &["--previous", path(&kept)]);
    assert!(output.status.success(), "export after the kept checkpoint: {}", show(&output));
    let output = verify(&site, &after_kept, &["--previous", path(&kept), "--key", path(&kept_key)]);
    assert!(output.status.success(), "consistent with the kept checkpoint: {}", show(&output));
    // An export proving consistency from another size does not stand in for it.
    verify_fails(&site, &second, &["--previous", path(&kept)], &["consistency.json", "--previous"]);
    // The first export against the later checkpoint: the log would have shrunk.
    let later = second.join("checkpoint");
    let gone = format!("leaf indices {} to", all.len());
    verify_fails(
        &site,
        &first,
        &["--previous", later.to_str().expect("utf-8")],
        &["truncated", &gone],
    );
    // A consistency proof that does not hold: the log was rewritten.
    let rewritten = copy_export(&second, &work.path().join("rewritten"));
    let consistency = std::fs::read_to_string(second.join("consistency.json")).expect("proof");
    let mut proof: serde_json::Value = serde_json::from_str(&consistency).expect("json");
    let first_hash = proof["proof"][0].as_str().expect("a proof hash").to_string();
    let flipped =
        format!("{}{}", if first_hash.starts_with('0') { "1" } else { "0" }, &first_hash[1..]);
    proof["proof"][0] = serde_json::Value::from(flipped);
    std::fs::write(rewritten.join("consistency.json"), proof.to_string()).expect("write");
    verify_fails(&site, &rewritten, &[], &["consistency proof fails", "rewritten or truncated"]);

    // Pruning record bodies keeps the log verifiable: proofs come from the kept leaf hashes.
    let pruned = site.runtime.block_on(site.store().prune_audit_records(i64::MAX)).expect("prune");
    assert!(pruned as usize >= all.len(), "pruned {pruned}");
    site.runtime
        .block_on(site.store().record_audit_event(&device_event("pump-1", "install", 10)))
        .expect("event");
    let third = work.path().join("third");
    let previous = second.join("checkpoint");
    let previous = previous.to_str().expect("utf-8");
    let output = export(&site, &auditor, &third, &["--previous", previous]);
    assert!(output.status.success(), "export after pruning: {}", show(&output));
    let output = verify(&site, &third, &["--previous", previous]);
    assert!(output.status.success(), "verify after pruning: {}", show(&output));
    assert!(!lines(&third).is_empty());
}

#[test]
fn exports_verify_and_tampering_is_named_on_sqlite() {
    full_scenario(Backend::Sqlite);
}

#[test]
fn exports_verify_and_tampering_is_named_on_postgres() {
    full_scenario(Backend::Postgres);
}

#[test]
fn only_auditors_and_admins_export_and_a_refused_export_is_audited() {
    let site = Site::start(Backend::Sqlite, SiteOptions::default());
    let operator = site.token_for("otto", UserRole::Operator);
    let work = tempfile::tempdir().expect("tempdir");
    let output = export(&site, &operator, &work.path().join("x"), &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("403"), "{}", show(&output));
    let output = export(
        &site,
        &site.admin_token,
        &work.path().join("y"),
        &["--from", "2030-01-02", "--to", "2030-01-01"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("period is empty"));
    let exports =
        site.runtime.block_on(site.store().audit_events(Some("audit.export"), 10)).expect("audit");
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0].outcome, "400");
    let denied = site.runtime.block_on(site.store().audit_events(Some("auth.denied"), 10));
    assert!(denied.expect("audit").iter().any(|e| e.actor == "otto"));
    // `outpost audit list` filters through the API.
    let listed =
        site.outpost_json(&["audit", "list", "--action", "auth.denied", "--actor", "otto"]);
    let events = listed["events"].as_array().expect("events");
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["action"] == "auth.denied" && e["actor"] == "otto"));
    let table = site.outpost_ok(&["audit", "list", "--action", "audit.export"]);
    assert!(table.contains("audit.export") && table.contains("400"), "{table}");
}

/// Walks the route table: every route that changes something leaves an audit record for a
/// refused request, whatever its handler does.
#[test]
fn every_mutating_route_leaves_an_audit_record() {
    let site = Site::start(Backend::Sqlite, SiteOptions::default());
    let client = ApiClient::new(site.url(), Some(site.admin_token.clone()), None).expect("client");
    let newest = || {
        site.runtime
            .block_on(site.store().audit_events(None, 1))
            .expect("audit")
            .first()
            .map_or(0, |event| event.id)
    };
    let mut checked = 0;
    for route in ROUTES.iter().filter(|route| route.method != HttpMethod::Get) {
        let path = route
            .path
            .split('/')
            .map(|segment| if segment.starts_with('{') { "no-such-thing" } else { segment })
            .collect::<Vec<_>>()
            .join("/");
        let before = newest();
        let result = client.post_bytes(&path, "application/json", b"{\"not\": \"valid\"");
        assert!(result.is_err(), "{path}: a malformed body is refused");
        let after = newest();
        assert!(
            after > before,
            "{} {path} was refused without an audit record",
            route.method.as_str()
        );
        let events = site.runtime.block_on(site.store().audit_events(None, 1)).expect("audit");
        assert_eq!(events[0].actor, "root-admin", "{path}");
        assert_ne!(events[0].outcome, "ok", "{path}: the refusal is recorded as such");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} mutating routes");
}

/// Many writers and sequencers at once on PostgreSQL: indices are dense and unique, and every
/// record is in the verified export.
#[test]
fn concurrent_writers_and_sequencers_keep_the_log_dense_on_postgres() {
    let site = Site::start(Backend::Postgres, SiteOptions::default());
    let store = site.store().clone();
    site.runtime.block_on(async {
        let mut tasks = Vec::new();
        for writer in 0..6u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0..40 {
                    let event = device_event(&format!("dev-{writer}"), "install", seq);
                    store.record_audit_event(&event).await.expect("event");
                    if seq % 10 == 0 {
                        store.sequence_audit_log().await.expect("sequence");
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer");
        }
    });
    let (size, _) = site.runtime.block_on(store.sequence_audit_log()).expect("sequence");
    let events = site
        .runtime
        .block_on(store.audit_events_matching(&Default::default(), 1000))
        .expect("events");
    let mut indices: Vec<i64> = events.iter().map(|e| e.leaf_index.expect("sequenced")).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..size as i64).collect::<Vec<_>>(), "dense and unique");
    assert!(size >= 240);
    let auditor = site.token_for("audrey", UserRole::Auditor);
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("all");
    let output = export(&site, &auditor, &out, &[]);
    assert!(output.status.success(), "{}", show(&output));
    let output = verify(&site, &out, &[]);
    assert!(output.status.success(), "{}", show(&output));
    assert!(lines(&out).len() as u64 >= size);
}

/// Two control instances on one PostgreSQL database: the first makes the log key; the second,
/// without it, refuses to sign (409, saying what to copy) until the first's `audit-log`
/// directory is copied to it, and then extends the same log under the same key.
#[test]
fn instances_on_one_database_sign_with_the_one_recorded_key() {
    use outpost_control::{config, server};
    let postgres = outpost_tests::postgres::Postgres::start().expect("start PostgreSQL");
    let root = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let start = |name: &str| {
        let environment = vec![
            ("OUTPOST__DATA_DIR".to_string(), root.path().join(name).display().to_string()),
            ("OUTPOST__API__LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("OUTPOST__BROKER__EMBEDDED_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("OUTPOST__DATABASE__URL".to_string(), postgres.url()),
        ];
        let config = config::load_from(None, &environment).expect("config");
        runtime.block_on(server::start(config)).expect("server starts")
    };
    let first = start("first");
    let token = runtime
        .block_on(first.store().create_user("boss", UserRole::Admin, "test"))
        .expect("admin");
    let second = start("second");
    let outpost = |url: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(args)
            .env("OUTPOST_SERVER", url)
            .env("OUTPOST_TOKEN", &token)
            .output()
            .expect("run outpost")
    };
    let work = root.path().join("exports");
    let from_first = work.join("from-first");
    let output = outpost(&first.api_url, &["audit", "export", "--out", path(&from_first)]);
    assert!(output.status.success(), "{}", show(&output));

    let refused = outpost(&second.api_url, &["audit", "export", "--out", path(&work.join("x"))]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    assert!(stderr.contains("409") && stderr.contains("copy the audit-log directory"), "{stderr}");

    let key_dir = root.path().join("second").join("audit-log");
    std::fs::create_dir_all(&key_dir).expect("mkdir");
    let key_file = key_dir.join("log.key");
    std::fs::copy(root.path().join("first").join("audit-log").join("log.key"), &key_file)
        .expect("copy the key");
    let from_second = work.join("from-second");
    let previous = from_first.join("checkpoint");
    let output = outpost(
        &second.api_url,
        &["audit", "export", "--previous", path(&previous), "--out", path(&from_second)],
    );
    assert!(output.status.success(), "{}", show(&output));
    let trusted = from_first.join("log.vkey");
    let output = outpost(
        "http://unused.invalid",
        &[
            "audit",
            "verify",
            path(&from_second),
            "--key",
            path(&trusted),
            "--previous",
            path(&previous),
        ],
    );
    assert!(output.status.success(), "{}", show(&output));
    // Both instances' records (the refused export included) are in the one log.
    let records = lines(&from_second);
    assert!(records.iter().any(|line| line.contains("\"outcome\":\"409\"")), "{records:?}");
    runtime.block_on(second.shutdown());
    runtime.block_on(first.shutdown());
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Retention is at least six months, or forever; anything shorter is refused with the key.
#[test]
fn audit_retention_is_at_least_six_months() {
    use outpost_control::config;
    let with = |days: &str| {
        config::load_from(None, &[("OUTPOST__AUDIT__RETENTION_DAYS".to_string(), days.to_string())])
    };
    let default = config::load_from(None, &[]).expect("default");
    assert!(default.audit.retention_ms >= Some(183 * 86_400_000), "{:?}", default.audit);
    assert_eq!(with("183").expect("six months").audit.retention_ms, Some(183 * 86_400_000));
    assert_eq!(with("0").expect("forever").audit.retention_ms, None);
    let error = with("30").expect_err("a month is too short").to_string();
    assert!(error.contains("audit.retention_days") && error.contains("six months"), "{error}");
}
