//! Real MQTT brokers for tests, each on its own free loopback port, and an MQTT client that
//! records what arrives.
//!
//! - [`Mosquitto`]: the Debian `mosquitto` binary with a generated config in a temporary
//!   directory (plain or TLS / mTLS listener, persistence on request); [`Mosquitto::stop`] and
//!   [`Mosquitto::restart`] on the same port simulate a broker outage; dropped, it is killed.
//! - [`EmbeddedBroker`]: rumqttd in a thread of the test process (it has no shutdown; the
//!   thread ends with the process).
//! - [`TestClient`]: a rumqttc client that subscribes, publishes (waiting for the broker's
//!   acknowledgement) and hands out received messages with [`TestClient::next_message`].
//!
//! Everything waits on conditions with timeouts ([`crate::wait`]); nothing sleeps to
//! synchronise.

use std::fmt;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::wait;

/// How long a broker may take to accept connections after it was started.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Environment variable naming the mosquitto binary, if not on `PATH` or in `/usr/sbin`.
pub const MOSQUITTO_ENV: &str = "OUTPOST_MOSQUITTO";

/// Why a broker or client could not be set up, with what to do about it.
#[derive(Debug)]
pub struct BrokerError(String);

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BrokerError {}

fn fail(message: impl Into<String>) -> BrokerError {
    BrokerError(message.into())
}

/// A port that was free a moment ago on 127.0.0.1. Another process can take it before it is
/// used; starters retry with a new one.
pub fn free_port() -> Result<u16, BrokerError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| fail(format!("cannot find a free port: {error}")))
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn accepts_connections(port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
}

/// The mosquitto binary: `$OUTPOST_MOSQUITTO`, then `PATH`, then `/usr/sbin/mosquitto`.
pub fn find_mosquitto() -> Result<PathBuf, BrokerError> {
    if let Some(path) = std::env::var_os(MOSQUITTO_ENV) {
        return Ok(PathBuf::from(path));
    }
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("mosquitto")).collect())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            fail(
                "mosquitto not found on PATH or in /usr/sbin: install the `mosquitto` package \
                 (apt-get install mosquitto; `cargo xtask test` does) or set OUTPOST_MOSQUITTO",
            )
        })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// TLS files for a mosquitto listener (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MosquittoTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate signed by `ca_file` (mTLS).
    pub require_certificate: bool,
}

/// How to run mosquitto.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MosquittoOptions {
    /// Keep sessions and retained messages across [`Mosquitto::restart`] (saved on stop).
    pub persistence: bool,
    /// A TLS listener instead of plain TCP.
    pub tls: Option<MosquittoTls>,
    /// More config lines, appended as they are.
    pub extra: Vec<String>,
}

/// A mosquitto process on a free loopback port; killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    directory: tempfile::TempDir,
    binary: PathBuf,
    options: MosquittoOptions,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// Plain TCP, anonymous clients, no persistence.
    pub fn start() -> Result<Mosquitto, BrokerError> {
        Mosquitto::start_with(MosquittoOptions::default())
    }

    pub fn start_with(options: MosquittoOptions) -> Result<Mosquitto, BrokerError> {
        let directory = tempfile::Builder::new()
            .prefix("outpost-mosquitto-")
            .tempdir()
            .map_err(|error| fail(format!("cannot create a temporary directory: {error}")))?;
        let mut broker =
            Mosquitto { directory, binary: find_mosquitto()?, options, port: 0, child: None };
        let mut last_error = None;
        for _ in 0..3 {
            broker.port = free_port()?;
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| fail("mosquitto did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The broker's working directory (config, log, persistence).
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    /// What mosquitto logged so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|child| child.try_wait()), Some(Ok(None)))
    }

    /// Stops the broker (SIGTERM, so a persistent broker saves its state; SIGKILL if it does
    /// not exit within 10 s) and waits until the port is closed.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let exited = wait::try_until_some(Duration::from_secs(10), "mosquitto to exit", || {
            child.try_wait().ok().flatten()
        });
        if exited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let port = self.port;
        wait::until(Duration::from_secs(10), "the broker port to close", || {
            !accepts_connections(port)
        });
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.stop();
        // The port was ours a moment ago; give a stray bind a few chances.
        let mut last_error = None;
        for _ in 0..5 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| fail("mosquitto did not restart")))
    }

    fn log_path(&self) -> PathBuf {
        self.directory.path().join("mosquitto.log")
    }

    fn write_config(&self) -> Result<PathBuf, BrokerError> {
        let mut lines = vec![
            format!("listener {} 127.0.0.1", self.port),
            "allow_anonymous true".to_string(),
            "log_dest stderr".to_string(),
            "log_type error".to_string(),
            "log_type warning".to_string(),
            "log_type notice".to_string(),
            "log_type information".to_string(),
            "connection_messages true".to_string(),
        ];
        if running_as_root() {
            // Otherwise mosquitto switches to the `mosquitto` user, which cannot read this
            // directory.
            lines.push("user root".to_string());
        }
        if self.options.persistence {
            lines.push("persistence true".to_string());
            lines.push(format!("persistence_location {}/", self.directory.path().display()));
        } else {
            lines.push("persistence false".to_string());
        }
        if let Some(tls) = &self.options.tls {
            lines.push(format!("cafile {}", tls.ca_file.display()));
            lines.push(format!("certfile {}", tls.cert_file.display()));
            lines.push(format!("keyfile {}", tls.key_file.display()));
            lines.push(format!("require_certificate {}", tls.require_certificate));
            if tls.require_certificate {
                lines.push("use_identity_as_username true".to_string());
            }
        }
        lines.extend(self.options.extra.iter().cloned());
        let path = self.directory.path().join("mosquitto.conf");
        fs::write(&path, lines.join("\n") + "\n")
            .map_err(|error| fail(format!("cannot write {}: {error}", path.display())))?;
        Ok(path)
    }

    fn spawn(&mut self) -> Result<(), BrokerError> {
        let config = self.write_config()?;
        let child = spawn_mosquitto(
            &self.binary,
            &config,
            self.directory.path(),
            &self.log_path(),
            self.port,
        )
        .map_err(fail)?;
        self.child = Some(child);
        Ok(())
    }
}

/// Runs `binary -c config` in `directory`, its output appended to `log`, and waits until it
/// accepts connections on `port`. On failure the process is stopped and the message says why
/// (timed out, exited with a status), with the log.
pub(crate) fn spawn_mosquitto(
    binary: &Path,
    config: &Path,
    directory: &Path,
    log: &Path,
    port: u16,
) -> Result<Child, String> {
    let log_out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|error| format!("cannot open the mosquitto log: {error}"))?;
    let log_err = log_out.try_clone().map_err(|error| format!("cannot open the log: {error}"))?;
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(config)
        .current_dir(directory)
        .stdin(Stdio::null())
        .stdout(log_out)
        .stderr(log_err)
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
    let mut exited = None;
    let ready = wait::try_until_some(STARTUP_TIMEOUT, "mosquitto to accept connections", || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return Some(false);
        }
        accepts_connections(port).then_some(true)
    });
    match ready {
        Ok(true) => Ok(child),
        outcome => {
            let _ = child.kill();
            let _ = child.wait();
            let why = match (outcome, exited) {
                (Err(timed_out), _) => timed_out.to_string(),
                (_, Some(status)) => format!("mosquitto exited with {status}"),
                _ => "mosquitto did not start".to_string(),
            };
            let log = fs::read_to_string(log).unwrap_or_default();
            Err(format!("{why} on port {port}; log:\n{log}"))
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// rumqttd running in a thread of this process on a free loopback port (MQTT 3.1.1).
#[derive(Debug)]
pub struct EmbeddedBroker {
    port: u16,
}

impl EmbeddedBroker {
    pub fn start() -> Result<EmbeddedBroker, BrokerError> {
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            let config = format!(
                r#"
id = 0
[router]
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 4194304
    max_inflight_count = 100
    dynamic_filters = true
"#
            );
            let config: rumqttd::Config = toml::from_str(&config)
                .map_err(|error| fail(format!("invalid rumqttd config: {error}")))?;
            let thread = std::thread::Builder::new()
                .name(format!("rumqttd-{port}"))
                .spawn(move || {
                    let mut broker = rumqttd::Broker::new(config);
                    if let Err(error) = broker.start() {
                        eprintln!("embedded broker on port {port} stopped: {error}");
                    }
                })
                .map_err(|error| fail(format!("cannot start the broker thread: {error}")))?;
            let ready =
                wait::try_until_some(STARTUP_TIMEOUT, "rumqttd to accept connections", || {
                    if thread.is_finished() {
                        return Some(false);
                    }
                    accepts_connections(port).then_some(true)
                });
            match ready {
                Ok(true) => return Ok(EmbeddedBroker { port }),
                Ok(false) => last_error = Some(fail(format!("rumqttd did not start on {port}"))),
                Err(error) => last_error = Some(fail(error.to_string())),
            }
        }
        Err(last_error.unwrap_or_else(|| fail("rumqttd did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
}

/// A message a [`TestClient`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// TLS for a [`TestClient`]: PEM bytes of the CA and optionally a client certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: Vec<u8>,
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

/// How a [`TestClient`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// `false` keeps the session (subscriptions and QoS 1 messages queued while away) on a
    /// broker with persistence, so a test can observe what arrives around a broker restart.
    pub clean_session: bool,
    pub tls: Option<ClientTls>,
}

impl ClientOptions {
    /// Plain TCP to `127.0.0.1:port`, clean session, a unique client id with `prefix`.
    pub fn local(port: u16, prefix: &str) -> ClientOptions {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ClientOptions {
            host: "127.0.0.1".into(),
            port,
            client_id: format!("{prefix}-{}-{n}", std::process::id()),
            clean_session: true,
            tls: None,
        }
    }
}

#[derive(Debug)]
enum Ack {
    Subscribed,
    Published,
}

/// An MQTT client for tests: its event loop runs in a task that records messages and
/// reconnects (after 100 ms) when the connection drops.
#[derive(Debug)]
pub struct TestClient {
    client: AsyncClient,
    messages: mpsc::Receiver<Message>,
    acks: mpsc::Receiver<Ack>,
    task: JoinHandle<()>,
}

/// Messages kept for the test before the client task waits for it to read them.
const MESSAGE_BACKLOG: usize = 4096;

impl TestClient {
    /// Connects and waits for the broker's CONNACK (at most `timeout`); an error names why the
    /// broker or the TLS handshake refused.
    pub async fn connect(
        options: ClientOptions,
        timeout: Duration,
    ) -> Result<TestClient, BrokerError> {
        let mut mqtt =
            MqttOptions::new(options.client_id.clone(), options.host.clone(), options.port);
        mqtt.set_clean_session(options.clean_session);
        mqtt.set_keep_alive(Duration::from_secs(30));
        mqtt.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
        if let Some(tls) = &options.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: tls.ca.clone(),
                alpn: None,
                client_auth: tls.client_auth.clone(),
            }));
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, 64);
        let first = tokio::time::timeout(timeout, eventloop.poll()).await.map_err(|_| {
            fail(format!("no CONNACK from {}:{} within {timeout:?}", options.host, options.port))
        })?;
        match first {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {}
            Ok(other) => return Err(fail(format!("expected CONNACK, got {other:?}"))),
            Err(error) => return Err(fail(format!("connection refused: {error}"))),
        }
        let (messages_tx, messages) = mpsc::channel(MESSAGE_BACKLOG);
        let (acks_tx, acks) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let message = Message {
                            topic: publish.topic,
                            payload: publish.payload.to_vec(),
                            retain: publish.retain,
                        };
                        if messages_tx.send(message).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = acks_tx.send(Ack::Subscribed).await;
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = acks_tx.send(Ack::Published).await;
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Ok(TestClient { client, messages, acks, task })
    }

    /// Subscribes to `filters` at QoS 1 and waits for the SUBACK.
    pub async fn subscribe(&mut self, filters: &[&str]) {
        let filters =
            filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce));
        self.client.subscribe_many(filters).await.expect("subscribe request");
        self.wait_ack("SUBACK", |ack| matches!(ack, Ack::Subscribed)).await;
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .expect("publish request");
        self.wait_ack("PUBACK", |ack| matches!(ack, Ack::Published)).await;
    }

    /// The next message, or `None` after `timeout`.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<Message> {
        tokio::time::timeout(timeout, self.messages.recv()).await.ok().flatten()
    }

    /// The next message on `topic` (others are skipped); panics naming `what` after `timeout`.
    pub async fn expect_on(&mut self, topic: &str, timeout: Duration, what: &str) -> Message {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message(left).await {
                Some(message) if message.topic == topic => return message,
                Some(_) => {}
                None => panic!("timed out after {timeout:?} waiting for {what} on {topic}"),
            }
        }
    }

    /// Disconnects cleanly (no Last Will) and waits (at most 5 s) until the DISCONNECT is out.
    pub async fn disconnect(mut self) {
        if self.client.disconnect().await.is_ok() {
            // The task ends after sending DISCONNECT, which closes the message channel.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while self.messages.recv().await.is_some() {}
            })
            .await;
        }
    }

    async fn wait_ack(&mut self, what: &str, matches: impl Fn(&Ack) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.acks.recv()).await {
                Ok(Some(ack)) if matches(&ack) => return,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no {what} from the broker within 10 s"),
            }
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(20);

    async fn round_trip(port: u16) {
        let mut subscriber =
            TestClient::connect(ClientOptions::local(port, "sub"), TIMEOUT).await.expect("connect");
        subscriber.subscribe(&["kit/#"]).await;
        let mut publisher =
            TestClient::connect(ClientOptions::local(port, "pub"), TIMEOUT).await.expect("connect");
        publisher.publish("kit/a", b"one".to_vec(), true).await;
        let message = subscriber.expect_on("kit/a", TIMEOUT, "the published message").await;
        assert_eq!(message.payload, b"one");
        // A late subscriber gets the retained copy.
        let mut late = TestClient::connect(ClientOptions::local(port, "late"), TIMEOUT)
            .await
            .expect("connect");
        late.subscribe(&["kit/a"]).await;
        assert!(late.expect_on("kit/a", TIMEOUT, "the retained message").await.retain);
        publisher.disconnect().await;
    }

    #[tokio::test]
    async fn mosquitto_carries_messages_and_restarts_on_the_same_port() {
        let mut broker = Mosquitto::start().expect("mosquitto");
        let port = broker.port();
        round_trip(port).await;
        broker.stop();
        assert!(!broker.is_running() && !accepts_connections(port));
        broker.restart().expect("restart");
        assert_eq!(broker.port(), port);
        assert!(broker.is_running());
        round_trip(port).await;
        assert!(broker.log().contains("mosquitto version"), "{}", broker.log());
    }

    #[tokio::test]
    async fn embedded_broker_carries_messages() {
        let broker = EmbeddedBroker::start().expect("rumqttd");
        round_trip(broker.port()).await;
    }

    #[tokio::test]
    async fn connecting_to_nothing_fails_in_time() {
        let port = free_port().expect("port");
        let error = TestClient::connect(ClientOptions::local(port, "x"), TIMEOUT)
            .await
            .expect_err("nothing listens");
        assert!(error.to_string().contains("refused"), "{error}");
    }
}
