//! Several `outpost serve` processes on one PostgreSQL database and one Mosquitto split ingest
//! through the shared subscription; one is killed (SIGKILL) mid-stream and started again on its
//! data directory. Every window of every simulated device is counted exactly once, and the
//! fleet aggregate holds the sum of what was published.
//!
//! What Mosquitto 2.0 does, and what this test relies on: it hands each message of a shared
//! subscription to one member in turn, connected or not. A member with a persistent session
//! (every external-broker instance has one, `control/src/server/instance.rs`) that is down
//! keeps its turns: those windows, and the ones it had in flight unacknowledged, wait in its
//! session until it reconnects under the same client id. So the killed instance's share is
//! ingested when it comes back; the other instance keeps ingesting its own share meanwhile.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use outpost_control::api::client::ApiClient;
use outpost_control::store::ingest::AggregateKind;
use outpost_control::store::{Store, StoreOptions};
use outpost_shared::profile::{FeatureProfile, FeatureSource, Profile};
use outpost_shared::stats::{Histogram, Moments};
use outpost_shared::wire::{DeviceId, Digest, ModelRef, Publish};
use outpost_tests::broker::{ClientOptions, Mosquitto, MosquittoOptions, TestClient};
use outpost_tests::postgres::Postgres;

use crate::ingest::{hello, window};
use crate::server::{show, wait_until};

const TIMEOUT: Duration = Duration::from_secs(60);
const DEVICES: usize = 40;
const WINDOWS_PER_DEVICE: u64 = 30;
const PUBLISHERS: usize = 4;

/// Mosquitto as the control's sessions need it (see `control/src/server/instance.rs`): a
/// queue per session large enough for an instance's share while it is down (the default of
/// 1000 drops the rest), and a wide in-flight window so batches fill.
pub fn mosquitto_settings() -> Vec<String> {
    vec!["max_queued_messages 1000000".into(), "max_inflight_messages 1000".into()]
}

/// One `outpost serve` process with its own data directory and API port; killed when dropped.
struct Instance {
    name: &'static str,
    config: PathBuf,
    log: PathBuf,
    api: Option<ApiClient>,
    child: Option<Child>,
}

impl Instance {
    fn new(name: &'static str, root: &Path, database_url: &str, broker: &Mosquitto) -> Instance {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("instance dir");
        let api_port = outpost_tests::broker::free_port().expect("free port");
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n[database]\nurl = \"{database_url}\"\n\
                 [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
                 [broker]\nurl = \"mqtt://{}:{}\"\n",
                dir.join("state").display(),
                broker.host(),
                broker.port()
            ),
        )
        .expect("config");
        Instance { name, config, log: dir.join("serve.log"), api: None, child: None }
    }

    fn api_url(&self) -> String {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let listen = text
            .lines()
            .find_map(|line| line.strip_prefix("listen = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .expect("api.listen");
        format!("http://{listen}")
    }

    fn start(&mut self, token: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn outpost serve");
        self.child = Some(child);
        let api = ApiClient::new(&self.api_url(), Some(token.to_string()), None).expect("client");
        wait_until(&format!("{} to answer /health", self.name), TIMEOUT, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{} exited early with {status}:\n{}", self.name, self.log_text());
            }
            api.get_json("/health", &[]).is_ok()
        });
        self.api = Some(api);
    }

    /// SIGKILL: no shutdown, no DISCONNECT, batches possibly half written.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.api = None;
    }

    /// `outpost_windows_ingested_total` of this process (since it started).
    fn ingested(&self) -> u64 {
        let Some(api) = &self.api else { return 0 };
        let Ok(text) = api.get_json("/metrics", &[]) else { return 0 };
        text.as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("outpost_windows_ingested_total "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn two_servers_split_ingest_and_a_killed_one_loses_no_window_and_counts_none_twice() {
    let root = tempfile::tempdir().expect("tempdir");
    let postgres = Postgres::start().expect("start PostgreSQL");
    let database_url = postgres.url();
    let broker = Mosquitto::start_with(MosquittoOptions {
        extra: mosquitto_settings(),
        ..MosquittoOptions::default()
    })
    .expect("start Mosquitto");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut a = Instance::new("a", root.path(), &database_url, &broker);
    let mut b = Instance::new("b", root.path(), &database_url, &broker);
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["users", "add", "admin", "--role", "admin", "--config"])
        .arg(&a.config)
        .env_remove("OUTPOST_SERVER")
        .env_remove("OUTPOST_TOKEN")
        .output()
        .expect("users add");
    assert!(output.status.success(), "{}", show(&output));
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    a.start(&token);
    b.start(&token);

    // A model the registry does not know: aggregated over the windows' own edges.
    let profile = Profile {
        v: 1,
        reference_count: 0,
        inputs: vec![FeatureProfile {
            name: "x".into(),
            source: FeatureSource::Element { tensor: "input".into(), index: 0 },
            histogram: Histogram::new(vec![0.0, 1.0, 2.0, 4.0]).expect("edges"),
            moments: Moments::default(),
            sketch: None,
        }],
        outputs: vec![],
        classifier: None,
    };
    let model = ModelRef {
        name: "fleet".into(),
        version: "1".into(),
        digest: Digest::of(b"the multi-instance test model"),
    };
    let digest = model.digest.as_str().to_string();
    let devices: Vec<DeviceId> =
        (0..DEVICES).map(|n| DeviceId::new(format!("dev-{n:03}")).expect("id")).collect();
    let now = u64::try_from(outpost_control::store::now_ms()).expect("after 1970");
    let hour_start = now / 3_600_000 * 3_600_000 - 3_600_000;
    let requests = |seq: u64| 5 + seq % 7;
    let message = |device: &DeviceId, seq: u64| {
        let w =
            window(device, &model, &profile, seq, hour_start + seq * 60_000, requests(seq), 0.1);
        Publish::message(device, &w).expect("window")
    };

    let mut publishers: Vec<TestClient> = (0..PUBLISHERS)
        .map(|_| {
            let options = ClientOptions::local(broker.port(), "fleet-publisher");
            runtime.block_on(TestClient::connect(options, TIMEOUT)).expect("publisher connects")
        })
        .collect();
    let publish_seq = |publishers: &mut Vec<TestClient>, seq: u64| {
        for (n, device) in devices.iter().enumerate() {
            let message = message(device, seq);
            let client = &mut publishers[n % PUBLISHERS];
            runtime.block_on(client.publish(&message.topic, message.payload, false));
        }
    };
    for (n, device) in devices.iter().enumerate() {
        let message =
            Publish::message(device, &hello(device, &[("site", "x")], &model)).expect("hello");
        runtime.block_on(publishers[n % PUBLISHERS].publish(
            &message.topic,
            message.payload,
            message.retain,
        ));
    }

    // Both instances take a share of the stream.
    for seq in 1..=10 {
        publish_seq(&mut publishers, seq);
    }
    wait_until("both instances ingesting", TIMEOUT, || a.ingested() > 0 && b.ingested() > 0);

    // Mid-stream: `a` is killed while windows keep coming, some of them sent twice.
    for seq in 11..=15 {
        publish_seq(&mut publishers, seq);
    }
    a.kill();
    let b_at_kill = b.ingested();
    for seq in (16..=WINDOWS_PER_DEVICE).chain(5..=8) {
        publish_seq(&mut publishers, seq);
    }
    wait_until("`b` ingesting its share while `a` is down", TIMEOUT, || b.ingested() > b_at_kill);

    // `a` comes back on its data directory: the same client id, the same broker session.
    a.start(&token);
    let store = runtime
        .block_on(Store::connect(&StoreOptions {
            url: database_url.clone(),
            max_connections: 2,
            acquire_timeout: TIMEOUT,
        }))
        .expect("store");
    let expected_windows = DEVICES as u64 * WINDOWS_PER_DEVICE;
    let fleet_total = || {
        runtime
            .block_on(store.aggregates(AggregateKind::Cohort, &digest, "*", 0, i64::MAX))
            .expect("aggregates")
            .iter()
            .map(|row| (row.windows, row.request_count))
            .fold((0, 0), |(w, r), (rw, rr)| (w + rw, r + rr))
    };
    let waited = outpost_tests::wait::try_until_some(TIMEOUT, "every window counted", || {
        (fleet_total().0 >= expected_windows).then_some(())
    });
    if let Err(error) = waited {
        panic!(
            "{error}: counted {:?} of {expected_windows}\n--- a:\n{}\n--- b:\n{}\n--- broker:\n{}",
            fleet_total(),
            a.log_text(),
            b.log_text(),
            broker.log()
        );
    }
    // A last window per device, through the restarted pair: everything sent before it has been
    // handled once it is counted.
    publish_seq(&mut publishers, WINDOWS_PER_DEVICE + 1);
    let expected_windows = expected_windows + DEVICES as u64;
    wait_until("the last windows counted", TIMEOUT, || fleet_total().0 >= expected_windows);

    let per_device_requests: u64 = (1..=WINDOWS_PER_DEVICE + 1).map(requests).sum();
    assert_eq!(
        fleet_total(),
        (expected_windows, DEVICES as u64 * per_device_requests),
        "the fleet aggregate holds each window once"
    );
    for device in &devices {
        let seen = runtime.block_on(store.windows_seen(device.as_str())).expect("seen");
        assert_eq!(seen, WINDOWS_PER_DEVICE + 1, "{device}: every sequence number once");
        let rows = runtime
            .block_on(store.aggregates(
                AggregateKind::Device,
                &digest,
                device.as_str(),
                0,
                i64::MAX,
            ))
            .expect("device aggregates");
        let windows: u64 = rows.iter().map(|row| row.windows).sum();
        let requests_counted: u64 = rows.iter().map(|row| row.request_count).sum();
        assert_eq!((windows, requests_counted), (WINDOWS_PER_DEVICE + 1, per_device_requests));
    }
    let site: u64 = runtime
        .block_on(store.aggregates(AggregateKind::Cohort, &digest, "site=x", 0, i64::MAX))
        .expect("cohort")
        .iter()
        .map(|row| row.windows)
        .sum();
    assert_eq!(site, expected_windows, "the tag cohort too");
    runtime.block_on(store.close());
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start().expect("start Mosquitto");
    let mut first = Instance::new("one", root.path(), "sqlite::memory:", &broker);
    // The same data directory under another API port.
    let text = std::fs::read_to_string(&first.config).expect("config");
    let second_config = root.path().join("second.toml");
    let port = outpost_tests::broker::free_port().expect("port");
    let second_text = text
        .lines()
        .map(|line| {
            if line.starts_with("listen = ") {
                format!("listen = \"127.0.0.1:{port}\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&second_config, second_text).expect("config");
    first.start("no-token-needed-for-health");
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config"])
        .arg(&second_config)
        .output()
        .expect("second serve");
    assert!(!output.status.success(), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another `outpost serve`"), "{}", show(&output));
}
