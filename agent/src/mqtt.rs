//! The agent's MQTT reporting (DESIGN §3, §6): `hello`, `state` with the Last Will, `stats`
//! windows through the on-disk queue, `events`, and the device's own `assign` and `chunk`
//! topics, over rumqttc with rustls.
//!
//! [`Telemetry::start`] returns a [`TelemetryHandle`] for the rest of the agent, the receiver of
//! valid messages for the updater, and the task's join handle. Inside, three parts:
//! - [`session`]: the sans-IO core deciding what to publish and what acknowledgements and
//!   incoming messages mean (unit tested without a runtime or a socket);
//! - the poller task: owns rumqttc's `EventLoop`, polls it without ever cancelling a poll,
//!   and after a failure waits a [`crate::backoff`] delay before the next attempt, so a broken
//!   link never hot-loops;
//! - the shell task: carries out the session's actions on the client, the disk queue
//!   ([`crate::queue`]) and the updater channel, and serves the handle.
//!
//! Guarantees:
//! - A window is on disk before [`TelemetryHandle::send_window`] returns, is published QoS 1
//!   in sequence order, and leaves the disk only when its PUBACK arrived. Whatever was not
//!   acknowledged is published again after a reconnect or a restart; receivers deduplicate
//!   by (device, seq) (`outpost_shared::dedupe`).
//! - MQTT client id = device id. Every connection registers the Last Will
//!   `{"v":1,"state":"offline"}` (retained, QoS 1) on `outpost/v1/<dev>/state`, then publishes
//!   `state` online and `hello` (both retained) and subscribes to `assign`, `chunk` and
//!   `sampling`. `sampling` messages go to [`TelemetryHandle::sampling`], not the updater.
//! - The MQTT session is clean: the disk queue, not the broker, is what makes delivery
//!   reliable, and a fresh session means no request from a lost connection can leak into the
//!   next one (which keeps the pairing of packet ids with publications exact).
//! - Events wait in a bounded in-memory buffer while offline ([`MqttConfig::event_buffer`]);
//!   they carry per-device sequence numbers assigned here and persisted in
//!   `<data_dir>/queue/event-seq`, but do not survive a restart.
//! - Incoming messages are decoded with `ToDevice::decode`; a refused one becomes a
//!   `message_rejected` event (code from `WireError::code`) and changes nothing. A packet over
//!   [`MAX_PACKET_BYTES`] is refused by rumqttc itself, which drops the connection: size the
//!   broker's `max_packet_size` below that.

mod session;

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_shared::wire::{
    self, Channel, DeviceId, Event, Hello, LAST_WILL_PAYLOAD, MAX_JSON_PAYLOAD_BYTES, ToDevice,
    Topic, WireError, WireMessage as _,
};
use rumqttc::{
    AsyncClient, ConnectionError, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::{Backoff, BackoffConfig, JitterSource, SplitMix64};
use crate::queue::{
    EVENT_SEQ_FILE, QueueConfig, QueueError, WindowQueue, read_counter, write_atomic,
};

use session::{Action, Outbound, Session, SessionLimits, window_publish};
pub use session::{
    EVENTS_DROPPED_CODE, MAX_REJECTION_EVENTS_PER_PERIOD, QUEUE_DROPPED_CODE, REJECTION_PERIOD_MS,
};

/// Largest MQTT packet sent or accepted: twice the largest JSON payload, so an oversized
/// payload still arrives and is refused with an event rather than by dropping the connection.
pub const MAX_PACKET_BYTES: usize = 2 * MAX_JSON_PAYLOAD_BYTES;
/// Events published and not yet acknowledged at a time.
const MAX_EVENTS_IN_FLIGHT: usize = 8;
/// Valid messages waiting for the updater beyond the channel's own capacity; chunk replies
/// over this are dropped (the transfer is resumable), assignments replace each other.
const MAX_FORWARD_BACKLOG: usize = 64;
const FORWARD_CHANNEL_CAPACITY: usize = 16;
const COMMAND_CHANNEL_CAPACITY: usize = 64;
const NET_CHANNEL_CAPACITY: usize = 64;
/// Sample chunks the uploader may have handed to the client at once
/// ([`crate::sampling`] paces its upload to stay below it).
pub const MAX_SAMPLE_CHUNKS_QUEUED: usize = 16;

/// `[mqtt]` of the agent config: where the broker is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker host name or IP address. With TLS, the broker's certificate must name it.
    pub host: String,
    /// Broker port; default 1883, or 8883 with `[mqtt.tls]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Seconds between MQTT keep-alive pings; 0 turns them off, otherwise at least 5.
    pub keep_alive_seconds: u64,
    /// Seconds a TCP + TLS + MQTT connect may take.
    pub connect_timeout_seconds: u64,
    /// First reconnect delay, in milliseconds; delays double up to the maximum, with jitter.
    pub reconnect_min_delay_ms: u64,
    /// Largest reconnect delay, in milliseconds.
    pub reconnect_max_delay_ms: u64,
    /// Statistics windows published and not yet acknowledged at a time (1 to 100).
    pub max_windows_in_flight: u16,
    /// Events kept in memory while offline (1 to 100 000); the oldest are dropped beyond it.
    pub event_buffer: usize,
    /// Milliseconds a shutdown waits for the broker to acknowledge the `offline` state.
    pub shutdown_timeout_ms: u64,
    /// TLS; plain TCP when absent (acceptable on loopback only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<MqttTlsConfig>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: None,
            keep_alive_seconds: 30,
            connect_timeout_seconds: 10,
            reconnect_min_delay_ms: 500,
            reconnect_max_delay_ms: 60_000,
            max_windows_in_flight: 8,
            event_buffer: 1024,
            shutdown_timeout_ms: 2_000,
            tls: None,
        }
    }
}

/// `[mqtt.tls]`: server verification against a CA, optionally a client certificate (mTLS,
/// whose CN is the device id). Relative paths are taken relative to the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM file with the device's certificate (chain), for brokers that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM file with the private key of `client_cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

impl MqttConfig {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// Checks what the types do not: ranges and pairs.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        let invalid = |reason: String| Err(TelemetryError::Config(reason));
        if self.host.trim().is_empty() {
            return invalid("mqtt.host must not be empty".into());
        }
        if self.keep_alive_seconds != 0 && self.keep_alive_seconds < 5 {
            return invalid(format!(
                "mqtt.keep_alive_seconds is {}: use 0 (off) or at least 5",
                self.keep_alive_seconds
            ));
        }
        if self.connect_timeout_seconds == 0 {
            return invalid("mqtt.connect_timeout_seconds must be at least 1".into());
        }
        if self.reconnect_min_delay_ms == 0
            || self.reconnect_max_delay_ms < self.reconnect_min_delay_ms
        {
            return invalid(format!(
                "mqtt.reconnect_min_delay_ms ({}) must be at least 1 and at most \
                 mqtt.reconnect_max_delay_ms ({})",
                self.reconnect_min_delay_ms, self.reconnect_max_delay_ms
            ));
        }
        if !(1..=100).contains(&self.max_windows_in_flight) {
            return invalid(format!(
                "mqtt.max_windows_in_flight is {}, expected 1 to 100",
                self.max_windows_in_flight
            ));
        }
        if !(1..=100_000).contains(&self.event_buffer) {
            return invalid(format!(
                "mqtt.event_buffer is {}, expected 1 to 100000",
                self.event_buffer
            ));
        }
        if let Some(tls) = &self.tls
            && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
        {
            return invalid(
                "mqtt.tls.client_cert_file and mqtt.tls.client_key_file go together".into(),
            );
        }
        Ok(())
    }
}

/// Why telemetry could not start or could not take a request.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid [mqtt] config: {0}")]
    Config(String),
    #[error("cannot read the {what} {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {} holds no PEM {expected}", path.display())]
    NotPem { what: &'static str, path: PathBuf, expected: &'static str },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the {what} names device {found}, but this agent is {expected}")]
    WrongDevice { what: &'static str, expected: DeviceId, found: DeviceId },
    #[error("invalid {what}: {source}")]
    InvalidMessage {
        what: &'static str,
        #[source]
        source: WireError,
    },
    #[error("telemetry has stopped")]
    Stopped,
}

/// A snapshot of the reporting state, for health endpoints, logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryStatus {
    /// Connected to the broker (CONNACK received, connection not lost since).
    pub connected: bool,
    /// Windows on disk not yet acknowledged.
    pub queued_windows: usize,
    pub queued_bytes: u64,
    /// Windows ever dropped because the queue was full (persistent).
    pub dropped_windows_total: u64,
    /// Events not yet acknowledged (in memory).
    pub pending_events: usize,
    /// Events dropped from the in-memory buffer since start.
    pub dropped_events_total: u64,
    /// The telemetry task has ended.
    pub stopped: bool,
}

enum Command {
    Window { window: Box<wire::StatsWindow>, done: oneshot::Sender<Result<(), TelemetryError>> },
    Event(Box<Event>),
    Hello(Box<Hello>),
    Fetch(Box<wire::Publish>),
    Shutdown(oneshot::Sender<()>),
    Samples { publish: Box<wire::Publish>, done: oneshot::Sender<bool> },
}

/// The agent's side of telemetry. Cheap to clone; every clone talks to the same task.
#[derive(Debug, Clone)]
pub struct TelemetryHandle {
    device: DeviceId,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<TelemetryStatus>,
    sampling: watch::Receiver<wire::SamplingControl>,
}

impl TelemetryHandle {
    /// Queues `window` durably (it is on disk when this returns `Ok`) for publication in
    /// sequence order. May drop the oldest queued windows; that is reported as an event.
    pub async fn send_window(&self, window: wire::StatsWindow) -> Result<(), TelemetryError> {
        self.check_device("statistics window", &window.device)?;
        let (done, result) = oneshot::channel();
        self.command(Command::Window { window: Box::new(window), done }).await?;
        result.await.map_err(|_| TelemetryError::Stopped)?
    }

    /// Reports `event`. Its `seq` and `device` are assigned here (the per-device event counter
    /// lives in telemetry); the rest is checked now and refused if the control would refuse it.
    pub async fn send_event(&self, mut event: Event) -> Result<(), TelemetryError> {
        event.device = self.device.clone();
        event
            .validate()
            .map_err(|source| TelemetryError::InvalidMessage { what: "event", source })?;
        self.command(Command::Event(Box::new(event))).await
    }

    /// Replaces the retained `hello`; published now if connected, else on the next connect.
    pub async fn update_hello(&self, hello: Hello) -> Result<(), TelemetryError> {
        self.check_device("hello", &hello.device)?;
        hello
            .validate()
            .map_err(|source| TelemetryError::InvalidMessage { what: "hello", source })?;
        self.command(Command::Hello(Box::new(hello))).await
    }

    /// Asks the control for a range of an artifact (`fetch`). Sent at once when connected and
    /// otherwise dropped: the updater asks again after its timeout.
    pub async fn send_fetch(&self, request: &wire::FetchRequest) -> Result<(), TelemetryError> {
        let publish = wire::Publish::message(&self.device, request)
            .map_err(|source| TelemetryError::InvalidMessage { what: "fetch request", source })?;
        self.command(Command::Fetch(Box::new(publish))).await
    }

    /// Publishes one part of an input-sample upload (`samples`) now if connected; returns
    /// whether it went out (offline, nothing is kept: the retained request retries the upload
    /// after the next connect).
    pub async fn send_samples(&self, chunk: &wire::SampleChunk) -> Result<bool, TelemetryError> {
        let publish = wire::Publish::message(&self.device, chunk)
            .map_err(|source| TelemetryError::InvalidMessage { what: "sample chunk", source })?;
        let (done, sent) = oneshot::channel();
        self.command(Command::Samples { publish: Box::new(publish), done }).await?;
        sent.await.map_err(|_| TelemetryError::Stopped)
    }

    /// The control's latest sampling message (`sampling`, retained; "not in alert" until one
    /// arrives).
    pub fn sampling(&self) -> watch::Receiver<wire::SamplingControl> {
        self.sampling.clone()
    }

    /// Whether the broker connection is up.
    pub fn connected(&self) -> bool {
        self.status.borrow().connected
    }

    /// The current status.
    pub fn status(&self) -> TelemetryStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<TelemetryStatus> {
        self.status.clone()
    }

    /// Publishes `state` offline (retained), waits for its acknowledgement (at most
    /// [`MqttConfig::shutdown_timeout_ms`]), disconnects cleanly and stops the task. Queued
    /// windows stay on disk for the next start. Calling it again, or after the task ended, is
    /// fine.
    pub async fn shutdown(&self) -> Result<(), TelemetryError> {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Shutdown(done)).await.is_err() {
            return Ok(());
        }
        let _ = finished.await;
        Ok(())
    }

    fn check_device(&self, what: &'static str, found: &DeviceId) -> Result<(), TelemetryError> {
        if *found != self.device {
            return Err(TelemetryError::WrongDevice {
                what,
                expected: self.device.clone(),
                found: found.clone(),
            });
        }
        Ok(())
    }

    async fn command(&self, command: Command) -> Result<(), TelemetryError> {
        self.commands.send(command).await.map_err(|_| TelemetryError::Stopped)
    }
}

/// Starts the agent's MQTT reporting. See the module docs.
pub struct Telemetry;

impl Telemetry {
    /// Opens the disk queue under `data_dir`, then spawns the tasks (call inside a tokio
    /// runtime). Returns the handle, the receiver of valid `assign`/`chunk` messages for the
    /// updater, and the shell task, which ends after [`TelemetryHandle::shutdown`] or when
    /// every handle is dropped.
    pub fn start(
        config: MqttConfig,
        queue: QueueConfig,
        data_dir: &Path,
        device: DeviceId,
        hello: Hello,
    ) -> Result<(TelemetryHandle, mpsc::Receiver<ToDevice>, JoinHandle<()>), TelemetryError> {
        config.validate()?;
        if hello.device != device {
            return Err(TelemetryError::WrongDevice {
                what: "hello",
                expected: device,
                found: hello.device,
            });
        }
        hello
            .validate()
            .map_err(|source| TelemetryError::InvalidMessage { what: "hello", source })?;
        let options = mqtt_options(&config, &device, data_dir)?;

        let (queue, report) = WindowQueue::open(data_dir, queue)?;
        if report.removed_temporaries > 0 || !report.quarantined.is_empty() {
            tracing::warn!(
                removed_temporaries = report.removed_temporaries,
                quarantined = report.quarantined.len(),
                "the window queue was cleaned up after an unclean stop"
            );
        }
        let next_event_seq =
            read_counter(&queue.dir().join(EVENT_SEQ_FILE)).unwrap_or_else(|reason| {
                tracing::warn!(%reason, "the event counter is unreadable; starting over at 1");
                1
            });
        let limits = SessionLimits {
            max_windows_in_flight: usize::from(config.max_windows_in_flight),
            max_events_in_flight: MAX_EVENTS_IN_FLIGHT,
            event_buffer: config.event_buffer,
        };
        let mut session = Session::new(device.clone(), hello, limits, queue.seqs(), next_event_seq);
        session.windows_dropped(&report.dropped, now_ms());

        // Everything the session can have unacknowledged at once, plus subscribe and disconnect:
        // the request channel never fills, and rumqttc's packet ids never collide.
        let requests = usize::from(config.max_windows_in_flight)
            + MAX_EVENTS_IN_FLIGHT
            + MAX_SAMPLE_CHUNKS_QUEUED
            + 4;
        let (client, mut eventloop) = AsyncClient::new(options, requests);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(config.connect_timeout_seconds);
        eventloop.set_network_options(network);

        let backoff = Backoff::new(
            BackoffConfig {
                min_delay: Duration::from_millis(config.reconnect_min_delay_ms),
                max_delay: Duration::from_millis(config.reconnect_max_delay_ms),
            },
            SplitMix64::from_entropy(),
        );
        let (net_tx, net_rx) = mpsc::channel(NET_CHANNEL_CAPACITY);
        let poller = tokio::spawn(poller::run(eventloop, net_tx, backoff));

        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let (forward_tx, forward_rx) = mpsc::channel(FORWARD_CHANNEL_CAPACITY);
        let (status_tx, status_rx) = watch::channel(TelemetryStatus::default());
        let (sampling_tx, sampling_rx) = watch::channel(wire::SamplingControl {
            v: wire::ProtocolVersion,
            alert: false,
            upload_request: None,
        });
        let shell = Shell {
            device: device.clone(),
            session,
            queue,
            client,
            commands: commands_rx,
            net: net_rx,
            forward_tx,
            forward: VecDeque::new(),
            forward_open: true,
            sampling: sampling_tx,
            status: status_tx,
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
            shutdown_deadline: None,
            shutdown_waiters: Vec::new(),
            finished: false,
            poller,
        };
        let task = tokio::spawn(shell.run());
        let handle = TelemetryHandle {
            device,
            commands: commands_tx,
            status: status_rx,
            sampling: sampling_rx,
        };
        Ok((handle, forward_rx, task))
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn mqtt_options(
    config: &MqttConfig,
    device: &DeviceId,
    data_dir: &Path,
) -> Result<MqttOptions, TelemetryError> {
    let mut options = MqttOptions::new(device.as_str(), config.host.clone(), config.port());
    options.set_keep_alive(Duration::from_secs(config.keep_alive_seconds));
    options.set_clean_session(true);
    options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    let inflight = usize::from(config.max_windows_in_flight) + MAX_EVENTS_IN_FLIGHT + 4;
    options.set_inflight(u16::try_from(inflight).unwrap_or(u16::MAX));
    let will_topic = Topic::new(device.clone(), Channel::State).to_string();
    options.set_last_will(LastWill::new(will_topic, LAST_WILL_PAYLOAD, QoS::AtLeastOnce, true));
    if let Some(tls) = &config.tls {
        let ca = read_pem(data_dir, &tls.ca_file, "CA file", "CERTIFICATE")?;
        let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => Some((
                read_pem(data_dir, cert, "client certificate", "CERTIFICATE")?,
                read_pem(data_dir, key, "client key", "PRIVATE KEY")?,
            )),
            _ => None,
        };
        // rustls needs a process-wide crypto provider when more than one is compiled in;
        // installing ours fails harmlessly if one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(options)
}

fn read_pem(
    data_dir: &Path,
    path: &Path,
    what: &'static str,
    expected: &'static str,
) -> Result<Vec<u8>, TelemetryError> {
    let path = data_dir.join(path);
    let bytes = std::fs::read(&path).map_err(|source| TelemetryError::ReadFile {
        what,
        path: path.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|line| {
        line.starts_with("-----BEGIN ") && line.trim_end().ends_with(&format!("{expected}-----"))
    });
    if !found {
        return Err(TelemetryError::NotPem { what, path, expected });
    }
    Ok(bytes)
}

/// What the poller saw, for the shell.
#[derive(Debug)]
enum NetEvent {
    Connected,
    PublishSent(u16),
    PubAck(u16),
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// The connection failed or was lost. The poller waits for `resume` (sent once the session
    /// stopped handing out requests) and `retry_in` before the next attempt.
    Disconnected {
        error: String,
        retry_in: Duration,
        resume: oneshot::Sender<()>,
    },
    DisconnectSent,
}

/// The part of rumqttc's `EventLoop` the poller uses, so tests can drive it with a fake.
trait MqttConnection: Send + 'static {
    fn poll(&mut self) -> impl Future<Output = Result<rumqttc::Event, ConnectionError>> + Send;
    /// Events rumqttc buffered before a failure; they belong to the lost connection.
    fn take_buffered_events(&mut self) -> Vec<rumqttc::Event>;
    /// Forgets requests handed over for the lost connection, so the next one cannot send them.
    fn discard_requests(&mut self);
}

impl MqttConnection for EventLoop {
    fn poll(&mut self) -> impl Future<Output = Result<rumqttc::Event, ConnectionError>> + Send {
        EventLoop::poll(self)
    }

    fn take_buffered_events(&mut self) -> Vec<rumqttc::Event> {
        self.state.events.drain(..).collect()
    }

    fn discard_requests(&mut self) {
        // `clean` moves requests still in the channel to `pending`; with no network it does
        // nothing else.
        self.clean();
        self.pending.clear();
    }
}

mod poller {
    //! Drives rumqttc's event loop: one poll at a time, never cancelled, a backoff delay after
    //! every failure. The backoff starts over only after a connection held for
    //! [`STABLE_CONNECTION`]: a broker that accepts and then drops the device at once (a
    //! duplicate client id, an ACL problem) must not be hammered at the minimum delay.

    use super::*;

    /// How long a connection must last before the next failure counts as a first one.
    pub(super) const STABLE_CONNECTION: Duration = Duration::from_secs(10);

    pub(super) async fn run<C: MqttConnection, J: JitterSource + Send + 'static>(
        mut connection: C,
        events: mpsc::Sender<NetEvent>,
        mut backoff: Backoff<J>,
    ) {
        let mut connected_since = None;
        loop {
            match connection.poll().await {
                Ok(event) => {
                    let done = matches!(event, rumqttc::Event::Outgoing(Outgoing::Disconnect));
                    if matches!(event, rumqttc::Event::Incoming(Packet::ConnAck(_))) {
                        connected_since = Some(Instant::now());
                    }
                    if let Some(net) = translate(event)
                        && events.send(net).await.is_err()
                    {
                        return;
                    }
                    if done {
                        return;
                    }
                }
                Err(error) => {
                    for event in connection.take_buffered_events() {
                        if let Some(net) = translate(event)
                            && events.send(net).await.is_err()
                        {
                            return;
                        }
                    }
                    let held = connected_since.take().map(|since| since.elapsed());
                    if held.is_some_and(|held| held >= STABLE_CONNECTION) {
                        backoff.reset();
                    }
                    let retry_in = backoff.next_delay();
                    tracing::debug!(%error, ?retry_in, attempt = backoff.attempts(), "MQTT connection failed");
                    let (resume, resumed) = oneshot::channel();
                    let error = error.to_string();
                    if events
                        .send(NetEvent::Disconnected { error, retry_in, resume })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if resumed.await.is_err() {
                        return;
                    }
                    tokio::time::sleep(retry_in).await;
                    connection.discard_requests();
                }
            }
        }
    }

    fn translate(event: rumqttc::Event) -> Option<NetEvent> {
        match event {
            rumqttc::Event::Incoming(Packet::ConnAck(_)) => Some(NetEvent::Connected),
            rumqttc::Event::Incoming(Packet::PubAck(ack)) => Some(NetEvent::PubAck(ack.pkid)),
            rumqttc::Event::Incoming(Packet::Publish(publish)) => {
                Some(NetEvent::Message { topic: publish.topic, payload: publish.payload.to_vec() })
            }
            rumqttc::Event::Incoming(Packet::SubAck(ack)) => {
                if ack.return_codes.iter().any(|code| matches!(code, SubscribeReasonCode::Failure))
                {
                    tracing::warn!(
                        "the broker refused a subscription to the device's assign, chunk or \
                         sampling topic; check its ACL"
                    );
                }
                None
            }
            rumqttc::Event::Outgoing(Outgoing::Publish(pkid)) => Some(NetEvent::PublishSent(pkid)),
            rumqttc::Event::Outgoing(Outgoing::Disconnect) => Some(NetEvent::DisconnectSent),
            _ => None,
        }
    }
}

/// Why the shell woke up.
enum Wake {
    Net(Option<NetEvent>),
    Forwarded,
    Command(Option<Command>),
    ShutdownTimedOut,
}

/// The shell task: serves the handle, carries out the session's actions.
struct Shell {
    device: DeviceId,
    session: Session,
    queue: WindowQueue,
    client: AsyncClient,
    commands: mpsc::Receiver<Command>,
    net: mpsc::Receiver<NetEvent>,
    forward_tx: mpsc::Sender<ToDevice>,
    /// Valid messages the updater has not taken yet.
    forward: VecDeque<ToDevice>,
    forward_open: bool,
    /// The control's latest sampling message, for [`crate::sampling`].
    sampling: watch::Sender<wire::SamplingControl>,
    status: watch::Sender<TelemetryStatus>,
    shutdown_timeout: Duration,
    shutdown_deadline: Option<Instant>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    finished: bool,
    poller: JoinHandle<()>,
}

impl Shell {
    async fn run(mut self) {
        loop {
            self.execute();
            self.publish_status();
            if self.finished {
                break;
            }
            let deadline = self.shutdown_deadline;
            let accepting = !self.session.shutting_down();
            let wake = tokio::select! {
                biased;
                net = self.net.recv() => Wake::Net(net),
                permit = self.forward_tx.reserve(), if !self.forward.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(message) = self.forward.pop_front() {
                                permit.send(message);
                            }
                        }
                        Err(_) => {
                            tracing::debug!("nobody takes assign/chunk messages; dropping them");
                            self.forward_open = false;
                            self.forward.clear();
                        }
                    }
                    Wake::Forwarded
                }
                command = self.commands.recv(), if accepting => Wake::Command(command),
                () = wait_until(deadline), if deadline.is_some() => Wake::ShutdownTimedOut,
            };
            match wake {
                Wake::Net(Some(event)) => self.on_net(event),
                Wake::Net(None) => {
                    tracing::error!("the MQTT poller stopped; telemetry stops");
                    self.finished = true;
                }
                Wake::Forwarded => {}
                Wake::Command(Some(command)) => self.on_command(command),
                Wake::Command(None) => self.begin_shutdown(),
                Wake::ShutdownTimedOut => {
                    tracing::warn!(
                        "the broker did not acknowledge `offline` in time; stopping anyway"
                    );
                    self.finished = true;
                }
            }
        }
        self.poller.abort();
        self.status.send_modify(|status| {
            status.connected = false;
            status.stopped = true;
        });
        for waiter in self.shutdown_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    fn on_net(&mut self, event: NetEvent) {
        match event {
            NetEvent::Connected => {
                tracing::info!(device = %self.device, "connected to the MQTT broker");
                self.session.on_connected(now_ms());
            }
            NetEvent::PublishSent(pkid) => self.session.on_publish_sent(pkid),
            NetEvent::PubAck(pkid) => self.session.on_puback(pkid),
            NetEvent::Message { topic, payload } => {
                self.session.on_message(&topic, &payload, now_ms());
            }
            NetEvent::Disconnected { error, retry_in, resume } => {
                if self.session.connected() {
                    tracing::warn!(%error, ?retry_in, "lost the MQTT connection; windows queue on disk");
                } else {
                    tracing::info!(%error, ?retry_in, "cannot reach the MQTT broker");
                }
                self.session.on_disconnected();
                // From here on the session hands out nothing until the next `Connected`.
                let _ = resume.send(());
            }
            NetEvent::DisconnectSent => self.session.on_disconnected(),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Window { window, done } => {
                let seq = window.seq;
                let result = match self.queue.push(&window) {
                    Ok(dropped) => {
                        self.session.window_queued(seq);
                        self.session.windows_dropped(&dropped, now_ms());
                        Ok(())
                    }
                    Err(error) => {
                        tracing::error!(seq, %error, "cannot queue a statistics window");
                        Err(TelemetryError::from(error))
                    }
                };
                let _ = done.send(result);
            }
            Command::Event(event) => self.session.send_event(*event),
            Command::Hello(hello) => self.session.update_hello(*hello),
            Command::Fetch(publish) => {
                if !self.session.send_fetch(*publish) {
                    tracing::debug!("offline: fetch request not sent");
                }
            }
            Command::Shutdown(done) => {
                self.shutdown_waiters.push(done);
                self.begin_shutdown();
            }
            // Sent like a fetch request: at once when connected, never kept offline.
            Command::Samples { publish, done } => {
                let _ = done.send(self.session.send_fetch(*publish));
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.session.shutting_down() {
            return;
        }
        self.shutdown_deadline = Some(Instant::now() + self.shutdown_timeout);
        self.session.shutdown(now_ms());
    }

    /// Carries out every pending action of the session.
    fn execute(&mut self) {
        while let Some(action) = self.session.next_action() {
            match action {
                Action::Publish { what, publish } => {
                    if let Err(error) = self.client.try_publish(
                        publish.topic,
                        qos(publish.qos),
                        publish.retain,
                        publish.payload,
                    ) {
                        tracing::warn!(%error, ?what, "the MQTT client refused a publication");
                        self.session.publish_rejected(what);
                    }
                }
                Action::PublishWindow(seq) => match self.queue.read(seq) {
                    Ok(Some(payload)) => {
                        let publish = window_publish(&self.device, payload);
                        if let Err(error) = self.client.try_publish(
                            publish.topic,
                            qos(publish.qos),
                            publish.retain,
                            publish.payload,
                        ) {
                            tracing::warn!(%error, seq, "the MQTT client refused a window");
                            self.session.publish_rejected(Outbound::Window(seq));
                        }
                    }
                    Ok(None) => self.session.window_unavailable(seq),
                    Err(error) => {
                        tracing::error!(seq, %error, "cannot read a queued window; it waits for the next start");
                        self.session.window_unavailable(seq);
                    }
                },
                Action::Subscribe(topics) => {
                    let filters =
                        topics.into_iter().map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce));
                    if let Err(error) = self.client.try_subscribe_many(filters) {
                        tracing::error!(%error, "cannot subscribe to the device's topics");
                    }
                }
                Action::RemoveWindow(seq) => {
                    if let Err(error) = self.queue.remove(seq) {
                        tracing::error!(seq, %error, "cannot delete an acknowledged window; it will be sent again");
                    }
                }
                Action::SaveEventSeq(next) => {
                    if let Err(error) =
                        write_atomic(self.queue.dir(), EVENT_SEQ_FILE, next.to_string().as_bytes())
                    {
                        tracing::error!(%error, "cannot persist the event counter");
                    }
                }
                Action::Forward(message) => self.enqueue_forward(message),
                Action::Disconnect => {
                    if let Err(error) = self.client.try_disconnect() {
                        tracing::warn!(%error, "cannot send MQTT DISCONNECT");
                        self.finished = true;
                    }
                }
                Action::Finish => self.finished = true,
            }
        }
    }

    fn enqueue_forward(&mut self, message: ToDevice) {
        if let ToDevice::Sampling(control) = message {
            self.sampling.send_replace(control);
            return;
        }
        if !self.forward_open {
            return;
        }
        if !matches!(message, ToDevice::Chunk(_)) {
            // Assignments are retained state: only the latest one matters.
            self.forward.retain(|m| matches!(m, ToDevice::Chunk(_)));
        }
        self.forward.push_back(message);
        while self.forward.len() > MAX_FORWARD_BACKLOG {
            match self.forward.iter().position(|m| matches!(m, ToDevice::Chunk(_))) {
                Some(position) => {
                    self.forward.remove(position);
                    tracing::warn!("the updater is not keeping up: dropped a chunk reply");
                }
                None => break,
            }
        }
    }

    fn publish_status(&self) {
        let status = TelemetryStatus {
            connected: self.session.connected(),
            queued_windows: self.queue.len(),
            queued_bytes: self.queue.bytes(),
            dropped_windows_total: self.queue.dropped_total(),
            pending_events: self.session.pending_events(),
            dropped_events_total: self.session.events_dropped_total(),
            stopped: false,
        };
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}

impl Drop for Shell {
    /// Also when the task is aborted or panics: the poller holds the connection, and a
    /// connection without its shell must not linger (the broker then sends the Last Will).
    fn drop(&mut self) {
        self.poller.abort();
    }
}

async fn wait_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn qos(qos: wire::QoS) -> QoS {
    match qos {
        wire::QoS::AtMostOnce => QoS::AtMostOnce,
        wire::QoS::AtLeastOnce => QoS::AtLeastOnce,
        wire::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let config: MqttConfig = toml::from_str("host = \"broker.example\"").expect("parse");
        assert_eq!(config.port(), 1883);
        config.validate().expect("valid");
        let tls: MqttConfig = toml::from_str(
            "host = \"b\"\n[tls]\nca_file = \"ca.pem\"\nclient_cert_file = \"c.pem\"\nclient_key_file = \"k.pem\"",
        )
        .expect("parse");
        assert_eq!(tls.port(), 8883);
        tls.validate().expect("valid");
        assert!(toml::from_str::<MqttConfig>("hots = \"b\"").is_err(), "unknown keys are refused");
        for bad in [
            "host = \"\"",
            "keep_alive_seconds = 2",
            "connect_timeout_seconds = 0",
            "reconnect_min_delay_ms = 0",
            "reconnect_min_delay_ms = 10\nreconnect_max_delay_ms = 5",
            "max_windows_in_flight = 0",
            "event_buffer = 0",
            "[tls]\nca_file = \"ca.pem\"\nclient_cert_file = \"c.pem\"",
        ] {
            let config: MqttConfig = toml::from_str(bad).expect("parse");
            assert!(config.validate().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn tls_files_must_exist_and_be_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = DeviceId::new("d1").expect("id");
        let mut config = MqttConfig {
            tls: Some(MqttTlsConfig {
                ca_file: "ca.pem".into(),
                client_cert_file: None,
                client_key_file: None,
            }),
            ..MqttConfig::default()
        };
        let error = mqtt_options(&config, &device, dir.path()).expect_err("missing file");
        assert!(matches!(error, TelemetryError::ReadFile { what: "CA file", .. }), "{error}");
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").expect("write");
        let error = mqtt_options(&config, &device, dir.path()).expect_err("not PEM");
        assert!(matches!(error, TelemetryError::NotPem { .. }), "{error}");
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        mqtt_options(&config, &device, dir.path()).expect("PEM accepted");
        config.tls = None;
        mqtt_options(&config, &device, dir.path()).expect("plain TCP");
    }

    /// What the fake connection does on each poll.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Fail,
        Connect,
        /// Stay connected this long, then fail.
        DropAfter(Duration),
    }

    /// A connection that follows a script, then idles.
    struct ScriptedConnection {
        script: VecDeque<Step>,
        polls: Arc<Mutex<Vec<Instant>>>,
    }

    impl MqttConnection for ScriptedConnection {
        fn poll(&mut self) -> impl Future<Output = Result<rumqttc::Event, ConnectionError>> + Send {
            self.polls.lock().expect("lock").push(Instant::now());
            let step = self.script.pop_front();
            async move {
                let refused = || {
                    ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                };
                match step {
                    Some(Step::Fail) => Err(refused()),
                    Some(Step::Connect) => {
                        Ok(rumqttc::Event::Incoming(Packet::ConnAck(rumqttc::ConnAck {
                            session_present: false,
                            code: rumqttc::ConnectReturnCode::Success,
                        })))
                    }
                    Some(Step::DropAfter(held)) => {
                        tokio::time::sleep(held).await;
                        Err(refused())
                    }
                    None => std::future::pending().await,
                }
            }
        }

        fn take_buffered_events(&mut self) -> Vec<rumqttc::Event> {
            Vec::new()
        }

        fn discard_requests(&mut self) {}
    }

    /// Runs the poller over `script` with the highest jitter (every delay is its ceiling) and
    /// returns the delays it announced and when it polled, in ms from the start.
    async fn run_script(script: &[Step]) -> (Vec<u128>, Vec<u128>) {
        let polls = Arc::new(Mutex::new(Vec::new()));
        let connection =
            ScriptedConnection { script: script.iter().copied().collect(), polls: polls.clone() };
        let backoff = Backoff::new(
            BackoffConfig {
                min_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(1_000),
            },
            || u64::MAX,
        );
        let (tx, mut rx) = mpsc::channel(8);
        let start = Instant::now();
        let poller = tokio::spawn(poller::run(connection, tx, backoff));
        let failures = script.iter().filter(|s| !matches!(s, Step::Connect)).count();
        let mut delays = Vec::new();
        while delays.len() < failures {
            let event = tokio::time::timeout(Duration::from_secs(600), rx.recv())
                .await
                .expect("an event in time")
                .expect("the poller runs");
            match event {
                NetEvent::Disconnected { retry_in, resume, .. } => {
                    delays.push(retry_in.as_millis());
                    resume.send(()).expect("the poller waits for the session");
                }
                NetEvent::Connected => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // The poll after the last step idles; wait until it started.
        while polls.lock().expect("lock").len() <= script.len() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        poller.abort();
        let offsets =
            polls.lock().expect("lock").iter().map(|t| (*t - start).as_millis()).collect();
        (delays, offsets)
    }

    #[tokio::test(start_paused = true)]
    async fn the_poller_waits_the_backoff_delay_between_attempts_and_never_hot_loops() {
        use Step::{Connect, Fail};
        let (delays, polls) = run_script(&[Fail, Fail, Fail, Fail, Fail, Connect]).await;
        assert_eq!(delays, [100, 200, 400, 800, 1_000]);
        // Each attempt waits for the previous delay; after connecting, the next poll idles.
        assert_eq!(polls, [0, 100, 300, 700, 1_500, 2_500, 2_500]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_starts_over_only_after_a_connection_held() {
        use Step::{Connect, DropAfter, Fail};
        let brief = Duration::from_secs(1);
        let (delays, _) = run_script(&[
            Fail,
            Connect,
            DropAfter(brief),
            Fail,
            Connect,
            DropAfter(poller::STABLE_CONNECTION),
            Fail,
        ])
        .await;
        // Dropped right after connecting: the delays keep growing. Held: back to the start.
        assert_eq!(delays, [100, 200, 400, 100, 200]);
    }
}
