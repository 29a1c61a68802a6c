//! The live part of the demo: an `outpost serve` control server on the embedded defaults
//! (SQLite, embedded MQTT broker) and four real `outpost-agent`s serving the demo's signed
//! ONNX model, as child processes of the demo.
//!
//! [`Fleet`] owns every child process; dropping it kills whatever still runs, so a failing step
//! (or a panic) leaves nothing behind. Each [`FleetAction`] is one thing the demo does with the
//! fleet; it returns an [`Outcome`] and narrates what it did on stdout.

use std::fs::File;
use std::io::{IsTerminal as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::http;
use super::{Outcome, print_indented};
use crate::process::{run_captured, shell_quote};
use serde_json::Value;

/// The devices of the demo fleet: id, site tag, and whether it is fed drifting data.
pub const DEVICES: &[(&str, &str, bool)] = &[
    ("berlin-1", "berlin", false),
    ("berlin-2", "berlin", true),
    ("paris-1", "paris", false),
    ("paris-2", "paris", false),
];

/// The model the demo's bundle carries, and its input.
const MODEL: &str = "fraud-scorer";
const INPUT: &str = "features";
const FEATURES: usize = 8;

/// The CSV files the traffic is made of (in the demo's `models/`).
pub const BASELINE_CSV: &str = "models/mlp_classifier.baseline.csv";
pub const SHIFTED_CSV: &str = "models/mlp_classifier.shifted.csv";

/// Seconds per statistics window on the demo agents, so windows flow while the demo watches.
const STATS_PERIOD_SECONDS: u32 = 2;
/// How long the traffic runs.
const TRAFFIC: Duration = Duration::from_secs(10);
/// Pause between two requests of one device's sender.
const REQUEST_PAUSE: Duration = Duration::from_millis(40);
/// How often the live view refreshes.
const REFRESH: Duration = Duration::from_secs(2);
/// Statistics messages the control server must have received before the demo moves on: two
/// windows per agent.
const STATS_WANTED_PER_AGENT: u64 = 2;

/// Time limits of the waits.
const SERVER_READY: Duration = Duration::from_secs(30);
const AGENT_READY: Duration = Duration::from_secs(30);
const FLEET_ONLINE: Duration = Duration::from_secs(20);
const STATS_FLOWING: Duration = Duration::from_secs(20);
const ASSIGNMENT_DELIVERED: Duration = Duration::from_secs(10);
const UPDATE_COMMITTED: Duration = Duration::from_secs(60);
const ROLLOUT_COMPLETED: Duration = Duration::from_secs(120);
const DEVICE_OFFLINE: Duration = Duration::from_secs(20);
const EXIT_AFTER_SIGTERM: Duration = Duration::from_secs(10);
const CLI_TIME_LIMIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

/// Files of the control server, relative to the demo folder.
pub const CONTROL_CONFIG: &str = "control/control.toml";
const CONTROL_LOG: &str = "control/serve.log";
const TOKEN_FILE: &str = "control/admin.token";

/// One thing the demo does with the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetAction {
    /// Writes `control/control.toml`.
    WriteControlConfig,
    /// Starts `outpost serve` and waits for `/health`.
    StartServer,
    /// `outpost users add admin --role admin --config …`: the first admin and its token.
    BootstrapAdmin,
    /// Writes the agent's config and runs `outpost-agent provision` (index into [`DEVICES`]).
    Provision(usize),
    /// Starts `outpost-agent run` and waits for `/v2/health/ready`.
    StartAgent(usize),
    /// Waits until `outpost devices list --online` shows every device.
    WaitOnline,
    /// One inference request, its response shown.
    InferOnce(usize),
    /// One request with the wrong shape; must be a 4xx JSON error.
    BadRequest(usize),
    /// Requests to every running agent for a while, with a live table on a terminal.
    Traffic,
    /// Waits until the control server's `/metrics` counts statistics windows.
    WaitStats,
    /// Per-device statistics from `/v1/aggregates`: the drifting device's inputs stand out.
    DeviceStats,
    /// Waits until the agent's log mentions the assignment the server published to it.
    AssignmentReceived(usize),
    /// Waits until the agent's log shows an update committed (after the health watch).
    UpdateCommitted(usize),
    /// Keeps light traffic on every running agent and follows `GET /v1/rollouts/<id>` until
    /// the rollout completes; each change of wave or phase is shown.
    RolloutCompletes(&'static str),
    /// SIGKILL, as a power cut would.
    Kill(usize),
    /// Waits until `outpost devices list` shows the device offline.
    WaitOffline(usize),
    /// SIGTERM to every running agent; each must exit 0.
    StopAgents,
    /// SIGTERM to the server; it must exit 0.
    StopServer,
}

impl FleetAction {
    /// What the action does, for the narration.
    pub fn describe(self) -> String {
        match self {
            Self::WriteControlConfig => format!("write {CONTROL_CONFIG}"),
            Self::StartServer => format!(
                "start `outpost serve --config {CONTROL_CONFIG}` (log: {CONTROL_LOG}), \
                 then poll GET /health"
            ),
            Self::BootstrapAdmin => "make the first admin straight in the database".into(),
            Self::Provision(index) => format!("enroll {}", DEVICES[index].0),
            Self::StartAgent(index) => format!(
                "start {} (log: fleet/{0}/agent.log), then poll GET /v2/health/ready",
                DEVICES[index].0
            ),
            Self::WaitOnline => {
                format!(
                    "poll `outpost devices list --online` until all {} are there",
                    DEVICES.len()
                )
            }
            Self::InferOnce(index) => {
                format!("one OIP v2 inference request to {}", DEVICES[index].0)
            }
            Self::BadRequest(index) => {
                format!("a request with the wrong input shape to {}", DEVICES[index].0)
            }
            Self::Traffic => format!(
                "send inference requests to every agent for {} s: baseline rows, shifted rows \
                 to the drifting device",
                TRAFFIC.as_secs()
            ),
            Self::WaitStats => "poll the control server's /metrics for statistics windows".into(),
            Self::DeviceStats => {
                "each device's merged statistics windows, from GET /v1/aggregates".into()
            }
            Self::AssignmentReceived(index) => format!(
                "poll fleet/{}/agent.log until it mentions the assignment",
                DEVICES[index].0
            ),
            Self::UpdateCommitted(index) => {
                format!("poll fleet/{}/agent.log until the update is committed", DEVICES[index].0)
            }
            Self::RolloutCompletes(id) => format!(
                "keep every agent serving (a few requests each per second) and poll \
                 GET /v1/rollouts/{id} until it completes"
            ),
            Self::Kill(index) => {
                format!("kill -KILL {} (no goodbye: a power cut)", DEVICES[index].0)
            }
            Self::WaitOffline(index) => {
                format!("poll `outpost devices list` until {} is offline", DEVICES[index].0)
            }
            Self::StopAgents => "kill -TERM every running agent and wait for it to exit".into(),
            Self::StopServer => "kill -TERM the control server and wait for it to exit".into(),
        }
    }
}

/// A running agent and the requests the demo sent it.
struct Agent {
    child: Option<Child>,
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
}

/// The control server, the agents and the ports they use. Dropping it kills every child
/// still running.
pub struct Fleet {
    demo_dir: PathBuf,
    outpost: PathBuf,
    agent_binary: PathBuf,
    api_port: u16,
    broker_port: u16,
    agent_ports: Vec<u16>,
    server: Option<Child>,
    token: Option<String>,
    agents: Vec<Agent>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let children =
            self.agents.iter_mut().filter_map(|agent| agent.child.as_mut()).chain(&mut self.server);
        for child in children {
            // Already exited, or killed now: either way nothing stays behind.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `count` distinct free loopback ports (bound together, then released).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free loopback ports")?;
    listeners.iter().map(|listener| Ok(listener.local_addr()?.port())).collect()
}

impl Fleet {
    pub fn new(demo_dir: &Path, outpost: &Path, agent_binary: &Path) -> Result<Self> {
        let ports = free_ports(2 + DEVICES.len())?;
        Ok(Self {
            demo_dir: demo_dir.to_path_buf(),
            outpost: outpost.to_path_buf(),
            agent_binary: agent_binary.to_path_buf(),
            api_port: ports[0],
            broker_port: ports[1],
            agent_ports: ports[2..].to_vec(),
            server: None,
            token: None,
            agents: DEVICES
                .iter()
                .map(|_| Agent {
                    child: None,
                    sent: AtomicU64::new(0),
                    answered: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                })
                .collect(),
        })
    }

    /// The server's URL and the admin token, once both exist: the environment of the CLI
    /// commands that use the API.
    pub fn cli_env(&self) -> Option<[(&'static str, String); 2]> {
        let token = self.token.clone()?;
        Some([("OUTPOST_SERVER", self.server_url()), ("OUTPOST_TOKEN", token)])
    }

    fn server_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Performs `action`, narrating it; returns its outcome.
    pub fn perform(&mut self, action: FleetAction) -> Outcome {
        if let Some(missing) = self.missing_for(action) {
            return Outcome::NotRun { missing: vec![missing.to_string()] };
        }
        let result = match action {
            FleetAction::WriteControlConfig => self.write_control_config(),
            FleetAction::StartServer => self.start_server(),
            FleetAction::BootstrapAdmin => self.bootstrap_admin(),
            FleetAction::Provision(index) => self.provision(index),
            FleetAction::StartAgent(index) => self.start_agent(index),
            FleetAction::WaitOnline => self.wait_online(),
            FleetAction::InferOnce(index) => self.infer_once(index),
            FleetAction::BadRequest(index) => self.bad_request(index),
            FleetAction::Traffic => self.traffic(),
            FleetAction::WaitStats => self.wait_stats(),
            FleetAction::DeviceStats => self.device_stats(),
            FleetAction::AssignmentReceived(index) => self.assignment_received(index),
            FleetAction::UpdateCommitted(index) => self.update_committed(index),
            FleetAction::RolloutCompletes(id) => self.rollout_completes(id),
            FleetAction::Kill(index) => self.kill(index),
            FleetAction::WaitOffline(index) => self.wait_offline(index),
            FleetAction::StopAgents => self.stop_agents(),
            FleetAction::StopServer => self.stop_server(),
        };
        match result {
            Ok(brief) => Outcome::Held(brief),
            Err(error) => Outcome::Error(format!("{error:#}")),
        }
    }

    /// What an action needs that an earlier step failed to make, if anything.
    fn missing_for(&self, action: FleetAction) -> Option<&'static str> {
        let server_running = self.server.is_some();
        match action {
            FleetAction::WriteControlConfig | FleetAction::StartServer => None,
            FleetAction::Provision(_) => {
                (!self.demo_dir.join("model.bundle").is_file()).then_some("model.bundle")
            }
            FleetAction::BootstrapAdmin | FleetAction::StopServer => {
                (!server_running).then_some("the control server")
            }
            FleetAction::WaitOnline
            | FleetAction::WaitStats
            | FleetAction::RolloutCompletes(_)
            | FleetAction::DeviceStats
            | FleetAction::WaitOffline(_) => {
                if self.token.is_none() {
                    Some("the admin token")
                } else {
                    None
                }
            }
            FleetAction::StartAgent(index) => (!self.provisioned(index)).then_some("its data dir"),
            FleetAction::InferOnce(index)
            | FleetAction::BadRequest(index)
            | FleetAction::AssignmentReceived(index)
            | FleetAction::UpdateCommitted(index)
            | FleetAction::Kill(index) => {
                self.agents[index].child.is_none().then_some("the running agent")
            }
            FleetAction::Traffic | FleetAction::StopAgents => {
                self.agents.iter().all(|agent| agent.child.is_none()).then_some("running agents")
            }
        }
    }

    fn provisioned(&self, index: usize) -> bool {
        self.demo_dir.join(agent_dir(index)).join("data").is_dir()
    }

    fn write_control_config(&self) -> Result<String> {
        let config = format!(
            "# Written by `cargo xtask demo`: the embedded defaults (SQLite in data_dir, the\n\
             # embedded MQTT broker) on free loopback ports. Paths are relative to {}.\n\
             data_dir = \"control/data\"\n\n\
             [api]\nlisten = \"127.0.0.1:{}\"\n\n\
             [broker]\nembedded_listen = \"127.0.0.1:{}\"\n\n\
             [trust]\nroot = \"root.json\"\n\n\
             [drift]\n# Evaluated every 2 s here (60 s by default) so the demo sees alerts.\n\
             evaluate_interval_seconds = 2.0\n",
            self.demo_dir.display(),
            self.api_port,
            self.broker_port,
        );
        self.write(CONTROL_CONFIG, &config)?;
        Ok("written".into())
    }

    fn write(&self, relative: &str, text: &str) -> Result<()> {
        let path = self.demo_dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        print_indented(&format!("{relative}:\n{}", indent(text)));
        Ok(())
    }

    /// Starts a child with stdin closed and its output in `log` (relative to the demo folder).
    fn spawn(&self, program: &Path, args: &[&str], log: &str) -> Result<Child> {
        let log_path = self.demo_dir.join(log);
        let file =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(&self.demo_dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        println!("  $ {} &", command_line(program, args));
        command.spawn().with_context(|| format!("starting {}", program.display()))
    }

    fn start_server(&mut self) -> Result<String> {
        let outpost = self.outpost.clone();
        let child = self.spawn(&outpost, &["serve", "--config", CONTROL_CONFIG], CONTROL_LOG)?;
        self.server = Some(child);
        let port = self.api_port;
        let waited = self.wait_for_child(None, CONTROL_LOG, SERVER_READY, || {
            http::get(port, "/health", None).is_ok_and(|response| response.status == 200)
        })?;
        print_indented(&format!(
            "GET {}/health answered 200 after {:.1} s; MQTT broker on 127.0.0.1:{}",
            self.server_url(),
            waited.as_secs_f64(),
            self.broker_port
        ));
        Ok(format!("200 after {:.1} s", waited.as_secs_f64()))
    }

    /// Polls `ready` until it holds, failing early if the child (`agent` index, or the
    /// server) exits; returns how long it took.
    fn wait_for_child(
        &mut self,
        agent: Option<usize>,
        log: &str,
        limit: Duration,
        ready: impl Fn() -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if ready() {
                return Ok(started.elapsed());
            }
            let child = match agent {
                Some(index) => self.agents[index].child.as_mut(),
                None => self.server.as_mut(),
            };
            if let Some(child) = child
                && let Some(status) = child.try_wait()?
            {
                match agent {
                    Some(index) => self.agents[index].child = None,
                    None => self.server = None,
                }
                bail!("it exited ({status}); the end of {log}:\n{}", self.log_tail(log));
            }
            if started.elapsed() >= limit {
                bail!(
                    "not ready after {} s; the end of {log}:\n{}",
                    limit.as_secs(),
                    self.log_tail(log)
                );
            }
            thread::sleep(POLL);
        }
    }

    fn log_tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.demo_dir.join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    fn bootstrap_admin(&mut self) -> Result<String> {
        let args = ["users", "add", "admin", "--role", "admin", "--config", CONTROL_CONFIG];
        println!("  $ {}", command_line(Path::new("outpost"), &args));
        let captured = self.run_cli(&args, false)?;
        print_indented(captured.stderr.trim_end());
        if captured.code != Some(0) {
            print_indented(&captured.stdout);
            bail!("`outpost users add` exited {:?}", captured.code);
        }
        let token = captured
            .stdout
            .lines()
            .map(str::trim)
            .rfind(|line| !line.is_empty())
            .context("`outpost users add` printed no token")?
            .to_string();
        let shown: String = token.chars().take(16).collect();
        std::fs::write(self.demo_dir.join(TOKEN_FILE), format!("{token}\n"))
            .with_context(|| format!("writing {TOKEN_FILE}"))?;
        print_indented(&format!("{shown}… (kept in {TOKEN_FILE})"));
        println!(
            "  $ export OUTPOST_SERVER={} OUTPOST_TOKEN=$(cat {TOKEN_FILE})",
            self.server_url()
        );
        self.token = Some(token);
        Ok(format!("token in {TOKEN_FILE}"))
    }

    /// Runs the `outpost` CLI in the demo folder, with the API environment when `api`.
    fn run_cli(&self, args: &[&str], api: bool) -> Result<crate::process::Captured> {
        let mut command = Command::new(&self.outpost);
        command.args(args).current_dir(&self.demo_dir);
        if api && let Some(env) = self.cli_env() {
            command.envs(env);
        }
        run_captured(&mut command, CLI_TIME_LIMIT)
    }

    fn provision(&self, index: usize) -> Result<String> {
        let (id, site, _) = DEVICES[index];
        let dir = agent_dir(index);
        let config = format!(
            "# Written by `cargo xtask demo`. Paths are relative to the demo folder.\n\
             data_dir = \"{dir}/data\"\n\n\
             [device]\nid = \"{id}\"\n\n\
             [device.tags]\nsite = \"{site}\"\n\n\
             [api]\nlisten = \"127.0.0.1:{}\"\n\n\
             [stats]\nperiod_seconds = {STATS_PERIOD_SECONDS}\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
            self.agent_ports[index], self.broker_port
        );
        let config_path = format!("{dir}/agent.toml");
        self.write(&config_path, &config)?;
        let args = [
            "provision",
            "--config",
            &config_path,
            "--trust",
            "root.json",
            "--bundle",
            "model.bundle",
        ];
        println!("  $ {}", command_line(Path::new("outpost-agent"), &args));
        let mut command = Command::new(&self.agent_binary);
        command.args(args).current_dir(&self.demo_dir).env("NO_COLOR", "1");
        let captured = run_captured(&mut command, CLI_TIME_LIMIT)?;
        print_indented(&captured.stdout);
        print_indented(&captured.stderr);
        if captured.code != Some(0) {
            bail!("`outpost-agent provision` exited {:?}", captured.code);
        }
        Ok("exit 0".into())
    }

    fn start_agent(&mut self, index: usize) -> Result<String> {
        let dir = agent_dir(index);
        let (config, log) = (format!("{dir}/agent.toml"), format!("{dir}/agent.log"));
        let binary = self.agent_binary.clone();
        let child = self.spawn(&binary, &["run", "--config", &config], &log)?;
        self.agents[index].child = Some(child);
        let port = self.agent_ports[index];
        let waited = self.wait_for_child(Some(index), &log, AGENT_READY, || {
            http::get(port, "/v2/health/ready", None).is_ok_and(|response| response.status == 200)
        })?;
        print_indented(&format!(
            "GET http://127.0.0.1:{port}/v2/health/ready answered 200 after {:.1} s",
            waited.as_secs_f64()
        ));
        Ok(format!("ready after {:.1} s", waited.as_secs_f64()))
    }

    /// The devices the control server lists (`outpost devices list`), or why not.
    fn devices(&self, online_only: bool) -> Result<(String, Vec<DeviceRow>)> {
        let mut args = vec!["devices", "list"];
        if online_only {
            args.push("--online");
        }
        let captured = self.run_cli(&args, true)?;
        if captured.code != Some(0) {
            bail!("`outpost devices list` exited {:?}: {}", captured.code, captured.stderr.trim());
        }
        let rows = parse_devices(&captured.stdout);
        Ok((captured.stdout, rows))
    }

    /// Polls `outpost devices list` until `done` holds for its rows; prints the last table.
    fn wait_devices(
        &self,
        online_only: bool,
        limit: Duration,
        what: &str,
        done: impl Fn(&[DeviceRow]) -> bool,
    ) -> Result<String> {
        let args = if online_only { "devices list --online" } else { "devices list" };
        println!("  $ outpost {args}    # every {} ms, until {what}", POLL.as_millis());
        let started = Instant::now();
        loop {
            let (table, rows) = self.devices(online_only)?;
            if done(&rows) {
                let brief = format!("{what} after {:.1} s", started.elapsed().as_secs_f64());
                print_indented(&table);
                print_indented(&brief);
                return Ok(brief);
            }
            if started.elapsed() >= limit {
                print_indented(&table);
                bail!("not {what} after {} s", limit.as_secs());
            }
            thread::sleep(POLL);
        }
    }

    fn wait_online(&self) -> Result<String> {
        let what = format!("{} online", DEVICES.len());
        self.wait_devices(true, FLEET_ONLINE, &what, |rows| {
            DEVICES.iter().all(|(id, _, _)| rows.iter().any(|row| row.device == *id))
        })
    }

    fn wait_offline(&self, index: usize) -> Result<String> {
        let id = DEVICES[index].0;
        self.wait_devices(false, DEVICE_OFFLINE, "offline", |rows| {
            rows.iter().any(|row| row.device == id && row.presence == "offline")
        })
    }

    fn infer_once(&self, index: usize) -> Result<String> {
        let rows = read_rows(&self.demo_dir.join(BASELINE_CSV))?;
        let row = rows.first().context("the baseline CSV has no rows")?;
        let body = infer_body(row, FEATURES);
        let response = self.post_infer(index, &body)?;
        print_indented(&format!("← {} {}", response.status, response.body));
        if response.status != 200 {
            bail!("expected 200, got {}", response.status);
        }
        Ok("200".into())
    }

    fn bad_request(&self, index: usize) -> Result<String> {
        let body = infer_body(&[1.0, 2.0, 3.0], 3);
        let response = self.post_infer(index, &body)?;
        print_indented(&format!("← {} {}", response.status, response.body));
        if !(400..500).contains(&response.status) || !response.body.contains("\"error\"") {
            bail!("expected a 4xx JSON error, got {}", response.status);
        }
        Ok(format!("{} JSON error", response.status))
    }

    /// Posts one inference request, showing it as curl would be typed.
    fn post_infer(&self, index: usize, body: &str) -> Result<http::Response> {
        let port = self.agent_ports[index];
        let path = format!("/v2/models/{MODEL}/infer");
        println!(
            "  $ curl -s -H 'Content-Type: application/json' http://127.0.0.1:{port}{path} \\\n        \
             -d {}",
            shell_quote(body)
        );
        http::request(port, "POST", &path, None, Some(body))
    }

    fn traffic(&self) -> Result<String> {
        let baseline = read_rows(&self.demo_dir.join(BASELINE_CSV))?;
        let shifted = read_rows(&self.demo_dir.join(SHIFTED_CSV))?;
        if baseline.is_empty() || shifted.is_empty() {
            bail!("no rows in {BASELINE_CSV} or {SHIFTED_CSV}");
        }
        let running: Vec<usize> =
            (0..DEVICES.len()).filter(|index| self.agents[*index].child.is_some()).collect();
        let live = std::io::stdout().is_terminal();
        let deadline = Instant::now() + TRAFFIC;
        thread::scope(|scope| {
            for &index in &running {
                let rows = if DEVICES[index].2 { &shifted } else { &baseline };
                let (agent, port) = (&self.agents[index], self.agent_ports[index]);
                scope.spawn(move || {
                    let path = format!("/v2/models/{MODEL}/infer");
                    for row in rows.iter().cycle() {
                        if Instant::now() >= deadline {
                            break;
                        }
                        agent.sent.fetch_add(1, Ordering::Relaxed);
                        let body = infer_body(row, FEATURES);
                        match http::request(port, "POST", &path, None, Some(&body)) {
                            Ok(response) if response.status == 200 => {
                                agent.answered.fetch_add(1, Ordering::Relaxed)
                            }
                            _ => agent.failed.fetch_add(1, Ordering::Relaxed),
                        };
                        thread::sleep(REQUEST_PAUSE);
                    }
                });
            }
            if live {
                let mut drawn = 0;
                while Instant::now() < deadline {
                    let view = self.view(deadline.saturating_duration_since(Instant::now()));
                    if drawn > 0 {
                        print!("\x1b[{drawn}A\x1b[J");
                    }
                    print!("{view}");
                    let _ = std::io::stdout().flush();
                    drawn = view.lines().count();
                    thread::sleep(REFRESH.min(deadline.saturating_duration_since(Instant::now())));
                }
                if drawn > 0 {
                    print!("\x1b[{drawn}A\x1b[J");
                }
            }
        });
        print!("{}", self.view(Duration::ZERO));
        let quiet: Vec<&str> = running
            .iter()
            .filter(|index| {
                let agent = &self.agents[**index];
                agent.answered.load(Ordering::Relaxed) == 0
                    || agent.failed.load(Ordering::Relaxed) > 0
            })
            .map(|index| DEVICES[*index].0)
            .collect();
        if !quiet.is_empty() {
            bail!("not every request answered 200 on {}", quiet.join(", "));
        }
        let total = |count: fn(&Agent) -> &AtomicU64| -> u64 {
            self.agents.iter().map(|agent| count(agent).load(Ordering::Relaxed)).sum()
        };
        Ok(format!("{} of {} 200", total(|agent| &agent.answered), total(|agent| &agent.sent)))
    }

    /// The live table: device, presence and model (from the control server), requests sent,
    /// answered 200 and failed.
    fn view(&self, left: Duration) -> String {
        let listed = self.devices(false).map(|(_, rows)| rows).unwrap_or_default();
        let mut lines = vec![format!(
            "{:<10} {:<8} {:<8} {:<20} {:>6} {:>6} {:>6}",
            "DEVICE", "SITE", "STATUS", "MODEL", "SENT", "200", "FAILED"
        )];
        for (index, (id, site, drifting)) in DEVICES.iter().enumerate() {
            let row = listed.iter().find(|row| row.device == *id);
            let agent = &self.agents[index];
            lines.push(format!(
                "{:<10} {:<8} {:<8} {:<20} {:>6} {:>6} {:>6}{}",
                id,
                site,
                row.map_or("?", |row| row.presence.as_str()),
                row.map_or("?", |row| row.model.as_str()),
                agent.sent.load(Ordering::Relaxed),
                agent.answered.load(Ordering::Relaxed),
                agent.failed.load(Ordering::Relaxed),
                if *drifting { "  (shifted data)" } else { "" }
            ));
        }
        if !left.is_zero() {
            lines.push(format!("{} s of traffic left", left.as_secs() + 1));
        }
        lines.iter().map(|line| format!("      {line}\n")).collect()
    }

    fn wait_stats(&self) -> Result<String> {
        let token = self.token.clone().context("no admin token")?;
        let wanted = STATS_WANTED_PER_AGENT * DEVICES.len() as u64;
        println!(
            "  $ curl -s -H \"Authorization: Bearer $OUTPOST_TOKEN\" {}/metrics    \
             # every {} ms, until stats ≥ {wanted}",
            self.server_url(),
            POLL.as_millis()
        );
        let started = Instant::now();
        loop {
            let response = http::get(self.api_port, "/metrics", Some(&token))?;
            if response.status != 200 {
                bail!("/metrics answered {}: {}", response.status, response.body);
            }
            let stats = metric(&response.body, "outpost_mqtt_messages_total{channel=\"stats\"}")
                .context("/metrics has no stats message counter")?;
            if stats >= wanted {
                let shown: Vec<&str> = response
                    .body
                    .lines()
                    .filter(|line| {
                        line.contains("channel=\"stats\"")
                            || line.starts_with("outpost_windows_")
                            || line.starts_with("outpost_devices_online")
                    })
                    .collect();
                print_indented(&shown.join("\n"));
                let ingested = metric(&response.body, "outpost_windows_ingested_total");
                let (note, brief) = match ingested {
                    Some(count) if count > 0 => {
                        (format!("{count} ingested"), format!("{stats} received, {count} ingested"))
                    }
                    _ => (
                        "received; this server version does not ingest them yet (counted as \
                         ignored)"
                            .to_string(),
                        format!("{stats} received"),
                    ),
                };
                print_indented(&format!(
                    "{stats} statistics windows after {:.1} s: {note}",
                    started.elapsed().as_secs_f64()
                ));
                return Ok(brief);
            }
            if started.elapsed() >= STATS_FLOWING {
                bail!(
                    "{stats} statistics messages after {} s, wanted {wanted}",
                    STATS_FLOWING.as_secs()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// GET on the API with the admin token; the body as JSON, which must answer 200.
    fn api_json(&self, path: &str) -> Result<Value> {
        let token = self.token.as_deref().context("no admin token")?;
        let response = http::get(self.api_port, path, Some(token))?;
        if response.status != 200 {
            bail!("GET {path} answered {}: {}", response.status, response.body);
        }
        serde_json::from_str(&response.body).with_context(|| format!("the answer of GET {path}"))
    }

    fn device_stats(&self) -> Result<String> {
        let baseline = read_rows(&self.demo_dir.join(BASELINE_CSV))?;
        let (means, deviations) = column_moments(&baseline);
        // Per device: windows, requests, and the mean of every input over all its windows.
        let mut merged: Vec<(f64, f64, Vec<f64>)> = Vec::new();
        for (index, (id, _, _)) in DEVICES.iter().enumerate() {
            let listing = self.api_json(&format!("/v1/aggregates?device={id}"))?;
            let digest = listing
                .pointer("/models/0")
                .and_then(Value::as_str)
                .with_context(|| format!("no statistics for {id} yet"))?
                .to_string();
            let path = format!("/v1/aggregates?device={id}&model={digest}");
            if index == 0 {
                println!(
                    "  $ curl -s -H \"Authorization: Bearer $OUTPOST_TOKEN\" \\\n        \
                     '{}{path}'    # and the same for each device",
                    self.server_url()
                );
            }
            let answer = self.api_json(&path)?;
            let total = answer.get("total").context("no merged total")?;
            let number = |key: &str| total.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            let input_means = total
                .get("inputs")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|input| {
                    input.pointer("/moments/mean").and_then(Value::as_f64).unwrap_or(f64::NAN)
                })
                .collect();
            merged.push((number("windows"), number("count"), input_means));
        }
        // The input whose mean moved most, in baseline standard deviations, on any device.
        let shift = |device: usize, feature: usize| {
            (merged[device].2.get(feature).copied().unwrap_or(f64::NAN) - means[feature])
                / deviations[feature]
        };
        let feature = (0..FEATURES)
            .max_by(|a, b| {
                let largest =
                    |f: usize| (0..DEVICES.len()).map(|d| shift(d, f).abs()).fold(0.0, f64::max);
                largest(*a).total_cmp(&largest(*b))
            })
            .unwrap_or(0);
        let mut table = format!(
            "{:<10} {:>7} {:>8}  {:>9}  (baseline CSV: {:.2}, σ {:.2})\n",
            "DEVICE",
            "WINDOWS",
            "REQUESTS",
            format!("MEAN f{feature}"),
            means[feature],
            deviations[feature]
        );
        for (index, (id, _, drifting)) in DEVICES.iter().enumerate() {
            let (windows, count, _) = &merged[index];
            table.push_str(&format!(
                "{id:<10} {windows:>7} {count:>8}  {:>9.2}  {:+.1} σ{}\n",
                merged[index].2.get(feature).copied().unwrap_or(f64::NAN),
                shift(index, feature),
                if *drifting { "   ← fed shifted data" } else { "" }
            ));
        }
        print_indented(&table);
        let empty: Vec<&str> = DEVICES
            .iter()
            .zip(&merged)
            .filter(|(_, (_, count, _))| *count < 1.0)
            .map(|((id, _, _), _)| *id)
            .collect();
        if !empty.is_empty() {
            bail!("no requests counted in the windows of {}", empty.join(", "));
        }
        let drifting = DEVICES.iter().position(|(_, _, drifting)| *drifting).unwrap_or(0);
        let others_max = (0..DEVICES.len())
            .filter(|index| *index != drifting)
            .map(|index| shift(index, feature).abs())
            .fold(0.0, f64::max);
        if shift(drifting, feature).abs() <= others_max {
            bail!("{}'s inputs do not stand out", DEVICES[drifting].0);
        }
        Ok(format!(
            "{} f{feature} {:+.1} σ, others ≤ {others_max:.1} σ",
            DEVICES[drifting].0,
            shift(drifting, feature)
        ))
    }

    fn assignment_received(&self, index: usize) -> Result<String> {
        let log = format!("{}/agent.log", agent_dir(index));
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.demo_dir.join(&log)).unwrap_or_default();
            if let Some(line) = text.lines().find(|line| line.contains("assignment")) {
                print_indented(line.trim());
                return Ok(format!("received after {:.1} s", started.elapsed().as_secs_f64()));
            }
            if started.elapsed() >= ASSIGNMENT_DELIVERED {
                bail!("{log} does not mention it after {} s", ASSIGNMENT_DELIVERED.as_secs());
            }
            thread::sleep(POLL);
        }
    }

    fn update_committed(&self, index: usize) -> Result<String> {
        let log = format!("{}/agent.log", agent_dir(index));
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.demo_dir.join(&log)).unwrap_or_default();
            let steps: Vec<&str> = text.lines().filter(|line| line.contains("update: ")).collect();
            if steps.iter().any(|line| line.contains("code=committed")) {
                for line in steps.iter().rev().take(8).rev() {
                    print_indented(line.trim());
                }
                return Ok(format!("committed after {:.1} s", started.elapsed().as_secs_f64()));
            }
            if let Some(failed) = steps.iter().find(|line| line.contains("kind=rolled_back")) {
                bail!("the update did not commit: {failed}");
            }
            if started.elapsed() >= UPDATE_COMMITTED {
                bail!("{log} shows no committed update after {} s", UPDATE_COMMITTED.as_secs());
            }
            thread::sleep(POLL);
        }
    }

    fn rollout_completes(&self, id: &str) -> Result<String> {
        let rows = read_rows(&self.demo_dir.join(BASELINE_CSV))?;
        if rows.is_empty() {
            bail!("no rows in {BASELINE_CSV}");
        }
        let running: Vec<usize> =
            (0..DEVICES.len()).filter(|index| self.agents[*index].child.is_some()).collect();
        let path = format!("/v1/rollouts/{id}");
        println!(
            "  $ curl -s -H \"Authorization: Bearer $OUTPOST_TOKEN\" '{}{path}'    # repeatedly",
            self.server_url()
        );
        let infer_path = format!("/v2/models/{MODEL}/infer");
        let started = Instant::now();
        let mut shown = String::new();
        let mut failed_requests = 0_u64;
        for turn in 0_usize.. {
            // Live requests keep statistics windows of the new model flowing for the gates.
            for &index in &running {
                let row = &rows[(turn + index) % rows.len()];
                let body = infer_body(row, FEATURES);
                match http::request(self.agent_ports[index], "POST", &infer_path, None, Some(&body))
                {
                    Ok(response) if response.status == 200 => {}
                    _ => failed_requests += 1,
                }
            }
            let answer = self.api_json(&path)?;
            let text =
                |key: &str| answer.get(key).and_then(Value::as_str).unwrap_or("?").to_string();
            let wave = answer.get("wave").and_then(Value::as_f64).unwrap_or(f64::NAN);
            let admitted = answer.get("devices_admitted").and_then(Value::as_f64).unwrap_or(0.0);
            let state = text("state");
            let line = format!(
                "{state:<10} wave {} ({}), {admitted} device(s) admitted",
                wave + 1.0,
                text("wave_phase")
            );
            if line != shown {
                print_indented(&format!("{:>5.1} s  {line}", started.elapsed().as_secs_f64()));
                shown = line;
            }
            match state.as_str() {
                "completed" => {
                    return Ok(format!(
                        "completed after {:.1} s ({failed_requests} failed requests)",
                        started.elapsed().as_secs_f64()
                    ));
                }
                "paused" | "aborted" | "rolled_back" => {
                    bail!("the rollout ended {state}: {}", text("reason"))
                }
                _ => {}
            }
            if started.elapsed() >= ROLLOUT_COMPLETED {
                bail!("not completed after {} s", ROLLOUT_COMPLETED.as_secs());
            }
            thread::sleep(REFRESH / 4);
        }
        bail!("the rollout was followed for longer than any clock counts")
    }

    fn kill(&mut self, index: usize) -> Result<String> {
        let Some(mut child) = self.agents[index].child.take() else {
            bail!("{} is not running", DEVICES[index].0);
        };
        println!("  $ kill -KILL {}", child.id());
        child.kill().context("sending SIGKILL")?;
        let status = child.wait()?;
        print_indented(&format!("{} ended: {status}", DEVICES[index].0));
        Ok(status.to_string().replace("signal: ", "signal "))
    }

    fn stop_agents(&mut self) -> Result<String> {
        let mut problems = Vec::new();
        let mut stopped = 0;
        for ((id, _, _), agent) in DEVICES.iter().zip(&mut self.agents) {
            if let Some(child) = agent.child.take() {
                stopped += 1;
                if let Err(error) = terminate(child, id) {
                    problems.push(format!("{error:#}"));
                }
            }
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(format!("{stopped} exited 0"))
    }

    fn stop_server(&mut self) -> Result<String> {
        let child = self.server.take().context("the server is not running")?;
        terminate(child, "outpost serve")?;
        Ok("exit 0".into())
    }
}

/// SIGTERM, then waits for `child` to exit 0; SIGKILL after [`EXIT_AFTER_SIGTERM`].
fn terminate(mut child: Child, name: &str) -> Result<()> {
    let pid = child.id().to_string();
    println!("  $ kill -TERM {pid}    # {name}");
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    if !sent.is_ok_and(|status| status.success()) {
        let _ = child.kill();
        let _ = child.wait();
        bail!("could not send SIGTERM to {name}");
    }
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            print_indented(&format!(
                "{name} exited after {:.1} s: {status}",
                started.elapsed().as_secs_f64()
            ));
            if !status.success() {
                bail!("{name} exited with {status}");
            }
            return Ok(());
        }
        if started.elapsed() >= EXIT_AFTER_SIGTERM {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} still ran {} s after SIGTERM; killed", EXIT_AFTER_SIGTERM.as_secs());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn agent_dir(index: usize) -> String {
    format!("fleet/{}", DEVICES[index].0)
}

fn command_line(program: &Path, args: &[&str]) -> String {
    let name = program.file_name().map_or_else(
        || program.to_string_lossy().into_owned(),
        |name| name.to_string_lossy().into_owned(),
    );
    std::iter::once(name)
        .chain(args.iter().map(|arg| shell_quote(arg)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
}

/// One row of `outpost devices list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub device: String,
    pub presence: String,
    pub model: String,
}

/// The rows of `outpost devices list`'s table (DEVICE PRESENCE LAST-SEEN ARCH AGENT MODEL
/// TAGS); columns that are empty in the table are not in it, so only the first two are sure.
fn parse_devices(table: &str) -> Vec<DeviceRow> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let model = fields.iter().find(|field| field.contains('@')).copied().unwrap_or("-");
            match fields[..] {
                [device, presence, ..] => Some(DeviceRow {
                    device: device.to_string(),
                    presence: presence.to_string(),
                    model: model.to_string(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// The value of a sample (`name{labels}` exactly) in Prometheus text.
fn metric(text: &str, sample: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.trim().parse().ok()).flatten()
    })
}

/// The mean and the (sample) standard deviation of every column.
fn column_moments(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() as f64;
    let means: Vec<f64> =
        (0..FEATURES).map(|c| rows.iter().map(|row| row[c]).sum::<f64>() / n).collect();
    let deviations = (0..FEATURES)
        .map(|c| {
            let squares: f64 = rows.iter().map(|row| (row[c] - means[c]).powi(2)).sum();
            (squares / (n - 1.0).max(1.0)).sqrt().max(f64::MIN_POSITIVE)
        })
        .collect();
    (means, deviations)
}

/// The numeric rows of a CSV file with a header line.
fn read_rows(path: &Path) -> Result<Vec<Vec<f64>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_rows(&text).with_context(|| format!("in {}", path.display()))
}

fn parse_rows(text: &str) -> Result<Vec<Vec<f64>>> {
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let row = line
                .split(',')
                .map(|value| value.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("not a row of numbers: {line:?}"))?;
            if row.len() != FEATURES {
                bail!("{} values in {line:?}, the model takes {FEATURES}", row.len());
            }
            Ok(row)
        })
        .collect()
}

/// An OIP v2 inference request for one row of `width` features.
fn infer_body(row: &[f64], width: usize) -> String {
    serde_json::json!({
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1, width], "data": row}]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tables_parse() {
        let table = "DEVICE    PRESENCE  LAST SEEN                 ARCH    AGENT  MODEL               TAGS\n\
                     berlin-1  online    2026-11-24T04:51:07.445Z  x86_64  0.1.0  fraud-scorer@1.0.0  site=berlin\n\
                     paris-2   offline\n";
        assert_eq!(
            parse_devices(table),
            [
                DeviceRow {
                    device: "berlin-1".into(),
                    presence: "online".into(),
                    model: "fraud-scorer@1.0.0".into()
                },
                DeviceRow {
                    device: "paris-2".into(),
                    presence: "offline".into(),
                    model: "-".into()
                },
            ]
        );
        assert!(parse_devices("DEVICE PRESENCE\n").is_empty());
    }

    #[test]
    fn metrics_are_read_by_exact_sample_name() {
        let text = "# HELP outpost_mqtt_messages_total x\n\
                    outpost_mqtt_messages_total{channel=\"state\"} 4\n\
                    outpost_mqtt_messages_total{channel=\"stats\"} 17\n\
                    outpost_windows_ingested_total 0\n";
        assert_eq!(metric(text, "outpost_mqtt_messages_total{channel=\"stats\"}"), Some(17));
        assert_eq!(metric(text, "outpost_windows_ingested_total"), Some(0));
        assert_eq!(metric(text, "outpost_windows"), None);
    }

    #[test]
    fn csv_rows_become_inference_requests() -> Result<()> {
        let rows = parse_rows("f0,f1,f2,f3,f4,f5,f6,f7\n1,2,3,4,5,6,7,-0.5\n\n")?;
        let body: Value = serde_json::from_str(&infer_body(&rows[0], FEATURES))?;
        assert_eq!(
            body,
            serde_json::json!({"inputs": [{
                "name": "features", "datatype": "FP32", "shape": [1, 8],
                "data": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, -0.5]
            }]})
        );
        assert!(parse_rows("h\n1,2\n").is_err());
        Ok(())
    }

    #[test]
    fn free_ports_are_distinct() -> Result<()> {
        let mut ports = free_ports(6)?;
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 6);
        Ok(())
    }
}
