//! The fleet inventory from real MQTT traffic: a rumqttc client publishes `hello` and `state`
//! (as a device does) to the embedded broker, and `outpost devices list` follows: tags, arch,
//! agent version, models, online/offline, filters by selector, presence and model. Malformed
//! messages are counted and dropped without stopping the subscriber. The same on PostgreSQL
//! through a real Mosquitto (external broker, shared subscriptions).

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_shared::wire::{
    DeviceId, Digest, Hello, ModelRef, ProtocolVersion, Publish, SlotName, Slots, State,
};
use rumqttc::{AsyncClient, MqttOptions, QoS};

use crate::server::{Backend, Site, SiteOptions, wait_until};

const TIMEOUT: Duration = Duration::from_secs(30);

fn hello(device: &DeviceId, tags: &[(&str, &str)], model_version: &str) -> Hello {
    let model = ModelRef {
        name: "fraud".into(),
        version: model_version.into(),
        digest: Digest::of(model_version.as_bytes()),
    };
    Hello {
        v: ProtocolVersion,
        device: device.clone(),
        agent_version: "0.1.0".into(),
        arch: "aarch64".into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        active_model: Some(model.clone()),
        previous_model: None,
        slots: Slots { active: Some(SlotName::A), a: Some(model), b: None },
        capabilities: vec![],
        trust_root_version: 1,
        last_plan_seq: None,
        ts_ms: 1_700_000_000_000,
    }
}

/// A device-like MQTT client publishing to the site's broker.
struct FakeDevice {
    client: AsyncClient,
    _event_loop: tokio::task::JoinHandle<()>,
}

impl FakeDevice {
    fn connect(site: &Site, client_id: &str) -> FakeDevice {
        let server = site.server();
        let mut options =
            MqttOptions::new(client_id, server.broker_host.clone(), server.broker_port);
        options.set_keep_alive(Duration::from_secs(10));
        let (client, mut event_loop) = AsyncClient::new(options, 32);
        let handle = site.runtime.spawn(async move {
            loop {
                if event_loop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        FakeDevice { client, _event_loop: handle }
    }

    fn publish(&self, site: &Site, message: Publish) {
        let qos = match message.qos {
            outpost_shared::wire::QoS::AtMostOnce => QoS::AtMostOnce,
            outpost_shared::wire::QoS::AtLeastOnce => QoS::AtLeastOnce,
            outpost_shared::wire::QoS::ExactlyOnce => QoS::ExactlyOnce,
        };
        site.runtime
            .block_on(self.client.publish(message.topic, qos, message.retain, message.payload))
            .expect("publish");
    }

    fn publish_raw(&self, site: &Site, topic: &str, payload: &[u8]) {
        site.runtime
            .block_on(self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()))
            .expect("publish");
    }
}

fn devices(site: &Site, filters: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["devices", "list"];
    args.extend_from_slice(filters);
    site.outpost_json(&args)["devices"].as_array().cloned().unwrap_or_default()
}

fn ids(devices: &[serde_json::Value]) -> Vec<String> {
    devices.iter().map(|d| d["device_id"].as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn hello_and_state_build_the_inventory_and_filters_apply() {
    let site = Site::start(Backend::Sqlite, SiteOptions::default());
    let berlin = DeviceId::new("berlin-1").expect("id");
    let paris = DeviceId::new("paris-1").expect("id");
    let device = FakeDevice::connect(&site, "test-publisher");

    device.publish(
        &site,
        Publish::message(&berlin, &hello(&berlin, &[("site", "berlin"), ("hw", "rpi4")], "1.0.0"))
            .expect("hello"),
    );
    device.publish(
        &site,
        Publish::message(&berlin, &State::online(1_700_000_000_001)).expect("state"),
    );
    device.publish(
        &site,
        Publish::message(&paris, &hello(&paris, &[("site", "paris")], "2.0.0")).expect("hello"),
    );
    device.publish(
        &site,
        Publish::message(&paris, &State::offline(1_700_000_000_002)).expect("state"),
    );

    wait_until("both devices in the inventory with their presence", TIMEOUT, || {
        let all = devices(&site, &[]);
        all.len() == 2 && all.iter().all(|d| d["presence"] != "unknown" && d["arch"] == "aarch64")
    });
    let all = devices(&site, &[]);
    let first = &all[0];
    assert_eq!(first["device_id"], "berlin-1");
    assert_eq!(first["tags"]["site"], "berlin");
    assert_eq!(first["agent_version"], "0.1.0");
    assert_eq!(first["active_model"]["version"], "1.0.0");
    assert_eq!(first["presence"], "online");
    assert!(first["last_seen_ms"].as_i64().unwrap_or(0) > 1_700_000_000_000);

    assert_eq!(ids(&devices(&site, &["--online"])), ["berlin-1"]);
    assert_eq!(ids(&devices(&site, &["--selector", "site=paris"])), ["paris-1"]);
    assert_eq!(ids(&devices(&site, &["--selector", "site!=paris,hw"])), ["berlin-1"]);
    assert_eq!(ids(&devices(&site, &["--model", "fraud@2.0.0"])), ["paris-1"]);
    assert_eq!(ids(&devices(&site, &["--model", "fraud"])).len(), 2);
    let table = site.outpost_ok(&["devices", "list", "--online"]);
    assert!(
        table.contains("berlin-1") && table.contains("online") && table.contains("fraud@1.0.0"),
        "{table}"
    );
    let refused = site.outpost_refused(&["devices", "list", "--selector", "site="]);
    assert!(refused.contains("(400)") && refused.contains("selector"), "{refused}");

    // Malformed messages are counted and dropped; the subscriber goes on.
    device.publish_raw(&site, "outpost/v1/berlin-1/hello", b"{not json");
    device.publish_raw(&site, "outpost/v1/berlin-1/stats", br#"{"v":2}"#);
    device.publish_raw(
        &site,
        "outpost/v1/berlin-1/state",
        br#"{"v":1,"state":"online","extra":1}"#,
    );
    // The Last Will form: offline without a time.
    device.publish(&site, Publish::last_will(&berlin));
    wait_until("berlin-1 to go offline after the malformed messages", TIMEOUT, || {
        devices(&site, &["--online"]).is_empty()
    });
    let metrics = site.server().metrics();
    let rejected: u64 =
        metrics.mqtt_rejected.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).sum();
    assert_eq!(rejected, 3, "three malformed messages counted");
    assert_eq!(metrics.windows_rejected.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Back online, with a new model: the inventory follows.
    device.publish(
        &site,
        Publish::message(&berlin, &hello(&berlin, &[("site", "berlin")], "2.0.0")).expect("hello"),
    );
    device.publish(
        &site,
        Publish::message(&berlin, &State::online(1_700_000_000_100)).expect("state"),
    );
    wait_until("berlin-1 back online on 2.0.0", TIMEOUT, || {
        ids(&devices(&site, &["--online", "--model", "fraud@2.0.0"])) == ["berlin-1"]
    });
}

#[test]
fn the_inventory_works_on_postgres_through_mosquitto_with_shared_subscriptions() {
    let site =
        Site::start(Backend::Postgres, SiteOptions { mosquitto: true, ..SiteOptions::default() });
    let device_id = DeviceId::new("retained-1").expect("id");
    let device = FakeDevice::connect(&site, "retained-publisher");
    device.publish(
        &site,
        Publish::message(&device_id, &hello(&device_id, &[("ring", "1")], "1.0.0")).expect("hello"),
    );
    device.publish(
        &site,
        Publish::message(&device_id, &State::online(1_700_000_000_001)).expect("state"),
    );
    wait_until("the device on PostgreSQL", TIMEOUT, || {
        ids(&devices(&site, &["--online", "--selector", "ring=1"])) == ["retained-1"]
    });
}
