//! The model registry through the CLI and the API, on SQLite and on PostgreSQL: push, list,
//! show, idempotent re-push, a taken name@version refused, and bad pushes (unsigned, wrong key,
//! corrupt, oversized, no trust root) refused with the reason. The stored chunks reassemble to
//! the exact bundle file.

use outpost_control::store::audit::AuditEvent;

use crate::server::{Backend, Fleet, Site, SiteOptions};

fn round_trip(backend: Backend) {
    let fleet = Fleet::new();
    let site = Site::start(
        backend,
        SiteOptions { trust_root: Some(fleet.path("root.json")), ..SiteOptions::default() },
    );
    let good = fleet.path_text("good.bundle");
    let pushed = site.outpost_ok(&["model", "push", &good]);
    assert!(pushed.starts_with("stored fraud@1.0.0 sha256:"), "{pushed}");
    let again = site.outpost_ok(&["model", "push", &good]);
    assert!(again.starts_with("already stored: fraud@1.0.0"), "{again}");

    let refused = site.outpost_refused(&["model", "push", &fleet.path_text("other.bundle")]);
    assert!(
        refused.contains("(409)") && refused.contains("fraud@1.0.0 is already stored"),
        "{refused}"
    );

    site.outpost_ok(&["model", "push", &fleet.path_text("second.bundle")]);

    let bytes = std::fs::read(fleet.path("good.bundle")).expect("bundle");
    let digest = outpost_shared::sha256_digest(&bytes);
    let list = site.outpost_json(&["model", "list"]);
    let models = list["models"].as_array().expect("models");
    assert_eq!(models.len(), 1);
    let versions: Vec<_> = models[0]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| (v["version"].as_str().unwrap_or_default().to_string(), v["digest"].clone()))
        .collect();
    assert_eq!(versions[0], ("1.0.0".to_string(), serde_json::Value::String(digest.clone())));
    assert_eq!(versions.len(), 2);
    let table = site.outpost_ok(&["model", "list"]);
    assert!(table.contains("fraud") && table.contains(&digest), "{table}");

    let shown = site.outpost_json(&["model", "show", "fraud@1.0.0"]);
    let bundle = &shown["bundle"];
    assert_eq!(bundle["digest"], digest.as_str());
    assert_eq!(bundle["size"], bytes.len() as u64);
    assert_eq!(bundle["pushed_by"], "root-admin");
    assert_eq!(bundle["task"], "classification");
    assert!(bundle["manifest"]["lineage"].is_object(), "lineage: {bundle}");
    assert!(bundle["profile_summary"]["reference_count"].as_u64().unwrap_or(0) > 0, "{bundle}");
    assert!(!bundle["profile_summary"]["inputs"].as_array().expect("inputs").is_empty());
    assert_eq!(bundle["signers"].as_array().map(Vec::len), Some(1));
    let human = site.outpost_ok(&["model", "show", "fraud"]);
    assert!(
        human.contains("1.0.0") && human.contains("2.0.0") && human.contains("lineage"),
        "{human}"
    );
    let missing = site.outpost_refused(&["model", "show", "fraud@9.9.9"]);
    assert!(missing.contains("(404)") && missing.contains("no model fraud@9.9.9"), "{missing}");

    let stored = site
        .runtime
        .block_on(site.store().bundle_bytes(&digest))
        .expect("read chunks")
        .expect("stored");
    assert_eq!(stored, bytes, "chunks reassemble to the pushed file");

    let published: Vec<AuditEvent> =
        site.runtime.block_on(site.store().audit_events(Some("model.publish"), 10)).expect("audit");
    let stored: Vec<&AuditEvent> = published.iter().filter(|e| e.outcome == "ok").collect();
    assert_eq!(stored.len(), 2, "one event per stored bundle");
    assert!(stored.iter().all(|e| e.model.as_deref().is_some_and(|m| m.starts_with("fraud@"))));
    // The idempotent re-push (200) and the refused one (409) are recorded as well.
    let mut outcomes: Vec<&str> = published.iter().map(|e| e.outcome.as_str()).collect();
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["200", "409", "ok", "ok"]);
}

#[test]
fn registry_round_trip_on_sqlite() {
    round_trip(Backend::Sqlite);
}

#[test]
fn registry_round_trip_on_postgres() {
    round_trip(Backend::Postgres);
}

#[test]
fn bad_pushes_are_refused_with_the_reason() {
    let fleet = Fleet::new();
    let good = std::fs::read(fleet.path("good.bundle")).expect("bundle");
    let mut corrupt = good.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x01;
    std::fs::write(fleet.path("corrupt.bundle"), &corrupt).expect("write");
    std::fs::write(fleet.path("empty.bundle"), b"").expect("write");
    let mut oversized = good.clone();
    oversized.extend_from_slice(&[0u8; 512]);
    std::fs::write(fleet.path("oversized.bundle"), &oversized).expect("write");

    let limit = good.len() as u64;
    let site = Site::start(
        Backend::Sqlite,
        SiteOptions {
            trust_root: Some(fleet.path("root.json")),
            max_bundle_bytes: Some(limit),
            ..SiteOptions::default()
        },
    );
    let cases = [
        ("unsigned.bundle", "422", "too few distinct publisher signatures"),
        ("mallory.bundle", "422", "unknown key"),
        ("corrupt.bundle", "422", "bundle refused"),
        ("oversized.bundle", "413", "over the registry limit"),
        ("empty.bundle", "400", "the request body is empty"),
    ];
    for (file, status, reason) in cases {
        let stderr = site.outpost_refused(&["model", "push", &fleet.path_text(file)]);
        assert!(
            stderr.contains(&format!("({status})")) && stderr.contains(reason),
            "{file}: expected {status} naming `{reason}`, got: {stderr}"
        );
    }
    let list = site.outpost_json(&["model", "list"]);
    assert_eq!(list["models"].as_array().map(Vec::len), Some(0), "nothing stored: {list}");

    // Without a trust root the registry refuses everything, saying why.
    let unconfigured = Site::start(Backend::Sqlite, SiteOptions::default());
    let stderr = unconfigured.outpost_refused(&["model", "push", &fleet.path_text("good.bundle")]);
    assert!(stderr.contains("(503)") && stderr.contains("trust.root"), "{stderr}");
}
