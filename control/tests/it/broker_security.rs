//! Broker security against a real Mosquitto running exactly the configuration `outpost
//! broker-config mosquitto` writes: enrolled devices connect with their certificates and reach
//! only their own topics; a device cannot publish as another device, cannot write assign or
//! chunk topics and cannot read another device's assignment; a certificate from another CA, or
//! none, is refused; the control identity reads device reports (through the shared
//! subscriptions `outpost serve` uses) and publishes assignments, and `outpost serve` itself
//! runs against the broker over mutual TLS with the generated `[broker]` section, and a real
//! `outpost-agent` runs on exactly the files `outpost devices enroll` wrote and shows up online
//! in that instance's inventory.
//!
//! "Not delivered" is shown without sleeping: after each forbidden publish the same connection
//! (or, for assign, the control after the forbidden publish was acknowledged) sends an allowed
//! sentinel, and the observer's next message must be that sentinel. The broker handles one
//! connection's packets in order and acknowledges a QoS 1 publish after routing it, so a
//! forbidden message that got through would arrive first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_control::ca::{FleetCa, Identity, new_key_and_csr};
use outpost_control::config::{self};
use outpost_control::server;
use outpost_shared::wire::{
    Channel, DeviceId, Digest, Hello, ModelRef, ProtocolVersion, Publish, SlotName, Slots,
    control_subscriptions,
};
use outpost_tests::broker::{ClientOptions, ClientTls, TestClient};
use outpost_tests::mosquitto_tls::ConfiguredMosquitto;

use crate::server::{Backend, Site, SiteOptions, agent_binary, wait_until};

const TIMEOUT: Duration = Duration::from_secs(20);

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Client TLS with `certificate`/`key` from `directory` (none when `None`), trusting `ca`.
fn tls(ca: &Path, identity: Option<(&Path, &str, &str)>) -> ClientTls {
    ClientTls {
        ca: read(ca),
        client_auth: identity.map(|(directory, cert, key)| {
            (read(&directory.join(cert)), read(&directory.join(key)))
        }),
    }
}

fn options(port: u16, name: &str, tls: ClientTls) -> ClientOptions {
    let mut options = ClientOptions::local(port, name);
    options.tls = Some(tls);
    options
}

async fn connect(port: u16, name: &str, tls: ClientTls) -> TestClient {
    TestClient::connect(options(port, name, tls), TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("{name} connects: {error}"))
}

/// The next message must be `payload` on `topic` (and so nothing forbidden came before it).
async fn next_is(client: &mut TestClient, topic: &str, payload: &str, what: &str) {
    let message = client
        .next_message(TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("{what}: nothing arrived within {TIMEOUT:?}"));
    assert_eq!(
        (message.topic.as_str(), String::from_utf8_lossy(&message.payload).as_ref()),
        (topic, payload),
        "{what}"
    );
}

fn hello(device: &DeviceId) -> Hello {
    let model = ModelRef { name: "m".into(), version: "1".into(), digest: Digest::of(b"1") };
    Hello {
        v: ProtocolVersion,
        device: device.clone(),
        agent_version: "0.1.0".into(),
        arch: "x86_64".into(),
        tags: [("site".to_string(), "berlin".to_string())].into_iter().collect(),
        active_model: Some(model.clone()),
        previous_model: None,
        slots: Slots { active: Some(SlotName::A), a: Some(model), b: None },
        capabilities: vec![],
        trust_root_version: 1,
        last_plan_seq: None,
        ts_ms: 1_700_000_000_000,
    }
}

struct Fleet {
    site: Site,
    devices: PathBuf,
    broker_dir: PathBuf,
}

/// A control site that enrolled `dev-a` and `dev-b` and wrote a Mosquitto configuration.
fn enrolled_fleet() -> Fleet {
    let site = Site::start(Backend::Sqlite, SiteOptions::default());
    let devices = site.directory.path().join("devices");
    for device in ["dev-a", "dev-b"] {
        let out = devices.join(device).display().to_string();
        site.outpost_ok(&[
            "devices",
            "enroll",
            "--id",
            device,
            "--tags",
            "site=berlin",
            "--out",
            &out,
        ]);
    }
    let broker_dir = site.directory.path().join("mosquitto");
    let printed = site.outpost_ok(&[
        "broker-config",
        "mosquitto",
        "--out",
        &broker_dir.display().to_string(),
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
        "--control",
        "main",
    ]);
    assert!(printed.contains("mosquitto.conf"), "{printed}");
    Fleet { site, devices, broker_dir }
}

#[test]
fn mosquitto_pins_each_certificate_to_its_own_topics() {
    let fleet = enrolled_fleet();
    let broker = ConfiguredMosquitto::start(&fleet.broker_dir.join("mosquitto.conf"))
        .expect("mosquitto runs the generated configuration");
    let port = broker.port();
    let ca = fleet.broker_dir.join("ca.pem");
    let (dir_a, dir_b) = (fleet.devices.join("dev-a"), fleet.devices.join("dev-b"));
    let device_tls = |dir: &Path| tls(&ca, Some((dir, "device.pem", "device.key")));
    fleet.site.runtime.block_on(async {
        let mut control = connect(
            port,
            "control",
            tls(&ca, Some((&fleet.broker_dir, "control-main.pem", "control-main.key"))),
        )
        .await;
        // The control's own subscriptions: $share/outpost-control/outpost/v1/+/<channel>.
        let filters = control_subscriptions();
        control.subscribe(&filters.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let mut device_a = connect(port, "dev-a", device_tls(&dir_a)).await;
        let mut device_b = connect(port, "dev-b", device_tls(&dir_b)).await;
        device_a
            .subscribe(&[
                "outpost/v1/dev-a/assign",
                "outpost/v1/dev-a/chunk",
                "outpost/v1/dev-b/assign",
                "outpost/v1/+/chunk",
            ])
            .await;
        device_b.subscribe(&["outpost/v1/dev-b/assign", "outpost/v1/dev-b/chunk"]).await;

        // A device publishes its own reports; the control reads them.
        for channel in [Channel::Hello, Channel::Stats, Channel::Events, Channel::Fetch] {
            let topic = format!("outpost/v1/dev-a/{channel}");
            device_a.publish(&topic, format!("own {channel}"), false).await;
            next_is(&mut control, &topic, &format!("own {channel}"), "the control reads dev-a")
                .await;
        }

        // Publishing as another device is dropped: only the sentinel after it arrives.
        for channel in [Channel::Hello, Channel::State, Channel::Stats, Channel::Events] {
            device_a.publish(&format!("outpost/v1/dev-b/{channel}"), "forged", false).await;
            device_a.publish("outpost/v1/dev-a/events", "sentinel", false).await;
            next_is(
                &mut control,
                "outpost/v1/dev-a/events",
                "sentinel",
                &format!("dev-a publishing dev-b's {channel}"),
            )
            .await;
        }

        // A device cannot write assign or chunk topics, its own or another's; and it cannot
        // read another device's assignment. The control's assignments are the sentinels.
        for topic in [
            "outpost/v1/dev-a/assign",
            "outpost/v1/dev-a/chunk",
            "outpost/v1/dev-b/assign",
            "outpost/v1/dev-b/chunk",
        ] {
            device_a.publish(topic, "forged", false).await;
        }
        control.publish("outpost/v1/dev-b/assign", "plan for b", false).await;
        control.publish("outpost/v1/dev-a/assign", "plan for a", false).await;
        next_is(&mut device_b, "outpost/v1/dev-b/assign", "plan for b", "dev-b's assignment").await;
        next_is(
            &mut device_a,
            "outpost/v1/dev-a/assign",
            "plan for a",
            "dev-a sees neither forged assign/chunk nor dev-b's assignment",
        )
        .await;
        // The control writes chunks; a device reads only its own.
        control.publish("outpost/v1/dev-b/chunk", "chunk for b", false).await;
        control.publish("outpost/v1/dev-a/chunk", "chunk for a", false).await;
        next_is(&mut device_b, "outpost/v1/dev-b/chunk", "chunk for b", "dev-b's chunk").await;
        next_is(&mut device_a, "outpost/v1/dev-a/chunk", "chunk for a", "dev-a's own chunk").await;

        // Without a certificate, or with one from another CA (even naming an enrolled device),
        // the broker refuses the connection.
        let refused = TestClient::connect(options(port, "no-cert", tls(&ca, None)), TIMEOUT).await;
        assert!(refused.is_err(), "a client without a certificate was accepted");
        let foreign = site_foreign_identity(&fleet.site.directory.path().join("foreign"));
        let refused = TestClient::connect(
            options(port, "foreign", tls(&ca, Some((&foreign, "device.pem", "device.key")))),
            TIMEOUT,
        )
        .await;
        assert!(refused.is_err(), "a certificate from another CA was accepted");
        // The enrolled devices are still connected and served.
        device_a.publish("outpost/v1/dev-a/stats", "still here", false).await;
        next_is(&mut control, "outpost/v1/dev-a/stats", "still here", "after the refusals").await;
    });
    let log = broker.log();
    assert!(log.contains("dev-a"), "the broker names clients by certificate: {log}");
}

/// A key and a certificate for `dev-a` signed by a CA that is not the fleet's.
fn site_foreign_identity(directory: &Path) -> PathBuf {
    std::fs::create_dir_all(directory).expect("dir");
    let (ca, _) = FleetCa::generate(time::OffsetDateTime::now_utc()).expect("ca");
    let (key, csr) = new_key_and_csr("dev-a").expect("csr");
    let identity = Identity::Device(DeviceId::new("dev-a").expect("id"));
    let issued = ca.issue(&identity, &csr, 30, time::OffsetDateTime::now_utc()).expect("issued");
    std::fs::write(directory.join("device.pem"), issued.certificate_pem).expect("write");
    std::fs::write(directory.join("device.key"), key.as_bytes()).expect("write");
    directory.to_path_buf()
}

/// A second control instance configured with the generated `[broker]` section (only the port
/// differs: the test broker listens on a free one), with a data directory of its own.
fn second_instance(fleet: &Fleet, broker: &ConfiguredMosquitto) -> server::RunningServer {
    let snippet_path = fleet.broker_dir.join("control-main.toml");
    let snippet = String::from_utf8(read(&snippet_path)).expect("UTF-8");
    let data_dir = fleet.site.directory.path().join("second-instance");
    let environment = vec![
        ("OUTPOST__DATA_DIR".to_string(), data_dir.display().to_string()),
        ("OUTPOST__API__LISTEN".to_string(), "127.0.0.1:0".to_string()),
        (
            "OUTPOST__BROKER__URL".to_string(),
            format!("mqtts://{}:{}", broker.host(), broker.port()),
        ),
    ];
    let config = config::load_from(Some(("control-main.toml", &snippet)), &environment)
        .expect("the generated [broker] section is a valid configuration");
    fleet
        .site
        .runtime
        .block_on(async { tokio::time::timeout(TIMEOUT, server::start(config)).await })
        .expect("started in time")
        .expect("outpost serve starts against the secured broker")
}

#[test]
fn outpost_serve_connects_to_the_secured_broker_with_its_control_identity() {
    let fleet = enrolled_fleet();
    let broker = ConfiguredMosquitto::start(&fleet.broker_dir.join("mosquitto.conf"))
        .expect("mosquitto runs the generated configuration");
    let runtime = &fleet.site.runtime;
    let server = second_instance(&fleet, &broker);

    let device = DeviceId::new("dev-a").expect("id");
    let dir_a = fleet.devices.join("dev-a");
    let message = Publish::message(&device, &hello(&device)).expect("hello");
    runtime.block_on(async {
        let mut device_a = connect(
            broker.port(),
            "dev-a",
            tls(&fleet.broker_dir.join("ca.pem"), Some((&dir_a, "device.pem", "device.key"))),
        )
        .await;
        device_a.publish(&message.topic, message.payload.clone(), true).await;
    });
    wait_until("the hello of dev-a to reach the inventory over mTLS", TIMEOUT, || {
        runtime.block_on(server.store().device("dev-a")).ok().flatten().is_some()
    });
    let record = runtime.block_on(server.store().device("dev-a")).expect("db").expect("device");
    assert_eq!(record.tags.get("site").map(String::as_str), Some("berlin"));
    runtime.block_on(server.shutdown());
}

/// A process killed when dropped.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_agent_runs_on_its_enrolled_files_through_the_secured_broker() {
    let fleet = enrolled_fleet();
    let broker = ConfiguredMosquitto::start(&fleet.broker_dir.join("mosquitto.conf"))
        .expect("mosquitto runs the generated configuration");
    let fixture = outpost_tests::fixtures::Fixture::new(&fleet.site.directory.path().join("keys"));
    // Enrolled for this broker, with the files left where the agent reads them, and the
    // broker reached by name (its certificate names `localhost`).
    let out = fleet.devices.join("dev-c");
    let out_text = out.display().to_string();
    fleet.site.outpost_ok(&[
        "devices",
        "enroll",
        "--id",
        "dev-c",
        "--tags",
        "site=paris",
        "--out",
        &out_text,
        "--device-dir",
        &out_text,
        "--broker",
        &format!("mqtts://localhost:{}", broker.port()),
        "--trust-root",
        &fixture.trust_root_path().display().to_string(),
    ]);
    let server = second_instance(&fleet, &broker);
    let api_port = outpost_tests::broker::free_port().expect("port");
    let agent = |command: &str| {
        let mut process = std::process::Command::new(agent_binary());
        process
            .arg(command)
            .arg("--config")
            .arg(out.join("agent.toml"))
            .env("OUTPOST_AGENT__DATA_DIR", out.join("data"))
            .env("OUTPOST_AGENT__API__LISTEN", format!("127.0.0.1:{api_port}"));
        process
    };
    let provisioned = agent("provision")
        .arg("--trust")
        .arg(out.join("root.json"))
        .output()
        .expect("outpost-agent provision");
    assert!(provisioned.status.success(), "provision: {}", crate::server::show(&provisioned));
    let _agent = Process(
        agent("run")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("outpost-agent run"),
    );
    let runtime = &fleet.site.runtime;
    // `state` (presence) and `hello` (tags) are separate messages; wait for both.
    wait_until("dev-c online with its tags in the second instance's inventory", TIMEOUT, || {
        runtime
            .block_on(server.store().device("dev-c"))
            .ok()
            .flatten()
            .is_some_and(|device| device.presence == "online" && device.tags.contains_key("site"))
    });
    let device = runtime.block_on(server.store().device("dev-c")).expect("db").expect("device");
    assert_eq!(device.tags.get("site").map(String::as_str), Some("paris"));
    assert!(broker.log().contains("as dev-c"), "named by its certificate: {}", broker.log());
    runtime.block_on(server.shutdown());
}

#[test]
fn a_revoked_device_is_refused_once_the_broker_has_the_new_revocation_list() {
    let fleet = enrolled_fleet();
    let config = fleet.broker_dir.join("mosquitto.conf");
    let ca = fleet.broker_dir.join("ca.pem");
    let device_tls =
        |device: &str| tls(&ca, Some((&fleet.devices.join(device), "device.pem", "device.key")));
    let runtime = &fleet.site.runtime;
    {
        let broker = ConfiguredMosquitto::start(&config).expect("mosquitto");
        runtime.block_on(async {
            connect(broker.port(), "dev-b", device_tls("dev-b")).await.disconnect().await;
        });
    }

    let printed = fleet.site.outpost_ok(&["devices", "revoke", "--id", "dev-b"]);
    assert!(printed.contains("revoked dev-b: "), "{printed}");
    let crl = fleet.broker_dir.join("crl.pem");
    let before = std::fs::read_to_string(&crl).expect("crl");
    let printed =
        fleet.site.outpost_ok(&["broker-config", "crl", "--out", &crl.display().to_string()]);
    assert!(printed.contains("1 revoked certificate"), "{printed}");
    assert_ne!(std::fs::read_to_string(&crl).expect("crl"), before);

    let broker = ConfiguredMosquitto::start(&config).expect("mosquitto with the new list");
    runtime.block_on(async {
        let refused =
            TestClient::connect(options(broker.port(), "dev-b", device_tls("dev-b")), TIMEOUT)
                .await;
        assert!(refused.is_err(), "a revoked certificate was accepted");
        let mut device_a = connect(broker.port(), "dev-a", device_tls("dev-a")).await;
        device_a.subscribe(&["outpost/v1/dev-a/assign"]).await;
    });

    // The enrollment is gone, the revocation audited, and revoking again has nothing to do.
    let listed = fleet.site.outpost_json(&["devices", "enrolled"]);
    let ids: Vec<&str> = listed["enrollments"]
        .as_array()
        .expect("enrollments")
        .iter()
        .filter_map(|enrollment| enrollment["device_id"].as_str())
        .collect();
    assert_eq!(ids, ["dev-a"]);
    let audit = runtime
        .block_on(fleet.site.store().audit_events(Some("device.revoke"), 10))
        .expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].subject, "device dev-b");
    let refused = fleet.site.outpost_refused(&["devices", "revoke", "--id", "dev-b"]);
    assert!(refused.contains("not enrolled"), "{refused}");
}
