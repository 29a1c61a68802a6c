//! Statistics ingest through real brokers: a rumqttc client acting as a device publishes
//! windows (in order, out of order, twice, malformed, over other edges) and the aggregates count
//! each (device, seq) once and merge exactly, per device and per cohort, on SQLite with the
//! embedded broker and on PostgreSQL through Mosquitto. A `outpost serve` process killed with
//! SIGKILL mid-stream and started again (Mosquitto keeps its persistent session; SQLite and
//! PostgreSQL) loses no window and counts none twice. Downsampling merges old buckets into day
//! buckets without changing the totals.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use outpost_control::store::ingest::{AggregateKind, AggregateWindow, DAY_MS};
use outpost_shared::profile::{FeatureProfile, Profile};
use outpost_shared::stats::{Histogram, Moments, confidence_edges};
use outpost_shared::wire::{
    ClassifierStats, DeviceId, Digest, FeatureStats, Hello, LatencyHistogram, ModelRef,
    ProtocolVersion, Publish, SlotName, Slots, StatsWindow,
};
use outpost_tests::broker::{ClientOptions, Mosquitto, TestClient};
use serde_json::Value;

use crate::server::{Backend, Fleet, Site, SiteOptions, show, wait_until};

const TIMEOUT: Duration = Duration::from_secs(30);
/// An hour: the default bucket.
const HOUR_MS: u64 = 3_600_000;

/// A window of `n` requests of `model` over the profile's edges, values shifted by `shift`.
pub fn window(
    device: &DeviceId,
    model: &ModelRef,
    profile: &Profile,
    seq: u64,
    start_ms: u64,
    n: u64,
    shift: f64,
) -> StatsWindow {
    let feature = |feature: &FeatureProfile| {
        let mut histogram = Histogram::new(feature.histogram.edges.clone()).expect("edges");
        let mut moments = Moments::default();
        let low = feature.histogram.edges[0];
        let high = feature.histogram.edges[feature.histogram.edges.len() - 1];
        for i in 0..n {
            let x = low + (high - low) * ((i as f64 * 0.37 + shift).fract());
            histogram.observe(x);
            moments.observe(x);
        }
        FeatureStats { name: feature.name.clone(), histogram, moments, kll_sketch: None }
    };
    let mut latency = LatencyHistogram::default();
    for i in 0..n {
        latency.observe(800 + i * 17);
    }
    let classifier = profile.classifier.as_ref().map(|classifier| {
        let classes = classifier.class_counts.len();
        let mut class_counts = vec![0; classes];
        let mut confidence = Histogram::new(confidence_edges()).expect("edges");
        for i in 0..n {
            class_counts[(i as usize) % classes] += 1;
            confidence.observe(0.55 + 0.4 * ((i as f64 * 0.13 + shift).fract()));
        }
        ClassifierStats { class_counts, confidence }
    });
    StatsWindow {
        v: ProtocolVersion,
        device: device.clone(),
        model: model.clone(),
        seq,
        start_ms,
        end_ms: start_ms + 60_000,
        count: n,
        errors: BTreeMap::from([("runtime".to_string(), 1)]),
        latency,
        inputs: profile.inputs.iter().map(feature).collect(),
        outputs: profile.outputs.iter().map(feature).collect(),
        classifier,
    }
}

pub fn hello(device: &DeviceId, tags: &[(&str, &str)], model: &ModelRef) -> Hello {
    Hello {
        v: ProtocolVersion,
        device: device.clone(),
        agent_version: "0.1.0".into(),
        arch: "aarch64".into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        active_model: Some(model.clone()),
        previous_model: None,
        slots: Slots { active: Some(SlotName::A), a: Some(model.clone()), b: None },
        capabilities: vec![],
        trust_root_version: 1,
        last_plan_seq: None,
        ts_ms: 1_700_000_000_000,
    }
}

/// A device's MQTT client on the site's broker.
pub fn device_client(site: &Site, prefix: &str) -> TestClient {
    let server = site.server();
    let options = ClientOptions::local(server.broker_port, prefix);
    site.runtime.block_on(TestClient::connect(options, TIMEOUT)).expect("device connects")
}

pub fn send(site: &Site, client: &mut TestClient, message: Publish) {
    site.runtime.block_on(client.publish(&message.topic, message.payload, message.retain));
}

/// The API as the admin.
pub fn api(site: &Site) -> outpost_control::api::client::ApiClient {
    outpost_control::api::client::ApiClient::new(site.url(), Some(site.admin_token.clone()), None)
        .expect("client")
}

fn aggregates(site: &Site, digest: &str, key: (&str, &str)) -> Value {
    api(site)
        .get_json("/v1/aggregates", &[("model", digest.to_string()), (key.0, key.1.to_string())])
        .expect("aggregates")
}

fn counter(site: &Site, read: impl Fn(&outpost_control::server::metrics::Metrics) -> u64) -> u64 {
    read(site.server().metrics())
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// Pushes `good.bundle` and returns its model reference and profile.
fn pushed_model(site: &Site, fleet: &Fleet) -> (ModelRef, Profile) {
    site.outpost_ok(&["model", "push", &fleet.path_text("good.bundle")]);
    let bytes = std::fs::read(fleet.path("good.bundle")).expect("bundle");
    let digest = outpost_shared::sha256_digest(&bytes);
    let profile = site
        .runtime
        .block_on(site.store().bundle_profile(&digest))
        .expect("profile query")
        .expect("stored profile");
    let model = ModelRef {
        name: "fraud".into(),
        version: "1.0.0".into(),
        digest: Digest::parse(&digest).expect("digest"),
    };
    (model, profile)
}

/// The start of yesterday (UTC): recent enough for any retention, and both test hours fall in
/// one day.
fn yesterday_midnight_ms() -> u64 {
    let now = u64::try_from(outpost_control::store::now_ms()).expect("after 1970");
    let day = DAY_MS as u64;
    now / day * day - day
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs())), "{what}: {a} vs {b}");
}

/// Counts, histograms and min/max equal; means and M2 equal up to rounding.
fn assert_same_aggregate(stored: &AggregateWindow, expected: &AggregateWindow) {
    assert_eq!(stored.windows, expected.windows);
    assert_eq!(stored.count, expected.count);
    assert_eq!(stored.errors, expected.errors);
    assert_eq!((stored.start_ms, stored.end_ms), (expected.start_ms, expected.end_ms));
    assert_eq!(stored.latency.counts, expected.latency.counts);
    assert_eq!(stored.classifier, expected.classifier);
    for (a, b) in stored
        .inputs
        .iter()
        .chain(&stored.outputs)
        .zip(expected.inputs.iter().chain(&expected.outputs))
    {
        assert_eq!(a.histogram, b.histogram, "{}", a.name);
        assert_eq!(a.moments.count, b.moments.count);
        assert_eq!((a.moments.min, a.moments.max), (b.moments.min, b.moments.max));
        assert_close(a.moments.mean, b.moments.mean, &a.name);
        assert_close(a.moments.m2, b.moments.m2, &a.name);
    }
}

fn scenario(backend: Backend, mosquitto: bool) {
    let fleet = Fleet::new();
    let site = Site::start(
        backend,
        SiteOptions {
            trust_root: Some(fleet.path("root.json")),
            mosquitto,
            ..SiteOptions::default()
        },
    );
    let (model, profile) = pushed_model(&site, &fleet);
    let digest = model.digest.as_str().to_string();
    let berlin = DeviceId::new("berlin-1").expect("id");
    let mut device = device_client(&site, "ingest-device");
    send(
        &site,
        &mut device,
        Publish::message(&berlin, &hello(&berlin, &[("site", "berlin"), ("hw", "rpi4")], &model))
            .expect("hello"),
    );
    wait_until("the device in the inventory", TIMEOUT, || {
        site.runtime.block_on(site.store().device("berlin-1")).ok().flatten().is_some()
    });

    // Hour 1: seq 3, 1, 2 (out of order); hour 2: seq 4. Then 1 and 2 again.
    let hour = yesterday_midnight_ms();
    let windows: Vec<StatsWindow> = vec![
        window(&berlin, &model, &profile, 3, hour + 120_000, 40, 0.3),
        window(&berlin, &model, &profile, 1, hour, 25, 0.1),
        window(&berlin, &model, &profile, 2, hour + 60_000, 33, 0.2),
        window(&berlin, &model, &profile, 4, hour + HOUR_MS, 50, 0.4),
    ];
    for w in windows.iter().chain(&windows[1..3]) {
        send(&site, &mut device, Publish::message(&berlin, w).expect("window"));
    }
    // Refused, each counted: other edges, a device other than the topic's, malformed, too big,
    // too old.
    let mut other_edges = window(&berlin, &model, &profile, 5, hour, 10, 0.5);
    other_edges.inputs[0].histogram.edges[0] -= 1.0;
    let stats_topic = "outpost/v1/berlin-1/stats";
    send(&site, &mut device, Publish::message(&berlin, &other_edges).expect("window"));
    let paris = DeviceId::new("paris-1").expect("id");
    let foreign = window(&paris, &model, &profile, 6, hour, 10, 0.5);
    let foreign_bytes = serde_json::to_vec(&foreign).expect("json");
    site.runtime.block_on(device.publish(stats_topic, foreign_bytes, false));
    site.runtime.block_on(device.publish(stats_topic, b"{\"v\":1,\"seq\":".to_vec(), false));
    site.runtime.block_on(device.publish(stats_topic, vec![b' '; 1024 * 1024 + 1], false));
    // From a device whose clock says 1970: older than the retention, refused.
    let ancient = window(&berlin, &model, &profile, 9, 0, 10, 0.5);
    send(&site, &mut device, Publish::message(&berlin, &ancient).expect("window"));
    // A last good window: every message before it has been handled when it is counted.
    let last = window(&berlin, &model, &profile, 7, hour + HOUR_MS + 60_000, 5, 0.6);
    send(&site, &mut device, Publish::message(&berlin, &last).expect("window"));

    wait_until("five windows ingested", TIMEOUT, || {
        counter(&site, |m| load(&m.windows_ingested)) == 5
    });
    let metrics = site.server().metrics();
    assert_eq!(load(&metrics.windows_duplicate), 2, "two duplicates counted once");
    assert_eq!(load(&metrics.windows_rejected), 5, "five refused windows");
    assert_eq!(site.runtime.block_on(site.store().windows_seen("berlin-1")).expect("seen"), 5);

    let mut expected_hour_1 = AggregateWindow::of(&windows[1]);
    expected_hour_1.merge(&AggregateWindow::of(&windows[2])).expect("merge");
    expected_hour_1.merge(&AggregateWindow::of(&windows[0])).expect("merge");
    let mut expected_hour_2 = AggregateWindow::of(&windows[3]);
    expected_hour_2.merge(&AggregateWindow::of(&last)).expect("merge");
    let mut expected_total = expected_hour_1.clone();
    expected_total.merge(&expected_hour_2).expect("merge");

    for key in
        [("device", "berlin-1"), ("cohort", "*"), ("cohort", "site=berlin"), ("cohort", "hw=rpi4")]
    {
        let answer = aggregates(&site, &digest, key);
        let buckets = answer["buckets"].as_array().expect("buckets");
        assert_eq!(buckets.len(), 2, "{key:?}: two hour buckets");
        assert_eq!(buckets[0]["bucket_start_ms"], hour);
        assert_eq!(buckets[0]["bucket_ms"], HOUR_MS);
        assert_eq!(buckets[0]["windows"], 3);
        assert_eq!(buckets[1]["windows"], 2);
        let first: AggregateWindow =
            serde_json::from_value(buckets[0]["aggregate"].clone()).expect("aggregate");
        assert_same_aggregate(&first, &expected_hour_1);
        let total: AggregateWindow =
            serde_json::from_value(answer["total"].clone()).expect("total");
        assert_same_aggregate(&total, &expected_total);
        assert_eq!(total.count, 25 + 33 + 40 + 50 + 5);
    }
    let models = api(&site)
        .get_json("/v1/aggregates", &[("device", "berlin-1".to_string())])
        .expect("models");
    assert_eq!(models["models"], serde_json::json!([digest]));
    assert!(
        aggregates(&site, &digest, ("cohort", "site=paris"))["buckets"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    let text = api(&site).get_json("/metrics", &[]).expect("metrics");
    let text = text.as_str().expect("text");
    for line in [
        "outpost_windows_ingested_total 5",
        "outpost_windows_duplicate_total 2",
        "outpost_windows_rejected_total 5",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }

    // Downsampling: both hours become one day bucket with the same totals.
    let report = site
        .runtime
        .block_on(site.store().maintain_aggregates(i64::MAX, None))
        .expect("maintenance");
    assert_eq!(report.buckets_downsampled, 2 * 4, "two hours per device and cohort row");
    assert_eq!(report.groups_not_merged, 0);
    for key in [("device", "berlin-1"), ("cohort", "*")] {
        let answer = aggregates(&site, &digest, key);
        let buckets = answer["buckets"].as_array().expect("buckets");
        assert_eq!(buckets.len(), 1, "{key:?}: one day bucket");
        assert_eq!(buckets[0]["bucket_ms"], DAY_MS);
        assert_eq!(buckets[0]["bucket_start_ms"], hour / DAY_MS as u64 * DAY_MS as u64);
        let total: AggregateWindow =
            serde_json::from_value(answer["total"].clone()).expect("total");
        assert_same_aggregate(&total, &expected_total);
    }
    // A late window of a downsampled day still counts, once.
    let late = window(&berlin, &model, &profile, 8, hour + 30 * 60_000, 7, 0.7);
    send(&site, &mut device, Publish::message(&berlin, &late).expect("window"));
    send(&site, &mut device, Publish::message(&berlin, &late).expect("window"));
    wait_until("the late window counted", TIMEOUT, || {
        counter(&site, |m| load(&m.windows_ingested)) == 6
            && counter(&site, |m| load(&m.windows_duplicate)) == 3
    });
    site.runtime.block_on(site.store().maintain_aggregates(i64::MAX, None)).expect("maintenance");
    let answer = aggregates(&site, &digest, ("device", "berlin-1"));
    assert_eq!(answer["buckets"].as_array().map(Vec::len), Some(1));
    assert_eq!(answer["total"]["count"], 25 + 33 + 40 + 50 + 5 + 7);
    assert_eq!(answer["total"]["windows"], 6);

    // Retention: everything older than now is expired, dedupe rows with it.
    site.runtime
        .block_on(site.store().maintain_aggregates(i64::MAX, Some(i64::MAX)))
        .expect("retention");
    assert_eq!(site.runtime.block_on(site.store().windows_seen("berlin-1")).expect("seen"), 0);
    let empty = site
        .runtime
        .block_on(site.store().aggregates(AggregateKind::Cohort, &digest, "*", 0, i64::MAX))
        .expect("aggregates");
    assert!(empty.is_empty());
}

#[test]
fn windows_count_once_and_merge_exactly_on_sqlite_with_the_embedded_broker() {
    scenario(Backend::Sqlite, false);
}

#[test]
fn windows_count_once_and_merge_exactly_on_postgres_through_mosquitto() {
    scenario(Backend::Postgres, true);
}

/// An `outpost serve` process, killed (SIGKILL) when dropped.
struct ServeProcess(Child);

impl ServeProcess {
    fn start(config: &std::path::Path, api: &outpost_control::api::client::ApiClient) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn outpost serve");
        let mut process = ServeProcess(child);
        wait_until("the API to answer /health", Duration::from_secs(60), || {
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!("outpost serve exited early with {status}");
            }
            api.get_json("/health", &[]).is_ok()
        });
        process
    }

    /// SIGKILL: no shutdown, no goodbye to the broker, a transaction possibly half done.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_server_killed_mid_stream_and_restarted_loses_no_window_and_counts_none_twice() {
    kill_and_restart(Backend::Sqlite);
}

#[test]
fn a_server_killed_mid_stream_and_restarted_on_postgres_loses_no_window_and_counts_none_twice() {
    kill_and_restart(Backend::Postgres);
}

fn kill_and_restart(backend: Backend) {
    let directory = tempfile::tempdir().expect("tempdir");
    let postgres = (backend == Backend::Postgres)
        .then(|| outpost_tests::postgres::Postgres::start().expect("start PostgreSQL"));
    let database = match &postgres {
        Some(postgres) => format!("[database]\nurl = \"{}\"\n", postgres.url()),
        None => String::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mosquitto = Mosquitto::start().expect("start Mosquitto");
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let config = directory.path().join("control.toml");
    let fleet = Fleet::new();
    // A configured client id: a persistent session the broker keeps while the server is down.
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n{database}[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [broker]\nurl = \"mqtt://{}:{}\"\nclient_id = \"control-restart-test\"\n\
             [trust]\nroot = \"{}\"\n",
            directory.path().join("state").display(),
            mosquitto.host(),
            mosquitto.port(),
            fleet.path_text("root.json"),
        ),
    )
    .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["users", "add", "admin", "--role", "admin", "--config"])
        .arg(&config)
        .env_remove("OUTPOST_SERVER")
        .env_remove("OUTPOST_TOKEN")
        .output()
        .expect("users add");
    assert!(output.status.success(), "{}", show(&output));
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let api = outpost_control::api::client::ApiClient::new(
        &format!("http://127.0.0.1:{api_port}"),
        Some(token.clone()),
        None,
    )
    .expect("client");
    let mut server = ServeProcess::start(&config, &api);
    let pushed = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["model", "push", &fleet.path_text("good.bundle")])
        .env("OUTPOST_SERVER", format!("http://127.0.0.1:{api_port}"))
        .env("OUTPOST_TOKEN", &token)
        .output()
        .expect("model push");
    assert!(pushed.status.success(), "{}", show(&pushed));

    // A model the registry does not know: aggregated over the windows' own edges at once.
    let profile = Profile {
        v: 1,
        reference_count: 0,
        inputs: vec![FeatureProfile {
            name: "x".into(),
            source: outpost_shared::profile::FeatureSource::Element {
                tensor: "input".into(),
                index: 0,
            },
            histogram: Histogram::new(vec![0.0, 1.0, 2.0, 4.0]).expect("edges"),
            moments: Moments::default(),
            sketch: None,
        }],
        outputs: vec![],
        classifier: None,
    };
    let model = ModelRef {
        name: "unpushed".into(),
        version: "1".into(),
        digest: Digest::of(b"a model the registry does not have"),
    };
    // And the pushed model: its windows wait in the pending windows until a fold.
    let bundle = std::fs::read(fleet.path("good.bundle")).expect("bundle");
    let pushed_model = ModelRef {
        name: "fraud".into(),
        version: "1.0.0".into(),
        digest: Digest::parse(&outpost_shared::sha256_digest(&bundle)).expect("digest"),
    };
    let raw = outpost_shared::bundle::read(&bundle).unwrap_or_else(|error| panic!("{error}"));
    let pushed_profile: Profile = serde_json::from_slice(&raw.profile).expect("profile");
    let id = DeviceId::new("restart-1").expect("id");
    let hour = yesterday_midnight_ms();
    // Sequence numbers count per device, whatever the model: the pushed model's are offset.
    let windows_of = |seq: u64| {
        let start = hour + seq * 1000;
        [
            window(&id, &model, &profile, seq, start, 10 + seq, 0.1),
            window(&id, &pushed_model, &pushed_profile, 1000 + seq, start, 10 + seq, 0.1),
        ]
    };
    // (windows, requests) of one model, the smaller of the two.
    let counted = || -> (u64, u64) {
        let mut least = (u64::MAX, u64::MAX);
        for digest in [model.digest.as_str(), pushed_model.digest.as_str()] {
            let answer = api
                .get_json(
                    "/v1/aggregates",
                    &[("model", digest.to_string()), ("device", "restart-1".to_string())],
                )
                .expect("aggregates");
            least.0 = least.0.min(answer["total"]["windows"].as_u64().unwrap_or(0));
            least.1 = least.1.min(answer["total"]["count"].as_u64().unwrap_or(0));
        }
        least
    };
    let options = ClientOptions::local(mosquitto.port(), "restart-device");
    let mut device = runtime.block_on(TestClient::connect(options, TIMEOUT)).expect("device");
    let mut publish = |seq: u64| {
        for window in windows_of(seq) {
            let message = Publish::message(&id, &window).expect("window");
            runtime.block_on(device.publish(&message.topic, message.payload, false));
        }
    };

    for seq in 1..=10 {
        publish(seq);
    }
    wait_until("some windows counted before the kill", TIMEOUT, || counted().0 >= 3);
    server.kill();
    // While the server is down: new windows, and some already sent again.
    for seq in (11..=20).chain(5..=8) {
        publish(seq);
    }
    let _server = ServeProcess::start(&config, &api);
    wait_until("every window counted after the restart", TIMEOUT, || counted().0 >= 20);
    // A last window: everything sent before it has been handled once it is counted.
    publish(21);
    wait_until("the last window counted", TIMEOUT, || counted().0 >= 21);
    let (windows, requests) = counted();
    assert_eq!(windows, 21, "each window counted exactly once");
    assert_eq!(requests, (1..=21).map(|seq| 10 + seq).sum::<u64>());
}

/// A bucket aggregated over other edges before the model's bundle was pushed cannot take the
/// model's windows afterwards: such a window is counted and left pending at first, then
/// refused when a fold finds it does not merge (no longer counted, the bucket unchanged),
/// while the windows around it are folded as usual.
#[test]
fn a_pending_window_that_does_not_merge_with_its_bucket_is_refused_when_folded() {
    let fleet = Fleet::new();
    let site = Site::start(
        Backend::Sqlite,
        SiteOptions { trust_root: Some(fleet.path("root.json")), ..SiteOptions::default() },
    );
    let bundle = std::fs::read(fleet.path("good.bundle")).expect("bundle");
    let raw = outpost_shared::bundle::read(&bundle).unwrap_or_else(|error| panic!("{error}"));
    let profile: Profile = serde_json::from_slice(&raw.profile).expect("profile");
    let model = ModelRef {
        name: "fraud".into(),
        version: "1.0.0".into(),
        digest: Digest::parse(&outpost_shared::sha256_digest(&bundle)).expect("digest"),
    };
    let digest = model.digest.as_str().to_string();
    let early = DeviceId::new("early-1").expect("id");
    let later = DeviceId::new("later-1").expect("id");
    let mut client = device_client(&site, "fold-refusal");
    let hour = yesterday_midnight_ms();
    let ingested = |n: u64| {
        wait_until(&format!("{n} windows ingested"), TIMEOUT, || {
            counter(&site, |m| load(&m.windows_ingested)) == n
        })
    };

    // Before the push: over other edges, merged at once as it comes.
    let mut other_edges_profile = profile.clone();
    for edge in &mut other_edges_profile.inputs[0].histogram.edges {
        *edge -= 1.0;
    }
    let first = window(&early, &model, &other_edges_profile, 1, hour, 10, 0.1);
    send(&site, &mut client, Publish::message(&early, &first).expect("window"));
    ingested(1);

    site.outpost_ok(&["model", "push", &fleet.path_text("good.bundle")]);
    // Over the profile's edges: counted, pending. The first does not merge with the hour's
    // cohort `*` bucket; the second is in the next hour.
    let refused = window(&later, &model, &profile, 1, hour + 60_000, 20, 0.2);
    let folded = window(&later, &model, &profile, 2, hour + HOUR_MS, 30, 0.3);
    for w in [&refused, &folded] {
        send(&site, &mut client, Publish::message(&later, w).expect("window"));
    }
    ingested(3);

    // Read through the store: the two hours are over different edges, so the API's total of
    // the range would not merge.
    let fleet = site
        .runtime
        .block_on(site.store().aggregates(AggregateKind::Cohort, &digest, "*", 0, i64::MAX))
        .expect("aggregates");
    let buckets: Vec<(u64, u64)> =
        fleet.iter().map(|row| (row.windows, row.request_count)).collect();
    assert_eq!(buckets, [(1, 10), (1, 30)], "the refused window is in neither hour");
    let later_total = aggregates(&site, &digest, ("device", "later-1"));
    assert_eq!(later_total["total"]["windows"], 1, "{later_total}");
    assert_eq!(later_total["total"]["count"], 30);
    let store = site.store();
    assert_eq!(site.runtime.block_on(store.windows_seen("later-1")).expect("seen"), 1);
    assert_eq!(site.runtime.block_on(store.windows_seen("early-1")).expect("seen"), 1);
    assert_eq!(site.runtime.block_on(store.pending_windows()).expect("pending"), 0);
}
