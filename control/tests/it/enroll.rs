//! Device enrollment as an operator runs it: `outpost devices enroll` makes the key locally,
//! the server's fleet CA (created on first use, private files in the data directory) certifies
//! it, the device is recorded with its tags and an audit event, and the output directory holds
//! exactly what the agent's configuration names. Re-enrolling needs `--replace`, which revokes
//! the earlier certificate; bad ids, tags and broker URLs are refused before anything is sent.
//! On SQLite and PostgreSQL.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use outpost_control::ca::summarize;

use crate::server::{Backend, Site, SiteOptions};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn enrollment_works_on(backend: Backend) {
    let site = Site::start(backend, SiteOptions::default());
    let out = site.directory.path().join("dev-a");
    let out_text = out.display().to_string();
    let printed = site.outpost_ok(&[
        "devices",
        "enroll",
        "--id",
        "dev-a",
        "--tags",
        "site=berlin,hw=rpi4,rack.row=r:1",
        "--out",
        &out_text,
        "--broker",
        "mqtts://broker.example:8884",
        "--device-dir",
        "/etc/outpost",
    ]);
    assert!(printed.contains("enrolled dev-a"), "{printed}");

    // The CA was created on first use, its key private.
    let ca_dir = site.directory.path().join("data").join(outpost_control::ca::CA_DIRECTORY);
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(
        read(&ca_dir.join("ca.pem")),
        read(&out.join("ca.pem")),
        "the fleet CA is handed out"
    );

    // The device's files: its own key (never sent anywhere), its certificate, the config.
    assert_eq!(mode(&out.join("device.key")), 0o600);
    assert!(read(&out.join("device.key")).contains("BEGIN PRIVATE KEY"));
    let certificate = summarize(&read(&out.join("device.pem"))).expect("certificate");
    assert_eq!(certificate.common_name, "dev-a");
    assert_eq!(certificate.issuer_common_name, "Outpost fleet CA");
    let config: toml::Table = read(&out.join("agent.toml")).parse().expect("agent.toml is TOML");
    assert_eq!(config["device"]["id"].as_str(), Some("dev-a"));
    assert_eq!(config["device"]["tags"]["site"].as_str(), Some("berlin"));
    assert_eq!(config["device"]["tags"]["hw"].as_str(), Some("rpi4"));
    assert_eq!(
        config["device"]["tags"]["rack.row"].as_str(),
        Some("r:1"),
        "a dotted key stays one key"
    );
    assert_eq!(config["mqtt"]["host"].as_str(), Some("broker.example"));
    assert_eq!(config["mqtt"]["port"].as_integer(), Some(8884));
    assert_eq!(config["mqtt"]["tls"]["ca_file"].as_str(), Some("/etc/outpost/ca.pem"));
    assert_eq!(config["mqtt"]["tls"]["client_cert_file"].as_str(), Some("/etc/outpost/device.pem"));
    assert_eq!(config["mqtt"]["tls"]["client_key_file"].as_str(), Some("/etc/outpost/device.key"));

    // Recorded, with the certificate's serial, and audited.
    let listed = site.outpost_json(&["devices", "enrolled"]);
    let enrollments = listed["enrollments"].as_array().expect("enrollments");
    assert_eq!(enrollments.len(), 1);
    assert_eq!(enrollments[0]["device_id"], "dev-a");
    assert_eq!(enrollments[0]["serial"], certificate.serial.as_str());
    assert_eq!(enrollments[0]["tags"]["site"], "berlin");
    let audit = site
        .runtime
        .block_on(site.store().audit_events(Some("device.enroll"), 10))
        .expect("audit events");
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].actor.as_str(), audit[0].subject.as_str()),
        ("root-admin", "device dev-a")
    );

    // Enrolling the same id again is refused, and nothing is written; --replace re-enrolls.
    let again = site.directory.path().join("dev-a-again");
    let again_text = again.display().to_string();
    let refused =
        site.outpost_refused(&["devices", "enroll", "--id", "dev-a", "--out", &again_text]);
    assert!(refused.contains("already enrolled"), "{refused}");
    assert!(!again.join("device.key").exists(), "no key written for a refused enrollment");
    site.outpost_ok(&["devices", "enroll", "--id", "dev-a", "--out", &again_text, "--replace"]);
    let replaced = summarize(&read(&again.join("device.pem"))).expect("certificate");
    assert_ne!(replaced.serial, certificate.serial);
    let listed = site.outpost_json(&["devices", "enrolled"]);
    assert_eq!(listed["enrollments"][0]["serial"], replaced.serial.as_str());
    // The replaced certificate is revoked (on the next revocation list), the new one is not.
    let revoked: Vec<String> = site
        .runtime
        .block_on(site.store().revoked_certificates())
        .expect("revoked")
        .into_iter()
        .map(|(serial, _)| serial)
        .collect();
    assert_eq!(revoked, std::slice::from_ref(&certificate.serial));
    // An output directory that holds a device's key is not overwritten by accident.
    let refused = site.outpost_refused(&["devices", "enroll", "--id", "dev-b", "--out", &out_text]);
    assert!(refused.contains("holds a device already"), "{refused}");

    // The CA is the same for every enrollment (one per fleet).
    let fleet_ca = site.runtime.block_on(site.store().fleet_ca_fingerprint()).expect("db");
    assert!(fleet_ca.is_some_and(|fingerprint| fingerprint.starts_with("sha256:")));
    assert_eq!(read(&again.join("ca.pem")), read(&out.join("ca.pem")));
}

#[test]
fn enrollment_issues_a_certificate_and_records_the_device_on_sqlite() {
    enrollment_works_on(Backend::Sqlite);
}

#[test]
fn enrollment_issues_a_certificate_and_records_the_device_on_postgres() {
    enrollment_works_on(Backend::Postgres);
}

#[test]
fn bad_enrollments_are_refused_with_the_reason() {
    let site = Site::start(Backend::Sqlite, SiteOptions::default());
    let out = site.directory.path().join("bad");
    let out_text = out.display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--id", "dev/a"], "--id"),
        (&["--id", "outpost-control:main"], "--id"),
        (&["--id", "dev-a", "--tags", "site"], "--tags"),
        (&["--id", "dev-a", "--broker", "mqtt://broker.example"], "mqtts://"),
        (&["--id", "dev-a", "--valid-days", "0"], "validity"),
    ];
    for (arguments, expected) in cases {
        let mut args = vec!["devices", "enroll", "--out", &out_text];
        args.extend_from_slice(arguments);
        let refused = site.outpost_refused(&args);
        assert!(refused.contains(expected), "{arguments:?}: {refused} should mention {expected}");
        assert!(!out.join("device.key").exists(), "{arguments:?} wrote a key");
    }
    let listed = site.outpost_json(&["devices", "enrolled"]);
    assert_eq!(listed["enrollments"], serde_json::json!([]));

    // Only admins enroll.
    let operator = site.token_for("ops", outpost_control::store::users::UserRole::Operator);
    let output =
        site.outpost_as(&operator, &["devices", "enroll", "--id", "dev-c", "--out", &out_text]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("403"), "{stderr}");
}

#[test]
fn an_instance_whose_ca_is_not_the_fleets_refuses_to_issue() {
    let site = Site::start(Backend::Sqlite, SiteOptions::default());
    let out = site.directory.path().join("dev-a");
    site.outpost_ok(&["devices", "enroll", "--id", "dev-a", "--out", &out.display().to_string()]);
    // Another instance on the same database with a CA of its own: recorded fingerprint differs.
    let ca = outpost_control::ca::FleetCaCell::new(&site.directory.path().join("other-instance"));
    let files = ca.files().clone();
    let (other, key) =
        outpost_control::ca::FleetCa::generate(time::OffsetDateTime::now_utc()).expect("ca");
    files.store(&other, &key).expect("store");
    let error = site.runtime.block_on(ca.get(site.store())).expect_err("refused");
    assert!(error.to_string().contains("is not the fleet's CA"), "{error}");
    // And one without CA files is told what to copy rather than making a second CA.
    let empty = outpost_control::ca::FleetCaCell::new(&site.directory.path().join("third"));
    let error = site.runtime.block_on(empty.get(site.store())).expect_err("refused");
    assert!(error.to_string().contains("holds no CA"), "{error}");
    assert!(!empty.files().certificate().exists());
}
