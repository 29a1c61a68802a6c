//! The `outpost-agent` binary run as a device owner runs it: `print-default-config`,
//! `check-model`, `provision` (and every refusal, installing nothing), and `run` serving the
//! API, cutting windows with persisted sequence numbers, and flushing the last window on
//! SIGTERM. Exit codes are the documented ones.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use outpost_agent::AgentConfig;
use outpost_agent::app::exit;
use outpost_agent::store::Store;
use outpost_shared::wire::{self, StatsWindow};
use outpost_tests::fixtures::{BundleOptions, BundleSigner, baseline_request};

use crate::{Target, TestDir, http};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run outpost-agent")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and checks the exit code, returning (stdout, stderr).
fn agent_exits(args: &[&str], code: u8) -> (String, String) {
    let out = agent(args);
    assert_eq!(
        out.status.code(),
        Some(i32::from(code)),
        "outpost-agent {args:?}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

fn model(name: &str) -> String {
    outpost_tests::models_dir().join(name).display().to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn print_default_config_prints_the_documented_defaults() {
    let (stdout, _) = agent_exits(&["print-default-config"], 0);
    assert_eq!(stdout, outpost_agent::config::DEFAULT_CONFIG);
    for key in [
        "data_dir",
        "[device]",
        "listen",
        "max_body_bytes",
        "max_concurrency",
        "period_seconds",
        "[queue]",
        "[mqtt]",
        "host",
    ] {
        assert!(stdout.contains(key), "default config does not document {key}");
    }
    // The printed file plus a device id is a working config.
    let config = AgentConfig::from_toml(&format!("{stdout}\n")).err();
    assert!(config.is_some_and(|e| e.to_string().contains("device")), "the device id is required");
}

#[test]
fn check_model_prints_metadata_and_one_response() {
    let (stdout, stderr) = agent_exits(&["check-model", &model("mlp_classifier.onnx")], 0);
    assert!(stderr.contains("input  features FP32 [1, 8]"), "{stderr}");
    assert!(stderr.contains("output probabilities FP32 [1, 3]"), "{stderr}");
    let response: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(response["model_name"], "mlp_classifier");
    assert_eq!(response["outputs"][0]["shape"], serde_json::json!([1, 3]));

    let (_, stderr) = agent_exits(&["check-model", &model("batched_classifier.onnx")], 0);
    assert!(stderr.contains("features FP32 [-1, 8]"), "{stderr}");
    agent_exits(&["check-model", &model("cnn.onnx")], 0);
}

#[test]
fn check_model_runs_a_request_file() {
    let test = TestDir::new();
    let golden: serde_json::Value = serde_json::from_slice(
        &std::fs::read(outpost_tests::models_dir().join("regressor.golden.json")).expect("golden"),
    )
    .expect("json");
    let case = &golden["cases"][2];
    let request = test.path().join("request.json");
    std::fs::write(&request, serde_json::json!({"id": "c2", "inputs": case["inputs"]}).to_string())
        .expect("write");
    let (stdout, _) =
        agent_exits(&["check-model", &model("regressor.onnx"), "--input", path(&request)], 0);
    let response: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(response["id"], "c2");
    let got = response["outputs"][0]["data"][0].as_f64().expect("prediction");
    let want = case["outputs"][0]["data"][0].as_f64().expect("expected");
    assert!((got - want).abs() <= 1e-4 + 1e-3 * want.abs(), "{got} vs {want}");

    std::fs::write(
        &request,
        r#"{"inputs":[{"name":"features","datatype":"FP32","shape":[1,2],"data":[1,2]}]}"#,
    )
    .expect("write");
    let (_, stderr) = agent_exits(
        &["check-model", &model("regressor.onnx"), "--input", path(&request)],
        exit::USAGE,
    );
    assert!(stderr.contains("does not fit the model") && stderr.contains("shape"), "{stderr}");
    std::fs::write(&request, "{").expect("write");
    let (_, stderr) = agent_exits(
        &["check-model", &model("regressor.onnx"), "--input", path(&request)],
        exit::USAGE,
    );
    assert!(stderr.contains("malformed JSON"), "{stderr}");
}

#[test]
fn check_model_names_what_tract_cannot_run() {
    let (stdout, stderr) =
        agent_exits(&["check-model", &model("unsupported_op.onnx")], exit::MODEL);
    assert!(stdout.is_empty());
    assert!(stderr.contains("Frobnicate"), "{stderr}");
    assert!(stderr.contains("frobnicate1"), "the node is named too: {stderr}");
    let (_, stderr) = agent_exits(&["check-model", &model("invalid.onnx")], exit::MODEL);
    assert!(stderr.contains("not a readable ONNX model"), "{stderr}");
    let (_, stderr) = agent_exits(&["check-model", "/nonexistent/model.onnx"], exit::USAGE);
    assert!(stderr.contains("/nonexistent/model.onnx"), "{stderr}");
    agent_exits(&["check-model"], exit::USAGE);
    agent_exits(&["no-such-command"], exit::USAGE);
}

/// A config for a fresh, unprovisioned data directory.
fn fresh_config(test: &TestDir, device: &str) -> (PathBuf, PathBuf) {
    let data_dir = test.path().join(device).join("data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let config =
        test.fixture.agent_config(&data_dir, device, &BTreeMap::new(), "127.0.0.1:0", 60.0, "");
    (config, data_dir)
}

#[test]
fn provision_installs_a_verified_trust_root_and_first_model() {
    let test = TestDir::new();
    let (config, data_dir) = fresh_config(&test, "dev-1");
    let bundle = test.fixture.bundle("mlp_classifier");
    let trust = test.fixture.trust_root_path();
    let args = [
        "provision",
        "--config",
        path(&config),
        "--trust",
        path(&trust),
        "--bundle",
        path(&bundle),
    ];
    let (stdout, _) = agent_exits(&args, 0);
    assert!(stdout.contains("trust root version 1"), "{stdout}");
    assert!(stdout.contains("mlp_classifier@1.0.0 installed in slot a"), "{stdout}");
    assert_eq!(
        std::fs::read(data_dir.join("trust/root.json")).expect("root"),
        test.fixture.trust_root_bytes()
    );
    assert_eq!(
        std::fs::read(data_dir.join("slots/a/bundle")).expect("bundle"),
        std::fs::read(&bundle).expect("bundle")
    );
    let store = Store::open(&data_dir, time::OffsetDateTime::now_utc()).expect("store opens");
    assert_eq!(store.state().active, Some(outpost_shared::wire::SlotName::A));
    assert!(store.state().committed);
    // Running it again changes nothing; another model is refused.
    agent_exits(&args, 0);
    let other = test.fixture.bundle("regressor");
    let (_, stderr) = agent_exits(
        &[
            "provision",
            "--config",
            path(&config),
            "--trust",
            path(&trust),
            "--bundle",
            path(&other),
        ],
        exit::REFUSED,
    );
    assert!(stderr.contains("already installed"), "{stderr}");
}

#[test]
fn provision_refuses_what_does_not_verify_and_installs_nothing() {
    let test = TestDir::new();
    let trust = test.fixture.trust_root_path();
    let good_bundle = test.fixture.bundle("mlp_classifier");
    let stranger = test.fixture.bundle_with(
        "mlp_classifier",
        &BundleOptions { signer: BundleSigner::Stranger, ..BundleOptions::default() },
        "stranger.bundle",
    );
    let unsigned = test.fixture.bundle_with(
        "mlp_classifier",
        &BundleOptions { signer: BundleSigner::Nobody, ..BundleOptions::default() },
        "unsigned.bundle",
    );
    let expired = test.fixture.bundle_with(
        "mlp_classifier",
        &BundleOptions {
            expires: Some(time::macros::datetime!(2024-06-01 00:00:00 UTC)),
            ..BundleOptions::default()
        },
        "expired.bundle",
    );
    let bad_golden = test.fixture.bundle_with(
        "mlp_classifier",
        &BundleOptions {
            golden_file: Some("mlp_classifier.bad_golden.json".into()),
            ..BundleOptions::default()
        },
        "bad-golden.bundle",
    );
    let tampered = test.path().join("tampered.bundle");
    let mut bytes = std::fs::read(&good_bundle).expect("bundle");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&tampered, bytes).expect("write");
    let cases: Vec<(PathBuf, Option<PathBuf>, u8, &str)> = vec![
        (test.fixture.expired_trust_root(), None, exit::REFUSED, "expired"),
        (
            test.fixture.under_signed_trust_root(),
            None,
            exit::REFUSED,
            "too few distinct root signatures",
        ),
        (trust.clone(), Some(stranger), exit::REFUSED, "unknown key"),
        (trust.clone(), Some(unsigned), exit::REFUSED, "too few distinct publisher signatures"),
        (trust.clone(), Some(expired), exit::REFUSED, "bundle manifest expired"),
        (trust.clone(), Some(tampered), exit::REFUSED, "refused"),
        (trust.clone(), Some(bad_golden), exit::MODEL, "golden"),
    ];
    for (index, (trust_file, bundle, code, expected)) in cases.iter().enumerate() {
        let (config, data_dir) = fresh_config(&test, &format!("dev-{index}"));
        let mut args = vec!["provision", "--config", path(&config), "--trust", path(trust_file)];
        if let Some(bundle) = bundle {
            args.extend(["--bundle", path(bundle)]);
        }
        let (_, stderr) = agent_exits(&args, *code);
        assert!(stderr.contains(expected), "case {index}: {stderr}");
        assert!(!data_dir.join("trust/root.json").exists(), "case {index} installed a trust root");
        assert!(!data_dir.join("slots").exists(), "case {index} installed a bundle");
    }
}

/// A running `outpost-agent run`, killed if the test ends early.
struct RunningAgent {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl RunningAgent {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
            .args(["run", "--config", path(config)])
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start outpost-agent");
        let stderr = child.stderr.take().expect("stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, stderr: Vec::new() }
    }

    /// Waits for a stderr line containing `needle` (at most a minute) and returns it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.stderr.iter().find(|line| line.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + crate::NETWORK_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no `{needle}` in the agent's log:\n{}", self.stderr.join("\n")),
            }
        }
    }

    /// The API address from the "inference API listening" line.
    fn api_target(&mut self) -> Target {
        let line = self.wait_for_line("inference API listening");
        let address = line
            .split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        match address.strip_prefix("unix:") {
            Some(socket) => Target::Unix(PathBuf::from(socket)),
            None => Target::Tcp(address.parse().unwrap_or_else(|e| panic!("{address}: {e}"))),
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + crate::NETWORK_TIMEOUT;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status.code();
            }
            // Collect log lines while waiting; they are how the exit is explained on failure.
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => self.stderr.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Ok(status) = self.child.wait() {
                        break status.code();
                    }
                }
            }
            assert!(Instant::now() < deadline, "agent did not stop:\n{}", self.stderr.join("\n"));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        (code, std::mem::take(&mut self.stderr))
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The windows in the agent's disk queue, by sequence number.
fn queued_windows(data_dir: &Path) -> Vec<StatsWindow> {
    let mut windows: Vec<StatsWindow> = std::fs::read_dir(data_dir.join("queue"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .map(|bytes| wire::decode::<StatsWindow>(&bytes).expect("queued window decodes"))
                .collect()
        })
        .unwrap_or_default();
    windows.sort_by_key(|w| w.seq);
    windows
}

/// No broker listens on port 1 of loopback: telemetry keeps its windows on disk.
const NO_BROKER: &str = "[mqtt]\nhost = \"127.0.0.1\"\nport = 1\nreconnect_min_delay_ms = 1000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_cuts_windows_and_flushes_the_last_one_on_sigterm() {
    let test = TestDir::new();
    let data_dir = test.fixture.provisioned_agent_dir("dev-run", Some("mlp_classifier"));
    let tags: BTreeMap<String, String> = [("site".to_string(), "berlin".to_string())].into();
    let config =
        test.fixture.agent_config(&data_dir, "dev-run", &tags, "127.0.0.1:0", 0.2, NO_BROKER);
    let mut agent = RunningAgent::start(&config);
    let target = agent.api_target();
    agent.wait_for_line("agent ready");
    let body = serde_json::to_vec(&baseline_request("mlp_classifier", 0)).expect("body");
    for _ in 0..5 {
        let response = http(
            &target,
            "POST",
            "/v2/models/mlp_classifier/infer",
            Some("application/json"),
            &body,
        )
        .await;
        assert_eq!(response.status, 200);
    }
    let bad =
        http(&target, "POST", "/v2/models/mlp_classifier/infer", Some("application/json"), b"{")
            .await;
    assert_eq!(bad.status, 400);
    let (code, log) = agent.terminate();
    assert_eq!(code, Some(0), "log:\n{}", log.join("\n"));
    let windows = queued_windows(&data_dir);
    assert!(!windows.is_empty(), "no window queued; log:\n{}", log.join("\n"));
    let seqs: Vec<u64> = windows.iter().map(|w| w.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "window sequence numbers start at 1 and have no gaps");
    assert_eq!(windows.iter().map(|w| w.count).sum::<u64>(), 6, "every request is in some window");
    assert_eq!(windows.iter().map(|w| w.errors.values().sum::<u64>()).sum::<u64>(), 1);
    for pair in windows.windows(2) {
        assert_eq!(pair[0].end_ms, pair[1].start_ms, "windows tile time");
    }
    assert!(
        windows.iter().all(|w| w.device.as_str() == "dev-run" && w.model.name == "mlp_classifier")
    );

    // A restart continues the sequence where it stopped.
    let store = Store::open(&data_dir, time::OffsetDateTime::now_utc()).expect("store");
    assert_eq!(store.state().next_window_seq, seqs.len() as u64 + 1);
    drop(store);
    let mut agent = RunningAgent::start(&config);
    agent.api_target();
    agent.wait_for_line("agent ready");
    let (code, log) = agent.terminate();
    assert_eq!(code, Some(0), "log:\n{}", log.join("\n"));
    let after = queued_windows(&data_dir);
    assert!(after.len() > windows.len());
    assert_eq!(after.last().map(|w| w.seq), Some(after.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_listens_on_a_unix_socket() {
    let test = TestDir::new();
    let data_dir = test.fixture.provisioned_agent_dir("dev-unix", Some("batched_classifier"));
    let socket = test.path().join("agent.sock");
    let listen = format!("unix:{}", socket.display());
    let config = test.fixture.agent_config(
        &data_dir,
        "dev-unix",
        &BTreeMap::new(),
        &listen,
        60.0,
        NO_BROKER,
    );
    let mut agent = RunningAgent::start(&config);
    let target = agent.api_target();
    agent.wait_for_line("agent ready");
    let ready = http(&target, "GET", "/v2/health/ready", None, b"").await;
    assert_eq!(ready.status, 200);
    let metadata = http(&target, "GET", "/v2/models/batched_classifier", None, b"").await;
    assert_eq!(metadata.json()["inputs"][0]["shape"], serde_json::json!([-1, 8]));
    let (code, log) = agent.terminate();
    assert_eq!(code, Some(0), "log:\n{}", log.join("\n"));
    let windows = queued_windows(&data_dir);
    assert_eq!(windows.len(), 1, "the final window is flushed at shutdown");
    assert_eq!(windows[0].count, 0);
}

#[test]
fn run_refuses_bad_configs_unprovisioned_devices_and_tampered_slots() {
    let test = TestDir::new();
    let data_dir = test.path().join("nothing-here");
    let config = test.fixture.agent_config(
        &data_dir,
        "dev-x",
        &BTreeMap::new(),
        "127.0.0.1:0",
        60.0,
        NO_BROKER,
    );
    let (_, stderr) = agent_exits(&["run", "--config", path(&config)], exit::REFUSED);
    assert!(stderr.contains("not provisioned"), "{stderr}");

    let broken = test.path().join("broken.toml");
    std::fs::write(&broken, "[device]\nid = \"dev\"\n[api]\nlisten = \"localhost\"\n")
        .expect("write");
    let (_, stderr) = agent_exits(&["run", "--config", path(&broken)], exit::USAGE);
    assert!(stderr.contains("`api.listen`"), "{stderr}");
    let (_, stderr) = agent_exits(&["run", "--config", "/nonexistent/agent.toml"], exit::USAGE);
    assert!(stderr.contains("/nonexistent/agent.toml"), "{stderr}");

    let data_dir = test.fixture.provisioned_agent_dir("dev-tampered", Some("mlp_classifier"));
    let slot = data_dir.join("slots/a/bundle");
    let mut bytes = std::fs::read(&slot).expect("bundle");
    let last = bytes.len() - 2000;
    bytes[last] ^= 0x01;
    std::fs::write(&slot, bytes).expect("write");
    let config = test.fixture.agent_config(
        &data_dir,
        "dev-tampered",
        &BTreeMap::new(),
        "127.0.0.1:0",
        60.0,
        NO_BROKER,
    );
    let (_, stderr) = agent_exits(&["run", "--config", path(&config)], exit::REFUSED);
    assert!(stderr.contains("slot a"), "{stderr}");
}

/// The project's Python (the venv `cargo xtask test` creates), or `OUTPOST_PYTHON`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("OUTPOST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = outpost_tests::repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `cargo xtask test` (it creates the venv) or set OUTPOST_PYTHON",
        venv.display()
    );
    venv
}

/// tritonclient's HTTP client, unchanged, against a real agent serving the model with every OIP
/// datatype: JSON and binary requests and answers, each value exact
/// (`tests/oip/tritonclient_check.py` says what it checks).
#[test]
fn a_real_oip_client_library_gets_exact_answers_in_every_datatype() {
    let test = TestDir::new();
    let data_dir = test.fixture.provisioned_agent_dir("dev-oip", Some("datatypes"));
    let config = test.fixture.agent_config(
        &data_dir,
        "dev-oip",
        &BTreeMap::new(),
        "127.0.0.1:0",
        60.0,
        NO_BROKER,
    );
    let mut agent = RunningAgent::start(&config);
    let Target::Tcp(address) = agent.api_target() else { panic!("a TCP listener") };
    agent.wait_for_line("agent ready");
    let script = outpost_tests::repo_root().join("tests/oip/tritonclient_check.py");
    let child = Command::new(python())
        .arg(&script)
        .arg(address.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the tritonclient check");
    let pid = child.id().to_string();
    let (sender, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let output = match finished.recv_timeout(crate::NETWORK_TIMEOUT) {
        Ok(output) => output.expect("the tritonclient check's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("the tritonclient check did not finish within {:?}", crate::NETWORK_TIMEOUT);
        }
    };
    let stdout = text(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" passed, 0 failed"),
        "tritonclient check failed ({}):\n{stdout}\n{}",
        output.status,
        text(&output.stderr)
    );
    assert!(stdout.contains("binary in, binary out"), "{stdout}");
    let (code, log) = agent.terminate();
    assert_eq!(code, Some(0), "{}", log.join("\n"));
}
