//! Model updates on the device with real parts: Mosquitto on a free port, real
//! `outpost-agent run` processes, and either a real `outpost serve` (the good path: `outpost
//! model push`, `outpost assign`) or a test client playing a compromised control that
//! publishes whatever it likes on the device's `assign` topic and answers its `fetch`
//! requests with whatever bytes it likes (the tamper cases: the real server refuses to
//! publish them, a device must refuse them on its own).
//!
//! Every check of "the old model keeps serving" goes through the agent's REST API.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_shared::dsse::Envelope;
use outpost_shared::plan::{HealthPolicy, ShadowPolicy};
use outpost_shared::wire::{
    self, Admission, AdmissionAction, Assign, Channel, ChunkFrame, ChunkReply, DeviceId, Event,
    EventKind, FetchRequest, Hello, ProtocolVersion, Publish, Topic,
};
use outpost_tests::broker::{ClientOptions, Mosquitto, TestClient};
use outpost_tests::fixtures::{BundleOptions, Fixture, PlanOptions, baseline_request};

const TIMEOUT: Duration = Duration::from_secs(90);
const MODEL: &str = "mlp_classifier";

fn device(id: &str) -> DeviceId {
    DeviceId::new(id).expect("device id")
}

fn topic(device: &DeviceId, channel: Channel) -> String {
    Topic::new(device.clone(), channel).to_string()
}

// ---------------------------------------------------------------------------------------
// The agent

/// An agent binary built for another architecture, run by the tests that start agents
/// instead of this package's own build (`cargo xtask test` points it at the aarch64 build for
/// the fault-step test); [`AGENT_RUNNER_ENV`] says how to start it.
pub const AGENT_BINARY_ENV: &str = "OUTPOST_AGENT_BINARY";
/// The emulator command line that runs [`AGENT_BINARY_ENV`], split at spaces
/// (`qemu-aarch64 -L /usr/aarch64-linux-gnu`); without it the binary is started directly.
pub const AGENT_RUNNER_ENV: &str = "OUTPOST_AGENT_RUNNER";

/// The architecture the agent under test reports in `hello` (`std::env::consts::ARCH` of
/// its build): this one's, unless [`AGENT_BINARY_ENV`] runs another build, whose architecture
/// `OUTPOST_AGENT_ARCH` names.
fn expected_agent_arch() -> String {
    match std::env::var_os(AGENT_BINARY_ENV).filter(|value| !value.is_empty()) {
        Some(_) => std::env::var("OUTPOST_AGENT_ARCH").unwrap_or_else(|_| {
            panic!("{AGENT_BINARY_ENV} is set: OUTPOST_AGENT_ARCH must name its architecture")
        }),
        None => std::env::consts::ARCH.to_string(),
    }
}

/// The command that starts the agent under test: this package's build, or
/// [`AGENT_BINARY_ENV`] through [`AGENT_RUNNER_ENV`]. The control side (broker, fake or real
/// control server) always runs natively.
fn agent_command() -> Command {
    let Some(binary) = std::env::var_os(AGENT_BINARY_ENV).filter(|value| !value.is_empty()) else {
        return Command::new(env!("CARGO_BIN_EXE_outpost-agent"));
    };
    assert!(
        Path::new(&binary).is_file(),
        "{AGENT_BINARY_ENV}={} is not a file",
        Path::new(&binary).display()
    );
    let runner = std::env::var(AGENT_RUNNER_ENV).unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(emulator) => {
            let mut command = Command::new(emulator);
            command.args(words).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// A provisioned device running `outpost-agent run`, its API on a Unix socket.
struct Device {
    id: DeviceId,
    config: PathBuf,
    data_dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Device {
    /// Provisions `id` with the fixture's `mlp_classifier` 1.0.0 and tags `site=berlin`.
    fn provision(fixture: &Fixture, id: &str, broker_port: u16) -> Device {
        Self::provision_with(fixture, id, broker_port, 16384)
    }

    /// As [`Device::provision`], downloading `chunk_bytes` per chunk.
    fn provision_with(fixture: &Fixture, id: &str, broker_port: u16, chunk_bytes: u32) -> Device {
        let data_dir = fixture.provisioned_agent_dir(id, Some(MODEL));
        let socket = data_dir.parent().expect("parent").join("api.sock");
        let tags = BTreeMap::from([("site".to_string(), "berlin".to_string())]);
        let extra = format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nkeep_alive_seconds = 5\n\
             reconnect_min_delay_ms = 50\nreconnect_max_delay_ms = 400\n\
             [update]\nchunk_bytes = {chunk_bytes}\nfetch_timeout_ms = 2000\nretry_max_delay_ms = 500\n"
        );
        let config = fixture.agent_config(
            &data_dir,
            id,
            &tags,
            &format!("unix:{}", socket.display()),
            60.0,
            &extra,
        );
        let log = data_dir.parent().expect("parent").join("agent.log");
        Device { id: device(id), config, data_dir, socket, child: None, log }
    }

    fn start(&mut self, fault: Option<&str>) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut command = agent_command();
        command
            // A process that aborts (fault injection) may leave a core file where it runs.
            .current_dir(self.data_dir.parent().expect("parent"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,outpost_agent=debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove(outpost_agent::update::FAULT_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(step) = fault {
            command.env(outpost_agent::update::FAULT_ENV, step);
        }
        self.child = Some(command.spawn().expect("start outpost-agent"));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to end on its own (a fault injection aborts it).
    async fn wait_exit(&mut self) {
        let child = self.child.as_mut().expect("running");
        let exited =
            outpost_tests::wait::try_until_some_async(TIMEOUT, "the agent to abort", || {
                let status = child.try_wait().ok().flatten();
                async move { status }
            })
            .await;
        if let Err(error) = exited {
            panic!("{error}\nagent log:\n{}", self.log());
        }
        self.child = None;
    }

    /// SIGTERM: the agent cuts its last windows and stops; waits for the exit.
    async fn terminate(&mut self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -TERM");
        self.wait_exit().await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The version the REST API serves for `mlp_classifier` (waits for the API to answer:
    /// after a restart the socket file may still be the previous run's).
    async fn serving_version(&self) -> String {
        let socket = self.socket.clone();
        let version =
            outpost_tests::wait::try_until_some_async(TIMEOUT, "the API to answer", || {
                let socket = socket.clone();
                async move {
                    tokio::time::timeout(Duration::from_secs(5), metadata_version(&socket))
                        .await
                        .ok()?
                }
            })
            .await;
        version.unwrap_or_else(|error| panic!("{error}\nagent log:\n{}", self.log()))
    }

    /// Asserts the device answers an inference with `version`.
    async fn assert_serves(&self, version: &str) {
        assert_eq!(self.serving_version().await, version, "agent log:\n{}", self.log());
        let response = infer(&self.socket, 0).await;
        assert_eq!(response, 200, "inference answered");
    }

    /// The event sequence number the next run starts from (persisted by telemetry).
    fn next_event_seq(&self) -> u64 {
        std::fs::read_to_string(self.data_dir.join("queue").join("event-seq"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1)
    }

    fn state(&self) -> serde_json::Value {
        let bytes = std::fs::read(self.data_dir.join("state.json")).expect("state.json");
        serde_json::from_slice(&bytes).expect("state json")
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("agent {} log:\n{}", self.id, self.log());
        }
        self.kill();
    }
}

/// One HTTP/1.1 exchange over the agent's Unix socket: status and body, or `None` when the
/// API does not answer (not yet bound, or a socket file left by a previous run).
async fn request(socket: &Path, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        stream.write_all(body).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text[text.find("\r\n\r\n")? + 4..].to_string();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.ok()?
}

/// The first version `GET /v2/models/mlp_classifier` lists.
async fn metadata_version(socket: &Path) -> Option<String> {
    let (status, body) = request(socket, "GET", &format!("/v2/models/{MODEL}"), b"").await?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["versions"][0].as_str().map(str::to_string)
}

/// Runs one inference; the status, 0 when the API did not answer.
async fn infer(socket: &Path, row: usize) -> u16 {
    let body = serde_json::to_vec(&baseline_request(MODEL, row % 50)).expect("body");
    request(socket, "POST", &format!("/v2/models/{MODEL}/infer"), &body)
        .await
        .map_or(0, |(status, _)| status)
}

/// Inference requests in a loop until stopped, counting answers and failures: requests in
/// flight during a model swap must all be answered.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(socket: PathBuf) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            async move {
                let mut row = 0;
                while !stop.load(Ordering::Relaxed) {
                    row += 1;
                    if infer(&socket, row).await == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Traffic { stop, ok, failed, task }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------------------
// Watching the device

/// A subscriber to the device's events and hello.
struct Observer {
    client: TestClient,
    device: DeviceId,
    events: Vec<Event>,
    hello: Option<Hello>,
    windows: Vec<wire::StatsWindow>,
}

impl Observer {
    async fn connect(port: u16, device: &DeviceId) -> Observer {
        let mut client = TestClient::connect(ClientOptions::local(port, "observer"), TIMEOUT)
            .await
            .expect("observer connects");
        client
            .subscribe(&[
                &topic(device, Channel::Events),
                &topic(device, Channel::Hello),
                &topic(device, Channel::Stats),
            ])
            .await;
        Observer {
            client,
            device: device.clone(),
            events: Vec::new(),
            hello: None,
            windows: Vec::new(),
        }
    }

    /// Reads one message (at most `timeout`); false when none came.
    async fn pump(&mut self, timeout: Duration) -> bool {
        let Some(message) = self.client.next_message(timeout).await else { return false };
        if message.topic == topic(&self.device, Channel::Events) {
            let event: Event = wire::decode(&message.payload).expect("valid event");
            self.events.push(event);
        } else if message.topic == topic(&self.device, Channel::Hello)
            && !message.payload.is_empty()
        {
            self.hello = Some(wire::decode(&message.payload).expect("valid hello"));
        } else if message.topic == topic(&self.device, Channel::Stats) {
            self.windows.push(wire::decode(&message.payload).expect("valid window"));
        }
        true
    }

    /// The first event of `kind` after the `from`-th event, waiting for it.
    async fn expect(&mut self, kind: EventKind, from: usize, log: &dyn Fn() -> String) -> Event {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(event) = self.events.iter().skip(from).find(|e| e.kind == kind) {
                return event.clone();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                panic!(
                    "no {kind} event within {TIMEOUT:?}; events: {:#?}\nagent log:\n{}",
                    self.events
                        .iter()
                        .skip(from)
                        .map(|e| (e.kind, e.code.clone(), e.message.clone()))
                        .collect::<Vec<_>>(),
                    log()
                );
            }
            self.pump(left.min(Duration::from_millis(200))).await;
        }
    }

    /// Waits until the latest hello satisfies `condition`.
    async fn expect_hello(&mut self, what: &str, condition: impl Fn(&Hello) -> bool) -> Hello {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(hello) = &self.hello
                && condition(hello)
            {
                return hello.clone();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "no hello with {what}; last: {:#?}", self.hello);
            self.pump(left.min(Duration::from_millis(200))).await;
        }
    }

    /// Reads everything that arrives for `period` (to check that nothing more happens).
    async fn drain(&mut self, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        while tokio::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.pump(left).await;
        }
    }

    /// The first event of `kind` with a sequence number of at least `seq` (events of a run
    /// that started after the persisted counter read `seq`) that satisfies `condition`.
    async fn expect_since(
        &mut self,
        kind: EventKind,
        seq: u64,
        condition: impl Fn(&Event) -> bool,
        log: &dyn Fn() -> String,
    ) -> Event {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(event) =
                self.events.iter().find(|e| e.kind == kind && e.seq >= seq && condition(e))
            {
                return event.clone();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "no such {kind} event: {:#?}\n{}", self.events, log());
            self.pump(left.min(Duration::from_millis(200))).await;
        }
    }

    fn count_since(&self, kind: EventKind, seq: u64) -> usize {
        self.events.iter().filter(|e| e.kind == kind && e.seq >= seq).count()
    }

    fn count(&self, kind: EventKind, from: usize) -> usize {
        self.events.iter().skip(from).filter(|e| e.kind == kind).count()
    }
}

fn version_of(model: &Option<wire::ModelRef>) -> Option<&str> {
    model.as_ref().map(|m| m.version.as_str())
}

// ---------------------------------------------------------------------------------------
// A compromised control: assignments and chunks of its choosing

/// Publishes assignments and serves `fetch` requests from a table of digest → bytes (the
/// bytes may be anything: altered, longer than the plan says).
struct FakeControl {
    client: TestClient,
    device: DeviceId,
    artifacts: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeControl {
    async fn start(port: u16, device: &DeviceId) -> FakeControl {
        let client = TestClient::connect(ClientOptions::local(port, "fake-control"), TIMEOUT)
            .await
            .expect("fake control connects");
        let mut server = TestClient::connect(ClientOptions::local(port, "fake-chunks"), TIMEOUT)
            .await
            .expect("fake chunk server connects");
        server.subscribe(&[&topic(device, Channel::Fetch)]).await;
        let artifacts: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let task = tokio::spawn({
            let artifacts = artifacts.clone();
            let device = device.clone();
            async move {
                while let Some(message) = server.next_message(Duration::from_secs(3600)).await {
                    let Ok(request) = wire::decode::<FetchRequest>(&message.payload) else {
                        continue;
                    };
                    let Some(bytes) =
                        artifacts.lock().expect("table").get(request.digest.as_str()).cloned()
                    else {
                        continue;
                    };
                    let start = (request.offset as usize).min(bytes.len());
                    let end = (start + request.max_len as usize).min(bytes.len());
                    let frame = ChunkFrame::new(
                        request.request_id.clone(),
                        request.digest.clone(),
                        start as u64,
                        bytes.len() as u64,
                        bytes[start..end].to_vec(),
                    )
                    .expect("frame");
                    let publish =
                        Publish::chunk(&device, &ChunkReply::Chunk(frame)).expect("chunk");
                    server.publish(&publish.topic, publish.payload, false).await;
                }
            }
        });
        FakeControl { client, device: device.clone(), artifacts, task }
    }

    /// Serves `bytes` when asked for the artifact `digest`.
    fn serve(&self, digest: &str, bytes: Vec<u8>) {
        self.artifacts.lock().expect("table").insert(digest.to_string(), bytes);
    }

    async fn assign(&mut self, plan: Envelope, action: AdmissionAction) {
        let assign = Assign {
            v: ProtocolVersion,
            plan,
            admission: Admission { rollout_id: "r".into(), wave: 0, admitted_at_ms: 0, action },
        };
        let publish = Publish::message(&self.device, &assign).expect("assign");
        self.client.publish(&publish.topic, publish.payload, true).await;
    }
}

impl Drop for FakeControl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn envelope(bytes: &[u8]) -> Envelope {
    Envelope::from_slice(bytes).expect("plan envelope")
}

fn quick_health() -> HealthPolicy {
    HealthPolicy {
        watch_seconds: 2,
        min_requests: 5,
        max_error_rate: 0.2,
        max_p95_latency_ratio: 1000.0,
        max_output_psi: None,
        shadow: None,
    }
}

// ---------------------------------------------------------------------------------------
// A real control server

/// `outpost` next to `outpost-agent` in the target directory. The agent's tests cannot name
/// another package's binary, so it is built (or found up to date) once per test run — unless
/// `OUTPOST_WORKSPACE_BINARIES=1` says the whole workspace was just built (as `cargo xtask
/// test` does), which rebuilding for one package would only repeat with other features.
fn outpost_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let path = Path::new(env!("CARGO_BIN_EXE_outpost-agent")).with_file_name("outpost");
            if std::env::var_os("OUTPOST_WORKSPACE_BINARIES").is_some_and(|v| v == "1")
                && path.exists()
            {
                return path;
            }
            // The same profile as this test binary: its directory is named after it.
            let profile = path
                .parent()
                .and_then(Path::file_name)
                .map_or_else(|| "debug".to_string(), |name| name.to_string_lossy().into_owned());
            let profile = if profile == "debug" { "dev".to_string() } else { profile };
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "--profile", &profile])
                .args(["-p", "outpost-control", "--bin", "outpost"])
                .current_dir(outpost_tests::repo_root())
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building outpost");
            assert!(path.exists(), "{} after building it", path.display());
            path
        })
        .clone()
}

/// `outpost serve` on an external broker, with an admin token.
struct Control {
    child: Child,
    url: String,
    token: String,
    config: PathBuf,
    log: PathBuf,
}

impl Control {
    fn start(dir: &Path, broker_port: u16, trust_root: &Path) -> Control {
        let api_port = outpost_tests::broker::free_port().expect("port");
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n[broker]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\n[trust]\nroot = {:?}\n",
                dir.join("control-data").display().to_string(),
                trust_root.display().to_string(),
            ),
        )
        .expect("control config");
        let output = Command::new(outpost_binary())
            .args(["users", "add", "boss", "--role", "admin", "--config"])
            .arg(&config)
            .output()
            .expect("outpost users add");
        assert!(output.status.success(), "users add: {}", String::from_utf8_lossy(&output.stderr));
        let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let log = dir.join("control.log");
        let child = Command::new(outpost_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("control log"))
            .spawn()
            .expect("outpost serve");
        let control =
            Control { child, url: format!("http://127.0.0.1:{api_port}"), token, config, log };
        outpost_tests::wait::until(TIMEOUT, "outpost serve to answer", || {
            control.outpost(&["model", "list"]).status.success()
        });
        control
    }

    fn outpost(&self, args: &[&str]) -> Output {
        Command::new(outpost_binary())
            .args(args)
            .env("OUTPOST_SERVER", &self.url)
            .env("OUTPOST_TOKEN", &self.token)
            .output()
            .expect("run outpost")
    }

    fn outpost_ok(&self, args: &[&str]) -> String {
        let output = self.outpost(args);
        assert!(
            output.status.success(),
            "outpost {args:?}: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        let _ = &self.config;
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_plan_from_the_control_installs_shadows_activates_and_commits() {
    let mosquitto = Mosquitto::start().expect("Mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Fixture::new(dir.path());
    let v2 = fixture.bundle_with(
        MODEL,
        &BundleOptions { version: "2.0.0".into(), ..BundleOptions::default() },
        "mlp-2.bundle",
    );
    let v2_digest = fixture.bundle_ref(&v2).digest;
    let control = Control::start(dir.path(), mosquitto.port(), &fixture.trust_root_path());
    control.outpost_ok(&["model", "push", &v2.display().to_string()]);
    control.outpost_ok(&["model", "push", &fixture.bundle(MODEL).display().to_string()]);

    let mut device = Device::provision(&fixture, "pump-1", mosquitto.port());
    let mut observer = Observer::connect(mosquitto.port(), &device.id).await;
    device.start(None);
    device.assert_serves("1.0.0").await;
    observer.expect_hello("model 1.0.0", |h| version_of(&h.active_model) == Some("1.0.0")).await;

    let mut options = PlanOptions::new("berlin-v2", 1);
    options.cohort = "site=berlin".into();
    options.fallback = Some(fixture.bundle(MODEL));
    options.health = HealthPolicy {
        shadow: Some(ShadowPolicy { requests: 20, seconds: 60, tolerance: 1e-6 }),
        ..quick_health()
    };
    let plan_path = dir.path().join("berlin-v2.plan");
    std::fs::write(&plan_path, fixture.signed_plan(&v2, &options)).expect("plan file");
    let traffic = Traffic::start(device.socket.clone());
    control.outpost_ok(&[
        "assign",
        "--device",
        "pump-1",
        "--plan",
        &plan_path.display().to_string(),
    ]);

    let log = || device.log();
    for kind in [
        EventKind::Admitted,
        EventKind::Downloading,
        EventKind::Verifying,
        EventKind::Staged,
        EventKind::AcceptancePassed,
        EventKind::ShadowStarted,
    ] {
        let event = observer.expect(kind, 0, &log).await;
        assert_eq!(event.plan_seq, Some(1), "{event:?}");
        assert_eq!(event.rollout_id.as_deref(), Some("berlin-v2"));
        assert_eq!(event.bundle_digest.as_ref().map(|d| d.to_string()), Some(v2_digest.clone()));
    }
    let report = observer.expect(EventKind::ShadowReport, 0, &log).await;
    let details = report.details.clone().expect("shadow numbers");
    assert!(details["compared"].as_u64().expect("compared") >= 1, "{details:?}");
    assert_eq!(details["agreement"].as_f64(), Some(1.0), "same model: full agreement {details:?}");
    assert!(details["latency_delta_ms"].is_number(), "{details:?}");
    // The shadow phase answered from the old model.
    observer.expect(EventKind::Activated, 0, &log).await;
    observer.expect(EventKind::HealthWatch, 0, &log).await;
    let committed = observer.expect(EventKind::Committed, 0, &log).await;
    assert!(committed.details.as_ref().is_some_and(|d| d["requests"].as_u64() > Some(0)));
    let (ok, failed) = traffic.finish().await;
    assert_eq!(failed, 0, "no request failed across the swap ({ok} answered)");
    assert!(ok > 20, "traffic ran through the install: {ok}");
    device.assert_serves("2.0.0").await;
    let hello = observer
        .expect_hello("model 2.0.0 active", |h| version_of(&h.active_model) == Some("2.0.0"))
        .await;
    assert_eq!(version_of(&hello.previous_model), Some("1.0.0"));
    assert_eq!(hello.last_plan_seq, Some(1));
    assert!(hello.capabilities.iter().any(|c| c == "shadow"), "{hello:?}");
    assert_eq!(device.state()["install"]["phase"], "committed");

    // The operator sends the device back to the plan's fallback.
    let from = observer.events.len();
    let stdout = control.outpost_ok(&[
        "assign",
        "--device",
        "pump-1",
        "--plan",
        &plan_path.display().to_string(),
        "--revert",
    ]);
    assert!(stdout.contains("assigned revert of rollout berlin-v2 seq 1"), "{stdout}");
    let admitted = observer.expect(EventKind::Admitted, from, &log).await;
    assert!(admitted.message.contains("revert"), "{}", admitted.message);
    observer.expect(EventKind::Committed, from, &log).await;
    device.assert_serves("1.0.0").await;
    let hello = observer
        .expect_hello("back on 1.0.0", |h| version_of(&h.active_model) == Some("1.0.0"))
        .await;
    assert_eq!(version_of(&hello.previous_model), Some("2.0.0"));

    // A restart serves the committed model; the retained assignment is not installed again.
    let before = observer.events.len();
    device.kill();
    device.start(None);
    device.assert_serves("1.0.0").await;
    observer.drain(Duration::from_secs(2)).await;
    assert_eq!(observer.count(EventKind::Admitted, before), 0, "{:?}", &observer.events[before..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_unauthorised_replayed_and_oversized_updates_are_refused_while_the_old_model_serves()
 {
    let mosquitto = Mosquitto::start().expect("Mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Fixture::new(dir.path());
    let v2 = fixture.bundle_with(
        MODEL,
        &BundleOptions { version: "2.0.0".into(), ..BundleOptions::default() },
        "mlp-2.bundle",
    );
    let v2_bytes = std::fs::read(&v2).expect("v2");
    let v2_digest = fixture.bundle_ref(&v2).digest;
    let bad_golden = fixture.bundle_with(
        MODEL,
        &BundleOptions {
            version: "1.1.0".into(),
            golden_file: Some("mlp_classifier.bad_golden.json".into()),
            ..BundleOptions::default()
        },
        "bad-golden.bundle",
    );
    let model_flipped = fixture.tampered_bundle(&v2, "model.onnx", 100, "model-flipped.bundle");
    // A byte inside the signed payload of the manifest envelope.
    let manifest = outpost_shared::bundle::read(&std::fs::read(&v2).expect("v2"))
        .expect("bundle")
        .manifest
        .to_vec();
    let payload_at =
        manifest.windows(11).position(|w| w == b"\"payload\":\"").expect("payload field") + 40;
    let manifest_flipped =
        fixture.tampered_bundle(&v2, "manifest.dsse.json", payload_at, "manifest-flipped.bundle");

    let mut device = Device::provision(&fixture, "pump-2", mosquitto.port());
    let mut observer = Observer::connect(mosquitto.port(), &device.id).await;
    let mut control = FakeControl::start(mosquitto.port(), &device.id).await;
    for path in [&v2, &bad_golden, &model_flipped, &manifest_flipped] {
        control.serve(&fixture.bundle_ref(path).digest, std::fs::read(path).expect("bundle"));
    }
    device.start(None);
    device.assert_serves("1.0.0").await;

    let plan = |bundle: &Path, seq: u64, change: &dyn Fn(&mut PlanOptions)| {
        let mut options = PlanOptions::new("r", seq);
        options.health = quick_health();
        change(&mut options);
        envelope(&fixture.signed_plan(bundle, &options))
    };
    let mut flipped_plan = plan(&v2, 3, &|_| {});
    let mut payload = flipped_plan.payload_bytes().expect("payload");
    let at = payload.iter().position(|b| *b == b'3').expect("the seq digit");
    payload[at] = b'9';
    let signatures = flipped_plan.signatures.clone();
    flipped_plan = Envelope::new(&flipped_plan.payload_type, &payload);
    flipped_plan.signatures = signatures;

    // (what, the plan, the refusal codes accepted)
    let refused_before_download: Vec<(&str, Envelope, &[&str])> = vec![
        ("k-1 approvers", plan(&v2, 1, &|o| o.approvers = 1), &["too_few_signatures"]),
        (
            "an unknown key",
            plan(&v2, 2, &|o| {
                o.approvers = 0;
                o.stranger = true
            }),
            &["unknown_key"],
        ),
        ("a flipped byte in the plan", flipped_plan, &["bad_signature"]),
        (
            "an expired plan",
            plan(&v2, 4, &|o| {
                o.expires = time::OffsetDateTime::now_utc() - time::Duration::hours(1)
            }),
            &["expired"],
        ),
        (
            "a device outside the cohort",
            plan(&v2, 5, &|o| o.cohort = "site=paris".into()),
            &["not_in_cohort"],
        ),
    ];
    let log = || device.log();
    for (what, envelope, codes) in refused_before_download {
        let from = observer.events.len();
        control.assign(envelope, AdmissionAction::Install).await;
        let event = observer.expect(EventKind::Rejected, from, &log).await;
        let code = event.code.clone().unwrap_or_default();
        assert!(codes.contains(&code.as_str()), "{what}: refused with {code}: {}", event.message);
        assert_eq!(observer.count(EventKind::Admitted, from), 0, "{what}: nothing admitted");
        device.assert_serves("1.0.0").await;
    }

    // A bundle that fails its golden test on the device is never activated.
    let from = observer.events.len();
    control.assign(plan(&bad_golden, 10, &|_| {}), AdmissionAction::Install).await;
    let failed = observer.expect(EventKind::AcceptanceFailed, from, &log).await;
    assert_eq!(failed.code.as_deref(), Some("golden_mismatch"), "{}", failed.message);
    assert_eq!(failed.plan_seq, Some(10));
    assert_eq!(observer.count(EventKind::Activated, from), 0);
    device.assert_serves("1.0.0").await;
    let hello = observer
        .expect_hello("plan 10 concluded, its slot emptied", |h| {
            h.last_plan_seq == Some(10) && h.previous_model.is_none()
        })
        .await;
    assert_eq!(version_of(&hello.active_model), Some("1.0.0"));
    assert!(hello.slots.b.is_none(), "the refused bundle left no slot behind: {hello:?}");

    // A replayed older plan.
    let from = observer.events.len();
    control.assign(plan(&v2, 9, &|_| {}), AdmissionAction::Install).await;
    let replay = observer.expect(EventKind::Rejected, from, &log).await;
    assert_eq!(replay.code.as_deref(), Some("replay"), "{}", replay.message);

    // Bundles altered after signing, plans signed over the altered bytes.
    for (what, bundle, codes) in [
        ("a flipped byte in the model", &model_flipped, &["digest_mismatch"][..]),
        ("a flipped byte in the manifest", &manifest_flipped, &["bad_signature", "malformed"][..]),
    ] {
        let seq = observer.events.len() as u64 + 100;
        let from = observer.events.len();
        control.assign(plan(bundle, seq, &|_| {}), AdmissionAction::Install).await;
        let event = observer.expect(EventKind::Rejected, from, &log).await;
        let code = event.code.clone().unwrap_or_default();
        assert!(codes.contains(&code.as_str()), "{what}: refused with {code}: {}", event.message);
        assert_eq!(event.plan_seq, Some(seq));
        assert_eq!(observer.count(EventKind::Activated, from), 0, "{what}");
        device.assert_serves("1.0.0").await;
    }

    // The right plan, wrong bytes on the wire: one flipped byte, or more bytes than declared.
    let mut altered = v2_bytes.clone();
    altered[2000] ^= 0x01;
    let mut longer = v2_bytes.clone();
    longer.extend(std::iter::repeat_n(0u8, 100_000));
    for (what, served, code) in [
        ("a byte flipped in transit", altered, "digest_mismatch"),
        ("an oversized transfer", longer, "oversized"),
    ] {
        control.serve(&v2_digest, served);
        let seq = observer.events.len() as u64 + 1000;
        let from = observer.events.len();
        control.assign(plan(&v2, seq, &|_| {}), AdmissionAction::Install).await;
        let event = observer.expect(EventKind::Rejected, from, &log).await;
        assert_eq!(event.code.as_deref(), Some(code), "{what}: {}", event.message);
        assert_eq!(observer.count(EventKind::Activated, from), 0, "{what}");
        device.assert_serves("1.0.0").await;
    }
    assert!(
        !device.data_dir.join("slots/b/staging/download.part").exists()
            || std::fs::metadata(device.data_dir.join("slots/b/staging/download.part"))
                .map(|m| m.len())
                .unwrap_or(0)
                == 0,
        "refused bytes are not kept"
    );

    // After all that, a good plan still installs.
    control.serve(&v2_digest, v2_bytes);
    let from = observer.events.len();
    control.assign(plan(&v2, 5000, &|_| {}), AdmissionAction::Install).await;
    observer.expect(EventKind::Committed, from, &log).await;
    device.assert_serves("2.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_over_the_health_policy_rolls_back_once_and_an_operator_revert_works() {
    let mosquitto = Mosquitto::start().expect("Mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Fixture::new(dir.path());
    let v1 = fixture.bundle(MODEL);
    let v2 = fixture.bundle_with(
        MODEL,
        &BundleOptions { version: "2.0.0".into(), ..BundleOptions::default() },
        "mlp-2.bundle",
    );
    let mut device = Device::provision(&fixture, "pump-3", mosquitto.port());
    let mut observer = Observer::connect(mosquitto.port(), &device.id).await;
    let mut control = FakeControl::start(mosquitto.port(), &device.id).await;
    control.serve(&fixture.bundle_ref(&v2).digest, std::fs::read(&v2).expect("v2"));
    device.start(None);
    device.assert_serves("1.0.0").await;
    let log = || device.log();
    let traffic = Traffic::start(device.socket.clone());

    // A policy no model can meet: p95 at most a thousandth of the previous model's.
    let mut strict = PlanOptions::new("strict", 1);
    strict.health =
        HealthPolicy { max_p95_latency_ratio: 0.001, watch_seconds: 30, ..quick_health() };
    strict.fallback = Some(v1.clone());
    let strict_plan = envelope(&fixture.signed_plan(&v2, &strict));
    control.assign(strict_plan.clone(), AdmissionAction::Install).await;
    observer.expect(EventKind::Activated, 0, &log).await;
    let rolled_back = observer.expect(EventKind::RolledBack, 0, &log).await;
    assert_eq!(rolled_back.code.as_deref(), Some("latency"), "{}", rolled_back.message);
    assert_eq!(rolled_back.plan_seq, Some(1));
    device.assert_serves("1.0.0").await;
    let hello = observer
        .expect_hello("back on 1.0.0", |h| {
            version_of(&h.active_model) == Some("1.0.0")
                && version_of(&h.previous_model) == Some("2.0.0")
        })
        .await;
    assert_eq!(hello.last_plan_seq, Some(1));
    assert_eq!(device.state()["install"]["phase"], "rolled_back");

    // The failed plan, delivered again, is not retried.
    let from = observer.events.len();
    control.assign(strict_plan, AdmissionAction::Install).await;
    observer.drain(Duration::from_secs(3)).await;
    assert_eq!(observer.count(EventKind::Admitted, from), 0, "{:?}", &observer.events[from..]);
    assert_eq!(observer.count(EventKind::Activated, from), 0);

    // A policy that judges the predicted classes: any shift from the baseline is too much.
    let mut shifted = PlanOptions::new("shift", 2);
    shifted.health =
        HealthPolicy { max_output_psi: Some(0.0), watch_seconds: 30, ..quick_health() };
    let from = observer.events.len();
    control.assign(envelope(&fixture.signed_plan(&v2, &shifted)), AdmissionAction::Install).await;
    let rolled_back = observer.expect(EventKind::RolledBack, from, &log).await;
    assert_eq!(rolled_back.code.as_deref(), Some("output_shift"), "{}", rolled_back.message);
    let psi = rolled_back.details.as_ref().and_then(|d| d["output_psi"].as_f64());
    assert!(psi > Some(0.0), "{rolled_back:?}");
    device.assert_serves("1.0.0").await;

    // A plan that passes installs (from the slot, no second download), then the operator
    // reverts it to the plan's fallback.
    let mut good = PlanOptions::new("good", 3);
    good.health = quick_health();
    good.fallback = Some(v1.clone());
    let good_plan = envelope(&fixture.signed_plan(&v2, &good));
    let from = observer.events.len();
    control.assign(good_plan.clone(), AdmissionAction::Install).await;
    observer.expect(EventKind::Committed, from, &log).await;
    assert_eq!(observer.count(EventKind::Downloading, from), 0, "already in the inactive slot");
    device.assert_serves("2.0.0").await;
    let from = observer.events.len();
    control.assign(good_plan, AdmissionAction::Revert).await;
    let admitted = observer.expect(EventKind::Admitted, from, &log).await;
    assert!(admitted.message.contains("revert"), "{}", admitted.message);
    observer.expect(EventKind::Committed, from, &log).await;
    device.assert_serves("1.0.0").await;
    observer
        .expect_hello("reverted", |h| {
            version_of(&h.active_model) == Some("1.0.0")
                && version_of(&h.previous_model) == Some("2.0.0")
        })
        .await;
    let (ok, failed) = traffic.finish().await;
    assert_eq!(failed, 0, "every request answered through activation, rollback and revert ({ok})");

    // The windows are 60 s long here: every model swapped out above closes its window when
    // the agent stops, so the calls each model answered are all reported, by model.
    device.terminate().await;
    observer.drain(Duration::from_secs(2)).await;
    let counted = |version: &str| -> u64 {
        observer.windows.iter().filter(|w| w.model.version == version).map(|w| w.count).sum()
    };
    let (v1_calls, v2_calls) = (counted("1.0.0"), counted("2.0.0"));
    assert!(
        v2_calls > 0,
        "the replaced 2.0.0 runtimes reported their calls: {:?}",
        observer.windows
    );
    assert!(v1_calls > 0, "{:?}", observer.windows);
    assert!(
        v1_calls + v2_calls >= ok,
        "{v1_calls} + {v2_calls} windows for {ok} answered requests"
    );
}

/// Kills the agent at every named step of an install and restarts it: each time it comes back
/// serving a verified model and converges to the right end — a download or a staged bundle
/// resumes and commits; a model on trial (activated, watched, committing, rolling back) is
/// given up for the known-good one, and the plan is not tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_every_install_step_restarts_into_a_verified_model_and_converges() {
    let mosquitto = Mosquitto::start().expect("Mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Fixture::new(dir.path());
    let v2 = fixture.bundle_with(
        MODEL,
        &BundleOptions { version: "2.0.0".into(), ..BundleOptions::default() },
        "mlp-2.bundle",
    );
    let v2_bytes = std::fs::read(&v2).expect("v2");
    assert!(v2_bytes.len() > 4 * 1024, "several chunks of 1 KiB");
    for (index, step) in outpost_agent::update::FAULT_STEPS.iter().enumerate() {
        let id = format!("crash-{index}");
        let mut device = Device::provision_with(&fixture, &id, mosquitto.port(), 1024);
        let mut observer = Observer::connect(mosquitto.port(), &device.id).await;
        let mut control = FakeControl::start(mosquitto.port(), &device.id).await;
        control.serve(&fixture.bundle_ref(&v2).digest, v2_bytes.clone());
        let rolls_back = *step == "mid-rollback";
        let mut options = PlanOptions::new("crash", 1);
        options.health = if rolls_back {
            HealthPolicy { max_p95_latency_ratio: 0.001, watch_seconds: 30, ..quick_health() }
        } else {
            quick_health()
        };
        device.start(Some(step));
        device.assert_serves("1.0.0").await;
        // The agent under test is the build it should be (under qemu: the ARM one).
        let arch = expected_agent_arch();
        observer.expect_hello(&format!("arch {arch}"), |hello| hello.arch == arch).await;
        let traffic = Traffic::start(device.socket.clone());
        control
            .assign(envelope(&fixture.signed_plan(&v2, &options)), AdmissionAction::Install)
            .await;
        device.wait_exit().await;
        let restart_seq = device.next_event_seq();
        device.start(None);
        let resumes = matches!(*step, "mid-chunk" | "after-staging");
        let log = || device.log();
        if resumes {
            observer.expect_since(EventKind::Committed, restart_seq, |_| true, &log).await;
            device.assert_serves("2.0.0").await;
            assert_eq!(device.state()["install"]["phase"], "committed", "{step}");
            if *step == "mid-chunk" {
                let resumed = |event: &Event| {
                    event.details.as_ref().and_then(|d| d["offset"].as_u64()) > Some(0)
                };
                observer.expect_since(EventKind::Downloading, restart_seq, resumed, &log).await;
            }
        } else {
            device.assert_serves("1.0.0").await;
            let state = device.state();
            assert_eq!(state["install"]["phase"], "rolled_back", "{step}: {state}");
            assert_eq!(state["active"], "a", "{step}");
            assert_eq!(state["committed"], true, "{step}");
            observer
                .expect_since(
                    EventKind::RolledBack,
                    restart_seq,
                    |e| e.code.as_deref() == Some("rolled_back_at_start") && e.plan_seq == Some(1),
                    &log,
                )
                .await;
            // The retained assignment arrives again after the restart; it is not retried.
            observer.drain(Duration::from_secs(1)).await;
            assert_eq!(observer.count_since(EventKind::Admitted, restart_seq), 0, "{step}");
            assert_eq!(observer.count_since(EventKind::Activated, restart_seq), 0, "{step}");
        }
        let _ = traffic.finish().await;
        device.kill();
    }
}

/// Random kills when `OUTPOST_SLOW_TESTS=1` (the full test command) and otherwise, unless
/// `OUTPOST_CRASH_ITERATIONS` says how many.
const RANDOM_KILLS_SLOW: u64 = 240;
const RANDOM_KILLS_QUICK: u64 = 8;
/// Devices killed and restarted at once: an agent mostly waits (on the broker, on its health
/// watch), so several share the cores and the run takes a fraction of its sequential time.
const RANDOM_KILLS_AT_ONCE: usize = 8;
/// Kill delays fall within this many milliseconds after the assignment is published.
const KILL_WINDOW_MS: u64 = 4500;

/// How many random kills to run: `OUTPOST_CRASH_ITERATIONS`, else by `OUTPOST_SLOW_TESTS`.
fn random_kill_iterations() -> u64 {
    match std::env::var("OUTPOST_CRASH_ITERATIONS") {
        Ok(text) => text.trim().parse().unwrap_or_else(|error| {
            panic!("OUTPOST_CRASH_ITERATIONS={text:?} is not a count of iterations: {error}")
        }),
        Err(_) if std::env::var("OUTPOST_SLOW_TESTS").is_ok_and(|value| value == "1") => {
            RANDOM_KILLS_SLOW
        }
        Err(_) => RANDOM_KILLS_QUICK,
    }
}

/// The kill delay of `iteration`: the iteration's value of SplitMix64 seeded with `0x5eed`, a
/// fixed sequence, so a failing iteration is replayed by its number alone
/// (`OUTPOST_CRASH_ONLY=<iteration>`).
fn kill_delay(iteration: u64) -> Duration {
    let mut z = 0x5eed_u64.wrapping_add((iteration + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    Duration::from_millis((z ^ (z >> 31)) % KILL_WINDOW_MS)
}

/// The install phase recorded in a data directory's `state.json` (`none` before admission).
fn install_phase(data_dir: &Path) -> String {
    std::fs::read(data_dir.join("state.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|state| state["install"]["phase"].as_str().map(str::to_string))
        .unwrap_or_else(|| "none".to_string())
}

/// What every random kill shares: the broker, the signed material and the plan to install.
struct RandomKills {
    fixture: Fixture,
    broker_port: u16,
    digest: String,
    bundle: Vec<u8>,
    plan: Envelope,
    /// The phase each iteration's kill interrupted, for the report of a failure.
    interrupted: Mutex<HashMap<u64, String>>,
}

/// One random kill's result: the phase the kill interrupted and the install's end.
struct KillOutcome {
    delay: Duration,
    interrupted: String,
    end: String,
}

/// Installs 2.0.0 on a fresh device `random-<iteration>`, SIGKILLs the agent `delay` after
/// the assignment and restarts it. The restarted agent serves a verified model at once and
/// ends the install committed on 2.0.0 or rolled back on 1.0.0, whichever the interrupted
/// phase calls for: a model on trial is given up, anything before resumes and commits.
async fn random_kill(shared: Arc<RandomKills>, iteration: u64, delay: Duration) -> KillOutcome {
    let id = format!("random-{iteration}");
    let mut device = Device::provision_with(&shared.fixture, &id, shared.broker_port, 1024);
    let mut control = FakeControl::start(shared.broker_port, &device.id).await;
    control.serve(&shared.digest, shared.bundle.clone());
    device.start(None);
    device.assert_serves("1.0.0").await;
    control.assign(shared.plan.clone(), AdmissionAction::Install).await;
    tokio::time::sleep(delay).await;
    device.kill();
    let interrupted = install_phase(&device.data_dir);
    shared.interrupted.lock().expect("phases").insert(iteration, interrupted.clone());
    device.start(None);
    let serving = device.serving_version().await;
    let verified = match interrupted.as_str() {
        "committed" => serving == "2.0.0",
        _ => serving == "1.0.0" || serving == "2.0.0",
    };
    assert!(verified, "serves {serving} after a kill in {interrupted}\n{}", device.log());
    assert_eq!(infer(&device.socket, 0).await, 200, "inference after the restart");
    let end = outpost_tests::wait::try_until_some_async(TIMEOUT, "the install to end", || {
        let phase = Some(install_phase(&device.data_dir))
            .filter(|phase| phase == "committed" || phase == "rolled_back");
        async move { phase }
    })
    .await
    .unwrap_or_else(|error| panic!("killed in {interrupted}: {error}\n{}", device.log()));
    let expected_end = if interrupted == "activated" { "rolled_back" } else { "committed" };
    assert_eq!(end, expected_end, "killed in {interrupted}\n{}", device.log());
    device.assert_serves(if end == "committed" { "2.0.0" } else { "1.0.0" }).await;
    let state = device.state();
    assert_eq!(state["committed"], true, "killed in {interrupted}: {state}\n{}", device.log());
    device.kill();
    KillOutcome { delay, interrupted, end }
}

/// The message of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// SIGKILL at pseudo-random moments of an install ([`random_kill_iterations`] of them,
/// [`RANDOM_KILLS_AT_ONCE`] devices at a time on one broker; the delays are a fixed sequence,
/// so a failure names its iteration and delay and is replayed with
/// `OUTPOST_CRASH_ONLY=<iteration>`): after each restart the agent serves a verified model and
/// the install ends committed (on 2.0.0) or rolled back (on 1.0.0), never half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_of_an_install_always_converges() {
    let iterations: Vec<u64> = match std::env::var("OUTPOST_CRASH_ONLY") {
        Ok(text) => vec![text.trim().parse().unwrap_or_else(|error| {
            panic!("OUTPOST_CRASH_ONLY={text:?} is not an iteration number: {error}")
        })],
        Err(_) => (0..random_kill_iterations()).collect(),
    };
    let mosquitto = Mosquitto::start().expect("Mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Fixture::new(dir.path());
    let v2 = fixture.bundle_with(
        MODEL,
        &BundleOptions { version: "2.0.0".into(), ..BundleOptions::default() },
        "mlp-2.bundle",
    );
    let mut options = PlanOptions::new("random-kill", 1);
    // No traffic: the shadow phase lasts its second, the watch its second.
    let shadow = ShadowPolicy { requests: 1_000_000, seconds: 1, tolerance: 1e-6 };
    options.health = HealthPolicy { watch_seconds: 1, shadow: Some(shadow), ..quick_health() };
    let shared = Arc::new(RandomKills {
        broker_port: mosquitto.port(),
        digest: fixture.bundle_ref(&v2).digest.to_string(),
        bundle: std::fs::read(&v2).expect("v2"),
        plan: envelope(&fixture.signed_plan(&v2, &options)),
        interrupted: Mutex::default(),
        fixture,
    });
    let started = std::time::Instant::now();
    let mut running = tokio::task::JoinSet::new();
    let mut names = HashMap::new();
    let mut pending = iterations.iter().copied();
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    loop {
        while failures.is_empty() && running.len() < RANDOM_KILLS_AT_ONCE {
            let Some(iteration) = pending.next() else { break };
            let delay = kill_delay(iteration);
            let task = running.spawn(random_kill(shared.clone(), iteration, delay));
            names.insert(task.id(), (iteration, delay));
        }
        let Some(joined) = running.join_next().await else { break };
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => {
                let (iteration, delay) = names[&error.id()];
                let message = match error.try_into_panic() {
                    Ok(payload) => panic_message(payload.as_ref()),
                    Err(error) => error.to_string(),
                };
                let interrupted =
                    shared.interrupted.lock().expect("phases").get(&iteration).map_or_else(
                        || "before the kill".to_string(),
                        |phase| format!("the kill interrupted {phase}"),
                    );
                failures.push(format!(
                    "random kill {iteration} (SIGKILL {delay:?} after the assignment, \
                     {interrupted}; replay with OUTPOST_CRASH_ONLY={iteration}): {message}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} failed:\n{}", failures.len(), failures.join("\n\n"));
    assert_eq!(outcomes.len(), iterations.len(), "every iteration reported");
    let mut by_phase: BTreeMap<(&str, &str), (u32, u128, u128)> = BTreeMap::new();
    for outcome in &outcomes {
        let millis = outcome.delay.as_millis();
        let entry = by_phase
            .entry((outcome.interrupted.as_str(), outcome.end.as_str()))
            .or_insert((0, u128::MAX, 0));
        *entry = (entry.0 + 1, entry.1.min(millis), entry.2.max(millis));
    }
    eprintln!(
        "{} random kills in {:?}, {RANDOM_KILLS_AT_ONCE} at once; interrupted phase → end: \
         count (delays in ms)",
        outcomes.len(),
        started.elapsed()
    );
    for ((interrupted, end), (count, low, high)) in &by_phase {
        eprintln!("  {interrupted:>11} → {end:<11} {count:>4} ({low}-{high})");
    }
}
