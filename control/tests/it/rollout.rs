//! Staged rollouts end to end with real parts: Mosquitto on a free port, the real `outpost
//! serve` binary (a process the tests can SIGKILL), and real `outpost-agent` processes
//! provisioned with `fraud@1.0.0` and answering inference traffic.
//!
//! - A good model (`fraud@2.0.0`) goes canary 2 → 50% → 100% with a 10% holdout: every device
//!   ends on 2.0.0, the holdout stays on 1.0.0 until completion, no device sees two plans.
//! - A model whose golden test passes but whose live error rate is bad (`fraud@3.0.0`, a model
//!   with another input shape) is stopped at the canary gate and rolled back to the fallback;
//!   the rest of the fleet never receives it.
//! - Fewer than k approvals: the server refuses to start, and the same plan pushed around the
//!   server straight onto a device's assign topic is refused by the device itself.
//! - A canary whose inputs drift beyond the drift gate pauses the rollout.
//! - Manual advance: a passed wave waits for the operator; devices that join the cohort are
//!   admitted, and an offline device times out instead of holding the wave.
//!
//! The shared support ([`Lab`]) also serves `rollout_restart.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_control::api::client::ApiClient;
use outpost_shared::dsse::Envelope;
use outpost_shared::wire::{Admission, AdmissionAction, Assign, ProtocolVersion};
use outpost_tests::broker::{ClientOptions, Mosquitto, TestClient};
use serde_json::{Value, json};

use crate::server::{agent_binary, free_port};

pub const TIMEOUT: Duration = Duration::from_secs(120);
const PASSPHRASE: &str = "test-passphrase";

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

fn model_file(name: &str) -> String {
    models().join(name).display().to_string()
}

pub fn show(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A running agent, killed on drop.
pub struct Agent {
    pub id: String,
    pub port: u16,
    child: Option<Child>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Inference requests on every agent in turn until dropped; rows from `shifted` agents come
/// from the shifted CSV (feature `f2` moved by 1.5 standard deviations).
pub struct Traffic {
    stop: Arc<AtomicBool>,
    pub answered: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(agents: &[(String, u16)], shifted: bool) -> Traffic {
        let file =
            if shifted { "mlp_classifier.shifted.csv" } else { "mlp_classifier.baseline.csv" };
        let rows: Vec<String> = std::fs::read_to_string(models().join(file))
            .expect("rows")
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let agents = agents.to_vec();
        let thread = std::thread::spawn({
            let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
            move || {
                let agent = ureq::Agent::new_with_config(
                    ureq::config::Config::builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(5)))
                        .build(),
                );
                let mut row = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    for (_, port) in &agents {
                        row = (row + 1) % rows.len();
                        let body = format!(
                            "{{\"inputs\":[{{\"name\":\"features\",\"datatype\":\"FP32\",\
                             \"shape\":[1,8],\"data\":[{}]}}]}}",
                            rows[row]
                        );
                        let url = format!("http://127.0.0.1:{port}/v2/models/fraud/infer");
                        let ok = agent
                            .post(&url)
                            .header("content-type", "application/json")
                            .send(body.as_bytes())
                            .is_ok_and(|r| r.status() == 200);
                        let counter = if ok { &answered } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(15));
                }
            }
        });
        Traffic { stop, answered, failed, thread: Some(thread) }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every payload published on any device's assign topic, by device (an observer).
pub struct AssignLog {
    pub by_device: Arc<Mutex<BTreeMap<String, Vec<Vec<u8>>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AssignLog {
    fn start(port: u16) -> AssignLog {
        let by_device: Arc<Mutex<BTreeMap<String, Vec<Vec<u8>>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let (by_device, stop) = (by_device.clone(), stop.clone());
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    let mut client =
                        TestClient::connect(ClientOptions::local(port, "assign-log"), TIMEOUT)
                            .await
                            .expect("observer connects");
                    client.subscribe(&["outpost/v1/+/assign"]).await;
                    let _ = ready_tx.send(());
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(message) = client.next_message(Duration::from_millis(100)).await
                        {
                            let device = message.topic.split('/').nth(2).unwrap_or("").to_string();
                            by_device
                                .lock()
                                .expect("lock")
                                .entry(device)
                                .or_default()
                                .push(message.payload.to_vec());
                        }
                    }
                });
            }
        });
        ready_rx.recv_timeout(TIMEOUT).expect("observer subscribed");
        AssignLog { by_device, stop, thread: Some(thread) }
    }

    /// The distinct signed plans each device received for `rollout` (by plan bytes).
    pub fn plans_of(&self, rollout: &str) -> BTreeMap<String, BTreeSet<Vec<u8>>> {
        let mut plans: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for (device, payloads) in self.by_device.lock().expect("lock").iter() {
            for payload in payloads {
                let Ok(assign) = serde_json::from_slice::<Assign>(payload) else { continue };
                if assign.admission.rollout_id == rollout {
                    plans.entry(device.clone()).or_default().insert(assign.plan.to_vec());
                }
            }
        }
        plans
    }

    /// The admission actions each device received for `rollout`, in order.
    pub fn actions_of(&self, rollout: &str) -> BTreeMap<String, Vec<AdmissionAction>> {
        let mut actions: BTreeMap<String, Vec<AdmissionAction>> = BTreeMap::new();
        for (device, payloads) in self.by_device.lock().expect("lock").iter() {
            for payload in payloads {
                let Ok(assign) = serde_json::from_slice::<Assign>(payload) else { continue };
                if assign.admission.rollout_id == rollout {
                    actions.entry(device.clone()).or_default().push(assign.admission.action);
                }
            }
        }
        actions
    }
}

impl Drop for AssignLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Keys, a trust root asking for 2 of 3 approvers, bundles, Mosquitto, `outpost serve` and
/// agents, in one temporary directory.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub mosquitto: Mosquitto,
    /// `outpost serve` instances (several share one PostgreSQL database), by index.
    servers: Vec<Option<Child>>,
    /// The API port of each instance; `api_port` is the first's.
    api_ports: Vec<u16>,
    database_url: Option<String>,
    pub api_port: u16,
    pub admin_token: String,
    pub agents: Vec<Agent>,
    /// Agents started so far (ids are numbered from it).
    started_agents: usize,
    pub assigns: Option<AssignLog>,
}

impl Lab {
    pub fn new() -> Lab {
        Lab::with_database(None)
    }

    /// A lab whose server instances use `database_url` (PostgreSQL) instead of SQLite files.
    pub fn with_database(database_url: Option<String>) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let mosquitto = Mosquitto::start().expect("start Mosquitto");
        let api_port = free_port();
        let lab = Lab {
            dir,
            mosquitto,
            servers: Vec::new(),
            api_ports: vec![api_port],
            database_url,
            api_port,
            admin_token: String::new(),
            agents: Vec::new(),
            started_agents: 0,
            assigns: None,
        };
        for (name, role) in [
            ("root1", "root"),
            ("alice", "approver"),
            ("bob", "approver"),
            ("carol", "approver"),
            ("ci", "publisher"),
        ] {
            lab.cli(&["keys", "generate", "--name", name, "--role", role, "--out", "keys"]);
        }
        lab.cli(&[
            "trust",
            "init",
            "--root",
            "keys/root1.pub.json",
            "--root-threshold",
            "1",
            "--approver",
            "keys/alice.pub.json",
            "--approver",
            "keys/bob.pub.json",
            "--approver",
            "keys/carol.pub.json",
            "--approvals",
            "2",
            "--publisher",
            "keys/ci.pub.json",
            "--expires-in",
            "30",
            "--sign",
            "keys/root1.key.json",
            "--out",
            "root.json",
        ]);
        for (out, version, model) in [
            ("v1.bundle", "1.0.0", "mlp_classifier"),
            ("v2.bundle", "2.0.0", "mlp_classifier"),
            ("v3.bundle", "3.0.0", "regressor"),
        ] {
            lab.cli(&[
                "bundle",
                "create",
                "--model",
                &model_file(&format!("{model}.onnx")),
                "--name",
                "fraud",
                "--version",
                version,
                "--baseline",
                &model_file(&format!("{model}.baseline.csv")),
                "--golden",
                &model_file(&format!("{model}.golden.json")),
                "--key",
                "keys/ci.key.json",
                "--out",
                out,
            ]);
        }
        lab.write_config(0);
        let mut lab = lab;
        let output = lab.outpost(&[
            "users",
            "add",
            "root-admin",
            "--role",
            "admin",
            "--config",
            "control-0.toml",
        ]);
        assert!(output.status.success(), "first admin: {}", show(&output));
        lab.admin_token = String::from_utf8_lossy(&output.stdout).trim().to_string();
        lab.start_server();
        lab.assigns = Some(AssignLog::start(lab.mosquitto.port()));
        lab.cli_ok(&["model", "push", &lab.path_text("v1.bundle")]);
        lab.cli_ok(&["model", "push", &lab.path_text("v2.bundle")]);
        lab.cli_ok(&["model", "push", &lab.path_text("v3.bundle")]);
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn path_text(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn outpost(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("OUTPOST_PASSPHRASE", PASSPHRASE)
            .env_remove("OUTPOST_SERVER")
            .env_remove("OUTPOST_TOKEN");
        if !self.admin_token.is_empty() {
            command
                .env("OUTPOST_SERVER", format!("http://127.0.0.1:{}", self.api_port))
                .env("OUTPOST_TOKEN", &self.admin_token);
        }
        command.output().expect("run outpost")
    }

    /// `outpost ARGS` offline (keys, bundles); asserts success.
    fn cli(&self, args: &[&str]) {
        let output = self.outpost(args);
        assert!(output.status.success(), "outpost {args:?}: {}", show(&output));
    }

    /// `outpost ARGS` against the server as `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(args)
            .current_dir(self.dir.path())
            .env("OUTPOST_PASSPHRASE", PASSPHRASE)
            .env("OUTPOST_SERVER", format!("http://127.0.0.1:{}", self.api_port))
            .env("OUTPOST_TOKEN", token)
            .output()
            .expect("run outpost")
    }

    /// `outpost ARGS` as the admin; asserts success and returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.outpost(args);
        assert!(
            output.status.success(),
            "outpost {args:?}: {}\nserver log:\n{}",
            show(&output),
            self.server_log_tail()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A user with `role`; returns the token.
    pub fn token_for(&self, name: &str, role: &str) -> String {
        let answer = self
            .api(&self.admin_token)
            .post_json("/v1/users", &json!({ "name": name, "role": role }))
            .expect("create user");
        answer["token"].as_str().expect("token").to_string()
    }

    pub fn api(&self, token: &str) -> ApiClient {
        ApiClient::new(
            &format!("http://127.0.0.1:{}", self.api_port),
            Some(token.to_string()),
            None,
        )
        .expect("client")
    }

    pub fn server_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.path("server.log")).unwrap_or_default();
        // Per-message lines drown what matters.
        let lines: Vec<&str> = text.lines().filter(|line| !line.contains(" DEBUG ")).collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Writes `control-<index>.toml`: its own data directory and API port, the shared broker,
    /// trust root and database.
    fn write_config(&self, index: usize) {
        let database = match &self.database_url {
            Some(url) => format!("[database]\nurl = \"{url}\"\n"),
            None => String::new(),
        };
        std::fs::write(
            self.path(&format!("control-{index}.toml")),
            format!(
                "data_dir = \"{data}\"\n{database}[api]\nlisten = \"127.0.0.1:{api}\"\n\
                 [broker]\nurl = \"mqtt://127.0.0.1:{broker}\"\n[trust]\nroot = \"{root}\"\n\
                 [ingest]\nmaintenance_interval_seconds = 3600\n\
                 [rollouts]\ntick_seconds = 0.2\nlease_seconds = 2.0\n",
                data = self.path(&format!("data-{index}")).display(),
                api = self.api_ports[index],
                broker = self.mosquitto.port(),
                root = self.path("root.json").display(),
            ),
        )
        .expect("control config");
    }

    /// Starts instance 0 of `outpost serve` and waits for its API.
    pub fn start_server(&mut self) {
        self.start_instance(0);
    }

    /// Adds another `outpost serve` instance on the same database; returns its index.
    pub fn add_instance(&mut self) -> usize {
        self.api_ports.push(free_port());
        let index = self.api_ports.len() - 1;
        self.write_config(index);
        self.start_instance(index);
        index
    }

    /// The instance id `outpost serve` number `index` keeps in its data directory.
    pub fn instance_id(&self, index: usize) -> String {
        std::fs::read_to_string(self.path(&format!("data-{index}/instance-id")))
            .expect("instance id")
            .trim()
            .to_string()
    }

    /// Starts instance `index` of `outpost serve` and waits for its API.
    pub fn start_instance(&mut self, index: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("server.log"))
            .expect("server log");
        let config = format!("control-{index}.toml");
        let child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["serve", "--config", &config])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info,outpost_control=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn outpost serve");
        if self.servers.len() <= index {
            self.servers.resize_with(index + 1, || None);
        }
        self.servers[index] = Some(child);
        let client =
            ApiClient::new(&format!("http://127.0.0.1:{}", self.api_ports[index]), None, None)
                .expect("client");
        outpost_tests::wait::until(TIMEOUT, "the server's API", || {
            client.get_json("/health", &[]).is_ok()
        });
    }

    /// SIGKILLs instance 0 of `outpost serve`.
    pub fn kill_server(&mut self) {
        self.kill_instance(0);
    }

    /// SIGKILLs instance `index` of `outpost serve`.
    pub fn kill_instance(&mut self, index: usize) {
        if let Some(mut child) = self.servers.get_mut(index).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client of instance `index`'s API as the admin.
    pub fn api_of(&self, index: usize) -> ApiClient {
        ApiClient::new(
            &format!("http://127.0.0.1:{}", self.api_ports[index]),
            Some(self.admin_token.clone()),
            None,
        )
        .expect("client")
    }

    /// Provisions and starts `count` agents `dev-00..` on fraud@1.0.0 with tag `site=berlin`,
    /// and waits until the inventory lists them online.
    pub fn start_agents(&mut self, count: usize) {
        let first = self.started_agents;
        self.started_agents += count;
        for index in first..first + count {
            let id = format!("dev-{index:02}");
            let dir = self.path(&id);
            std::fs::create_dir_all(&dir).expect("agent dir");
            let port = free_port();
            let config = dir.join("agent.toml");
            std::fs::write(
                &config,
                format!(
                    "data_dir = \"{data}\"\n\n[device]\nid = \"{id}\"\n\n[device.tags]\n\
                     site = \"berlin\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[stats]\n\
                     period_seconds = 1.0\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker}\n\
                     keep_alive_seconds = 5\nreconnect_min_delay_ms = 50\n\
                     reconnect_max_delay_ms = 500\n\n[update]\nfetch_timeout_ms = 3000\n\
                     retry_max_delay_ms = 500\n",
                    data = dir.join("data").display(),
                    broker = self.mosquitto.port(),
                ),
            )
            .expect("agent config");
            let output = Command::new(agent_binary())
                .args(["provision", "--config"])
                .arg(&config)
                .arg("--trust")
                .arg(self.path("root.json"))
                .arg("--bundle")
                .arg(self.path("v1.bundle"))
                .output()
                .expect("provision");
            assert!(output.status.success(), "provision {id}: {}", show(&output));
            let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
            let child = Command::new(agent_binary())
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("agent starts");
            self.agents.push(Agent { id, port, child: Some(child) });
        }
        let admin = self.api(&self.admin_token);
        let running = self.agents.len();
        outpost_tests::wait::until(TIMEOUT, "every agent online in the inventory", || {
            admin.get_json("/v1/devices", &[]).is_ok_and(|answer| {
                answer["devices"].as_array().is_some_and(|devices| {
                    devices.iter().filter(|d| d["presence"] == "online").count() >= running
                })
            })
        });
    }

    pub fn agent_ports(&self) -> Vec<(String, u16)> {
        self.agents.iter().map(|a| (a.id.clone(), a.port)).collect()
    }

    pub fn rollout(&self, id: &str) -> Value {
        self.api(&self.admin_token).get_json(&format!("/v1/rollouts/{id}"), &[]).expect("show")
    }

    /// Waits until rollout `id` satisfies `condition`; the last view on success.
    pub fn wait_rollout(&self, id: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        self.wait_rollout_on(0, id, what, condition)
    }

    /// As [`Lab::wait_rollout`], through instance `index`'s API.
    pub fn wait_rollout_on(
        &self,
        index: usize,
        id: &str,
        what: &str,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let client = self.api_of(index);
        let mut last = Value::Null;
        let result = outpost_tests::wait::try_until_some(TIMEOUT, what, || {
            last = client.get_json(&format!("/v1/rollouts/{id}"), &[]).unwrap_or(Value::Null);
            condition(&last).then(|| last.clone())
        });
        result.unwrap_or_else(|error| {
            panic!("{error}\nrollout: {last:#}\nserver log:\n{}", self.server_log_tail())
        })
    }

    /// The active model version of every device in the inventory.
    pub fn versions(&self) -> BTreeMap<String, String> {
        let answer = self.api(&self.admin_token).get_json("/v1/devices", &[]).expect("devices");
        answer["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| {
                (
                    d["device_id"].as_str().unwrap_or("").to_string(),
                    d["active_model"]["version"].as_str().unwrap_or("-").to_string(),
                )
            })
            .collect()
    }

    /// Creates a rollout of `bundle` as the admin with `extra` options; returns its id.
    pub fn create(&self, id: &str, bundle: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "rollout",
            "create",
            "--id",
            id,
            "--bundle",
            bundle,
            "--cohort",
            "site=berlin",
            "--health",
            r#"{"watch_seconds":2,"min_requests":5,"max_error_rate":1.0,"max_p95_latency_ratio":1000.0}"#,
        ];
        args.extend_from_slice(extra);
        let printed = self.cli_ok(&args);
        assert!(printed.contains(&format!("created rollout {id}")), "{printed}");
        id.to_string()
    }

    /// Approves `id` with the named approver keys through the CLI.
    pub fn approve(&self, id: &str, approvers: &[&str]) {
        for approver in approvers {
            let key = format!("keys/{approver}.key.json");
            let printed = self.cli_ok(&["rollout", "approve", id, "--key", &key]);
            assert!(printed.contains(&format!("approved rollout {id} as {approver}")), "{printed}");
        }
    }

    pub fn assigns(&self) -> &AssignLog {
        self.assigns.as_ref().expect("assign log")
    }

    /// Stops agent `id` (SIGKILL): it goes offline.
    pub fn stop_agent(&mut self, id: &str) {
        self.agents.retain(|agent| agent.id != id);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("server log:\n{}", self.server_log_tail());
        }
        self.agents.clear();
        for index in 0..self.servers.len() {
            self.kill_instance(index);
        }
    }
}

/// Devices of a rollout view: (id, holdout, wave, reverted).
pub fn placed(view: &Value) -> Vec<(String, bool, Option<u64>, bool)> {
    view["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap_or("").to_string(),
                d["holdout"].as_bool().unwrap_or(false),
                d["wave"].as_u64(),
                !d["reverted_ms"].is_null(),
            )
        })
        .collect()
}

/// The waves most tests roll out in: a canary of 2 devices, then half, then all of the cohort,
/// each soaking `soak` seconds, a device timing out after 60 s, at least 2 devices reporting;
/// `extra` flags follow (holdout, more gates, fallback, what to do on failure).
pub fn canary_half_all(soak: &'static str, extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["--wave", "2", "--wave", "50%", "--wave", "100%", "--soak", soak];
    args.extend(["--device-timeout", "60", "--gate", "min_devices_reporting=2"]);
    args.extend_from_slice(extra);
    args
}

fn gate<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["gates"]["gates"]
        .as_array()
        .and_then(|gates| gates.iter().find(|g| g["gate"] == name))
        .unwrap_or_else(|| panic!("no gate {name}: {view:#}"))
}

#[test]
fn a_good_model_reaches_the_fleet_in_waves_with_a_holdout_until_completion() {
    let mut lab = Lab::new();
    lab.start_agents(12);
    let traffic = Traffic::start(&lab.agent_ports(), false);
    let id = lab.create(
        "good",
        "fraud@2.0.0",
        &canary_half_all(
            "3",
            &["--holdout", "10", "--gate", "max_p95_latency_ratio=4", "--fallback", "fraud@1.0.0"],
        ),
    );
    lab.approve(&id, &["alice", "bob"]);
    let operator = lab.token_for("olga", "operator");
    let started = lab.cli_as(&operator, &["rollout", "start", &id]);
    assert!(started.status.success(), "{}", show(&started));

    // The canary: two devices on 2.0.0 while the rest, holdout included, run 1.0.0.
    let canary = lab.wait_rollout(&id, "the canary judged and wave 1 admitted", |v| {
        v["wave"].as_u64() >= Some(1)
    });
    let devices = placed(&canary);
    assert_eq!(devices.len(), 12, "every cohort device is placed: {canary:#}");
    let holdout: Vec<String> = devices.iter().filter(|d| d.1).map(|d| d.0.clone()).collect();
    assert_eq!(holdout.len(), 1, "10% of 12 devices held out: {canary:#}");
    assert_eq!(devices.iter().filter(|d| d.2 == Some(0)).count(), 2, "a canary of 2");

    // Midway: the holdout still runs 1.0.0.
    let midway = lab.wait_rollout(&id, "wave 2 admitted", |v| {
        v["wave"].as_u64() >= Some(2) || v["state"] == "completed"
    });
    if midway["state"] != "completed" {
        let versions = lab.versions();
        assert_eq!(versions[&holdout[0]], "1.0.0", "the holdout stays on 1.0.0: {versions:?}");
    }
    let done = lab.wait_rollout(&id, "the rollout completes and releases the holdout", |v| {
        v["state"] == "completed" && v["holdout"]["released"] == 1
    });
    assert_eq!(done["waves"].as_array().map(Vec::len), Some(3));
    for wave in done["waves"].as_array().expect("waves") {
        assert_eq!(wave["status"], "passed", "{done:#}");
    }
    let devices = placed(&done);
    assert_eq!(devices.iter().filter(|d| d.2 == Some(1)).count(), 4, "50% of 11 is 6: 4 more");
    assert_eq!(devices.iter().filter(|d| d.2 == Some(2)).count(), 5, "the rest of the 11");
    assert_eq!(devices.iter().filter(|d| d.2 == Some(3)).count(), 1, "holdout released last");
    // The last judgement is the final wave's, with its gates against their thresholds.
    assert_eq!(gate(&done, "min_devices_reporting")["status"], "pass", "{done:#}");
    assert_eq!(gate(&done, "max_error_rate")["status"], "pass", "{done:#}");
    assert!(gate(&done, "max_error_rate")["value"].as_f64().is_some_and(|v| v <= 0.05));
    assert!(gate(&done, "max_p95_latency_ratio")["value"].as_f64().is_some(), "{done:#}");

    // Every device ends on 2.0.0, the holdout after completion.
    outpost_tests::wait::until(TIMEOUT, "every device on 2.0.0", || {
        lab.versions().values().filter(|v| *v == "2.0.0").count() == 12
    });
    // No device saw two plans for this rollout.
    for (device, plans) in lab.assigns().plans_of(&id) {
        assert_eq!(plans.len(), 1, "{device} received {} different plans", plans.len());
    }
    // The transitions, in order, are stored and audited.
    let actions: Vec<String> = done["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["action"].as_str().unwrap_or("").to_string())
        .collect();
    let expected = [
        "rollout.create",
        "rollout.approve",
        "rollout.approve",
        "rollout.start",
        "rollout.wave.admit",
        "rollout.wave.advance",
        "rollout.wave.admit",
        "rollout.wave.advance",
        "rollout.wave.admit",
        "rollout.complete",
    ];
    assert_eq!(actions, expected, "{done:#}");
    let audit = lab
        .api(&lab.admin_token)
        .get_json("/v1/audit/events", &[("action", "rollout.wave.admit".into())])
        .expect("audit");
    assert_eq!(audit["events"].as_array().map(Vec::len), Some(3), "{audit}");
    outpost_tests::wait::until(TIMEOUT, "each device's commit in the audit log", || {
        lab.api(&lab.admin_token)
            .get_json("/v1/audit/events", &[("action", "device.committed".into())])
            .is_ok_and(|answer| answer["events"].as_array().is_some_and(|e| e.len() == 12))
    });
    assert!(traffic.answered.load(Ordering::Relaxed) > 0, "traffic was answered throughout");
    // The CLI shows the waves and gates.
    let shown = lab.cli_ok(&["rollout", "show", &id]);
    assert!(shown.contains("completed") && shown.contains("max_error_rate"), "{shown}");
}

#[test]
fn a_model_bad_in_live_traffic_is_stopped_at_the_canary_and_rolled_back() {
    let mut lab = Lab::new();
    lab.start_agents(12);
    let traffic = Traffic::start(&lab.agent_ports(), false);
    let id = lab.create(
        "bad",
        "fraud@3.0.0",
        &canary_half_all(
            "3",
            &["--holdout", "10", "--fallback", "fraud@1.0.0", "--on-fail", "rollback"],
        ),
    );
    lab.approve(&id, &["bob", "carol"]);
    lab.cli_ok(&["rollout", "start", &id]);
    let stopped = lab.wait_rollout(&id, "the canary gate stops the rollout", |v| {
        (v["state"] == "rolled_back" && v["devices_reverted"] == v["devices_admitted"])
            || v["state"] == "completed"
    });
    assert_eq!(stopped["state"], "rolled_back", "{stopped:#}");
    assert_eq!(stopped["wave"], 0, "stopped at the canary: {stopped:#}");
    let error_gate = gate(&stopped, "max_error_rate");
    assert_eq!(error_gate["status"], "fail", "{stopped:#}");
    assert!(error_gate["value"].as_f64().is_some_and(|v| v > 0.5), "{error_gate}");
    assert!(
        stopped["reason"].as_str().is_some_and(|r| r.contains("max_error_rate")),
        "{stopped:#}"
    );
    let devices = placed(&stopped);
    let canary: Vec<String> =
        devices.iter().filter(|d| d.2.is_some()).map(|d| d.0.clone()).collect();
    assert_eq!(canary.len(), 2, "{stopped:#}");
    assert!(devices.iter().filter(|d| d.2.is_some()).all(|d| d.3), "canaries reverted");

    // The canaries go back to 1.0.0; the rest never received the plan.
    outpost_tests::wait::until(TIMEOUT, "every device on 1.0.0", || {
        lab.versions().values().all(|v| v == "1.0.0")
    });
    let actions = lab.assigns().actions_of(&id);
    assert_eq!(actions.keys().cloned().collect::<Vec<_>>(), canary, "only the canary: {actions:?}");
    for (device, sent) in &actions {
        assert_eq!(sent.first(), Some(&AdmissionAction::Install), "{device}: {sent:?}");
        assert_eq!(sent.last(), Some(&AdmissionAction::Revert), "{device}: {sent:?}");
    }
    assert!(traffic.failed.load(Ordering::Relaxed) > 0, "the bad model failed requests");
    let audit = lab
        .api(&lab.admin_token)
        .get_json("/v1/audit/events", &[("action", "rollout.gate.fail".into())])
        .expect("audit");
    assert_eq!(audit["events"].as_array().map(Vec::len), Some(1), "{audit}");
}

#[test]
fn too_few_approvals_stop_the_server_and_the_device() {
    let mut lab = Lab::new();
    lab.start_agents(2);
    let id = lab.create("underapproved", "fraud@2.0.0", &["--wave", "100%", "--soak", "1"]);
    lab.approve(&id, &["alice"]);
    // The server refuses to start with 1 of 2 approvals.
    let refused = lab.cli_as(&lab.admin_token, &["rollout", "start", &id]);
    assert_eq!(refused.status.code(), Some(1), "{}", show(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("(409)") && stderr.contains("1 valid approvals of the 2"), "{stderr}");
    assert_eq!(lab.rollout(&id)["state"], "awaiting_approval");
    // A publisher key does not count, and a signature over another document is refused.
    let publisher =
        lab.cli_as(&lab.admin_token, &["rollout", "approve", &id, "--key", "keys/ci.key.json"]);
    assert_eq!(publisher.status.code(), Some(1), "{}", show(&publisher));
    let forged = lab
        .api(&lab.admin_token)
        .post_json(&format!("/v1/rollouts/{id}/approve"), &json!({"keyid": "bob", "sig": "AAAA"}));
    assert!(forged.is_err(), "a made-up signature is refused");
    // An auditor may read but not approve or start.
    let auditor = lab.token_for("audrey", "auditor");
    let denied = lab.cli_as(&auditor, &["rollout", "start", &id]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("(403)"), "{}", show(&denied));
    let listed = lab.cli_as(&auditor, &["rollout", "list", "--json"]);
    assert!(listed.status.success(), "{}", show(&listed));

    // The same plan with its one approval, pushed around the server onto a device's assign
    // topic, is refused by the device: too few signatures.
    let view = lab.rollout(&id);
    let envelope =
        Envelope::from_slice(view["plan"].as_str().expect("plan").as_bytes()).expect("envelope");
    // Signed the way any approver signs a plan file.
    std::fs::write(lab.path("pushed.plan"), envelope.to_vec()).expect("plan file");
    lab.cli(&["plan", "sign", "--key", "keys/alice.key.json", &lab.path_text("pushed.plan")]);
    let envelope = Envelope::from_slice(&std::fs::read(lab.path("pushed.plan")).expect("plan"))
        .expect("signed envelope");
    assert_eq!(envelope.signatures.len(), 1);
    let assign = Assign {
        v: ProtocolVersion,
        plan: envelope,
        admission: Admission {
            rollout_id: id.clone(),
            wave: 0,
            admitted_at_ms: 1,
            action: AdmissionAction::Install,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    runtime.block_on(async {
        let mut rogue =
            TestClient::connect(ClientOptions::local(lab.mosquitto.port(), "rogue"), TIMEOUT)
                .await
                .expect("connect");
        rogue
            .publish("outpost/v1/dev-00/assign", serde_json::to_vec(&assign).expect("json"), false)
            .await;
    });
    let admin = lab.api(&lab.admin_token);
    outpost_tests::wait::until(TIMEOUT, "the device's refusal in the audit log", || {
        admin.get_json("/v1/audit/events", &[("action", "device.rejected".into())]).is_ok_and(
            |answer| {
                answer["events"].as_array().is_some_and(|events| {
                    events.iter().any(|e| {
                        e["reason"].as_str().is_some_and(|r| r.contains("too_few_signatures"))
                            && e["subject"].as_str().is_some_and(|s| s.contains("dev-00"))
                    })
                })
            },
        )
    });
    assert_eq!(lab.versions()["dev-00"], "1.0.0", "the device kept its model");
    // A second approval lets the server start it.
    lab.approve(&id, &["carol"]);
    assert_eq!(lab.rollout(&id)["state"], "approved");
    lab.cli_ok(&["rollout", "start", &id]);
    lab.wait_rollout(&id, "running", |v| v["state"] == "running" || v["state"] == "completed");
}

#[test]
fn a_canary_whose_inputs_drift_beyond_the_gate_pauses_the_rollout() {
    let mut lab = Lab::new();
    lab.start_agents(6);
    let _traffic = Traffic::start(&lab.agent_ports(), true);
    let id = lab.create(
        "drifting",
        "fraud@2.0.0",
        &[
            "--wave",
            "2",
            "--wave",
            "100%",
            "--soak",
            "4",
            "--device-timeout",
            "60",
            "--gate",
            "min_devices_reporting=2",
            "--gate",
            "max_drift_psi=0.25",
            "--gate",
            "max_p95_latency_ratio=off",
        ],
    );
    lab.approve(&id, &["alice", "carol"]);
    lab.cli_ok(&["rollout", "start", &id]);
    let paused = lab.wait_rollout(&id, "the drift gate pauses the rollout", |v| {
        v["state"] != "running" && v["state"] != "approved"
    });
    assert_eq!(paused["state"], "paused", "{paused:#}");
    assert_eq!(paused["wave"], 0, "{paused:#}");
    let drift = gate(&paused, "max_drift_psi");
    assert_eq!(drift["status"], "fail", "{paused:#}");
    assert!(drift["value"].as_f64().is_some_and(|v| v > 0.25), "{drift}");
    assert!(drift["detail"].as_str().is_some_and(|d| d.contains("f2")), "{drift}");
    assert_eq!(gate(&paused, "max_error_rate")["status"], "pass", "{paused:#}");
    // Paused: nothing more is admitted, and the canary keeps the new model (no rollback asked).
    let admitted = paused["devices_admitted"].as_u64();
    assert_eq!(admitted, Some(2), "{paused:#}");
    // An operator resumes it; the wave soaks again and, still drifting, pauses again.
    lab.cli_ok(&["rollout", "resume", &id]);
    lab.wait_rollout(&id, "paused again", |v| {
        v["state"] == "paused" && v["updated_ms"] != paused["updated_ms"]
    });
    assert_eq!(lab.rollout(&id)["devices_admitted"].as_u64(), Some(2));
    lab.cli_ok(&["rollout", "abort", &id]);
    assert_eq!(lab.rollout(&id)["state"], "aborted");
}

#[test]
fn manual_advance_admits_joining_devices_and_an_offline_device_times_out() {
    let mut lab = Lab::new();
    lab.start_agents(4);
    let _traffic = Traffic::start(&lab.agent_ports(), false);
    let id = lab.create(
        "joiners",
        "fraud@2.0.0",
        &[
            "--wave",
            "1",
            "--wave",
            "100%",
            "--soak",
            "2",
            "--device-timeout",
            "3",
            "--advance",
            "manual",
            "--gate",
            "max_p95_latency_ratio=off",
        ],
    );
    lab.approve(&id, &["alice", "bob"]);
    lab.cli_ok(&["rollout", "start", &id]);
    let passed = lab.wait_rollout(&id, "the canary passes and waits for an advance", |v| {
        v["wave_phase"] == "awaiting_advance"
    });
    let canary: Vec<String> =
        placed(&passed).iter().filter(|d| d.2 == Some(0)).map(|d| d.0.clone()).collect();
    assert_eq!(canary.len(), 1, "{passed:#}");
    // One device not yet admitted goes offline; two new devices join the cohort.
    let offline = placed(&passed)
        .iter()
        .find(|d| d.2.is_none())
        .map(|d| d.0.clone())
        .expect("a device not yet admitted");
    lab.stop_agent(&offline);
    lab.start_agents(2);
    let joined = lab.wait_rollout(&id, "the joining devices placed", |v| {
        v["devices_placed"].as_u64() == Some(6)
    });
    assert_eq!(joined["wave_phase"], "awaiting_advance", "no advance without the operator");
    let advanced = lab.cli_ok(&["rollout", "advance", &id]);
    assert!(advanced.contains("running"), "{advanced}");
    let done = lab.wait_rollout(&id, "the rollout completes without the offline device", |v| {
        v["state"] == "completed"
    });
    assert_eq!(done["devices_admitted"], 6, "the joiners and the offline device are admitted");
    let last = done["gates"]["gates"]
        .as_array()
        .and_then(|gates| gates.iter().find(|g| g["gate"] == "min_devices_reporting"))
        .cloned()
        .expect("reporting gate");
    assert!(last["detail"].as_str().is_some_and(|d| d.contains("1 timed out")), "{last}");
    outpost_tests::wait::until(TIMEOUT, "every online device on 2.0.0", || {
        let versions = lab.versions();
        versions.iter().filter(|(device, _)| **device != offline).all(|(_, v)| v == "2.0.0")
            && versions.len() == 6
    });
    let actions: Vec<String> = done["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["action"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(actions.contains(&"rollout.wave.pass".to_string()), "{actions:?}");
    assert!(actions.contains(&"rollout.wave.advance".to_string()), "{actions:?}");
}
