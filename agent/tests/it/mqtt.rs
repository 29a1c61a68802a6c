//! MQTT reporting and offline safety against real brokers (issue 3, items 4 and 5): each test
//! starts its own Mosquitto or embedded rumqttd on a free loopback port and works in its own
//! temporary directory.
//!
//! Process-level (the `outpost-agent run` binary, as issue 3 asks): retained `hello` and
//! `state`; SIGKILL → Last Will `offline`; a broker outage of at least five windows; an agent
//! restart while the broker is down; hostile messages on the agent's topics; the embedded
//! broker. In-process (`outpost_agent::mqtt::Telemetry`, where the test must see exactly what
//! is forwarded or counted): refusals that forward nothing, a full queue, mTLS.
//!
//! Observers subscribe with a persistent session on a broker with persistence, so nothing the
//! agent sends around a broker restart escapes them, and windows are checked with the shared
//! `Dedupe`: every window arrives, in order, exactly once after deduplication.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outpost_agent::mqtt::{
    MqttConfig, MqttTlsConfig, QUEUE_DROPPED_CODE, Telemetry, TelemetryHandle, TelemetryStatus,
};
use outpost_agent::queue::QueueConfig;
use outpost_shared::dedupe::Dedupe;
use outpost_shared::dsse::Envelope;
use outpost_shared::wire::{
    self, Admission, AdmissionAction, Assign, Channel, DeviceId, Digest, Event, EventKind, Hello,
    LAST_WILL_PAYLOAD, LatencyHistogram, ModelRef, Outcome, Presence, ProtocolVersion, Slots,
    State, StatsWindow, ToDevice, Topic,
};
use outpost_tests::broker::{
    ClientOptions, ClientTls, EmbeddedBroker, Message, Mosquitto, MosquittoOptions, MosquittoTls,
    TestClient,
};
use outpost_tests::fixtures::Fixture;
use outpost_tests::wait;
use tokio::sync::{mpsc, watch};

/// Every wait in these tests is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Statistics period of agents run here.
const PERIOD_SECONDS: f64 = 0.2;
/// The model the agents run (any bundle model would do: windows come every period).
const MODEL: &str = "mlp_classifier";

fn device(id: &str) -> DeviceId {
    DeviceId::new(id).expect("device id")
}

fn topic(device: &DeviceId, channel: Channel) -> String {
    Topic::new(device.clone(), channel).to_string()
}

// ---------------------------------------------------------------------------------------
// The agent as a process

/// An `outpost-agent run` process logging to a file; killed when dropped.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        let log = config.with_extension(format!("{}.log", std::process::id()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log file");
        let child = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,outpost_agent=debug")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start outpost-agent");
        Agent { child: Some(child), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, signal: &str) {
        let Some(child) = self.child.as_mut() else { return };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
        let exited =
            wait::try_until_some(TIMEOUT, "the agent to exit", || child.try_wait().ok().flatten());
        if let Err(error) = exited {
            panic!("{error}\nagent log:\n{}", self.log());
        }
        self.child = None;
    }

    /// SIGKILL: no goodbye, no flush.
    fn kill(&mut self) {
        self.signal("-KILL");
    }

    /// SIGTERM: the agent flushes its last window and says `offline`.
    fn terminate(&mut self) {
        self.signal("-TERM");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A provisioned agent (trust root, committed model) configured for `port`.
struct AgentSetup {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    config: PathBuf,
    device: DeviceId,
}

impl AgentSetup {
    fn new(device_id: &str, port: u16) -> AgentSetup {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixture = Fixture::new(dir.path());
        let data_dir = fixture.provisioned_agent_dir(device_id, Some(MODEL));
        let mqtt = format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nkeep_alive_seconds = 5\n\
             reconnect_min_delay_ms = 50\nreconnect_max_delay_ms = 400\n"
        );
        let config = fixture.agent_config(
            &data_dir,
            device_id,
            &BTreeMap::from([("site".to_string(), "lab".to_string())]),
            "127.0.0.1:0",
            PERIOD_SECONDS,
            &mqtt,
        );
        AgentSetup { _dir: dir, data_dir, config, device: device(device_id) }
    }

    fn start(&self) -> Agent {
        Agent::start(&self.config)
    }

    /// Sequence numbers of the windows queued on disk.
    fn queued(&self) -> Vec<u64> {
        queued_windows(&self.data_dir)
    }
}

fn queued_windows(data_dir: &Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(data_dir.join("queue"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let digits = name.strip_suffix(".json")?;
                    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    seqs.sort_unstable();
    seqs
}

// ---------------------------------------------------------------------------------------
// Observing the broker

/// A client with a persistent session on `port` subscribed to `channels` of `device`.
async fn observer(port: u16, device: &DeviceId, channels: &[Channel]) -> TestClient {
    let mut options = ClientOptions::local(port, "observer");
    options.clean_session = false;
    let mut client = TestClient::connect(options, TIMEOUT).await.expect("observer connects");
    let filters: Vec<String> = channels.iter().map(|c| topic(device, *c)).collect();
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    client.subscribe(&filters).await;
    client
}

fn window_seq(message: &Message) -> u64 {
    wire::decode::<StatsWindow>(&message.payload).expect("a valid statistics window").seq
}

/// Reads `stats` messages of `device` until a window with a sequence number of at least
/// `through` arrived; returns every arrival's sequence number, duplicates included.
async fn windows_through(client: &mut TestClient, device: &DeviceId, through: u64) -> Vec<u64> {
    let stats = topic(device, Channel::Stats);
    let mut arrivals = Vec::new();
    while arrivals.last().is_none_or(|seq| *seq < through) {
        let message = client.expect_on(&stats, TIMEOUT, &format!("window {through}")).await;
        arrivals.push(window_seq(&message));
    }
    arrivals
}

/// The windows that count after deduplication, checked to arrive in order without gaps.
#[track_caller]
fn in_order_once(device: &DeviceId, arrivals: &[u64]) -> Vec<u64> {
    let mut dedupe = Dedupe::new();
    let counted: Vec<u64> =
        arrivals.iter().copied().filter(|seq| dedupe.accept(device, *seq)).collect();
    for pair in counted.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "windows out of order or missing: {arrivals:?}");
    }
    counted
}

fn decode_state(message: &Message) -> State {
    wire::decode(&message.payload).expect("a valid state message")
}

fn decode_event(message: &Message) -> Event {
    wire::decode(&message.payload).expect("a valid event")
}

// ---------------------------------------------------------------------------------------
// Process-level tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_online_state_are_retained_for_late_subscribers() {
    let broker = Mosquitto::start().expect("mosquitto");
    let setup = AgentSetup::new("dev-hello", broker.port());
    let agent = setup.start();
    let device = &setup.device;

    // Subscribe only once the agent is known to be connected: a window has gone out.
    let mut stats = observer(broker.port(), device, &[Channel::Stats]).await;
    stats.expect_on(&topic(device, Channel::Stats), TIMEOUT, "a first window").await;

    let mut late = TestClient::connect(ClientOptions::local(broker.port(), "late"), TIMEOUT)
        .await
        .expect("late subscriber connects");
    late.subscribe(&[&topic(device, Channel::Hello), &topic(device, Channel::State)]).await;
    let hello = late.expect_on(&topic(device, Channel::Hello), TIMEOUT, "the retained hello").await;
    assert!(hello.retain, "hello must be retained");
    let hello: Hello = wire::decode(&hello.payload).expect("valid hello");
    assert_eq!(hello.device, *device);
    assert_eq!(hello.tags.get("site").map(String::as_str), Some("lab"));
    assert_eq!(hello.active_model.as_ref().map(|m| m.name.as_str()), Some(MODEL));
    let state = late.expect_on(&topic(device, Channel::State), TIMEOUT, "the retained state").await;
    assert!(state.retain, "state must be retained");
    assert_eq!(decode_state(&state).state, Presence::Online, "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_makes_the_broker_publish_its_last_will() {
    let broker = Mosquitto::start().expect("mosquitto");
    let setup = AgentSetup::new("dev-will", broker.port());
    let device = &setup.device;
    let mut watcher = observer(broker.port(), device, &[Channel::State]).await;
    let mut agent = setup.start();
    let state_topic = topic(device, Channel::State);
    let online = watcher.expect_on(&state_topic, TIMEOUT, "online").await;
    assert_eq!(decode_state(&online).state, Presence::Online, "{}", agent.log());

    agent.kill();
    let will = watcher.expect_on(&state_topic, TIMEOUT, "the Last Will").await;
    assert_eq!(will.payload, LAST_WILL_PAYLOAD, "the will is the documented payload");

    // A late subscriber sees the device offline too.
    let mut late = TestClient::connect(ClientOptions::local(broker.port(), "late"), TIMEOUT)
        .await
        .expect("connect");
    late.subscribe(&[&state_topic]).await;
    let retained = late.expect_on(&state_topic, TIMEOUT, "the retained will").await;
    assert!(retained.retain, "the will is retained");
    assert_eq!(retained.payload, LAST_WILL_PAYLOAD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_says_offline_with_a_time() {
    let broker = Mosquitto::start().expect("mosquitto");
    let setup = AgentSetup::new("dev-bye", broker.port());
    let device = &setup.device;
    let mut watcher = observer(broker.port(), device, &[Channel::State]).await;
    let mut agent = setup.start();
    let state_topic = topic(device, Channel::State);
    watcher.expect_on(&state_topic, TIMEOUT, "online").await;
    agent.terminate();
    let bye = decode_state(&watcher.expect_on(&state_topic, TIMEOUT, "offline").await);
    assert_eq!(bye.state, Presence::Offline);
    assert!(bye.ts_ms.is_some(), "a clean stop says when, unlike the will");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_from_a_broker_outage_arrive_in_order_exactly_once() {
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        ..MosquittoOptions::default()
    })
    .expect("mosquitto");
    let setup = AgentSetup::new("dev-outage", broker.port());
    let device = &setup.device;
    let mut watcher = observer(broker.port(), device, &[Channel::Stats]).await;
    let agent = setup.start();
    let before = windows_through(&mut watcher, device, 2).await;

    broker.stop();
    // At least five windows are cut and queued while nobody can take them.
    let during = wait::until_some(TIMEOUT, "five windows queued on disk", || {
        let queued = setup.queued();
        (queued.len() >= 5).then_some(queued)
    });
    broker.restart().expect("broker restarts");
    let last_queued = *during.last().expect("queued windows");
    let after = windows_through(&mut watcher, device, last_queued + 2).await;

    let arrivals: Vec<u64> = before.iter().chain(&after).copied().collect();
    let counted = in_order_once(device, &arrivals);
    assert_eq!(counted.first(), Some(&1), "{arrivals:?}");
    for seq in &during {
        assert!(counted.contains(seq), "window {seq} from the outage is missing: {arrivals:?}");
    }
    wait::until(TIMEOUT, "the queue to drain", || {
        setup.queued().iter().all(|seq| *seq > last_queued + 2)
    });
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_queued_before_an_agent_restart_are_sent_after_reconnecting() {
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        ..MosquittoOptions::default()
    })
    .expect("mosquitto");
    let setup = AgentSetup::new("dev-restart", broker.port());
    let device = &setup.device;
    let mut watcher = observer(broker.port(), device, &[Channel::Stats]).await;
    broker.stop();

    // First run: the broker is down from the start; windows pile up on disk.
    let mut first = setup.start();
    wait::until(TIMEOUT, "three windows queued", || setup.queued().len() >= 3);
    first.terminate();
    let survived = setup.queued();
    assert!(survived.len() >= 3, "queued windows vanished with the agent: {survived:?}");

    // Second run, broker still down: the old windows are still there and new ones join.
    let second = setup.start();
    let newest = *survived.last().expect("queued");
    wait::until(TIMEOUT, "the restarted agent to queue a window", || {
        setup.queued().last().is_some_and(|seq| *seq > newest)
    });
    broker.restart().expect("broker restarts");
    let arrivals = windows_through(&mut watcher, device, newest + 2).await;
    let counted = in_order_once(device, &arrivals);
    assert_eq!(counted.first(), Some(&1), "{arrivals:?}\n{}", second.log());
    assert!(counted.contains(&newest), "{arrivals:?}");
}

/// Payloads no agent may act on, published on its own topics, with the refusal code each must
/// produce.
fn hostile_messages(device: &DeviceId) -> Vec<(String, Vec<u8>, &'static str)> {
    let assign = topic(device, Channel::Assign);
    let chunk = topic(device, Channel::Chunk);
    let valid = wire::encode(&assign_message("r-hostile")).expect("encode");
    let mut unknown_field: serde_json::Value = serde_json::from_slice(&valid).expect("json");
    unknown_field["admission"]["surprise"] = true.into();
    let mut oversized = valid.clone();
    oversized.resize(wire::MAX_JSON_PAYLOAD_BYTES + 1, b' ');
    vec![
        (assign.clone(), b"\x00\xffnot json at all".to_vec(), "malformed"),
        (assign.clone(), br#"{"v":2,"plan":{},"admission":{}}"#.to_vec(), "unsupported_version"),
        (assign.clone(), br#"{"plan":{}}"#.to_vec(), "missing_version"),
        (assign.clone(), oversized, "oversized"),
        (assign.clone(), serde_json::to_vec(&unknown_field).expect("json"), "malformed"),
        (assign, br#"[1,2,3]"#.to_vec(), "malformed"),
        (chunk.clone(), vec![0, 0, 0, 10, b'{'], "truncated"),
        (chunk.clone(), vec![0xff, 0xff, 0xff, 0xff], "oversized"),
        (chunk, b"".to_vec(), "truncated"),
    ]
}

fn assign_message(rollout_id: &str) -> Assign {
    Assign {
        v: ProtocolVersion,
        plan: Envelope::new("application/vnd.outpost.rollout-plan+json", b"{\"v\":1}"),
        admission: Admission {
            rollout_id: rollout_id.into(),
            wave: 1,
            admitted_at_ms: 1_700_000_000_000,
            action: AdmissionAction::Install,
        },
    }
}

/// Publishes the hostile messages (and one addressed to another device) and returns the
/// refusal events, checked against the expected codes in order.
async fn publish_hostile_and_expect_refusals(
    port: u16,
    device: &DeviceId,
    events: &mut TestClient,
) -> Vec<Event> {
    let mut attacker = TestClient::connect(ClientOptions::local(port, "attacker"), TIMEOUT)
        .await
        .expect("attacker connects");
    let cases = hostile_messages(device);
    for (topic, payload, _) in &cases {
        attacker.publish(topic, payload.clone(), false).await;
    }
    // Another device's assignment never reaches this one (its subscription is exact).
    let other = topic(&DeviceId::new("someone-else").expect("id"), Channel::Assign);
    attacker
        .publish(&other, wire::encode(&assign_message("r-other")).expect("encode"), false)
        .await;

    let events_topic = topic(device, Channel::Events);
    let mut refusals = Vec::new();
    while refusals.len() < cases.len() {
        let event =
            decode_event(&events.expect_on(&events_topic, TIMEOUT, "a refusal event").await);
        if event.kind == EventKind::MessageRejected {
            refusals.push(event);
        }
    }
    let codes: Vec<&str> = refusals.iter().map(|e| e.code.as_deref().unwrap_or("")).collect();
    let expected: Vec<&str> = cases.iter().map(|(_, _, code)| *code).collect();
    assert_eq!(codes, expected);
    for event in &refusals {
        assert_eq!(event.outcome, Outcome::Refused);
        assert_eq!(event.device, *device);
        assert!(event.message.len() <= 4096, "refusal messages stay short");
    }
    let seqs: Vec<u64> = refusals.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[1] > pair[0]), "event seqs increase: {seqs:?}");
    refusals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_on_the_agents_topics_are_refused_and_it_keeps_working() {
    let broker = Mosquitto::start().expect("mosquitto");
    let setup = AgentSetup::new("dev-hostile", broker.port());
    let device = &setup.device;
    let mut watcher = observer(broker.port(), device, &[Channel::Events, Channel::Stats]).await;
    let agent = setup.start();
    let stats_topic = topic(device, Channel::Stats);
    watcher.expect_on(&stats_topic, TIMEOUT, "a first window").await;

    publish_hostile_and_expect_refusals(broker.port(), device, &mut watcher).await;

    // Still alive and reporting: more windows come, in order.
    let latest = window_seq(&watcher.expect_on(&stats_topic, TIMEOUT, "a window").await);
    let later = windows_through(&mut watcher, device, latest + 3).await;
    in_order_once(device, &later);
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_through_the_embedded_broker() {
    let broker = EmbeddedBroker::start().expect("rumqttd");
    let setup = AgentSetup::new("dev-embedded", broker.port());
    let device = &setup.device;
    let mut watcher = observer(broker.port(), device, &[Channel::Stats, Channel::State]).await;
    let mut agent = setup.start();
    let state_topic = topic(device, Channel::State);
    let online = watcher.expect_on(&state_topic, TIMEOUT, "online").await;
    assert_eq!(decode_state(&online).state, Presence::Online, "{}", agent.log());
    let arrivals = windows_through(&mut watcher, device, 4).await;
    in_order_once(device, &arrivals);

    let mut late = TestClient::connect(ClientOptions::local(broker.port(), "late"), TIMEOUT)
        .await
        .expect("connect");
    late.subscribe(&[&topic(device, Channel::Hello)]).await;
    let hello = late.expect_on(&topic(device, Channel::Hello), TIMEOUT, "the retained hello").await;
    assert_eq!(wire::decode::<Hello>(&hello.payload).expect("hello").device, *device);

    agent.terminate();
    let bye = decode_state(&watcher.expect_on(&state_topic, TIMEOUT, "offline").await);
    assert_eq!(bye.state, Presence::Offline);
}

// ---------------------------------------------------------------------------------------
// In-process tests of `Telemetry`

fn hello(device: &DeviceId) -> Hello {
    Hello {
        v: ProtocolVersion,
        device: device.clone(),
        agent_version: "test".into(),
        arch: std::env::consts::ARCH.into(),
        tags: BTreeMap::new(),
        active_model: None,
        previous_model: None,
        slots: Slots { active: None, a: None, b: None },
        capabilities: Vec::new(),
        trust_root_version: 1,
        last_plan_seq: None,
        ts_ms: 1_700_000_000_000,
    }
}

fn window(device: &DeviceId, seq: u64) -> StatsWindow {
    StatsWindow {
        v: ProtocolVersion,
        device: device.clone(),
        model: ModelRef { name: "m".into(), version: "1".into(), digest: Digest::of(b"m") },
        seq,
        start_ms: seq * 1000,
        end_ms: seq * 1000 + 1000,
        count: 0,
        errors: BTreeMap::new(),
        latency: LatencyHistogram::default(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        classifier: None,
    }
}

fn mqtt_config(port: u16) -> MqttConfig {
    MqttConfig {
        port: Some(port),
        keep_alive_seconds: 5,
        reconnect_min_delay_ms: 50,
        reconnect_max_delay_ms: 400,
        ..MqttConfig::default()
    }
}

struct Started {
    handle: TelemetryHandle,
    updates: mpsc::Receiver<ToDevice>,
    task: tokio::task::JoinHandle<()>,
}

fn start_telemetry(
    config: MqttConfig,
    queue: QueueConfig,
    data_dir: &Path,
    device: &DeviceId,
) -> Started {
    let (handle, updates, task) =
        Telemetry::start(config, queue, data_dir, device.clone(), hello(device))
            .expect("telemetry starts");
    Started { handle, updates, task }
}

async fn status_until(
    handle: &TelemetryHandle,
    what: &str,
    condition: impl Fn(&TelemetryStatus) -> bool,
) -> TelemetryStatus {
    let mut status: watch::Receiver<TelemetryStatus> = handle.watch_status();
    let seen = wait::within(TIMEOUT, what, status.wait_for(|s| condition(s))).await;
    seen.expect("telemetry is running").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_forward_nothing_and_valid_ones_are_forwarded() {
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let device = device("dev-refuse");
    let mut watcher = observer(broker.port(), &device, &[Channel::Events]).await;
    let mut telemetry =
        start_telemetry(mqtt_config(broker.port()), QueueConfig::default(), dir.path(), &device);
    status_until(&telemetry.handle, "connected", |s| s.connected).await;

    publish_hostile_and_expect_refusals(broker.port(), &device, &mut watcher).await;
    assert!(telemetry.updates.try_recv().is_err(), "a refused message was forwarded");

    let mut control = TestClient::connect(ClientOptions::local(broker.port(), "control"), TIMEOUT)
        .await
        .expect("connect");
    let assign = assign_message("r-valid");
    control
        .publish(&topic(&device, Channel::Assign), wire::encode(&assign).expect("encode"), true)
        .await;
    let forwarded = wait::within(TIMEOUT, "the assignment", telemetry.updates.recv()).await;
    assert_eq!(forwarded, Some(ToDevice::Assign(assign)));
    control.publish(&topic(&device, Channel::Assign), Vec::new(), true).await;
    let cleared = wait::within(TIMEOUT, "the withdrawal", telemetry.updates.recv()).await;
    assert_eq!(cleared, Some(ToDevice::AssignCleared));

    telemetry.handle.shutdown().await.expect("shutdown");
    wait::within(TIMEOUT, "the telemetry task", telemetry.task).await.expect("task ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_windows_and_reports_it() {
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        ..MosquittoOptions::default()
    })
    .expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let device = device("dev-full");
    let mut watcher = observer(broker.port(), &device, &[Channel::Stats, Channel::Events]).await;
    broker.stop();
    let queue = QueueConfig { max_windows: 3, ..QueueConfig::default() };
    let telemetry = start_telemetry(mqtt_config(broker.port()), queue, dir.path(), &device);
    for seq in 1..=6 {
        telemetry.handle.send_window(window(&device, seq)).await.expect("queued");
    }
    let status =
        status_until(&telemetry.handle, "three drops", |s| s.dropped_windows_total == 3).await;
    assert_eq!(status.queued_windows, 3, "{status:?}");
    assert_eq!(queued_windows(dir.path()), [4, 5, 6]);

    broker.restart().expect("restart");
    let arrivals = windows_through(&mut watcher, &device, 6).await;
    assert_eq!(in_order_once(&device, &arrivals), [4, 5, 6]);
    let events_topic = topic(&device, Channel::Events);
    let mut dropped = 0;
    while dropped < 3 {
        let event = decode_event(&watcher.expect_on(&events_topic, TIMEOUT, "a drop report").await);
        assert_eq!(event.kind, EventKind::Error);
        assert_eq!(event.code.as_deref(), Some(QUEUE_DROPPED_CODE));
        let details = event.details.expect("details");
        dropped += details["count"].as_u64().expect("count");
        assert_eq!(details["dropped_total"].as_u64(), Some(dropped));
    }
    status_until(&telemetry.handle, "the queue to drain", |s| s.queued_windows == 0).await;
    assert!(queued_windows(dir.path()).is_empty());
}

/// A self-signed CA: its PEM certificate and the issuer that signs with it.
fn certificate_authority(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.pem(), rcgen::Issuer::new(params, key))
}

/// A certificate for a server on 127.0.0.1 / localhost, or a client with common name `cn`,
/// and its key, both PEM.
fn leaf_certificate(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    cn: &str,
    server: bool,
) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
    let key = KeyPair::generate().expect("key");
    let names = if server { vec!["localhost".to_string()] } else { Vec::new() };
    let mut params = CertificateParams::new(names).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    if server {
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    }
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = params.signed_by(&key, issuer).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// A CA, and PEM files it signed, for a TLS broker on 127.0.0.1.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write pem");
        };
        let (ca_pem, issuer) = certificate_authority("Outpost test CA");
        write("ca.pem", &ca_pem);
        for (name, cn, server) in [
            ("server", "127.0.0.1", true),
            ("device", "dev-tls", false),
            ("observer", "observer", false),
        ] {
            let (cert, key) = leaf_certificate(&issuer, cn, server);
            write(&format!("{name}.pem"), &cert);
            write(&format!("{name}.key"), &key);
        }
        let (rogue_pem, rogue) = certificate_authority("Rogue CA");
        write("rogue-ca.pem", &rogue_pem);
        let (cert, key) = leaf_certificate(&rogue, "dev-tls", false);
        write("rogue.pem", &cert);
        write("rogue.key", &key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read pem")
    }

    fn client(&self, port: u16, ca: &str, identity: Option<&str>) -> ClientOptions {
        let mut options = ClientOptions::local(port, "tls");
        options.host = "127.0.0.1".into();
        options.tls = Some(ClientTls {
            ca: self.read(ca),
            client_auth: identity
                .map(|name| (self.read(&format!("{name}.pem")), self.read(&format!("{name}.key")))),
        });
        options
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_connects_with_a_device_certificate_and_refuses_clients_without_one() {
    let pki = Pki::new();
    let broker = Mosquitto::start_with(MosquittoOptions {
        tls: Some(MosquittoTls {
            ca_file: pki.path("ca.pem"),
            cert_file: pki.path("server.pem"),
            key_file: pki.path("server.key"),
            require_certificate: true,
        }),
        ..MosquittoOptions::default()
    })
    .expect("mosquitto with TLS");
    let port = broker.port();
    let device = device("dev-tls");

    let mut observer = TestClient::connect(pki.client(port, "ca.pem", Some("observer")), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("observer with a certificate connects: {e}\n{}", broker.log()));
    observer.subscribe(&[&topic(&device, Channel::Stats)]).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = MqttConfig {
        tls: Some(MqttTlsConfig {
            ca_file: pki.path("ca.pem"),
            client_cert_file: Some(pki.path("device.pem")),
            client_key_file: Some(pki.path("device.key")),
        }),
        ..mqtt_config(port)
    };
    let telemetry = start_telemetry(config, QueueConfig::default(), dir.path(), &device);
    status_until(&telemetry.handle, "an mTLS connection", |s| s.connected).await;
    telemetry.handle.send_window(window(&device, 1)).await.expect("queued");
    let arrivals = windows_through(&mut observer, &device, 1).await;
    assert_eq!(arrivals, [1]);

    for (what, ca, identity) in [
        ("no client certificate", "ca.pem", None),
        ("a certificate from another CA", "ca.pem", Some("rogue")),
        ("a broker certificate it cannot verify", "rogue-ca.pem", Some("observer")),
    ] {
        let refused = TestClient::connect(pki.client(port, ca, identity), TIMEOUT).await;
        assert!(refused.is_err(), "a client with {what} was let in");
    }
    telemetry.handle.shutdown().await.expect("shutdown");
}
